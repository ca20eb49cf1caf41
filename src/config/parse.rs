//! Parsing of single settings; every failure is recorded as a `ConfigError` naming the
//! variable, and parsing goes on so all problems are reported together.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, CorsOrigins, LogFormat, Secret};
use crate::toolcall::FormatRules;

/// One `BACKENDS` entry: a model served at a base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBackend {
    pub model: String,
    pub url: String,
}

pub(super) struct Parser<'e> {
    pub errors: &'e mut Vec<ConfigError>,
}

impl Parser<'_> {
    fn fail(&mut self, name: &str, reason: String) {
        self.errors.push(ConfigError {
            name: name.to_owned(),
            reason,
        });
    }

    pub fn num<T: FromStr + Copy>(&mut self, name: &str, raw: Option<String>, default: T) -> T {
        match raw.as_deref().map(str::trim) {
            None | Some("") => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.fail(name, format!("expected a non-negative integer, got {s:?}"));
                default
            }),
        }
    }

    pub fn ms(&mut self, name: &str, raw: Option<String>, default_ms: u64) -> Duration {
        Duration::from_millis(self.num(name, raw, default_ms))
    }

    pub fn bool(&mut self, name: &str, raw: Option<String>, default: bool) -> bool {
        match raw
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") => default,
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                self.fail(name, format!("expected true or false, got {other:?}"));
                default
            }
        }
    }

    pub fn on_full(&mut self, name: &str, raw: Option<String>) -> llmmux_actors::audit::OnFull {
        use llmmux_actors::audit::OnFull;
        match raw
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("drop") => OnFull::Drop,
            Some("reject") => OnFull::Reject,
            Some(other) => {
                self.fail(name, format!("expected drop or reject, got {other:?}"));
                OnFull::Drop
            }
        }
    }

    pub fn secrets(&mut self, raw: Option<String>) -> Vec<Secret> {
        raw.unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect()
    }

    pub fn backends(&mut self, name: &str, raw: Option<String>) -> Vec<StaticBackend> {
        match parse_backends(raw.as_deref().unwrap_or("")) {
            Ok(b) => b,
            Err(reasons) => {
                for r in reasons {
                    self.fail(name, r);
                }
                Vec::new()
            }
        }
    }

    pub fn servers(&mut self, name: &str, raw: Option<String>) -> Vec<String> {
        let mut out = Vec::new();
        for entry in raw
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match normalize_base_url(entry) {
                Ok(url) => {
                    if !out.contains(&url) {
                        out.push(url);
                    }
                }
                Err(reason) => self.fail(name, format!("{entry:?}: {reason}")),
            }
        }
        out
    }

    pub fn cors(&mut self, name: &str, raw: Option<String>) -> CorsOrigins {
        let raw = raw.unwrap_or_default();
        let items: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items == ["*"] {
            return CorsOrigins::Any;
        }
        let mut list = Vec::new();
        for item in items {
            if item == "*" {
                self.fail(name, "* cannot be combined with other origins".into());
            } else if item.eq_ignore_ascii_case("null") {
                self.fail(name, "the null origin cannot be allowed".into());
            } else if !(item.starts_with("http://") || item.starts_with("https://"))
                || item
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .contains('/')
            {
                self.fail(
                    name,
                    format!("{item:?} is not an origin like https://app.example.com"),
                );
            } else {
                list.push(item.to_ascii_lowercase());
            }
        }
        CorsOrigins::List(list)
    }

    pub fn aliases(&mut self, name: &str, raw: Option<String>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for entry in raw
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match entry.split_once('=') {
                Some((a, t)) if !a.trim().is_empty() && !t.trim().is_empty() => {
                    out.insert(a.trim().to_owned(), t.trim().to_owned());
                }
                _ => self.fail(name, format!("{entry:?} is not public-name=served-name")),
            }
        }
        out
    }

    pub fn log_format(&mut self, name: &str, raw: Option<String>) -> LogFormat {
        match raw.as_deref().map(str::trim) {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.fail(name, format!("expected text or json, got {other:?}"));
                LogFormat::Text
            }
        }
    }

    pub fn route_via(&mut self, name: &str, raw: Option<String>) -> bool {
        match raw.as_deref().map(str::trim) {
            None | Some("") | Some("registry") => true,
            Some("snapshot") => false,
            Some(other) => {
                self.fail(
                    name,
                    format!("expected registry or snapshot, got {other:?}"),
                );
                false
            }
        }
    }

    pub fn tool_formats(&mut self, name: &str, raw: Option<String>) -> FormatRules {
        match FormatRules::parse(raw.as_deref().unwrap_or("")) {
            Ok(r) => r,
            Err(e) => {
                self.fail(name, e.to_string());
                FormatRules::default()
            }
        }
    }
}

/// `host:port`, `http://host:port` or `https://host:port[/prefix]` → canonical base URL
/// without a trailing slash.
pub fn normalize_base_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = s.strip_prefix("https://") {
        ("https", r)
    } else if s.contains("://") {
        return Err("only http:// and https:// are supported".into());
    } else {
        ("http", s)
    };
    let rest = rest.trim_end_matches('/');
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("missing host".into());
    }
    if authority.contains('@')
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("invalid host".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid port {p:?}")),
            Ok(_) => {}
        }
    }
    Ok(format!("{scheme}://{authority}{path}"))
}

/// `BACKENDS`: `model:host:port` (split from the right, so a model id may contain `:`) or
/// `model=http(s)://host:port`, comma separated.
pub fn parse_backends(raw: &str) -> Result<Vec<StaticBackend>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = if let Some(i) = entry.find("=http://").or_else(|| entry.find("=https://")) {
            let (model, url) = (&entry[..i], &entry[i + 1..]);
            normalize_base_url(url).map(|url| (model.trim().to_owned(), url))
        } else {
            let mut parts = entry.rsplitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(port), Some(host), Some(model)) => {
                    normalize_base_url(&format!("{host}:{port}"))
                        .map(|url| (model.trim().to_owned(), url))
                }
                _ => Err("expected model:host:port or model=http://host:port".into()),
            }
        };
        match parsed {
            Ok((model, _)) if model.is_empty() => errors.push(format!("{entry:?}: empty model id")),
            Ok((model, url)) => {
                let b = StaticBackend { model, url };
                if !out.contains(&b) {
                    out.push(b);
                }
            }
            Err(reason) => errors.push(format!("{entry:?}: {reason}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
