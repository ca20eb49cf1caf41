//! Allocation-free look into one SSE `data:` payload (a `chat.completion.chunk`):
//! per choice its index, where `delta.content` is, and whether it carries
//! native tool calls, reasoning or a finish_reason. Anything it cannot read
//! makes the caller fall back to the full (serde_json) path or pass through.

/// What the stream transform needs to know about one choice of a chunk.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChoiceInfo {
    pub index: u64,
    /// Byte range of the content string's raw (escaped) text inside the payload.
    pub content: Option<(usize, usize)>,
    pub content_escaped: bool,
    /// `delta.tool_calls` is a non-empty array (or a legacy `function_call` is present).
    pub native: bool,
    /// Name of a non-empty reasoning field in the delta.
    pub reasoning: Option<&'static str>,
    /// `finish_reason` is present and not null.
    pub finish: bool,
    /// The delta has keys besides `content` (role, reasoning, ...).
    pub delta_other: bool,
    /// Offset of the opening quote of the `content` key (the member to splice).
    pub content_key: usize,
    /// The choice has more than one `delta` key or its delta more than one `content` key.
    pub dup: bool,
    /// The choice has a `finish_reason` key (null or not).
    pub finish_key: bool,
    /// Set by the stream transform: this choice is forwarded unchanged.
    pub fast: bool,
}

struct Sc<'a> {
    b: &'a [u8],
    i: usize,
}

type R<T> = Result<T, ()>;

impl Sc<'_> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> R<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(())
    }
    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(())
        }
    }
    /// A string at the cursor: (start, end) of its raw text, and whether it has escapes.
    fn string(&mut self) -> R<(usize, usize, bool)> {
        self.expect(b'"')?;
        let start = self.i;
        let mut esc = false;
        loop {
            self.i += quote_or_backslash(self.b.get(self.i..).ok_or(())?).ok_or(())?;
            match self.b.get(self.i).copied().ok_or(())? {
                b'"' => {
                    self.i += 1;
                    return Ok((start, self.i - 1, esc));
                }
                _ => {
                    esc = true;
                    self.i += 2;
                }
            }
        }
    }
    fn key_is(&self, k: (usize, usize, bool), name: &str) -> bool {
        !k.2 && self.b.get(k.0..k.1) == Some(name.as_bytes())
    }
    /// Skips any value (structure only; strings honour escapes).
    fn skip(&mut self) -> R<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.b.get(self.i).copied().ok_or(())? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1).ok_or(())?;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self.b.get(self.i).is_some_and(|c| {
                    !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                }) {
                    self.i += 1;
                }
                Ok(())
            }
        }
    }
    fn is_null(&mut self) -> R<bool> {
        Ok(self.peek()? == b'n')
    }
    /// Iterates the members of an object, calling `f` with each key.
    fn object(&mut self, mut f: impl FnMut(&mut Self, (usize, usize, bool)) -> R<()>) -> R<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            let k = self.string()?;
            self.expect(b':')?;
            f(self, k)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(()),
            }
        }
    }

    fn delta(&mut self, info: &mut ChoiceInfo) -> R<()> {
        if self.is_null()? {
            return self.skip();
        }
        self.object(|sc, k| {
            if !sc.key_is(k, "content") {
                info.delta_other = true;
            }
            if sc.key_is(k, "content") {
                info.dup |= info.content_key != 0;
                info.content_key = k.0.saturating_sub(1);
                if sc.is_null()? {
                    sc.skip()
                } else {
                    let (s, e, esc) = sc.string()?;
                    info.content = Some((s, e));
                    info.content_escaped = esc;
                    Ok(())
                }
            } else if sc.key_is(k, "tool_calls") {
                if sc.peek()? == b'[' {
                    let save = sc.i;
                    sc.i += 1;
                    if sc.peek()? != b']' {
                        info.native = true;
                    }
                    sc.i = save;
                }
                sc.skip()
            } else if sc.key_is(k, "function_call") {
                if !sc.is_null()? {
                    info.native = true;
                }
                sc.skip()
            } else if sc.key_is(k, "reasoning") || sc.key_is(k, "reasoning_content") {
                let name = if sc.key_is(k, "reasoning") {
                    "reasoning"
                } else {
                    "reasoning_content"
                };
                if sc.peek()? == b'"' {
                    let (s, e, _) = sc.string()?;
                    if e > s {
                        info.reasoning = Some(name);
                    }
                    Ok(())
                } else {
                    sc.skip()
                }
            } else {
                sc.skip()
            }
        })
    }

    fn choice(&mut self, info: &mut ChoiceInfo) -> R<()> {
        let mut seen_delta = false;
        self.object(|sc, k| {
            if sc.key_is(k, "index") {
                sc.peek()?;
                let start = sc.i;
                sc.skip()?;
                let digits = sc.b.get(start..sc.i).ok_or(())?;
                let mut v: u64 = 0;
                for &d in digits {
                    if !d.is_ascii_digit() {
                        return Err(());
                    }
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(d - b'0')))
                        .ok_or(())?;
                }
                info.index = v;
                Ok(())
            } else if sc.key_is(k, "delta") {
                info.dup |= std::mem::replace(&mut seen_delta, true);
                sc.delta(info)
            } else if sc.key_is(k, "finish_reason") {
                info.finish_key = true;
                info.finish = !sc.is_null()?;
                sc.skip()
            } else {
                sc.skip()
            }
        })
    }
}

/// Offset of the first `"` or `\\` in `b` (eight bytes at a time).
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut off = 0;
    let mut words = b.chunks_exact(8);
    for w in words.by_ref() {
        let Ok(a) = <[u8; 8]>::try_from(w) else {
            break;
        };
        let x = u64::from_le_bytes(a);
        let q = x ^ (ONES * u64::from(b'"'));
        let s = x ^ (ONES * u64::from(b'\\'));
        // the lowest flagged byte is exactly the first zero byte of q or s
        let hit = (q.wrapping_sub(ONES) & !q | s.wrapping_sub(ONES) & !s) & HIGH;
        if hit != 0 {
            return Some(off + (hit.trailing_zeros() / 8) as usize);
        }
        off += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| off + k)
}

/// Reads the payload. `Ok(true)` when it has a `choices` array (infos filled,
/// possibly empty), `Ok(false)` for other JSON objects, `Err` when unreadable.
pub(crate) fn scan_chunk(data: &str, infos: &mut Vec<ChoiceInfo>) -> Result<bool, ()> {
    infos.clear();
    let mut sc = Sc {
        b: data.as_bytes(),
        i: 0,
    };
    let mut has_choices = false;
    sc.object(|sc, k| {
        if sc.key_is(k, "choices") && sc.peek()? == b'[' {
            has_choices = true;
            sc.i += 1;
            if sc.peek()? == b']' {
                sc.i += 1;
                return Ok(());
            }
            loop {
                let mut info = ChoiceInfo::default();
                sc.choice(&mut info)?;
                infos.push(info);
                match sc.peek()? {
                    b',' => sc.i += 1,
                    b']' => {
                        sc.i += 1;
                        return Ok(());
                    }
                    _ => return Err(()),
                }
            }
        }
        sc.skip()
    })?;
    sc.ws();
    if sc.i != sc.b.len() {
        return Err(());
    }
    Ok(has_choices)
}

/// Decodes a JSON string's raw text (between the quotes) into `out`.
pub(crate) fn decode_into(raw: &str, out: &mut String) -> Option<()> {
    out.clear();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        out.push(match e {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hi = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        });
    }
    Some(())
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.to_digit(16)?;
    }
    Some(v)
}

/// Nesting deeper than this is left to `serde_json` (its limit is 128).
const MAX_DEPTH: usize = 100;

/// Conservative, allocation-free JSON check: `true` only when `serde_json`
/// certainly parses `data` into a `Value`. Anything unusual (surrogate escapes,
/// exponents, long numbers, deep nesting) gives `false`, so callers then ask
/// `serde_json` itself.
pub(crate) fn surely_valid(data: &str) -> bool {
    let mut v = Sc {
        b: data.as_bytes(),
        i: 0,
    };
    v.valid_value(0) && {
        v.ws();
        v.i == v.b.len()
    }
}

impl Sc<'_> {
    fn valid_value(&mut self, depth: usize) -> bool {
        let Ok(c) = self.peek() else {
            return false;
        };
        match c {
            b'"' => self.valid_string(),
            b'{' | b'[' => {
                if depth >= MAX_DEPTH {
                    return false;
                }
                let close = if c == b'{' { b'}' } else { b']' };
                self.i += 1;
                if self.peek() == Ok(close) {
                    self.i += 1;
                    return true;
                }
                loop {
                    if c == b'{' && !(self.valid_string() && self.expect(b':').is_ok()) {
                        return false;
                    }
                    if !self.valid_value(depth + 1) {
                        return false;
                    }
                    match self.peek() {
                        Ok(b',') => self.i += 1,
                        Ok(x) if x == close => {
                            self.i += 1;
                            return true;
                        }
                        _ => return false,
                    }
                    if c == b'{' && self.peek() != Ok(b'"') {
                        return false;
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.valid_number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let end = self.i + word.len();
        if self.b.get(self.i..end) == Some(word) {
            self.i = end;
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)?`, at most 15 digits, no exponent.
    fn valid_number(&mut self) -> bool {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let first = self.b.get(self.i).copied();
        let int = self.digits();
        if int == 0 || (int > 1 && first == Some(b'0')) {
            return false;
        }
        let mut frac = 0;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            frac = self.digits();
            if frac == 0 {
                return false;
            }
        }
        int + frac <= 15 && !matches!(self.b.get(self.i), Some(b'e' | b'E'))
    }

    /// A string without raw control characters, with valid escapes and no
    /// `\u` escape in the surrogate range.
    fn valid_string(&mut self) -> bool {
        self.expect(b'"').is_ok() && self.valid_string_rest(true)
    }

    /// The rest of a string after its opening quote; `quoted`: it must end
    /// with a closing quote (else it runs to the end of the input).
    fn valid_string_rest(&mut self, quoted: bool) -> bool {
        loop {
            let Some(rest) = self.b.get(self.i..) else {
                return false;
            };
            let Some(k) = special_byte(rest) else {
                self.i = self.b.len();
                return !quoted;
            };
            self.i += k;
            match self.b.get(self.i).copied() {
                Some(b'"') => {
                    self.i += 1;
                    return quoted;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.b.get(self.i).copied() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let Some(hex) = self.b.get(self.i + 1..self.i + 5) else {
                                return false;
                            };
                            let mut v = 0u32;
                            for &h in hex {
                                let Some(d) = char::from(h).to_digit(16) else {
                                    return false;
                                };
                                v = v * 16 + d;
                            }
                            if (0xD800..0xE000).contains(&v) {
                                return false;
                            }
                            self.i += 5;
                        }
                        _ => return false,
                    }
                }
                _ => return false, // control character
            }
        }
    }
}

/// Conservative check of a string's raw text (between its quotes): `true` only
/// when the quoted text is certainly a string `serde_json` accepts.
pub(crate) fn surely_valid_string_body(raw: &str) -> bool {
    Sc {
        b: raw.as_bytes(),
        i: 0,
    }
    .valid_string_rest(false)
}

/// Offset of the first `"`, `\` or control character (< 0x20) in `b`.
fn special_byte(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut off = 0;
    let mut words = b.chunks_exact(8);
    for w in words.by_ref() {
        let Ok(a) = <[u8; 8]>::try_from(w) else {
            break;
        };
        let x = u64::from_le_bytes(a);
        let q = x ^ (ONES * u64::from(b'"'));
        let s = x ^ (ONES * u64::from(b'\\'));
        let ctl = x.wrapping_sub(ONES * 0x20) & !x;
        let hit = (q.wrapping_sub(ONES) & !q | s.wrapping_sub(ONES) & !s | ctl) & HIGH;
        if hit != 0 {
            return Some(off + (hit.trailing_zeros() / 8) as usize);
        }
        off += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| off + k)
}
