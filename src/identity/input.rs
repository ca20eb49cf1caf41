//! Request bodies and query strings of the identity endpoints: strict parsing (unknown
//! fields, wrong types and oversized input are 400 with a message naming the problem) and
//! the rules for each field.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::IdentityError;
use crate::principal::Role;

/// Largest JSON body an identity endpoint reads.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_USERNAME: usize = 64;
const MIN_PASSWORD: usize = 8;
/// Bounds the argon2 input; longer passphrases add nothing.
const MAX_PASSWORD: usize = 256;
const MAX_EMAIL: usize = 254;
const MAX_NAME: usize = 128;
const MAX_MODELS: usize = 100;
const MAX_GLOB: usize = 256;
/// Larger limits are typos, not plans.
const MAX_RPM: i64 = 100_000_000;
const MAX_TPM: i64 = 1_000_000_000_000;

fn bad(msg: impl Into<String>) -> IdentityError {
    IdentityError::BadRequest(msg.into())
}

/// Client text echoed in a message: no control characters, bounded.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The JSON object in `body`; an empty body reads as `{}`.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, IdentityError> {
    if body.len() > MAX_BODY {
        return Err(bad(format!("The request body exceeds {MAX_BODY} bytes.")));
    }
    let text: &[u8] = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => body,
        // serde would read an array as the struct's fields in order (`["ADMIN"]` as a
        // role): only an object names its fields.
        Some(_) => return Err(bad("The request body must be a JSON object.")),
    };
    serde_json::from_slice(text).map_err(|e| {
        bad(format!(
            "Invalid request body: {}",
            printable(&e.to_string())
        ))
    })
}

/// Present-but-null and absent differ in PATCH bodies: `Some(None)` clears a field.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub fn username_problem(u: &str) -> Result<(), &'static str> {
    if u.is_empty() || u.chars().count() > MAX_USERNAME {
        return Err("a username has 1 to 64 characters");
    }
    if !u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err("a username may contain only letters, digits, '.', '_', '-' and '@'");
    }
    Ok(())
}

pub fn password_problem(p: &str) -> Result<(), &'static str> {
    let n = p.chars().count();
    if n < MIN_PASSWORD {
        return Err("a password has at least 8 characters");
    }
    if n > MAX_PASSWORD {
        return Err("a password has at most 256 characters");
    }
    if p.chars().any(char::is_control) {
        return Err("a password may not contain control characters");
    }
    Ok(())
}

pub fn username(u: &str) -> Result<String, IdentityError> {
    username_problem(u).map_err(|r| bad(format!("username: {r}.")))?;
    Ok(u.to_owned())
}

pub fn password(p: &str, field: &str) -> Result<(), IdentityError> {
    password_problem(p).map_err(|r| bad(format!("{field}: {r}.")))
}

pub fn email(e: Option<String>) -> Result<Option<String>, IdentityError> {
    let Some(e) = e else { return Ok(None) };
    let ok = e.len() <= MAX_EMAIL
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
        && !e.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(bad("email: not a valid address."));
    }
    Ok(Some(e))
}

/// A free-text name (key names): any printable text, trimmed, no control characters (a
/// CR or LF could forge log lines or headers downstream).
pub fn name(n: &str) -> Result<String, IdentityError> {
    let t = n.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME {
        return Err(bad("name: 1 to 128 characters."));
    }
    if t.chars().any(char::is_control) {
        return Err(bad(
            "name: control characters (such as CR or LF) are not allowed.",
        ));
    }
    Ok(t.to_owned())
}

pub fn role(r: &str) -> Result<Role, IdentityError> {
    Role::parse(r).ok_or_else(|| bad("role: one of USER, ADMIN, SUPER_ADMIN."))
}

pub fn models(m: Vec<String>) -> Result<Vec<String>, IdentityError> {
    if m.len() > MAX_MODELS {
        return Err(bad("models: at most 100 entries."));
    }
    for g in &m {
        if g.is_empty()
            || g.len() > MAX_GLOB
            || g.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad(
                "models: each entry is a model id or glob (`*`, `?`) of 1 to 256 characters without spaces.",
            ));
        }
    }
    let mut out = m;
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn rpm(v: Option<i64>) -> Result<Option<i32>, IdentityError> {
    match v {
        None => Ok(None),
        Some(n) if (0..=MAX_RPM).contains(&n) => Ok(i32::try_from(n).ok()),
        Some(_) => Err(bad(format!("rpm_limit: between 0 and {MAX_RPM}."))),
    }
}

pub fn tpm(v: Option<i64>) -> Result<Option<i64>, IdentityError> {
    match v {
        None => Ok(None),
        Some(n) if (0..=MAX_TPM).contains(&n) => Ok(Some(n)),
        Some(_) => Err(bad(format!("tpm_limit: between 0 and {MAX_TPM}."))),
    }
}

/// An RFC 3339 time in the future.
pub fn expires_at(v: Option<String>) -> Result<Option<DateTime<Utc>>, IdentityError> {
    let Some(s) = v else { return Ok(None) };
    let t = DateTime::parse_from_rfc3339(&s)
        .map_err(|_| bad("expires_at: an RFC 3339 time such as 2030-01-31T00:00:00Z."))?
        .with_timezone(&Utc);
    if t <= Utc::now() {
        return Err(bad("expires_at: must be in the future."));
    }
    Ok(Some(t))
}

/// Query parameters, strictly: each at most once, none unknown.
pub struct Query<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Query<'a> {
    pub fn new(pairs: &'a [(String, String)], allowed: &[&str]) -> Result<Self, IdentityError> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(format!(
                    "Unknown query parameter `{}`; allowed: {}.",
                    printable(k),
                    allowed.join(", ")
                )));
            }
            if pairs[..i].iter().any(|(p, _)| p == k) {
                return Err(bad(format!("Query parameter `{k}` given twice.")));
            }
        }
        Ok(Query { pairs })
    }

    pub fn get(&self, k: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(p, _)| p == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn number(&self, k: &str, default: i64, max: i64) -> Result<i64, IdentityError> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| bad(format!("{k}: an integer between 0 and {max}."))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_rules() {
        assert!(username("alice.b-1@x").is_ok());
        assert!(username("a'b").is_err() && username("").is_err());
        assert!(name("line\r\nInjected: 1").is_err());
        assert!(name("'; DROP TABLE users;--").is_ok());
        assert!(password("short", "password").is_err());
        assert!(email(Some("a@b.c".into())).is_ok() && email(Some("a b@c.d".into())).is_err());
        assert!(models(vec!["qwen*".into(), "qwen*".into()]).map(|m| m.len()) == Ok(1));
        assert!(rpm(Some(-1)).is_err() && tpm(Some(5)) == Ok(Some(5)));
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct B {
            #[allow(dead_code)]
            a: String,
        }
        assert!(parse::<B>(&Bytes::from_static(br#"{"a":"x","b":1}"#)).is_err());
        assert!(parse::<B>(&Bytes::from_static(br#"{"a":1}"#)).is_err());
        // Positional fields are not accepted.
        assert!(parse::<B>(&Bytes::from_static(br#"["x"]"#)).is_err());
        assert!(parse::<B>(&Bytes::from_static(br#" {"a":"x"} "#)).is_ok());
    }
}
