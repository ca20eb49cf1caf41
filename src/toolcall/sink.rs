//! Output side of a choice's transform: applies R6 (text spans right-trimmed
//! around converted calls, byte-for-byte when nothing converted) and R13 (harmony
//! parts right-trimmed and joined with "\n") incrementally, holding only trailing
//! whitespace that a later call could trim away.

use super::calls::Call;

/// What a choice's transform produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    Content(String),
    Reasoning(String),
    Call(Call),
}

#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub out: Vec<Out>,
    /// Trailing whitespace of the current text span, not yet emitted.
    pub pending_ws: String,
    /// The next non-whitespace text starts a new part (separator needed).
    fresh: bool,
    /// Some non-empty content has been emitted (or passed through).
    any_content: bool,
    /// A call converted or a harmony part was interpreted: trailing whitespace is trimmed.
    pub normalized: bool,
    /// Separator between parts: "" for R6, "\n" for R13 (harmony).
    pub sep: &'static str,
    r_pending: String,
    r_fresh: bool,
    /// Reasoning exists already (upstream or emitted): new parts are joined with "\n".
    pub r_any: bool,
    /// Calls emitted so far in this choice.
    pub calls: usize,
    /// Candidates converted / left as text, not yet reported to `Counters`.
    pub converted: u64,
    pub failed: u64,
}

fn push_merge(out: &mut Vec<Out>, s: String, reasoning: bool) {
    match (out.last_mut(), reasoning) {
        (Some(Out::Content(prev)), false) | (Some(Out::Reasoning(prev)), true) => prev.push_str(&s),
        _ => out.push(if reasoning {
            Out::Reasoning(s)
        } else {
            Out::Content(s)
        }),
    }
}

impl Sink {
    /// Content text that belongs to the current span (plain text, failed candidates, raw markup).
    pub fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let trimmed = s.trim_end();
        if trimmed.is_empty() {
            self.pending_ws.push_str(s);
            return;
        }
        let mut o = String::with_capacity(self.pending_ws.len() + s.len() + 1);
        if self.fresh && self.any_content {
            o.push_str(self.sep);
        }
        o.push_str(&self.pending_ws);
        o.push_str(trimmed);
        self.pending_ws.clear();
        self.pending_ws.push_str(&s[trimmed.len()..]);
        self.fresh = false;
        self.any_content = true;
        push_merge(&mut self.out, o, false);
    }

    /// Text that was forwarded verbatim by the fast path (no pending whitespace).
    pub fn note_verbatim(&mut self, s: &str) {
        if !s.is_empty() {
            self.fresh = false;
            self.any_content = true;
        }
    }

    /// A span/part boundary that trims the text before it (only after a conversion).
    pub fn break_span(&mut self) {
        self.pending_ws.clear();
        self.fresh = true;
        self.normalized = true;
    }

    pub fn call(&mut self, c: Call) {
        self.break_span();
        self.calls += 1;
        self.out.push(Out::Call(c));
    }

    pub fn r_begin(&mut self) {
        self.r_pending.clear();
        self.r_fresh = true;
        self.normalized = true;
    }

    pub fn r_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let trimmed = s.trim_end();
        if trimmed.is_empty() {
            self.r_pending.push_str(s);
            return;
        }
        let mut o = String::with_capacity(self.r_pending.len() + s.len() + 1);
        if self.r_fresh && self.r_any {
            o.push('\n');
        }
        o.push_str(&self.r_pending);
        o.push_str(trimmed);
        self.r_pending.clear();
        self.r_pending.push_str(&s[trimmed.len()..]);
        self.r_fresh = false;
        self.r_any = true;
        push_merge(&mut self.out, o, true);
    }

    pub fn r_end(&mut self) {
        self.r_pending.clear();
        self.r_fresh = true;
    }

    /// End of output: trailing whitespace is kept only when nothing was normalized (R6).
    pub fn end(&mut self) {
        if self.normalized {
            self.pending_ws.clear();
        } else if !self.pending_ws.is_empty() {
            let ws = std::mem::take(&mut self.pending_ws);
            push_merge(&mut self.out, ws, false);
        }
        self.r_pending.clear();
    }

    /// True when nothing is held on the output side.
    pub fn idle(&self) -> bool {
        self.pending_ws.is_empty() && self.r_pending.is_empty()
    }
}
