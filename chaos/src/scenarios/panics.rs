//! Actor panics under load through the gateway's fault-injection endpoint
//! (`POST /admin/faults/crash/{actor}`, compiled only with `--features fault-injection`)
//! (issue 12 scenario 8).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{Background, Chat, Load, Tally, Verdict};
use crate::error::{ChaosError, Result};
use crate::harness::{backends, wait_until, Ctx, Gateway, Sim, KEY};
use crate::report::Row;

/// Time from now to the first SSE bytes of a new stream through the gateway: how soon it
/// serves again. `None` if the request failed.
async fn first_bytes(ctx: &Ctx, gw: &Gateway) -> Option<Duration> {
    let started = Instant::now();
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 2,
        "messages": [{"role": "user", "content": "after the panic"}]});
    let mut resp = ctx
        .http
        .post(format!("{}/v1/chat/completions", gw.base()))
        .bearer_auth(KEY)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let first = resp.chunk().await.ok()??;
    (!first.is_empty()).then(|| started.elapsed())
}

/// The supervision report's children for an actor kind: (restarts, slowest last restart
/// in ms, all running).
fn supervision(v: &Value, kind: &str) -> (u64, f64, bool) {
    let prefix = match kind {
        "health" => "health-",
        "stream" => "stream",
        other => other,
    };
    let children: Vec<&Value> = v["supervision"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["child"].as_str().is_some_and(|k| k.starts_with(prefix)))
                .collect()
        })
        .unwrap_or_default();
    let restarts = children.iter().filter_map(|c| c["restarts"].as_u64()).sum();
    let slowest = children
        .iter()
        .filter_map(|c| c["last_restart_ms"].as_f64())
        .fold(0.0, f64::max);
    let running = children.iter().all(|c| c["running"] == true);
    (restarts, slowest, running)
}

/// An actor of `kind` (registry, discovery, health, stream, audit) panics three times while
/// streams and whole requests run against two servers.
///
/// Pass: after each panic a new request gets its first bytes within 100 ms (served
/// again); each panic of a supervised actor (registry, discovery, health, audit) is
/// followed by a restart within 100 ms plus the supervisor's designed backoff (0, 50, 100 ms for the 1st,
/// 2nd, 3rd failure in its window; measured by the supervisor) and the actor runs again,
/// and no request fails; a stream-actor panic (not restarted: the actor is the stream)
/// fails only its own stream, with an error event and `[DONE]`, never a silent end; the
/// gateway is still alive and serving.
/// Figure: the restart times, or the crashed streams' ends.
pub async fn panic(ctx: &Ctx, kind: &str) -> Result<Row> {
    let mut row = Row::new(&format!("panic-{kind}"), &format!("{kind} actor panics ×3"));
    // Streams of 30 tokens × 20 ms keep stream actors alive when the crash comes.
    let args = ["--model", "m", "--tokens", "30", "--token-delay-ms", "20"];
    let a = Sim::start(ctx, "a", &args).await?;
    let b = Sim::start(ctx, "b", &args).await?;
    let mut gw = Gateway::start(
        ctx,
        &[
            ("VLLM_SERVERS", format!("{},{}", a.addr(), b.addr())),
            ("BACKENDS", backends("m", &[&a, &b])),
        ],
    )
    .await?;
    gw.wait_healthy(2, Duration::from_secs(10)).await?;
    let bg = Background::start(
        &ctx.http,
        Load {
            chat: Chat::new(&gw.base(), KEY, "m", false),
            concurrency: 8,
            total: None,
            duration: None,
            stream_every: 2,
            backoff_on_reject: None,
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The supervisor restarts the first failure at once and backs off 50 ms, doubling, for
    // the next ones within its window: the n-th restart may take that backoff + 100 ms.
    const BACKOFF_MS: [f64; 3] = [0.0, 50.0, 100.0];
    let supervised = kind != "stream";
    let mut took = Vec::new();
    let mut served: Vec<Option<Duration>> = Vec::new();
    let mut crashed = 0;
    for i in 0..3u64 {
        if !gw.crash(kind).await? {
            return Err(ChaosError::Protocol(format!(
                "no live {kind} actor to crash"
            )));
        }
        crashed += 1;
        // Served again: a new request right after the panic gets its first bytes at once,
        // whatever the supervisor's restart backoff (the request path needs no actor but
        // its own stream's).
        served.push(first_bytes(ctx, &gw).await);
        if supervised {
            let back = wait_until(Duration::from_secs(5), || async {
                gw.admin_backends().await.is_ok_and(|v| {
                    let (n, _, running) = supervision(&v, kind);
                    n > i && running
                })
            })
            .await;
            row.check(
                back.is_some(),
                format!("{kind} not running again after panic {}", i + 1),
            );
            let (_, ms, _) = supervision(&gw.admin_backends().await?, kind);
            took.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = bg.finish().await;
    let t = Tally::of(&samples);
    row.tally(&t);
    let (restarts, _, _) = supervision(&gw.admin_backends().await?, kind);
    let alive = gw.alive();
    let stream_errors = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::StreamError(_)))
        .count() as u64;
    let limit = ctx.deadline(Duration::from_millis(100)).as_secs_f64() * 1000.0;
    for (i, ms) in took.iter().enumerate() {
        row.check(
            *ms <= limit + BACKOFF_MS[i],
            format!(
                "restart {} took {ms:.1} ms (backoff {} ms)",
                i + 1,
                BACKOFF_MS[i]
            ),
        );
    }
    for (i, d) in served.iter().enumerate() {
        match d {
            Some(d) => row.check(
                d.as_secs_f64() * 1000.0 <= limit,
                format!(
                    "served {:.1} ms after panic {}",
                    d.as_secs_f64() * 1000.0,
                    i + 1
                ),
            ),
            None => row.check(false, format!("a request after panic {} failed", i + 1)),
        }
    }
    let served_ms = served
        .iter()
        .flatten()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(" / ");
    row.check(alive, "the gateway exited");
    row.check(t.requests > 10, format!("only {} requests", t.requests));
    if supervised {
        row.check(restarts >= 3, format!("{restarts} restarts for 3 panics"));
        row.check(t.failed() == 0, format!("{} failed requests", t.failed()));
        row.figure = format!(
            "served again {served_ms} ms after each panic; restarts {} ms (backoff 0/50/100 ms)",
            took.iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    } else {
        // Stream actors are not restarted: the crashed actor's stream ends with an error
        // event; nothing else may fail.
        row.check(
            t.failed() == stream_errors && stream_errors <= 3,
            format!("failures beyond the crashed streams: {:?}", t.errors),
        );
        row.figure = format!(
            "served again {served_ms} ms after each panic; {stream_errors} of 3 crashed streams ended with an error event, 0 other failures"
        );
    }
    row.evidence = format!("{crashed} panics injected, {restarts} restarts reported");
    Ok(row)
}
