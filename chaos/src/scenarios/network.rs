//! Network faults between the gateway and a server, through a noxious proxy (latency and
//! jitter, bandwidth, slicer, limit_data, timeout, slow_close), and a reset sent by the
//! simulator itself (issue 12 scenario 4).

use std::time::{Duration, Instant};

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

async fn setup(ctx: &Ctx, tokens: u32, delay_ms: u64, proxied: bool) -> Result<Path> {
    let sim = Sim::start(ctx, "a", &strs(&sim_args(tokens, delay_ms))).await?;
    let proxy = match proxied {
        true => Some(Toxiproxy::start("a", &sim.addr()).await?),
        false => None,
    };
    let upstream = proxy.as_ref().map_or_else(|| sim.addr(), Toxiproxy::addr);
    let gw = Gateway::start(ctx, &[("BACKENDS", format!("m:{upstream}"))]).await?;
    gw.wait_healthy(1, Duration::from_secs(10)).await?;
    let chat = Chat::new(&gw.base(), KEY, "m", true);
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
/// Figure: the added p50 latency (evidence that the toxic delayed bytes).
pub async fn latency_jitter(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("latency-jitter", "latency 50±25 ms both ways, slow_close 200 ms");
    let p = setup(ctx, 16, 0, true).await?;
    let proxy = p.proxy()?;
    let latency = ToxicKind::Latency {
        latency: 50,
        jitter: 25,
    };
    proxy.downstream("latency_down", latency).await?;
    proxy
        .add(
            "latency_up",
            latency,
            noxious::toxic::StreamDirection::Upstream,
        )
        .await?;
    proxy
        .downstream("slow_close", ToxicKind::SlowClose { delay: 200 })
        .await?;
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

/// Bandwidth 2 KB/s from the server.
///
/// Pass: every stream byte-identical; the client's first byte arrives well before the end
/// of the stream (p50 TTFB < half the p50 duration: chunks are relayed as they arrive,
/// not buffered).
/// Figure: client TTFB p50 against the stream duration p50.
pub async fn bandwidth(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("bandwidth", "bandwidth 2 KB/s");
    let p = setup(ctx, 8, 0, true).await?;
    p.proxy()?
        .downstream("bandwidth", ToxicKind::Bandwidth { rate: 2 })
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
        format!("TTFB p50 {} vs duration p50 {}", fmt_ms(ttfb50), fmt_ms(dur50)),
    );
    let bytes = samples.first().map_or(0, |s| s.bytes);
    row.evidence = format!(
        "{bytes} B per stream took {} (clean {})",
        fmt_ms(dur50),
        fmt_ms(p50_latency(&p.clean_samples))
    );
    row.figure = format!("TTFB p50 {} / duration p50 {}", fmt_ms(ttfb50), fmt_ms(dur50));
    Ok(row)
}

/// Slicer: the server's bytes reach the gateway in 1–3 byte writes.
///
/// Pass: every stream byte-identical to the clean one; no error.
/// Figure: streams compared.
pub async fn slicer(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("slicer", "slicer 1–3 bytes");
    let p = setup(ctx, 16, 0, true).await?;
    p.proxy()?
        .downstream(
            "slicer",
            ToxicKind::Slicer {
                average_size: 2,
                size_variation: 1,
                delay: 0,
            },
        )
        .await?;
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
    let p = setup(ctx, 32, 0, true).await?;
    p.proxy()?
        .downstream("limit", ToxicKind::LimitData { bytes: 2_000 })
        .await?;
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

/// timeout 0 added while streams flow: the server's bytes stop, the socket stays open.
///
/// Pass: every stream ends with an SSE error event + `[DONE]` within STREAM_IDLE_TIMEOUT
/// (1 s) + 1 s of the stall.
/// Figure: the slowest time from the stall to a stream's end.
pub async fn timeout_stall(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("timeout-stall", "timeout 0 mid-stream");
    // 60 tokens × 50 ms: 3 s streams, stalled after 300 ms.
    let p = setup(ctx, 60, 50, true).await?;
    let n = ctx.n(6, 20);
    let mut open = Vec::new();
    for _ in 0..n {
        let (http, chat) = (
            ctx.http.clone(),
            Chat::new(&p.gw.base(), KEY, "m", true).timeout(Duration::from_secs(30)),
        );
        open.push(tokio::spawn(async move { client::send(&http, &chat).await }));
    }
    crate::harness::wait_until(Duration::from_secs(10), || async {
        p.sim
            .stats()
            .await
            .is_ok_and(|s| s.active_requests as usize >= n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.proxy()?
        .downstream("stall", ToxicKind::Timeout { timeout: 0 })
        .await?;
    let stalled_at = Instant::now();
    let mut samples = Vec::new();
    for t in open {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    row.tally(&Tally::of(&samples));
    let worst = samples
        .iter()
        .map(|s| s.ended.saturating_duration_since(stalled_at))
        .max()
        .unwrap_or_default();
    let errored = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::StreamError(_)) && p.clean.starts_with(&s.text))
        .count();
    row.check(
        errored == samples.len() && !samples.is_empty(),
        format!("{errored} of {} streams ended with an error event", samples.len()),
    );
    row.check(
        worst <= ctx.deadline(Duration::from_secs(2)),
        format!("slowest end {} after the stall", fmt_ms(worst)),
    );
    row.evidence = format!("{} streams stalled mid-way", samples.len());
    row.figure = format!("stall → last error event {}", fmt_ms(worst));
    Ok(row)
}

/// The simulator resets the connection (RST) after 5 SSE events.
///
/// Pass: every stream is a prefix of the clean one followed by an error event and
/// `[DONE]`; one upstream attempt per stream (never retried after the first byte).
/// Figure: upstream attempts per stream.
pub async fn sim_reset(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("sim-reset", "reset after 5 SSE events");
    let p = setup(ctx, 16, 0, false).await?;
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
