//! Streaming repair (protocol.md section 4): one [`StreamRepair`] per response,
//! fed every SSE `data:` payload in order.

use super::chunk_scan::{
    decode_into, scan_chunk, surely_valid, surely_valid_string_body, ChoiceInfo,
};
use super::config::{Options, RequestTools};
use super::counters::Counters;
use super::family::Family;
use super::ids::IdGen;
use super::machine::{Cx, Machine};
use super::sink::Out;
use super::{finish_value, report};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What to send for one upstream payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Forward the payload byte-for-byte (the allocation-free hot path).
    PassThrough,
    /// Send these payloads instead (zero or more; each framed as `data: ...\n\n`).
    Replace(Vec<String>),
}

#[derive(Debug)]
struct ChoiceState {
    index: u64,
    machine: Machine,
    /// finish_reason seen (or flushed): forward the rest unchanged.
    done: bool,
    /// Native tool calls seen: forward the rest unchanged (R1 d).
    native: bool,
    reasoning_field: &'static str,
    /// Calls already reported to the counters.
    reported: usize,
    /// Next `tool_calls[].index` for this choice.
    next_tool: usize,
}

/// Streaming transform state for one response.
#[derive(Debug)]
pub struct StreamRepair {
    family: Family,
    tools: RequestTools,
    opts: Options,
    counters: Arc<Counters>,
    choices: Vec<ChoiceState>,
    infos: Vec<ChoiceInfo>,
    scratch: String,
    envelope: Option<Map<String, Value>>,
    ids: IdGen,
    /// The last payload found valid, minus its content string's text, and
    /// where that text was: a payload equal to it outside its content string
    /// is valid when its content string is.
    valid_frame: String,
    valid_split: usize,
    /// Tests: never splice, always build rewritten chunks through `serde_json`.
    #[cfg(test)]
    pub(crate) no_splice: bool,
}

fn state_for(choices: &mut Vec<ChoiceState>, family: Family, index: u64) -> usize {
    if let Some(k) = choices.iter().position(|c| c.index == index) {
        return k;
    }
    choices.push(ChoiceState {
        index,
        machine: Machine::new(family),
        done: false,
        native: false,
        reasoning_field: "reasoning",
        reported: 0,
        next_tool: 0,
    });
    choices.len() - 1
}

/// The allocation-free decision for one choice: true when it can be forwarded as is.
fn try_fast(
    st: &mut ChoiceState,
    info: &ChoiceInfo,
    data: &str,
    scratch: &mut String,
    cx: &Cx<'_>,
) -> bool {
    if let Some(r) = info.reasoning {
        st.reasoning_field = r;
        st.machine.sink.r_any = true;
    }
    if st.done || st.native {
        return true;
    }
    if info.native {
        if st.machine.holds_nothing() && st.machine.sink.calls == 0 && st.machine.pristine() {
            st.native = true;
            return true;
        }
        return false;
    }
    let text: &str = match info.content {
        None => "",
        Some((s, e)) => {
            let Some(raw) = data.get(s..e) else {
                return false;
            };
            if info.content_escaped {
                if decode_into(raw, scratch).is_none() {
                    return false;
                }
                scratch.as_str()
            } else {
                raw
            }
        }
    };
    if info.finish {
        if text.is_empty() && st.machine.pristine() {
            st.done = true;
            return true;
        }
        return false;
    }
    st.machine.fast(text, cx)
}

impl StreamRepair {
    pub fn new(
        family: Family,
        tools: RequestTools,
        opts: Options,
        counters: Arc<Counters>,
    ) -> Self {
        StreamRepair {
            family,
            tools,
            opts,
            counters,
            choices: Vec::new(),
            infos: Vec::new(),
            scratch: String::new(),
            envelope: None,
            ids: IdGen::default(),
            valid_frame: String::new(),
            valid_split: 0,
            #[cfg(test)]
            no_splice: false,
        }
    }

    /// Feeds one payload (the text after `data: `, never `[DONE]`).
    pub fn push(&mut self, data: &str) -> Emit {
        if self.family == Family::None {
            return Emit::PassThrough;
        }
        let has_choices = scan_chunk(data, &mut self.infos).unwrap_or(false);
        if !has_choices || self.infos.is_empty() {
            // usage chunk, in-band error, anything else: flush held text first
            if self
                .choices
                .iter()
                .all(|c| c.done || c.native || c.machine.pristine())
            {
                return Emit::PassThrough;
            }
            let mut out = self.finish();
            out.push(data.to_owned());
            return Emit::Replace(out);
        }
        let cx = Cx {
            family: self.family,
            tools: &self.tools,
            opts: &self.opts,
        };
        let mut all_fast = true;
        for info in self.infos.iter_mut() {
            let k = state_for(&mut self.choices, self.family, info.index);
            let fast = match self.choices.get_mut(k) {
                Some(st) => try_fast(st, info, data, &mut self.scratch, &cx),
                None => true,
            };
            info.fast = fast;
            all_fast &= fast;
        }
        if all_fast {
            return Emit::PassThrough;
        }
        // Common case: one choice, content only changes (held text, partial tags,
        // streamed harmony bodies): splice the new content into the payload.
        if let [info] = self.infos.as_slice() {
            if let (Some((s, e)), false, false) = (info.content, info.native, info.finish) {
                if self.envelope.is_none() {
                    // once per stream: what `finish()` needs to build chunks
                    if let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(data) {
                        m.remove("choices");
                        m.remove("usage");
                        self.envelope = Some(m);
                    }
                }
                let info = *info;
                let k = state_for(&mut self.choices, self.family, info.index);
                let (Some(st), Some(raw)) = (self.choices.get_mut(k), data.get(s..e)) else {
                    return Emit::PassThrough;
                };
                let text = if info.content_escaped {
                    if decode_into(raw, &mut self.scratch).is_none() {
                        return Emit::PassThrough;
                    }
                    self.scratch.as_str()
                } else {
                    raw
                };
                st.machine.feed(text, &cx);
                report(&mut st.machine, &mut st.reported, cx.family, &self.counters);
                let outs = st.machine.take_out();
                #[cfg(test)]
                let splice_ok = !self.no_splice;
                #[cfg(not(test))]
                let splice_ok = true;
                match outs.as_slice() {
                    [] if !info.delta_other => return Emit::Replace(Vec::new()),
                    [Out::Content(c)] if splice_ok => {
                        if let Some(p) = splice(data, s, e, None, c) {
                            return Emit::Replace(vec![p]);
                        }
                    }
                    // Reasoning only (harmony analysis): the `content` member becomes
                    // the reasoning member, which is what `slow` builds, as long as
                    // the delta has nothing else, the choice already has its
                    // `finish_reason` key and the payload is valid JSON.
                    [Out::Reasoning(r)]
                        if splice_ok
                            && !info.delta_other
                            && !info.dup
                            && info.finish_key
                            && valid_cached(
                                data,
                                (s, e),
                                &mut self.valid_frame,
                                &mut self.valid_split,
                            ) =>
                    {
                        let key = (info.content_key, st.reasoning_field);
                        if let Some(p) = splice(data, s, e, Some(key), r) {
                            return Emit::Replace(vec![p]);
                        }
                    }
                    _ => {}
                }
                return self.slow(data, Some(outs));
            }
        }
        self.slow(data, None)
    }

    /// Full path through `serde_json::Value`. `pre`: outputs already computed
    /// for the single choice of this chunk.
    fn slow(&mut self, data: &str, mut pre: Option<Vec<Out>>) -> Emit {
        let parsed = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(mut chunk)) => match chunk.remove("choices") {
                Some(Value::Array(choices)) => Some((chunk, choices)),
                _ => None,
            },
            _ => None,
        };
        let Some((mut chunk, choices)) = parsed else {
            // Unreadable after all: forward it, but never lose text already taken in.
            return match pre.filter(|o| !o.is_empty()) {
                Some(outs) => {
                    let index = self.infos.first().map_or(0, |i| i.index);
                    let mut out = self.synthetic(index, outs, None);
                    out.push(data.to_owned());
                    Emit::Replace(out)
                }
                None => Emit::PassThrough,
            };
        };
        let usage = chunk.remove("usage");
        if self.envelope.is_none() {
            self.envelope = Some(chunk.clone());
        }
        let cx = Cx {
            family: self.family,
            tools: &self.tools,
            opts: &self.opts,
        };
        let mut pieces = Vec::new();
        for (k, choice) in choices.into_iter().enumerate() {
            let fast = self.infos.get(k).is_none_or(|i| i.fast);
            let Value::Object(choice) = choice else {
                continue;
            };
            if fast {
                pieces.push(Value::Object(choice));
                continue;
            }
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let s = state_for(&mut self.choices, self.family, index);
            let Some(st) = self.choices.get_mut(s) else {
                continue;
            };
            slow_choice(
                st,
                choice,
                &cx,
                &self.counters,
                &mut self.ids,
                &mut pieces,
                pre.take(),
            );
        }
        let n = pieces.len();
        let mut out = Vec::with_capacity(n);
        for (i, p) in pieces.into_iter().enumerate() {
            let mut c = chunk.clone();
            c.insert("choices".to_owned(), Value::Array(vec![p]));
            if let Some(u) = &usage {
                if i + 1 == n || u.is_null() {
                    c.insert("usage".to_owned(), u.clone());
                }
            }
            out.extend(serde_json::to_string(&Value::Object(c)).ok());
        }
        Emit::Replace(out)
    }

    /// Chunks for outputs of choice `index` without an upstream chunk to copy.
    fn synthetic(&mut self, index: u64, outs: Vec<Out>, finish: Option<Value>) -> Vec<String> {
        let envelope = self.envelope_or_default();
        let k = state_for(&mut self.choices, self.family, index);
        let Some(st) = self.choices.get_mut(k) else {
            return Vec::new();
        };
        let mut base = Map::new();
        base.insert("index".to_owned(), Value::from(index));
        base.insert("delta".to_owned(), Value::Object(Map::new()));
        let mut pieces = Vec::new();
        build_pieces(st, base, outs, finish, &mut self.ids, &mut pieces);
        wrap(&envelope, pieces)
    }

    fn envelope_or_default(&self) -> Map<String, Value> {
        self.envelope.clone().unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("object".to_owned(), Value::from("chat.completion.chunk"));
            m
        })
    }

    /// Upstream ended (`[DONE]` or EOF): decide everything still held.
    pub fn finish(&mut self) -> Vec<String> {
        if self.family == Family::None {
            return Vec::new();
        }
        let cx = Cx {
            family: self.family,
            tools: &self.tools,
            opts: &self.opts,
        };
        let envelope = self.envelope_or_default();
        let mut out = Vec::new();
        for st in self.choices.iter_mut() {
            if st.done || st.native {
                continue;
            }
            st.done = true;
            if st.machine.pristine() {
                continue;
            }
            st.machine.finish(&cx);
            report(&mut st.machine, &mut st.reported, cx.family, &self.counters);
            let outs = st.machine.take_out();
            let finish = if st.machine.sink.calls > 0 {
                finish_value(None, st.machine.sink.calls, cx.tools)
            } else {
                None
            };
            let mut base = Map::new();
            base.insert("index".to_owned(), Value::from(st.index));
            base.insert("delta".to_owned(), Value::Object(Map::new()));
            let mut pieces = Vec::new();
            build_pieces(
                st,
                base,
                outs,
                finish.map(Value::String),
                &mut self.ids,
                &mut pieces,
            );
            out.extend(wrap(&envelope, pieces));
        }
        out
    }
}

/// `data` with the JSON string whose raw text is `data[s..e]` replaced by
/// `text` (escaped exactly as `serde_json` does); with `key = Some((k, name))`
/// the whole member from the key's opening quote at `k` becomes `"name":"text"`.
fn splice(
    data: &str,
    s: usize,
    e: usize,
    key: Option<(usize, &str)>,
    text: &str,
) -> Option<String> {
    let (head, tail) = match key {
        None => (data.get(..s)?, data.get(e..)?),
        Some((k, _)) => (data.get(..k)?, data.get(e.checked_add(1)?..)?),
    };
    let name_len = key.map_or(0, |(_, n)| n.len() + 4);
    let mut out = String::with_capacity(head.len() + name_len + text.len() + 8 + tail.len());
    out.push_str(head);
    if let Some((_, name)) = key {
        out.push('"');
        out.push_str(name);
        out.push_str("\":\"");
    }
    escape_into(text, &mut out);
    if key.is_some() {
        out.push('"');
    }
    out.push_str(tail);
    Some(out)
}

/// Appends the JSON-escaped form of `s` (without quotes), byte-for-byte what
/// `serde_json` writes: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
/// control characters as `\u00xx`, everything else verbatim.
pub(crate) fn escape_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on char boundaries
        out.push_str(s.get(start..i).unwrap_or_default());
        start = i + 1;
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 0xf)]));
        } else {
            out.push_str(esc);
        }
    }
    out.push_str(s.get(start..).unwrap_or_default());
}

/// `valid_json(data)`, where `data[s..e]` is the raw text of a string, using
/// (and updating) the frame of the last valid payload.
fn valid_cached(data: &str, (s, e): (usize, usize), frame: &mut String, split: &mut usize) -> bool {
    let (Some(head), Some(body), Some(tail)) = (data.get(..s), data.get(s..e), data.get(e..))
    else {
        return valid_json(data);
    };
    if !surely_valid_string_body(body) {
        return valid_json(data);
    }
    if frame.get(..*split) == Some(head) && frame.get(*split..) == Some(tail) {
        return true;
    }
    if !valid_json(data) {
        return false;
    }
    frame.clear();
    frame.push_str(head);
    frame.push_str(tail);
    *split = head.len();
    true
}

/// Whether `slow` could parse `data` (usually decided without building a value).
fn valid_json(data: &str) -> bool {
    surely_valid(data) || serde_json::from_str::<Value>(data).is_ok()
}

fn wrap(envelope: &Map<String, Value>, pieces: Vec<Value>) -> Vec<String> {
    pieces
        .into_iter()
        .filter_map(|p| {
            let mut c = envelope.clone();
            c.insert("choices".to_owned(), Value::Array(vec![p]));
            serde_json::to_string(&Value::Object(c)).ok()
        })
        .collect()
}

fn slow_choice(
    st: &mut ChoiceState,
    mut choice: Map<String, Value>,
    cx: &Cx<'_>,
    counters: &Counters,
    ids: &mut IdGen,
    pieces: &mut Vec<Value>,
    pre: Option<Vec<Out>>,
) {
    let delta = choice.get("delta").and_then(Value::as_object);
    let native = delta.is_some_and(super::nonstream::has_native);
    if native {
        st.machine.abandon();
        report(&mut st.machine, &mut st.reported, cx.family, counters);
        let outs = st.machine.take_out();
        let mut base = Map::new();
        base.insert("index".to_owned(), Value::from(st.index));
        base.insert("delta".to_owned(), Value::Object(Map::new()));
        build_pieces(st, base, outs, None, ids, pieces);
        st.native = true;
        pieces.push(Value::Object(choice));
        return;
    }
    let content = delta
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let upstream_finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let outs = match pre {
        Some(outs) => outs,
        None => {
            st.machine.feed(&content, cx);
            if upstream_finish.is_some() {
                st.machine.finish(cx);
                st.done = true;
            }
            report(&mut st.machine, &mut st.reported, cx.family, counters);
            st.machine.take_out()
        }
    };
    let finish = upstream_finish.map(|f| {
        Value::String(finish_value(Some(&f), st.machine.sink.calls, cx.tools).unwrap_or(f))
    });
    if let Some(Value::Object(d)) = choice.get_mut("delta") {
        d.remove("content");
    }
    build_pieces(st, choice, outs, finish, ids, pieces);
}

fn out_deltas(st: &mut ChoiceState, o: Out, ids: &mut IdGen) -> Vec<Map<String, Value>> {
    let one = |k: &str, v: String| {
        let mut m = Map::new();
        m.insert(k.to_owned(), Value::String(v));
        m
    };
    match o {
        Out::Content(s) => vec![one("content", s)],
        Out::Reasoning(s) => vec![one(st.reasoning_field, s)],
        Out::Call(c) => {
            let index = st.next_tool;
            st.next_tool += 1;
            let first = json!({"tool_calls": [{"index": index, "id": ids.next(), "type": "function",
                                "function": {"name": c.name, "arguments": ""}}]});
            let rest =
                json!({"tool_calls": [{"index": index, "function": {"arguments": c.arguments}}]});
            [first, rest]
                .into_iter()
                .filter_map(|v| v.as_object().cloned())
                .collect()
        }
    }
}

/// Turns a choice's outputs into choice objects (one per emitted chunk). The
/// first keeps the upstream choice's other fields; the last carries `finish`.
fn build_pieces(
    st: &mut ChoiceState,
    mut base: Map<String, Value>,
    outs: Vec<Out>,
    finish: Option<Value>,
    ids: &mut IdGen,
    pieces: &mut Vec<Value>,
) {
    let mut cur = match base.get_mut("delta") {
        Some(Value::Object(d)) => std::mem::take(d),
        _ => Map::new(),
    };
    let mut deltas = Vec::new();
    for o in outs {
        for d in out_deltas(st, o, ids) {
            let clash = cur.contains_key("tool_calls")
                || d.contains_key("tool_calls")
                || d.keys().any(|k| cur.contains_key(k));
            if clash {
                let prev = std::mem::replace(&mut cur, d);
                if !prev.is_empty() {
                    deltas.push(prev);
                }
            } else {
                cur.extend(d);
            }
        }
    }
    if !cur.is_empty() {
        deltas.push(cur);
    }
    if deltas.is_empty() {
        if finish.is_none() {
            return; // everything held
        }
        deltas.push(Map::new());
    }
    let stop_reason = base.remove("stop_reason");
    let has_logprobs = base.contains_key("logprobs");
    let n = deltas.len();
    for (i, d) in deltas.into_iter().enumerate() {
        let mut p = if i == 0 {
            base.clone()
        } else {
            let mut m = Map::new();
            m.insert("index".to_owned(), Value::from(st.index));
            m.insert("delta".to_owned(), Value::Null);
            if has_logprobs {
                m.insert("logprobs".to_owned(), Value::Null);
            }
            m
        };
        p.insert("delta".to_owned(), Value::Object(d));
        let last = i + 1 == n;
        let fin = if last {
            finish.clone().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        p.insert("finish_reason".to_owned(), fin);
        if last {
            if let Some(sr) = &stop_reason {
                p.insert("stop_reason".to_owned(), sr.clone());
            }
        }
        pieces.push(Value::Object(p));
    }
}
