//! Tool-call repair for `/v1/chat/completions` responses (protocol.md sections 3 and 4).
//!
//! Many open models served by vLLM write their function calls into `content` as
//! text (harmony markup, `<tool_call>` blocks, bare JSON, `[TOOL_CALLS]`, Python
//! call lists). This module turns such text into OpenAI `tool_calls`, with no I/O:
//!
//! * [`repair_response`] rewrites a complete `chat.completion` body in place;
//! * [`StreamRepair`] transforms a stream one SSE `data:` payload at a time.
//!
//! Which format a model uses is its [`Family`], chosen by [`FormatRules`]
//! (`TOOL_CALL_FORMATS` globs, then built-in defaults). [`RequestTools::from_request`]
//! extracts what the request allows (declared tools, `tool_choice`, structured
//! output) and returns `None` when the response must not be transformed (R1).
//!
//! Both paths run the same per-choice state machine (`machine.rs`), which consumes
//! content in pieces of any size, so the streamed result equals the non-streamed
//! one whatever the chunk boundaries. In a stream only text that could start a
//! candidate is held (a partial tag, a candidate body, trailing whitespace that a
//! following call would trim); plain text is forwarded as [`Emit::PassThrough`]
//! without allocating. A single-choice chunk whose only change is its
//! `delta.content` text (held text, streamed harmony bodies), or whose content
//! becomes reasoning (harmony `analysis`), is rewritten by splicing the new
//! JSON-escaped string into the original payload; only other rewrites go through
//! `serde_json::Value`. Native upstream `tool_calls` are never touched.
//!
//! Layout: `family` (families, model rules), `config` (options, request facts),
//! `machine` (state machine), `sink` (R6/R13 output assembly), per-family
//! candidate parsers (`gptoss`, `harmony`, `hermes`, `llama3`, `mistral`,
//! `pythonic`), `calls` + `json_scan` (validation), `nonstream`, `stream` +
//! `chunk_scan` (allocation-free chunk inspection), `ids`, `counters`.

mod calls;
mod chunk_scan;
mod config;
mod counters;
mod family;
mod gptoss;
mod harmony;
mod hermes;
mod ids;
mod json_scan;
mod llama3;
mod machine;
mod mistral;
mod nonstream;
mod pythonic;
mod sink;
mod stream;
#[cfg(test)]
mod tests;

pub use config::{Options, RequestTools};
pub use counters::Counters;
pub use family::{Family, FormatRules, FormatRulesError};
pub use ids::is_gateway_call_id;
pub use stream::{Emit, StreamRepair};

use config::Choice;
use machine::Machine;

/// Non-streaming: repair every choice of a `chat.completion` body in place.
/// Choices with native `tool_calls`, non-string content or nothing to repair are
/// left byte-for-byte unchanged.
pub fn repair_response(
    body: &mut serde_json::Value,
    family: Family,
    tools: &RequestTools,
    opts: &Options,
    counters: &Counters,
) {
    nonstream::repair(body, family, tools, opts, counters);
}

/// R-FIN (protocol.md 1.6) for a choice with `calls` extracted calls.
pub(crate) fn finish_value(
    upstream: Option<&str>,
    calls: usize,
    tools: &RequestTools,
) -> Option<String> {
    let auto_or_required = matches!(tools.choice, Choice::Auto | Choice::Required);
    if calls > 0 && auto_or_required && matches!(upstream, None | Some("stop")) {
        return Some("tool_calls".to_owned());
    }
    upstream.map(str::to_owned)
}

/// Moves a machine's not-yet-reported outcomes into the shared counters.
pub(crate) fn report(
    m: &mut Machine,
    reported_calls: &mut usize,
    family: Family,
    counters: &Counters,
) {
    let s = &mut m.sink;
    let new_calls = s.calls.saturating_sub(*reported_calls);
    if s.converted > 0 || s.failed > 0 || new_calls > 0 {
        counters.add(family, s.converted, s.failed, new_calls as u64);
        s.converted = 0;
        s.failed = 0;
        *reported_calls = s.calls;
    }
}
