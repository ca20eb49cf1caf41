//! Broken upstream streams over real sockets (gateway + simulated vLLM): bytes that are not
//! UTF-8, an event over `SSE_MAX_EVENT_BYTES`, a `[DONE]` without its blank line, and a
//! reset while a repaired tool call is held. Each ends the client's stream explicitly and
//! at once; the upstream keeps generating for far longer than the bounds asserted here.

mod common;

use std::time::{Duration, Instant};

use common::*;
use llmmux::app::App;
use llmmux::sim::{Fault, SimHandle, ToolText};
use serde_json::{json, Value};

/// Longer than any bound asserted below: a stream that waited for it would fail the test.
const IDLE_MS: &str = "30000";

/// A sim whose streams run for ~30 s after the first events (300 tokens, 100 ms apart).
async fn slow_sim() -> SimHandle {
    sim_with(&["m"], |c| {
        c.completion_tokens = 300;
        c.max_model_len = 100_000;
        c.token_delay_ms = 100;
    })
    .await
}

async fn gateway_for(s: &SimHandle, extra: &[(&str, String)]) -> App {
    let mut vars = vec![
        ("BACKENDS", backends("m", &[s])),
        ("STREAM_IDLE_TIMEOUT", IDLE_MS.to_string()),
        ("REQUEST_TIMEOUT", "60000".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    gateway(&vars).await
}

/// Failures the gateway counted against the (only) server.
fn failures(app: &App) -> u64 {
    app.state
        .proxy
        .registry
        .table
        .load()
        .backends
        .values()
        .map(|e| {
            e.handle
                .failures_total
                .load(std::sync::atomic::Ordering::SeqCst)
        })
        .sum()
}

/// The stream ends with exactly one error event (`code`) then `[DONE]`; returns the events
/// before the error.
fn ends_with_error(body: &str, code: &str) -> Vec<String> {
    let events = sse_data(body);
    let n = events.len();
    assert!(n >= 2, "{body}");
    assert_eq!(events[n - 1], "[DONE]", "{body}");
    let err: Value = serde_json::from_str(&events[n - 2]).expect("error event is JSON");
    assert_eq!(err["error"]["code"], code, "{body}");
    assert_eq!(err["error"]["type"], "server_error");
    let errors = events.iter().filter(|e| e.contains("\"error\"")).count();
    assert_eq!(errors, 1, "one error event: {body}");
    events[..n - 2].to_vec()
}

#[tokio::test]
async fn invalid_utf8_mid_stream_ends_the_stream_at_once() {
    let s = slow_sim().await;
    let app = gateway_for(&s, &[]).await;
    s.set_fault(Fault::BadUtf8After(3));
    let started = Instant::now();
    let body = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    let elapsed = started.elapsed();
    let before = ends_with_error(&body, "upstream_invalid_stream");
    // The role chunk and two tokens came before the bad bytes, and nothing after them.
    assert_eq!(stream_text(&before), "tok0 tok1", "{body}");
    assert!(
        elapsed < Duration::from_secs(5),
        "ended after {elapsed:?}; the upstream ran on for 30 s and the idle timeout is 30 s"
    );
    assert!(
        s.wait_disconnects(1, Duration::from_secs(5)).await,
        "the gateway dropped the upstream"
    );
    assert_eq!(failures(&app), 1, "a server sending bad bytes failed");
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_over_the_cap_ends_the_stream_at_once() {
    let s = slow_sim().await;
    let app = gateway_for(&s, &[("SSE_MAX_EVENT_BYTES", "65536".into())]).await;
    s.set_fault(Fault::HugeEvent {
        after: 3,
        bytes: 1 << 20,
    });
    let started = Instant::now();
    let body = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    let elapsed = started.elapsed();
    let before = ends_with_error(&body, "upstream_invalid_stream");
    assert_eq!(stream_text(&before), "tok0 tok1", "{body}");
    assert!(
        body.len() < 16 * 1024,
        "nothing of the huge event reached the client"
    );
    assert!(elapsed < Duration::from_secs(5), "ended after {elapsed:?}");
    assert!(s.wait_disconnects(1, Duration::from_secs(5)).await);
    app.shutdown().await;
}

#[tokio::test]
async fn events_under_the_cap_pass() {
    let s = sim(&["m"]).await;
    let app = gateway_for(&s, &[("SSE_MAX_EVENT_BYTES", "65536".into())]).await;
    s.set_fault(Fault::HugeEvent {
        after: 3,
        bytes: 60_000,
    });
    let body = post(&app, "/v1/chat/completions", &chat("m", true))
        .await
        .text()
        .await
        .expect("body");
    assert!(body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""));
    let big = "x".repeat(60_000);
    assert!(
        sse_data(&body).contains(&big),
        "the 60 kB event was relayed"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn done_without_its_blank_line_is_a_normal_end() {
    let s = sim(&["m"]).await;
    let app = gateway_for(&s, &[]).await;
    s.set_fault(Fault::NoFinalBlankLine);
    for _ in 0..3 {
        let started = Instant::now();
        let body = post(&app, "/v1/chat/completions", &chat("m", true))
            .await
            .text()
            .await
            .expect("body");
        assert!(
            body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""),
            "{body}"
        );
        let events = sse_data(&body);
        assert_eq!(
            stream_text(&events),
            "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(failures(&app), 0, "a clean end is the server's success");
    app.shutdown().await;
}

fn tool_request(stream: bool) -> Value {
    json!({"model": "qwen-test", "stream": stream,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]})
}

/// `finish_reason`s of a chat stream's chunks.
fn finishes(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_reset_while_a_tool_call_is_held_never_claims_a_finish() {
    let s = sim_with(&["qwen-test"], |c| c.tool_text = Some(ToolText::Hermes)).await;
    let app = gateway(&[
        ("BACKENDS", backends("qwen-test", &[&s])),
        ("TOOL_CALL_FORMATS", "qwen*=hermes".into()),
    ])
    .await;
    // Where the sim's tool-call text opens and closes, event by event (event 0 is the role
    // chunk, then one piece of text per event).
    let direct = client()
        .post(format!("{}/v1/chat/completions", s.base_url()))
        .json(&tool_request(true))
        .send()
        .await
        .expect("sim answers")
        .text()
        .await
        .expect("body");
    let events = sse_data(&direct);
    let mut text = String::new();
    let (mut opened, mut closing) = (None, None);
    for (i, ev) in events.iter().enumerate() {
        text.push_str(&stream_text(std::slice::from_ref(ev)));
        if opened.is_none() && text.contains("<tool_call>") {
            opened = Some(i);
        }
        if closing.is_none() && text.contains("</") {
            closing = Some(i);
        }
    }
    let (Some(opened), Some(closing)) = (opened, closing) else {
        panic!("no tool call in the sim's text: {text}");
    };
    // Keep the events up to two past the opening tag: inside the call, before its end.
    let keep = opened + 3;
    assert!(keep <= closing, "the cut lands inside the call: {events:?}");

    // Unbroken, the gateway turns the text into a call (the test can tell the difference).
    let body = post(&app, "/v1/chat/completions", &tool_request(true))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(finishes(&sse_data(&body)), ["tool_calls"], "{body}");

    s.set_fault(Fault::ResetAfter(keep as u32));
    let body = post(&app, "/v1/chat/completions", &tool_request(true))
        .await
        .text()
        .await
        .expect("body");
    let before = ends_with_error(&body, "upstream_error");
    assert!(
        finishes(&before).is_empty(),
        "no finish the server never sent: {body}"
    );
    // Neither a half call nor the held text as content: `tool_call` covers both.
    assert!(!body.contains("tool_call"), "{body}");
    app.shutdown().await;
}
