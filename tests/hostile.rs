//! Hostile and careless clients (front-door issue): silent sockets and half HTTP/2 prefaces,
//! huge JSON bodies, clients that stop reading, slow uploads and header floods, each against
//! the real binary (a child process, so its memory and descriptors are measured from /proc)
//! while real requests keep being served; then the HTTP details clients and load balancers
//! rely on (HEAD, 405 + Allow, Host, duplicate Authorization, 401 vs 403, CORS Vary, JSON
//! types, what never leaks).

mod common;

use std::time::{Duration, Instant};

use common::child::*;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024;

fn base(addr: &str) -> String {
    format!("http://{addr}")
}

async fn chat_ok(c: &reqwest::Client, addr: &str) -> bool {
    match c
        .post(format!("{}/v1/chat/completions", base(addr)))
        .bearer_auth(KEY)
        .json(&chat("m", false))
        .send()
        .await
    {
        // The body is read to the end so the connection goes back to the pool.
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        Ok(r) => {
            eprintln!("real request: {}", r.status());
            false
        }
        Err(e) => {
            eprintln!("real request: {e:?}");
            false
        }
    }
}

/// One chat request on an open HTTP/1.1 keep-alive connection: the status, once the whole
/// answer (Content-Length) is read. A pooled client may open a new connection when the
/// previous one is not back in its pool yet; this one never does.
async fn chat_on(sock: &mut TcpStream) -> u16 {
    let body = chat("m", false).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = headers
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return status;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return 0,
        }
    }
}

/// Read until EOF, error or `within`; true when the peer closed the socket in time.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_and_half_prefaces_are_closed_while_real_requests_are_served() {
    let s = sim(&["m"]).await;
    let (child, addr) = serve(
        llmmux_with_nofile(1024),
        &[
            ("BACKENDS", backends("m", &[&s])),
            ("API_KEYS", KEY.into()),
            ("HEADER_READ_TIMEOUT", "1000".into()),
        ],
    );
    let mut real = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(chat_on(&mut real).await, 200, "warm-up");
    let rss_before = status_kib(child.pid(), "VmRSS");
    let mut flood = Vec::new();
    for i in 0..1100 {
        let Ok(mut sock) = TcpStream::connect(&addr).await else {
            continue;
        };
        if i % 2 == 1 {
            let _ = sock.write_all(b"PRI * HTTP/2.0\r\n").await;
        }
        flood.push(sock);
    }
    assert!(
        flood.len() >= 1000,
        "{} flood sockets connected",
        flood.len()
    );
    // Real traffic on the client's open connection carries on meanwhile.
    for _ in 0..20 {
        assert_eq!(
            chat_on(&mut real).await,
            200,
            "real request during the flood"
        );
    }
    let started = Instant::now();
    let mut still_open = 0;
    for sock in flood.iter_mut() {
        if !closed_within(sock, Duration::from_secs(5)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "every silent socket closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed within the header timeout, took {:?}",
        started.elapsed()
    );
    drop(flood);
    let fresh = client();
    assert!(chat_ok(&fresh, &addr).await, "new connections are served");
    let rss_after = status_kib(child.pid(), "VmRSS");
    let accept_failed = child
        .drain_lines()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    println!("silent flood: RSS {rss_before} KiB -> {rss_after} KiB, {accept_failed} accept-failed lines");
    assert!(accept_failed <= 10, "{accept_failed} accept-failed lines");
    assert!(
        rss_after < rss_before + 64 * MIB,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_readable_503_and_room_comes_back() {
    let s = sim(&["m"]).await;
    let (_child, addr) = serve(
        llmmux(),
        &[
            ("BACKENDS", backends("m", &[&s])),
            ("API_KEYS", KEY.into()),
            ("MAX_CONNECTIONS", "4".into()),
            ("HEADER_READ_TIMEOUT", "60000".into()),
        ],
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // A fresh client (a new connection) is over the cap: it reads an answer, not a reset.
    let r = client()
        .post(format!("{}/v1/chat/completions", base(&addr)))
        .bearer_auth(KEY)
        .json(&chat("m", false))
        .send()
        .await
        .expect("a readable answer over the cap");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert_eq!(body["error"]["type"], "server_error");
    drop(held);
    // Closed sockets give their slots back.
    let mut served = false;
    for _ in 0..50 {
        if chat_ok(&client(), &addr).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "served again once the held connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_json_body_costs_at_most_twice_its_size() {
    let s = sim(&["m"]).await;
    let (child, addr) = serve(
        llmmux(),
        &[("BACKENDS", backends("m", &[&s])), ("API_KEYS", KEY.into())],
    );
    let c = client();
    assert!(chat_ok(&c, &addr).await, "warm-up");
    // The server refuses at once: only the gateway's handling of the body is measured.
    s.set_fault(llmmux::sim::Fault::Status(400));
    let hwm_before = status_kib(child.pid(), "VmHWM");
    let mut body = String::with_capacity(10_000_100);
    body.push_str(r#"{"model":"m","messages":["#);
    for i in 0..4_999_000 {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push_str("]}");
    let size_kib = body.len() as u64 / 1024;
    let body = bytes::Bytes::from(body);
    let sends: Vec<_> = (0..8)
        .map(|_| {
            c.post(format!("{}/v1/chat/completions", base(&addr)))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        })
        .collect();
    for r in futures_util::future::join_all(sends).await {
        // Whatever the simulated server makes of it: the gateway's memory is the point.
        r.expect("answered");
    }
    let hwm_after = status_kib(child.pid(), "VmHWM");
    let growth = hwm_after.saturating_sub(hwm_before);
    println!(
        "8 bodies of {size_kib} KiB at once: peak RSS {hwm_before} KiB -> {hwm_after} KiB (+{growth} KiB)"
    );
    assert!(
        growth <= 8 * 2 * size_kib + 32 * MIB,
        "peak RSS grew {growth} KiB for 8 bodies of {size_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_dropped_and_free_their_slots() {
    let s = sim_with(&["m"], |c| {
        c.completion_tokens = 40_000;
        c.max_model_len = 1_000_000;
        c.token_delay_ms = 0;
    })
    .await;
    let (child, addr) = serve(
        llmmux(),
        &[
            ("BACKENDS", backends("m", &[&s])),
            ("API_KEYS", KEY.into()),
            ("MAX_IN_FLIGHT_PER_SERVER", "5".into()),
            ("CLIENT_SEND_TIMEOUT", "1000".into()),
            // The simulator shares this busy test process: its /health may be slow.
            ("HEALTH_PROBE_TIMEOUT", "30000".into()),
        ],
    );
    let rss_before = status_kib(child.pid(), "VmRSS");
    let req = json!({"model": "m", "stream": true, "max_tokens": 40000,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut sock = TcpStream::connect(&addr).await.expect("connect");
        sock.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
                req.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        stalled.push(sock);
    }
    // (How long the five hold their slots depends on how fast the simulator, in this test
    // process, produces their streams; what must hold is how it ends.)
    let c = client();
    // Each stalled client is dropped after CLIENT_SEND_TIMEOUT and recorded as such; its
    // upstream request is cancelled, unless the server had already sent everything (then
    // the slot was freed when the upstream side finished).
    let mut recorded = 0;
    let dropped = eventually(Duration::from_secs(60), || {
        recorded += child
            .drain_lines()
            .iter()
            .filter(|l| l.contains("latency_ms") && l.contains("\"error\":\"client_send_timeout\""))
            .count();
        let done = recorded == 5;
        async move { done }
    })
    .await;
    assert!(
        dropped,
        "{recorded} of 5 stalled clients recorded as client_send_timeout"
    );
    // The access line is written when the client is dropped; the simulator sees the
    // cancelled upstream request a moment later.
    let settled = eventually(Duration::from_secs(5), || async {
        let st = s.stats();
        (st.inference_requests, st.active_requests) == (5, 0)
    })
    .await;
    let st = s.stats();
    assert!(settled, "five upstream requests, none left running: {st:?}");
    assert!(
        st.client_disconnects >= 1,
        "upstream requests cancelled: {st:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            chat_ok(&c, &addr).await
        })
        .await,
        "slots freed"
    );
    let rss_after = status_kib(child.pid(), "VmRSS");
    println!("stalled readers: RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(rss_after < rss_before + 32 * MIB);
    assert!(rss_after < rss_before + 32 * MIB);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_leave_capacity_to_others() {
    let s = sim(&["m"]).await;
    let (_child, addr) = serve(
        llmmux(),
        &[
            ("BACKENDS", backends("m", &[&s])),
            ("API_KEYS", KEY.into()),
            ("MAX_IN_FLIGHT", "10".into()),
        ],
    );
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut sock = TcpStream::connect(&addr).await.expect("connect");
        sock.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        slow.push(sock);
    }
    // Time for the gateway to enter the ten handlers (where the slots used to be taken).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    for _ in 0..5 {
        assert!(chat_ok(&c, &addr).await, "served while ten uploads trickle");
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_get_431_and_cost_bounded_memory() {
    let s = sim(&["m"]).await;
    let (child, addr) = serve(
        llmmux(),
        &[
            ("BACKENDS", backends("m", &[&s])),
            ("API_KEYS", KEY.into()),
            ("HEADER_READ_TIMEOUT", "5000".into()),
        ],
    );
    let c = client();
    assert!(chat_ok(&c, &addr).await, "warm-up");
    let hwm_before = status_kib(child.pid(), "VmHWM");
    let junk = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: {}",
        "a".repeat(100 * 1024)
    );
    let mut socks = Vec::new();
    let mut refused_431 = 0;
    for _ in 0..1000 {
        let Ok(mut sock) = TcpStream::connect(&addr).await else {
            continue;
        };
        // The gateway stops reading at the limit; the rest may not be accepted.
        let _ =
            tokio::time::timeout(Duration::from_millis(200), sock.write_all(junk.as_bytes())).await;
        socks.push(sock);
    }
    assert!(
        chat_ok(&c, &addr).await,
        "real requests served during the flood"
    );
    for sock in socks.iter_mut() {
        let mut buf = vec![0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            if buf[..n].starts_with(b"HTTP/1.1 431") {
                refused_431 += 1;
            }
        }
    }
    let hwm_after = status_kib(child.pid(), "VmHWM");
    println!(
        "1000 heads of 100 KiB: peak RSS {hwm_before} KiB -> {hwm_after} KiB, {refused_431} answered 431"
    );
    assert!(refused_431 >= 900, "{refused_431} of 1000 got 431");
    assert!(
        hwm_after < hwm_before + 96 * MIB,
        "peak RSS {hwm_before} -> {hwm_after} KiB"
    );
}

// === HTTP details ===

async fn raw(app: &llmmux::app::App, request: &str) -> String {
    let mut sock = TcpStream::connect(app.addr).await.expect("connect");
    sock.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_hosts_and_credentials_get_the_answers_clients_expect() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let c = client();
    let head = c.head(url(&app, "/healthz")).send().await.expect("sent");
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.expect("body").is_empty());
    let head = c
        .head(url(&app, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(head.status(), 200);
    for (method, path, allow) in [
        (reqwest::Method::POST, "/healthz", "GET, HEAD, OPTIONS"),
        (reqwest::Method::POST, "/v1/models", "GET, HEAD, OPTIONS"),
        (
            reqwest::Method::GET,
            "/v1/chat/completions",
            "POST, OPTIONS",
        ),
    ] {
        let r = c
            .request(method.clone(), url(&app, path))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow)
        );
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }
    let no_host = raw(&app, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("x-request-id") && no_host.contains("\"error\""));
    let two_auth = raw(
        &app,
        &format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nAuthorization: Bearer other\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(two_auth.starts_with("HTTP/1.1 400"), "{two_auth}");
    let r = c
        .get(url(&app, "/admin/backends"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        r.status(),
        403,
        "a client key is authenticated, not allowed"
    );
    for auth in [None, Some("sk-wrong")] {
        let mut rb = c.get(url(&app, "/v1/models"));
        if let Some(k) = auth {
            rb = rb.bearer_auth(k);
        }
        let r = rb.send().await.expect("sent");
        assert_eq!(r.status(), 401);
        assert!(r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")));
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_bodies_and_what_never_leaks() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("VLLM_SERVERS", servers(&[&s])),
        ("ENABLE_CORS", "true".into()),
        ("CORS_ORIGIN", "https://app.example.com".into()),
    ])
    .await;
    all_healthy(&app).await;
    let c = client();
    // Healthy is not yet discovered: wait for the first poll to list the model.
    let listed = eventually(Duration::from_secs(10), || {
        let (c, u) = (c.clone(), url(&app, "/v1/models"));
        async move {
            match c.get(u).bearer_auth(KEY).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["data"][0]["id"] == "m"),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(listed, "the discovered model is listed");
    for origin in ["https://app.example.com", "https://evil.example.com"] {
        let r = c
            .get(url(&app, "/v1/models"))
            .bearer_auth(KEY)
            .header("origin", origin)
            .send()
            .await
            .expect("sent");
        let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
        assert_eq!(vary.len(), 1, "{origin}: Vary {vary:?}");
        assert_eq!(vary[0], "Origin");
        assert_eq!(
            r.headers().contains_key("access-control-allow-origin"),
            origin == "https://app.example.com"
        );
        let v: Value = r.json().await.expect("json");
        assert_eq!(
            v["data"][0]["root"], "m",
            "the model's path on disk is not shown"
        );
        assert!(!v.to_string().contains("/models/"));
    }
    for (body, param) in [
        (
            json!({"model": "m", "stream": "yes", "messages": []}),
            "stream",
        ),
        (
            json!({"model": "m", "stream": true, "stream_options": "x", "messages": []}),
            "stream_options",
        ),
    ] {
        let r = post(&app, "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["param"], param);
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let long = "x".repeat(5000);
    let r = post(&app, "/v1/chat/completions", &chat(&long, false)).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.len() < 300, "echoed ids are cut: {} chars", msg.len());
    let open: Value = c
        .get(url(&app, "/healthz"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(open["status"], "ok");
    assert!(open["servers"].get("healthy_ids").is_none(), "{open}");
    let detail: Value = c
        .get(url(&app, "/healthz"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["servers"]["healthy_ids"][0], id_of(&s));
    app.shutdown().await;
}

/// Read one HTTP/1.1 response with a Content-Length body from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_outlive_the_header_timeout_but_slow_heads_do_not() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("HEADER_READ_TIMEOUT", "500".into()),
        ("KEEPALIVE_TIMEOUT", "10000".into()),
    ])
    .await;
    let mut sock = TcpStream::connect(app.addr).await.expect("connect");
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    sock.write_all(get).await.expect("write");
    assert!(read_response(&mut sock).await.starts_with("HTTP/1.1 200"));
    // Idle for three header timeouts: a keep-alive connection is not a slow head.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sock.write_all(get).await.expect("write");
    assert!(read_response(&mut sock).await.starts_with("HTTP/1.1 200"));
    // A head that starts and never finishes is cut at the header timeout.
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let started = Instant::now();
    assert!(closed_within(&mut sock, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

/// At `LOG_LEVEL=warn` the lines a request logs still carry its request id (its span is
/// built whatever the level) and nothing below the level is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_at_log_level_warn_carry_the_request_id() {
    let failing = sim(&["m"]).await;
    let good = sim(&["m"]).await;
    failing.set_fault(llmmux::sim::Fault::Status(503));
    let (child, addr) = serve(
        llmmux(),
        &[
            (
                "BACKENDS",
                format!("m:{},m:{}", failing.addr(), good.addr()),
            ),
            ("API_KEYS", KEY.into()),
            // Warnings, plus the start-up line that says where it listens.
            ("LOG_LEVEL", "warn,llmmux::app=info".into()),
        ],
    );
    let c = client();
    let mut ids = Vec::new();
    // Ties between two idle servers are broken at random: send until the failing one was
    // tried (its 503 is retried on the other, so every request still succeeds).
    let mut i = 0;
    while failing.stats().inference_requests == 0 {
        assert!(i < 40, "the failing server was never chosen");
        let rid = format!("warn-line-{i}");
        let r = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-request-id", &rid)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        ids.push(rid);
        i += 1;
    }
    let mut lines = Vec::new();
    let found = eventually(Duration::from_secs(5), || {
        lines.extend(child.drain_lines());
        let hit = lines.iter().any(|l| l.contains("upstream attempt failed"));
        async move { hit }
    })
    .await;
    assert!(found, "a warning for the failed attempt: {lines:?}");
    for l in lines
        .iter()
        .filter(|l| l.contains("upstream attempt failed"))
    {
        assert!(
            ids.iter().any(|id| l.contains(id.as_str())),
            "no request id in {l}"
        );
        assert!(l.contains("\"name\":\"request\""), "no request span in {l}");
    }
    assert!(
        !lines.iter().any(|l| l.contains("\"latency_ms\"")),
        "access-log lines (info) at LOG_LEVEL=warn: {lines:?}"
    );
}

/// The protocol is told from the first bytes wherever the packets split: HTTP/2 with prior
/// knowledge, HTTP/1.1 in one write, and HTTP/1.1 whose first one, two or three bytes come
/// alone (`P` and `PR` are too short to tell `POST` from the HTTP/2 preface).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocols_are_told_apart_however_the_first_bytes_arrive() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for stream in [false, true] {
        let r = h2
            .post(url(&app, "/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat("m", stream))
            .send()
            .await
            .expect("HTTP/2 request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let body = r.text().await.expect("HTTP/2 body");
        assert!(body.contains("chat.completion"), "{body}");
    }
    let body = chat("m", false).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for split in [None, Some(1), Some(2), Some(3)] {
        let mut sock = TcpStream::connect(app.addr).await.expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        match split {
            None => sock.write_all(request.as_bytes()).await.expect("write"),
            // The first `n` bytes alone, then the rest: the gateway may peek at a prefix.
            Some(n) => {
                sock.write_all(&request.as_bytes()[..n])
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(100)).await;
                sock.write_all(&request.as_bytes()[n..])
                    .await
                    .expect("write");
            }
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
            .await
            .expect("answered")
            .expect("read");
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "split {split:?}: {}",
            out.lines().next().unwrap_or("")
        );
        assert!(out.contains("chat.completion"), "split {split:?}: {out}");
    }
    // Bytes that are neither: HTTP/1.1's own answer, not a hang.
    let out = raw(&app, "PRX / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 4"), "{out}");
}
