//! The one mapping from gateway failures to HTTP: every error leaves as an OpenAI-shaped
//! body `{"error":{"message","type","param","code"}}` with the right status. Messages are
//! written here, never copied from internal errors, so no backend address, panic text or
//! internal detail reaches a client.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{full, Body};

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("unknown route")]
    UnknownRoute,
    #[error("no such {what}")]
    NotFound { what: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    /// A feature this deployment has not configured.
    #[error("not enabled: {0}")]
    NotEnabled(&'static str),
    /// The credential may not use this model.
    #[error("model not allowed")]
    ModelNotAllowed(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("request body too large")]
    BodyTooLarge(usize),
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid request: {message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("gateway overloaded")]
    Overloaded,
    #[error("all servers for the model are at capacity")]
    AtCapacity(String),
    #[error("no healthy server for the model")]
    NoHealthyBackend(String),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream failed")]
    UpstreamFailed,
    #[error("upstream server found dead")]
    UpstreamDown,
    #[error("upstream sent an invalid stream")]
    UpstreamProtocol,
    #[error("stream cancelled")]
    StreamCancelled,
    #[error("shutting down")]
    ShuttingDown,
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("internal error")]
    Internal,
    /// 401 with a specific code (`token_expired`, `invalid_credentials`, ...).
    #[error("authentication failed: {code}")]
    AuthFailed {
        code: &'static str,
        message: &'static str,
    },
    /// 429 from a per-key limit or the login throttle, with `x-ratelimit-*` headers.
    #[error("rate limited")]
    RateLimited {
        retry_after_secs: u64,
        headers: crate::identity::limits::LimitHeaders,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthorized | AuthFailed { .. } => StatusCode::UNAUTHORIZED,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Forbidden(_) => StatusCode::FORBIDDEN,
            UnknownRoute | ModelNotFound(_) | NotFound { .. } => StatusCode::NOT_FOUND,
            Conflict(_) => StatusCode::CONFLICT,
            NotEnabled(_) => StatusCode::NOT_FOUND,
            ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            InvalidJson(_) | InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            AtCapacity(_) => StatusCode::TOO_MANY_REQUESTS,
            Overloaded | NoHealthyBackend(_) | ShuttingDown | Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamFailed | UpstreamDown | UpstreamProtocol => StatusCode::BAD_GATEWAY,
            StreamCancelled => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying, for the statuses that invite it.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => Some(u32::try_from(*retry_after_secs).unwrap_or(u32::MAX)),
            GatewayError::Overloaded | GatewayError::AtCapacity(_) => Some(1),
            GatewayError::NoHealthyBackend(_)
            | GatewayError::ShuttingDown
            | GatewayError::Unavailable(_) => Some(5),
            _ => None,
        }
    }

    /// `(type, code, param, message)` for the OpenAI envelope.
    fn parts(&self) -> (&'static str, &'static str, Option<&'static str>, String) {
        use GatewayError::*;
        match self {
            Unauthorized => (
                "invalid_request_error",
                "invalid_api_key",
                None,
                "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.".into(),
            ),
            Forbidden(why) => ("permission_denied", "forbidden", None, (*why).into()),
            UnknownRoute => (
                "invalid_request_error",
                "not_found",
                None,
                "Unknown route.".into(),
            ),
            NotFound { what, id } => (
                "invalid_request_error",
                "not_found",
                Some("id"),
                format!("No {what} with id `{}`.", printable(id)),
            ),
            Conflict(why) => ("invalid_request_error", "conflict", None, printable(why)),
            NotEnabled(why) => ("invalid_request_error", "not_enabled", None, (*why).into()),
            ModelNotAllowed(m) => (
                "permission_denied",
                "model_not_allowed",
                Some("model"),
                format!("This credential may not use the model `{}`.", printable(m)),
            ),
            MethodNotAllowed => (
                "invalid_request_error",
                "method_not_allowed",
                None,
                "Method not allowed on this route.".into(),
            ),
            ModelNotFound(m) => (
                "invalid_request_error",
                "model_not_found",
                Some("model"),
                format!("The model `{}` does not exist.", printable(m)),
            ),
            BodyTooLarge(max) => (
                "invalid_request_error",
                "request_too_large",
                None,
                format!("Request body exceeds the limit of {max} bytes."),
            ),
            BodyTimeout => (
                "invalid_request_error",
                "request_timeout",
                None,
                "The request body was not received in time.".into(),
            ),
            InvalidJson(why) => (
                "invalid_request_error",
                "invalid_json",
                None,
                format!("The request body is not valid JSON: {why}"),
            ),
            InvalidRequest { message, param } => (
                "invalid_request_error",
                "invalid_request",
                *param,
                message.clone(),
            ),
            Overloaded => (
                "server_error",
                "overloaded",
                None,
                "The gateway is at its concurrency limit; retry shortly.".into(),
            ),
            AtCapacity(m) => (
                "requests",
                "rate_limit_exceeded",
                None,
                format!(
                    "All servers for `{}` are at capacity; retry shortly.",
                    printable(m)
                ),
            ),
            NoHealthyBackend(m) => (
                "server_error",
                "no_healthy_backend",
                None,
                format!(
                    "No healthy server is available for `{}`; retry shortly.",
                    printable(m)
                ),
            ),
            UpstreamTimeout => (
                "server_error",
                "upstream_timeout",
                None,
                "The model server did not answer in time.".into(),
            ),
            UpstreamFailed => (
                "server_error",
                "upstream_error",
                None,
                "The model server failed to answer.".into(),
            ),
            ShuttingDown => (
                "server_error",
                "shutting_down",
                None,
                "The gateway is shutting down.".into(),
            ),
            Unavailable(why) => ("server_error", "unavailable", None, (*why).into()),
            UpstreamDown => (
                "server_error",
                "upstream_down",
                None,
                "The model server stopped answering its health checks.".into(),
            ),
            UpstreamProtocol => (
                "server_error",
                "upstream_invalid_stream",
                None,
                "The model server sent an invalid stream.".into(),
            ),
            StreamCancelled => (
                "server_error",
                "stream_cancelled",
                None,
                "The stream was cancelled by the gateway (shutdown or internal failure).".into(),
            ),
            Internal => (
                "server_error",
                "internal_error",
                None,
                "Internal gateway error.".into(),
            ),
            AuthFailed { code, message } => {
                ("invalid_request_error", code, None, (*message).into())
            }
            RateLimited { .. } => (
                "requests",
                "rate_limit_exceeded",
                None,
                "Rate limit exceeded; retry after the time in Retry-After.".into(),
            ),
        }
    }

    /// The `code` of the OpenAI envelope, also the error kind of the outcome record.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    pub fn body_json(&self) -> serde_json::Value {
        let (ty, code, param, message) = self.parts();
        json!({"error": {"message": message, "type": ty, "param": param, "code": code}})
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_response(self.status(), &self.body_json());
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let GatewayError::RateLimited { headers, .. } = &self {
            for (name, value) in headers {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"llmmux\""),
            );
        }
        resp
    }

    /// The terminal SSE events for a stream that already started: one error event, then `[DONE]`.
    pub fn sse_terminal(&self) -> Bytes {
        sse_error_frames(&self.body_json())
    }
}

/// Frames for an in-band stream error followed by `[DONE]`.
pub fn sse_error_frames(error_body: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {error_body}\n\ndata: [DONE]\n\n"))
}

/// Keep client-supplied names readable and short inside messages.
fn printable(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    clean
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Normalise an upstream (vLLM) error body to the OpenAI envelope (protocol.md 2.5).
pub fn normalize_upstream_error(status: StatusCode, body: &[u8]) -> serde_json::Value {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let source = parsed.as_ref().and_then(|v| {
        if let Some(e) = v.get("error").filter(|e| e.is_object()) {
            Some(e.clone())
        } else if v.get("message").is_some() {
            Some(v.clone())
        } else {
            v.get("detail").map(|d| json!({"message": d.as_str().map(str::to_owned).unwrap_or_else(|| d.to_string())}))
        }
    });
    let message = source
        .as_ref()
        .and_then(|s| s.get("message"))
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let t = text.trim();
            if t.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("upstream error")
                    .to_owned()
            } else {
                t.chars().take(1000).collect()
            }
        });
    let param = source
        .as_ref()
        .and_then(|s| s.get("param"))
        .filter(|p| p.is_string())
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let ty = match status.as_u16() {
        400 | 401 | 404 | 413 | 422 => "invalid_request_error",
        403 => "permission_denied",
        429 => "requests",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let code = match source.as_ref().and_then(|s| s.get("code")) {
        Some(serde_json::Value::String(s)) => json!(s),
        _ if status == StatusCode::NOT_FOUND && param.as_str() == Some("model") => {
            json!("model_not_found")
        }
        _ if message.contains("maximum context length") => json!("context_length_exceeded"),
        _ => serde_json::Value::Null,
    };
    json!({"error": {"message": message, "type": ty, "param": param, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_shapes_are_normalized() {
        let current = br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#;
        let v = normalize_upstream_error(StatusCode::NOT_FOUND, current);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let legacy = br#"{"object":"error","message":"This model's maximum context length is 8 tokens.","type":"BadRequestError","param":null,"code":400}"#;
        let v = normalize_upstream_error(StatusCode::BAD_REQUEST, legacy);
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        let fastapi = br#"{"detail":"Not Found"}"#;
        assert_eq!(
            normalize_upstream_error(StatusCode::NOT_FOUND, fastapi)["error"]["message"],
            "Not Found"
        );
        let junk = b"<html>oops</html>";
        let v = normalize_upstream_error(StatusCode::BAD_GATEWAY, junk);
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], serde_json::Value::Null);
    }

    #[test]
    fn every_error_is_openai_shaped() {
        for e in [
            GatewayError::Unauthorized,
            GatewayError::Overloaded,
            GatewayError::ModelNotFound("m".into()),
            GatewayError::Internal,
        ] {
            let v = e.body_json();
            for k in ["message", "type", "param", "code"] {
                assert!(v["error"].get(k).is_some(), "{e:?} lacks {k}");
            }
        }
    }
}
