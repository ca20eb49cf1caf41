//! Failover as users see it (core-hardening items 1–6): failure-aware routing, per-model
//! retry budgets with a reserve, liveness-driven abandonment of requests on a dead server,
//! keep-alive comments while a live server prefills, on-demand probes for a server that
//! starts late, and capacity taken only after the body is in.

mod common;

use std::time::{Duration, Instant};

use common::*;
use llmmux::sim::Fault;
use llmmux_actors::table::HealthState;
use tokio::io::AsyncWriteExt;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_fails_fast_costs_no_client_errors() {
    let bad = sim(&["m"]).await;
    let good = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&bad, &good]))]).await;
    all_healthy(&app).await;
    bad.set_fault(Fault::Status(503));
    let failed = load(&app, "m", 20, 4, CLIENT_TIMEOUT).await;
    assert!(failed.is_empty(), "client errors: {failed:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_one_request_in_two_costs_no_client_errors_up_to_concurrency_64() {
    for concurrency in [16, 64] {
        let flaky = sim(&["m"]).await;
        let good = sim(&["m"]).await;
        let app = gateway(&[("BACKENDS", backends("m", &[&flaky, &good]))]).await;
        all_healthy(&app).await;
        flaky.set_fault(Fault::StatusEvery {
            status: 503,
            every: 2,
        });
        let failed = load(&app, "m", 96, concurrency, CLIENT_TIMEOUT).await;
        assert!(
            failed.is_empty(),
            "concurrency {concurrency}: {} client errors: {:?}",
            failed.len(),
            failed.first()
        );
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_stays_within_the_retry_budget() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a, &b])),
        // No ejection, so every request really tries both servers if the budget allows.
        ("FAILURE_THRESHOLD", "100000".into()),
        ("FAILURE_RATE_PERCENT", "100".into()),
        ("MAX_ATTEMPTS", "3".into()),
        ("RETRY_BUDGET_MIN_PER_SEC", "1".into()),
        ("RETRY_BUDGET_TTL", "10000".into()),
    ])
    .await;
    all_healthy(&app).await;
    a.set_fault(Fault::Status(503));
    b.set_fault(Fault::Status(503));
    let n = 200;
    let failed = load(&app, "m", n, 16, CLIENT_TIMEOUT).await;
    assert_eq!(failed.len(), n, "every request fails during a full outage");
    let attempts = a.stats().inference_requests + b.stats().inference_requests;
    let reserve = 10; // 1 per second over 10 s
    let bound = (n as u64) * 12 / 10 + reserve;
    assert!(attempts <= bound, "{attempts} upstream attempts > {bound}");
    assert!(
        attempts > n as u64,
        "the budget allowed some retries ({attempts} attempts)"
    );
    app.shutdown().await;
}

/// A TCP server that accepts connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_silent_server_move_to_another_once_its_probe_fails() {
    let silent = sim(&["m"]).await;
    let good = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&silent, &good])),
        // Scheduled probes are rare: only the on-demand probes of waiting requests find
        // the silent server, and only liveness (not a timeout) frees its requests.
        ("HEALTH_CHECK_INTERVAL", "60000".into()),
        ("HEALTH_PROBE_TIMEOUT", "500".into()),
        ("ON_DEMAND_PROBE_INTERVAL", "300".into()),
        ("FIRST_BYTE_TIMEOUT", "60000".into()),
        ("REQUEST_TIMEOUT", "60000".into()),
        ("STREAM_KEEPALIVE_INTERVAL", "60000".into()),
    ])
    .await;
    all_healthy(&app).await;
    silent.set_silent(true);
    let started = Instant::now();
    let failed = load(&app, "m", 8, 4, Duration::from_secs(30)).await;
    assert!(failed.is_empty(), "client errors: {failed:?}");
    // Each wave waits at most ~probe interval + probe timeout on the silent server.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let table = app.state.proxy.registry.table.load();
    let e = &table.backends[&llmmux_actors::table::BackendId::new(id_of(&silent))];
    assert!(
        matches!(e.health(), HealthState::Down { .. }),
        "silent server marked down, is {:?}",
        e.health()
    );
    app.shutdown().await;
}

/// A server that keeps streaming but answers its probe late is busy, not dead: it stays in
/// rotation and new requests, streamed or not, are served by it. Once it sends nothing at
/// all, a late probe takes it out as before, and a prompt one brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_that_answers_probes_late_stays_in_rotation() {
    let busy = sim_with(&["m"], |c| {
        c.completion_tokens = 40;
        c.token_delay_ms = 100;
    })
    .await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&busy])),
        ("HEALTH_CHECK_INTERVAL", "200".into()),
        ("HEALTH_PROBE_TIMEOUT", "300".into()),
        ("FIRST_BYTE_TIMEOUT", "60000".into()),
        ("REQUEST_TIMEOUT", "60000".into()),
    ])
    .await;
    all_healthy(&app).await;
    let state = || {
        let table = app.state.proxy.registry.table.load();
        table.backends[&llmmux_actors::table::BackendId::new(id_of(&busy))]
            .health()
            .clone()
    };
    busy.update_config(|c| c.health_delay_ms = 1_000);
    let probes_before = busy.stats().health_probes;
    // Four streams of 40 tokens, one every 100 ms: about 4 s of steady output.
    let long: Vec<_> = (0..4)
        .map(|_| {
            let base = url(&app, "/v1/chat/completions");
            tokio::spawn(async move {
                client()
                    .post(base)
                    .bearer_auth(KEY)
                    .json(&chat("m", true))
                    .send()
                    .await
                    .expect("send")
                    .text()
                    .await
                    .expect("body")
            })
        })
        .collect();
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut body = chat("m", i % 2 == 0);
        body["max_tokens"] = 2.into();
        let r = post(&app, "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200, "request {i} while busy: {:?}", state());
        let text = r.text().await.expect("body");
        assert!(text.contains("tok0"), "{text}");
    }
    for t in long {
        let body = t.await.expect("stream task");
        let events = sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
        assert!(!body.contains("\"error\""), "{body}");
    }
    assert!(
        busy.stats().health_probes >= probes_before + 3,
        "late probes were sent meanwhile"
    );
    assert!(state().admits_traffic(), "busy server is {:?}", state());
    let metrics = client()
        .get(url(&app, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let busy_probes: f64 = metrics
        .lines()
        .find(|l| l.starts_with("llmmux_backend_busy_probes_total{"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0);
    assert!(busy_probes >= 3.0, "busy probes counted: {metrics}");
    // Idle now: nothing shows it alive, so the next late probe takes it out.
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(state(), HealthState::Down { .. })
        })
        .await,
        "an idle server whose probes time out stays {:?}",
        state()
    );
    busy.update_config(|c| c.health_delay_ms = 0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            state().admits_traffic()
        })
        .await,
        "prompt probes bring it back"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_server_is_found_dead_and_its_requests_retried() {
    let (hole, _task) = black_hole().await;
    let good = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", format!("m:{hole},m:{}", good.addr())),
        ("HEALTH_CHECK_INTERVAL", "60000".into()),
        ("HEALTH_PROBE_TIMEOUT", "400".into()),
        ("ON_DEMAND_PROBE_INTERVAL", "200".into()),
        ("FIRST_BYTE_TIMEOUT", "60000".into()),
        ("REQUEST_TIMEOUT", "60000".into()),
    ])
    .await;
    let failed = load(&app, "m", 8, 4, Duration::from_secs(30)).await;
    assert!(failed.is_empty(), "client errors: {failed:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_token_from_a_live_server_succeeds_with_keepalive_comments() {
    let slow = sim_with(&["m"], |c| c.prefill_ms = 3_000).await;
    let other = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&slow])),
        ("STREAM_KEEPALIVE_INTERVAL", "400".into()),
        ("STREAM_IDLE_TIMEOUT", "1000".into()),
        ("FIRST_BYTE_TIMEOUT", "1000".into()),
        ("REQUEST_TIMEOUT", "30000".into()),
        ("ON_DEMAND_PROBE_INTERVAL", "300".into()),
    ])
    .await;
    all_healthy(&app).await;
    let started = Instant::now();
    let resp = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat("m", true))
        .send()
        .await
        .expect("headers arrive before the first token");
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "headers sent once the server accepted, not after the first token"
    );
    // The first comment comes with the headers: the client never waits more than one
    // interval for a byte once the server accepted the request.
    let mut resp = resp;
    let first = resp
        .chunk()
        .await
        .expect("first bytes")
        .expect("some bytes");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "a byte within one interval of the headers"
    );
    let mut body = String::from_utf8_lossy(&first).into_owned();
    assert!(body.starts_with(": keep-alive"), "{body:?}");
    while let Some(chunk) = resp.chunk().await.expect("body") {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let comments = body.matches(": keep-alive\n\n").count();
    assert!(comments >= 3, "{comments} keep-alive comments in {body:?}");
    assert!(body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""));
    assert!(body.find(": keep-alive").unwrap_or(usize::MAX) < body.find("data:").unwrap_or(0));
    assert_eq!(
        slow.stats().inference_requests,
        1,
        "committed: never retried"
    );
    assert_eq!(other.stats().inference_requests, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_starts_after_the_gateway_is_used_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let app = gateway(&[
        ("BACKENDS", format!("m:127.0.0.1:{port}")),
        // Down-state probes every 7.5 s, as with the default interval.
        ("HEALTH_CHECK_INTERVAL", "30000".into()),
    ])
    .await;
    let down = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(5), |t| {
            t.backends
                .values()
                .all(|e| matches!(e.health(), HealthState::Down { .. }))
        })
        .await;
    assert!(down, "the first probe found nothing listening");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the port");
    let _late = llmmux::sim::start(
        listener,
        llmmux::sim::SimConfig {
            models: vec!["m".into()],
            ..Default::default()
        },
    )
    .await
    .expect("sim");
    let started = Instant::now();
    let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), 200, "routed after an on-demand probe");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_capacity() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("MAX_IN_FLIGHT", "2".into()),
        ("BODY_READ_TIMEOUT", "10000".into()),
    ])
    .await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        c.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        slow.push(c);
    }
    // Give the gateway time to parse the slow uploads' heads and enter their handlers
    // (where the old code took the MAX_IN_FLIGHT permits before reading the body).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
        assert_eq!(r.status(), 200, "slow uploaders hold no MAX_IN_FLIGHT slot");
    }
    drop(slow);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_flowing_is_not_cut_by_a_failed_probe() {
    let s = sim_with(&["m"], |c| {
        c.completion_tokens = 40;
        c.token_delay_ms = 50;
    })
    .await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("ON_DEMAND_PROBE_INTERVAL", "100".into()),
        ("HEALTH_CHECK_INTERVAL", "100".into()),
    ])
    .await;
    all_healthy(&app).await;
    let mut resp = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat("m", true))
        .send()
        .await
        .expect("sent");
    let mut body = String::new();
    body.push_str(&String::from_utf8_lossy(
        &resp.chunk().await.expect("chunk").expect("data"),
    ));
    // The server's health check now fails while its stream keeps flowing.
    s.set_health(503);
    let down = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(5), |t| {
            t.backends.values().all(|e| !e.health().admits_traffic())
        })
        .await;
    assert!(down, "the server was marked down mid-stream");
    while let Some(chunk) = resp.chunk().await.expect("body") {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""),
        "the flowing stream finished: {body}"
    );
    app.shutdown().await;
}
