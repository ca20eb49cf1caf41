//! Upstream faults through the gateway: resets, hangs, 503s, retries only before the first
//! byte, passive ejection, client disconnects cancelling upstream work, discovery churn.
//! Deadlines are asserted with wide margins (≥ 5× the target).

mod common;

use std::time::{Duration, Instant};

use common::*;
use llmmux::sim::Fault;
use serde_json::{json, Value};

#[tokio::test]
async fn server_killed_mid_stream_ends_with_error_event_and_no_retry() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a, &b]))]).await;
    a.set_fault(Fault::ResetAfter(3));
    b.set_fault(Fault::ResetAfter(3));
    let started = Instant::now();
    let body = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    let events = sse_data(&body);
    assert!(started.elapsed() < Duration::from_secs(5));
    let n = events.len();
    assert!(n >= 3, "{body}");
    assert_eq!(events[n - 1], "[DONE]");
    let err: Value = serde_json::from_str(&events[n - 2]).expect("error event json");
    assert_eq!(err["error"]["code"], "upstream_error");
    assert_eq!(err["error"]["type"], "server_error");
    assert!(!body.contains("127.0.0.1"));
    // Content chunks before the failure arrived, once each.
    let text = stream_text(&events);
    assert!(text.starts_with("tok0"), "{text}");
    assert_eq!(
        a.stats().inference_requests + b.stats().inference_requests,
        1,
        "never retried after the first byte"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn stalled_stream_gets_error_after_idle_timeout_and_upstream_is_dropped() {
    let a = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a]))]).await;
    a.set_fault(Fault::StallAfter(2));
    let started = Instant::now();
    let body = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    let elapsed = started.elapsed();
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(body.contains("upstream_timeout"), "{body}");
    assert!(
        elapsed < Duration::from_secs(10),
        "idle timeout 1 s, took {elapsed:?}"
    );
    assert!(
        a.wait_disconnects(1, Duration::from_secs(5)).await,
        "gateway dropped the stalled upstream"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn hanging_server_is_retried_on_a_replica_before_first_byte() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a, &b]))]).await;
    a.set_fault(Fault::Hang);
    let ok = |stream: bool| {
        let app = &app;
        async move {
            let r = post(app, "/v1/chat/completions", &chat("m", stream)).await;
            assert_eq!(r.status(), 200, "stream={stream}");
            let body = r.text().await.expect("body");
            assert!(body.contains("tok0"), "{body}");
        }
    };
    // Streams are retried once the hung server misses FIRST_BYTE_TIMEOUT. Ties between two
    // idle servers are broken at random, so keep streaming until the hung one was tried.
    let mut streams = 0;
    while a.stats().inference_requests == 0 {
        assert!(streams < 40, "the hung server was never chosen");
        ok(true).await;
        streams += 1;
    }
    // A whole answer cannot be retried before its deadline (its server is alive and may be
    // generating), so failure accrual must keep it off the server that just timed out.
    for _ in 0..4 {
        ok(false).await;
    }
    assert_eq!(a.stats().inference_requests, 1);
    assert_eq!(b.stats().inference_requests, streams + 4);
    app.shutdown().await;
}

#[tokio::test]
async fn sole_hanging_server_times_out_with_504() {
    let a = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a])),
        ("REQUEST_TIMEOUT", "1000".into()),
    ])
    .await;
    a.set_fault(Fault::Hang);
    for stream in [false, true] {
        let started = Instant::now();
        let r = post(&app, "/v1/chat/completions", &chat("m", stream)).await;
        assert_eq!(r.status(), 504, "stream={stream}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "upstream_timeout");
    }
    assert!(
        a.wait_disconnects(2, Duration::from_secs(5)).await,
        "hung upstream requests were dropped"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn server_503_and_resets_before_headers_are_retried_elsewhere() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a, &b])),
        ("FAILURE_THRESHOLD", "1000".into()),
    ])
    .await;
    for fault in [
        Fault::Status(503),
        Fault::CloseBeforeHeaders,
        Fault::ModelNotFound,
    ] {
        a.set_fault(fault);
        for stream in [false, true] {
            for _ in 0..4 {
                let r = post(&app, "/v1/chat/completions", &chat("m", stream)).await;
                assert_eq!(r.status(), 200, "fault {fault:?} stream={stream}");
            }
        }
    }
    // A 400 from the server is the client's problem: not retried.
    a.set_fault(Fault::None);
    b.set_fault(Fault::None);
    let before = a.stats().inference_requests + b.stats().inference_requests;
    let r = post(
        &app,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role":"user","content":"x"}], "temperature": -1}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        a.stats().inference_requests + b.stats().inference_requests,
        before + 1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn passive_ejection_then_readmission_but_never_the_last_server() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a, &b])),
        ("HEALTH_CHECK_INTERVAL", "100".into()),
        ("FAILURE_THRESHOLD", "3".into()),
    ])
    .await;
    all_healthy(&app).await;
    a.set_fault(Fault::Status(502));
    // Concurrent traffic, so the failing server keeps being chosen while the sound one is
    // busy (one client at a time would always prefer the sound one).
    let body = chat("m", false);
    for _ in 0..4 {
        let wave: Vec<_> = (0..16)
            .map(|_| post(&app, "/v1/chat/completions", &body))
            .collect();
        for r in futures_util::future::join_all(wave).await {
            assert_eq!(r.status(), 200);
        }
    }
    let ejected = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(5), |t| {
            t.backends.values().any(|e| {
                matches!(
                    e.health(),
                    llmmux_actors::table::HealthState::Ejected { .. }
                )
            })
        });
    assert!(ejected.await, "server A ejected after consecutive 502s");
    a.set_fault(Fault::None);
    let back = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(10), |t| {
            t.backends.values().all(|e| e.routable())
        });
    assert!(
        back.await,
        "re-admitted after the ejection period and a good probe"
    );

    // The sole server of a model is never ejected for request-level errors.
    let solo = sim(&["solo"]).await;
    let app2 = gateway(&[
        ("BACKENDS", backends("solo", &[&solo])),
        ("FAILURE_THRESHOLD", "2".into()),
    ])
    .await;
    all_healthy(&app2).await;
    solo.set_fault(Fault::Status(502));
    for _ in 0..10 {
        assert_eq!(
            post(&app2, "/v1/chat/completions", &chat("solo", false))
                .await
                .status(),
            502
        );
    }
    // Every trip the requests sent is applied before the registry answers a sync.
    app2.state
        .proxy
        .registry
        .sync(Duration::from_secs(2))
        .await
        .expect("registry answers");
    assert!(app2
        .state
        .proxy
        .registry
        .table
        .load()
        .backends
        .values()
        .all(|e| e.routable()));
    app.shutdown().await;
    app2.shutdown().await;
}

#[tokio::test]
async fn killed_server_is_taken_out_and_traffic_continues() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a, &b]))]).await;
    all_healthy(&app).await;
    a.shutdown();
    for _ in 0..20 {
        assert_eq!(
            post(&app, "/v1/chat/completions", &chat("m", false))
                .await
                .status(),
            200
        );
    }
    let down = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(5), |t| {
            t.backends.values().filter(|e| e.routable()).count() == 1
        });
    assert!(down.await, "dead server taken out of rotation");
    app.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_stream_nonstream_and_before_first_token() {
    let a = sim_with(&["m"], |c| {
        c.token_delay_ms = 200;
        c.completion_tokens = 100;
    })
    .await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a])),
        ("REQUEST_TIMEOUT", "30000".into()),
        ("FIRST_BYTE_TIMEOUT", "30000".into()),
    ])
    .await;
    // Mid-stream.
    let mut resp = post(&app, "/v1/chat/completions", &chat("m", true)).await;
    let _ = resp.chunk().await.expect("first chunk");
    let closed_at = Instant::now();
    drop(resp);
    assert!(
        a.wait_disconnects(1, Duration::from_secs(5)).await,
        "stream cancelled upstream"
    );
    assert!(closed_at.elapsed() < Duration::from_secs(5));
    // Non-stream, while the server is generating.
    let req = tokio::spawn({
        let u = url(&app, "/v1/chat/completions");
        async move {
            client()
                .post(u)
                .bearer_auth(KEY)
                .json(&chat("m", false))
                .send()
                .await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().active_requests == 1
        })
        .await
    );
    req.abort();
    assert!(
        a.wait_disconnects(2, Duration::from_secs(5)).await,
        "non-stream cancelled upstream"
    );
    // Before the first token.
    a.set_fault(Fault::Hang);
    let req = tokio::spawn({
        let u = url(&app, "/v1/chat/completions");
        async move {
            client()
                .post(u)
                .bearer_auth(KEY)
                .json(&chat("m", true))
                .send()
                .await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().active_requests == 1
        })
        .await
    );
    req.abort();
    assert!(
        a.wait_disconnects(3, Duration::from_secs(5)).await,
        "waiting request cancelled upstream"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats().active_requests == 0
        })
        .await
    );
    let table = app.state.proxy.registry.table.load();
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = table.clone();
            async move {
                t.backends.values().all(|e| {
                    e.handle
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed)
                        == 0
                })
            }
        })
        .await,
        "in-flight slots released"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn discovery_adds_and_removes_models_while_traffic_runs() {
    let a = sim(&["base"]).await;
    let app = gateway(&[("VLLM_SERVERS", servers(&[&a]))]).await;
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| t.knows_model("base"))
            .await
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let u = url(&app, "/v1/chat/completions");
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client()
                    .post(&u)
                    .bearer_auth(KEY)
                    .json(&chat("base", false))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }
    });
    a.set_models(vec!["base".into(), "new-model".into()]);
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| t.knows_model("new-model"))
            .await,
        "model added"
    );
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("new-model", false))
            .await
            .status(),
        200
    );
    a.set_models(vec!["base".into()]);
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| !t.knows_model("new-model"))
            .await,
        "model removed"
    );
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("new-model", false))
            .await
            .status(),
        404
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.expect("traffic");
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "no request for the steady model failed during churn"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn static_backends_are_the_fallback_when_discovery_never_works() {
    // A server whose /v1/models is unreachable keeps its static models.
    let a = sim(&["m"]).await;
    let app = gateway(&[
        ("VLLM_SERVERS", servers(&[&a])),
        ("BACKENDS", backends("static-only", &[&a])),
    ])
    .await;
    assert!(app
        .state
        .proxy
        .registry
        .table
        .load()
        .knows_model("static-only"));
    // Discovery replaces them with what the server really lists.
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| t.knows_model("m"))
            .await
    );
    app.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish_and_flips_readiness() {
    let a = sim_with(&["m"], |c| {
        c.token_delay_ms = 50;
        c.completion_tokens = 10;
    })
    .await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a]))]).await;
    let resp = post(&app, "/v1/chat/completions", &chat("m", true)).await;
    let state = app.state.clone();
    let shutdown = tokio::spawn(app.shutdown());
    assert!(
        eventually(Duration::from_secs(2), || async {
            state.lifecycle.is_draining()
        })
        .await
    );
    let body = resp.text().await.expect("stream finishes");
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    assert!(!body.contains("\"error\""), "{body}");
    assert_eq!(shutdown.await.expect("join"), llmmux::app::Exit::Requested);
}
