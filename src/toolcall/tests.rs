//! Vector tests (protocol.md section 3, from `tests/fixtures/toolcall_vectors.json`),
//! stream-equivalence at every split, incrementality and unit tests.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/toolcall_vectors.json"
));

struct Vector {
    id: String,
    family: Family,
    tools: Option<RequestTools>,
    opts: Options,
    /// upstream message
    message: Value,
    finish: String,
    expect: Value,
}

fn vectors() -> Vec<Vector> {
    let doc: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let sets = doc["tool_sets"].as_object().expect("tool_sets").clone();
    let default_req = doc["defaults"]["request"].clone();
    let mut out = Vec::new();
    for v in doc["vectors"].as_array().expect("vectors") {
        let mut req = v
            .get("request")
            .cloned()
            .unwrap_or_else(|| default_req.clone());
        if let Some(name) = req.get("tools").and_then(Value::as_str).map(str::to_owned) {
            req["tools"] = sets[&name].clone();
        }
        let mut opts = Options::default();
        if let Some(o) = v.get("options") {
            if let Some(b) = o.get("accept_code_fence").and_then(Value::as_bool) {
                opts.accept_code_fence = b;
            }
            if let Some(b) = o.get("harmony_stripped_recovery").and_then(Value::as_bool) {
                opts.harmony_stripped_recovery = b;
            }
        }
        let message = match v.get("upstream") {
            Some(m) => m.clone(),
            None => json!({"role": "assistant", "content": v["raw"].clone()}),
        };
        out.push(Vector {
            id: v["id"].as_str().expect("id").to_owned(),
            family: v["family"]
                .as_str()
                .expect("family")
                .parse()
                .expect("family name"),
            tools: RequestTools::from_request(&req),
            opts,
            message,
            finish: v["upstream_finish"].as_str().expect("finish").to_owned(),
            expect: v["expect"].clone(),
        });
    }
    out
}

fn response(v: &Vector) -> Value {
    json!({"id": "chatcmpl-t", "object": "chat.completion", "created": 1767225600, "model": "m",
           "choices": [{"index": 0, "message": v.message.clone(), "logprobs": null, "finish_reason": v.finish}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
}

/// The final message as a client sees it.
#[derive(Debug, PartialEq)]
struct Final {
    content: Option<String>,
    reasoning: Option<String>,
    calls: Vec<(String, String, String)>, // id, name, arguments
    finish: Option<String>,
}

fn check_ids(calls: &[(String, String, String)], ctx: &str) {
    for (i, c) in calls.iter().enumerate() {
        assert!(is_gateway_call_id(&c.0), "{ctx}: bad id {:?}", c.0);
        assert!(calls[..i].iter().all(|p| p.0 != c.0), "{ctx}: duplicate id");
    }
}

/// Compares a final message with the vector's expectation.
fn check_final(v: &Vector, f: &Final, ctx: &str) {
    let e = &v.expect;
    assert_eq!(
        f.finish.as_deref(),
        e["finish_reason"].as_str(),
        "{ctx}: finish_reason"
    );
    let up_content = v.message["content"].as_str().map(str::to_owned);
    let up_reasoning = v
        .message
        .get("reasoning")
        .or_else(|| v.message.get("reasoning_content"));
    if e.get("unchanged") == Some(&Value::Bool(true)) {
        assert_eq!(f.content, up_content, "{ctx}: content must be unchanged");
        assert!(f.calls.is_empty(), "{ctx}: no calls expected");
        assert_eq!(
            f.reasoning.as_deref(),
            up_reasoning.and_then(Value::as_str),
            "{ctx}: reasoning"
        );
        return;
    }
    let exp_msg = e.get("message").unwrap_or(e);
    let exp_content = exp_msg["content"].as_str();
    assert_eq!(
        f.content.as_deref().filter(|s| !s.is_empty()),
        exp_content,
        "{ctx}: content"
    );
    let exp_reasoning = exp_msg
        .get("reasoning")
        .and_then(Value::as_str)
        .or(up_reasoning.and_then(Value::as_str));
    assert_eq!(f.reasoning.as_deref(), exp_reasoning, "{ctx}: reasoning");
    let exp_calls: Vec<(String, String)> = exp_msg["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_owned(),
                        c["arguments"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let got: Vec<(String, String)> = f.calls.iter().map(|c| (c.1.clone(), c.2.clone())).collect();
    assert_eq!(got, exp_calls, "{ctx}: tool calls");
    check_ids(&f.calls, ctx);
}

fn run_nonstream(v: &Vector, counters: &Counters) -> (Value, Value) {
    let before = response(v);
    let mut body = before.clone();
    if let Some(t) = &v.tools {
        repair_response(&mut body, v.family, t, &v.opts, counters);
    }
    (before, body)
}

fn final_of_message(choice: &Value) -> Final {
    let m = &choice["message"];
    Final {
        content: m["content"].as_str().map(str::to_owned),
        reasoning: m
            .get("reasoning")
            .or_else(|| m.get("reasoning_content"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        calls: m["tool_calls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        assert_eq!(c["type"], "function");
                        (
                            c["id"].as_str().unwrap_or("").to_owned(),
                            c["function"]["name"].as_str().unwrap_or("").to_owned(),
                            c["function"]["arguments"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        finish: choice["finish_reason"].as_str().map(str::to_owned),
    }
}

#[test]
fn fixture_has_every_vector() {
    let ids: Vec<String> = vectors().into_iter().map(|v| v.id).collect();
    let mut want = Vec::new();
    for (p, n) in [
        ("A", 17),
        ("N", 3),
        ("B", 9),
        ("C", 13),
        ("D", 6),
        ("E", 6),
        ("F", 9),
        ("G", 3),
    ] {
        for i in 1..=n {
            want.push(format!("{p}{i}"));
        }
    }
    assert_eq!(ids, want);
}

#[test]
fn vectors_nonstream() {
    for v in vectors() {
        let counters = Counters::new();
        let (before, after) = run_nonstream(&v, &counters);
        let ctx = format!("{} (non-stream)", v.id);
        if v.expect.get("unchanged") == Some(&Value::Bool(true)) {
            assert_eq!(after, before, "{ctx}: must be byte-for-byte unchanged");
            assert_eq!(
                serde_json::to_string(&after).ok(),
                serde_json::to_string(&before).ok(),
                "{ctx}: serialization"
            );
        }
        check_final(&v, &final_of_message(&after["choices"][0]), &ctx);
        // envelope and other fields untouched
        assert_eq!(after["usage"], before["usage"], "{ctx}");
        assert_eq!(after["choices"][0]["message"]["role"], "assistant", "{ctx}");
    }
}

// ---------------------------------------------------------------- streaming

fn chunk(choice: Value) -> String {
    json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1767225600, "model": "m",
           "system_fingerprint": "fp", "choices": [choice]})
    .to_string()
}

fn content_chunk(index: u64, text: &str, finish: Option<&str>) -> String {
    chunk(
        json!({"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": finish}),
    )
}

const USAGE: &str = r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;

/// Upstream stream for a vector with the content cut into `pieces`.
fn upstream_stream(
    v: &Vector,
    pieces: &[&str],
    finish_with_last: bool,
    usage: bool,
) -> Vec<String> {
    let mut s = vec![chunk(
        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
    )];
    for k in ["reasoning", "reasoning_content"] {
        if let Some(r) = v.message.get(k) {
            s.push(chunk(
                json!({"index": 0, "delta": {k: r}, "logprobs": null, "finish_reason": null}),
            ));
        }
    }
    let n = pieces.len();
    for (i, p) in pieces.iter().enumerate() {
        let fin = if finish_with_last && i + 1 == n {
            Some(v.finish.as_str())
        } else {
            None
        };
        s.push(content_chunk(0, p, fin));
    }
    if !finish_with_last || n == 0 {
        s.push(chunk(
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": v.finish}),
        ));
    }
    if usage {
        s.push(USAGE.to_owned());
    }
    s
}

/// Runs a stream through the transform; returns what the client receives.
fn run_stream(v: &Vector, upstream: &[String], counters: Arc<Counters>) -> Vec<String> {
    let Some(tools) = v.tools.clone() else {
        return upstream.to_vec();
    };
    let mut sr = StreamRepair::new(v.family, tools, v.opts.clone(), counters);
    let mut out = Vec::new();
    for u in upstream {
        match sr.push(u) {
            Emit::PassThrough => out.push(u.clone()),
            Emit::Replace(r) => out.extend(r),
        }
    }
    out.extend(sr.finish());
    out
}

/// Reassembles like an OpenAI client; checks envelope and usage ordering.
fn reassemble(payloads: &[String], index: u64, ctx: &str) -> Final {
    let mut f = Final {
        content: None,
        reasoning: None,
        calls: Vec::new(),
        finish: None,
    };
    let mut saw_usage = false;
    for p in payloads {
        let c: Value =
            serde_json::from_str(p).unwrap_or_else(|e| panic!("{ctx}: bad payload {p}: {e}"));
        assert_eq!(c["id"], "chatcmpl-s", "{ctx}");
        assert_eq!(c["object"], "chat.completion.chunk", "{ctx}");
        assert_eq!(c["created"], 1767225600, "{ctx}");
        assert_eq!(c["model"], "m", "{ctx}");
        let choices = c["choices"].as_array().expect("choices");
        if choices.is_empty() {
            saw_usage = true;
            continue;
        }
        assert!(!saw_usage, "{ctx}: content chunk after the usage chunk");
        assert_eq!(c["system_fingerprint"], "fp", "{ctx}");
        for ch in choices {
            if ch["index"].as_u64() != Some(index) {
                continue;
            }
            assert!(f.finish.is_none(), "{ctx}: chunk after finish_reason: {p}");
            let empty = ch["delta"].as_object().is_none_or(|d| d.is_empty());
            assert!(
                !(empty && ch["finish_reason"].is_null()),
                "{ctx}: no-op chunk {p}"
            );
            let d = &ch["delta"];
            if let Some(s) = d["content"].as_str() {
                f.content.get_or_insert_with(String::new).push_str(s);
            }
            for k in ["reasoning", "reasoning_content"] {
                if let Some(s) = d[k].as_str() {
                    f.reasoning.get_or_insert_with(String::new).push_str(s);
                }
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().expect("tool index") as usize;
                if i == f.calls.len() {
                    assert!(
                        tc["id"].is_string() && tc["function"]["name"].is_string(),
                        "{ctx}: first fragment"
                    );
                    assert_eq!(tc["type"], "function", "{ctx}");
                    f.calls.push((
                        tc["id"].as_str().unwrap_or("").to_owned(),
                        tc["function"]["name"].as_str().unwrap_or("").to_owned(),
                        String::new(),
                    ));
                }
                let call = f
                    .calls
                    .get_mut(i)
                    .unwrap_or_else(|| panic!("{ctx}: tool index gap"));
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    call.2.push_str(a);
                }
            }
            if let Some(fr) = ch["finish_reason"].as_str() {
                f.finish = Some(fr.to_owned());
            }
        }
    }
    if f.content.as_deref() == Some("") {
        f.content = None;
    }
    f
}

fn char_pieces(s: &str) -> Vec<&str> {
    s.char_indices()
        .map(|(i, c)| &s[i..i + c.len_utf8()])
        .collect()
}

fn raw_of(v: &Vector) -> String {
    v.message["content"].as_str().unwrap_or("").to_owned()
}

#[test]
fn vectors_stream_every_split() {
    for v in vectors() {
        let raw = raw_of(&v);
        let mut splits: Vec<Vec<&str>> = vec![vec![raw.as_str()], char_pieces(&raw)];
        for i in 1..raw.len() {
            if raw.is_char_boundary(i) {
                splits.push(vec![&raw[..i], &raw[i..]]);
            }
        }
        for (k, pieces) in splits.iter().enumerate() {
            for (finish_with_last, usage) in [(false, true), (true, false)] {
                let ctx = format!(
                    "{} (stream split #{k}, finish_with_last={finish_with_last})",
                    v.id
                );
                let up = upstream_stream(&v, pieces, finish_with_last, usage);
                let out = run_stream(&v, &up, Arc::new(Counters::new()));
                if usage {
                    assert_eq!(
                        out.last().map(String::as_str),
                        Some(USAGE),
                        "{ctx}: usage chunk last and unchanged"
                    );
                }
                let f = reassemble(&out, 0, &ctx);
                check_final(&v, &f, &ctx);
            }
        }
    }
}

#[test]
fn stream_without_finish_chunk_flushes_on_finish() {
    for v in vectors() {
        let raw = raw_of(&v);
        let mut up = upstream_stream(&v, &char_pieces(&raw), false, false);
        up.pop(); // no finish chunk: upstream cut, then [DONE]
        let out = run_stream(&v, &up, Arc::new(Counters::new()));
        let f = reassemble(&out, 0, &v.id);
        // content/calls as expected; finish_reason only when calls were made
        let mut want = Final { finish: None, ..f };
        let full = reassemble(
            &run_stream(
                &v,
                &upstream_stream(&v, &[&raw], false, false),
                Arc::new(Counters::new()),
            ),
            0,
            &v.id,
        );
        want.calls
            .iter_mut()
            .zip(full.calls.iter())
            .for_each(|(a, b)| a.0.clone_from(&b.0));
        assert_eq!(want.content, full.content, "{}", v.id);
        assert_eq!(want.calls.len(), full.calls.len(), "{}", v.id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn vectors_stream_random_splits(cuts in proptest::collection::vec(0usize..400, 0..12), which in 0usize..66) {
        let vs = vectors();
        let v = &vs[which % vs.len()];
        let raw = raw_of(v);
        let mut cs: Vec<usize> = cuts.into_iter().map(|c| c % (raw.len() + 1)).filter(|&c| raw.is_char_boundary(c)).collect();
        cs.sort_unstable();
        cs.dedup();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cs {
            pieces.push(&raw[last..c]);
            last = c;
        }
        pieces.push(&raw[last..]);
        let up = upstream_stream(v, &pieces, false, true);
        let out = run_stream(v, &up, Arc::new(Counters::new()));
        check_final(v, &reassemble(&out, 0, &v.id), &format!("{} random", v.id));
    }

    #[test]
    fn arbitrary_text_never_panics_and_roundtrips(text in "(\\PC|<|>|\\[|\\]|\\{|\\}|\"|tool_call|TOOL_CALLS|\\|channel\\||\\|start\\||\\|message\\|| |\n)*", fam in 0usize..5, cut in 0usize..64) {
        let family = Family::TRANSFORMING[fam];
        let tools = RequestTools::from_request(&json!({"tools": [{"type": "function", "function": {"name": "f"}}]})).expect("tools");
        let counters = Counters::new();
        let mut body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
        repair_response(&mut body, family, &tools, &Options::default(), &counters);
        let cut = (0..=cut.min(text.len())).rev().find(|&c| text.is_char_boundary(c)).unwrap_or(0);
        let mut sr = StreamRepair::new(family, tools, Options::default(), Arc::new(Counters::new()));
        let mut out = Vec::new();
        for p in [&text[..cut], &text[cut..]] {
            let c = content_chunk(0, p, None);
            match sr.push(&c) { Emit::PassThrough => out.push(c), Emit::Replace(r) => out.extend(r) }
        }
        let fin = chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"}));
        match sr.push(&fin) { Emit::PassThrough => out.push(fin), Emit::Replace(r) => out.extend(r) }
        out.extend(sr.finish());
        let f = reassemble(&out, 0, "arbitrary");
        let ns = final_of_message(&body["choices"][0]);
        // stream and non-stream agree on content and calls (ids differ)
        prop_assert_eq!(f.content, ns.content.filter(|s| !s.is_empty()));
        let a: Vec<_> = f.calls.iter().map(|c| (&c.1, &c.2)).collect();
        let b: Vec<_> = ns.calls.iter().map(|c| (&c.1, &c.2)).collect();
        prop_assert_eq!(a, b);
    }
}

// ---------------------------------------------------------------- incrementality

fn find(id: &str) -> Vector {
    vectors().into_iter().find(|v| v.id == id).expect("vector")
}

fn contents(payloads: &[String]) -> String {
    reassemble(payloads, 0, "contents")
        .content
        .unwrap_or_default()
}

#[test]
fn plain_answer_passes_through_chunk_for_chunk() {
    for fam in Family::TRANSFORMING {
        let v = find("C1");
        let tools = v.tools.clone().expect("tools");
        let mut sr = StreamRepair::new(fam, tools, Options::default(), Arc::new(Counters::new()));
        let role = chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
        );
        assert_eq!(sr.push(&role), Emit::PassThrough, "{fam}");
        for w in ["Hello", " there", ",", " this is", " a plain", " answer."] {
            assert_eq!(
                sr.push(&content_chunk(0, w, None)),
                Emit::PassThrough,
                "{fam}: {w:?}"
            );
        }
        let fin =
            chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}));
        assert_eq!(sr.push(&fin), Emit::PassThrough, "{fam}");
        assert_eq!(sr.push(USAGE), Emit::PassThrough, "{fam}");
        assert!(sr.finish().is_empty(), "{fam}");
    }
}

#[test]
fn escaped_plain_content_passes_through() {
    let v = find("C1");
    let mut sr = StreamRepair::new(
        Family::Hermes,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    for w in ["Line \"one\"", "\nLine two", " \u{e9}t\u{e9}"] {
        assert_eq!(
            sr.push(&content_chunk(0, w, None)),
            Emit::PassThrough,
            "{w:?}"
        );
    }
}

#[test]
fn text_before_candidate_is_emitted_by_the_same_push() {
    let v = find("C2");
    let mut sr = StreamRepair::new(
        Family::Hermes,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    match sr.push(&content_chunk(0, "Let me look that up.\n<tool_", None)) {
        Emit::Replace(r) => assert_eq!(contents(&r), "Let me look that up."),
        Emit::PassThrough => panic!("partial tag must be held"),
    }
    match sr.push(&content_chunk(
        0,
        "call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"x\"}}\n</tool_call>",
        None,
    )) {
        Emit::Replace(r) => {
            let f = reassemble(&r, 0, "C2 inc");
            assert_eq!(f.calls.len(), 1);
            assert_eq!(f.calls[0].1, "search");
            assert_eq!(f.calls[0].2, "{\"query\":\"x\"}");
        }
        Emit::PassThrough => panic!("call expected"),
    }
    // a partial tag that turns out to be text is released by the next push
    let mut sr = StreamRepair::new(
        Family::Hermes,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    assert_eq!(
        sr.push(&content_chunk(0, "a <t", None)),
        Emit::Replace(vec![content_chunk(0, "a", None)])
    );
    match sr.push(&content_chunk(0, "ool> text", None)) {
        Emit::Replace(r) => assert_eq!(contents(&r), " <tool> text"),
        Emit::PassThrough => panic!("held text must be released"),
    }
}

#[test]
fn harmony_final_streams_before_end() {
    let v = find("B4");
    let mut sr = StreamRepair::new(
        Family::GptOss,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    let _ = sr.push(&content_chunk(0, "<|channel|>final<|message|>Hello", None));
    match sr.push(&content_chunk(0, " world, this is long", None)) {
        Emit::Replace(r) => assert_eq!(contents(&r), " world, this is long"),
        Emit::PassThrough => panic!("harmony body is rewritten"),
    }
}

// ---------------------------------------------------------------- counters, n>1, native

#[test]
fn counters_count_per_family() {
    let counters = Arc::new(Counters::new());
    for id in ["C1", "C3", "C11", "C12", "A1", "A4", "B8"] {
        let v = find(id);
        let (_, _) = run_nonstream(&v, &counters);
    }
    let snap = counters.snapshot();
    assert_eq!(
        snap["hermes"],
        json!({"converted": 4, "left_as_text": 2, "calls": 4})
    );
    assert_eq!(
        snap["gptoss"],
        json!({"converted": 1, "left_as_text": 2, "calls": 1})
    );
    assert_eq!(
        snap["mistral"],
        json!({"converted": 0, "left_as_text": 0, "calls": 0})
    );
    // streaming counts the same
    let sc = Arc::new(Counters::new());
    for id in ["C1", "C3", "C11", "C12", "A1", "A4", "B8"] {
        let v = find(id);
        let raw = raw_of(&v);
        let _ = run_stream(
            &v,
            &upstream_stream(&v, &char_pieces(&raw), false, true),
            sc.clone(),
        );
    }
    assert_eq!(sc.snapshot(), snap);
}

#[test]
fn n2_choices_are_independent() {
    let v = find("C2");
    let tools = v.tools.clone().expect("tools");
    let mut sr = StreamRepair::new(
        Family::Hermes,
        tools.clone(),
        Options::default(),
        Arc::new(Counters::new()),
    );
    let a = raw_of(&v);
    let b = "Plain second answer.";
    let mut out = Vec::new();
    let mut up = Vec::new();
    let (ca, cb) = (char_pieces(&a), char_pieces(b));
    for i in 0..ca.len().max(cb.len()) {
        if let Some(p) = ca.get(i) {
            up.push(content_chunk(0, p, None));
        }
        if let Some(p) = cb.get(i) {
            up.push(content_chunk(1, p, None));
        }
    }
    up.push(chunk(
        json!({"index": 1, "delta": {}, "finish_reason": "stop"}),
    ));
    up.push(chunk(
        json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
    ));
    // a chunk carrying both choices at once
    let both = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1767225600, "model": "m", "system_fingerprint": "fp",
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": null}, {"index": 1, "delta": {"content": ""}, "finish_reason": null}]}).to_string();
    up.insert(0, both);
    for u in &up {
        match sr.push(u) {
            Emit::PassThrough => out.push(u.clone()),
            Emit::Replace(r) => out.extend(r),
        }
    }
    out.extend(sr.finish());
    let f0 = reassemble(&out, 0, "n2/0");
    let f1 = reassemble(&out, 1, "n2/1");
    assert_eq!(f0.content.as_deref(), Some("Let me look that up."));
    assert_eq!(f0.calls.len(), 1);
    assert_eq!(f0.finish.as_deref(), Some("tool_calls"));
    assert_eq!(f1.content.as_deref(), Some(b));
    assert!(f1.calls.is_empty());
    assert_eq!(f1.finish.as_deref(), Some("stop"));

    // non-stream n=2
    let mut body = json!({"choices": [
        {"index": 0, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>"}, "finish_reason": "stop"}]});
    repair_response(
        &mut body,
        Family::Hermes,
        &tools,
        &Options::default(),
        &Counters::new(),
    );
    let m0 = final_of_message(&body["choices"][0]);
    let m1 = final_of_message(&body["choices"][1]);
    assert_eq!(m0.calls.len(), 1);
    assert_eq!(m1.calls.len(), 1);
    assert_ne!(m0.calls[0].0, m1.calls[0].0);
}

#[test]
fn native_tool_calls_pass_through() {
    let v = find("C1");
    let tools = v.tools.clone().expect("tools");
    let native = r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"id":"chatcmpl-tool-84bf","type":"function","index":0,"function":{"name":"get_weather"}}]},"logprobs":null,"finish_reason":null}]}"#;
    let args = r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"<tool_call>\"}"}}]},"logprobs":null,"finish_reason":null}]}"#;
    let fin = r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#;
    let mut sr = StreamRepair::new(
        Family::Hermes,
        tools.clone(),
        Options::default(),
        Arc::new(Counters::new()),
    );
    for c in [native, args, fin, USAGE] {
        assert_eq!(sr.push(c), Emit::PassThrough);
    }
    let mut body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "<tool_call>{\"name\": \"get_time\"}</tool_call>",
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]});
    let before = body.clone();
    repair_response(
        &mut body,
        Family::Hermes,
        &tools,
        &Options::default(),
        &Counters::new(),
    );
    assert_eq!(body, before);
}

#[test]
fn weird_payloads_pass_through() {
    let v = find("C1");
    let mut sr = StreamRepair::new(
        Family::Hermes,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    for p in [
        "",
        "not json",
        "{",
        "[1,2]",
        "{\"choices\":5}",
        "{\"choices\":[{\"index\":-1,\"delta\":{\"content\":7}}]}",
        "{\"error\":{\"message\":\"x\"}}",
        "{\"choices\":[{\"delta\":{\"content\":\"\\ud800\"}}]}",
    ] {
        assert_eq!(sr.push(p), Emit::PassThrough, "{p:?}");
    }
}

#[test]
fn error_mid_candidate_flushes_held_text_first() {
    let v = find("C1");
    let mut sr = StreamRepair::new(
        Family::Hermes,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    let _ = sr.push(&content_chunk(0, "ok <tool_call>{\"name\"", None));
    let err = r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#;
    match sr.push(err) {
        Emit::Replace(r) => {
            assert_eq!(r.last().map(String::as_str), Some(err));
            assert_eq!(contents(&r[..r.len() - 1]), " <tool_call>{\"name\"");
        }
        Emit::PassThrough => panic!("held text must be flushed before the error"),
    }
}

#[test]
fn stripped_harmony_is_off_by_default() {
    let mut v = find("B5");
    v.opts = Options::default();
    let (before, after) = run_nonstream(&v, &Counters::new());
    assert_eq!(before, after);
}

#[test]
fn named_choice_finish_stays_stop_in_stream() {
    let v = find("N1");
    let raw = raw_of(&v);
    let out = run_stream(
        &v,
        &upstream_stream(&v, &char_pieces(&raw), false, true),
        Arc::new(Counters::new()),
    );
    assert_eq!(reassemble(&out, 0, "N1").finish.as_deref(), Some("stop"));
}

#[test]
fn family_none_never_transforms() {
    let v = find("C1");
    let mut body = response(&v);
    let before = body.clone();
    repair_response(
        &mut body,
        Family::None,
        v.tools.as_ref().expect("tools"),
        &Options::default(),
        &Counters::new(),
    );
    assert_eq!(body, before);
    let mut sr = StreamRepair::new(
        Family::None,
        v.tools.clone().expect("tools"),
        Options::default(),
        Arc::new(Counters::new()),
    );
    assert_eq!(
        sr.push(&content_chunk(0, "<tool_call>", None)),
        Emit::PassThrough
    );
}

// ---------------------------------------------------------------- config

#[test]
fn request_tools_rules() {
    let t = json!([{"type": "function", "function": {"name": "f"}}]);
    assert!(RequestTools::from_request(&json!({"tools": t})).is_some());
    assert!(RequestTools::from_request(&json!({"tools": t, "tool_choice": "auto"})).is_some());
    assert!(RequestTools::from_request(&json!({"tools": t, "tool_choice": "required"})).is_some());
    assert!(RequestTools::from_request(&json!({"tools": t, "tool_choice": "none"})).is_none());
    assert!(RequestTools::from_request(&json!({"tools": []})).is_none());
    assert!(RequestTools::from_request(&json!({"messages": []})).is_none());
    assert!(RequestTools::from_request(
        &json!({"functions": [{"name": "f"}], "function_call": "auto"})
    )
    .is_none());
    let named = RequestTools::from_request(
        &json!({"tools": t, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    )
    .expect("named");
    assert_eq!(named.named(), Some("f"));
    for so in [
        json!({"response_format": {"type": "json_object"}}),
        json!({"guided_json": {}}),
        json!({"structured_outputs": {"json": {}}}),
    ] {
        let mut req = so.clone();
        req["tools"] = t.clone();
        assert!(
            RequestTools::from_request(&req).expect("tools").structured,
            "{so}"
        );
    }
    let mut req = json!({"response_format": {"type": "text"}});
    req["tools"] = t;
    assert!(!RequestTools::from_request(&req).expect("tools").structured);
}

#[test]
fn format_rules() {
    let r =
        FormatRules::parse("gpt-oss-*=gptoss, qwen*=hermes,my-model-?=mistral,,").expect("parse");
    assert_eq!(r.family_for("gpt-oss-120b"), Family::GptOss);
    assert_eq!(r.family_for("Qwen2.5-7B-Instruct"), Family::Hermes);
    assert_eq!(r.family_for("my-model-1"), Family::Mistral);
    assert_eq!(r.family_for("my-model-12"), Family::None);
    assert_eq!(r.family_for("openai/gpt-oss-20b"), Family::GptOss);
    assert_eq!(
        r.family_for("meta-llama/Llama-3.1-8B-Instruct"),
        Family::Llama3Json
    );
    assert_eq!(
        r.family_for("meta-llama/Llama-4-Scout-17B-16E-Instruct"),
        Family::Pythonic
    );
    assert_eq!(
        r.family_for("mistralai/Mistral-Small-3.2-24B"),
        Family::Mistral
    );
    assert_eq!(
        r.family_for("NousResearch/Hermes-3-Llama-3.1-8B"),
        Family::Hermes
    );
    assert_eq!(r.family_for("some-unknown-model"), Family::None);
    let first = FormatRules::parse("qwen*=none").expect("parse");
    assert_eq!(first.family_for("qwen3-8b"), Family::None);
    assert_eq!(first.rules().next(), Some(("qwen*", Family::None)));
    assert!(FormatRules::parse("x").is_err());
    assert!(FormatRules::parse("=hermes").is_err());
    assert!(FormatRules::parse("x=bogus").is_err());
    assert_eq!(
        FormatRules::parse("").expect("empty").family_for("qwen3"),
        Family::Hermes
    );
    for f in [
        Family::GptOss,
        Family::Hermes,
        Family::Llama3Json,
        Family::Mistral,
        Family::Pythonic,
        Family::None,
    ] {
        assert_eq!(f.to_string().parse::<Family>(), Ok(f));
    }
}

#[test]
fn ids_are_well_formed() {
    let mut g = super::ids::IdGen::default();
    let ids: Vec<String> = (0..1000).map(|_| g.next()).collect();
    for (i, id) in ids.iter().enumerate() {
        assert!(is_gateway_call_id(id));
        assert!(!ids[..i].contains(id));
    }
    assert!(!is_gateway_call_id("call_abc"));
    assert!(!is_gateway_call_id(
        "chatcmpl-tool-0123456789abcdef0123456789abcdef"
    ));
}

// ---------------------------------------------------------------- splicing

/// A payload with gateway call ids blanked (they are random).
fn without_ids(p: &str) -> Value {
    let mut v: Value = serde_json::from_str(p).expect("payload is JSON");
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            if let Some(calls) = c
                .pointer_mut("/delta/tool_calls")
                .and_then(Value::as_array_mut)
            {
                for call in calls {
                    if let Some(id) = call.get_mut("id") {
                        *id = Value::from("id");
                    }
                }
            }
        }
    }
    v
}

fn run_both(family: Family, tools: &RequestTools, opts: &Options, up: &[String], ctx: &str) {
    let mut outs = Vec::new();
    for no_splice in [false, true] {
        let mut sr = StreamRepair::new(
            family,
            tools.clone(),
            opts.clone(),
            Arc::new(Counters::new()),
        );
        sr.no_splice = no_splice;
        let mut out = Vec::new();
        for u in up {
            match sr.push(u) {
                Emit::PassThrough => out.push(u.clone()),
                Emit::Replace(r) => out.extend(r),
            }
        }
        out.extend(sr.finish());
        outs.push(out.iter().map(|p| without_ids(p)).collect::<Vec<_>>());
    }
    assert_eq!(
        outs[0], outs[1],
        "{ctx}: spliced chunks differ from rebuilt ones"
    );
}

#[test]
fn spliced_chunks_equal_rebuilt_chunks() {
    for v in vectors() {
        let Some(tools) = v.tools.clone() else {
            continue;
        };
        let raw = raw_of(&v);
        let pieces = char_pieces(&raw);
        let up = upstream_stream(&v, &pieces, false, true);
        run_both(v.family, &tools, &v.opts, &up, &v.id);
        for cut in (0..=raw.len()).filter(|&c| raw.is_char_boundary(c)) {
            let up = upstream_stream(&v, &[&raw[..cut], &raw[cut..]], true, false);
            run_both(
                v.family,
                &tools,
                &v.opts,
                &up,
                &format!("{} cut {cut}", v.id),
            );
        }
    }
}

#[test]
fn harmony_reasoning_is_spliced() {
    let v = find("B4");
    let tools = v.tools.clone().expect("tools");
    let text = "Think \"hard\" \\ \n\t\u{1}\u{1f} é / \u{7f} 😀";
    let with = |extra: Value, content: &str| {
        let mut c = json!({"index": 0, "delta": {"content": content}, "logprobs": null, "finish_reason": null});
        if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
            m.extend(e);
        }
        c
    };
    for extra in [json!({}), json!({"stop_reason": null, "token_ids": [1, 2]})] {
        let mut sr = StreamRepair::new(
            Family::GptOss,
            tools.clone(),
            Options::default(),
            Arc::new(Counters::new()),
        );
        assert_eq!(
            sr.push(&chunk(with(
                extra.clone(),
                "<|channel|>analysis<|message|>"
            ))),
            Emit::Replace(Vec::new())
        );
        let r = match sr.push(&chunk(with(extra.clone(), text))) {
            Emit::Replace(r) => r,
            Emit::PassThrough => panic!("analysis is rewritten"),
        };
        let mut want = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1767225600, "model": "m",
                              "system_fingerprint": "fp", "choices": [with(extra, "")]});
        want["choices"][0]["delta"] = json!({"reasoning": text});
        assert_eq!(r.len(), 1);
        assert_eq!(serde_json::from_str::<Value>(&r[0]).ok(), Some(want));
    }
}

#[test]
fn escape_matches_serde_json() {
    let mut all: String = (0u32..0x80).filter_map(char::from_u32).collect();
    all.push_str("é€😀\u{2028}\u{fffd}");
    for s in [all.as_str(), "", "plain", "\"", "a\\b", "\u{0}x"] {
        let mut out = String::new();
        super::stream::escape_into(s, &mut out);
        assert_eq!(
            format!("\"{out}\""),
            serde_json::to_string(s).expect("string")
        );
    }
}

#[test]
fn surely_valid_is_conservative() {
    use super::chunk_scan::surely_valid;
    for ok in [
        r#"{"a":[1,-2,0.5,true,false,null,{"b":"c\n\u00e9"}], "d" : {} , "e":[]}"#,
        " [ ] ",
        "0",
        r#""\"\\\/\b\f\n\r\t""#,
    ] {
        assert!(surely_valid(ok), "{ok}");
        assert!(serde_json::from_str::<Value>(ok).is_ok(), "{ok}");
    }
    for unsure in [
        "",
        "{",
        "[1,]",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        "01",
        "-",
        "1.",
        "1e5",
        ".5",
        "tru",
        "nul",
        r#""\ud800""#,
        r#""\x""#,
        "\"a\u{1}\"",
        "\"abc",
        "[1 2]",
        "{1:2}",
        "1 2",
        "12345678901234567",
        r#"{"a":1}}"#,
        "[[[[",
        "]",
    ] {
        assert!(!surely_valid(unsure), "{unsure}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(!surely_valid(&deep));
    use super::chunk_scan::surely_valid_string_body as body;
    assert!(body("") && body("abc é") && body(r#"\n\u00e9\\\""#));
    for bad in [r"\ud83d", "a\"", "a\u{1}", "a\\", r"\x", r"\u12"] {
        assert!(!body(bad), "{bad}");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        (0u32..100).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        "[a-z\"\\\\/\n\u{1}é😀]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[a-z\"]{0,3}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]
    #[test]
    fn surely_valid_implies_serde_parses(v in json_value(), pos in any::<usize>(), op in 0usize..3,
                                         ins in "[\\[\\]{}\",:0-9a-z\\\\.eE+ \u{1}-]") {
        let s = v.to_string();
        prop_assert!(super::chunk_scan::surely_valid(&s), "{:?}", s);
        let cuts: Vec<usize> = (0..=s.len()).filter(|&c| s.is_char_boundary(c)).collect();
        let at = cuts[pos % cuts.len()];
        let mut m = s.clone();
        match op {
            0 => {
                if let Some(c) = m[at..].chars().next() {
                    m.replace_range(at..at + c.len_utf8(), "");
                }
            }
            1 => m.insert_str(at, &ins),
            _ => {
                if let Some(c) = m[at..].chars().next() {
                    m.replace_range(at..at + c.len_utf8(), &ins);
                }
            }
        }
        if super::chunk_scan::surely_valid(&m) {
            prop_assert!(serde_json::from_str::<Value>(&m).is_ok(), "{:?}", m);
        }
    }
}
