//! Non-streaming repair: rewrite each choice of a `chat.completion` body in place.

use super::config::{Options, RequestTools};
use super::counters::Counters;
use super::family::Family;
use super::ids::IdGen;
use super::machine::{Cx, Machine};
use super::sink::Out;
use super::{finish_value, report};
use serde_json::{json, Map, Value};

/// R1 (d): native calls present → the choice is not touched.
pub(crate) fn has_native(msg: &Map<String, Value>) -> bool {
    msg.get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
        || msg.get("function_call").is_some_and(|f| !f.is_null())
}

fn non_empty_str(msg: &Map<String, Value>, k: &str) -> bool {
    msg.get(k)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

pub(crate) fn repair(
    body: &mut Value,
    family: Family,
    tools: &RequestTools,
    opts: &Options,
    counters: &Counters,
) {
    if family == Family::None {
        return;
    }
    let cx = Cx {
        family,
        tools,
        opts,
    };
    let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    let mut ids = IdGen::default();
    for choice in choices {
        repair_choice(choice, &cx, &mut ids, counters);
    }
}

fn repair_choice(choice: &mut Value, cx: &Cx<'_>, ids: &mut IdGen, counters: &Counters) {
    let Some(ch) = choice.as_object_mut() else {
        return;
    };
    let upstream_finish = ch
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(msg) = ch.get_mut("message").and_then(Value::as_object_mut) else {
        return;
    };
    if has_native(msg) {
        return;
    }
    let Some(content) = msg.get("content").and_then(Value::as_str) else {
        return;
    };
    let mut m = Machine::new(cx.family);
    m.sink.r_any = non_empty_str(msg, "reasoning") || non_empty_str(msg, "reasoning_content");
    m.feed(content, cx);
    m.finish(cx);
    let mut reported = 0;
    report(&mut m, &mut reported, cx.family, counters);
    if !m.sink.normalized {
        return; // R6: nothing converted or normalized → byte-for-byte unchanged
    }
    let ncalls = m.sink.calls;
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    for o in m.take_out() {
        match o {
            Out::Content(s) => text.push_str(&s),
            Out::Reasoning(s) => reasoning.push_str(&s),
            Out::Call(c) => calls.push(json!({
                "id": ids.next(),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })),
        }
    }
    msg.insert(
        "content".to_owned(),
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !reasoning.is_empty() {
        let field = if msg.get("reasoning").is_some_and(Value::is_string) {
            "reasoning"
        } else if msg.get("reasoning_content").is_some_and(Value::is_string) {
            "reasoning_content"
        } else {
            "reasoning"
        };
        let prev = msg.get(field).and_then(Value::as_str).unwrap_or_default();
        let joined = format!("{prev}{reasoning}");
        msg.insert(field.to_owned(), Value::String(joined));
    }
    if !calls.is_empty() {
        msg.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    if let Some(f) = finish_value(upstream_finish.as_deref(), ncalls, cx.tools) {
        if Some(f.as_str()) != upstream_finish.as_deref() {
            ch.insert("finish_reason".to_owned(), Value::String(f));
        }
    }
}
