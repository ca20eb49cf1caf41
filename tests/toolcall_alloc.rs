//! The stream transform allocates nothing per chunk while no candidate is open: the heap
//! block count after 2,000 plain chunks equals the count after 200. dhat's counting
//! allocator is the global allocator of this test binary only (one test, by design).

use std::sync::Arc;

use llmmux::toolcall::{Counters, Emit, Family, Options, RequestTools, StreamRepair};
use serde_json::json;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn chunk(i: usize) -> String {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": format!(" word{i} \"quoted\" \\n")}, "logprobs": null, "finish_reason": null}]})
    .to_string()
}

/// Heap blocks allocated while pushing `chunks` through a fresh transform.
fn blocks_for(family: Family, chunks: &[String]) -> u64 {
    let tools = RequestTools::from_request(
        &json!({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}),
    )
    .unwrap_or_else(|| panic!("tools"));
    let before = dhat::HeapStats::get().total_blocks;
    let mut repair = StreamRepair::new(
        family,
        tools,
        Options {
            accept_code_fence: true,
            harmony_stripped_recovery: false,
        },
        Arc::new(Counters::default()),
    );
    for c in chunks {
        assert_eq!(
            repair.push(c),
            Emit::PassThrough,
            "{family:?}: plain chunk must pass through"
        );
    }
    let after = dhat::HeapStats::get().total_blocks;
    drop(repair);
    after - before
}

#[test]
fn plain_chunks_allocate_nothing_per_chunk() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let first = [json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Sure,"}, "logprobs": null, "finish_reason": null}]})
    .to_string()];
    let short: Vec<String> = first.iter().cloned().chain((0..200).map(chunk)).collect();
    let long: Vec<String> = first.iter().cloned().chain((0..2000).map(chunk)).collect();
    for family in [
        Family::GptOss,
        Family::Hermes,
        Family::Llama3Json,
        Family::Mistral,
        Family::Pythonic,
    ] {
        let (a, b) = (blocks_for(family, &short), blocks_for(family, &long));
        assert_eq!(a, b, "{family:?}: {a} blocks for 200 chunks, {b} for 2,000");
    }
    // The counter does see the transform's allocations: holding a candidate allocates.
    let tools = RequestTools::from_request(
        &json!({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}),
    )
    .unwrap_or_else(|| panic!("tools"));
    let before = dhat::HeapStats::get().total_blocks;
    let mut repair = StreamRepair::new(
        Family::Hermes,
        tools,
        Options {
            accept_code_fence: true,
            harmony_stripped_recovery: false,
        },
        Arc::new(Counters::default()),
    );
    let held = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "<tool_call>{\"name\": \"get_weather\""}, "finish_reason": null}]})
    .to_string();
    let _ = repair.push(&held);
    assert!(
        dhat::HeapStats::get().total_blocks > before,
        "allocations are counted"
    );
}
