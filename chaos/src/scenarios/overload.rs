//! Ten times the configured concurrency (issue 12 scenario 10).

use std::time::Duration;

use super::fmt_ms;
use crate::client::{self, percentile, Chat, Load, Sample, Tally, Verdict};
use crate::error::Result;
use crate::harness::{backends, Ctx, Gateway, Sim, KEY};
use crate::report::Row;

fn p99(samples: &[&Sample]) -> Duration {
    let v: Vec<Duration> = samples.iter().map(|s| s.latency()).collect();
    percentile(&v, 0.99)
}

/// Two servers that take 200 ms per answer behind a gateway with `MAX_IN_FLIGHT=8`; first
/// 8 clients (the baseline), then 80.
///
/// Pass: the excess is refused with 429 or 503, every refusal carries `Retry-After`, and
/// refusals come fast (p99 ≤ 100 ms); admitted requests keep their latency (p99 ≤
/// baseline p99 + 10 % + 20 ms); no other error; gateway RSS growth ≤ 64 MiB.
/// Figure: refusal p99 and admitted p99 against the baseline.
pub async fn overload(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("overload", "10× MAX_IN_FLIGHT");
    let args = ["--model", "m", "--tokens", "8", "--latency-ms", "200"];
    let a = Sim::start(ctx, "a", &args).await?;
    let b = Sim::start(ctx, "b", &args).await?;
    let gw = Gateway::start(
        ctx,
        &[
            ("BACKENDS", backends("m", &[&a, &b])),
            ("MAX_IN_FLIGHT", "8".into()),
        ],
    )
    .await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    let load = |concurrency: usize| Load {
        chat: Chat::new(&gw.base(), KEY, "m", false).max_tokens(8),
        concurrency,
        total: None,
        duration: Some(ctx.window(3_000, 15_000)),
        stream_every: 0,
        backoff_on_reject: Some(Duration::from_millis(20)),
    };
    let base = client::drive(&ctx.http, &load(8), Default::default()).await;
    let base_ok: Vec<&Sample> = base.iter().filter(|s| s.verdict == Verdict::Ok).collect();
    let rss_before = gw.proc().rss_kib;
    let over = client::drive(&ctx.http, &load(80), Default::default()).await;
    let rss_growth = gw.proc().hwm_kib.saturating_sub(rss_before);
    let admitted: Vec<&Sample> = over.iter().filter(|s| s.verdict == Verdict::Ok).collect();
    let refused: Vec<&Sample> = over
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::Http(429 | 503, _)))
        .collect();
    let other = over.len() - admitted.len() - refused.len();
    let no_retry_after = refused.iter().filter(|s| !s.retry_after).count();
    let (base_p99, adm_p99, ref_p99) = (p99(&base_ok), p99(&admitted), p99(&refused));
    row.tally(&Tally::of(&over));
    row.check(!refused.is_empty(), "nothing was refused");
    row.check(other == 0, format!("{other} errors other than 429/503"));
    row.check(
        no_retry_after == 0,
        format!("{no_retry_after} refusals without Retry-After"),
    );
    row.check(
        ref_p99 <= ctx.deadline(Duration::from_millis(100)),
        format!("refusal p99 {}", fmt_ms(ref_p99)),
    );
    let limit = ctx.deadline(base_p99.mul_f64(1.1) + Duration::from_millis(20));
    row.check(
        adm_p99 <= limit,
        format!("admitted p99 {} > {}", fmt_ms(adm_p99), fmt_ms(limit)),
    );
    row.check(
        rss_growth <= 64 * 1024,
        format!("RSS grew {} MiB", rss_growth / 1024),
    );
    row.evidence = format!(
        "{} admitted, {} refused (429/503 with Retry-After); RSS +{} MiB",
        admitted.len(),
        refused.len(),
        rss_growth / 1024
    );
    row.figure = format!(
        "refusal p99 {}; admitted p99 {} (baseline {})",
        fmt_ms(ref_p99),
        fmt_ms(adm_p99),
        fmt_ms(base_p99)
    );
    Ok(row)
}
