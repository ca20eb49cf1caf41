//! Reading and preparing the client's request: bounded body, JSON checks, alias rewrite,
//! usage injection for streams, and the header allowlist for upstream.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::Endpoint;
use crate::error::GatewayError;

/// Request headers passed to the vLLM server; everything else (the client's Authorization,
/// cookies, hop-by-hop headers) stays here.
const FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "traceparent",
    "tracestate",
    "baggage",
];

pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(GatewayError::BodyTooLarge(max));
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge(max))
        }
        Ok(Err(_)) => Err(GatewayError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
        }),
    }
}

/// What the proxy needs to know about one request.
pub struct Prepared {
    /// Name the client used.
    pub model: String,
    /// Name the servers serve (after `MODEL_ALIASES`).
    pub served: String,
    pub stream: bool,
    /// The client asked for the usage chunk itself (otherwise it is dropped from its stream).
    pub client_wants_usage: bool,
    /// The fields tool-call repair reads (`tools`, `tool_choice`, ...), when `tools` is set.
    pub tool_fields: Option<Value>,
    pub body: Bytes,
}

pub fn prepare(
    ep: Endpoint,
    raw: Bytes,
    aliases: &std::collections::BTreeMap<String, String>,
) -> Result<Prepared, GatewayError> {
    let mut json: Value = serde_json::from_slice(&raw)
        .map_err(|e| GatewayError::InvalidJson(short_json_error(&e)))?;
    let Some(obj) = json.as_object_mut() else {
        return Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        _ => {
            return Err(GatewayError::InvalidRequest {
                message: "You must provide a model parameter.".into(),
                param: Some("model"),
            })
        }
    };
    if ep == Endpoint::Chat && !obj.get("messages").is_some_and(Value::is_array) {
        return Err(GatewayError::InvalidRequest {
            message: "'messages' must be a list of messages.".into(),
            param: Some("messages"),
        });
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && ep.can_stream(),
        Some(_) => {
            return Err(GatewayError::InvalidRequest {
                message: "'stream' must be a boolean.".into(),
                param: Some("stream"),
            })
        }
    };
    if !matches!(
        obj.get("stream_options"),
        None | Some(Value::Null) | Some(Value::Object(_))
    ) {
        return Err(GatewayError::InvalidRequest {
            message: "'stream_options' must be an object.".into(),
            param: Some("stream_options"),
        });
    }
    let served = aliases
        .get(&model)
        .cloned()
        .unwrap_or_else(|| model.clone());
    let mut modified = false;
    if served != model {
        obj.insert("model".into(), Value::String(served.clone()));
        modified = true;
    }
    let mut client_wants_usage = false;
    if stream && ep.reports_usage() {
        let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
        if opts.is_null() {
            *opts = json!({});
        }
        client_wants_usage = opts.get("include_usage") == Some(&Value::Bool(true));
        if !client_wants_usage {
            opts["include_usage"] = Value::Bool(true);
            modified = true;
        }
    }
    let tool_fields = obj.contains_key("tools").then(|| {
        let mut m = serde_json::Map::new();
        for k in [
            "tools",
            "tool_choice",
            "response_format",
            "structured_outputs",
            "guided_json",
        ] {
            if let Some(v) = obj.get(k) {
                m.insert(k.to_owned(), v.clone());
            }
        }
        Value::Object(m)
    });
    let body = if modified {
        Bytes::from(serde_json::to_vec(&json).map_err(|_| GatewayError::Internal)?)
    } else {
        raw
    };
    Ok(Prepared {
        model,
        served,
        stream,
        client_wants_usage,
        tool_fields,
        body,
    })
}

fn short_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    msg.chars().take(200).collect()
}

/// Headers for the upstream request: the allowlisted client headers and the request id.
/// Credentials and extra headers come per server (see `upstream::ServerExt`).
pub fn upstream_headers(client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        if let Some(v) = client.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(HeaderName::from_static("x-request-id"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn usage_is_injected_for_streams_only_and_remembered() {
        let none = BTreeMap::new();
        let p = prepare(
            Endpoint::Chat,
            Bytes::from_static(
                br#"{"model":"m","messages":[],"stream":true,"seed":18446744073709551615}"#,
            ),
            &none,
        )
        .expect("valid");
        assert!(p.stream && !p.client_wants_usage);
        let sent: Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert!(String::from_utf8_lossy(&p.body).contains("18446744073709551615"));
        let raw = Bytes::from_static(br#"{"model":"m","messages":[], "temperature": 0.70}"#);
        let p = prepare(Endpoint::Chat, raw.clone(), &none).expect("valid");
        assert_eq!(p.body, raw, "untouched bodies pass byte for byte");
        let p = prepare(Endpoint::Chat, Bytes::from_static(br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#), &none).expect("valid");
        assert!(p.client_wants_usage);
    }

    #[test]
    fn aliases_and_errors() {
        let aliases: BTreeMap<String, String> = [("pub".to_string(), "served".to_string())].into();
        let p = prepare(
            Endpoint::Completions,
            Bytes::from_static(br#"{"model":"pub","prompt":"x"}"#),
            &aliases,
        )
        .expect("valid");
        assert_eq!(p.served, "served");
        assert!(matches!(
            prepare(Endpoint::Chat, Bytes::from_static(b"{nope"), &aliases),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(
            prepare(Endpoint::Chat, Bytes::from_static(b"[1]"), &aliases),
            Err(GatewayError::InvalidRequest { .. })
        ));
        assert!(matches!(
            prepare(
                Endpoint::Chat,
                Bytes::from_static(br#"{"model":"m"}"#),
                &aliases
            ),
            Err(GatewayError::InvalidRequest {
                param: Some("messages"),
                ..
            })
        ));
        let deep = "[".repeat(10_000);
        assert!(prepare(Endpoint::Chat, Bytes::from(deep), &aliases).is_err());
        for (body, param) in [
            (
                &br#"{"model":"m","messages":[],"stream":"yes"}"#[..],
                "stream",
            ),
            (br#"{"model":"m","messages":[],"stream":1}"#, "stream"),
            (
                br#"{"model":"m","messages":[],"stream":true,"stream_options":"x"}"#,
                "stream_options",
            ),
        ] {
            match prepare(Endpoint::Chat, Bytes::from_static(body), &aliases) {
                Err(GatewayError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                _ => panic!("{} accepted", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn client_authorization_never_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer client"));
        h.insert("cookie", HeaderValue::from_static("a=b"));
        h.insert("user-agent", HeaderValue::from_static("ua"));
        let out = upstream_headers(&h, "rid");
        assert!(out.get("authorization").is_none() && out.get("cookie").is_none());
        assert_eq!(
            out.get("user-agent").map(|v| v.as_bytes()),
            Some(&b"ua"[..])
        );
    }
}
