//! Reading and preparing the client's request: bounded body (copied at most once), JSON
//! checks, alias rewrite, usage injection for streams (both by splicing, see
//! [`request_scan`]), and the header allowlist for upstream.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::request_scan::{self, Field, Rewrite, ScanError};
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
    match tokio::time::timeout(timeout, collect(body, declared, max)).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(Collect::TooLarge)) => Err(GatewayError::BodyTooLarge(max)),
        Ok(Err(Collect::Read(_))) => Err(GatewayError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
        }),
    }
}

/// Why a body could not be collected.
#[derive(Debug)]
pub enum Collect<E> {
    Read(E),
    TooLarge,
}

/// A body (a client's request, a server's whole answer) in one buffer, copied at most once:
/// a body that arrives in one frame is kept as it came, a longer one goes into a buffer
/// sized from Content-Length (hyper enforces that length, so the buffer never grows).
/// `collect()` would hold the frames and then copy them: twice the body at the peak.
pub async fn collect<B>(
    mut body: B,
    declared: Option<u64>,
    max: usize,
) -> Result<Bytes, Collect<B::Error>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    enum Acc {
        Empty,
        One(Bytes),
        Many(Vec<u8>),
    }
    let expected = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
    let mut acc = Acc::Empty;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Collect::Read)?;
        // Trailers carry nothing the gateway forwards.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len += data.len();
        if len > max {
            return Err(Collect::TooLarge);
        }
        acc = match acc {
            Acc::Empty => Acc::One(data),
            Acc::One(first) => {
                let mut buf = Vec::with_capacity(expected.max(len));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                Acc::Many(buf)
            }
            Acc::Many(mut buf) => {
                buf.extend_from_slice(&data);
                Acc::Many(buf)
            }
        };
    }
    Ok(match acc {
        Acc::Empty => Bytes::new(),
        Acc::One(b) => b,
        Acc::Many(buf) => Bytes::from(buf),
    })
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

/// Check the body and rewrite what the gateway must (served model name, usage chunk for
/// streams) without parsing it into a document: see [`request_scan`].
pub fn prepare(
    ep: Endpoint,
    raw: Bytes,
    aliases: &std::collections::BTreeMap<String, String>,
) -> Result<Prepared, GatewayError> {
    let scan = request_scan::scan(&raw, ep == Endpoint::Chat).map_err(scan_error)?;
    let model = scan.model().to_owned();
    let stream = scan.stream() && ep.can_stream();
    let served = aliases
        .get(&model)
        .cloned()
        .unwrap_or_else(|| model.clone());
    let inject_usage = stream && ep.reports_usage();
    let client_wants_usage = inject_usage && scan.include_usage();
    let body = scan.rewrite(&Rewrite {
        model: Some(&served),
        include_usage: inject_usage && !client_wants_usage,
    });
    let tool_fields = scan.tool_fields().map_err(scan_error)?;
    Ok(Prepared {
        model,
        served,
        stream,
        client_wants_usage,
        tool_fields,
        body,
    })
}

/// The client-facing error for a rejected body; messages as before the scanner existed.
fn scan_error(e: ScanError) -> GatewayError {
    let invalid = |message: String, param| GatewayError::InvalidRequest { message, param };
    match e {
        ScanError::Json(why) => GatewayError::InvalidJson(why),
        ScanError::TooDeep => GatewayError::InvalidJson(format!(
            "nesting deeper than {} levels",
            request_scan::MAX_DEPTH
        )),
        ScanError::NotAnObject => invalid("The request body must be a JSON object.".into(), None),
        ScanError::Duplicate(path) => invalid(
            format!("The key '{path}' appears more than once in the request body."),
            path.split('.').next(),
        ),
        ScanError::Invalid(field) => invalid(
            match field {
                Field::Model => "You must provide a model parameter.",
                Field::Messages => "'messages' must be a list of messages.",
                Field::Stream => "'stream' must be a boolean.",
                Field::StreamOptions => "'stream_options' must be an object.",
            }
            .into(),
            Some(field.name()),
        ),
    }
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
    fn duplicates_and_depth_bombs_are_client_errors() {
        let none = BTreeMap::new();
        match prepare(
            Endpoint::Chat,
            Bytes::from_static(br#"{"model":"a","messages":[],"model":"b"}"#),
            &none,
        ) {
            Err(GatewayError::InvalidRequest {
                param: Some("model"),
                ..
            }) => {}
            _ => panic!("duplicate model accepted"),
        }
        let bomb = format!(r#"{{"model":"m","messages":{}}}"#, "[".repeat(1_000_000));
        assert!(matches!(
            prepare(Endpoint::Chat, Bytes::from(bomb), &none),
            Err(GatewayError::InvalidJson(_))
        ));
    }

    fn frames(
        parts: &[&'static [u8]],
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames: Vec<Result<_, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_are_copied_at_most_once_and_bounded() {
        let one: &'static [u8] = br#"{"model":"m"}"#;
        let got = collect(frames(&[one]), Some(one.len() as u64), 100)
            .await
            .expect("read");
        assert_eq!(got.as_ptr(), one.as_ptr(), "a one-frame body is not copied");
        let got = collect(
            frames(&[b"{\"mo", b"", b"del\":", b"\"m\"}"]),
            Some(13),
            100,
        )
        .await
        .expect("read");
        assert_eq!(&got[..], one);
        let got = collect(frames(&[b"{\"mo", b"del\":\"m\"}"]), None, 100)
            .await
            .expect("read without a length");
        assert_eq!(&got[..], one);
        assert!(matches!(
            collect(frames(&[b"{\"mo", b"del\":\"m\"}"]), None, 12).await,
            Err(Collect::TooLarge)
        ));
        assert_eq!(
            collect(frames(&[]), Some(0), 10).await.ok(),
            Some(Bytes::new())
        );
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
