//! Incremental JSON prefix validation: decides where a JSON value that starts a
//! candidate ends, whether more text is needed, or where it stops being JSON.
//! Byte-oriented, allocation-free except for the nesting stack.

/// Result of scanning text that should start with a JSON object or array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    /// The value is complete and ends at this byte offset (exclusive).
    Complete(usize),
    /// The text so far is a valid prefix of a value; more text is needed.
    Incomplete,
    /// The text stops being JSON at this byte offset.
    Invalid(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum St {
    /// expecting a value
    #[default]
    Value,
    /// after `[`: expecting a value or `]`
    ValueOrClose,
    /// after `{`: expecting a key or `}`
    KeyOrEnd,
    /// after `,` in an object: expecting a key
    Key,
    /// after a key: expecting `:`
    Colon,
    /// after a value inside a container: expecting `,` or the closer
    After,
    /// inside a string (key or value)
    Str { key: bool, esc: bool, hex: u8 },
    /// inside a number
    Num,
    /// inside a literal; remaining bytes of it
    Lit(&'static [u8]),
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Resumable scanner state for one candidate body: the same text may be
/// scanned again with more bytes appended, continuing where it stopped.
#[derive(Debug, Default)]
pub(crate) struct JsonCache {
    /// Body offset this state belongs to (`None`: empty).
    off: Option<usize>,
    stack: Vec<u8>,
    st: St,
    i: usize,
    done: Option<Extent>,
}

impl JsonCache {
    pub fn reset(&mut self) {
        self.off = None;
        self.stack.clear();
        self.st = St::Value;
        self.i = 0;
        self.done = None;
    }
}

/// Scans `s`, which must start with `{` or `[` (else `Invalid(0)`), and reports
/// where the first complete JSON value ends.
pub(crate) fn json_extent(s: &str) -> Extent {
    let mut c = JsonCache::default();
    json_extent_at(s, 0, &mut c)
}

/// Like [`json_extent`] for `full[off..]`, resuming from `cache` when it holds the
/// state of an earlier scan of a prefix of the same body.
pub(crate) fn json_extent_at(full: &str, off: usize, cache: &mut JsonCache) -> Extent {
    let s = full.get(off..).unwrap_or("");
    if cache.off != Some(off) {
        cache.reset();
        cache.off = Some(off);
    }
    if let Some(d) = cache.done {
        return d;
    }
    let r = scan(s.as_bytes(), cache);
    if r != Extent::Incomplete {
        cache.done = Some(r);
    }
    r
}

fn scan(b: &[u8], c: &mut JsonCache) -> Extent {
    if c.i == 0 {
        match b.first() {
            Some(b'{') | Some(b'[') => {}
            Some(_) => return Extent::Invalid(0),
            None => return Extent::Incomplete,
        }
    }
    let stack = &mut c.stack;
    let mut st = c.st;
    let mut i = c.i;
    let r = loop {
        let Some(&ch) = b.get(i) else {
            break Extent::Incomplete;
        };
        match st {
            St::Str { key, esc, hex } => {
                if hex > 0 {
                    if !ch.is_ascii_hexdigit() {
                        break Extent::Invalid(i);
                    }
                    st = St::Str {
                        key,
                        esc: false,
                        hex: hex - 1,
                    };
                } else if esc {
                    match ch {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            st = St::Str {
                                key,
                                esc: false,
                                hex: 0,
                            }
                        }
                        b'u' => {
                            st = St::Str {
                                key,
                                esc: false,
                                hex: 4,
                            }
                        }
                        _ => break Extent::Invalid(i),
                    }
                } else if ch == b'\\' {
                    st = St::Str {
                        key,
                        esc: true,
                        hex: 0,
                    };
                } else if ch == b'"' {
                    st = if key { St::Colon } else { St::After };
                } else if ch < 0x20 {
                    break Extent::Invalid(i);
                }
                i += 1;
                continue;
            }
            St::Num => {
                if ch.is_ascii_digit() || matches!(ch, b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                    continue;
                }
                st = St::After; // re-examine ch
                continue;
            }
            St::Lit(rest) => {
                match rest.split_first() {
                    Some((&want, tail)) if want == ch => {
                        st = if tail.is_empty() {
                            St::After
                        } else {
                            St::Lit(tail)
                        };
                    }
                    _ => break Extent::Invalid(i),
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        if is_ws(ch) {
            i += 1;
            continue;
        }
        match st {
            St::Value | St::ValueOrClose => match ch {
                b'{' => {
                    stack.push(b'}');
                    st = St::KeyOrEnd;
                }
                b'[' => {
                    stack.push(b']');
                    st = St::ValueOrClose;
                }
                b']' if st == St::ValueOrClose => {
                    stack.pop();
                    if stack.is_empty() {
                        break Extent::Complete(i + 1);
                    }
                    st = St::After;
                }
                b'"' => {
                    st = St::Str {
                        key: false,
                        esc: false,
                        hex: 0,
                    }
                }
                b'-' | b'0'..=b'9' => st = St::Num,
                b't' => st = St::Lit(b"rue"),
                b'f' => st = St::Lit(b"alse"),
                b'n' => st = St::Lit(b"ull"),
                _ => break Extent::Invalid(i),
            },
            St::KeyOrEnd | St::Key => match ch {
                b'"' => {
                    st = St::Str {
                        key: true,
                        esc: false,
                        hex: 0,
                    }
                }
                b'}' if st == St::KeyOrEnd => {
                    stack.pop();
                    if stack.is_empty() {
                        break Extent::Complete(i + 1);
                    }
                    st = St::After;
                }
                _ => break Extent::Invalid(i),
            },
            St::Colon => {
                if ch == b':' {
                    st = St::Value;
                } else {
                    break Extent::Invalid(i);
                }
            }
            St::After => match ch {
                b',' => {
                    st = match stack.last() {
                        Some(b'}') => St::Key,
                        _ => St::Value,
                    }
                }
                b'}' | b']' => {
                    if stack.last() != Some(&ch) {
                        break Extent::Invalid(i);
                    }
                    stack.pop();
                    if stack.is_empty() {
                        break Extent::Complete(i + 1);
                    }
                    st = St::After;
                }
                _ => break Extent::Invalid(i),
            },
            St::Str { .. } | St::Num | St::Lit(_) => {}
        }
        i += 1;
    };
    c.st = st;
    c.i = i;
    r
}

/// Parses a complete JSON text (after trimming) into a value; `None` when invalid.
pub(crate) fn parse_value(s: &str) -> Option<serde_json::Value> {
    serde_json::from_str(s.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents() {
        assert_eq!(json_extent("{}"), Extent::Complete(2));
        assert_eq!(json_extent("[]x"), Extent::Complete(2));
        assert_eq!(json_extent("[ ]"), Extent::Complete(3));
        assert_eq!(
            json_extent("{\"a\": [1, 2.5e3, true, null, \"x\\\"}\"]} tail"),
            Extent::Complete(37)
        );
        assert_eq!(json_extent("{\"a\": 1"), Extent::Incomplete);
        assert_eq!(json_extent("{\"a\": }"), Extent::Invalid(6));
        assert_eq!(json_extent("{x}"), Extent::Invalid(1));
        assert_eq!(json_extent("[1, 2}"), Extent::Invalid(5));
        assert_eq!(
            json_extent("{\"a\": {\"b\": 1}\n</tool_call>"),
            Extent::Invalid(15)
        );
        assert_eq!(json_extent("x"), Extent::Invalid(0));
        assert_eq!(json_extent(""), Extent::Incomplete);
        assert_eq!(json_extent("{\"a\":tru"), Extent::Incomplete);
        assert_eq!(json_extent("{\"a\":trx"), Extent::Invalid(7));
        assert_eq!(json_extent("[[], {}]"), Extent::Complete(8));
        // resumed scans agree with whole scans at every split
        for text in [
            "{\"a\": [1, {\"b\": \"x\\u0041\"}], \"c\": null} t",
            "[ ]",
            "{\"a\": }",
            "[1.5e3, -2]",
        ] {
            let whole = json_extent(text);
            for cut in 0..=text.len() {
                let mut c = JsonCache::default();
                let _ = json_extent_at(&text[..cut], 0, &mut c);
                assert_eq!(json_extent_at(text, 0, &mut c), whole, "{text} at {cut}");
            }
        }
    }
}
