//! Mistral: `[TOOL_CALLS]` followed by a JSON array/object (pre-v11), `NAME{args}`
//! (v11) or `NAME[CALL_ID]id[ARGS]{args}` (v13); a bare JSON array at content
//! start when the marker was stripped (protocol.md 3.4).

use super::calls::{calls_from_value, canonical_args, Call};
use super::json_scan::{json_extent_at, parse_value, Extent, JsonCache};
use super::machine::{skip_ws, Cand, Cx};

pub(crate) const MARKER: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";

fn json_at(s: &str, i: usize, at_end: bool, jc: &mut JsonCache) -> Result<usize, Cand> {
    match json_extent_at(s, i, jc) {
        Extent::Incomplete => Err(if at_end {
            Cand::Fail(s.len())
        } else {
            Cand::Pending
        }),
        Extent::Invalid(k) => Err(Cand::Fail(i + k.max(1))),
        Extent::Complete(n) => Ok(i + n),
    }
}

/// `s` starts with `[`. `at_start`: bare arrays are allowed (content start, R9 off).
pub(crate) fn candidate(
    s: &str,
    at_start: bool,
    at_end: bool,
    cx: &Cx<'_>,
    jc: &mut JsonCache,
) -> Cand {
    if !s.starts_with(MARKER) {
        if MARKER.starts_with(s) && !at_end {
            return Cand::Pending;
        }
        if !at_start || cx.tools.structured {
            return Cand::NotACandidate(0);
        }
        return match json_extent_at(s, 0, jc) {
            Extent::Incomplete => {
                if at_end {
                    Cand::Fail(s.len())
                } else {
                    Cand::Pending
                }
            }
            Extent::Invalid(k) => Cand::NotACandidate(k.max(1)),
            Extent::Complete(n) => match parse_value(&s[..n]) {
                Some(v @ serde_json::Value::Array(_)) => match calls_from_value(&v, cx.tools) {
                    Some(calls) => Cand::Convert(n, calls),
                    None => Cand::Fail(n),
                },
                _ => Cand::NotACandidate(n),
            },
        };
    }
    let i = skip_ws(s, MARKER.len());
    let Some(&c) = s.as_bytes().get(i) else {
        return if at_end {
            Cand::Fail(s.len())
        } else {
            Cand::Pending
        };
    };
    if c == b'[' || c == b'{' {
        let j = match json_at(s, i, at_end, jc) {
            Ok(j) => j,
            Err(r) => return r,
        };
        return match parse_value(&s[i..j]).and_then(|v| calls_from_value(&v, cx.tools)) {
            Some(calls) => Cand::Convert(j, calls),
            None => Cand::Fail(j),
        };
    }
    // NAME
    let name_end = s[i..]
        .find(|ch: char| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')))
        .map_or(s.len(), |k| i + k);
    if name_end == i {
        return Cand::Fail(i);
    }
    if name_end == s.len() {
        return if at_end {
            Cand::Fail(s.len())
        } else {
            Cand::Pending
        };
    }
    let name = &s[i..name_end];
    let mut k = name_end;
    // optional [CALL_ID]id, optional [ARGS]
    for (tok, skip_id) in [(CALL_ID, true), (ARGS, false)] {
        let rest = &s[k..];
        if rest.starts_with(tok) {
            k += tok.len();
            if skip_id {
                let id_end = s[k..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
                    .map_or(s.len(), |x| k + x);
                if id_end == s.len() {
                    return if at_end {
                        Cand::Fail(s.len())
                    } else {
                        Cand::Pending
                    };
                }
                k = id_end;
            }
        } else if tok.starts_with(rest) {
            return if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            };
        }
    }
    let k = skip_ws(s, k);
    match s.as_bytes().get(k) {
        None => {
            return if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            }
        }
        Some(b'{') => {}
        Some(_) => return Cand::Fail(k),
    }
    let j = match json_at(s, k, at_end, jc) {
        Ok(j) => j,
        Err(r) => return r,
    };
    if !cx.tools.allows(name) {
        return Cand::Fail(j);
    }
    match parse_value(&s[k..j]).filter(|v| v.is_object()) {
        Some(v) => match canonical_args(Some(&v)) {
            Some(arguments) => Cand::Convert(
                j,
                vec![Call {
                    name: name.to_owned(),
                    arguments,
                }],
            ),
            None => Cand::Fail(j),
        },
        None => Cand::Fail(j),
    }
}
