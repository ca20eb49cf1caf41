//! Per-family outcome counters, shared across requests (`Arc<Counters>`).

use super::family::Family;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct FamilyCounters {
    /// Candidates converted into tool calls.
    converted: AtomicU64,
    /// Candidates that failed and stayed text.
    left_as_text: AtomicU64,
    /// Tool calls emitted (a candidate can hold several).
    calls: AtomicU64,
}

/// Counters per transforming family. `Send + Sync`; cheap relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    per: [FamilyCounters; 5],
}

fn slot(f: Family) -> Option<usize> {
    Family::TRANSFORMING.iter().position(|x| *x == f)
}

impl Counters {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn add(&self, f: Family, converted: u64, left_as_text: u64, calls: u64) {
        let Some(c) = slot(f).and_then(|i| self.per.get(i)) else {
            return;
        };
        if converted > 0 {
            c.converted.fetch_add(converted, Ordering::Relaxed);
        }
        if left_as_text > 0 {
            c.left_as_text.fetch_add(left_as_text, Ordering::Relaxed);
        }
        if calls > 0 {
            c.calls.fetch_add(calls, Ordering::Relaxed);
        }
    }

    /// `(converted, left_as_text, calls)` for one family (zeros for `none`).
    pub fn get(&self, f: Family) -> (u64, u64, u64) {
        slot(f)
            .and_then(|i| self.per.get(i))
            .map_or((0, 0, 0), |c| {
                (
                    c.converted.load(Ordering::Relaxed),
                    c.left_as_text.load(Ordering::Relaxed),
                    c.calls.load(Ordering::Relaxed),
                )
            })
    }

    /// `{"gptoss":{"converted":N,"left_as_text":N,"calls":N}, "hermes":{...}, ...}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for f in Family::TRANSFORMING {
            let (c, l, k) = self.get(f);
            m.insert(
                f.as_str().to_owned(),
                serde_json::json!({"converted": c, "left_as_text": l, "calls": k}),
            );
        }
        serde_json::Value::Object(m)
    }
}
