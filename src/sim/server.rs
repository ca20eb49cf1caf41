//! Connection handling, routing, faults and the `/sim/*` control plane.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::vllm::{self, ApiError, Ctx, EvKind, Output, Produced};
use super::{stats_snapshot, Fault, Shared, ToolText};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 64 * 1024 * 1024;
/// Grace period after the last sent bytes before a server-side reset, so they reach the peer.
const FLUSH_GRACE: Duration = Duration::from_millis(30);

/// TCP stream that resets (SO_LINGER 0) instead of closing gracefully when `abort` is set.
struct SimIo {
    inner: TcpStream,
    abort: Arc<AtomicBool>,
}

impl Drop for SimIo {
    fn drop(&mut self) {
        if self.abort.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Per-connection control: lets a request reset its own connection.
#[derive(Clone)]
struct ConnCtl {
    abort: Arc<AtomicBool>,
    kill: Arc<Notify>,
}

impl ConnCtl {
    fn reset(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

struct ConnGuard(Arc<Shared>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .counters
            .active_connections
            .fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "sim accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared
            .counters
            .active_connections
            .fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve_conn(stream, shared.clone()));
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _guard = ConnGuard(shared.clone());
    let ctl = ConnCtl {
        abort: Arc::new(AtomicBool::new(false)),
        kill: Arc::new(Notify::new()),
    };
    let io = TokioIo::new(SimIo {
        inner: stream,
        abort: ctl.abort.clone(),
    });
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        ctl.abort.store(true, Ordering::SeqCst);
        return;
    }
    let svc_shared = shared.clone();
    let svc_ctl = ctl.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(handle(req, shared, ctl).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "sim connection ended with error");
            }
        }
        _ = ctl.kill.notified() => {}
        _ = shutdown.wait_for(|s| *s) => {
            ctl.abort.store(true, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Response helpers

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn base(status: u16) -> http::response::Builder {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(header::SERVER, "uvicorn")
}

fn finish(b: http::response::Builder, body: Body) -> Response<Body> {
    b.header(header::VARY, "Origin")
        .body(body)
        .unwrap_or_else(|_| {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    finish(
        base(status).header(header::CONTENT_TYPE, "application/json"),
        full(bytes),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body);
    if e.status == 503 || e.status == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn empty(status: u16) -> Response<Body> {
    finish(base(status).header(header::CONTENT_LENGTH, "0"), full(""))
}

fn not_found() -> Response<Body> {
    json_response(404, &json!({"detail": "Not Found"}))
}

fn method_not_allowed() -> Response<Body> {
    json_response(405, &json!({"detail": "Method Not Allowed"}))
}

// ---------------------------------------------------------------------------------------
// Request accounting

/// Counts an inference request as active; on drop without `complete()`/`server_abort()`
/// it counts a client disconnect (the response future or body was dropped by hyper
/// because the peer went away).
struct ReqGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl ReqGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared
            .counters
            .active_requests
            .fetch_add(1, Ordering::SeqCst);
        Self {
            shared,
            done: false,
        }
    }
    fn complete(&mut self) {
        self.done = true;
    }
}

impl Drop for ReqGuard {
    fn drop(&mut self) {
        self.shared
            .counters
            .active_requests
            .fetch_sub(1, Ordering::SeqCst);
        // Requests killed by `shutdown()` are not client disconnects.
        if !self.done && !*self.shared.shutdown.borrow() {
            self.shared.add_disconnect();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Rerank,
    Score,
    Pooling,
    Classify,
    Tokenize,
    Detokenize,
}

fn route_kind(path: &str) -> Option<Kind> {
    Some(match path {
        "/v1/chat/completions" => Kind::Chat,
        "/v1/completions" => Kind::Completions,
        "/v1/embeddings" => Kind::Embeddings,
        "/v1/responses" => Kind::Responses,
        "/v1/rerank" | "/rerank" | "/v2/rerank" => Kind::Rerank,
        "/v1/score" | "/score" => Kind::Score,
        "/pooling" => Kind::Pooling,
        "/classify" => Kind::Classify,
        "/tokenize" => Kind::Tokenize,
        "/detokenize" => Kind::Detokenize,
        _ => return None,
    })
}

async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// The health route: counted on arrival, answered after `health_delay_ms`.
async fn health(shared: &Shared) -> Response<Body> {
    shared.counters.health_probes.fetch_add(1, Ordering::SeqCst);
    let delay = shared.lock().cfg.health_delay_ms;
    sleep_ms(delay).await;
    let status = shared.lock().health;
    empty(status)
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>, ctl: ConnCtl) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix("/sim/") {
        return control(rest, req, &shared).await;
    }
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);

    let (api_key, silent, health_path) = {
        let m = shared.lock();
        (m.cfg.api_key.clone(), m.silent, m.cfg.health_path.clone())
    };
    if silent {
        std::future::pending::<()>().await;
    }
    if let Some(key) = api_key {
        let guarded = path.starts_with("/v1") || path.starts_with("/v2");
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {key}"));
        if guarded && !ok {
            return json_response(401, &json!({"error": "Unauthorized"}));
        }
    }

    if let Some(kind) = route_kind(&path) {
        if method != Method::POST {
            return method_not_allowed();
        }
        c.inference_requests.fetch_add(1, Ordering::SeqCst);
        return inference(kind, req, shared, ctl).await;
    }
    if health_path.as_deref() == Some(path.as_str()) && path != "/health" {
        return health(&shared).await;
    }
    match path.as_str() {
        "/health" if health_path.as_deref() != Some("/health") => not_found(),
        "/health" | "/ping" => {
            if !(method == Method::GET || (path == "/ping" && method == Method::POST)) {
                return method_not_allowed();
            }
            health(&shared).await
        }
        "/version" if method == Method::GET => {
            json_response(200, &json!({"version": vllm::VERSION}))
        }
        "/v1/models" if method == Method::GET => {
            c.models_requests.fetch_add(1, Ordering::SeqCst);
            let (served, mml) = {
                let m = shared.lock();
                (m.cfg.models.clone(), m.cfg.max_model_len)
            };
            json_response(200, &vllm::models(&served, mml))
        }
        "/load" if method == Method::GET => json_response(
            200,
            &json!({"server_load": c.active_requests.load(Ordering::SeqCst)}),
        ),
        "/metrics" if method == Method::GET => {
            let text = metrics(&shared);
            finish(
                base(200).header(
                    header::CONTENT_TYPE,
                    "text/plain; version=1.0.0; charset=utf-8",
                ),
                full(text),
            )
        }
        "/version" | "/v1/models" | "/load" | "/metrics" => method_not_allowed(),
        _ => not_found(),
    }
}

fn metrics(shared: &Shared) -> String {
    let c = &shared.counters;
    let model = shared
        .lock()
        .cfg
        .models
        .first()
        .cloned()
        .unwrap_or_default();
    let running = c.active_requests.load(Ordering::SeqCst);
    let kv = (running as f64 * 0.05).min(1.0);
    let lbl = format!("engine=\"0\",model_name=\"{model}\"");
    let mut out = String::new();
    let mut metric = |name: &str, ty: &str, help: &str, labels: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {ty}\n{name}{{{labels}}} {v:?}\n"
        ));
    };
    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        &lbl,
        running as f64,
    );
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        &lbl,
        0.0,
    );
    metric(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        &lbl,
        kv,
    );
    metric(
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        &lbl,
        kv,
    );
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        &format!("engine=\"0\",finished_reason=\"stop\",model_name=\"{model}\""),
        c.completed_requests.load(Ordering::SeqCst) as f64,
    );
    metric(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        &lbl,
        c.prompt_tokens.load(Ordering::SeqCst) as f64,
    );
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        &lbl,
        c.generation_tokens.load(Ordering::SeqCst) as f64,
    );
    out
}

// ---------------------------------------------------------------------------------------
// Inference

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn inference(
    kind: Kind,
    req: Request<Incoming>,
    shared: Arc<Shared>,
    ctl: ConnCtl,
) -> Response<Body> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header_fault = req
        .headers()
        .get("x-sim-fault")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let Some(body) = read_body(req.into_body()).await else {
        return error_response(&vllm::api_error(
            400,
            "Could not read the request body.",
            None,
        ));
    };
    let (cfg, global_fault) = {
        let mut m = shared.lock();
        m.last_headers = headers;
        // Kept for tests that inspect what the gateway sent; huge bodies are not parsed
        // (memory and time tests send 10 MB ones).
        m.last_body = if body.len() <= 1024 * 1024 {
            serde_json::from_slice(&body).ok()
        } else {
            None
        };
        (m.cfg.clone(), m.fault)
    };
    let fault = match header_fault {
        Some(h) => match h.parse::<Fault>() {
            Ok(f) => f,
            Err(e) => {
                return error_response(&vllm::api_error(
                    400,
                    format!("invalid x-sim-fault: {e}"),
                    None,
                ))
            }
        },
        None => global_fault,
    };
    let mut guard = ReqGuard::new(shared.clone());
    let n = shared.counters.inference_requests.load(Ordering::SeqCst);
    let fault = match fault {
        // inference_requests was counted before this call: the first request is n == 1.
        Fault::StatusEvery { status, every } if (n - 1) % u64::from(every) == 0 => {
            Fault::Status(status)
        }
        Fault::StatusEvery { .. } => Fault::None,
        other => other,
    };

    match fault {
        Fault::Hang => {
            // Never answer; the guard counts the disconnect when hyper drops this future.
            std::future::pending::<()>().await;
        }
        Fault::CloseBeforeHeaders => {
            guard.complete();
            ctl.reset();
            std::future::pending::<()>().await;
        }
        _ => {}
    }

    let extra = if let Fault::Drip(ms) = fault { ms } else { 0 };
    sleep_ms(cfg.latency_ms).await;

    let ctx = Ctx {
        served: cfg.models.clone(),
        max_model_len: cfg.max_model_len,
        completion_tokens: cfg.completion_tokens,
        tool_text: cfg.tool_text,
    };
    let early = match fault {
        Fault::Status(s) => Some(vllm::api_error(
            s,
            format!("Simulated failure (HTTP {s})."),
            None,
        )),
        Fault::ModelNotFound => Some(vllm::model_not_found(
            &vllm::requested_model(&body, &cfg.models),
            &cfg.models,
        )),
        _ => None,
    };
    if let Some(e) = early {
        guard.complete();
        return error_response(&e);
    }
    let produced = match kind {
        Kind::Chat => vllm::chat(&body, &ctx),
        Kind::Completions => vllm::completions(&body, &ctx),
        Kind::Embeddings => vllm::embeddings(&body, &ctx),
        Kind::Responses => vllm::responses(&body, &ctx),
        Kind::Rerank => vllm::rerank(&body, &ctx),
        Kind::Score => vllm::score(&body, &ctx),
        Kind::Pooling => vllm::pooling(&body, &ctx),
        Kind::Classify => vllm::classify(&body, &ctx),
        Kind::Tokenize => vllm::tokenize(&body, &ctx),
        Kind::Detokenize => vllm::detokenize(&body, &ctx),
    };
    let Produced {
        output,
        prompt_tokens,
        completion_tokens,
    } = match produced {
        Ok(p) => p,
        Err(e) => {
            guard.complete();
            return error_response(&e);
        }
    };
    let c = &shared.counters;
    c.prompt_tokens.fetch_add(prompt_tokens, Ordering::SeqCst);
    c.generation_tokens
        .fetch_add(completion_tokens, Ordering::SeqCst);

    match output {
        Output::Json(v) => {
            if let Fault::ErrorAfter(_) = fault {
                guard.complete();
                return error_response(&vllm::api_error(500, "Simulated engine failure.", None));
            }
            // Generation time: first token after ttft, then one token per token_delay.
            let gen_ms = cfg.prefill_ms
                + if completion_tokens > 0 {
                    cfg.ttft_ms
                        + cfg
                            .token_delay_ms
                            .saturating_mul(completion_tokens.saturating_sub(1))
                } else {
                    0
                };
            sleep_ms(gen_ms + extra).await;
            let bytes = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            match fault {
                Fault::ResetAfter(_) | Fault::StallAfter(_) => {
                    let len = bytes.len();
                    let half = bytes.slice(..len / 2);
                    let end = if matches!(fault, Fault::ResetAfter(_)) {
                        End::Reset
                    } else {
                        End::Stall
                    };
                    let body = timed_body(vec![(0, half)], end, guard, ctl, shared.clone());
                    finish(
                        base(200)
                            .header(header::CONTENT_TYPE, "application/json")
                            .header(header::CONTENT_LENGTH, len.to_string()),
                        body,
                    )
                }
                _ => {
                    guard.complete();
                    c.completed_requests.fetch_add(1, Ordering::SeqCst);
                    finish(
                        base(200).header(header::CONTENT_TYPE, "application/json"),
                        full(bytes),
                    )
                }
            }
        }
        Output::Sse(evs) => {
            let mut first_token = true;
            let mut first_event = true;
            let mut timed: Vec<(u64, Bytes)> = evs
                .into_iter()
                .map(|ev| {
                    let prefill = if std::mem::take(&mut first_event) {
                        cfg.prefill_ms
                    } else {
                        0
                    };
                    let delay = prefill
                        + match (fault, ev.kind) {
                            (Fault::Drip(ms), _) => ms,
                            (_, EvKind::Head) | (_, EvKind::Tail) => 0,
                            (_, EvKind::Token) if first_token => {
                                first_token = false;
                                cfg.ttft_ms
                            }
                            (_, EvKind::Token) => cfg.token_delay_ms,
                        };
                    (delay, Bytes::from(ev.data))
                })
                .collect();
            let end = match fault {
                Fault::ResetAfter(n) => {
                    timed.truncate(n as usize);
                    End::Reset
                }
                Fault::StallAfter(n) => {
                    timed.truncate(n as usize);
                    End::Stall
                }
                Fault::BadUtf8After(n) => {
                    let at = (n as usize).min(timed.len());
                    timed.insert(at, (0, Bytes::from_static(b"data: \xff\xfe bad bytes\n\n")));
                    End::Done
                }
                Fault::HugeEvent { after, bytes } => {
                    let at = (after as usize).min(timed.len());
                    let mut ev = Vec::with_capacity(bytes as usize + 8);
                    ev.extend_from_slice(b"data: ");
                    ev.resize(bytes as usize + 6, b'x');
                    ev.extend_from_slice(b"\n\n");
                    timed.insert(at, (0, Bytes::from(ev)));
                    End::Done
                }
                Fault::NoFinalBlankLine => {
                    if let Some((_, last)) = timed.last_mut() {
                        let trimmed = last.as_ref().trim_ascii_end().to_vec();
                        *last = Bytes::from(trimmed);
                    }
                    End::Done
                }
                Fault::ErrorAfter(n) => {
                    timed.truncate(n as usize);
                    timed.push((
                        0,
                        Bytes::from(vllm::stream_error_event("Simulated engine failure.", 500)),
                    ));
                    timed.push((0, Bytes::from(vllm::sse_done())));
                    End::Done
                }
                _ => End::Done,
            };
            let body = timed_body(timed, end, guard, ctl, shared.clone());
            finish(
                base(200).header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
                body,
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Reset,
    Stall,
}

struct BodyState {
    events: std::vec::IntoIter<(u64, Bytes)>,
    end: End,
    guard: ReqGuard,
    ctl: ConnCtl,
    shared: Arc<Shared>,
}

/// Body that sends each chunk after its delay, then ends per `end`. Dropping it early
/// (peer gone) counts a client disconnect through the guard.
fn timed_body(
    events: Vec<(u64, Bytes)>,
    end: End,
    guard: ReqGuard,
    ctl: ConnCtl,
    shared: Arc<Shared>,
) -> Body {
    let state = BodyState {
        events: events.into_iter(),
        end,
        guard,
        ctl,
        shared,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some((delay, bytes)) = st.events.next() {
            sleep_ms(delay).await;
            if st.events.len() == 0 && st.end == End::Done {
                st.guard.complete();
                st.shared
                    .counters
                    .completed_requests
                    .fetch_add(1, Ordering::SeqCst);
            }
            return Some((Ok::<_, Infallible>(Frame::data(bytes)), st));
        }
        match st.end {
            End::Done => None,
            End::Reset => {
                tokio::time::sleep(FLUSH_GRACE).await;
                st.guard.complete();
                st.ctl.reset();
                std::future::pending::<()>().await;
                None
            }
            End::Stall => {
                std::future::pending::<()>().await;
                None
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

// ---------------------------------------------------------------------------------------
// Control plane

async fn control(rest: &str, req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    if rest == "stats" {
        return match method {
            Method::GET => json_response(
                200,
                &serde_json::to_value(stats_snapshot(shared)).unwrap_or(Value::Null),
            ),
            _ => method_not_allowed(),
        };
    }
    if method != Method::POST {
        return method_not_allowed();
    }
    let body = read_body(req.into_body()).await.unwrap_or_default();
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return json_response(400, &json!({"error": format!("invalid JSON: {e}")})),
    };
    let bad = |msg: String| json_response(400, &json!({"error": msg}));
    match rest {
        "fault" => match parse_fault_json(&v) {
            Ok(f) => {
                shared.lock().fault = f;
                json_response(200, &json!({"fault": f.to_string()}))
            }
            Err(e) => bad(e),
        },
        "health" => match v
            .get("status")
            .and_then(Value::as_u64)
            .filter(|s| (100..=999).contains(s))
        {
            Some(s) => {
                shared.lock().health = s as u16;
                json_response(200, &json!({"status": s}))
            }
            None => bad("expected {\"status\": <u16>}".into()),
        },
        "models" => match v.get("models").and_then(Value::as_array) {
            Some(a) => {
                let models: Vec<String> = a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                shared.lock().cfg.models = models.clone();
                json_response(200, &json!({"models": models}))
            }
            None => bad("expected {\"models\": [..]}".into()),
        },
        "tool_text" => {
            let t = match v.get("tool_text") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match s.parse::<ToolText>() {
                    Ok(t) => Some(t),
                    Err(e) => return bad(e.to_string()),
                },
                Some(_) => return bad("expected {\"tool_text\": \"hermes\"|null}".into()),
            };
            shared.lock().cfg.tool_text = t;
            json_response(200, &json!({"tool_text": t.map(|t| t.as_str())}))
        }
        "silent" => match v.get("silent").and_then(Value::as_bool) {
            Some(b) => {
                shared.lock().silent = b;
                json_response(200, &json!({"silent": b}))
            }
            None => bad("expected {\"silent\": true|false}".into()),
        },
        "config" => match apply_config(&v, shared) {
            Ok(()) => json_response(200, &json!({"ok": true})),
            Err(e) => bad(e),
        },
        _ => not_found(),
    }
}

fn parse_fault_json(v: &Value) -> Result<Fault, String> {
    let name = v
        .get("fault")
        .and_then(Value::as_str)
        .ok_or("expected {\"fault\": \"...\"}")?;
    if name.contains('=') {
        return name.parse::<Fault>().map_err(|e| e.to_string());
    }
    let arg = ["status", "n", "ms", "value"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64));
    let s = match arg {
        Some(a) => format!("{name}={a}"),
        None => name.to_string(),
    };
    s.parse::<Fault>().map_err(|e| e.to_string())
}

fn apply_config(v: &Value, shared: &Shared) -> Result<(), String> {
    let obj = v.as_object().ok_or("expected an object")?;
    let mut m = shared.lock();
    let cfg = &mut m.cfg;
    for (k, val) in obj {
        let num = || {
            val.as_u64()
                .ok_or(format!("`{k}` must be a non-negative integer"))
        };
        match k.as_str() {
            "latency_ms" => cfg.latency_ms = num()?,
            "ttft_ms" => cfg.ttft_ms = num()?,
            "token_delay_ms" => cfg.token_delay_ms = num()?,
            "completion_tokens" => {
                cfg.completion_tokens = u32::try_from(num()?).map_err(|e| e.to_string())?
            }
            "max_model_len" => {
                cfg.max_model_len = u32::try_from(num()?).map_err(|e| e.to_string())?
            }
            "api_key" => cfg.api_key = val.as_str().map(str::to_string),
            "prefill_ms" => cfg.prefill_ms = num()?,
            "health_delay_ms" => cfg.health_delay_ms = num()?,
            "health_path" => cfg.health_path = val.as_str().map(str::to_string),
            "models" => {
                cfg.models = val
                    .as_array()
                    .ok_or("`models` must be an array")?
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            }
            "tool_text" => {
                cfg.tool_text = match val.as_str() {
                    Some(s) => Some(s.parse::<ToolText>().map_err(|e| e.to_string())?),
                    None => None,
                }
            }
            other => return Err(format!("unknown config key `{other}`")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json() {
        assert_eq!(
            parse_fault_json(&json!({"fault":"status","status":503})),
            Ok(Fault::Status(503))
        );
        assert_eq!(
            parse_fault_json(&json!({"fault":"reset_after","n":3})),
            Ok(Fault::ResetAfter(3))
        );
        assert_eq!(
            parse_fault_json(&json!({"fault":"drip","ms":5})),
            Ok(Fault::Drip(5))
        );
        assert_eq!(parse_fault_json(&json!({"fault":"none"})), Ok(Fault::None));
        assert_eq!(
            parse_fault_json(&json!({"fault":"stall_after=2"})),
            Ok(Fault::StallAfter(2))
        );
        assert!(parse_fault_json(&json!({"fault":"status"})).is_err());
    }
}
