//! A model appears and disappears on a server under load (issue 12 scenario 6).

use std::time::{Duration, Instant};

use crate::client::{Background, Chat, Load, Tally};
use crate::error::Result;
use crate::harness::{Ctx, Gateway, Sim, KEY};
use crate::report::Row;

fn load(gw: &Gateway, model: &str) -> Load {
    Load {
        chat: Chat::new(&gw.base(), KEY, model, false).max_tokens(8),
        concurrency: 4,
        total: None,
        duration: None,
        stream_every: 2,
        backoff_on_reject: None,
    }
}

/// Server A serves `m` and `y`; server B serves `m`. Every 500 ms A drops `m` from its
/// model list or lists it again (discovered every 200 ms), for 30 s (short: 4 s).
///
/// Pass: 0 errors for `m` (a request that reaches A after it dropped `m` gets a 404
/// model-not-found and is retried on B); no 5xx (HTTP or stream error event) for `y`, the
/// other model on the changing server.
/// Figure: the number of flips.
pub async fn churn(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("discovery-churn", "model m appears/disappears on a server");
    let a = Sim::start(ctx, "a", &["--model", "m", "--model", "y", "--tokens", "8"]).await?;
    let b = Sim::start(ctx, "b", &["--model", "m", "--tokens", "8"]).await?;
    let gw = Gateway::start(
        ctx,
        &[("VLLM_SERVERS", format!("{},{}", a.addr(), b.addr()))],
    )
    .await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    // Both models discovered before the load starts.
    crate::harness::wait_until(Duration::from_secs(10), || async {
        let r = ctx
            .http
            .get(format!("{}/v1/models", gw.base()))
            .bearer_auth(KEY)
            .send()
            .await;
        match r {
            Ok(r) => r
                .text()
                .await
                .is_ok_and(|t| t.contains("\"m\"") && t.contains("\"y\"")),
            Err(_) => false,
        }
    })
    .await;
    let on_m = Background::start(&ctx.http, load(&gw, "m"));
    let on_y = Background::start(&ctx.http, load(&gw, "y"));
    let window = ctx.window(4_000, 30_000);
    let started = Instant::now();
    let mut flips = 0u32;
    while started.elapsed() < window {
        let models = if flips % 2 == 0 {
            vec!["y"]
        } else {
            vec!["m", "y"]
        };
        a.control("models", serde_json::json!({ "models": models }))
            .await?;
        flips += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (m, y) = (on_m.finish().await, on_y.finish().await);
    let (tm, ty) = (Tally::of(&m), Tally::of(&y));
    let mut all = m;
    all.extend(y);
    row.tally(&Tally::of(&all));
    let y_5xx: u64 = ty
        .errors
        .iter()
        .filter(|(k, _)| k.starts_with("http_5") || k.starts_with("sse_"))
        .map(|(_, v)| v)
        .sum();
    row.check(tm.failed() == 0, format!("{} errors for m", tm.failed()));
    row.check(y_5xx == 0, format!("{y_5xx} 5xx for y"));
    let a_served = a.stats().await.map(|s| s.inference_requests).unwrap_or(0);
    row.evidence = format!("{flips} model-list flips; the changing server answered {a_served}");
    row.figure = format!(
        "{flips} flips, {} errors on m, {y_5xx} 5xx on y",
        tm.failed()
    );
    Ok(row)
}
