//! Hermes / Qwen: `<tool_call>` ws* JSON ws* (`</tool_call>` | end of output) (protocol.md 3.2).

use super::calls::calls_from_value;
use super::json_scan::{json_extent_at, parse_value, Extent, JsonCache};
use super::machine::{skip_ws, Cand, Cx};

pub(crate) const OPEN: &str = "<tool_call>";
pub(crate) const CLOSE: &str = "</tool_call>";

/// `s` starts with `<tool_call>`.
pub(crate) fn candidate(s: &str, at_end: bool, cx: &Cx<'_>, jc: &mut JsonCache) -> Cand {
    let i = skip_ws(s, OPEN.len());
    let Some(&c) = s.as_bytes().get(i) else {
        return if at_end {
            Cand::Fail(s.len())
        } else {
            Cand::Pending
        };
    };
    if c != b'{' && c != b'[' {
        return Cand::Fail(i);
    }
    let n = match json_extent_at(s, i, jc) {
        Extent::Incomplete => {
            return if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            }
        }
        Extent::Invalid(k) => return Cand::Fail(i + k.max(1)),
        Extent::Complete(n) => n,
    };
    let j = i + n;
    let Some(calls) = parse_value(&s[i..j]).and_then(|v| calls_from_value(&v, cx.tools)) else {
        return Cand::Fail(j);
    };
    let k = skip_ws(s, j);
    let rest = &s[k..];
    if rest.is_empty() {
        // R7: a missing end tag is tolerated at the very end of the output.
        return if at_end {
            Cand::Convert(s.len(), calls)
        } else {
            Cand::Pending
        };
    }
    if rest.starts_with(CLOSE) {
        return Cand::Convert(k + CLOSE.len(), calls);
    }
    if CLOSE.starts_with(rest) && !at_end {
        return Cand::Pending;
    }
    Cand::Fail(k)
}
