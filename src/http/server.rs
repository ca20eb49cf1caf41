//! Accept loop and connection tasks: hyper-util's auto (HTTP/1.1 + h2c) connections with
//! bounded heads, HTTP/2 keep-alive pings, a cap on connections, a watchdog that closes a
//! connection idle for `HEADER_READ_TIMEOUT` before its first request (whatever the
//! protocol, so half an HTTP/2 preface is no way to hold a socket) or `KEEPALIVE_TIMEOUT`
//! between requests, writes bounded by `CLIENT_SEND_TIMEOUT`, and graceful shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::conn::{default_max_connections, raise_nofile_limit, ConnActivity, SendTimeout};
use super::router::ConnInfo;
use crate::gated::Gated;
use crate::state::AppState;

/// How long a closing connection may take to finish what is in flight after the
/// watchdog asked it to stop, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a shed connection may take to send the start of its request.
const SHED_WAIT: Duration = Duration::from_millis(500);

/// Counters of the front door.
#[derive(Debug, Default)]
pub struct FrontDoor {
    pub open: AtomicU64,
    pub shed: AtomicU64,
    pub idle_closed: AtomicU64,
    pub accept_errors: AtomicU64,
}

const SHED_BODY: &str = r#"{"error":{"message":"The gateway has too many open connections; retry shortly.","type":"server_error","param":null,"code":"too_many_connections"}}"#;

/// Limits every connection shares.
#[derive(Clone, Copy)]
struct ConnLimits {
    first_request: Duration,
    between_requests: Duration,
    send_timeout: Duration,
}

pub async fn serve(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    let cfg = state.config.load();
    let max = cfg
        .max_connections
        .unwrap_or_else(|| default_max_connections(raise_nofile_limit()));
    info!(max_connections = max, "accepting connections");
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection watchdog times heads out instead: hyper's timer also runs on idle
        // keep-alive connections and answers an unsolicited 408 on them, which a client
        // reusing the connection at that moment reads as the answer to its request.
        .header_read_timeout(None)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let builders = Arc::new(Builders::new(builder));
    let limits = ConnLimits {
        first_request: cfg.header_read_timeout,
        between_requests: cfg.keepalive_timeout,
        send_timeout: cfg.client_send_timeout,
    };
    drop(cfg);
    let tracker = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                state.front.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff.failed(&e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.front.shed.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(shed(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, builders, stop) = (state.clone(), builders.clone(), stop.clone());
        tracker.spawn(async move {
            state.front.open.fetch_add(1, Ordering::Relaxed);
            connection(stream, peer, state.clone(), builders, limits, stop).await;
            state.front.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The connection builders: one per protocol, and one that reads the protocol itself.
struct Builders {
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
    either: Builder<TokioExecutor>,
}

impl Builders {
    fn new(either: Builder<TokioExecutor>) -> Self {
        Self {
            http1: either.clone().http1_only(),
            http2: either.clone().http2_only(),
            either,
        }
    }

    /// The builder for a connection whose first bytes are `first` (peeked, still unread).
    /// hyper-util's own detection reads the first bytes and hands them back on hyper's first
    /// read alone: hyper's 8 KiB read buffer then holds a few bytes when the rest of the head
    /// arrives and doubles to 16 KiB for the connection's whole life. Choosing from peeked
    /// bytes lets hyper read the head in one go. Only a prefix too short to tell (`P`, `PR`)
    /// goes to the detecting builder.
    fn for_first_bytes(&self, first: &[u8]) -> &Builder<TokioExecutor> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let n = first.len().min(PREFACE.len());
        if first[..n] != PREFACE[..n] {
            &self.http1
        } else if n >= 3 {
            // `PRI` is no HTTP/1 method: it is reserved for this preface (`PR` alone could
            // still be WebDAV's PROPFIND).
            &self.http2
        } else {
            &self.either
        }
    }
}

/// What a new connection sent first.
enum FirstBytes {
    /// Peeked, still unread: `(bytes, how many)`.
    Came([u8; 24], usize),
    /// Nothing within `HEADER_READ_TIMEOUT`.
    Silent,
    /// Closed, failed, or the gateway is stopping.
    Gone,
}

/// Waits for the connection's first bytes and peeks at them (they stay in the socket).
async fn peek_first(stream: &TcpStream, wait: Duration) -> FirstBytes {
    let mut first = [0u8; 24];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => FirstBytes::Came(first, n),
        Ok(_) => FirstBytes::Gone,
        Err(_) => FirstBytes::Silent,
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<AppState>,
    builders: Arc<Builders>,
    limits: ConnLimits,
    stop: CancellationToken,
) {
    // Made first: the head's deadline counts from the accept, the wait for the first
    // bytes included.
    let activity = ConnActivity::new();
    let first = tokio::select! {
        f = peek_first(&stream, limits.first_request) => f,
        _ = stop.cancelled() => FirstBytes::Gone,
    };
    let builder = match first {
        FirstBytes::Came(bytes, n) => builders.for_first_bytes(&bytes[..n]),
        FirstBytes::Silent => {
            state.front.idle_closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        FirstBytes::Gone => return,
    };
    let io = TokioIo::new(SendTimeout::new(
        stream,
        limits.send_timeout,
        activity.clone(),
    ));
    let svc = {
        let (activity, state) = (activity.clone(), state.clone());
        service_fn(move |req| {
            let info = ConnInfo {
                peer,
                request: activity.enter(),
            };
            let st = state.clone();
            // Boxed: hyper keeps room for the service's future for the connection's whole
            // life, and the handler's state machine is kilobytes; boxed, a connection that
            // carries a long stream holds a pointer, and the handler's memory is freed as
            // soon as the response starts.
            let handling = Box::pin(super::router::handle(st, info, req));
            async move { Ok::<_, std::convert::Infallible>(handling.await) }
        })
    };
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let idle_at = activity.idle_deadline(limits.first_request, limits.between_requests);
        let wake = match (closing, idle_at) {
            (Some(t), _) => t,
            (None, Some(t)) => t,
            // A request is in progress: its own timeouts apply; look again in a while.
            (None, None) => Instant::now() + limits.first_request,
        };
        // The rare signals, gated: the connection's task is woken for every event it
        // carries, and polling them each time took three locks.
        let open = closing.is_none();
        let control = Gated::new(async {
            tokio::select! {
                _ = activity.head_started.notified(), if open => Control::HeadStarted,
                _ = stop.cancelled(), if open => Control::Stop,
                _ = tokio::time::sleep_until(wake) => Control::Timer,
            }
        });
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            c = control => match c {
                Control::HeadStarted => {}
                Control::Stop => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + state.config.load().shutdown_grace);
                }
                Control::Timer => {
                    if closing.is_some() {
                        return;
                    }
                    let still_idle = activity
                        .idle_deadline(limits.first_request, limits.between_requests)
                        .is_some_and(|t| t <= Instant::now());
                    if still_idle {
                        state.front.idle_closed.fetch_add(1, Ordering::Relaxed);
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
            },
        }
    }
}

/// What woke a connection's loop other than the connection itself.
enum Control {
    HeadStarted,
    Stop,
    Timer,
}

/// Over `MAX_CONNECTIONS`: answer 503 in the OpenAI shape (readable by HTTP/1 clients) and
/// close. The answer waits briefly for the first bytes of the request: a client that has
/// not sent its request yet would read an early answer as an unsolicited message (a
/// connection error) instead of a 503 it can retry on.
async fn shed(mut stream: TcpStream) {
    let mut first = [0u8; 1024];
    let _ = tokio::time::timeout(SHED_WAIT, stream.read(&mut first)).await;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{SHED_BODY}",
        SHED_BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accept errors (out of descriptors, say) back off exponentially up to 1 s and are logged
/// at most once per second, with the number of errors since the last line.
#[derive(Default)]
struct AcceptBackoff {
    delay: Duration,
    suppressed: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn failed(&mut self, e: &std::io::Error) {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(error = %e, suppressed = self.suppressed, backoff_ms = self.delay.as_millis() as u64, "accept failed");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(self.delay).await;
    }
}
