//! Servers that die, hang, refuse and flap (issue 12 scenarios 1, 2, 3, 5, 11).

use std::time::{Duration, Instant};

use super::{fmt_ms, sim_args, strs};
use crate::client::{self, Background, Chat, Load, Tally, Verdict};
use crate::error::Result;
use crate::harness::{backends, metric, wait_until, Ctx, Gateway, Sim, KEY};
use crate::report::Row;

/// Upstream attempts the simulators saw.
async fn attempts(sims: &[&Sim]) -> u64 {
    let mut n = 0;
    for s in sims {
        n += s.stats().await.map(|s| s.inference_requests).unwrap_or(0);
    }
    n
}

fn load(gw: &Gateway, concurrency: usize) -> Load {
    Load {
        chat: Chat::new(&gw.base(), KEY, "m", false).max_tokens(8),
        concurrency,
        total: None,
        duration: None,
        stream_every: 2,
        backoff_on_reject: None,
    }
}

/// Scenario 1: A server is SIGKILLed while streams are open on it.
///
/// Pass: every stream open on the killed server ends with an SSE error event followed by
/// `[DONE]` within 2 s of the kill (none hangs, none ends silently, none fails otherwise);
/// streams on the healthy server complete; at least one stream was on the killed server;
/// afterwards every new request succeeds (routed to the healthy server).
/// Figure: the slowest time from the kill to the end of a stream.
pub async fn kill_mid_stream(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("kill-mid-stream", "SIGKILL a server with streams open");
    // 400 tokens × 10 ms: streams last 4 s, so they are mid-way when the kill comes.
    let args = sim_args(400, 10);
    let mut a = Sim::start(ctx, "a", &strs(&args)).await?;
    let b = Sim::start(ctx, "b", &strs(&args)).await?;
    let gw = Gateway::start(ctx, &[("BACKENDS", backends("m", &[&a, &b]))]).await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;

    let n = ctx.n(10, 40);
    let mut open = Vec::new();
    for _ in 0..n {
        let (http, chat) = (
            ctx.http.clone(),
            Chat::new(&gw.base(), KEY, "m", true).timeout(Duration::from_secs(30)),
        );
        open.push(tokio::spawn(
            async move { client::send(&http, &chat).await },
        ));
    }
    let started = wait_until(Duration::from_secs(10), || async {
        let (sa, sb) = (a.stats().await, b.stats().await);
        matches!((sa, sb), (Ok(x), Ok(y)) if (x.active_requests + y.active_requests) as usize >= n)
    })
    .await;
    row.check(started.is_some(), "streams did not all start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let on_a = a.stats().await.map(|s| s.active_requests).unwrap_or(0);
    let killed_at = Instant::now();
    a.kill().await?;
    let mut streams = Vec::new();
    for t in open {
        if let Ok(s) = t.await {
            streams.push(s);
        }
    }
    let cut: Vec<_> = streams
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::StreamError(_)))
        .collect();
    let worst = cut
        .iter()
        .map(|s| s.ended.saturating_duration_since(killed_at))
        .max()
        .unwrap_or_default();
    let bad = streams
        .iter()
        .filter(|s| !matches!(s.verdict, Verdict::Ok | Verdict::StreamError(_)))
        .count();
    row.check(!cut.is_empty(), "no stream was on the killed server");
    row.check(
        bad == 0,
        format!("{bad} streams ended without an error event"),
    );
    row.check(
        worst <= ctx.deadline(Duration::from_secs(2)),
        format!("a stream ended {} after the kill", fmt_ms(worst)),
    );

    // After the kill: every new request is served by the healthy server.
    let mut after = load(&gw, 4);
    after.total = Some(ctx.n(40, 400));
    let later = client::drive(&ctx.http, &after, Default::default()).await;
    let t_after = Tally::of(&later);
    row.check(
        t_after.failed() == 0,
        format!("{} failures after the kill", t_after.failed()),
    );
    let up = metric(
        &gw.metrics().await?,
        "llmmux_backend_up",
        &[&format!("backend=\"{}\"", a.backend_id())],
    );
    let mut all = streams.clone();
    all.extend(later);
    row.tally(&Tally::of(&all));
    row.evidence = format!(
        "SIGKILL ×{}, {on_a} streams open on it, {} cut with an error event; killed server up={up}",
        a.kills,
        cut.len()
    );
    row.figure = format!("kill → last stream end {}", fmt_ms(worst));
    Ok(row)
}

/// Scenario 2: A server hangs. Phase 1: it accepts connections and answers nothing at all, health
/// checks included (a wedged host), under mixed stream and whole-answer load. Phase 2: it
/// hangs inference only (health checks pass), under streams: FIRST_BYTE_TIMEOUT decides.
/// (A whole answer on a server that passes its health checks but never answers waits for
/// REQUEST_TIMEOUT by design: vLLM sends a whole answer's headers only when generation
/// ends, so a long generation and a hang look the same.)
///
/// Pass: 0 client errors; every request ends within FIRST_BYTE_TIMEOUT (1 s) + 1 s (the
/// hung attempt is abandoned and retried on the replica before the first byte); upstream
/// attempts ≤ 1.2 × client requests + 3.
/// Figure: attempts / requests and the slowest request.
pub async fn hang(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("backend-hang", "one server hangs (accepts, never answers)");
    let args = sim_args(8, 0);
    let a = Sim::start(ctx, "a", &strs(&args)).await?;
    let b = Sim::start(ctx, "b", &strs(&args)).await?;
    let gw = Gateway::start(ctx, &[("BACKENDS", backends("m", &[&a, &b]))]).await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    a.control("silent", serde_json::json!({"silent": true}))
        .await?;
    let mut l = load(&gw, 8);
    l.total = Some(ctx.n(40, 400));
    let mut samples = client::drive(&ctx.http, &l, Default::default()).await;
    a.control("silent", serde_json::json!({"silent": false}))
        .await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    a.fault("hang").await?;
    l.stream_every = 1;
    samples.extend(client::drive(&ctx.http, &l, Default::default()).await);
    let t = Tally::of(&samples);
    row.tally(&t);
    let n_attempts = attempts(&[&a, &b]).await;
    let hung = a.stats().await.map(|s| s.inference_requests).unwrap_or(0);
    let slowest = samples
        .iter()
        .map(|s| s.latency())
        .max()
        .unwrap_or_default();
    let ratio = n_attempts as f64 / t.requests.max(1) as f64;
    row.check(t.failed() == 0, format!("{} client errors", t.failed()));
    row.check(
        slowest <= ctx.deadline(Duration::from_secs(2)),
        format!("slowest request {}", fmt_ms(slowest)),
    );
    row.check(
        n_attempts as f64 <= 1.2 * t.requests as f64 + 3.0,
        format!("{n_attempts} attempts for {} requests", t.requests),
    );
    let ejections = metric(
        &gw.metrics().await?,
        "llmmux_backend_ejections_total",
        &[&format!("backend=\"{}\"", a.backend_id())],
    );
    row.evidence = format!(
        "wedged, then inference-only hang; {hung} requests reached the hung server (silent ones uncounted); ejections {ejections}"
    );
    row.figure = format!("attempts/requests {ratio:.3}; slowest {}", fmt_ms(slowest));
    Ok(row)
}

/// Scenario 3: A server answers 503 to inference for 30 s (short: 3 s), then recovers.
///
/// Pass: 0 client errors (every 503 retried on the replica); the server is passively
/// ejected (seen in /metrics); after recovery it serves requests again within
/// EJECT_MAX (5 s) + 1 s (probed and re-admitted); upstream attempts ≤ 1.2 × requests + 3
/// (no retry storm).
/// Figure: time from recovery to the first request it serves.
pub async fn unavailable_then_recover(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("503-then-recover", "503 for a while, then recovery");
    let args = sim_args(8, 0);
    let a = Sim::start(ctx, "a", &strs(&args)).await?;
    let b = Sim::start(ctx, "b", &strs(&args)).await?;
    let gw = Gateway::start(ctx, &[("BACKENDS", backends("m", &[&a, &b]))]).await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    let bg = Background::start(&ctx.http, load(&gw, 8));
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.fault("status=503").await?;
    tokio::time::sleep(ctx.window(3_000, 30_000)).await;
    let failing = a.stats().await?.inference_requests;
    a.fault("none").await?;
    let recovered = wait_until(ctx.deadline(Duration::from_secs(6)), || async {
        a.stats()
            .await
            .is_ok_and(|s| s.inference_requests > failing)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = bg.finish().await;
    let t = Tally::of(&samples);
    row.tally(&t);
    let n_attempts = attempts(&[&a, &b]).await;
    let ejections = metric(
        &gw.metrics().await?,
        "llmmux_backend_ejections_total",
        &[&format!("backend=\"{}\"", a.backend_id())],
    );
    row.check(t.failed() == 0, format!("{} client errors", t.failed()));
    row.check(ejections >= 1.0, "the failing server was never ejected");
    row.check(recovered.is_some(), "the server was not re-admitted");
    row.check(
        n_attempts as f64 <= 1.2 * t.requests as f64 + 3.0,
        format!("{n_attempts} attempts for {} requests", t.requests),
    );
    row.evidence = format!(
        "{failing} requests reached the server while it answered 503; ejections {ejections}"
    );
    row.figure = match recovered {
        Some(d) => format!(
            "re-admitted {} after recovery; attempts/requests {:.3}",
            fmt_ms(d),
            n_attempts as f64 / t.requests.max(1) as f64
        ),
        None => "never re-admitted".into(),
    };
    Ok(row)
}

/// Scenario 5: A server flaps: up 2 s, SIGKILLed, down 2 s, restarted, for 60 s (short: 8 s),
/// under load, next to a healthy replica.
///
/// Pass: client error rate < 1 % (streams cut by a kill count as errors).
/// Figure: the error rate.
pub async fn flapping(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("flapping", "up 2 s / down 2 s (SIGKILL, restart)");
    let args = sim_args(8, 0);
    let mut a = Sim::start(ctx, "a", &strs(&args)).await?;
    let b = Sim::start(ctx, "b", &strs(&args)).await?;
    let gw = Gateway::start(ctx, &[("BACKENDS", backends("m", &[&a, &b]))]).await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    let bg = Background::start(&ctx.http, load(&gw, 8));
    let total = ctx.window(8_000, 60_000);
    let started = Instant::now();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.kill().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.launch().await?;
    }
    let samples = bg.finish().await;
    let t = Tally::of(&samples);
    row.tally(&t);
    let rate = t.failed() as f64 / t.requests.max(1) as f64 * 100.0;
    let ejections = metric(
        &gw.metrics().await?,
        "llmmux_backend_ejections_total",
        &[&format!("backend=\"{}\"", a.backend_id())],
    );
    row.check(t.requests > 50, format!("only {} requests", t.requests));
    row.check(rate < 1.0, format!("error rate {rate:.3} %"));
    row.evidence = format!(
        "SIGKILL ×{}, restarts ×{}; ejections {ejections}",
        a.kills, a.kills
    );
    row.figure = format!("error rate {rate:.3} %");
    Ok(row)
}

/// Scenario 11: One server answers 503 to every second request; another starts 1 s after the
/// gateway; a third is healthy. Concurrency 64.
///
/// Pass: 0 client errors while a healthy server has capacity; the late server serves
/// requests once it is up.
/// Figure: client errors, attempts / requests, the late server's share.
pub async fn half_503_late_start(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new(
        "half-503-late-start",
        "503 every 2nd request + a late server",
    );
    let args = sim_args(8, 0);
    let mut a_args = args.clone();
    a_args.extend(["--fault".into(), "status_every=503/2".into()]);
    let a = Sim::start(ctx, "a", &strs(&a_args)).await?;
    let b = Sim::start(ctx, "b", &strs(&args)).await?;
    let mut c = Sim::reserve(ctx, "c", &strs(&args))?;
    let gw = Gateway::start(ctx, &[("BACKENDS", backends("m", &[&a, &b, &c]))]).await?;
    let gw_started = Instant::now();
    let mut l = load(&gw, 64);
    l.duration = Some(ctx.window(4_000, 20_000));
    let bg = Background::start(&ctx.http, l);
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(gw_started.elapsed())).await;
    c.launch().await?;
    let samples = bg.finish_when_done().await;
    let t = Tally::of(&samples);
    row.tally(&t);
    let n_attempts = attempts(&[&a, &b, &c]).await;
    let late = c.stats().await.map(|s| s.inference_requests).unwrap_or(0);
    let failed_503 = a
        .stats()
        .await
        .map(|s| s.inference_requests / 2)
        .unwrap_or(0);
    row.check(t.failed() == 0, format!("{} client errors", t.failed()));
    row.check(late > 0, "the late server never served");
    row.evidence = format!("≈{failed_503} 503s answered; late server started after 1 s");
    row.figure = format!(
        "{} client errors; attempts/requests {:.3}; late server served {late}",
        t.failed(),
        n_attempts as f64 / t.requests.max(1) as f64
    );
    Ok(row)
}
