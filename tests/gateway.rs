//! The gateway's HTTP surface over real sockets: proxying, streaming, usage handling, errors,
//! auth, models, health, admin, CORS and header hygiene.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn chat_non_stream_and_stream_pass_through_with_request_id() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let resp = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "abc-123")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "unknown_field": {"kept": 1}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| c.starts_with("tok0")));
    assert!(v["usage"]["total_tokens"].as_u64().is_some());
    let st = s.stats();
    assert_eq!(
        st.last_body.as_ref().map(|b| b["unknown_field"].clone()),
        Some(json!({"kept": 1}))
    );
    assert!(st
        .last_headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && v == "abc-123"));
    assert!(
        !st.last_headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.contains(KEY)),
        "client key must not go upstream"
    );

    let resp = post(&app, "/v1/chat/completions", &chat("m", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    assert!(resp.headers().get("x-request-id").is_some());
    let body = resp.text().await.expect("body");
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(stream_text(&events).starts_with("tok0 tok1"));
    // Usage was requested upstream by the gateway but the client did not ask: no usage chunk.
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "usage chunk leaked: {body}"
    );
    let up = s.stats().last_body.expect("body seen");
    assert_eq!(up["stream_options"]["include_usage"], true);
    app.shutdown().await;
}

#[tokio::test]
async fn usage_chunk_kept_when_client_asks() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let mut req = chat("m", true);
    req["stream_options"] = json!({"include_usage": true});
    let body = post(&app, "/v1/chat/completions", &req)
        .await
        .text()
        .await
        .expect("body");
    let events = sse_data(&body);
    let n = events.len();
    let usage: Value = serde_json::from_str(&events[n - 2]).expect("usage chunk json");
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().is_some());
    app.shutdown().await;
}

#[tokio::test]
async fn completions_embeddings_and_other_model_routes() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let v: Value = post(
        &app,
        "/v1/completions",
        &json!({"model": "m", "prompt": "x"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(v["object"], "text_completion");
    let body = post(
        &app,
        "/v1/completions",
        &json!({"model": "m", "prompt": "x", "stream": true}),
    )
    .await
    .text()
    .await
    .expect("body");
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    let v: Value = post(&app, "/v1/embeddings", &json!({"model": "m", "input": "x"}))
        .await
        .json()
        .await
        .expect("json");
    assert!(v["data"][0]["embedding"].is_array());
    let r = post(&app, "/tokenize", &json!({"model": "m", "prompt": "a b"})).await;
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn errors_are_openai_shaped_with_right_status() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("MAX_BODY_BYTES", "1000".into()),
    ])
    .await;
    let c = client();
    let check = |v: &Value, code: &str| {
        for k in ["message", "type", "param", "code"] {
            assert!(v["error"].get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["error"]["code"], code, "{v}");
        let text = v.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("panicked"),
            "leak: {text}"
        );
    };
    let r = c
        .post(url(&app, "/v1/chat/completions"))
        .json(&chat("m", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    check(&r.json().await.expect("json"), "invalid_api_key");
    let r = c
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat("m", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    let r = post(&app, "/v1/chat/completions", &chat("nope", false)).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    check(&v, "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    let r = c
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 400);
    check(&r.json().await.expect("json"), "invalid_json");
    let r = post(&app, "/v1/chat/completions", &json!({"messages": []})).await;
    assert_eq!(r.status(), 400);
    check(&r.json().await.expect("json"), "invalid_request");
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = post(&app, "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 413);
    check(&r.json().await.expect("json"), "request_too_large");
    let r = c.get(url(&app, "/nope")).send().await.expect("sent");
    assert_eq!(r.status(), 404);
    // Upstream validation errors keep their status and are normalised to the envelope.
    let r = post(
        &app,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role":"user","content":"x"}], "temperature": -3}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["code"].is_null() || v["error"]["code"].is_string());
    // A server with no healthy replica: 503 + Retry-After.
    s.set_health(503);
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| t
                .backends
                .values()
                .all(|e| !e.routable()))
            .await
    );
    let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    check(&r.json().await.expect("json"), "no_healthy_backend");
    app.shutdown().await;
}

#[tokio::test]
async fn models_health_readiness_and_admin() {
    let a = sim(&["m1", "shared"]).await;
    let b = sim(&["m2", "shared"]).await;
    let app = gateway(&[
        ("VLLM_SERVERS", servers(&[&a, &b])),
        ("MODEL_ALIASES", "public=m1".into()),
    ])
    .await;
    all_healthy(&app).await;
    assert!(
        app.state
            .proxy
            .registry
            .table
            .wait_for(Duration::from_secs(5), |t| t.knows_model("m2"))
            .await
    );
    let c = client();
    let v: Value = c
        .get(url(&app, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let mut ids: Vec<&str> = v["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m1", "m2", "public", "shared"]);
    assert_eq!(v["data"][0]["owned_by"], "vllm");
    assert!(
        v["data"][0]["max_model_len"].is_number(),
        "vLLM extras kept: {v}"
    );
    let created = v["data"][0]["created"].clone();
    let again: Value = c
        .get(url(&app, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(again["data"][0]["created"], created, "created is stable");
    // Alias routes to the served name.
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("public", false))
            .await
            .status(),
        200
    );
    assert_eq!(a.stats().last_body.expect("seen")["model"], "m1");

    let h: Value = c
        .get(url(&app, "/healthz"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(h["servers"]["healthy"], 2);
    assert!(!h.to_string().contains("127.0.0.1"), "no URLs in /healthz");
    assert_eq!(
        c.get(url(&app, "/readyz"))
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );

    // Admin: a valid client key is authenticated but not allowed (403); no key is 401.
    assert_eq!(
        c.get(url(&app, "/admin/backends"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("sent")
            .status(),
        403
    );
    let v: Value = c
        .get(url(&app, "/admin/backends"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(2));
    let r = c
        .post(url(&app, &format!("/admin/backends/{}/drain", id_of(&b))))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let v: Value = c
        .get(url(&app, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert!(
        !v.to_string().contains("\"m2\""),
        "drained server's models hidden"
    );
    let before = b.stats().inference_requests;
    for _ in 0..5 {
        assert_eq!(
            post(&app, "/v1/chat/completions", &chat("shared", false))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        b.stats().inference_requests,
        before,
        "drained server gets no traffic"
    );
    assert_eq!(
        c.post(url(&app, &format!("/admin/backends/{}/undrain", id_of(&b))))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        c.post(url(&app, "/admin/backends/nope/drain"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("sent")
            .status(),
        404
    );

    // Discovery stats and refresh.
    let st: Value = c
        .get(url(&app, "/v1/models/discovery/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(st["servers"].as_array().map(Vec::len), Some(2));
    b.set_models(vec!["m3".into()]);
    let st: Value = c
        .post(url(&app, "/v1/models/discovery/refresh"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert!(
        st.to_string().contains("m3"),
        "refresh answers with fresh stats: {st}"
    );
    assert!(
        app.state.proxy.registry.table.load().knows_model("m3"),
        "refresh applied before answering"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn cors_allowlist_never_reflects_other_origins() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("ENABLE_CORS", "true".into()),
        ("CORS_ORIGIN", "https://app.example".into()),
    ])
    .await;
    let c = client();
    let r = c
        .get(url(&app, "/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["vary"], "Origin");
    for evil in [
        "https://evil.example",
        "null",
        "https://app.example.evil.com",
    ] {
        let r = c
            .request(reqwest::Method::OPTIONS, url(&app, "/v1/chat/completions"))
            .header("origin", evil)
            .send()
            .await
            .expect("sent");
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{evil} reflected"
        );
    }
    let r = c
        .request(reqwest::Method::OPTIONS, url(&app, "/v1/chat/completions"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-methods").is_some());
    app.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_and_client_credentials_not_forwarded() {
    let s = sim_with(&["m"], |c| c.api_key = Some("vllm-key".into())).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("VLLM_API_KEY", "vllm-key".into()),
    ])
    .await;
    let r = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("cookie", "session=1")
        .header("x-internal", "admin")
        .header("proxy-authorization", "Basic abc")
        .json(&chat("m", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let headers = s.stats().last_headers;
    for bad in ["cookie", "x-internal", "proxy-authorization"] {
        assert!(!headers.iter().any(|(k, _)| k == bad), "{bad} forwarded");
    }
    assert!(headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer vllm-key"));
    app.shutdown().await;
}

/// With `cap_var=1` and one slow request in flight, a second request is refused at once.
async fn second_request_refused(cap_var: &str, status: u16, code: &str) {
    let s = sim_with(&["m"], |c| c.latency_ms = 500).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s])), (cap_var, "1".into())]).await;
    let first = tokio::spawn({
        let u = url(&app, "/v1/chat/completions");
        async move {
            client()
                .post(u)
                .bearer_auth(KEY)
                .json(&chat("m", false))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.stats().active_requests == 1
        })
        .await
    );
    let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), status, "{cap_var}");
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], code);
    assert_eq!(first.await.expect("join").expect("ok"), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn per_server_cap_answers_429_with_retry_after() {
    second_request_refused("MAX_IN_FLIGHT_PER_SERVER", 429, "rate_limit_exceeded").await;
}

#[tokio::test]
async fn global_concurrency_cap_answers_503_with_retry_after() {
    second_request_refused("MAX_IN_FLIGHT", 503, "overloaded").await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("HEADER_READ_TIMEOUT", "300".into()),
    ])
    .await;
    let mut sock = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection closed by the gateway (target 300 ms)"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(s.stats().inference_requests, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn oversized_body_without_content_length_is_rejected() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("MAX_BODY_BYTES", "10000".into()),
    ])
    .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..50).map(|_| Ok(vec![b' '; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 413);
    assert_eq!(s.stats().inference_requests, 0, "nothing forwarded");
    app.shutdown().await;
}

#[tokio::test]
async fn unusable_upstream_ca_file_is_a_startup_error() {
    let dir = std::env::temp_dir().join(format!("llmmux-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not a certificate").expect("write");
    let mut vars: std::collections::HashMap<String, String> = base_vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    vars.insert("BACKENDS".into(), "m:127.0.0.1:9".into());
    vars.insert("UPSTREAM_CA_FILE".into(), ca.display().to_string());
    let env = move |k: &str| vars.get(k).cloned();
    let cfg = llmmux::config::Config::load(&llmmux::config::Sources {
        env: &env,
        file: None,
    })
    .expect("file exists, so config is valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = llmmux::app::App::start(cfg, listener)
        .await
        .err()
        .expect("start refuses a CA file without certificates");
    assert!(err.to_string().contains("UPSTREAM_CA_FILE"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An `https://` server: a TLS front on 127.0.0.1 (the test certificate for `localhost`
/// and 127.0.0.1, signed by `tests/fixtures/tls/ca.pem`) relaying to a plain sim.
async fn tls_front(to: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_servers_are_proxied_when_their_ca_is_trusted_and_refused_otherwise() {
    let s = sim(&["m"]).await;
    let front = tls_front(s.addr()).await;
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
    let trusted = gateway(&[
        ("BACKENDS", format!("m=https://localhost:{}", front.port())),
        ("UPSTREAM_CA_FILE", ca.display().to_string()),
    ])
    .await;
    all_healthy(&trusted).await;
    let r = post(&trusted, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    let r = post(&trusted, "/v1/chat/completions", &chat("m", true)).await;
    assert_eq!(r.status(), 200);
    let events = sse_data(&r.text().await.expect("stream"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(s.stats().inference_requests, 2);
    trusted.shutdown().await;

    // Without the CA the server's certificate is not trusted: nothing reaches it. (No
    // active probe, so the request itself meets the certificate.)
    let yaml = tempfile::NamedTempFile::new().expect("yaml");
    std::fs::write(
        yaml.path(),
        format!(
            "servers:\n- url: https://localhost:{}\n  models: [m]\n  discover: false\n  health: none\n",
            front.port()
        ),
    )
    .expect("write yaml");
    let untrusted = gateway_with_file(&[], Some(yaml.path().to_path_buf())).await;
    let r = post(&untrusted, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_error", "{v}");
    assert!(
        !v.to_string().contains("localhost"),
        "no server address: {v}"
    );
    assert_eq!(s.stats().inference_requests, 2);
    untrusted.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_bounds_the_tls_handshake_too() {
    // A server that accepts TCP and never answers the handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let yaml = tempfile::NamedTempFile::new().expect("yaml");
    std::fs::write(
        yaml.path(),
        format!(
            "servers:\n- url: https://localhost:{port}\n  models: [m]\n  discover: false\n  health: none\n"
        ),
    )
    .expect("write yaml");
    // The request's deadline is far beyond the test client's 20 s: only CONNECT_TIMEOUT
    // (500 ms here) can end the attempt in time.
    let app = gateway_with_file(
        &[
            ("REQUEST_TIMEOUT", "60000".into()),
            ("MAX_ATTEMPTS", "1".into()),
        ],
        Some(yaml.path().to_path_buf()),
    )
    .await;
    let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_timeout", "{v}");
    app.shutdown().await;
    held.abort();
}
