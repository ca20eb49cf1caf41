//! Raw harmony markup in `content` (gpt-oss, protocol.md 3.1 group B, R13):
//! message by message, `analysis` → reasoning, `commentary`/`final` without
//! recipient → content, `to=functions.X` → tool call, anything else → raw text.
//! Reasoning and content bodies stream as they arrive; only call messages and
//! unfinished headers are held.

use super::calls::{canonical_args, Call};
use super::json_scan::parse_value;
use super::machine::{find_tags, Cx, Step, TagHit};
use super::sink::Sink;

pub(crate) const START: &str = "<|start|>";
pub(crate) const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const CALL: &str = "<|call|>";
const RETURN: &str = "<|return|>";
/// Longest header accepted before `<|message|>`; longer means "not a header".
const MAX_HEADER: usize = 512;

/// Tokens that open a message.
pub(crate) const OPENERS: [&str; 2] = [START, CHANNEL];
const TERMINATORS: [&str; 4] = [CALL, END, RETURN, START];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reasoning,
    Content,
    Raw,
    Call,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HState {
    /// Between messages.
    Text,
    /// At a message opener, header not complete.
    Header,
    /// In a body; for `Call` the held text still starts at the opener and the
    /// body starts at `body_off`.
    Body { kind: Kind, body_off: usize },
}

enum Class {
    Reasoning,
    Content,
    Raw { counted: bool },
    Call(String),
}

fn header_word(h: &str, after: &str) -> Option<String> {
    let p = h.find(after)? + after.len();
    let rest = &h[p..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

fn classify(header: &str, cx: &Cx<'_>) -> Class {
    if let Some(recipient) = header_word(header, "to=").filter(|r| !r.is_empty()) {
        return match recipient.strip_prefix("functions.") {
            Some(name) if cx.tools.allows(name) => Class::Call(name.to_owned()),
            Some(_) => Class::Raw { counted: true },
            None => Class::Raw { counted: false },
        };
    }
    match header_word(header, CHANNEL).as_deref() {
        Some("analysis") => Class::Reasoning,
        Some("commentary") | Some("final") => Class::Content,
        _ => Class::Raw { counted: false },
    }
}

fn emit_body(kind: Kind, s: &str, sink: &mut Sink) {
    match kind {
        Kind::Reasoning => sink.r_text(s),
        Kind::Content | Kind::Raw => sink.text(s),
        Kind::Call => {}
    }
}

fn end_body(kind: Kind, sink: &mut Sink) {
    match kind {
        Kind::Reasoning => sink.r_end(),
        Kind::Content => sink.break_span(),
        Kind::Raw | Kind::Call => {}
    }
}

/// One step of the harmony machine over the held text `s`.
pub(crate) fn step(
    st: &mut HState,
    call_name: &mut String,
    s: &str,
    at_end: bool,
    cx: &Cx<'_>,
    sink: &mut Sink,
) -> Step {
    match *st {
        HState::Text => match find_tags(s, &OPENERS) {
            TagHit::Found(p, _) => {
                sink.text(&s[..p]);
                *st = HState::Header;
                Step::Consumed(p)
            }
            TagHit::Partial(p) if !at_end => {
                sink.text(&s[..p]);
                Step::Wait(p)
            }
            _ => {
                sink.text(s);
                Step::Consumed(s.len())
            }
        },
        HState::Header => {
            let tl = if s.starts_with(START) {
                START.len()
            } else {
                CHANNEL.len()
            };
            let m = s.find(MESSAGE);
            let restart = s.get(tl..).and_then(|r| r.find(START)).map(|k| k + tl);
            match (m, restart) {
                (Some(m), r) if m <= MAX_HEADER && r.is_none_or(|r| m < r) => {
                    let body = m + MESSAGE.len();
                    match classify(&s[..m], cx) {
                        Class::Reasoning => {
                            sink.r_begin();
                            *st = HState::Body {
                                kind: Kind::Reasoning,
                                body_off: 0,
                            };
                            Step::Consumed(body)
                        }
                        Class::Content => {
                            sink.break_span();
                            *st = HState::Body {
                                kind: Kind::Content,
                                body_off: 0,
                            };
                            Step::Consumed(body)
                        }
                        Class::Raw { counted } => {
                            if counted {
                                sink.failed += 1;
                            }
                            sink.text(&s[..body]);
                            *st = HState::Body {
                                kind: Kind::Raw,
                                body_off: 0,
                            };
                            Step::Consumed(body)
                        }
                        Class::Call(name) => {
                            *call_name = name;
                            *st = HState::Body {
                                kind: Kind::Call,
                                body_off: body,
                            };
                            Step::Again
                        }
                    }
                }
                (_, Some(r)) if m.is_none_or(|m| r < m) => {
                    // Unfinished header interrupted by the next message.
                    sink.text(&s[..r]);
                    *st = HState::Text;
                    Step::Consumed(r)
                }
                (None, None) if !at_end && s.len() < MAX_HEADER + MESSAGE.len() => Step::Wait(0),
                (None, None) if at_end => {
                    sink.text(s);
                    *st = HState::Text;
                    Step::Consumed(s.len())
                }
                _ => {
                    // Header too long: the opener is plain text.
                    sink.text(&s[..tl]);
                    *st = HState::Text;
                    Step::Consumed(tl)
                }
            }
        }
        HState::Body {
            kind: Kind::Call,
            body_off,
        } => {
            let body = &s[body_off..];
            let (b, consumed, term) = match find_tags(body, &TERMINATORS) {
                TagHit::Found(p, t) => {
                    let tlen = if TERMINATORS[t] == START {
                        0
                    } else {
                        TERMINATORS[t].len()
                    };
                    (&body[..p], body_off + p + tlen, Some(TERMINATORS[t]))
                }
                _ if at_end => (body, s.len(), None),
                _ => return Step::Wait(0),
            };
            let args = match parse_value(b) {
                Some(v @ serde_json::Value::Object(_)) => canonical_args(Some(&v)),
                _ if term == Some(CALL) => Some(b.trim().to_owned()),
                _ => None,
            };
            match args {
                Some(arguments) => {
                    sink.converted += 1;
                    sink.call(Call {
                        name: std::mem::take(call_name),
                        arguments,
                    });
                }
                None => {
                    sink.failed += 1;
                    sink.text(&s[..consumed]);
                }
            }
            *st = HState::Text;
            Step::Consumed(consumed)
        }
        HState::Body { kind, .. } => match find_tags(s, &TERMINATORS) {
            TagHit::Found(p, t) => {
                emit_body(kind, &s[..p], sink);
                let tag = TERMINATORS[t];
                let tlen = if tag == START { 0 } else { tag.len() };
                if kind == Kind::Raw {
                    sink.text(&tag[..tlen]);
                }
                end_body(kind, sink);
                *st = HState::Text;
                Step::Consumed(p + tlen)
            }
            TagHit::Partial(p) if !at_end => {
                emit_body(kind, &s[..p], sink);
                Step::Wait(p)
            }
            _ => {
                emit_body(kind, s, sink);
                if at_end {
                    end_body(kind, sink);
                }
                Step::Consumed(s.len())
            }
        },
    }
}
