//! The request hot path: read and check the body, route, forward with retries before the
//! first byte, then answer (whole body) or hand the stream to a per-request stream actor.
//!
//! Retry rule (one for the whole project): only before the first byte reached the client, on
//! a different server, for connect errors, resets, time to response headers exceeded,
//! 502/503/504, 404 model-not-found, and a server found dead by its health check while the
//! request waited on it; at most `MAX_ATTEMPTS`, jittered backoff 25–250 ms, within the
//! model's [`retry::RetryBudget`].
//!
//! Liveness, not a guess at the generation time, decides how long a request waits on a
//! server: while a request waits, the server is probed on demand (coalesced per server), and
//! a failed probe abandons every request on it that has not sent a byte to its client.

pub mod prepare;
pub mod pump;
pub mod request_scan;
pub mod retry;
pub mod sse;
pub mod sse_guard;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use llmmux_actors::backend::{BackendHandle, Observed};
use llmmux_actors::registry::RegistryHandle;
use llmmux_actors::stream::StreamSpawner;
use llmmux_actors::table::{BackendId, InFlightGuard, PickError};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use crate::body::{full, Body};
use crate::config::Config;
use crate::error::{json_response, normalize_upstream_error, GatewayError};
use crate::identity::limits::{Exceeded, LimitHeaders};
use crate::identity::Identity;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::principal::Principal;
use crate::toolcall::{self, Counters as ToolCallCounters, Family, RequestTools};
use crate::upstream::{SendError, ServerExt, UpstreamClient};
use retry::RetryBudgets;

/// Largest non-streaming upstream answer the gateway will hold.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What the hot path needs, shared by every request.
pub struct Proxy {
    pub registry: RegistryHandle,
    pub streams: StreamSpawner,
    pub client: UpstreamClient,
    pub budgets: Arc<RetryBudgets>,
    /// `MAX_IN_FLIGHT`, gateway-wide.
    pub concurrency: Arc<Semaphore>,
    pub toolcalls: Arc<ToolCallCounters>,
}

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
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Rerank,
        Endpoint::Score,
        Endpoint::Tokenize,
        Endpoint::Detokenize,
        Endpoint::Pooling,
        Endpoint::Classify,
    ];

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
    /// Connection closed or reset before a usable response was complete.
    Reset,
    /// 502/503/504 from the server.
    Unavailable(StatusCode, Bytes),
    /// 404 for a model the registry believed the server serves.
    ModelMissing(Bytes),
    /// The server failed its health check while the request waited on it.
    Dead,
}

impl AttemptError {
    fn server_side(&self) -> bool {
        !matches!(self, AttemptError::ModelMissing(_))
    }

    fn code(&self) -> &'static str {
        match self {
            AttemptError::Connect => "upstream_connect",
            AttemptError::Timeout => "upstream_timeout",
            AttemptError::Reset => "upstream_reset",
            AttemptError::Unavailable(..) => "upstream_unavailable",
            AttemptError::ModelMissing(_) => "model_not_found",
            AttemptError::Dead => "upstream_down",
        }
    }

    fn into_response(self) -> Response<Body> {
        match self {
            AttemptError::Connect | AttemptError::Reset => {
                GatewayError::UpstreamFailed.into_response()
            }
            AttemptError::Dead => GatewayError::UpstreamDown.into_response(),
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

impl From<SendError> for AttemptError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Connect => AttemptError::Connect,
            SendError::ConnectTimeout => AttemptError::Timeout,
            SendError::Broken => AttemptError::Reset,
        }
    }
}

/// Run `fut` while `backend` stays alive: probe it on demand every `every` of waiting, and
/// give up at once when it is declared dead.
async fn while_alive<F: Future>(
    fut: F,
    backend: &BackendHandle,
    every: Duration,
) -> Result<F::Output, AttemptError> {
    let dead = backend.liveness();
    tokio::pin!(fut);
    let mut probe = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return Ok(r),
            _ = dead.cancelled() => return Err(AttemptError::Dead),
            _ = probe.tick() => backend.probe_now(),
        }
    }
}

/// An upstream answer ready to relay.
enum Answer {
    /// A stream whose headers arrived; `first` is its first chunk if it came within the
    /// keep-alive interval (otherwise the relay waits for it, with keep-alive comments).
    Stream {
        resp: Response<Incoming>,
        first: Option<Bytes>,
    },
    /// A complete body.
    Whole {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

struct Started {
    guard: InFlightGuard,
    answer: Answer,
    /// When the attempt began (passive health counts a success only against the failures
    /// before it).
    began: Instant,
}

/// One proxied request.
struct Call<'a> {
    proxy: &'a Proxy,
    cfg: &'a Config,
    ep: Endpoint,
    p: &'a prepare::Prepared,
    headers: HeaderMap,
    outcome: &'a Outcome,
    /// One deadline for the whole request (`REQUEST_TIMEOUT`), across attempts.
    deadline: Instant,
}

/// Who is asking, and the per-credential checks: model permissions and rate limits.
pub struct Gate<'a> {
    pub principal: &'a Principal,
    pub identity: Option<&'a Identity>,
    pub metrics: &'a Metrics,
}

impl Gate<'_> {
    /// 403 before any server is called for a model the credential may not use; 429 over
    /// its limits. On admission, the `x-ratelimit-*` headers to add to the answer.
    fn admit(&self, model: &str) -> Result<LimitHeaders, GatewayError> {
        if !self.principal.may_use(model) {
            return Err(GatewayError::ModelNotAllowed(model.to_owned()));
        }
        let Some(identity) = self.identity else {
            return Ok(Vec::new());
        };
        match identity.admit(self.principal) {
            Ok(a) => Ok(a.headers),
            Err(limited) => {
                self.metrics.rate_limited(match limited.exceeded {
                    Exceeded::Requests => "rpm",
                    Exceeded::Tokens => "tpm",
                });
                Err(GatewayError::from(limited))
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    proxy: &Proxy,
    cfg: &Config,
    lifecycle: &Lifecycle,
    ep: Endpoint,
    req: Request<Incoming>,
    outcome: &Outcome,
    gate: Gate<'_>,
) -> Result<Response<Body>, GatewayError> {
    let mut limit_headers = Vec::new();
    let mut resp = forward_inner(
        proxy,
        cfg,
        lifecycle,
        ep,
        req,
        outcome,
        &gate,
        &mut limit_headers,
    )
    .await?;
    for (name, value) in limit_headers {
        resp.headers_mut().insert(name, value);
    }
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn forward_inner(
    proxy: &Proxy,
    cfg: &Config,
    lifecycle: &Lifecycle,
    ep: Endpoint,
    req: Request<Incoming>,
    outcome: &Outcome,
    gate: &Gate<'_>,
    limit_headers: &mut LimitHeaders,
) -> Result<Response<Body>, GatewayError> {
    if lifecycle.is_draining() {
        return Err(GatewayError::ShuttingDown);
    }
    let deadline = Instant::now() + cfg.request_timeout.saturating_sub(outcome.elapsed());
    let (parts, body) = req.into_parts();
    // The body first: a slow uploader holds no capacity while it trickles in.
    let raw = prepare::read_body(
        body,
        &parts.headers,
        cfg.max_body_bytes,
        cfg.body_read_timeout,
    )
    .await?;
    let keep_bodies = cfg.audit_enabled && cfg.audit_bodies;
    if keep_bodies {
        let request = crate::audit::clip(&raw, cfg.audit_body_max_bytes);
        outcome.update(|r| {
            r.bodies = Some(Box::new(crate::outcome::Bodies {
                request: Some(request),
                response: None,
            }))
        });
    }
    let p = prepare::prepare(ep, raw, &cfg.model_aliases)?;
    let span = tracing::Span::current();
    span.record("model", p.model.as_str());
    span.record("stream", p.stream);
    outcome.update(|r| {
        r.model = Some(p.model.clone());
        r.stream = p.stream;
    });
    *limit_headers = gate.admit(&p.model)?;
    let permit = proxy
        .concurrency
        .clone()
        .try_acquire_owned()
        .map_err(|_| GatewayError::Overloaded)?;
    if !proxy.registry.table.load().knows_model(&p.served) {
        return Err(GatewayError::ModelNotFound(p.model.clone()));
    }
    let call = Call {
        proxy,
        cfg,
        ep,
        p: &p,
        headers: prepare::upstream_headers(&parts.headers, &outcome.id()),
        outcome,
        deadline,
    };
    let started = match call.attempts().await {
        Ok(s) => s,
        Err(done) => return done,
    };
    let backend = started.guard.backend().clone();
    span.record("backend", backend.id.as_str());
    let repair = call.repair();
    match started.answer {
        Answer::Stream { resp, first } => {
            let relay = pump::Relay {
                ep,
                client_wants_usage: p.client_wants_usage,
                repair,
                outcome: outcome.clone(),
                deadline,
                began: started.began,
            };
            pump::start_stream(proxy, cfg, relay, resp, first, (started.guard, permit)).await
        }
        Answer::Whole {
            status,
            content_type,
            body,
        } => {
            drop(permit);
            if !status.is_success() {
                outcome.fail(if status.is_server_error() {
                    "upstream_error"
                } else {
                    "upstream_rejected"
                });
                return Ok(upstream_error_response(status, &body));
            }
            if let Some((p, c)) = usage_of_body(&body) {
                outcome.usage(p, c);
            }
            let body = match repair {
                Some((family, tools)) => repair_body(proxy, cfg, body, family, &tools),
                None => body,
            };
            if keep_bodies {
                let answer = crate::audit::clip(&body, cfg.audit_body_max_bytes);
                outcome.update(|r| {
                    if let Some(b) = r.bodies.as_mut() {
                        b.response = Some(answer);
                    }
                });
            }
            let mut resp = Response::new(full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            Ok(resp)
        }
    }
}

fn repair_body(
    proxy: &Proxy,
    cfg: &Config,
    body: Bytes,
    family: Family,
    tools: &RequestTools,
) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    toolcall::repair_response(
        &mut v,
        family,
        tools,
        &cfg.tool_call_options,
        &proxy.toolcalls,
    );
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

/// An answer's or a chunk's `usage`, read without building anything else.
#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// `usage` of a whole answer, skipping everything else without building it.
fn usage_of_body(body: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    // vLLM writes `usage` last: read the object after the last `"usage":` instead of
    // walking the whole answer (a key cannot be mistaken for text inside a string, where
    // quotes are escaped). Anything unexpected falls back to the full parse.
    if let Some(at) = memchr::memmem::rfind(body, b"\"usage\"") {
        let rest = body[at + 7..].trim_ascii_start();
        if let Some(value) = rest.strip_prefix(b":") {
            let mut de = serde_json::Deserializer::from_slice(value);
            if let Ok(u) = <Option<Usage> as serde::Deserialize>::deserialize(&mut de) {
                return u.map(|u| (u.prompt_tokens, u.completion_tokens));
            }
        }
    }
    let u = serde_json::from_slice::<Answer>(body).ok()?.usage?;
    Some((u.prompt_tokens, u.completion_tokens))
}

async fn read_all(resp: Response<Incoming>) -> Result<Bytes, AttemptError> {
    // The server's Content-Length sizes the buffer only up to 1 MiB: a server that declares
    // more than it sends must not make the gateway reserve it.
    let declared = http_body::Body::size_hint(resp.body())
        .exact()
        .map(|n| n.min(1 << 20));
    prepare::collect(resp.into_body(), declared, MAX_RESPONSE_BYTES)
        .await
        .map_err(|_| AttemptError::Reset)
}

/// `Err(Ok(resp))` is a final answer to relay; `Err(Err(e))` a gateway error.
type Final = Result<Response<Body>, GatewayError>;

impl Call<'_> {
    fn repair(&self) -> Option<(Family, RequestTools)> {
        if self.ep != Endpoint::Chat {
            return None;
        }
        // Most requests declare no tools: look that up before matching the model's id
        // against the format rules.
        let fields = self.p.tool_fields.as_ref()?;
        let family = self.cfg.tool_call_formats.family_for(&self.p.served);
        if family == Family::None {
            return None;
        }
        RequestTools::from_request(fields).map(|t| (family, t))
    }

    /// Pick a server; when none is routable, probe the model's servers at once and wait a
    /// little for one to come back (a server that started after the gateway, say).
    async fn route(&self, exclude: &[BackendId]) -> Result<InFlightGuard, PickError> {
        let registry = &self.proxy.registry;
        match registry.route(&self.p.served, exclude).await {
            Err(PickError::NoHealthy) if exclude.is_empty() => {}
            other => return other,
        }
        let table = registry.table.load();
        for id in table
            .by_model
            .get(self.p.served.as_str())
            .into_iter()
            .flatten()
        {
            if let Some(e) = table.backends.get(id) {
                e.handle.probe_now();
            }
        }
        let served = self.p.served.as_str();
        registry
            .table
            .wait_for(self.cfg.no_backend_wait, |t| {
                t.routable_for(served).next().is_some()
            })
            .await;
        registry.route(served, exclude).await
    }

    async fn attempts(&self) -> Result<Started, Final> {
        let budget = self.proxy.budgets.get(&self.p.served);
        budget.deposit();
        let mut exclude: Vec<BackendId> = Vec::new();
        let mut last: Option<AttemptError> = None;
        for attempt in 1..=self.cfg.max_attempts {
            let guard = match self.route(&exclude).await {
                Ok(g) => g,
                Err(e) => {
                    return Err(match (last, e) {
                        (Some(prev), _) => self.give_up(prev),
                        (None, PickError::UnknownModel) => {
                            Err(GatewayError::ModelNotFound(self.p.model.clone()))
                        }
                        (None, PickError::NoHealthy) => {
                            Err(GatewayError::NoHealthyBackend(self.p.model.clone()))
                        }
                        (None, PickError::AtCapacity) => {
                            Err(GatewayError::AtCapacity(self.p.model.clone()))
                        }
                    });
                }
            };
            let backend = guard.backend().clone();
            self.outcome.update(|r| {
                r.attempts = attempt;
                r.backend = Some(backend.id.clone());
            });
            // An exported trace shows each attempt as a child span; logs need none (the
            // line about a failed attempt names the attempt and server itself).
            let span = if crate::telemetry::exporting_spans() {
                tracing::error_span!("attempt", attempt, backend = %backend.id)
            } else {
                tracing::Span::none()
            };
            match self.try_once(guard).instrument(span).await {
                Ok(started) => return Ok(started),
                Err(e) => {
                    if e.server_side() {
                        backend.observe(Observed::ServerFailure);
                    }
                    warn!(backend = %backend.id, attempt, error = e.code(), "upstream attempt failed");
                    exclude.push(backend.id.clone());
                    last = Some(e);
                }
            }
            if attempt == self.cfg.max_attempts || Instant::now() >= self.deadline {
                break;
            }
            if !budget.try_withdraw() {
                debug!(model = %self.p.served, "retry budget exhausted");
                break;
            }
            let jitter = Duration::from_millis(rand::rng().random_range(25..=250));
            tokio::time::sleep_until((Instant::now() + jitter).min(self.deadline)).await;
        }
        Err(match last {
            Some(e) => self.give_up(e),
            None => Err(GatewayError::UpstreamFailed),
        })
    }

    fn give_up(&self, e: AttemptError) -> Final {
        self.outcome.fail(e.code());
        Ok(e.into_response())
    }

    async fn try_once(&self, guard: InFlightGuard) -> Result<Started, AttemptError> {
        let began = Instant::now();
        let backend = guard.backend().clone();
        let mut headers = self.headers.clone();
        let ext = backend.ext::<ServerExt>();
        if let Some(ext) = ext {
            for (k, v) in &ext.headers {
                headers.insert(k.clone(), v.clone());
            }
            if let Some(host) = &ext.host {
                headers.insert(header::HOST, host.clone());
            }
        }
        let uri = match ext.and_then(|e| e.url(self.ep.path())) {
            Some(uri) => uri,
            // Only a server whose base URL did not parse has no prepared URIs.
            None => Uri::try_from(format!("{}{}", backend.base_url, self.ep.path()))
                .map_err(|_| AttemptError::Connect)?,
        };
        let send = self.proxy.client.post(uri, headers, self.p.body.clone());
        let stream = self.p.stream;
        let work = async {
            let resp = send.await?;
            let status = resp.status();
            // Only an answer that is not a server error shows the server alive and working.
            if !status.is_server_error() {
                backend.progressed();
            }
            if matches!(status.as_u16(), 502..=504) {
                return Err(AttemptError::Unavailable(
                    status,
                    read_all(resp).await.unwrap_or_default(),
                ));
            }
            if status == StatusCode::NOT_FOUND {
                let body = read_all(resp).await.unwrap_or_default();
                if normalize_upstream_error(status, &body)["error"]["code"] == "model_not_found" {
                    return Err(AttemptError::ModelMissing(body));
                }
                // A 404 that is not about the model (an unknown route, say) is final.
                return Ok(whole(status, None, body));
            }
            if stream && status.is_success() {
                return Ok(Answer::Stream { resp, first: None });
            }
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let body = read_all(resp).await?;
            Ok(whole(status, content_type, body))
        };
        // A stream must at least send its headers within FIRST_BYTE_TIMEOUT (vLLM sends
        // them at once); a whole answer has until the request's deadline.
        let limit = if stream {
            (Instant::now() + self.cfg.first_byte_timeout).min(self.deadline)
        } else {
            self.deadline
        };
        let every = self.cfg.on_demand_probe_interval;
        let answer = match tokio::time::timeout_at(limit, while_alive(work, &backend, every)).await
        {
            Err(_) => return Err(AttemptError::Timeout),
            Ok(r) => r??,
        };
        let answer = match answer {
            Answer::Stream { resp, .. } => self.first_chunk(resp, &backend).await?,
            whole @ Answer::Whole { .. } => {
                if let Answer::Whole { status, .. } = &whole {
                    backend.observe(if status.is_server_error() {
                        Observed::ServerFailure
                    } else {
                        Observed::Success {
                            started: began.into_std(),
                        }
                    });
                }
                whole
            }
        };
        Ok(Started {
            guard,
            answer,
            began,
        })
    }

    /// Wait for a stream's first chunk while a retry is still possible: up to one
    /// keep-alive interval. After that the stream is committed to this server (the client
    /// gets headers and keep-alive comments) and is never retried.
    async fn first_chunk(
        &self,
        mut resp: Response<Incoming>,
        backend: &BackendHandle,
    ) -> Result<Answer, AttemptError> {
        let window = (Instant::now() + self.cfg.stream_keepalive_interval).min(self.deadline);
        let every = self.cfg.on_demand_probe_interval;
        let first = first_data(resp.body_mut());
        let waited = tokio::time::timeout_at(window, while_alive(first, backend, every)).await;
        match waited {
            Err(_) if Instant::now() >= self.deadline => Err(AttemptError::Timeout),
            Err(_) => Ok(Answer::Stream { resp, first: None }),
            Ok(r) => match r? {
                Some(first) => {
                    backend.progressed();
                    Ok(Answer::Stream {
                        resp,
                        first: Some(first),
                    })
                }
                None => Err(AttemptError::Reset),
            },
        }
    }
}

/// The body's next non-empty data; `None` at its end or on a read error (both end the
/// attempt before anything reached the client).
async fn first_data(body: &mut Incoming) -> Option<Bytes> {
    use http_body_util::BodyExt;
    loop {
        match body.frame().await?.ok()?.into_data() {
            Ok(data) if !data.is_empty() => return Some(data),
            // Empty data and trailers carry nothing to relay.
            _ => continue,
        }
    }
}

fn whole(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Answer {
    Answer::Whole {
        status,
        content_type,
        body,
    }
}

/// Guards a committed stream holds until its pump ends.
pub type StreamGuards = (InFlightGuard, OwnedSemaphorePermit);

#[cfg(test)]
mod tests {
    use super::usage_of_body;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn usage_is_read_from_the_end_or_by_a_full_parse() {
        let body = json!({"id": "c", "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 7, "total_tokens": 10, "completion_tokens": 3}});
        assert_eq!(usage_of_body(body.to_string().as_bytes()), Some((7, 3)));
        assert_eq!(usage_of_body(br#"{"usage": null}"#), None);
        assert_eq!(usage_of_body(br#"{"choices": []}"#), None);
        // A key named usage inside the answer, before the real one.
        let body = json!({"choices": [{"message": {"tool_calls": [{"function":
            {"arguments": {"usage": {"prompt_tokens": 99}}}}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
        assert_eq!(usage_of_body(body.to_string().as_bytes()), Some((1, 2)));
        // The last `"usage"` is no key: the full parse decides.
        let body = br#"{"usage": {"prompt_tokens": 4, "completion_tokens": 5}, "x": ["usage"]}"#;
        assert_eq!(usage_of_body(body), Some((4, 5)));
    }

    proptest! {
        #[test]
        fn any_content_gives_the_full_parse_answer(content in ".{0,40}", p in 0u64..1000, c in 0u64..1000, with_usage: bool) {
            let mut body = json!({"choices": [{"message": {"content": content}}]});
            if with_usage {
                body["usage"] = json!({"prompt_tokens": p, "completion_tokens": c});
            }
            let text = body.to_string();
            prop_assert_eq!(usage_of_body(text.as_bytes()), with_usage.then_some((p, c)));
        }
    }
}
