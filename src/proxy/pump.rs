//! Streaming relay. The pump task (owned by a per-request stream actor) reads the upstream
//! body, parses SSE, drops the usage chunk the client did not ask for, repairs tool calls,
//! and writes frames to a bounded channel that the client's response body drains. A slow
//! client therefore slows the pump (backpressure) instead of growing memory.
//!
//! Every way a stream can end is terminal and explicit: `[DONE]` after a clean finish, or
//! one SSE error event in the OpenAI shape followed by `[DONE]` (upstream reset, idle
//! timeout, cancellation, a crashed stream actor). A client that goes away cancels the
//! upstream at once: the pump drops the upstream response, which closes its connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use llmmux_actors::stream::{PumpCtx, PumpEvent, StreamJob, StreamMsg};
use llmmux_actors::table::{BackendHandle, InFlightGuard};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{warn, Instrument};

use super::retry::ActiveGuard;
use super::Endpoint;
use crate::app::AppState;
use crate::http::body::{Body, ChannelBody};
use crate::http::error::GatewayError;
use crate::toolcall::{Emit, Family, RequestTools, StreamRepair};

/// Frames buffered between pump and client.
const CHANNEL_FRAMES: usize = 32;
/// How long a terminal error event may wait for a slow client.
const ERROR_WAIT: Duration = Duration::from_secs(5);
/// Shorter when cancelled: shutdown or a dead stream actor must not linger.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

pub struct Relay {
    pub ep: Endpoint,
    pub rid: String,
    pub client_wants_usage: bool,
    pub repair: Option<(Family, RequestTools)>,
}

type Guards = (InFlightGuard, OwnedSemaphorePermit, ActiveGuard);

pub async fn start_stream(
    state: &Arc<AppState>,
    relay: Relay,
    resp: reqwest::Response,
    first: Bytes,
    up_headers: &HeaderMap,
    guards: Guards,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let backend = guards.0.backend().clone();
    let upstream = Box::pin(
        futures_util::stream::once(async move { Ok::<Bytes, reqwest::Error>(first) })
            .chain(resp.bytes_stream()),
    );
    let idle = state.cfg.stream_idle_timeout;
    let repair = relay.repair.map(|(family, tools)| {
        StreamRepair::new(
            family,
            tools,
            state.cfg.tool_call_options.clone(),
            state.toolcalls.clone(),
        )
    });
    let span = tracing::Span::current();
    let rid = relay.rid.clone();
    let pump = Pump {
        tx,
        backend,
        idle,
        client_wants_usage: relay.client_wants_usage,
        repair,
        chunks: 0,
    };
    let sse = relay.ep.reports_usage();
    let job = StreamJob {
        request_id: rid,
        pump: Box::new(move |ctx: PumpCtx| {
            Box::pin(
                async move {
                    let events = ctx.events.clone();
                    let _ = events.cast(StreamMsg::Pump(PumpEvent::FirstByte));
                    let (outcome, chunks) = if sse {
                        pump.run_sse(upstream, &ctx).await
                    } else {
                        pump.run_raw(upstream, &ctx).await
                    };
                    let _ = events.cast(StreamMsg::Pump(PumpEvent::Finished { outcome, chunks }));
                }
                .instrument(span),
            )
        }),
    };
    if let Err(e) = state.streams.spawn(job).await {
        warn!(error = %e, "could not start a stream actor");
        return GatewayError::Internal.into_response();
    }
    let mut resp = Response::new(ChannelBody::boxed_body(rx, guards));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        up_headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("text/event-stream; charset=utf-8")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

struct Pump {
    tx: mpsc::Sender<Bytes>,
    backend: Arc<BackendHandle>,
    idle: Duration,
    client_wants_usage: bool,
    repair: Option<StreamRepair>,
    chunks: u64,
}

/// Why the pump stopped reading.
enum Step<T> {
    Item(T),
    End,
    Failed(GatewayError, &'static str),
    ClientGone,
    Cancelled,
}

pub fn frame(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// `{"choices":[], "usage": {...}}`: the usage-only chunk.
fn usage_of(data: &str) -> Option<(u64, u64)> {
    if !data.contains("\"usage\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    let usage = v.get("usage").filter(|u| u.is_object())?;
    if !v
        .get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.is_empty())
    {
        return None;
    }
    Some((
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    ))
}

impl Pump {
    async fn next<S, T, E>(&self, s: &mut S, ctx: &PumpCtx) -> Step<T>
    where
        S: Stream<Item = Result<T, E>> + Unpin,
    {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Step::Cancelled,
            _ = self.tx.closed() => Step::ClientGone,
            r = tokio::time::timeout(self.idle, s.next()) => match r {
                Err(_) => Step::Failed(GatewayError::UpstreamTimeout, "upstream_idle"),
                Ok(None) => Step::End,
                Ok(Some(Err(_))) => Step::Failed(GatewayError::UpstreamFailed, "upstream_error"),
                Ok(Some(Ok(item))) => Step::Item(item),
            }
        }
    }

    async fn send(&mut self, bytes: Bytes, ctx: &PumpCtx) -> bool {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => false,
            r = self.tx.send(bytes) => {
                self.chunks += 1;
                r.is_ok()
            }
        }
    }

    /// Forward one upstream payload after usage filtering.
    async fn emit(&mut self, data: &str, ctx: &PumpCtx) -> bool {
        if let Some((p, c)) = usage_of(data) {
            let _ = ctx.events.cast(StreamMsg::Pump(PumpEvent::Usage {
                prompt_tokens: p,
                completion_tokens: c,
            }));
            if !self.client_wants_usage {
                return true;
            }
        }
        self.send(frame(data), ctx).await
    }

    async fn run_sse<S>(mut self, upstream: S, ctx: &PumpCtx) -> (&'static str, u64)
    where
        S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
    {
        let mut events = upstream.eventsource();
        let outcome = loop {
            match self.next(&mut events, ctx).await {
                Step::Item(ev) => {
                    let data = ev.data;
                    if data == "[DONE]" {
                        self.flush_repair(ctx).await;
                        let _ = self.send(frame("[DONE]"), ctx).await;
                        self.backend.record_outcome(false);
                        break "ok";
                    }
                    let replaced = match self.repair.as_mut() {
                        Some(r) => match r.push(&data) {
                            Emit::PassThrough => None,
                            Emit::Replace(v) => Some(v),
                        },
                        None => None,
                    };
                    let ok = match replaced {
                        None => self.emit(&data, ctx).await,
                        Some(list) => {
                            let mut ok = true;
                            for d in list {
                                ok = ok && self.emit(&d, ctx).await;
                            }
                            ok
                        }
                    };
                    if !ok {
                        break self.send_failed(ctx).await;
                    }
                }
                Step::End => {
                    self.flush_repair(ctx).await;
                    self.backend.record_outcome(true);
                    break self
                        .fail_with("upstream_closed", GatewayError::UpstreamFailed, ERROR_WAIT)
                        .await;
                }
                Step::Failed(e, why) => {
                    self.flush_repair(ctx).await;
                    self.backend.record_outcome(true);
                    break self.fail_with(why, e, ERROR_WAIT).await;
                }
                Step::ClientGone => break "client_gone",
                Step::Cancelled => break self.cancelled().await,
            }
        };
        (outcome, self.chunks)
    }

    async fn run_raw<S>(mut self, mut upstream: S, ctx: &PumpCtx) -> (&'static str, u64)
    where
        S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
    {
        let outcome = loop {
            match self.next(&mut upstream, ctx).await {
                Step::Item(b) => {
                    if !self.send(b, ctx).await {
                        break self.send_failed(ctx).await;
                    }
                }
                Step::End => {
                    self.backend.record_outcome(false);
                    break "ok";
                }
                Step::Failed(e, why) => {
                    self.backend.record_outcome(true);
                    break self.fail_with(why, e, ERROR_WAIT).await;
                }
                Step::ClientGone => break "client_gone",
                Step::Cancelled => break self.cancelled().await,
            }
        };
        (outcome, self.chunks)
    }

    async fn flush_repair(&mut self, ctx: &PumpCtx) {
        if let Some(r) = self.repair.as_mut() {
            for d in r.finish() {
                if !self.emit(&d, ctx).await {
                    return;
                }
            }
        }
    }

    /// A send failed: either the client went away or the stream was cancelled meanwhile.
    async fn send_failed(&mut self, ctx: &PumpCtx) -> &'static str {
        if ctx.cancel.is_cancelled() {
            self.cancelled().await
        } else {
            "client_gone"
        }
    }

    async fn cancelled(&mut self) -> &'static str {
        self.fail_with("cancelled", GatewayError::Internal, CANCEL_WAIT)
            .await
    }

    /// Send the terminal error event (then the stream closes). A slow client gets at most
    /// `wait` to take it; the upstream is dropped either way.
    async fn fail_with(
        &mut self,
        why: &'static str,
        e: GatewayError,
        wait: Duration,
    ) -> &'static str {
        let _ = tokio::time::timeout(wait, self.tx.send(e.sse_terminal())).await;
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_detection() {
        assert_eq!(
            usage_of(
                r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#
            ),
            Some((3, 4))
        );
        assert_eq!(
            usage_of(r#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":3}}"#),
            None
        );
        assert_eq!(
            usage_of(r#"{"id":"x","choices":[{"delta":{"content":"usage"}}]}"#),
            None
        );
    }

    #[test]
    fn multi_line_data_is_framed_per_line() {
        assert_eq!(&frame("a\nb")[..], b"data: a\ndata: b\n\n");
    }
}
