//! Network faults between the gateway and a server, through a noxious proxy (latency and
//! jitter, bandwidth, slicer, limit_data, timeout, slow_close), and a reset sent by the
//! simulator itself (issue 12 scenario 4).

use std::time::Duration;

use super::{fmt_ms, sim_args, strs};
use crate::client::{self, percentile, Chat, Load, Sample, Tally, Verdict};
use crate::error::{ChaosError, Result};
use crate::harness::{Ctx, Gateway, Sim, KEY};
use crate::proxy::{ToxicKind, Toxiproxy};
use crate::report::Row;

/// One server, optionally behind a noxious proxy, behind the gateway; and the text of a
/// stream taken before any fault (the reference for byte-for-byte comparison).
struct Path {
    sim: Sim,
    proxy: Option<Toxiproxy>,
    gw: Gateway,
    clean: String,
    clean_samples: Vec<Sample>,
}

/// `toxics`: installed (server → gateway) before the gateway's first connection; `None`
/// for a direct path without a proxy. The clean reference is read from the server directly.
async fn setup(
    ctx: &Ctx,
    tokens: u32,
    delay_ms: u64,
    toxics: Option<&[(&str, ToxicKind)]>,
) -> Result<Path> {
    let sim = Sim::start(ctx, "a", &strs(&sim_args(tokens, delay_ms))).await?;
    let chat = Chat::new(&sim.base(), KEY, "m", true);
    let mut clean_samples = Vec::new();
    for _ in 0..5 {
        clean_samples.push(client::send(&ctx.http, &chat).await);
    }
    let clean = match clean_samples.first() {
        Some(s) if s.verdict == Verdict::Ok && !s.text.is_empty() => s.text.clone(),
        other => {
            return Err(ChaosError::Protocol(format!(
                "the clean stream failed: {:?}",
                other.map(|s| &s.verdict)
            )))
        }
    };
    let proxy = match toxics {
        Some(t) => Some(Toxiproxy::start("a", &sim.addr(), t).await?),
        None => None,
    };
    let upstream = proxy.as_ref().map_or_else(|| sim.addr(), Toxiproxy::addr);
    let gw = Gateway::start(ctx, &[("BACKENDS", format!("m:{upstream}"))]).await?;
    gw.wait_healthy(1, Duration::from_secs(10)).await?;
    Ok(Path {
        sim,
        proxy,
        gw,
        clean,
        clean_samples,
    })
}

impl Path {
    fn proxy(&self) -> Result<&Toxiproxy> {
        self.proxy
            .as_ref()
            .ok_or_else(|| ChaosError::Proxy("no proxy on this path".into()))
    }

    async fn streams(&self, ctx: &Ctx, n: usize, concurrency: usize) -> Vec<Sample> {
        let load = Load {
            chat: Chat::new(&self.gw.base(), KEY, "m", true).timeout(Duration::from_secs(60)),
            concurrency,
            total: Some(n),
            duration: None,
            stream_every: 1,
            backoff_on_reject: None,
        };
        client::drive(&ctx.http, &load, Default::default()).await
    }
}

/// How the streams of a fault ended, against the clean text.
#[derive(Debug, Default)]
struct Judged {
    identical: usize,
    /// Error event after a correct prefix.
    cut_clean: usize,
    /// An error status before any byte.
    refused: usize,
    /// Completed but different text, or an error event after a wrong prefix.
    corrupt: usize,
    /// Silent end, hang, transport failure.
    silent: usize,
}

fn judge(samples: &[Sample], clean: &str) -> Judged {
    let mut j = Judged::default();
    for s in samples {
        match &s.verdict {
            Verdict::Ok if s.text == clean => j.identical += 1,
            Verdict::Ok => j.corrupt += 1,
            Verdict::StreamError(_) if clean.starts_with(&s.text) => j.cut_clean += 1,
            Verdict::StreamError(_) => j.corrupt += 1,
            Verdict::Http(..) => j.refused += 1,
            Verdict::Truncated | Verdict::Timeout | Verdict::Transport => j.silent += 1,
        }
    }
    j
}

fn p50_latency(samples: &[Sample]) -> Duration {
    let v: Vec<Duration> = samples.iter().map(Sample::latency).collect();
    percentile(&v, 0.5)
}

/// Latency 50 ± 25 ms on both directions and slow_close 200 ms.
///
/// Pass: every stream byte-identical to the clean one (an error event is allowed, a
/// silent end or a hang is not); no corrupted text.
/// Figure: the added p50 latency against the server read directly (evidence that the
/// toxic delayed bytes).
pub async fn latency_jitter(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new(
        "latency-jitter",
        "latency 50±25 ms both ways, slow_close 200 ms",
    );
    let latency = ToxicKind::Latency {
        latency: 50,
        jitter: 25,
    };
    let p = setup(
        ctx,
        16,
        0,
        Some(&[
            ("latency", latency),
            ("slow_close", ToxicKind::SlowClose { delay: 200 }),
        ]),
    )
    .await?;
    // The request direction too (added after start: both directions, see proxy.rs).
    p.proxy()?.add_both("latency_more", latency).await?;
    let samples = p.streams(ctx, ctx.n(12, 200), 4).await;
    let j = judge(&samples, &p.clean);
    row.tally(&Tally::of(&samples));
    row.check(j.silent == 0, format!("{} silent ends or hangs", j.silent));
    row.check(j.corrupt == 0, format!("{} corrupted streams", j.corrupt));
    row.check(j.identical > 0, "no stream completed");
    let added = p50_latency(&samples).saturating_sub(p50_latency(&p.clean_samples));
    row.evidence = format!(
        "{} identical, {} cut with an error event; p50 {} → {}",
        j.identical,
        j.cut_clean,
        fmt_ms(p50_latency(&p.clean_samples)),
        fmt_ms(p50_latency(&samples))
    );
    row.figure = format!("added p50 {}", fmt_ms(added));
    Ok(row)
}

/// Bandwidth 1 KB/s from the server (noxious' bandwidth toxic after a slicer that cuts
/// 100-byte pieces, the largest its bandwidth toxic handles at 1 KB/s).
///
/// Pass: every stream byte-identical; the client's first byte arrives well before the end
/// of the stream (p50 TTFB < half the p50 duration: chunks are relayed as they arrive,
/// not buffered).
/// Figure: client TTFB p50 against the stream duration p50.
pub async fn bandwidth(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("bandwidth", "bandwidth 1 KB/s");
    let slices = ToxicKind::Slicer {
        average_size: 100,
        size_variation: 0,
        delay: 0,
    };
    let p = setup(
        ctx,
        4,
        0,
        Some(&[
            ("slices", slices),
            ("bandwidth", ToxicKind::Bandwidth { rate: 1 }),
        ]),
    )
    .await?;
    let samples = p.streams(ctx, ctx.n(6, 40), 3).await;
    let j = judge(&samples, &p.clean);
    row.tally(&Tally::of(&samples));
    let ttfb: Vec<Duration> = samples
        .iter()
        .filter_map(|s| s.first_byte.map(|f| f.saturating_duration_since(s.started)))
        .collect();
    let (ttfb50, dur50) = (percentile(&ttfb, 0.5), p50_latency(&samples));
    row.check(
        j.identical == samples.len(),
        format!(
            "{} of {} streams not identical ({j:?})",
            samples.len() - j.identical,
            samples.len()
        ),
    );
    row.check(
        ttfb50 < dur50 / 2,
        format!(
            "TTFB p50 {} vs duration p50 {}",
            fmt_ms(ttfb50),
            fmt_ms(dur50)
        ),
    );
    let bytes = samples.first().map_or(0, |s| s.bytes);
    row.evidence = format!(
        "{bytes} B per stream took {} (clean {})",
        fmt_ms(dur50),
        fmt_ms(p50_latency(&p.clean_samples))
    );
    row.figure = format!(
        "TTFB p50 {} / duration p50 {}",
        fmt_ms(ttfb50),
        fmt_ms(dur50)
    );
    Ok(row)
}

/// Slicer: the server's bytes reach the gateway in 1–3 byte writes.
///
/// Pass: every stream byte-identical to the clean one; no error.
/// Figure: streams compared.
pub async fn slicer(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("slicer", "slicer 1–3 bytes");
    let slicer = ToxicKind::Slicer {
        average_size: 2,
        size_variation: 1,
        delay: 0,
    };
    let p = setup(ctx, 16, 0, Some(&[("slicer", slicer)])).await?;
    let samples = p.streams(ctx, ctx.n(20, 300), 8).await;
    let j = judge(&samples, &p.clean);
    row.tally(&Tally::of(&samples));
    row.check(
        j.identical == samples.len(),
        format!(
            "{} of {} streams not identical ({j:?})",
            samples.len() - j.identical,
            samples.len()
        ),
    );
    let bytes: usize = samples.iter().map(|s| s.bytes).sum();
    row.evidence = format!("{bytes} B relayed from ≈{} slices", bytes / 2);
    row.figure = format!("{} / {} streams identical", j.identical, samples.len());
    Ok(row)
}

/// limit_data: every upstream connection is cut after 2,000 bytes (a connection that dies
/// mid-response, with a FIN instead of `[DONE]`).
///
/// Pass: every stream is complete and identical, or ends with an error event after a
/// correct prefix, or gets an error status before any byte; none ends silently or hangs.
/// Figure: streams cut and the bytes the client got before the cut.
pub async fn limit_data(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("limit-data", "limit_data 2,000 B per connection");
    let limit = ToxicKind::LimitData { bytes: 2_000 };
    let p = setup(ctx, 32, 0, Some(&[("limit", limit)])).await?;
    let samples = p.streams(ctx, ctx.n(12, 100), 2).await;
    let j = judge(&samples, &p.clean);
    row.tally(&Tally::of(&samples));
    row.check(j.silent == 0, format!("{} silent ends or hangs", j.silent));
    row.check(j.corrupt == 0, format!("{} corrupted streams", j.corrupt));
    row.check(j.cut_clean + j.refused > 0, "the toxic never cut a stream");
    let cut_bytes: Vec<usize> = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::StreamError(_)))
        .map(|s| s.bytes)
        .collect();
    let avg = cut_bytes.iter().sum::<usize>() / cut_bytes.len().max(1);
    row.evidence = format!(
        "{} cut mid-stream (≈{avg} B delivered each), {} refused before any byte, {} complete",
        j.cut_clean, j.refused, j.identical
    );
    row.figure = format!("{} streams cut, 0 silent", j.cut_clean + j.refused);
    Ok(row)
}

/// A stream stops mid-way with its socket open: the server sends 5 events, then nothing.
/// (Injected by the simulator: noxious 1.0.4 cannot reliably add a `timeout` toxic to
/// connections already open, see proxy.rs; a toxic installed up front would stall the
/// headers too, which `headers-then-silence` covers.)
///
/// Pass: every stream ends with an SSE error event + `[DONE]` after a correct prefix,
/// within STREAM_IDLE_TIMEOUT (1 s) + 1 s of the stall.
/// Figure: the slowest time from the stall to a stream's end.
pub async fn timeout_stall(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("timeout-stall", "stall after 5 events, socket open");
    // 60 tokens × 50 ms: the stall comes after 5 events (≈ 200 ms).
    let p = setup(ctx, 60, 50, None).await?;
    p.sim.fault("stall_after=5").await?;
    let n = ctx.n(6, 20);
    let samples = p.streams(ctx, n, n).await;
    row.tally(&Tally::of(&samples));
    // The stall starts after the 5th event; a stream's end minus its first byte bounds it
    // from above.
    let worst = samples
        .iter()
        .map(|s| {
            s.ended
                .saturating_duration_since(s.first_byte.unwrap_or(s.started))
        })
        .max()
        .unwrap_or_default();
    let errored = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::StreamError(_)) && p.clean.starts_with(&s.text))
        .count();
    row.check(
        errored == samples.len() && !samples.is_empty(),
        format!(
            "{errored} of {} streams ended with an error event",
            samples.len()
        ),
    );
    row.check(
        worst <= ctx.deadline(Duration::from_secs(2)),
        format!("slowest end {} after the first byte", fmt_ms(worst)),
    );
    row.evidence = format!("{} streams stalled after 5 events", samples.len());
    row.figure = format!("first byte → error event ≤ {}", fmt_ms(worst));
    Ok(row)
}

/// The simulator resets the connection (RST) after 5 SSE events.
///
/// Pass: every stream is a prefix of the clean one followed by an error event and
/// `[DONE]`; one upstream attempt per stream (never retried after the first byte).
/// Figure: upstream attempts per stream.
pub async fn sim_reset(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("sim-reset", "reset after 5 SSE events");
    let p = setup(ctx, 16, 0, None).await?;
    p.sim.fault("reset_after=5").await?;
    let before = p.sim.stats().await?.inference_requests;
    let samples = p.streams(ctx, ctx.n(12, 200), 4).await;
    let attempts = p.sim.stats().await?.inference_requests - before;
    let j = judge(&samples, &p.clean);
    row.tally(&Tally::of(&samples));
    row.check(
        j.cut_clean == samples.len() && !samples.is_empty(),
        format!("{j:?}"),
    );
    row.check(
        attempts == samples.len() as u64,
        format!("{attempts} upstream attempts for {} streams", samples.len()),
    );
    row.evidence = format!("{} streams reset by the server", j.cut_clean);
    row.figure = format!(
        "attempts/stream {:.2}",
        attempts as f64 / samples.len().max(1) as f64
    );
    Ok(row)
}
