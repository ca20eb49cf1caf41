//! gpt-oss non-harmony candidates (protocol.md 3.1 group A, R14): bare JSON at
//! content start, the same inside a ```` ``` ```` fence, and stripped harmony.

use super::calls::{calls_from_value, calls_named_wrap, canonical_args, Call};
use super::json_scan::{json_extent, json_extent_at, parse_value, Extent, JsonCache};
use super::machine::{skip_ws, Cand, Cx};

const FENCE: &str = "```";
pub(crate) const STRIPPED_KEYWORDS: [&str; 3] = ["analysis", "commentary", "final"];

fn judge(json: &str, cx: &Cx<'_>) -> Option<Vec<Call>> {
    let v = parse_value(json)?;
    if cx.tools.named().is_some() {
        calls_named_wrap(&v, cx.tools)
    } else {
        calls_from_value(&v, cx.tools)
    }
}

/// `s` starts with `{` or `[`.
pub(crate) fn bare_json(s: &str, at_end: bool, cx: &Cx<'_>, jc: &mut JsonCache) -> Cand {
    match json_extent_at(s, 0, jc) {
        Extent::Incomplete => {
            if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            }
        }
        Extent::Invalid(k) => Cand::NotACandidate(k.max(1)),
        Extent::Complete(n) => match judge(&s[..n], cx) {
            Some(calls) => Cand::Convert(n, calls),
            None => Cand::Fail(n),
        },
    }
}

/// `s` starts with a backtick: "```" [lang] ws* JSON ws* ("```" | end of output).
pub(crate) fn fence(s: &str, at_end: bool, cx: &Cx<'_>, jc: &mut JsonCache) -> Cand {
    if !s.starts_with(FENCE) {
        return if FENCE.starts_with(s) && !at_end {
            Cand::Pending
        } else {
            Cand::NotACandidate(0)
        };
    }
    let lang_end = s[3..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+')))
        .map_or(s.len(), |k| 3 + k);
    let i = skip_ws(s, lang_end);
    let Some(&c) = s.as_bytes().get(i) else {
        return if at_end {
            Cand::NotACandidate(s.len())
        } else {
            Cand::Pending
        };
    };
    if c != b'{' && c != b'[' {
        return Cand::NotACandidate(i);
    }
    let n = match json_extent_at(s, i, jc) {
        Extent::Incomplete => {
            return if at_end {
                Cand::Fail(s.len())
            } else {
                Cand::Pending
            }
        }
        Extent::Invalid(k) => return Cand::NotACandidate(i + k.max(1)),
        Extent::Complete(n) => n,
    };
    let j = i + n;
    let Some(calls) = judge(&s[i..j], cx) else {
        return Cand::Fail(j);
    };
    let k = skip_ws(s, j);
    let rest = &s[k..];
    if rest.is_empty() {
        return if at_end {
            Cand::Convert(s.len(), calls)
        } else {
            Cand::Pending
        };
    }
    if rest.starts_with(FENCE) {
        return Cand::Convert(k + FENCE.len(), calls);
    }
    if FENCE.starts_with(rest) && !at_end {
        return Cand::Pending;
    }
    Cand::Fail(k)
}

/// R14: `s` starts with a stripped channel keyword; decided only at end of output.
pub(crate) fn stripped(s: &str, at_end: bool, cx: &Cx<'_>) -> Cand {
    if !STRIPPED_KEYWORDS.iter().any(|k| s.starts_with(k)) {
        let partial = STRIPPED_KEYWORDS.iter().any(|k| k.starts_with(s));
        return if partial && !at_end {
            Cand::Pending
        } else {
            Cand::NotACandidate(0)
        };
    }
    if !at_end {
        return Cand::Pending;
    }
    const TO: &str = "to=functions.";
    let Some(p) = s.rfind(TO) else {
        return Cand::NotACandidate(s.len());
    };
    let ns = p + TO.len();
    let ne = s[ns..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        .map_or(s.len(), |k| ns + k);
    let name = &s[ns..ne];
    let mut i = skip_ws(s, ne);
    if s[i..].starts_with("json") {
        i = skip_ws(s, i + 4);
    }
    if s.as_bytes().get(i) != Some(&b'{') || !cx.tools.allows(name) {
        return Cand::NotACandidate(s.len());
    }
    let Extent::Complete(n) = json_extent(&s[i..]) else {
        return Cand::Fail(s.len());
    };
    if !s[i + n..].trim().is_empty() {
        return Cand::NotACandidate(s.len());
    }
    match parse_value(&s[i..i + n]).and_then(|v| canonical_args(Some(&v))) {
        Some(arguments) => Cand::Convert(
            s.len(),
            vec![Call {
                name: name.to_owned(),
                arguments,
            }],
        ),
        None => Cand::Fail(s.len()),
    }
}
