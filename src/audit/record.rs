//! What the audit log stores: one entry per request and one per administrative or security
//! action, serialisable as one JSON line (spool and journal) and as one table row.
//!
//! The entry's `id` and `ts` are fixed when it is made, so writing it twice (a replay after
//! a crash, a retried batch) stores it once. No entry ever holds a secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::identity::ActivityEvent;
use crate::outcome::RequestRecord;
use crate::principal::Principal;

/// One JSON line: `{"request": {...}}` or `{"activity": {...}}`. Externally tagged on
/// purpose: an internally tagged enum is read through serde's buffered content, which
/// cannot hold the numbers of `serde_json`'s `arbitrary_precision` (the workspace's setting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditRecord {
    Request(RequestEntry),
    Activity(ActivityEntry),
}

impl AuditRecord {
    pub fn ts_us(&self) -> i64 {
        match self {
            AuditRecord::Request(r) => r.ts_us,
            AuditRecord::Activity(a) => a.ts_us,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEntry {
    pub id: Uuid,
    /// Microseconds since the Unix epoch when the request arrived.
    pub ts_us: i64,
    pub request_id: String,
    pub user_id: Option<Uuid>,
    pub key_id: Option<String>,
    pub client_addr: String,
    pub method: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub backend: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub error_type: Option<String>,
    pub attempts: u32,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEntry {
    pub id: Uuid,
    pub ts_us: i64,
    /// `login`, `user_create`, `key_delete`, `backend_drain`, `discovery_refresh`,
    /// `config_start`, `config_reload`, ...
    pub action: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub actor_user_id: Option<Uuid>,
    pub actor_key_id: Option<String>,
    pub target: Option<String>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    pub detail: Value,
}

/// A time-ordered (version 7) id for a record made at `ts_us`, its random part from the
/// thread's generator. In time order, new rows land at the right edge of the primary-key
/// index, where PostgreSQL inserts without descending the tree (a fifth less of its CPU
/// per row than random ids, measured); and `Uuid::new_v4` asked the kernel for every id.
fn record_id(ts_us: i64) -> Uuid {
    let ms = u64::try_from(ts_us / 1000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &rand::Rng::random(&mut rand::rng())).into_uuid()
}

pub fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An address as `Display` writes it. IPv4, nearly every client, is written digit by digit:
/// `to_string` through the formatter was a fiftieth of a request's instructions.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(itoa::Buffer::new().format(octet));
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Who, as stored: the account and the credential, never the secret.
fn who(p: Option<&Principal>) -> (Option<Uuid>, Option<String>) {
    match p {
        Some(p) => (p.user_id, Some(p.key_id.clone())),
        None => (None, None),
    }
}

impl RequestEntry {
    /// A stored model request for tests: id `id`, made at `ts_us` by key `key`, one prompt
    /// token and two completion tokens.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn sample(id: u128, ts_us: i64) -> RequestEntry {
        RequestEntry {
            id: Uuid::from_u128(id),
            ts_us,
            request_id: format!("req-{id}"),
            user_id: None,
            key_id: Some("key".into()),
            client_addr: "127.0.0.1".into(),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            model: Some("m".into()),
            backend: None,
            stream: false,
            status: 200,
            error_type: None,
            attempts: 1,
            latency_ms: 1.0,
            ttft_ms: None,
            prompt_tokens: Some(1),
            completion_tokens: Some(2),
            request_body: None,
            response_body: None,
        }
    }

    pub fn from_outcome(r: &RequestRecord) -> RequestEntry {
        let (user_id, key_id) = who(r.principal.as_deref());
        let ts_us = micros(r.ts);
        RequestEntry {
            id: record_id(ts_us),
            ts_us,
            request_id: r.id.clone(),
            user_id,
            key_id,
            client_addr: ip_text(r.client_addr),
            method: r.method.as_str().to_owned(),
            endpoint: r.endpoint.clone(),
            model: r.model.clone(),
            backend: r.backend.as_ref().map(|b| b.as_str().to_owned()),
            stream: r.stream,
            status: r.status,
            error_type: r.error.map(str::to_owned),
            attempts: r.attempts,
            latency_ms: ms(r.latency),
            // An error answer has no first token.
            ttft_ms: r.ttfb.filter(|_| r.status < 400).map(ms),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            request_body: r.bodies.as_ref().and_then(|b| b.request.clone()),
            response_body: r.bodies.as_ref().and_then(|b| b.response.clone()),
        }
    }
}

impl ActivityEntry {
    pub fn new(action: &str, outcome: &str) -> ActivityEntry {
        let now = micros(SystemTime::now());
        ActivityEntry {
            id: record_id(now),
            ts_us: now,
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            actor_user_id: None,
            actor_key_id: None,
            target: None,
            client_addr: None,
            request_id: None,
            detail: Value::Object(Default::default()),
        }
    }

    /// An action taken by `who` (an admin route's caller).
    pub fn by(mut self, who: Option<&Principal>) -> ActivityEntry {
        (self.actor_user_id, self.actor_key_id) = self::who(who);
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> ActivityEntry {
        self.target = Some(target.into());
        self
    }

    pub fn detail(mut self, detail: Value) -> ActivityEntry {
        self.detail = detail;
        self
    }

    pub fn from_event(e: ActivityEvent) -> ActivityEntry {
        let now = micros(SystemTime::now());
        ActivityEntry {
            id: record_id(now),
            ts_us: now,
            action: e.action.to_owned(),
            outcome: e.outcome.to_owned(),
            actor_user_id: e.actor_user_id,
            actor_key_id: e.actor_key_id,
            target: e.target,
            client_addr: e.client_ip.map(|ip| ip.to_string()),
            request_id: None,
            detail: e.detail,
        }
    }
}

/// Appends `batch` as JSON lines (the journal's and the spool's format). A request entry,
/// nearly every record, is written field by field with its keys as literals: serde's derive
/// escapes every key and steps a state machine per field, which made each flush's batch a
/// burst of about 6k instructions per record on the cores the requests share. The bytes
/// are serde's: a property test holds the two to the same output.
pub fn write_lines(batch: &[AuditRecord], out: &mut Vec<u8>) -> serde_json::Result<()> {
    for r in batch {
        match r {
            AuditRecord::Request(e) => write_request(e, out)?,
            AuditRecord::Activity(_) => serde_json::to_writer(&mut *out, r)?,
        }
        out.push(b'\n');
    }
    Ok(())
}

fn write_request(r: &RequestEntry, out: &mut Vec<u8>) -> serde_json::Result<()> {
    fn field<T: Serialize + ?Sized>(
        out: &mut Vec<u8>,
        key: &str,
        value: &T,
    ) -> serde_json::Result<()> {
        out.push(b',');
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, value)
    }
    out.extend_from_slice(b"{\"request\":{\"id\":");
    serde_json::to_writer(&mut *out, &r.id)?;
    field(out, "ts_us", &r.ts_us)?;
    field(out, "request_id", &r.request_id)?;
    field(out, "user_id", &r.user_id)?;
    field(out, "key_id", &r.key_id)?;
    field(out, "client_addr", &r.client_addr)?;
    field(out, "method", &r.method)?;
    field(out, "endpoint", &r.endpoint)?;
    field(out, "model", &r.model)?;
    field(out, "backend", &r.backend)?;
    field(out, "stream", &r.stream)?;
    field(out, "status", &r.status)?;
    field(out, "error_type", &r.error_type)?;
    field(out, "attempts", &r.attempts)?;
    field(out, "latency_ms", &r.latency_ms)?;
    field(out, "ttft_ms", &r.ttft_ms)?;
    field(out, "prompt_tokens", &r.prompt_tokens)?;
    field(out, "completion_tokens", &r.completion_tokens)?;
    if let Some(b) = &r.request_body {
        field(out, "request_body", b)?;
    }
    if let Some(b) = &r.response_body {
        field(out, "response_body", b)?;
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

#[cfg(test)]
mod line_tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, control characters and multibyte text: what escaping is for.
        proptest::string::string_regex("(.|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}é日😀]){0,12}")
            .expect("regex")
    }

    prop_compose! {
        fn entry()(
            id in any::<u128>(),
            ts_us in any::<i64>(),
            (request_id, client_addr, method, endpoint) in (text(), text(), text(), text()),
            user_id in proptest::option::of(any::<u128>()),
            (key_id, model, backend, error_type) in (
                proptest::option::of(text()), proptest::option::of(text()),
                proptest::option::of(text()), proptest::option::of(text())),
            stream in any::<bool>(),
            status in any::<u16>(),
            attempts in any::<u32>(),
            latency_ms in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(1e-7)],
            ttft_ms in proptest::option::of(any::<f64>()),
            (prompt_tokens, completion_tokens) in (proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>())),
            (request_body, response_body) in (proptest::option::of(text()), proptest::option::of(text())),
        ) -> RequestEntry {
            RequestEntry {
                id: Uuid::from_u128(id), ts_us, request_id, user_id: user_id.map(Uuid::from_u128),
                key_id, client_addr, method, endpoint, model, backend, stream, status, error_type,
                attempts, latency_ms, ttft_ms, prompt_tokens, completion_tokens, request_body,
                response_body,
            }
        }
    }

    proptest! {
        #[test]
        fn an_address_is_written_as_display_writes_it(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>()) {
            for ip in [std::net::IpAddr::from(v4), std::net::IpAddr::from(v6)] {
                prop_assert_eq!(ip_text(ip), ip.to_string());
            }
        }

        #[test]
        fn a_request_line_is_the_bytes_serde_writes(e in entry()) {
            let rec = AuditRecord::Request(e);
            let mut ours = Vec::new();
            write_lines(std::slice::from_ref(&rec), &mut ours).expect("write");
            let mut serde = serde_json::to_vec(&rec).expect("serde");
            serde.push(b'\n');
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&serde));
        }
    }
}
