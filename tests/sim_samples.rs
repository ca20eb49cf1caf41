//! The simulated vLLM server against real vLLM captures (tests/fixtures/vllm-samples/)
//! and its fault injection, over a real socket.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llmmux::sim::{self, Fault, SimConfig, SimHandle, ToolText};
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------
// helpers

fn fixture(name: &str) -> String {
    let p = format!(
        "{}/tests/fixtures/vllm-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

struct Sample {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn sample(name: &str) -> Sample {
    let raw = fixture(&format!("{name}.http"));
    // Captures mix CRLF and LF line ends in the head; the body is taken verbatim.
    let crlf = raw.find("\r\n\r\n").map(|i| (i, 4));
    let lf = raw.find("\n\n").map(|i| (i, 2));
    let (head, body) = match [crlf, lf].into_iter().flatten().min() {
        Some((i, n)) => (&raw[..i], &raw[i + n..]),
        None => (raw.trim_end(), ""),
    };
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("status number");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Sample {
        status,
        headers,
        body: body.to_string(),
    }
}

impl Sample {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("sample body is JSON")
    }
}

fn request_json(name: &str) -> String {
    fixture(&format!("{name}.request.json"))
}

fn tiny_cfg() -> SimConfig {
    SimConfig {
        models: vec!["tiny-qwen".into()],
        max_model_len: 2048,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> SimHandle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sim::start(l, cfg).await.expect("start")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn post_raw(sim: &SimHandle, path: &str, body: String, fault: Option<&str>) -> Resp {
    let mut rb = client()
        .post(format!("{}{path}", sim.base_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(f) = fault {
        rb = rb.header("x-sim-fault", f);
    }
    let r = rb.send().await.expect("send");
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

async fn get(sim: &SimHandle, path: &str) -> Resp {
    let r = client()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .expect("send");
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

/// Structural skeleton: keys in order with value types; arrays collapse runs of equal
/// element shapes.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => Value::Array(collapse(a.iter().map(shape).collect())),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

fn collapse(v: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for s in v {
        if out.last().map(|l| l.to_string()) != Some(s.to_string()) {
            out.push(s);
        }
    }
    out
}

/// Compare shapes including key order (serde_json Map equality ignores order).
fn assert_same_shape(ours: &Value, theirs: &Value, what: &str) {
    let a = serde_json::to_string_pretty(&shape(ours)).expect("ser");
    let b = serde_json::to_string_pretty(&shape(theirs)).expect("ser");
    assert_eq!(
        a, b,
        "{what}: structure differs from the vLLM sample\nours: {ours}\nsample: {theirs}"
    );
}

/// Strict SSE framing: each event `data: ...\n\n`, last one `data: [DONE]`.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {body:?}"
    );
    let parts: Vec<&str> = body.split("\n\n").collect();
    assert_eq!(parts.last(), Some(&""), "body must end with a blank line");
    let parts = &parts[..parts.len() - 1];
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        assert!(!p.contains('\n'), "one line per event: {p:?}");
        let data = p
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("event without `data: `: {p:?}"));
        if i + 1 == parts.len() {
            assert_eq!(data, "[DONE]");
        } else {
            out.push(
                serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event JSON {e}: {data}")),
            );
        }
    }
    out
}

/// Event shapes with runs of identical shapes collapsed.
fn stream_shape(events: &[Value]) -> Vec<String> {
    collapse(events.iter().map(shape).collect())
        .iter()
        .map(|v| v.to_string())
        .collect()
}

fn assert_same_stream(ours: &str, theirs: &str, what: &str) {
    let a = stream_shape(&sse_events(ours));
    let b = stream_shape(&sse_events(theirs));
    assert_eq!(
        a, b,
        "{what}: stream structure differs\nours: {ours}\nsample: {theirs}"
    );
}

fn header_names(h: &reqwest::header::HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
    v.sort();
    v
}

fn sample_header_names(s: &Sample) -> Vec<String> {
    let mut v: Vec<String> = s.headers.iter().map(|(k, _)| k.clone()).collect();
    v.sort();
    v
}

/// Send the sample's request and compare status, headers and structure.
async fn check_sample(
    sim: &SimHandle,
    name: &str,
    path: &str,
    edit: impl FnOnce(&mut Value),
) -> Resp {
    let s = sample(name);
    let mut req: Value = serde_json::from_str(&request_json(name)).expect("request json");
    edit(&mut req);
    let r = post_raw(sim, path, req.to_string(), None).await;
    assert_eq!(r.status, s.status, "{name}: status ({})", r.body);
    assert_eq!(
        r.header("content-type"),
        s.header("content-type"),
        "{name}: content-type"
    );
    assert_eq!(
        header_names(&r.headers),
        sample_header_names(&s),
        "{name}: header names"
    );
    if s.header("content-type") == Some("text/event-stream; charset=utf-8") {
        assert_same_stream(&r.body, &s.body, name);
    } else {
        assert_same_shape(&r.json(), &s.json(), name);
    }
    r
}

// ------------------------------------------------------------------------------------
// samples

#[tokio::test]
async fn chat_non_stream_samples() {
    let sim = start(tiny_cfg()).await;
    let r = check_sample(&sim, "chat_basic", "/v1/chat/completions", |_| {}).await;
    let v = r.json();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() == 9 + 32, "{id}");
    assert_eq!(v["model"], "tiny-qwen");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 16);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let r = check_sample(&sim, "chat_length", "/v1/chat/completions", |_| {}).await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2");

    // The sample stops on "tiny" (in the model's text); ours stops on "tok2".
    let r = check_sample(&sim, "chat_stop", "/v1/chat/completions", |req| {
        req["stop"] = json!(["tok2"])
    })
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], "tok2");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 ");

    let r = check_sample(&sim, "chat_n2_sampled", "/v1/chat/completions", |_| {}).await;
    let v = r.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let r = check_sample(&sim, "chat_logprobs", "/v1/chat/completions", |_| {}).await;
    let v = r.json();
    assert_eq!(
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn chat_stream_samples() {
    let sim = start(tiny_cfg()).await;
    for name in [
        "chat_stream_usage",
        "chat_stream_nousage",
        "chat_stream_length",
    ] {
        let r = check_sample(&sim, name, "/v1/chat/completions", |_| {}).await;
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let ev = sse_events(&r.body);
        let id = ev[0]["id"].as_str().unwrap();
        assert!(
            ev.iter()
                .all(|e| e["id"] == id && e["created"] == ev[0]["created"]),
            "{name}: same id/created"
        );
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let usage_chunks: Vec<&Value> = ev.iter().filter(|e| e["choices"] == json!([])).collect();
        let wants_usage = name != "chat_stream_nousage";
        assert_eq!(
            usage_chunks.len(),
            usize::from(wants_usage),
            "{name}: usage chunk iff include_usage"
        );
        if wants_usage {
            assert_eq!(
                ev.last().unwrap()["choices"],
                json!([]),
                "{name}: usage chunk is last"
            );
        }
        let text: String = ev
            .iter()
            .skip(1)
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        let finishes: Vec<&Value> = ev
            .iter()
            .filter(|e| !e["choices"][0]["finish_reason"].is_null() && e["choices"] != json!([]))
            .collect();
        assert_eq!(finishes.len(), 1, "{name}: one finish chunk");
        if name == "chat_stream_length" {
            assert_eq!(text, "tok0 tok1 tok2");
            assert_eq!(finishes[0]["choices"][0]["finish_reason"], "length");
            assert!(
                ev.iter().all(|e| e.get("usage").is_some()),
                "continuous usage on every chunk"
            );
        } else {
            assert_eq!(text.split(' ').count(), 16);
            assert_eq!(finishes[0]["choices"][0]["finish_reason"], "stop");
        }
    }
}

#[tokio::test]
async fn completions_samples() {
    let sim = start(tiny_cfg()).await;
    let r = check_sample(&sim, "completions_basic", "/v1/completions", |_| {}).await;
    assert!(r.json()["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    let r = check_sample(&sim, "completions_stream", "/v1/completions", |_| {}).await;
    let ev = sse_events(&r.body);
    assert_eq!(ev.last().unwrap()["choices"], json!([]));
}

#[tokio::test]
async fn models_health_version_metrics_samples() {
    let sim = start(tiny_cfg()).await;
    for (name, path) in [
        ("models", "/v1/models"),
        ("version", "/version"),
        ("health", "/health"),
    ] {
        let s = sample(name);
        let r = get(&sim, path).await;
        assert_eq!(r.status, s.status, "{name}");
        assert_eq!(r.header("content-type"), s.header("content-type"), "{name}");
        assert_eq!(
            header_names(&r.headers),
            sample_header_names(&s),
            "{name}: header names"
        );
        if name == "health" {
            assert_eq!(r.body, "");
            assert_eq!(r.header("content-length"), Some("0"));
        } else {
            assert_same_shape(&r.json(), &s.json(), name);
        }
    }
    let m = get(&sim, "/v1/models").await.json();
    assert_eq!(m["data"][0]["id"], "tiny-qwen");
    assert_eq!(m["data"][0]["max_model_len"], 2048);
    assert_eq!(m["data"][0]["owned_by"], "vllm");
    assert!(m["data"][0]["permission"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("modelperm-"));

    let s = sample("metrics_after");
    let r = get(&sim, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), s.header("content-type"));
    for needle in [
        "# TYPE vllm:num_requests_running gauge",
        "# TYPE vllm:num_requests_waiting gauge",
        "vllm:kv_cache_usage_perc{",
    ] {
        assert!(
            s.body.contains(needle) && r.body.contains(needle),
            "{needle}"
        );
    }
    assert!(
        r.body
            .contains("vllm:num_requests_running{engine=\"0\",model_name=\"tiny-qwen\"} 0.0"),
        "{}",
        r.body
    );
    assert_eq!(get(&sim, "/load").await.json(), json!({"server_load": 0}));
    let st = sim.stats();
    assert_eq!((st.health_probes, st.models_requests), (1, 2));
}

#[tokio::test]
async fn error_samples_match_exactly() {
    let sim = start(tiny_cfg()).await;
    for name in [
        "err_bad_json",
        "err_bad_temperature",
        "err_max_tokens_too_big",
        "err_missing_messages",
        "err_prompt_too_long",
        "err_prompt_too_long_stream",
        "err_tool_choice_auto_without_tools",
        "err_unknown_model",
        "err_unknown_model_stream",
    ] {
        let s = sample(name);
        let r = post_raw(&sim, "/v1/chat/completions", request_json(name), None).await;
        assert_eq!(r.status, s.status, "{name}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
        assert_eq!(
            header_names(&r.headers),
            sample_header_names(&s),
            "{name}: header names"
        );
        // Messages are deterministic, so the whole body must match.
        assert_eq!(r.json(), s.json(), "{name}");
        assert!(r.json()["error"]["code"].is_u64(), "{name}: integer code");
    }
    let s = sample("err_not_found_path");
    let r = get(&sim, "/v1/no/such/path").await;
    assert_eq!((r.status, r.json()), (s.status, s.json()));
    let r = post_raw(&sim, "/nope", "{}".into(), None).await;
    assert_eq!(r.json(), json!({"detail": "Not Found"}));
    let r = get(&sim, "/v1/chat/completions").await;
    assert_eq!(
        (r.status, r.json()),
        (405, json!({"detail": "Method Not Allowed"}))
    );
    let r = post_raw(
        &sim,
        "/v1/chat/completions",
        json!({"model": "tiny-qwen", "messages": [], "stream_options": {"include_usage": true}})
            .to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Stream options can only be defined when stream=True."
    );
}

#[tokio::test]
async fn aliases_embeddings_and_extras() {
    let cfg = SimConfig {
        models: vec!["primary".into(), "alias".into()],
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let chat =
        json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let r = post_raw(&sim, "/v1/chat/completions", chat.to_string(), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["model"],
        "primary",
        "responses carry the first served name"
    );
    let ids: Vec<Value> = get(&sim, "/v1/models").await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("primary"), json!("alias")]);

    let r = post_raw(
        &sim,
        "/v1/embeddings",
        json!({"model": "alias", "input": ["a", "b"]}).to_string(),
        None,
    )
    .await;
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 32);
    let again = post_raw(
        &sim,
        "/v1/embeddings",
        json!({"input": ["a", "b"]}).to_string(),
        None,
    )
    .await
    .json();
    assert_eq!(v["data"], again["data"], "deterministic vectors");

    for (path, body) in [
        (
            "/tokenize",
            json!({"model": "primary", "prompt": "hello world"}),
        ),
        (
            "/detokenize",
            json!({"model": "primary", "tokens": [1, 2, 3]}),
        ),
        ("/v1/responses", json!({"model": "primary", "input": "hi"})),
        (
            "/v1/rerank",
            json!({"model": "primary", "query": "q", "documents": ["a", "b"]}),
        ),
        (
            "/v1/score",
            json!({"model": "primary", "text_1": "q", "text_2": ["a", "b"]}),
        ),
        ("/pooling", json!({"model": "primary", "input": "x"})),
        ("/classify", json!({"model": "primary", "input": ["x"]})),
    ] {
        let r = post_raw(&sim, path, body.to_string(), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let mut bad = body.clone();
        bad["model"] = json!("nope");
        let r = post_raw(&sim, path, bad.to_string(), None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(
            r.json()["error"]["message"],
            "The model `nope` does not exist. Valid aliases: primary, alias."
        );
    }
    assert_eq!(
        post_raw(
            &sim,
            "/tokenize",
            json!({"prompt": "a b c"}).to_string(),
            None
        )
        .await
        .json()["count"],
        3
    );

    sim.set_models(vec!["other".into()]);
    let r = post_raw(&sim, "/v1/chat/completions", chat.to_string(), None).await;
    assert_eq!(r.status, 404);
    let st = sim.stats();
    assert_eq!(st.last_body.as_ref().unwrap()["model"], "alias");
    assert!(st
        .last_headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));
}

#[tokio::test]
async fn api_key_guards_v1_only() {
    let cfg = SimConfig {
        api_key: Some("sekret".into()),
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let r = get(&sim, "/v1/models").await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "Unauthorized"}))
    );
    assert_eq!(get(&sim, "/health").await.status, 200);
    assert_eq!(get(&sim, "/metrics").await.status, 200);
    let r = client()
        .get(format!("{}/v1/models", sim.base_url()))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn health_and_control_plane() {
    let sim = start(SimConfig::default()).await;
    sim.set_health(503);
    let r = get(&sim, "/health").await;
    assert_eq!((r.status, r.body.as_str()), (503, ""));
    let c = client();
    let post = |path: &str, body: Value| {
        c.post(format!("{}{path}", sim.base_url()))
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/sim/health", json!({"status": 200}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get(&sim, "/health").await.status, 200);
    assert_eq!(get(&sim, "/ping").await.status, 200);

    assert_eq!(
        post("/sim/fault", json!({"fault": "status", "status": 503}))
            .await
            .unwrap()
            .status(),
        200
    );
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = post_raw(&sim, "/v1/chat/completions", chat.clone(), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(sim.fault(), Fault::Status(503));
    assert_eq!(
        post("/sim/fault", json!({"fault": "none"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post_raw(&sim, "/v1/chat/completions", chat.clone(), None)
            .await
            .status,
        200
    );
    assert_eq!(
        post("/sim/fault", json!({"fault": "bogus"}))
            .await
            .unwrap()
            .status(),
        400
    );

    assert_eq!(
        post("/sim/models", json!({"models": ["m1", "m2"]}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get(&sim, "/v1/models").await.json()["data"][1]["id"], "m2");
    assert_eq!(
        post("/sim/config", json!({"completion_tokens": 2}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("/sim/tool_text", json!({"tool_text": "pythonic"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(sim.config().tool_text, Some(ToolText::Pythonic));
    let r = post_raw(&sim, "/v1/chat/completions", chat, None).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], "tok0 tok1");

    let st = get(&sim, "/sim/stats").await.json();
    for k in [
        "requests",
        "inference_requests",
        "health_probes",
        "models_requests",
        "active_connections",
        "active_requests",
        "client_disconnects",
        "last_headers",
        "last_body",
    ] {
        assert!(st.get(k).is_some(), "{k}");
    }
    assert_eq!(st["inference_requests"], 3);
    assert_eq!(st["health_probes"], 3);
}

// ------------------------------------------------------------------------------------
// faults

fn chat_body(stream: bool) -> String {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        .to_string()
}

#[tokio::test]
async fn fault_status() {
    let sim = start(SimConfig::default()).await;
    sim.set_fault(Fault::Status(503));
    for stream in [false, true] {
        let r = post_raw(&sim, "/v1/chat/completions", chat_body(stream), None).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        let e = &r.json()["error"];
        assert_eq!(e["code"], 503);
        assert_eq!(e["type"], "ServiceUnavailableError");
        assert!(e["message"].is_string() && e.get("param").is_some());
    }
    // health and models are not affected by inference faults
    assert_eq!(get(&sim, "/health").await.status, 200);
    sim.set_fault(Fault::None);
    let r = post_raw(
        &sim,
        "/v1/completions",
        json!({"prompt": "x"}).to_string(),
        Some("status=429"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], 429);
    let r = post_raw(
        &sim,
        "/v1/embeddings",
        json!({"input": "x"}).to_string(),
        Some("status=500"),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (500, json!("InternalServerError"))
    );
    let r = post_raw(
        &sim,
        "/v1/chat/completions",
        chat_body(false),
        Some("bogus=1"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(sim.stats().client_disconnects, 0);
}

#[tokio::test]
async fn fault_model_not_found() {
    let sim = start(SimConfig::default()).await;
    let r = post_raw(
        &sim,
        "/v1/chat/completions",
        chat_body(true),
        Some("model_not_found"),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "The model `sim-model` does not exist. Valid aliases: sim-model.",
                         "type": "NotFoundError", "param": "model", "code": 404}})
    );
    sim.set_fault(Fault::ModelNotFound);
    assert_eq!(
        post_raw(
            &sim,
            "/v1/completions",
            json!({"prompt": "x"}).to_string(),
            None
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn fault_hang_counts_disconnect() {
    let sim = start(SimConfig::default()).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let t = Instant::now();
    let r = c
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .header("x-sim-fault", "hang")
        .body(chat_body(false))
        .send()
        .await;
    assert!(r.is_err(), "hang never answers");
    assert!(sim.stats().active_requests <= 1);
    assert!(
        sim.wait_disconnects(1, Duration::from_millis(500)).await,
        "disconnect detected promptly"
    );
    assert!(t.elapsed() < Duration::from_millis(800));
    let st = sim.stats();
    assert_eq!((st.client_disconnects, st.active_requests), (1, 0));
}

#[tokio::test]
async fn slow_non_stream_disconnect_is_prompt() {
    let cfg = SimConfig {
        latency_ms: 5_000,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(false))
        .send()
        .await;
    assert!(r.is_err());
    let t = Instant::now();
    assert!(sim.wait_disconnects(1, Duration::from_millis(1000)).await);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(sim.stats().active_requests, 0);
}

#[tokio::test]
async fn fault_close_before_headers() {
    let sim = start(SimConfig::default()).await;
    sim.set_fault(Fault::CloseBeforeHeaders);
    let r = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(false))
        .send()
        .await;
    let e = r.expect_err("connection must be reset before headers");
    assert!(!e.is_timeout());
    let st = sim.stats();
    assert_eq!(
        st.client_disconnects, 0,
        "server-side close is not a client disconnect"
    );
    assert_eq!(st.inference_requests, 1);
    assert_eq!(st.active_requests, 0);
    sim.set_fault(Fault::None);
    assert_eq!(
        post_raw(&sim, "/v1/chat/completions", chat_body(false), None)
            .await
            .status,
        200
    );
}

/// Read a streaming response until it ends or errors; returns (body text, ended with error).
async fn read_stream(resp: reqwest::Response, idle: Duration) -> (String, Option<String>) {
    let mut s = resp.bytes_stream();
    let mut text = String::new();
    loop {
        match tokio::time::timeout(idle, s.next()).await {
            Err(_) => return (text, Some("idle".into())),
            Ok(None) => return (text, None),
            Ok(Some(Ok(b))) => text.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Err(e))) => return (text, Some(e.to_string())),
        }
    }
}

#[tokio::test]
async fn fault_reset_after() {
    let cfg = SimConfig {
        token_delay_ms: 5,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .header("x-sim-fault", "reset_after=3")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (text, err) = read_stream(resp, Duration::from_secs(2)).await;
    assert!(
        err.is_some_and(|e| e != "idle"),
        "stream must end with an error"
    );
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));

    // non-stream: body cut in the middle
    sim.set_fault(Fault::ResetAfter(0));
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(false))
        .send()
        .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "truncated body");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = sim.stats();
    assert_eq!((st.client_disconnects, st.active_requests), (0, 0));
}

#[tokio::test]
async fn fault_stall_after_then_client_gives_up() {
    let sim = start(SimConfig::default()).await;
    sim.set_fault(Fault::StallAfter(2));
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    let (text, err) = read_stream(resp, Duration::from_millis(300)).await;
    assert_eq!(err.as_deref(), Some("idle"));
    assert_eq!(text.matches("data: ").count(), 2);
    assert_eq!(
        sim.stats().active_requests,
        1,
        "stalled stream still in progress"
    );
    // the response (and its connection) was dropped by read_stream
    assert!(sim.wait_disconnects(1, Duration::from_millis(500)).await);
    assert_eq!(sim.stats().active_requests, 0);
}

#[tokio::test]
async fn stream_disconnect_is_prompt() {
    let cfg = SimConfig {
        token_delay_ms: 1000,
        completion_tokens: 50,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(s);
    let t = Instant::now();
    assert!(sim.wait_disconnects(1, Duration::from_millis(900)).await);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn fault_drip_and_timing() {
    let cfg = SimConfig {
        completion_tokens: 3,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let t = Instant::now();
    let r = post_raw(
        &sim,
        "/v1/chat/completions",
        chat_body(true),
        Some("drip=40"),
    )
    .await;
    // role + 3 tokens + finish + [DONE] = 6 events, each delayed 40 ms
    assert!(
        t.elapsed() >= Duration::from_millis(240),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(sse_events(&r.body).len(), 5);

    sim.update_config(|c| {
        c.ttft_ms = 100;
        c.token_delay_ms = 20;
    });
    let t = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    let headers_at = t.elapsed();
    let _ = resp.text().await.unwrap();
    assert!(
        headers_at < Duration::from_millis(90),
        "headers before ttft: {headers_at:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(140));
}

#[tokio::test]
async fn fault_error_after_in_stream() {
    let sim = start(SimConfig::default()).await;
    let r = post_raw(
        &sim,
        "/v1/chat/completions",
        chat_body(true),
        Some("error_after=2"),
    )
    .await;
    let ev = sse_events(&r.body);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2]["error"]["code"], 500);
}

#[tokio::test]
async fn shutdown_resets_and_refuses() {
    let cfg = SimConfig {
        token_delay_ms: 200,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    sim.shutdown();
    let (_, err) = read_stream(resp, Duration::from_secs(2)).await;
    assert!(err.is_some_and(|e| e != "idle"));
    assert_eq!(
        sim.stats().client_disconnects,
        0,
        "a killed server is not a client disconnect"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = client()
        .get(format!("{}/health", sim.base_url()))
        .send()
        .await;
    assert!(r.is_err(), "no longer listening");
}

// ------------------------------------------------------------------------------------
// tool text

fn tools_request(stream: bool) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": "Weather?"}], "stream": stream,
           "tools": [
             {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
               "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
               "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}]})
}

#[tokio::test]
async fn tool_text_families() {
    let sim = start(SimConfig::default()).await;
    let cases = [
        (ToolText::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 1}}\n</tool_call>"),
        (ToolText::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 1}}"),
        (ToolText::Mistral, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 1}}]"),
        (ToolText::Pythonic, "[get_weather(city=\"Paris\", days=1)]"),
        (ToolText::GptOssJson, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 1}}"),
        (
            ToolText::GptOssHarmony,
            "<|channel|>analysis<|message|>The user needs get_weather; call it.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\",\"days\":1}",
        ),
    ];
    for (family, expected) in cases {
        sim.set_tool_text(Some(family));
        let r = post_raw(
            &sim,
            "/v1/chat/completions",
            tools_request(false).to_string(),
            None,
        )
        .await;
        let v = r.json();
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], expected, "{family:?}");
        assert!(
            msg.get("tool_calls").is_none(),
            "{family:?}: no native tool_calls"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let r = post_raw(
            &sim,
            "/v1/chat/completions",
            tools_request(true).to_string(),
            None,
        )
        .await;
        let ev = sse_events(&r.body);
        let pieces: Vec<&str> = ev
            .iter()
            .skip(1)
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(pieces.concat(), expected, "{family:?} stream");
        assert!(
            pieces.len() >= 4 && pieces.iter().all(|p| p.chars().count() <= 5),
            "{family:?}: small chunks"
        );
        assert!(ev
            .iter()
            .all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()));
    }
    // named tool_choice picks that tool; max_tokens truncates the text (finish length)
    sim.set_tool_text(Some(ToolText::Hermes));
    let mut req = tools_request(false);
    req["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let v = post_raw(&sim, "/v1/chat/completions", req.to_string(), None)
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>"
    );
    req["max_tokens"] = json!(3);
    let v = post_raw(&sim, "/v1/chat/completions", req.to_string(), None)
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["content"], "<tool_call>\n",
        "3 pieces of 3, 4, 5 chars"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // no tools -> plain text
    let v = post_raw(&sim, "/v1/chat/completions", chat_body(false), None)
        .await
        .json();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0"));
}

#[tokio::test]
async fn tool_text_hermes_matches_sample() {
    let cfg = SimConfig {
        tool_text: Some(ToolText::Hermes),
        ..tiny_cfg()
    };
    let sim = start(cfg).await;
    let r = check_sample(&sim, "chat_tools_none", "/v1/chat/completions", |_| {}).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        sample("chat_tools_none").json()["choices"][0]["message"]["content"]
    );
}

#[test]
fn fault_and_family_parsing() {
    let cases = [
        ("none", Fault::None),
        ("status=503", Fault::Status(503)),
        ("hang", Fault::Hang),
        ("close_before_headers", Fault::CloseBeforeHeaders),
        ("reset_after=3", Fault::ResetAfter(3)),
        ("stall_after=2", Fault::StallAfter(2)),
        ("drip=50", Fault::Drip(50)),
        ("model_not_found", Fault::ModelNotFound),
        ("error_after=1", Fault::ErrorAfter(1)),
    ];
    for (s, f) in cases {
        assert_eq!(s.parse::<Fault>(), Ok(f));
        assert_eq!(f.to_string().parse::<Fault>(), Ok(f));
    }
    assert!("status".parse::<Fault>().is_err());
    assert!("status=42".parse::<Fault>().is_err());
    for (s, t) in [
        ("gptoss", ToolText::GptOssJson),
        ("harmony", ToolText::GptOssHarmony),
        ("hermes", ToolText::Hermes),
        ("llama3_json", ToolText::Llama3Json),
        ("mistral", ToolText::Mistral),
        ("pythonic", ToolText::Pythonic),
    ] {
        assert_eq!(s.parse::<ToolText>(), Ok(t));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn fault_parse_never_panics(s in ".{0,24}") {
        let _ = s.parse::<Fault>();
    }
}

/// Raw HTTP/1.1 exchange; returns (bytes received, how the read side ended).
async fn raw_exchange(sim: &SimHandle, fault: &str, stream: bool) -> (String, std::io::ErrorKind) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = chat_body(stream);
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\nx-sim-fault: {fault}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    std::io::ErrorKind::TimedOut,
                )
            }
            Ok(Ok(0)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    std::io::ErrorKind::UnexpectedEof,
                )
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (String::from_utf8_lossy(&got).into_owned(), e.kind()),
        }
    }
}

#[tokio::test]
async fn resets_are_tcp_resets() {
    let sim = start(SimConfig::default()).await;
    let (got, end) = raw_exchange(&sim, "close_before_headers", false).await;
    assert_eq!(
        (got.as_str(), end),
        ("", std::io::ErrorKind::ConnectionReset)
    );
    let (got, end) = raw_exchange(&sim, "reset_after=2", true).await;
    assert_eq!(end, std::io::ErrorKind::ConnectionReset);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(got.matches("data: ").count(), 2);
    let (got, end) = raw_exchange(&sim, "reset_after=0", false).await;
    assert_eq!(end, std::io::ErrorKind::ConnectionReset);
    assert!(got.contains("content-length: "), "{got}");
}
