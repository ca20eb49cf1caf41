//! Each actor kind panics under steady traffic. Registry, health and discovery panics cost
//! zero failed requests; a stream actor's panic fails only its own stream, which ends with an
//! SSE error event; a crash loop escalates and stops the gateway. Restart times are printed
//! (run with `--nocapture` to see them) and asserted with a wide margin.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use llmmux::app::{App, Exit};
use llmmux::faults::ActorKind;

/// Steady mixed traffic until stopped; returns (ok, failed).
fn traffic(
    app: &App,
    model: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u32, u32)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let u = url(app, "/v1/chat/completions");
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut i = 0u32;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let stream = i % 2 == 0;
            let good = match client()
                .post(&u)
                .bearer_auth(KEY)
                .json(&chat(model, stream))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(body) => {
                        !stream
                            || (body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""))
                    }
                    Err(_) => false,
                },
                _ => false,
            };
            if good {
                ok += 1
            } else {
                failed += 1
            }
        }
        (ok, failed)
    });
    (stop, task)
}

fn restarts(app: &App, key_prefix: &str) -> (u64, Option<f64>) {
    let report = app.state.lifecycle.supervision.lock().expect("report");
    report
        .iter()
        .filter(|c| c.key.starts_with(key_prefix))
        .fold((0, None), |(n, ms), c| {
            (n + c.restarts, c.last_restart_ms.or(ms))
        })
}

async fn crash_under_traffic(kind: ActorKind, key: &str, route_via: &str) {
    let a = sim_with(&["m"], |c| c.token_delay_ms = 2).await;
    let b = sim_with(&["m"], |c| c.token_delay_ms = 2).await;
    let app = gateway(&[
        ("VLLM_SERVERS", servers(&[&a, &b])),
        ("BACKENDS", backends("m", &[&a, &b])),
        ("ROUTE_VIA", route_via.into()),
    ])
    .await;
    all_healthy(&app).await;
    let (stop, task) = traffic(&app, "m");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3u64 {
        assert!(app.state.faults.crash(kind).await, "{kind:?} was running");
        let restarted = eventually(Duration::from_secs(5), || async {
            restarts(&app, key).0 == i + 1
        });
        assert!(restarted.await, "{kind:?} restarted");
        let running = eventually(Duration::from_secs(5), || async {
            app.state
                .lifecycle
                .supervision
                .lock()
                .expect("report")
                .iter()
                .filter(|c| c.key.starts_with(key))
                .all(|c| c.running)
        });
        assert!(running.await, "{kind:?} running again");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = task.await.expect("traffic");
    let (n, last_ms) = restarts(&app, key);
    println!("{kind:?} (route via {route_via}): {n} restarts, last restart took {last_ms:?} ms; traffic ok={ok} failed={failed}");
    assert_eq!(n, 3);
    // Target 100 ms; asserted at 5x.
    assert!(
        last_ms.is_some_and(|ms| ms < 500.0),
        "restart took {last_ms:?} ms"
    );
    assert!(ok > 10, "traffic kept flowing ({ok})");
    assert_eq!(failed, 0, "{kind:?} panics must cost zero failed requests");
    // The gateway still routes and discovers after the restarts.
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("m", false))
            .await
            .status(),
        200
    );
    assert_eq!(app.shutdown().await, Exit::Requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_panics_cost_no_requests_via_registry_routing() {
    crash_under_traffic(ActorKind::Registry, "registry", "registry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_panics_cost_no_requests_via_snapshot_routing() {
    crash_under_traffic(ActorKind::Registry, "registry", "snapshot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_actor_panics_cost_no_requests() {
    crash_under_traffic(ActorKind::Health, "health-", "registry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_panics_cost_no_requests() {
    crash_under_traffic(ActorKind::Discovery, "discovery", "registry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_actor_panic_fails_only_its_own_stream() {
    let a = sim_with(&["m"], |c| {
        c.token_delay_ms = 100;
        c.completion_tokens = 30;
    })
    .await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a])),
        ("STREAM_SHARDS", "1".into()),
    ])
    .await;
    let victim = post(&app, "/v1/chat/completions", &chat("m", true)).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.state.proxy.streams.live().await == 1
        })
        .await
    );
    assert!(
        app.state.faults.crash(ActorKind::Stream).await,
        "a stream actor was live"
    );
    let body = tokio::time::timeout(Duration::from_secs(5), victim.text())
        .await
        .expect("victim ends within 5 s (target 1 s)")
        .expect("body");
    let events = sse_data(&body);
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]", "{body}");
    assert!(events[n - 2].contains("\"error\""), "{body}");
    assert!(
        a.wait_disconnects(1, Duration::from_secs(5)).await,
        "its upstream was cancelled"
    );
    // Other and later streams are unaffected.
    let later = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    assert!(
        later.ends_with("data: [DONE]\n\n") && !later.contains("\"error\""),
        "{later}"
    );
    assert_eq!(app.shutdown().await, Exit::Requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_escalates_and_stops_the_gateway() {
    let a = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a]))]).await;
    all_healthy(&app).await;
    for i in 0..6u64 {
        assert!(
            app.state.faults.crash(ActorKind::Registry).await,
            "crash {i} delivered"
        );
        if i < 5 {
            // Wait for the replacement so the next crash reaches a live actor.
            let back = eventually(Duration::from_secs(10), || async {
                app.state
                    .lifecycle
                    .supervision
                    .lock()
                    .expect("report")
                    .iter()
                    .any(|c| c.key == "registry" && c.running && c.restarts == i + 1)
            });
            assert!(back.await, "restart {} happened", i + 1);
        }
    }
    tokio::time::timeout(Duration::from_secs(30), app.escalated())
        .await
        .expect("escalated after the restart budget");
    assert!(app.state.lifecycle.is_escalated());
    let r = client().get(url(&app, "/readyz")).send().await;
    // The listener may already be closed; if it still answers, readiness is 503.
    if let Ok(r) = r {
        assert_eq!(r.status(), 503);
    }
    assert_eq!(app.shutdown().await, Exit::Escalated);
}
