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
            match self.b.get(self.i).copied().ok_or(())? {
                b'"' => {
                    self.i += 1;
                    return Ok((start, self.i - 1, esc));
                }
                b'\\' => {
                    esc = true;
                    self.i += 2;
                }
                _ => self.i += 1,
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
                sc.delta(info)
            } else if sc.key_is(k, "finish_reason") {
                info.finish = !sc.is_null()?;
                sc.skip()
            } else {
                sc.skip()
            }
        })
    }
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
