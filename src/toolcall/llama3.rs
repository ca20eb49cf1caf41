//! Llama 3.x JSON: [`;`] [`<|python_tag|>`] JSON object at content start, further
//! calls separated by `;` (protocol.md 3.3).

use super::calls::calls_from_value;
use super::json_scan::{json_extent_at, parse_value, Extent, JsonCache};
use super::machine::{skip_ws, Cand, Cx};

pub(crate) const PYTHON_TAG: &str = "<|python_tag|>";

/// `s` starts at `;` (when `after_call`), `<` or a JSON opener.
pub(crate) fn candidate(
    s: &str,
    after_call: bool,
    at_end: bool,
    cx: &Cx<'_>,
    jc: &mut JsonCache,
) -> Cand {
    let mut i = 0;
    if after_call {
        if !s.starts_with(';') {
            return Cand::NotACandidate(0);
        }
        i = skip_ws(s, 1);
    }
    let rest = &s[i..];
    let mut tagged = false;
    if rest.starts_with(PYTHON_TAG) {
        tagged = true;
        i = skip_ws(s, i + PYTHON_TAG.len());
    } else if rest.is_empty() || (rest.starts_with('<') && PYTHON_TAG.starts_with(rest)) {
        return if at_end {
            Cand::NotACandidate(s.len())
        } else {
            Cand::Pending
        };
    }
    let Some(&c) = s.as_bytes().get(i) else {
        return if at_end {
            Cand::Fail(s.len())
        } else {
            Cand::Pending
        };
    };
    let bare_ok = !cx.tools.structured || tagged;
    if !(c == b'{' || c == b'[') || !bare_ok {
        return if tagged {
            Cand::Fail(i)
        } else {
            Cand::NotACandidate(i.max(1))
        };
    }
    match json_extent_at(s, i, jc) {
        Extent::Incomplete => {
            if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            }
        }
        Extent::Invalid(k) => {
            if tagged {
                Cand::Fail(i + k.max(1))
            } else {
                Cand::NotACandidate(i + k.max(1))
            }
        }
        Extent::Complete(n) => {
            let j = i + n;
            match parse_value(&s[i..j]).and_then(|v| calls_from_value(&v, cx.tools)) {
                Some(calls) => Cand::Convert(j, calls),
                None => Cand::Fail(j),
            }
        }
    }
}
