//! Checking and rewriting a request costs at most one more copy of the body, whatever it
//! holds: a ~10 MB body of 5 million numbers (each a heap string in a `serde_json::Value`
//! with `arbitrary_precision`) peaks at about twice its size when rewritten, and at its
//! size when only checked. dhat's counting allocator is the global allocator of this test
//! binary only (one test, by design: the peak is process-wide).

use std::collections::BTreeMap;

use bytes::Bytes;
use llmmux::proxy::prepare::prepare;
use llmmux::proxy::Endpoint;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Heap that is not the body or its rewrite: the model names, the scanner's few words.
const SLACK: usize = 4096;

/// `{"model":"m",<stream>"messages":[0,0,...]}` of about 10 MB, in an exact allocation.
fn body(stream: bool) -> Bytes {
    let head = if stream {
        r#"{"model":"m","stream":true,"messages":["#
    } else {
        r#"{"model":"m","messages":["#
    };
    let zeros = 5_000_000;
    let mut s = String::with_capacity(head.len() + 2 * zeros + 1);
    s.push_str(head);
    for i in 0..zeros {
        s.push_str(if i == 0 { "0" } else { ",0" });
    }
    s.push_str("]}");
    Bytes::from(s)
}

/// Peak heap while preparing a fresh body, as a multiple of its size.
fn peak_of(stream: bool, aliases: &BTreeMap<String, String>) -> (usize, u64, bool) {
    let base = dhat::HeapStats::get().curr_bytes;
    let raw = body(stream);
    let len = raw.len();
    let before = raw.as_ptr();
    let p = prepare(Endpoint::Chat, raw, aliases).unwrap_or_else(|e| panic!("valid: {e}"));
    let rewritten = p.body.as_ptr() != before;
    let peak = dhat::HeapStats::get().max_bytes as u64 - base as u64;
    drop(p);
    (len, peak, rewritten)
}

#[test]
fn a_10_mb_body_peaks_at_twice_its_size_when_rewritten() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let none = BTreeMap::new();
    // Checked only, the body passes as it came: no copy.
    let (len, peak, rewritten) = peak_of(false, &none);
    assert!(!rewritten);
    println!(
        "checked: body {len} B, peak {peak} B ({:.4}x)",
        peak as f64 / len as f64
    );
    assert!(peak <= (len + SLACK) as u64, "peak {peak} B for {len} B");
    // The max so far is the checked body's; the rewrites below must exceed it to be seen,
    // and they do (two copies), so each figure is that run's own peak.
    let aliases: BTreeMap<String, String> = [("m".to_string(), "served-model".to_string())].into();
    for stream in [false, true] {
        let (len, peak, rewritten) = peak_of(stream, &aliases);
        assert!(rewritten);
        println!(
            "rewritten (alias{}): body {len} B, peak {peak} B ({:.4}x)",
            if stream { " + usage" } else { "" },
            peak as f64 / len as f64
        );
        assert!(
            peak <= (2 * len + SLACK) as u64,
            "peak {peak} B for a {len} B body"
        );
        assert!(peak >= 2 * len as u64, "the counter sees both copies");
    }
}
