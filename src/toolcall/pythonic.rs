//! Pythonic call lists (`[f(a=1), g()]`, optional `<|python_start|>` … `<|python_end|>`)
//! → calls (protocol.md 3.5). The parser tells "needs more text" apart from "not a call list"
//! so a stream can give up on prose early.

use super::calls::Call;
use super::config::RequestTools;
use serde_json::{Map, Number, Value};

pub(crate) const PY_START: &str = "<|python_start|>";
pub(crate) const PY_END: &str = "<|python_end|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PyErr {
    /// Input ended inside the list: a prefix of a possible call list.
    Incomplete,
    /// Not a call list (any more text cannot fix it).
    Invalid,
}

type R<T> = Result<T, PyErr>;

struct P<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> P<'a> {
    fn peek(&self) -> R<u8> {
        self.s
            .as_bytes()
            .get(self.i)
            .copied()
            .ok_or(PyErr::Incomplete)
    }
    fn ws(&mut self) {
        while self
            .s
            .as_bytes()
            .get(self.i)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(PyErr::Invalid)
        }
    }
    /// Optional literal token: Ok(true) consumed, Ok(false) absent, Err(Incomplete) partial at end.
    fn opt_token(&mut self, tok: &str) -> R<bool> {
        let rest = self.s.get(self.i..).unwrap_or("");
        if rest.starts_with(tok) {
            self.i += tok.len();
            Ok(true)
        } else if !rest.is_empty() && tok.starts_with(rest) {
            Err(PyErr::Incomplete)
        } else {
            Ok(false)
        }
    }
    fn ident(&mut self) -> R<&'a str> {
        let start = self.i;
        let first = self.peek()?;
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return Err(PyErr::Invalid);
        }
        while self
            .s
            .as_bytes()
            .get(self.i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err(PyErr::Incomplete);
        }
        self.s.get(start..self.i).ok_or(PyErr::Invalid)
    }

    fn list(&mut self, close: u8) -> R<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek()? == close {
                self.i += 1;
                return Ok(out);
            }
            out.push(self.value()?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(PyErr::Invalid),
            }
        }
    }

    fn value(&mut self) -> R<Value> {
        self.ws();
        match self.peek()? {
            b'\'' | b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                self.list(b']').map(Value::Array)
            }
            b'(' => {
                self.i += 1;
                self.list(b')').map(Value::Array)
            }
            b'{' => {
                self.i += 1;
                let mut m = Map::new();
                loop {
                    self.ws();
                    if self.peek()? == b'}' {
                        self.i += 1;
                        return Ok(Value::Object(m));
                    }
                    let k = match self.peek()? {
                        b'\'' | b'"' => self.string()?,
                        _ => return Err(PyErr::Invalid),
                    };
                    self.ws();
                    self.eat(b':')?;
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Ok(Value::Object(m));
                        }
                        _ => return Err(PyErr::Invalid),
                    }
                }
            }
            b'-' | b'+' | b'0'..=b'9' => self.number(),
            c if c.is_ascii_alphabetic() => {
                let id = self.ident()?;
                match id {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::Null),
                    _ => Err(PyErr::Invalid),
                }
            }
            _ => Err(PyErr::Invalid),
        }
    }

    fn number(&mut self) -> R<Value> {
        let start = self.i;
        while self
            .s
            .as_bytes()
            .get(self.i)
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err(PyErr::Incomplete);
        }
        let tok = self.s.get(start..self.i).ok_or(PyErr::Invalid)?;
        let tok = tok.strip_prefix('+').unwrap_or(tok);
        tok.parse::<Number>()
            .map(Value::Number)
            .map_err(|_| PyErr::Invalid)
    }

    fn string(&mut self) -> R<String> {
        let q = self.peek()?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let rest = self.s.get(self.i..).ok_or(PyErr::Invalid)?;
            let mut chars = rest.chars();
            let c = chars.next().ok_or(PyErr::Incomplete)?;
            self.i += c.len_utf8();
            match c {
                '\n' => return Err(PyErr::Invalid),
                '\\' => {
                    let e = chars.next().ok_or(PyErr::Incomplete)?;
                    self.i += e.len_utf8();
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        '\\' | '\'' | '"' => out.push(e),
                        'x' | 'u' => {
                            let n = if e == 'x' { 2 } else { 4 };
                            let hex = self.s.get(self.i..self.i + n).ok_or(PyErr::Incomplete)?;
                            let v = u32::from_str_radix(hex, 16).map_err(|_| PyErr::Invalid)?;
                            out.push(char::from_u32(v).ok_or(PyErr::Invalid)?);
                            self.i += n;
                        }
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c if c as u32 == u32::from(q) => return Ok(out),
                c => out.push(c),
            }
        }
    }

    fn call(&mut self, tools: &RequestTools) -> R<Call> {
        let name = self.ident()?;
        self.ws();
        self.eat(b'(')?; // `a.b(` fails here on '.'
        let mut args = Map::new();
        loop {
            self.ws();
            if self.peek()? == b')' {
                self.i += 1;
                break;
            }
            let key = self.ident()?;
            self.ws();
            self.eat(b'=')?;
            let v = self.value()?;
            args.insert(key.to_owned(), v);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b')' => {
                    self.i += 1;
                    break;
                }
                _ => return Err(PyErr::Invalid),
            }
        }
        if !tools.allows(name) {
            return Err(PyErr::Invalid);
        }
        let arguments = serde_json::to_string(&Value::Object(args)).map_err(|_| PyErr::Invalid)?;
        Ok(Call {
            name: name.to_owned(),
            arguments,
        })
    }
}

/// Parses the whole text as a call list. `Ok` means the text so far is a
/// complete call list (possibly followed by more whitespace or `<|python_end|>` later).
pub(crate) fn parse_call_list(s: &str, tools: &RequestTools) -> Result<Vec<Call>, PyErr> {
    let mut p = P { s, i: 0 };
    p.ws();
    p.opt_token(PY_START)?;
    p.ws();
    p.eat(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.peek()? == b']' && !calls.is_empty() {
            p.i += 1;
            break;
        }
        calls.push(p.call(tools)?);
        p.ws();
        match p.peek()? {
            b',' => p.i += 1,
            b']' => {
                p.i += 1;
                break;
            }
            _ => return Err(PyErr::Invalid),
        }
    }
    p.ws();
    if p.i < s.len() {
        p.opt_token(PY_END)?;
        p.ws();
    }
    if p.i < s.len() {
        return Err(PyErr::Invalid);
    }
    Ok(calls)
}
