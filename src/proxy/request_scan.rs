//! Reading the few fields the gateway needs from a request body, and rewriting it, without
//! building the document.
//!
//! The workspace's `serde_json` has `arbitrary_precision` and `preserve_order`, so a
//! `serde_json::Value` stores every number as a heap string: a 10 MB body of zeros would
//! cost hundreds of MB. Here the body is scanned once: the fields the gateway reads are
//! borrowed as raw slices (`&RawValue`), everything else is skipped with `IgnoredAny`, which
//! allocates nothing. Rewrites (the served model name, `stream_options.include_usage`) are
//! byte splices into a copy of the body; an unchanged body is returned as the same `Bytes`.
//!
//! Rules, so that the gateway and the server never read different requests:
//! - the body is UTF-8 JSON whose top level is an object, nested at most [`MAX_DEPTH`] deep;
//! - the keys read here (see [`READ_KEYS`]) appear at most once (JSON parsers disagree on
//!   which duplicate wins), and so does `include_usage` in `stream_options`;
//! - keys are compared after unescaping (`"mod\u0065l"` is `model`).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// Deepest nesting accepted: `serde_json`'s own recursion limit, so every body a
/// `serde_json::Value` parse accepts is accepted here too.
pub const MAX_DEPTH: usize = 127;

/// Top-level keys the gateway reads (and so refuses twice).
pub const READ_KEYS: [&str; 9] = [
    "model",
    "stream",
    "stream_options",
    "messages",
    "tools",
    "tool_choice",
    "response_format",
    "structured_outputs",
    "guided_json",
];
const MODEL: usize = 0;
const STREAM: usize = 1;
const STREAM_OPTIONS: usize = 2;
const MESSAGES: usize = 3;
/// `READ_KEYS[TOOLS..]`: the fields tool-call repair reads.
const TOOLS: usize = 4;
const OPTION_KEYS: [&str; 1] = ["include_usage"];

/// JSON's whitespace (narrower than Unicode's).
const JSON_WS: [char; 4] = [' ', '\t', '\n', '\r'];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// Not JSON; the parser's message (short, no body content beyond a position).
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the top level is not an object")]
    NotAnObject,
    /// A key read by the gateway appears twice (dotted path).
    #[error("duplicate key `{0}`")]
    Duplicate(&'static str),
    /// A field the gateway reads is missing or has the wrong type.
    #[error("invalid `{}`", .0.name())]
    Invalid(Field),
}

/// The fields whose values the gateway checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A non-empty string.
    Model,
    /// An array (chat).
    Messages,
    /// A boolean or null.
    Stream,
    /// An object or null.
    StreamOptions,
}

impl Field {
    /// The field's key, also the `param` of the client's error.
    pub fn name(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Messages => "messages",
            Field::Stream => "stream",
            Field::StreamOptions => "stream_options",
        }
    }
}

impl ScanError {
    fn json(e: &serde_json::Error) -> Self {
        ScanError::Json(e.to_string().chars().take(200).collect())
    }
}

/// `stream_options` as the client sent it.
#[derive(Debug, Clone, Copy)]
enum StreamOptions<'a> {
    Absent,
    Null(&'a RawValue),
    Object {
        raw: &'a RawValue,
        include_usage: Option<&'a RawValue>,
        empty: bool,
    },
}

/// What the gateway read from one body; borrows it.
#[derive(Debug)]
pub struct Scan<'a> {
    body: &'a Bytes,
    text: &'a str,
    model_raw: &'a RawValue,
    model: String,
    stream: bool,
    options: StreamOptions<'a>,
    tool_raw: [Option<&'a RawValue>; READ_KEYS.len() - TOOLS],
}

/// Changes [`Scan::rewrite`] makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite<'s> {
    /// Replace `model` with this name.
    pub model: Option<&'s str>,
    /// Make `stream_options.include_usage` true.
    pub include_usage: bool,
}

/// Check `body` and read the fields the gateway needs. `messages_required`: chat requests
/// must carry a `messages` array.
pub fn scan(body: &Bytes, messages_required: bool) -> Result<Scan<'_>, ScanError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ScanError::Json(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    check_depth(text.as_bytes())?;
    if !text.trim_start_matches(JSON_WS).starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => ScanError::NotAnObject,
            Err(e) => ScanError::json(&e),
        });
    }
    let top = object(text, &READ_KEYS)?;
    if let Some(k) = top.duplicate {
        return Err(ScanError::Duplicate(k));
    }
    // Checked in this order so the first problem reported stays what it always was.
    let model_raw = top.raw[MODEL].ok_or(ScanError::Invalid(Field::Model))?;
    if !model_raw.get().starts_with('"') {
        return Err(ScanError::Invalid(Field::Model));
    }
    let model: String = serde_json::from_str(model_raw.get()).map_err(|e| ScanError::json(&e))?;
    if model.trim().is_empty() {
        return Err(ScanError::Invalid(Field::Model));
    }
    if messages_required && !top.raw[MESSAGES].is_some_and(|m| m.get().starts_with('[')) {
        return Err(ScanError::Invalid(Field::Messages));
    }
    let stream = match top.raw[STREAM].map(RawValue::get) {
        None | Some("null" | "false") => false,
        Some("true") => true,
        Some(_) => return Err(ScanError::Invalid(Field::Stream)),
    };
    let options = match top.raw[STREAM_OPTIONS] {
        None => StreamOptions::Absent,
        Some(raw) if raw.get() == "null" => StreamOptions::Null(raw),
        Some(raw) if raw.get().starts_with('{') => {
            let inner = object(raw.get(), &OPTION_KEYS)?;
            if inner.duplicate.is_some() {
                return Err(ScanError::Duplicate("stream_options.include_usage"));
            }
            StreamOptions::Object {
                raw,
                include_usage: inner.raw[0],
                empty: inner.members == 0,
            }
        }
        Some(_) => return Err(ScanError::Invalid(Field::StreamOptions)),
    };
    let mut tool_raw = [None; READ_KEYS.len() - TOOLS];
    tool_raw.copy_from_slice(&top.raw[TOOLS..]);
    Ok(Scan {
        body,
        text,
        model_raw,
        model,
        stream,
        options,
        tool_raw,
    })
}

impl Scan<'_> {
    /// `model`, unescaped (non-empty).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// `stream` (absent or null: false).
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The client asked for the usage chunk: `stream_options.include_usage` is `true`.
    pub fn include_usage(&self) -> bool {
        matches!(
            self.options,
            StreamOptions::Object {
                include_usage: Some(v),
                ..
            } if v.get() == "true"
        )
    }

    /// The fields tool-call repair reads (`tools`, `tool_choice`, `response_format`,
    /// `structured_outputs`, `guided_json`) as one object, when `tools` is present. Built
    /// from their raw text only.
    pub fn tool_fields(&self) -> Result<Option<Value>, ScanError> {
        if self.tool_raw[0].is_none() {
            return Ok(None);
        }
        let mut m = serde_json::Map::new();
        for (key, raw) in READ_KEYS[TOOLS..].iter().zip(self.tool_raw) {
            if let Some(raw) = raw {
                let v = serde_json::from_str(raw.get()).map_err(|e| ScanError::json(&e))?;
                m.insert((*key).to_owned(), v);
            }
        }
        Ok(Some(Value::Object(m)))
    }

    /// The body with `rw` applied: spliced into one new buffer, or the same `Bytes` when
    /// nothing changes.
    pub fn rewrite(&self, rw: &Rewrite<'_>) -> Bytes {
        let mut edits: Vec<(usize, usize, Cow<'static, str>)> = Vec::new();
        if let Some(m) = rw.model.filter(|m| *m != self.model) {
            let (start, end) = self.span(self.model_raw.get());
            edits.push((start, end, Cow::Owned(Value::from(m).to_string())));
        }
        if rw.include_usage {
            match self.options {
                StreamOptions::Absent => {
                    // Last member, as a `Value` insert would place it; the top level is an
                    // object with at least `model`, so the comma is right.
                    let close = self.text.trim_end_matches(JSON_WS).len() - 1;
                    edits.push((
                        close,
                        close,
                        Cow::Borrowed(r#","stream_options":{"include_usage":true}"#),
                    ));
                }
                StreamOptions::Null(raw) => {
                    let (start, end) = self.span(raw.get());
                    edits.push((start, end, Cow::Borrowed(r#"{"include_usage":true}"#)));
                }
                StreamOptions::Object {
                    include_usage: Some(v),
                    ..
                } => {
                    if v.get() != "true" {
                        let (start, end) = self.span(v.get());
                        edits.push((start, end, Cow::Borrowed("true")));
                    }
                }
                StreamOptions::Object {
                    raw,
                    include_usage: None,
                    empty,
                } => {
                    let close = self.span(raw.get()).1 - 1;
                    let member = if empty {
                        r#""include_usage":true"#
                    } else {
                        r#","include_usage":true"#
                    };
                    edits.push((close, close, Cow::Borrowed(member)));
                }
            }
        }
        if edits.is_empty() {
            return self.body.clone();
        }
        edits.sort_by_key(|e| e.0);
        let added: usize = edits.iter().map(|e| e.2.len()).sum();
        let mut out = Vec::with_capacity(self.text.len() + added);
        let mut at = 0;
        for (start, end, text) in &edits {
            out.extend_from_slice(&self.text.as_bytes()[at..*start]);
            out.extend_from_slice(text.as_bytes());
            at = *end;
        }
        out.extend_from_slice(&self.text.as_bytes()[at..]);
        Bytes::from(out)
    }

    /// Where `part` (a slice borrowed from the body by the parser) lies in the body.
    fn span(&self, part: &str) -> (usize, usize) {
        let start = (part.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        debug_assert!(
            start + part.len() <= self.text.len(),
            "not a slice of the body"
        );
        (start, start + part.len())
    }
}

/// Fail on nesting deeper than [`MAX_DEPTH`] before any parser recurses (`IgnoredAny` and
/// `RawValue` do not count depth). Only brackets outside strings count; malformed input is
/// left to the parser.
fn check_depth(bytes: &[u8]) -> Result<(), ScanError> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => loop {
                let Some(rest) = bytes.get(i + 1..) else {
                    return Ok(());
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    // Skip the escaped character too.
                    Some(j) if rest[j] == b'\\' => i += j + 2,
                    Some(j) => {
                        i += j + 1;
                        break;
                    }
                    None => return Ok(()),
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The members of an object whose keys are among `keys`, as raw text.
struct Members<'a, const N: usize> {
    raw: [Option<&'a RawValue>; N],
    members: usize,
    duplicate: Option<&'static str>,
}

/// Parse `text` as one object (and nothing after it), reading only `keys`.
fn object<'a, const N: usize>(
    text: &'a str,
    keys: &'static [&'static str; N],
) -> Result<Members<'a, N>, ScanError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = (&mut de)
        .deserialize_map(ObjectVisitor(keys))
        .map_err(|e| ScanError::json(&e))?;
    de.end().map_err(|e| ScanError::json(&e))?;
    Ok(found)
}

/// An object key: its index in the key set, if it is one of them. Escaped keys arrive
/// unescaped (in the parser's scratch buffer), so nothing is allocated per key.
#[derive(Clone, Copy)]
struct KeyIn(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIn {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIn {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == s))
    }
}

struct ObjectVisitor<const N: usize>(&'static [&'static str; N]);

impl<'de, const N: usize> Visitor<'de> for ObjectVisitor<N> {
    type Value = Members<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Members {
            raw: [None; N],
            members: 0,
            duplicate: None,
        };
        while let Some(key) = map.next_key_seed(KeyIn(self.0))? {
            found.members += 1;
            match key {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) => {
                    let v: &'de RawValue = map.next_value()?;
                    if found.raw[i].replace(v).is_some() {
                        found.duplicate.get_or_insert(self.0[i]);
                    }
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn nest(depth: usize) -> String {
        format!(
            r#"{{"model":"m","x":{}1{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2] {
            let body = Bytes::from(nest(depth));
            let theirs = serde_json::from_slice::<Value>(&body).is_ok();
            assert_eq!(scan(&body, false).is_ok(), theirs, "depth {depth}");
            assert_eq!(theirs, depth <= MAX_DEPTH, "depth {depth}");
        }
        // Brackets inside strings do not count, escaped quotes do not end them.
        let deep_text = format!(r#"{{"model":"m","x":"\"{}"}}"#, "[".repeat(10_000));
        assert!(scan(&Bytes::from(deep_text), false).is_ok());
    }

    #[test]
    fn a_depth_bomb_is_an_error_not_a_stack_overflow() {
        for bomb in [
            "[".repeat(1_000_000),
            format!(r#"{{"model":"m","x":{}"#, "[".repeat(1_000_000)),
            format!(
                r#"{{"model":"m","x":{}1{}}}"#,
                "[".repeat(500_000),
                "]".repeat(500_000)
            ),
            format!(r#"{{"model":"m","x":{}}}"#, r#"{"a":"#.repeat(200_000)),
        ] {
            assert_eq!(
                scan(&Bytes::from(bomb), false).err(),
                Some(ScanError::TooDeep)
            );
        }
    }

    #[test]
    fn validation_rules() {
        let check =
            |body: &str, required: bool| scan(&Bytes::from(body.to_owned()), required).err();
        assert!(matches!(check("{nope", false), Some(ScanError::Json(_))));
        assert!(matches!(check("", false), Some(ScanError::Json(_))));
        assert!(matches!(
            check(r#"{"model":"m"} x"#, false),
            Some(ScanError::Json(_))
        ));
        assert!(matches!(
            check(r#"{"model":"m","a":[1,]}"#, false),
            Some(ScanError::Json(_))
        ));
        assert!(matches!(
            check("{\"model\":\"m\",\"a\":\"\u{1}\"}", false),
            Some(ScanError::Json(_))
        ));
        let bad_utf8 = Bytes::from_static(b"{\"model\":\"m\",\"a\":\"\xff\"}");
        assert!(matches!(
            scan(&bad_utf8, false).err(),
            Some(ScanError::Json(_))
        ));
        for not_object in ["[1]", " 1 ", "\"s\"", "null"] {
            assert_eq!(
                check(not_object, false),
                Some(ScanError::NotAnObject),
                "{not_object}"
            );
        }
        for (body, field) in [
            (r#"{"messages":[]}"#, "model"),
            (r#"{"model":null}"#, "model"),
            (r#"{"model":1}"#, "model"),
            (r#"{"model":["m"]}"#, "model"),
            (r#"{"model":""}"#, "model"),
            (r#"{"model":" \t"}"#, "model"),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":{}}"#, "messages"),
            (r#"{"model":"m","messages":"hi"}"#, "messages"),
            (r#"{"model":"m","messages":[],"stream":"yes"}"#, "stream"),
            (r#"{"model":"m","messages":[],"stream":1}"#, "stream"),
            (
                r#"{"model":"m","messages":[],"stream":true,"stream_options":"x"}"#,
                "stream_options",
            ),
            (
                r#"{"model":"m","messages":[],"stream_options":[]}"#,
                "stream_options",
            ),
            (
                r#"{"model":"m","messages":[],"stream_options":false}"#,
                "stream_options",
            ),
            // The first problem in the historical order wins.
            (r#"{"model":1,"stream":"x"}"#, "model"),
            (r#"{"model":"m","stream":"x"}"#, "messages"),
        ] {
            assert_eq!(
                check(body, true).map(|e| e.to_string()),
                Some(format!("invalid `{field}`")),
                "{body}"
            );
        }
        // Without the chat rule, messages may be anything or absent.
        assert!(check(r#"{"model":"m","messages":"x"}"#, false).is_none());
        let body = Bytes::from_static(
            br#" { "model" : "m" , "stream" : null , "stream_options" : null } "#,
        );
        let ok = scan(&body, false).expect("valid");
        assert!(!ok.stream() && !ok.include_usage());
    }

    #[test]
    fn duplicate_read_keys_are_refused_others_pass() {
        for (body, key) in [
            (r#"{"model":"a","model":"b","messages":[]}"#, "model"),
            (r#"{"model":"a","m\u006fdel":"b","messages":[]}"#, "model"),
            (
                r#"{"model":"a","messages":[],"stream":false,"stream":true}"#,
                "stream",
            ),
            (r#"{"model":"a","messages":[],"messages":[]}"#, "messages"),
            (
                r#"{"model":"a","messages":[],"tools":[],"tools":[]}"#,
                "tools",
            ),
            (
                r#"{"model":"a","messages":[],"stream_options":{},"stream_options":{}}"#,
                "stream_options",
            ),
            (
                r#"{"model":"a","messages":[],"stream_options":{"include_usage":false,"include_usage":true}}"#,
                "stream_options.include_usage",
            ),
        ] {
            let r = scan(&Bytes::from(body), true).err();
            assert_eq!(r, Some(ScanError::Duplicate(key)), "{body}");
        }
        let other = Bytes::from_static(br#"{"model":"a","messages":[],"seed":1,"seed":2}"#);
        assert!(
            scan(&other, true).is_ok(),
            "keys the gateway does not read are the server's business"
        );
    }

    #[test]
    fn escaped_keys_and_model_names_are_read_unescaped() {
        let body = Bytes::from_static(
            br#"{"\u006dodel":"caf\u00e9 \"x\"","str\u0065am":true,"messages":[]}"#,
        );
        let s = scan(&body, true).expect("valid");
        assert_eq!(s.model(), "café \"x\"");
        assert!(s.stream());
        let out = s.rewrite(&Rewrite {
            model: Some("served\\\"/é"),
            include_usage: true,
        });
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["model"], "served\\\"/é");
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn stream_options_are_rewritten_in_place() {
        for (before, after) in [
            (
                r#"{"model":"m","stream_options":null}"#,
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"model":"m","stream_options":{}}"#,
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"model":"m","stream_options":{ }}"#,
                r#"{"model":"m","stream_options":{ "include_usage":true}}"#,
            ),
            (
                r#"{"model":"m","stream_options":{"continuous_usage_stats":true}}"#,
                r#"{"model":"m","stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#,
            ),
            (
                r#"{"model":"m","stream_options":{"include_usage":false,"x":[1]}}"#,
                r#"{"model":"m","stream_options":{"include_usage":true,"x":[1]}}"#,
            ),
            (
                r#"{"model":"m","stream_options":{"include_usage":{"deep":[1,2]}}}"#,
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            ),
            (
                "{\"model\":\"m\"}\n",
                "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}\n",
            ),
            (
                "{\"model\":\"m\" \n}",
                "{\"model\":\"m\" \n,\"stream_options\":{\"include_usage\":true}}",
            ),
        ] {
            let body = Bytes::from(before);
            let s = scan(&body, false).expect("valid");
            let out = s.rewrite(&Rewrite {
                model: None,
                include_usage: true,
            });
            assert_eq!(std::str::from_utf8(&out).ok(), Some(after), "{before}");
        }
        let body = Bytes::from_static(br#"{"model":"m","stream_options":{"include_usage":true}}"#);
        let s = scan(&body, false).expect("valid");
        assert!(s.include_usage());
        let out = s.rewrite(&Rewrite {
            model: Some("m"),
            include_usage: true,
        });
        assert_eq!(
            out.as_ptr(),
            body.as_ptr(),
            "nothing to change: the same buffer"
        );
    }

    #[test]
    fn tool_fields_come_from_the_raw_slices() {
        let body = Bytes::from_static(
            br#"{"model":"m","tool_choice":"auto","tools":[{"type":"function","function":{"name":"f"}}],"guided_json":{"a":1e400},"x":1}"#,
        );
        let s = scan(&body, false).expect("valid");
        let v = s.tool_fields().expect("parses").expect("tools present");
        assert_eq!(
            v.to_string(),
            r#"{"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto","guided_json":{"a":1e+400}}"#
        );
        let none = Bytes::from_static(br#"{"model":"m","tool_choice":"auto"}"#);
        assert_eq!(scan(&none, false).expect("valid").tool_fields(), Ok(None));
    }

    // ---- property: splicing equals the reference transform on `Value` ----

    /// JSON text for arbitrary values, numbers as written (big, tiny, exponents).
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "18446744073709551615",
                "-9223372036854775809",
                "1e400",
                "0.70",
                "1E-7",
                "123456789012345678901234567890.5",
            ])
            .prop_map(str::to_owned),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<String>().prop_map(|s| escape(&s, false)),
            "[a-z\"\\\\/\u{e9}\u{1F600}\n]{0,6}".prop_map(|s| escape(&s, true)),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..5), ws())
                    .prop_map(|(v, w)| format!("[{w}{}]", v.join(","))),
                (prop::collection::vec(("[a-z_]{1,8}", inner), 0..5), ws()).prop_map(|(v, w)| {
                    // Unique keys: the reference (a `Value`) keeps only the last duplicate.
                    let mut seen = std::collections::HashSet::new();
                    let members: Vec<String> = v
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, x)| format!("\"{k}\"{w}:{w}{x}"))
                        .collect();
                    format!("{{{w}{}{w}}}", members.join(","))
                }),
            ]
        })
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n  "])
    }

    /// A JSON string literal; `\u` escapes for some characters when `unicode_escapes`.
    fn escape(s: &str, unicode_escapes: bool) -> String {
        if !unicode_escapes {
            return Value::from(s).to_string();
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                c if c.is_ascii_lowercase() || c.is_ascii_digit() => out.push(c),
                c => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
        }
        out.push('"');
        out
    }

    #[derive(Debug, Clone)]
    struct Req {
        model: String,
        model_text: String,
        aliased: Option<String>,
        members: Vec<(String, String)>,
        ws: &'static str,
    }

    fn req() -> impl Strategy<Value = Req> {
        let model = "[a-zA-Z0-9 ._\\-/:\"\\\\\u{e9}\u{1F600}]{0,10}[a-z]";
        (
            model,
            any::<bool>(),
            prop::option::of("[a-z0-9\"\\\\ \u{e9}/]{1,10}"),
            prop::sample::select(vec![None, Some("null"), Some("true"), Some("false")]),
            prop::sample::select(vec![
                None,
                Some("null"),
                Some("{}"),
                Some(r#"{"include_usage":true}"#),
                Some(r#"{"include_usage":false}"#),
                Some(r#"{"include_usage":null}"#),
                Some(r#"{"continuous_usage_stats":true}"#),
                Some(r#"{ "continuous_usage_stats" : [1e400] , "include_usage" : "yes" }"#),
            ]),
            prop::option::of(r#"\[\{"type":"function","function":\{"name":"[a-z_]{1,8}"\}\}\]"#),
            prop::sample::select(vec![
                None,
                Some(r#""auto""#),
                Some(r#"{"type":"function","function":{"name":"x"}}"#),
            ]),
            prop::collection::vec(("[a-z_]{1,10}", json_text()), 0..6),
            ws(),
        )
            .prop_flat_map(
                |(model, escaped, alias, stream, options, tools, choice, extra, ws)| {
                    let mut members = vec![
                        ("model".to_string(), escape(&model, escaped)),
                        (
                            "messages".to_string(),
                            r#"[{"role":"user","content":"hi"}]"#.to_string(),
                        ),
                    ];
                    let named = [
                        ("stream", stream),
                        ("stream_options", options),
                        ("tool_choice", choice),
                    ];
                    for (k, v) in named {
                        if let Some(v) = v {
                            members.push((k.to_string(), v.to_string()));
                        }
                    }
                    if let Some(t) = tools {
                        members.push(("tools".to_string(), t));
                    }
                    for (k, v) in extra {
                        if !READ_KEYS.contains(&k.as_str()) && members.iter().all(|(m, _)| *m != k)
                        {
                            members.push((k, v));
                        }
                    }
                    let model_text = members[0].1.clone();
                    (
                        Just(members).prop_shuffle(),
                        Just(model),
                        Just(model_text),
                        Just(alias),
                        Just(ws),
                    )
                },
            )
            .prop_map(|(members, model, model_text, aliased, ws)| Req {
                model,
                model_text,
                aliased,
                members,
                ws,
            })
    }

    fn body_of(r: &Req) -> String {
        let w = r.ws;
        let members: Vec<String> = r
            .members
            .iter()
            .map(|(k, v)| format!("{w}\"{k}\"{w}:{w}{v}"))
            .collect();
        format!("{w}{{{}{w}}}{w}", members.join(","))
    }

    /// The transform as it was done on a whole `Value`.
    fn reference(mut v: Value, served: Option<&str>, inject: bool) -> (Value, bool) {
        let Some(obj) = v.as_object_mut() else {
            return (v, false);
        };
        if let Some(s) = served {
            obj.insert("model".into(), Value::from(s));
        }
        let mut wants = false;
        if inject {
            let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
            if opts.is_null() {
                *opts = json!({});
            }
            wants = opts.get("include_usage") == Some(&Value::Bool(true));
            if !wants {
                opts["include_usage"] = Value::Bool(true);
            }
        }
        (v, wants)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn splicing_matches_the_value_transform(r in req(), alias_it in any::<bool>()) {
            let text = body_of(&r);
            let body = Bytes::from(text.clone());
            let s = scan(&body, true).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(s.model(), r.model.as_str());
            let original: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.stream(), original.get("stream") == Some(&Value::Bool(true)));
            let served = r.aliased.as_deref().filter(|_| alias_it);
            let inject = s.stream();
            let out = s.rewrite(&Rewrite { model: served, include_usage: inject && !s.include_usage() });
            let (want, wants_usage) = reference(original.clone(), served, inject);
            prop_assert_eq!(inject && s.include_usage(), wants_usage);
            let got: Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            // Serialized with preserve_order: same members, same order, same number text.
            prop_assert_eq!(got.to_string(), want.to_string());
            if want == original {
                prop_assert_eq!(&out[..], text.as_bytes());
                prop_assert_eq!(out.as_ptr(), body.as_ptr(), "unchanged bodies are not copied");
            } else if served.is_none_or(|m| m == r.model) {
                // The model kept its text, escapes included.
                prop_assert!(String::from_utf8_lossy(&out).contains(&r.model_text));
            }
            let tools_want = original.get("tools").map(|_| {
                let mut m = serde_json::Map::new();
                for k in &READ_KEYS[TOOLS..] {
                    if let Some(v) = original.get(*k) {
                        m.insert((*k).to_owned(), v.clone());
                    }
                }
                Value::Object(m)
            });
            prop_assert_eq!(s.tool_fields().ok().flatten(), tools_want);
        }
    }
}
