//! Waves of clients that disconnect mid-stream (issue 12 scenario 7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use super::fmt_ms;
use crate::error::Result;
use crate::harness::{metric, wait_until, Ctx, Gateway, ProcStats, Sim, KEY};
use crate::report::Row;

/// Open `n` streams, wait until each got its first bytes, then drop them all at once.
/// Returns how many were open and the gateway's memory peak while they were.
async fn one_wave(ctx: &Ctx, gw: &Gateway, sim: &Sim, n: usize) -> (usize, u64, Instant) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, url, barrier) = (
            ctx.http.clone(),
            format!("{}/v1/chat/completions", gw.base()),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"model": "m", "stream": true,
                "messages": [{"role": "user", "content": "wave"}]});
            let sent = http
                .post(url)
                .bearer_auth(KEY)
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let mut got = false;
            let mut resp = None;
            if let Ok(mut r) = sent {
                got = r.status() == 200 && matches!(r.chunk().await, Ok(Some(_)));
                resp = Some(r);
            }
            barrier.wait().await;
            // Dropping the response mid-body closes the connection: the client is gone.
            drop(resp);
            got
        }));
    }
    // Everyone is parked at the barrier once the server sees n active requests.
    wait_until(Duration::from_secs(30), || async {
        sim.stats()
            .await
            .is_ok_and(|s| s.active_requests as usize >= n)
    })
    .await;
    let peak = gw.proc().rss_kib;
    barrier.wait().await;
    let released = Instant::now();
    let mut open = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            open += 1;
        }
    }
    (open, peak, released)
}

/// 1,000 clients (short: 200) open streams on a slow server, then all disconnect at once;
/// twice.
///
/// Pass: every wave really had its streams open; the server sees every upstream request
/// closed within 1 s of the wave; after each wave the gateway's open descriptors, threads,
/// client connections and in-flight requests return to their baseline (±16 descriptors
/// and ±2 threads for pools and timers); the second wave's RSS peak is at most the first
/// wave's peak + 10 %.
/// Figure: time from the disconnect to the last upstream request closed.
pub async fn wave(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("disconnect-wave", "clients drop their streams at once");
    let n = ctx.n(200, 1_000);
    // Streams that never end by themselves (100,000 tokens, one every 200 ms).
    let sim = Sim::start(ctx, "a", &["--model", "m", "--tokens", "100000", "--token-delay-ms", "200"])
        .await?;
    let gw = Gateway::start(
        ctx,
        &[
            ("BACKENDS", format!("m:{}", sim.addr())),
            ("MAX_IN_FLIGHT_PER_SERVER", "0".into()),
        ],
    )
    .await?;
    gw.wait_healthy(1, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = gw.proc();
    let base_conns = metric(&gw.metrics().await?, "llmmux_connections_open", &[]);
    let mut peaks = Vec::new();
    let mut worst = Duration::ZERO;
    let mut evidence = Vec::new();
    for w in 0..2 {
        let disc_before = sim.stats().await?.client_disconnects;
        let (open, peak, released) = one_wave(ctx, &gw, &sim, n).await;
        peaks.push(peak);
        row.check(open == n, format!("wave {}: only {open} of {n} streams opened", w + 1));
        let closed = wait_until(ctx.deadline(Duration::from_secs(1)).max(Duration::from_secs(1)), || async {
            sim.stats().await.is_ok_and(|s| s.active_requests == 0)
        })
        .await;
        let took = released.elapsed();
        match closed {
            Some(_) => worst = worst.max(took),
            None => {
                worst = worst.max(took);
                row.check(false, format!("wave {}: upstream requests still open after {}", w + 1, fmt_ms(took)));
            }
        }
        row.check(
            took <= ctx.deadline(Duration::from_secs(1)),
            format!("wave {}: upstream closed after {}", w + 1, fmt_ms(took)),
        );
        let disc = sim.stats().await?.client_disconnects - disc_before;
        // Back to baseline: descriptors, threads, connections, in-flight.
        let settled = wait_until(Duration::from_secs(10), || async {
            let p = gw.proc();
            let m = gw.metrics().await.unwrap_or_default();
            p.fds <= base.fds + 16
                && p.threads <= base.threads + 2
                && metric(&m, "llmmux_connections_open", &[]) <= base_conns + 1.0
                && metric(&m, "llmmux_backend_in_flight", &[]) == 0.0
        })
        .await;
        let after = gw.proc();
        row.check(
            settled.is_some(),
            format!(
                "wave {}: not back to baseline: fds {} → {}, threads {} → {}",
                w + 1,
                base.fds,
                after.fds,
                base.threads,
                after.threads
            ),
        );
        evidence.push(format!(
            "wave {}: {open} open, {disc} upstream disconnects seen, peak RSS {} MiB, fds {}→{}",
            w + 1,
            peak / 1024,
            base.fds,
            after.fds
        ));
    }
    if let [first, second] = peaks[..] {
        row.check(
            second as f64 <= first as f64 * 1.10,
            format!("2nd wave RSS peak {second} KiB > 1st {first} KiB + 10 %"),
        );
    }
    row.requests = 2 * n as u64;
    let end: ProcStats = gw.proc();
    row.evidence = format!("{}; RSS now {} MiB", evidence.join("; "), end.rss_kib / 1024);
    row.figure = format!("disconnect → upstream closed ≤ {}", fmt_ms(worst));
    Ok(row)
}
