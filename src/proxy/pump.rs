//! Streaming relay. The pump (controlled by a per-request stream actor) reads the upstream
//! body, parses SSE, drops the usage chunk the client did not ask for, repairs tool calls,
//! and queues frames (a bounded queue). It runs inside the client's response body
//! ([`PumpBody`]), which drains the queue: the client connection's task drives both, so
//! an event costs no task wake of its own, and a slow client slows the pump (backpressure)
//! instead of growing memory. A client that leaves drops the body, and the pump with it
//! (recorded as `client_gone`; the upstream request is dropped, which cancels it). A client
//! that stays connected but stops reading stops the pump too, cancellation included, until
//! `CLIENT_SEND_TIMEOUT` closes its connection.
//!
//! The pump owns the server's in-flight slot and the gateway's concurrency permit: both are
//! released when the upstream side is done (up to the queue's frames ahead of the
//! client), not when a slow client finishes reading.
//!
//! Before the first upstream event the server's liveness decides how long to wait (bounded
//! by the request deadline), and the client gets an SSE comment every
//! `STREAM_KEEPALIVE_INTERVAL` so idle timeouts of load balancers do not cut it; after it,
//! `STREAM_IDLE_TIMEOUT` bounds the silence between events.
//!
//! Every way a stream can end is terminal and explicit: `[DONE]` after a clean finish, or
//! one SSE error event in the OpenAI shape followed by `[DONE]` (upstream reset, bad bytes,
//! idle timeout, server found dead, cancellation, a crashed stream actor). A mid-stream
//! failure never flushes held tool-call text with a finish the server never sent.
//!
//! Upstream SSE goes through [`SseGuard`] before the decoder ([`SseEvents`]): invalid UTF-8
//! or an event over `SSE_MAX_EVENT_BYTES` ends the stream at once (`upstream_invalid_stream`),
//! and a last `data: [DONE]` without its blank line is still a clean end. An event that
//! needs no change is forwarded as the bytes it came in.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use llmmux_actors::backend::{BackendHandle, Observed};
use llmmux_actors::stream::PumpCtx;
use memchr::memmem;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::sse::SseEvents;
use super::sse_guard::{SseGuard, SseGuardError};
use super::{Endpoint, Proxy, StreamGuards};
use crate::body::{frames, Body, Frames, PumpBody};
use crate::config::Config;
use crate::error::GatewayError;
use crate::outcome::Outcome;
use crate::toolcall::{Emit, Family, RequestTools, StreamRepair};

/// Frames buffered between pump and client.
const QUEUE_FRAMES: usize = 32;
/// How long a terminal error event may wait for a slow client.
const ERROR_WAIT: Duration = Duration::from_secs(5);
/// Shorter when cancelled: shutdown or a dead stream actor must not linger.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

pub struct Relay {
    pub ep: Endpoint,
    pub client_wants_usage: bool,
    pub repair: Option<(Family, RequestTools)>,
    pub outcome: Outcome,
    /// The request's deadline, which bounds the wait for the first event.
    pub deadline: Instant,
    /// When the upstream attempt began.
    pub began: Instant,
}

pub async fn start_stream(
    proxy: &Proxy,
    cfg: &Config,
    relay: Relay,
    resp: Response<Incoming>,
    first: Option<Bytes>,
    guards: StreamGuards,
) -> Result<Response<Body>, GatewayError> {
    let (out, queue) = frames(QUEUE_FRAMES);
    let backend = guards.0.backend().clone();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/event-stream; charset=utf-8"));
    let got_first = first.is_some();
    let upstream = Box::pin(
        futures_util::stream::iter(first.map(Ok::<Bytes, hyper::Error>))
            .chain(resp.into_body().into_data_stream()),
    );
    let repair = relay.repair.map(|(family, tools)| {
        StreamRepair::new(
            family,
            tools,
            cfg.tool_call_options.clone(),
            proxy.toolcalls.clone(),
        )
    });
    let pump = Pump {
        out,
        _guards: guards,
        dead: backend.liveness(),
        backend,
        idle: cfg.stream_idle_timeout,
        max_event_bytes: cfg.sse_max_event_bytes,
        keepalive: cfg.stream_keepalive_interval,
        probe_every: cfg.on_demand_probe_interval,
        deadline: relay.deadline,
        began: relay.began,
        started: got_first,
        // Committed without a first chunk: one keep-alive interval already passed since the
        // server accepted the request, so the first comment goes out at once.
        last_sent: if got_first {
            Instant::now()
        } else {
            Instant::now()
                .checked_sub(cfg.stream_keepalive_interval)
                .unwrap_or_else(Instant::now)
        },
        next_probe: Instant::now() + cfg.on_demand_probe_interval,
        timer: Box::pin(tokio::time::sleep_until(relay.deadline)),
        client_wants_usage: relay.client_wants_usage,
        repair,
        outcome: relay.outcome,
        content_chunks: 0,
        ended: false,
    };
    let sse = relay.ep.reports_usage();
    let ctx = match proxy.streams.spawn(pump.outcome.id()).await {
        Ok(ctx) => ctx,
        Err(e) => {
            warn!(error = %e, "could not start a stream actor");
            return Err(GatewayError::Internal);
        }
    };
    let run = async move {
        if sse {
            pump.run_sse(upstream, &ctx).await;
        } else {
            pump.run_raw(upstream, &ctx).await;
        }
    };
    // Not `instrument`ed with the request's span: entering and leaving it on every poll
    // cost about 500 instructions per event, and the pump logs nothing itself (the
    // outcome record carries the request id and is what the access log writes).
    let mut resp = Response::new(PumpBody::boxed_body(Box::pin(run), queue));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

struct Pump {
    out: Frames,
    /// Released when the pump ends.
    _guards: StreamGuards,
    backend: Arc<BackendHandle>,
    dead: CancellationToken,
    idle: Duration,
    /// `SSE_MAX_EVENT_BYTES`: the most one upstream event may hold.
    max_event_bytes: usize,
    keepalive: Duration,
    probe_every: Duration,
    deadline: Instant,
    /// When the upstream attempt began.
    began: Instant,
    /// The first upstream bytes arrived.
    started: bool,
    last_sent: Instant,
    /// While waiting for the first event, the server is probed on demand this often.
    next_probe: Instant,
    /// One timer for whichever of keep-alive, silence limit and probe comes first, moved
    /// rather than made anew for every event: three fresh timers per event cost about 5% of
    /// a streamed event's instructions.
    timer: Pin<Box<tokio::time::Sleep>>,
    client_wants_usage: bool,
    repair: Option<StreamRepair>,
    outcome: Outcome,
    /// Chunks with generated content: the completion-token estimate of a stream cut short
    /// before vLLM's usage chunk (vLLM sends one token per chunk).
    content_chunks: u64,
    /// The pump ran to its end; dropped before that, its client left (the response body,
    /// and the pump in it, was dropped).
    ended: bool,
}

impl Drop for Pump {
    fn drop(&mut self) {
        if !self.ended {
            self.outcome.fail("client_gone");
        }
        if self.content_chunks > 0 {
            let estimate = self.content_chunks;
            self.outcome.update(|r| {
                r.completion_tokens.get_or_insert(estimate);
            });
        }
    }
}

/// How reading the upstream failed: the client's error event and the outcome's reason.
type Failure = (GatewayError, &'static str);

fn transport_failure(_: hyper::Error) -> Failure {
    (GatewayError::UpstreamFailed, "upstream_reset")
}

const INVALID_UTF8: Failure = (GatewayError::UpstreamProtocol, "invalid_utf8");

fn sse_failure(e: SseGuardError<hyper::Error>) -> Failure {
    match e {
        SseGuardError::Upstream(e) => transport_failure(e),
        SseGuardError::InvalidUtf8 => INVALID_UTF8,
        SseGuardError::EventTooLarge { .. } => (GatewayError::UpstreamProtocol, "event_too_large"),
    }
}

/// Why the pump stopped reading, or what it should do next.
enum Step<T> {
    Item(T),
    KeepAlive,
    End,
    Failed(GatewayError, &'static str),
    Cancelled,
}

pub fn frame(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// `{"choices":[], "usage": {...}}`: the usage-only chunk.
fn usage_of(data: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Chunk {
        /// Elements are skipped unbuilt (and a `Vec` of a zero-sized type allocates nothing).
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<super::Usage>,
    }
    // A searcher built once (memchr's SIMD): `str::contains` cost about 280 instructions
    // per event, and so did building a searcher per call.
    static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
    USAGE_KEY.find(data)?;
    let chunk: Chunk = serde_json::from_slice(data).ok()?;
    if !chunk.choices.is_some_and(|c| c.is_empty()) {
        return None;
    }
    chunk.usage.map(|u| (u.prompt_tokens, u.completion_tokens))
}

impl Pump {
    async fn next<S, T>(&mut self, s: &mut S, ctx: &PumpCtx) -> Step<T>
    where
        S: Stream<Item = Result<T, Failure>> + Unpin,
    {
        // Before the first event only liveness and the deadline bound the wait (a long
        // prefill on a busy GPU); after it, the idle timeout does.
        let silence_limit = if self.started {
            Instant::now() + self.idle
        } else {
            self.deadline
        };
        loop {
            let keepalive_at = self.last_sent + self.keepalive;
            let mut wake = keepalive_at.min(silence_limit);
            if !self.started {
                wake = wake.min(self.next_probe);
            }
            // While events flow the wake time only moves later, so the timer is left early
            // and moved on when it fires: moving it for every event cost about 1% of a
            // stream's instructions.
            if wake < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer.as_mut().reset(wake);
            }
            return tokio::select! {
                biased;
                _ = ctx.cancelled() => Step::Cancelled,
                // A server found dead ends a stream still waiting for its first event; once
                // events flow, the stream itself proves the server alive (a slow health
                // probe must not cut it) and the idle timeout covers a stall.
                _ = self.dead.cancelled(), if !self.started => Step::Failed(GatewayError::UpstreamDown, "upstream_down"),
                r = s.next() => match r {
                    None => Step::End,
                    Some(Err((e, why))) => Step::Failed(e, why),
                    Some(Ok(item)) => {
                        self.started = true;
                        self.backend.progressed();
                        Step::Item(item)
                    }
                },
                _ = self.timer.as_mut() => {
                    // In the order the separate timers had: keep-alive, silence, probe.
                    let now = Instant::now();
                    if now >= keepalive_at {
                        Step::KeepAlive
                    } else if now >= silence_limit {
                        if self.started {
                            Step::Failed(GatewayError::UpstreamTimeout, "upstream_idle")
                        } else {
                            Step::Failed(GatewayError::UpstreamTimeout, "upstream_timeout")
                        }
                    } else {
                        if !self.started && now >= self.next_probe {
                            self.backend.probe_now();
                            self.next_probe = now + self.probe_every;
                        }
                        // Otherwise a wake time set before the last event: nothing is due.
                        continue;
                    }
                }
            };
        }
    }

    /// False when the stream was cancelled first. (The queue's reader is the response body
    /// the pump runs in, so it is never gone while the pump runs.)
    async fn send(&mut self, bytes: Bytes, ctx: &PumpCtx) -> bool {
        tokio::select! {
            biased;
            _ = ctx.cancelled() => false,
            () = self.out.send(bytes) => {
                self.last_sent = Instant::now();
                true
            }
        }
    }

    /// Forward one upstream payload after usage filtering: as `framed` when given (the
    /// upstream event's own bytes), else framed here.
    async fn emit(&mut self, data: &[u8], framed: Option<&Bytes>, ctx: &PumpCtx) -> bool {
        if let Some((p, c)) = usage_of(data) {
            self.outcome.usage(p, c);
            if !self.client_wants_usage {
                return true;
            }
        } else if data.starts_with(b"{\"error\"") {
            // vLLM's in-band error event: relayed as is, and the stream failed.
            self.outcome.fail("upstream_error");
        } else {
            self.content_chunks += 1;
        }
        let bytes = framed.cloned().unwrap_or_else(|| frame(data));
        self.send(bytes, ctx).await
    }

    async fn run_sse<S>(mut self, upstream: S, ctx: &PumpCtx)
    where
        S: Stream<Item = Result<Bytes, hyper::Error>> + Send + Unpin + 'static,
    {
        let mut events = SseEvents::new(SseGuard::new(upstream, self.max_event_bytes))
            .map(|r| r.map_err(sse_failure));
        loop {
            match self.next(&mut events, ctx).await {
                Step::Item(ev) => {
                    // Valid UTF-8: the guard checked every byte of the stream.
                    let data = ev.data();
                    if data == b"[DONE]" {
                        self.flush_repair(ctx).await;
                        let _ = self.send(frame(b"[DONE]"), ctx).await;
                        self.succeeded();
                        break;
                    }
                    let replaced = match self.repair.as_mut() {
                        Some(r) => {
                            let Ok(text) = std::str::from_utf8(data) else {
                                let (e, why) = INVALID_UTF8;
                                self.upstream_failed(why, e).await;
                                break;
                            };
                            match r.push(text) {
                                Emit::PassThrough => None,
                                Emit::Replace(v) => Some(v),
                            }
                        }
                        None => None,
                    };
                    let ok = match replaced {
                        None => self.emit(data, ev.frame(), ctx).await,
                        Some(list) => {
                            let mut ok = true;
                            for d in list {
                                ok = ok && self.emit(d.as_bytes(), None, ctx).await;
                            }
                            ok
                        }
                    };
                    if !ok {
                        self.cancelled().await;
                        break;
                    }
                }
                Step::KeepAlive => {
                    if !self.send(Bytes::from_static(KEEPALIVE), ctx).await {
                        self.cancelled().await;
                        break;
                    }
                }
                Step::End => {
                    self.upstream_failed("upstream_closed", GatewayError::UpstreamFailed)
                        .await;
                    break;
                }
                Step::Failed(e, why) => {
                    self.upstream_failed(why, e).await;
                    break;
                }
                Step::Cancelled => {
                    self.cancelled().await;
                    break;
                }
            }
        }
        self.ended = true;
    }

    async fn run_raw<S>(mut self, upstream: S, ctx: &PumpCtx)
    where
        S: Stream<Item = Result<Bytes, hyper::Error>> + Send + Unpin + 'static,
    {
        let mut upstream = upstream.map(|r| r.map_err(transport_failure));
        loop {
            match self.next(&mut upstream, ctx).await {
                Step::Item(b) => {
                    if !self.send(b, ctx).await {
                        self.cancelled().await;
                        break;
                    }
                }
                // Raw bytes are not framed here: a comment is safe only before the first.
                Step::KeepAlive if !self.started => {
                    if !self.send(Bytes::from_static(KEEPALIVE), ctx).await {
                        self.cancelled().await;
                        break;
                    }
                }
                Step::KeepAlive => self.last_sent = Instant::now(),
                Step::End => {
                    self.succeeded();
                    break;
                }
                Step::Failed(e, why) => {
                    self.upstream_failed(why, e).await;
                    break;
                }
                Step::Cancelled => {
                    self.cancelled().await;
                    break;
                }
            }
        }
        self.ended = true;
    }

    fn succeeded(&self) {
        self.backend.observe(Observed::Success {
            started: self.began.into_std(),
        });
    }

    /// A normal end (`[DONE]`): decide the tool-call text still held.
    async fn flush_repair(&mut self, ctx: &PumpCtx) {
        if let Some(r) = self.repair.as_mut() {
            for d in r.finish() {
                if !self.emit(d.as_bytes(), None, ctx).await {
                    return;
                }
            }
        }
    }

    /// The upstream failed mid-stream: held text is dropped (emitting it would claim a
    /// finish the server never sent), the server's failure counts, and the client gets
    /// the error event.
    async fn upstream_failed(&mut self, why: &'static str, e: GatewayError) {
        self.repair = None;
        self.backend.observe(Observed::ServerFailure);
        self.outcome.fail(why);
        self.terminal(e, ERROR_WAIT).await;
    }

    async fn cancelled(&mut self) {
        self.outcome.fail("cancelled");
        self.terminal(GatewayError::StreamCancelled, CANCEL_WAIT)
            .await;
    }

    /// Send the terminal error event (then the stream closes). A slow client gets at most
    /// `wait` to take it; the upstream is dropped either way.
    async fn terminal(&mut self, e: GatewayError, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.out.send(e.sse_terminal())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_detection() {
        assert_eq!(
            usage_of(
                br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#
            ),
            Some((3, 4))
        );
        assert_eq!(
            usage_of(br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":3}}"#),
            None
        );
        assert_eq!(
            usage_of(br#"{"id":"x","choices":[{"delta":{"content":"usage"}}]}"#),
            None
        );
    }

    #[test]
    fn multi_line_data_is_framed_per_line() {
        assert_eq!(&frame(b"a\nb")[..], b"data: a\ndata: b\n\n");
    }
}
