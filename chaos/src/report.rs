//! One row per scenario, printed as a Markdown table or as a JSON array.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::Tally;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    /// The fault injected, in a few words.
    pub fault: String,
    pub requests: u64,
    /// Failed requests by kind (`http_503_overloaded`, `sse_upstream_error`, `timeout`, ...);
    /// expected errors (the error event a killed stream must get) are counted here too, the
    /// pass condition says which kinds are allowed.
    pub errors: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Proof that the fault really happened (processes killed, ejections, bytes cut).
    pub evidence: String,
    /// The measured figure for the scenario's promise.
    pub figure: String,
    pub pass: bool,
    /// The pass conditions that failed (empty when `pass`).
    pub failures: Vec<String>,
}

impl Row {
    pub fn new(scenario: &str, fault: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            fault: fault.to_owned(),
            requests: 0,
            errors: BTreeMap::new(),
            p50_ms: 0.0,
            p99_ms: 0.0,
            evidence: String::new(),
            figure: String::new(),
            pass: true,
            failures: Vec::new(),
        }
    }

    pub fn tally(&mut self, t: &Tally) {
        self.requests = t.requests;
        self.errors = t.errors.clone();
        self.p50_ms = t.p50_ms;
        self.p99_ms = t.p99_ms;
    }

    /// A pass condition: records `what` as a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.pass = false;
            self.failures.push(what.into());
        }
    }

    /// A scenario that could not run (setup failed): a failed row saying why.
    pub fn broken(scenario: &str, err: &crate::ChaosError) -> Row {
        let mut r = Row::new(scenario, "");
        r.check(false, format!("setup: {err}"));
        r
    }
}

fn errors_cell(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Markdown table (the README's "Chaos" section shows one).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | fault | requests | errors | p50 ms | p99 ms | evidence | figure | result |\n\
         |---|---|---:|---|---:|---:|---|---|---|\n",
    );
    for r in rows {
        let result = if r.pass {
            "pass".to_owned()
        } else {
            format!("**FAIL**: {}", r.failures.join("; "))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.fault,
            r.requests,
            errors_cell(&r.errors),
            r.p50_ms,
            r.p99_ms,
            r.evidence.replace('|', "/"),
            r.figure.replace('|', "/"),
            result.replace('|', "/"),
        ));
    }
    out
}
