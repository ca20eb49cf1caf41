//! The per-choice content state machine shared by the non-streaming and the
//! streaming paths: it consumes `content` text in pieces of any size and
//! produces [`Out`] items; the result never depends on where the text was split.

use super::calls::Call;
use super::config::{Options, RequestTools};
use super::family::Family;
use super::harmony::{self, HState};
use super::json_scan::JsonCache;
use super::sink::{Out, Sink};
use super::{gptoss, hermes, llama3, mistral, pythonic};

/// Request/deployment context for one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cx<'a> {
    pub family: Family,
    pub tools: &'a RequestTools,
    pub opts: &'a Options,
}

/// A candidate parser's verdict on the held text starting at the candidate.
#[derive(Debug)]
pub(crate) enum Cand {
    /// Could still become a call: hold.
    Pending,
    /// Not a candidate after all: the first n bytes are plain text.
    NotACandidate(usize),
    /// A candidate that failed (counted as left as text): the first n bytes are text.
    Fail(usize),
    /// The first n bytes are these calls.
    Convert(usize, Vec<Call>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    BareJson,
    Fence,
    Stripped,
    Hermes,
    MistralStart,
    MistralMarker,
    Llama { after_call: bool },
    Pythonic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only whitespace seen so far.
    Start,
    /// Looking for tags anywhere (hermes, mistral, gptoss).
    Scan,
    /// Inside `<think>` (hermes, mistral).
    Think,
    /// Nothing can become a call any more.
    Plain,
    /// After a converted Llama 3 call: `;` may start another.
    AfterLlamaCall,
    Cand(Kind),
    Harmony(HState),
}

/// Result of one step of the machine.
pub(crate) enum Step {
    /// n bytes consumed; continue.
    Consumed(usize),
    /// n bytes consumed; the rest must wait for more text.
    Wait(usize),
    /// State changed without consuming; continue.
    Again,
}

/// Outcome of looking for tags in a text.
pub(crate) enum TagHit {
    /// Tag `i` starts at this byte offset.
    Found(usize, usize),
    /// A proper prefix of some tag runs from this offset to the end.
    Partial(usize),
    None,
}

/// First tag occurrence or trailing partial tag. Tags must start with an ASCII byte.
pub(crate) fn find_tags(s: &str, tags: &[&str]) -> TagHit {
    let b = s.as_bytes();
    let mut p = 0;
    while p < b.len() {
        let c = b[p];
        if tags.iter().any(|t| t.as_bytes().first() == Some(&c)) {
            let rest = &s[p..];
            for (i, t) in tags.iter().enumerate() {
                if rest.starts_with(t) {
                    return TagHit::Found(p, i);
                }
            }
            if tags.iter().any(|t| t.starts_with(rest)) {
                return TagHit::Partial(p);
            }
        }
        p += 1;
    }
    TagHit::None
}

/// Index of the first non-whitespace byte at or after `i` (JSON whitespace).
pub(crate) fn skip_ws(s: &str, i: usize) -> usize {
    let b = s.as_bytes();
    let mut i = i;
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i.min(s.len())
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

fn ends_with_ws(s: &str) -> bool {
    s.chars().next_back().is_some_and(char::is_whitespace)
}

fn scan_trigger(family: Family, c: u8) -> bool {
    match family {
        Family::Mistral => c == b'[' || c == b'<',
        Family::Hermes | Family::GptOss => c == b'<',
        _ => false,
    }
}

/// The transform state of one choice.
#[derive(Debug)]
pub(crate) struct Machine {
    buf: String,
    mode: Mode,
    call_name: String,
    /// Resumable JSON scan of the open candidate's body.
    jc: JsonCache,
    pub sink: Sink,
}

impl Machine {
    pub fn new(family: Family) -> Self {
        Machine {
            buf: String::new(),
            mode: if family == Family::None {
                Mode::Plain
            } else {
                Mode::Start
            },
            call_name: String::new(),
            jc: JsonCache::default(),
            sink: Sink::default(),
        }
    }

    /// Nothing held, nothing changed: finishing now would produce no output.
    pub fn pristine(&self) -> bool {
        self.buf.is_empty()
            && self.sink.idle()
            && !self.sink.normalized
            && self.sink.out.is_empty()
            && matches!(
                self.mode,
                Mode::Start | Mode::Scan | Mode::Think | Mode::Plain
            )
    }

    /// True when no text is held on the input side.
    pub fn holds_nothing(&self) -> bool {
        self.buf.is_empty() && self.sink.pending_ws.is_empty()
    }

    /// The mode to take at the first non-whitespace byte `c` of the content.
    fn start_mode(&self, s: &str, cx: &Cx<'_>) -> Option<Mode> {
        let c = *s.as_bytes().first()?;
        let bare = !cx.tools.structured;
        Some(match cx.family {
            Family::GptOss => {
                if bare && (c == b'{' || c == b'[') {
                    Mode::Cand(Kind::BareJson)
                } else if bare && cx.opts.accept_code_fence && c == b'`' {
                    Mode::Cand(Kind::Fence)
                } else if cx.opts.harmony_stripped_recovery
                    && gptoss::STRIPPED_KEYWORDS
                        .iter()
                        .any(|k| s.starts_with(k) || k.starts_with(s))
                {
                    Mode::Cand(Kind::Stripped)
                } else {
                    Mode::Scan
                }
            }
            Family::Hermes => Mode::Scan,
            Family::Mistral => {
                if c == b'[' {
                    Mode::Cand(Kind::MistralStart)
                } else {
                    Mode::Scan
                }
            }
            Family::Llama3Json => {
                if c == b'<' || (bare && (c == b'{' || c == b'[')) {
                    Mode::Cand(Kind::Llama { after_call: false })
                } else {
                    Mode::Plain
                }
            }
            Family::Pythonic => {
                if c == b'<' || (bare && c == b'[') {
                    Mode::Cand(Kind::Pythonic)
                } else {
                    Mode::Plain
                }
            }
            Family::None => Mode::Plain,
        })
    }

    /// Hot path: if `text` would be emitted unchanged with nothing held, update
    /// the state (without allocating) and return true; otherwise change nothing.
    pub fn fast(&mut self, text: &str, cx: &Cx<'_>) -> bool {
        if !self.holds_nothing() {
            return false;
        }
        if text.is_empty() {
            return true;
        }
        let (mode, rest) = match self.mode {
            Mode::Start => {
                let t = text.trim_start();
                if t.is_empty() {
                    return false;
                }
                match self.start_mode(t, cx) {
                    Some(m @ (Mode::Scan | Mode::Plain)) => (m, t),
                    _ => return false,
                }
            }
            m @ (Mode::Scan | Mode::Plain | Mode::Think) => (m, text),
            _ => return false,
        };
        let ok = match mode {
            Mode::Plain => !(self.sink.normalized && ends_with_ws(rest)),
            Mode::Scan => !rest.bytes().any(|c| scan_trigger(cx.family, c)) && !ends_with_ws(rest),
            Mode::Think => !rest.bytes().any(|c| c == b'<') && !ends_with_ws(rest),
            _ => false,
        };
        if ok {
            self.mode = mode;
            self.sink.note_verbatim(text);
        }
        ok
    }

    pub fn feed(&mut self, text: &str, cx: &Cx<'_>) {
        self.buf.push_str(text);
        self.run(cx, false);
    }

    /// End of output: decide everything still held.
    pub fn finish(&mut self, cx: &Cx<'_>) {
        self.run(cx, true);
        self.sink.end();
    }

    /// Give up (native tool calls appeared): everything held becomes plain text.
    pub fn abandon(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.sink.text(&buf);
        self.mode = Mode::Plain;
        self.sink.end();
    }

    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.sink.out)
    }

    fn run(&mut self, cx: &Cx<'_>, at_end: bool) {
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        while pos < buf.len() {
            let before = self.mode;
            let (n, stop) = match self.step(&buf[pos..], at_end, cx) {
                Step::Consumed(n) => (n, false),
                Step::Again => (0, false),
                Step::Wait(n) => (n, !at_end),
            };
            pos += n;
            if n > 0 || self.mode != before {
                self.jc.reset();
            }
            if stop {
                break;
            }
            if n == 0 && self.mode == before {
                // Defensive: never loop without progress; take one char as text.
                let rest = &buf[pos..];
                let k = rest.chars().next().map_or(rest.len(), char::len_utf8);
                self.sink.text(&rest[..k]);
                pos += k;
            }
        }
        self.buf = buf;
        self.buf.drain(..pos.min(self.buf.len()));
    }

    fn step(&mut self, s: &str, at_end: bool, cx: &Cx<'_>) -> Step {
        match self.mode {
            Mode::Start | Mode::AfterLlamaCall => {
                let t = s.trim_start();
                let ws = s.len() - t.len();
                if ws > 0 {
                    self.sink.text(&s[..ws]);
                    return Step::Consumed(ws);
                }
                if self.mode == Mode::AfterLlamaCall {
                    self.mode = if s.starts_with(';') {
                        Mode::Cand(Kind::Llama { after_call: true })
                    } else {
                        Mode::Plain
                    };
                    return Step::Again;
                }
                match self.start_mode(s, cx) {
                    Some(m) => {
                        self.mode = m;
                        Step::Again
                    }
                    None => Step::Wait(0),
                }
            }
            Mode::Plain => {
                self.sink.text(s);
                Step::Consumed(s.len())
            }
            Mode::Scan => {
                let tags: &[&str] = match cx.family {
                    Family::Hermes => &[hermes::OPEN, THINK_OPEN],
                    Family::Mistral => &[mistral::MARKER, THINK_OPEN],
                    Family::GptOss => &harmony::OPENERS,
                    _ => &[],
                };
                match find_tags(s, tags) {
                    TagHit::Found(p, i) => {
                        self.sink.text(&s[..p]);
                        let tag = tags.get(i).copied().unwrap_or_default();
                        if tag == THINK_OPEN {
                            self.sink.text(tag);
                            self.mode = Mode::Think;
                            return Step::Consumed(p + tag.len());
                        }
                        self.mode = match cx.family {
                            Family::Hermes => Mode::Cand(Kind::Hermes),
                            Family::Mistral => Mode::Cand(Kind::MistralMarker),
                            _ => {
                                self.sink.sep = "\n";
                                Mode::Harmony(HState::Text)
                            }
                        };
                        Step::Consumed(p)
                    }
                    TagHit::Partial(p) if !at_end => {
                        self.sink.text(&s[..p]);
                        Step::Wait(p)
                    }
                    _ => {
                        self.sink.text(s);
                        Step::Consumed(s.len())
                    }
                }
            }
            Mode::Think => match find_tags(s, &[THINK_CLOSE]) {
                TagHit::Found(p, _) => {
                    let end = p + THINK_CLOSE.len();
                    self.sink.text(&s[..end]);
                    self.mode = Mode::Scan;
                    Step::Consumed(end)
                }
                TagHit::Partial(p) if !at_end => {
                    self.sink.text(&s[..p]);
                    Step::Wait(p)
                }
                _ => {
                    self.sink.text(s);
                    Step::Consumed(s.len())
                }
            },
            Mode::Harmony(mut h) => {
                let r = harmony::step(&mut h, &mut self.call_name, s, at_end, cx, &mut self.sink);
                self.mode = Mode::Harmony(h);
                r
            }
            Mode::Cand(kind) => {
                let verdict = match kind {
                    Kind::BareJson => gptoss::bare_json(s, at_end, cx, &mut self.jc),
                    Kind::Fence => gptoss::fence(s, at_end, cx, &mut self.jc),
                    Kind::Stripped => gptoss::stripped(s, at_end, cx),
                    Kind::Hermes => hermes::candidate(s, at_end, cx, &mut self.jc),
                    Kind::MistralStart => mistral::candidate(s, true, at_end, cx, &mut self.jc),
                    Kind::MistralMarker => mistral::candidate(s, false, at_end, cx, &mut self.jc),
                    Kind::Llama { after_call } => {
                        llama3::candidate(s, after_call, at_end, cx, &mut self.jc)
                    }
                    Kind::Pythonic => pythonic_candidate(s, at_end, cx),
                };
                let after_text = match cx.family {
                    Family::Llama3Json | Family::Pythonic => Mode::Plain,
                    _ => Mode::Scan,
                };
                match verdict {
                    Cand::Pending if !at_end => Step::Wait(0),
                    Cand::Pending => {
                        self.sink.text(s);
                        self.mode = after_text;
                        Step::Consumed(s.len())
                    }
                    Cand::NotACandidate(n) | Cand::Fail(n) => {
                        if matches!(verdict, Cand::Fail(_)) {
                            self.sink.failed += 1;
                        }
                        let n = n.min(s.len());
                        self.sink.text(&s[..n]);
                        self.mode = after_text;
                        Step::Consumed(n)
                    }
                    Cand::Convert(n, calls) => {
                        self.sink.converted += 1;
                        for c in calls {
                            self.sink.call(c);
                        }
                        self.mode = match kind {
                            Kind::Llama { .. } => Mode::AfterLlamaCall,
                            Kind::Stripped | Kind::Pythonic => Mode::Plain,
                            _ => after_text,
                        };
                        Step::Consumed(n.min(s.len()))
                    }
                }
            }
        }
    }
}

fn pythonic_candidate(s: &str, at_end: bool, cx: &Cx<'_>) -> Cand {
    let tagged = s.starts_with(pythonic::PY_START);
    if cx.tools.structured && !tagged {
        // R9: only the tagged form.
        return if pythonic::PY_START.starts_with(s) && !at_end {
            Cand::Pending
        } else {
            Cand::NotACandidate(0)
        };
    }
    match pythonic::parse_call_list(s, cx.tools) {
        Ok(calls) if at_end => Cand::Convert(s.len(), calls),
        Ok(_) => Cand::Pending,
        Err(pythonic::PyErr::Incomplete) if !at_end => Cand::Pending,
        Err(pythonic::PyErr::Incomplete) => Cand::Fail(s.len()),
        Err(pythonic::PyErr::Invalid) => {
            if tagged {
                Cand::Fail(s.len())
            } else {
                Cand::NotACandidate(s.len())
            }
        }
    }
}
