//! Tool-call repair cost per SSE chunk (protocol.md section 4).
//!
//! Run: `cargo bench --bench toolcall`. Each benchmark feeds a whole stream to a
//! fresh `StreamRepair`; throughput is reported per chunk (element), so
//! "time per element" is the added cost per chunk.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llmmux::toolcall::{Counters, Emit, Family, Options, RequestTools, StreamRepair};
use serde_json::json;
use std::sync::Arc;

const CHUNKS: usize = 2_000;

fn tools() -> RequestTools {
    let req = json!({"tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    ], "tool_choice": "auto"});
    RequestTools::from_request(&req).unwrap_or_else(|| panic!("tools"))
}

fn chunk(text: &str, finish: Option<&str>) -> String {
    json!({"id": "chatcmpl-b7c8eea327e86bda", "object": "chat.completion.chunk", "created": 1795543872,
           "model": "tiny-qwen", "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null,
           "finish_reason": finish, "token_ids": null}]})
    .to_string()
}

fn stream_of(pieces: &[String]) -> Vec<String> {
    let mut s = vec![
        json!({"id": "chatcmpl-b7c8eea327e86bda", "object": "chat.completion.chunk",
        "created": 1795543872, "model": "tiny-qwen", "choices": [{"index": 0,
        "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]})
        .to_string(),
    ];
    s.extend(pieces.iter().map(|p| chunk(p, None)));
    s.push(chunk("", Some("stop")));
    s
}

/// Plain prose, tokens like " word17".
fn plain(n: usize) -> Vec<String> {
    stream_of(
        &(0..n)
            .map(|i| format!(" word{}", i % 97))
            .collect::<Vec<_>>(),
    )
}

/// Plain prose whose chunks carry JSON escapes (quotes, newlines inside the token).
fn plain_escaped(n: usize) -> Vec<String> {
    stream_of(
        &(0..n)
            .map(|i| format!(" \"q{}\"\nx", i % 97))
            .collect::<Vec<_>>(),
    )
}

/// Prose, then a hermes call whose arguments are streamed token by token.
fn hermes_call(n: usize) -> Vec<String> {
    let mut p: Vec<String> = (0..n / 2).map(|i| format!(" word{}", i % 97)).collect();
    p.push("\n".into());
    p.push("<tool_call>".into());
    p.push("\n{\"name\": \"search\", \"arguments\": {\"query\": \"".into());
    let rest = n.saturating_sub(p.len() + 2);
    p.extend((0..rest).map(|i| format!("tok{} ", i % 89)));
    p.push("\"}}\n".into());
    p.push("</tool_call>".into());
    stream_of(&p)
}

/// gpt-oss harmony markup: analysis, then a long final answer, streamed.
fn harmony(n: usize) -> Vec<String> {
    let mut p: Vec<String> = vec![
        "<|channel|>".into(),
        "analysis".into(),
        "<|message|>".into(),
    ];
    p.extend((0..n / 4).map(|i| format!(" think{}", i % 97)));
    p.extend([
        "<|end|>".into(),
        "<|start|>".into(),
        "assistant".into(),
        "<|channel|>".into(),
        "final".into(),
        "<|message|>".into(),
    ]);
    let rest = n.saturating_sub(p.len());
    p.extend((0..rest).map(|i| format!(" word{}", i % 97)));
    stream_of(&p)
}

/// gpt-oss harmony markup: a long analysis (every chunk becomes reasoning), short final.
fn harmony_analysis(n: usize) -> Vec<String> {
    let mut p: Vec<String> = vec![
        "<|channel|>".into(),
        "analysis".into(),
        "<|message|>".into(),
    ];
    let tail = [
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|channel|>",
        "final",
        "<|message|>",
        "Done.",
    ];
    let body = n.saturating_sub(p.len() + tail.len());
    p.extend((0..body).map(|i| format!(" think{}", i % 97)));
    p.extend(tail.iter().map(|t| (*t).to_owned()));
    stream_of(&p)
}

fn run(family: Family, stream: &[String], tools: &RequestTools, counters: &Arc<Counters>) -> usize {
    let mut sr = StreamRepair::new(family, tools.clone(), Options::default(), counters.clone());
    let mut n = 0;
    for c in stream {
        match sr.push(black_box(c)) {
            Emit::PassThrough => n += 1,
            Emit::Replace(r) => n += r.len(),
        }
    }
    n + sr.finish().len()
}

fn bench(c: &mut Criterion) {
    let tools = tools();
    let counters = Arc::new(Counters::new());
    let cases: [(&str, Family, Vec<String>); 6] = [
        ("passthrough_plain", Family::Hermes, plain(CHUNKS)),
        ("passthrough_plain_gptoss", Family::GptOss, plain(CHUNKS)),
        ("passthrough_escaped", Family::Hermes, plain_escaped(CHUNKS)),
        ("hermes_tool_call", Family::Hermes, hermes_call(CHUNKS)),
        ("gptoss_harmony_final", Family::GptOss, harmony(CHUNKS)),
        (
            "gptoss_harmony_analysis",
            Family::GptOss,
            harmony_analysis(CHUNKS),
        ),
    ];
    let mut g = c.benchmark_group("toolcall_stream");
    for (name, family, stream) in &cases {
        g.throughput(Throughput::Elements(stream.len() as u64));
        g.bench_with_input(BenchmarkId::new(*name, stream.len()), stream, |b, s| {
            b.iter(|| run(*family, s, &tools, &counters))
        });
    }
    // Baseline: family `none` (no transform at all).
    let s = plain(CHUNKS);
    g.throughput(Throughput::Elements(s.len() as u64));
    g.bench_with_input(BenchmarkId::new("family_none", s.len()), &s, |b, s| {
        b.iter(|| run(Family::None, s, &tools, &counters))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
