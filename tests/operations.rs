//! Operations: Prometheus metrics that equal the traffic, request ids, readiness that
//! follows the servers, graceful shutdown with open streams.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use llmmux::sim::Fault;

/// `name{labels} value` lines of an exposition, keyed by the whole series text.
fn series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn sum(s: &HashMap<String, f64>, prefix: &str, needles: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with(prefix) && needles.iter().all(|n| k.contains(n)))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(app: &llmmux::app::App) -> HashMap<String, f64> {
    let r = client()
        .get(url(app, "/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    series(&r.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_the_traffic() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    all_healthy(&app).await;
    let id = id_of(&s);
    for i in 0..7 {
        let r = post(&app, "/v1/chat/completions", &chat("m", i % 2 == 1)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    let r = post(&app, "/v1/chat/completions", &chat("nope", false)).await;
    assert_eq!(r.status(), 404);
    r.bytes().await.expect("body");
    let m = scrape(&app).await;
    let route = "endpoint=\"/v1/chat/completions\"";
    assert_eq!(
        sum(
            &m,
            "llmmux_requests_total{",
            &[
                route,
                "status=\"200\"",
                &format!("backend=\"{id}\""),
                "model=\"m\""
            ]
        ),
        7.0
    );
    assert_eq!(
        sum(
            &m,
            "llmmux_requests_total{",
            &[route, "status=\"404\"", "model=\"none\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "llmmux_request_duration_seconds_count{",
            &[route, "stream=\"false\"", "model=\"m\""]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &m,
            "llmmux_request_duration_seconds_count{",
            &[route, "stream=\"true\"", "model=\"m\""]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &m,
            "llmmux_time_to_first_token_seconds_count{",
            &["model=\"m\""]
        ),
        3.0
    );
    // The simulator reports its usage; 8 completion tokens per request (tests/common).
    assert_eq!(
        sum(&m, "llmmux_completion_tokens_total{", &["model=\"m\""]),
        56.0
    );
    assert!(sum(&m, "llmmux_prompt_tokens_total{", &["model=\"m\""]) > 0.0);
    assert_eq!(
        sum(&m, "llmmux_backend_up{", &[&format!("backend=\"{id}\"")]),
        1.0
    );
    assert_eq!(sum(&m, "llmmux_backend_in_flight{", &[]), 0.0);
    assert!(m.contains_key("llmmux_connections_open"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_ejections_and_restarts_are_counted() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&a, &b])),
        ("FAILURE_THRESHOLD", "2".into()),
    ])
    .await;
    all_healthy(&app).await;
    a.set_fault(Fault::Status(503));
    let failed = load(&app, "m", 20, 8, Duration::from_secs(10)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let m = scrape(&app).await;
    let upstream_503 = a.stats().inference_requests as f64;
    assert!(upstream_503 > 0.0);
    assert_eq!(
        sum(&m, "llmmux_retries_total{", &["model=\"m\""]),
        upstream_503,
        "every 503 was retried once"
    );
    assert_eq!(
        sum(
            &m,
            "llmmux_backend_ejections_total{",
            &[&format!("backend=\"{}\"", id_of(&a))]
        ),
        1.0
    );
    assert!(
        app.state
            .faults
            .crash(llmmux::faults::ActorKind::Discovery)
            .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            sum(
                &scrape(&app).await,
                "llmmux_actor_restarts_total{",
                &["actor=\"discovery\""],
            ) == 1.0
        })
        .await
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_key_or_on_their_own_port() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("METRICS_KEY", "scrape-secret".into()),
    ])
    .await;
    let c = client();
    let r = c.get(url(&app, "/metrics")).send().await.expect("sent");
    assert_eq!(r.status(), 401);
    let r = c
        .get(url(&app, "/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    app.shutdown().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("HOST", "127.0.0.1".into()),
        ("METRICS_PORT", port.to_string()),
    ])
    .await;
    let r = c.get(url(&app, "/metrics")).send().await.expect("sent");
    assert_eq!(r.status(), 404, "not on the API port");
    let r = c
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("text").contains("llmmux_backend_up"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_round_trip_to_the_server_and_back() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    let r = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "trace-me-42")
        .json(&chat("m", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-42")
    );
    let seen = s.stats().last_headers;
    assert!(seen
        .iter()
        .any(|(k, v)| k == "x-request-id" && v == "trace-me-42"));
    let r = post(&app, "/v1/chat/completions", &chat("m", false)).await;
    let generated = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("generated id")
        .to_owned();
    assert!(s
        .stats()
        .last_headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && *v == generated));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_servers() {
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    all_healthy(&app).await;
    let ready = || async {
        client()
            .get(url(&app, "/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready().await, 200);
    s.set_health(503);
    assert!(eventually(Duration::from_secs(5), || async { ready().await == 503 }).await);
    s.set_health(200);
    assert!(eventually(Duration::from_secs(5), || async { ready().await == 200 }).await);
    app.shutdown().await;
}

async fn reload(app: &llmmux::app::App) -> reqwest::Response {
    client()
        .post(url(app, "/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_servers_without_failing_a_request() {
    let a = sim(&["m"]).await;
    let b = sim(&["m"]).await;
    let (app, env) = gateway_with_env(&[("BACKENDS", backends("m", &[&a]))], None).await;
    all_healthy(&app).await;
    let app = std::sync::Arc::new(app);
    let traffic = {
        let app = app.clone();
        tokio::spawn(async move { load(&app, "m", 300, 4, Duration::from_secs(10)).await })
    };
    env.set("BACKENDS", backends("m", &[&a, &b]));
    let r = reload(&app).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["servers"]["added"][0], id_of(&b));
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.stats().inference_requests > 0
        })
        .await,
        "the new server takes traffic"
    );
    env.set("BACKENDS", backends("m", &[&b]));
    let v: serde_json::Value = reload(&app).await.json().await.expect("json");
    assert_eq!(v["servers"]["removed"][0], id_of(&a));
    let failed = traffic.await.expect("traffic task");
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?}"
    );
    let before = a.stats().inference_requests;
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("m", false))
            .await
            .status(),
        200
    );
    assert_eq!(
        a.stats().inference_requests,
        before,
        "the removed server gets nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_keys_and_refuses_an_invalid_config_whole() {
    let s = sim(&["m"]).await;
    let (app, env) = gateway_with_env(&[("BACKENDS", backends("m", &[&s]))], None).await;
    let with_key = |k: &'static str| {
        client()
            .post(url(&app, "/v1/chat/completions"))
            .bearer_auth(k)
            .json(&chat("m", false))
            .send()
    };
    env.set("API_KEYS", "sk-new-key");
    env.set("MAX_ATTEMPTS", "0");
    let r = reload(&app).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.contains("MAX_ATTEMPTS"), "{msg}");
    assert_eq!(
        with_key(KEY).await.expect("sent").status(),
        200,
        "old keys still work"
    );
    assert_eq!(with_key("sk-new-key").await.expect("sent").status(), 401);
    env.set("MAX_ATTEMPTS", "2");
    env.set("MODEL_ALIASES", "public=m");
    env.set("PORT", "1");
    let r = reload(&app).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["restart_needed"].to_string().contains("PORT"), "{v}");
    assert_eq!(
        with_key(KEY).await.expect("sent").status(),
        401,
        "old key gone"
    );
    assert_eq!(with_key("sk-new-key").await.expect("sent").status(), 200);
    let r = client()
        .post(url(&app, "/v1/chat/completions"))
        .bearer_auth("sk-new-key")
        .json(&chat("public", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "the new alias is in force");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_yaml_file() {
    use common::child::*;
    let a = sim(&["m"]).await;
    let b = sim(&["n"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("llmmux.yaml");
    std::fs::write(&file, format!("backends: [\"m:{}\"]\n", a.addr())).expect("write");
    let mut cmd = llmmux();
    cmd.args(["--config", &file.display().to_string()]);
    let (child, addr) = serve(
        cmd,
        &[
            ("API_KEYS", KEY.into()),
            ("ADMIN_API_KEYS", "sk-admin".into()),
        ],
    );
    std::fs::write(
        &file,
        format!("backends: [\"m:{}\", \"n:{}\"]\n", a.addr(), b.addr()),
    )
    .expect("write");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.pid().to_string()])
        .status();
    let c = client();
    let served = eventually(Duration::from_secs(5), || async {
        c.post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat("n", false))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served, "the model of the server added by SIGHUP is served");
    // The reload is in the activity log, as one through the admin route would be.
    let recorded = eventually(Duration::from_secs(5), || async {
        let Ok(r) = c
            .get(format!(
                "http://{addr}/admin/audit/activity?action=config_reload"
            ))
            .bearer_auth("sk-admin")
            .send()
            .await
        else {
            return false;
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["data"].as_array().is_some_and(|d| {
            d.iter()
                .any(|e| e["outcome"] == "success" && e["detail"]["trigger"] == "SIGHUP")
        })
    })
    .await;
    assert!(recorded, "SIGHUP reload recorded as config_reload");
    assert_eq!(child.stop(), Some(0));
}

/// An in-process OTLP/HTTP receiver: the spans it got, as (name, attributes).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, HashMap<String, String>)>>>;

async fn otlp_receiver() -> (std::net::SocketAddr, Received) {
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got: Received = Default::default();
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                                let mut out = sink.lock().expect("sink");
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        for span in ss.spans {
                                            let attrs = span
                                                .attributes
                                                .iter()
                                                .map(|kv| {
                                                    let v = match kv
                                                        .value
                                                        .as_ref()
                                                        .and_then(|v| v.value.clone())
                                                    {
                                                        Some(Any::StringValue(s)) => s,
                                                        Some(Any::IntValue(i)) => i.to_string(),
                                                        Some(Any::BoolValue(b)) => b.to_string(),
                                                        Some(Any::DoubleValue(d)) => d.to_string(),
                                                        other => format!("{other:?}"),
                                                    };
                                                    (kv.key.clone(), v)
                                                })
                                                .collect();
                                            out.push((span.name, attrs));
                                        }
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_with_genai_attributes() {
    let (receiver, got) = otlp_receiver().await;
    let telemetry = llmmux::telemetry::init(
        "warn",
        llmmux::config::LogFormat::Text,
        Some(&llmmux::telemetry::OtelConfig {
            endpoint: format!("http://{receiver}"),
            service_name: "llmmux-test".into(),
        }),
    )
    .expect("exporter");
    let s = sim(&["m"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&s]))]).await;
    for stream in [false, true] {
        let r = post(&app, "/v1/chat/completions", &chat("m", stream)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    let telemetry = std::sync::Arc::new(telemetry);
    let found = eventually(Duration::from_secs(10), || {
        let (t, got) = (telemetry.clone(), got.clone());
        async move {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
            let spans = got.lock().expect("spans");
            spans.iter().filter(|(n, _)| n == "chat m").count() == 2
                && spans.iter().any(|(n, _)| n == "attempt")
        }
    })
    .await;
    assert!(found, "spans: {:?}", got.lock().expect("spans"));
    let spans = got.lock().expect("spans").clone();
    for (_, a) in spans.iter().filter(|(n, _)| n == "chat m") {
        assert_eq!(
            a.get("gen_ai.operation.name").map(String::as_str),
            Some("chat")
        );
        assert_eq!(a.get("gen_ai.request.model").map(String::as_str), Some("m"));
        assert_eq!(a.get("gen_ai.system").map(String::as_str), Some("vllm"));
        assert_eq!(
            a.get("gen_ai.usage.output_tokens").map(String::as_str),
            Some("8")
        );
        assert!(a.contains_key("gen_ai.usage.input_tokens"), "{a:?}");
        assert_eq!(
            a.get("http.response.status_code").map(String::as_str),
            Some("200")
        );
        assert_eq!(a.get("llmmux.backend"), Some(&id_of(&s)));
        assert!(a.contains_key("request_id"));
    }
    let attempt = spans
        .iter()
        .find(|(n, _)| n == "attempt")
        .expect("attempt span");
    assert_eq!(attempt.1.get("backend"), Some(&id_of(&s)));
    app.shutdown().await;
}
