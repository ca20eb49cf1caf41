//! The request hot path: route, forward with retries before the first byte, then answer
//! (whole body) or hand the stream to a per-request stream actor.
//!
//! Retry rule (one for the whole project): only before the first byte reached the client, on
//! a different server, for connect errors, resets before headers, time to first byte
//! exceeded, 502/503/504, and 404 model-not-found; at most `MAX_ATTEMPTS`, jittered backoff
//! 25–250 ms, within the [`retry::RetryBudget`].

pub mod prepare;
pub mod pump;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use llmmux_actors::table::{BackendId, InFlightGuard, PickError};
use rand::Rng;
use tracing::{debug, warn};

use crate::app::AppState;
use crate::http::body::{full, Body};
use crate::http::error::{json_response, normalize_upstream_error, GatewayError};
use crate::toolcall::{self, Family, RequestTools};

/// Largest non-streaming upstream answer the gateway will hold.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Rerank,
    Score,
    Tokenize,
    Detokenize,
    Pooling,
    Classify,
}

impl Endpoint {
    pub fn from_path(p: &str) -> Option<Self> {
        Some(match p {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/responses" => Endpoint::Responses,
            "/v1/rerank" => Endpoint::Rerank,
            "/v1/score" => Endpoint::Score,
            "/tokenize" => Endpoint::Tokenize,
            "/detokenize" => Endpoint::Detokenize,
            "/pooling" => Endpoint::Pooling,
            "/classify" => Endpoint::Classify,
            _ => return None,
        })
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Rerank => "/v1/rerank",
            Endpoint::Score => "/v1/score",
            Endpoint::Tokenize => "/tokenize",
            Endpoint::Detokenize => "/detokenize",
            Endpoint::Pooling => "/pooling",
            Endpoint::Classify => "/classify",
        }
    }

    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Responses
        )
    }

    /// Streams whose chunks are OpenAI chat/completion chunks (usage chunk, tool repair).
    pub fn reports_usage(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }
}

/// How one attempt failed before anything reached the client.
#[derive(Debug)]
enum AttemptError {
    Connect,
    Timeout,
    /// Connection closed or reset before a usable response started.
    Reset,
    /// 502/503/504 from the server.
    Unavailable(StatusCode, Bytes),
    /// 404 for a model the registry believed the server serves.
    ModelMissing(Bytes),
}

impl AttemptError {
    fn server_side(&self) -> bool {
        !matches!(self, AttemptError::ModelMissing(_))
    }

    fn into_response(self) -> Response<Body> {
        match self {
            AttemptError::Connect | AttemptError::Reset => {
                GatewayError::UpstreamFailed.into_response()
            }
            AttemptError::Timeout => GatewayError::UpstreamTimeout.into_response(),
            AttemptError::Unavailable(s, b) => upstream_error_response(s, &b),
            AttemptError::ModelMissing(b) => upstream_error_response(StatusCode::NOT_FOUND, &b),
        }
    }
}

fn upstream_error_response(status: StatusCode, body: &[u8]) -> Response<Body> {
    let mut resp = json_response(status, &normalize_upstream_error(status, body));
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5));
    }
    resp
}

fn classify(e: &reqwest::Error) -> AttemptError {
    if e.is_timeout() {
        AttemptError::Timeout
    } else if e.is_connect() {
        AttemptError::Connect
    } else {
        AttemptError::Reset
    }
}

/// A started upstream response, ready to be relayed.
struct Started {
    guard: InFlightGuard,
    status: StatusCode,
    headers: HeaderMap,
    payload: Payload,
}

enum Payload {
    /// A stream whose first chunk was read (it proves the stream is alive).
    Stream {
        resp: reqwest::Response,
        first: Bytes,
    },
    /// Body not read yet.
    Pending(reqwest::Response),
    /// Body already read (error answers).
    Read(Bytes),
}

pub async fn forward(
    state: Arc<AppState>,
    ep: Endpoint,
    req: Request<Incoming>,
    rid: String,
) -> Result<Response<Body>, GatewayError> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(GatewayError::ShuttingDown);
    }
    let permit = state
        .concurrency
        .clone()
        .try_acquire_owned()
        .map_err(|_| GatewayError::Overloaded)?;
    let active = state.retry.enter();
    let (parts, body) = req.into_parts();
    let raw = prepare::read_body(
        body,
        &parts.headers,
        state.cfg.max_body_bytes,
        state.cfg.body_read_timeout,
    )
    .await?;
    let p = prepare::prepare(ep, raw, &state.cfg.model_aliases)?;
    let span = tracing::Span::current();
    span.record("model", p.model.as_str());
    span.record("stream", p.stream);
    if !state.registry.table.load().knows_model(&p.served) {
        return Err(GatewayError::ModelNotFound(p.model));
    }
    let headers = prepare::upstream_headers(
        &parts.headers,
        &rid,
        state.cfg.vllm_api_key.as_ref().map(|s| s.expose()),
    );
    let started = match attempts(&state, ep, &p, &headers).await {
        Ok(s) => s,
        Err(Ok(resp)) => return Ok(resp),
        Err(Err(e)) => return Err(e),
    };
    span.record("backend", started.guard.backend().id.as_str());
    let repair = if ep == Endpoint::Chat {
        let family = state.cfg.tool_call_formats.family_for(&p.served);
        (family != Family::None)
            .then(|| RequestTools::from_request(&p.json).map(|t| (family, t)))
            .flatten()
    } else {
        None
    };
    let backend = started.guard.backend().clone();
    let resp = match started.payload {
        Payload::Stream { resp, first } => {
            let guards = (started.guard, permit, active);
            let relay = pump::Relay {
                ep,
                rid,
                client_wants_usage: p.client_wants_usage,
                repair,
            };
            return Ok(
                pump::start_stream(&state, relay, resp, first, &started.headers, guards).await,
            );
        }
        Payload::Read(body) => {
            backend.record_outcome(started.status.is_server_error());
            return Ok(upstream_error_response(started.status, &body));
        }
        Payload::Pending(resp) => resp,
    };
    if !started.status.is_success() {
        backend.record_outcome(started.status.is_server_error());
        let body = read_all(resp, state.cfg.request_timeout)
            .await
            .unwrap_or_default();
        return Ok(upstream_error_response(started.status, &body));
    }
    let body = match read_all(resp, state.cfg.request_timeout).await {
        Ok(b) => b,
        Err(e) => {
            backend.record_outcome(true);
            return Ok(e.into_response());
        }
    };
    backend.record_outcome(false);
    let body = match repair {
        Some((family, tools)) => repair_body(&state, body, family, &tools),
        None => body,
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = started.status;
    let ct = started
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    drop((started.guard, permit));
    Ok(resp)
}

fn repair_body(state: &AppState, body: Bytes, family: Family, tools: &RequestTools) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    toolcall::repair_response(
        &mut v,
        family,
        tools,
        &state.cfg.tool_call_options,
        &state.toolcalls,
    );
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

async fn read_all(resp: reqwest::Response, timeout: Duration) -> Result<Bytes, AttemptError> {
    let mut stream = resp.bytes_stream();
    let collect = async {
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(&e))?;
            if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(AttemptError::Reset);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| AttemptError::Timeout)?
}

/// Try servers until one starts a usable response. `Err(Ok(resp))` is a final upstream
/// answer to relay as is; `Err(Err(e))` a gateway error.
async fn attempts(
    state: &AppState,
    ep: Endpoint,
    p: &prepare::Prepared,
    headers: &HeaderMap,
) -> Result<Started, Result<Response<Body>, GatewayError>> {
    let mut exclude: Vec<BackendId> = Vec::new();
    let mut last: Option<AttemptError> = None;
    // Held through the next attempt so concurrent retries are counted against the budget.
    let mut _retry_slot = None;
    for attempt in 1..=state.cfg.max_attempts {
        let guard = match state.registry.route(&p.served, &exclude).await {
            Ok(g) => g,
            Err(e) => {
                return Err(match (last, e) {
                    (Some(prev), _) => Ok(prev.into_response()),
                    (None, PickError::UnknownModel) => {
                        Err(GatewayError::ModelNotFound(p.model.clone()))
                    }
                    (None, PickError::NoHealthy) => {
                        Err(GatewayError::NoHealthyBackend(p.model.clone()))
                    }
                    (None, PickError::AtCapacity) => Err(GatewayError::AtCapacity(p.model.clone())),
                });
            }
        };
        let backend = guard.backend().clone();
        match try_once(state, ep, p, headers, guard).await {
            Ok(started) => return Ok(started),
            Err(e) => {
                if e.server_side() {
                    backend.record_outcome(true);
                }
                warn!(backend = %backend.id, attempt, error = ?short(&e), "upstream attempt failed");
                exclude.push(backend.id.clone());
                last = Some(e);
            }
        }
        if attempt == state.cfg.max_attempts {
            break;
        }
        match state.retry.try_retry() {
            Some(slot) => _retry_slot = Some(slot),
            None => {
                debug!("retry budget exhausted");
                break;
            }
        }
        let jitter = rand::rng().random_range(25..=250);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(Ok(last.map(AttemptError::into_response).unwrap_or_else(
        || GatewayError::UpstreamFailed.into_response(),
    )))
}

fn short(e: &AttemptError) -> String {
    match e {
        AttemptError::Unavailable(s, _) => format!("status {}", s.as_u16()),
        AttemptError::ModelMissing(_) => "model not found".into(),
        other => format!("{other:?}"),
    }
}

async fn try_once(
    state: &AppState,
    ep: Endpoint,
    p: &prepare::Prepared,
    headers: &HeaderMap,
    guard: InFlightGuard,
) -> Result<Started, AttemptError> {
    let url = format!("{}{}", guard.backend().base_url, ep.path());
    let deadline = if p.stream {
        state.cfg.first_byte_timeout
    } else {
        state.cfg.request_timeout
    };
    let send = state
        .client
        .post(url)
        .headers(headers.clone())
        .body(p.body.clone())
        .send();
    let start = async {
        let mut resp = send.await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if matches!(status.as_u16(), 502..=504) {
            return Err(AttemptError::Unavailable(
                status,
                resp.bytes().await.unwrap_or_default(),
            ));
        }
        if status == StatusCode::NOT_FOUND {
            let body = resp.bytes().await.unwrap_or_default();
            let v = normalize_upstream_error(status, &body);
            if v["error"]["code"] == "model_not_found" {
                return Err(AttemptError::ModelMissing(body));
            }
            // A 404 that is not about the model (an unknown route, say) is final.
            return Ok((status, headers, Payload::Read(body)));
        }
        if p.stream && status.is_success() {
            return match resp.chunk().await {
                Ok(Some(first)) => Ok((status, headers, Payload::Stream { resp, first })),
                Ok(None) => Err(AttemptError::Reset),
                Err(e) => Err(classify(&e)),
            };
        }
        Ok((status, headers, Payload::Pending(resp)))
    };
    match tokio::time::timeout(deadline, start).await {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok((status, headers, payload))) => Ok(Started {
            guard,
            status,
            headers,
            payload,
        }),
    }
}
