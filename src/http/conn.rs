//! Per-connection bookkeeping for the front door: how many requests a connection has in
//! progress and since when it is idle (so silent and idle sockets can be closed whatever the
//! protocol), and a socket wrapper that fails a write blocked for `CLIENT_SEND_TIMEOUT` (a
//! client that stopped reading), as nginx's `send_timeout` does.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Shared between a connection's task, its requests and its socket wrapper.
#[derive(Debug)]
pub struct ConnActivity {
    born: Instant,
    active: AtomicU32,
    /// Milliseconds since `born` when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds since `born` of the first byte read while idle (the start of the next
    /// request head), plus one; 0 while none came.
    head_started_ms: AtomicU64,
    requests: AtomicU64,
    send_timed_out: AtomicBool,
    /// Wakes the connection's watchdog when a new head starts (its deadline moves closer).
    pub head_started: tokio::sync::Notify,
}

impl ConnActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            active: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            send_timed_out: AtomicBool::new(false),
            head_started: tokio::sync::Notify::new(),
        })
    }

    /// A request starts; it is in progress until the guard drops (its response is done).
    pub fn enter(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// When this connection, with no request in progress, must be closed: `head` after
    /// accepting it or after the first byte of a later request head (a slow or partial head),
    /// `keepalive` after its last response when nothing arrived since. `None` while a
    /// request is in progress (its own timeouts apply).
    pub fn idle_deadline(&self, head: Duration, keepalive: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64| self.born + Duration::from_millis(ms);
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.born + head);
        }
        match self.head_started_ms.load(Ordering::Acquire) {
            0 => Some(at(self.idle_since_ms.load(Ordering::Acquire)) + keepalive),
            started => Some(at(started - 1) + head),
        }
    }

    fn bytes_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            let now = self.born.elapsed().as_millis() as u64 + 1;
            if self
                .head_started_ms
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.head_started.notify_one();
            }
        }
    }

    /// A write to this client was blocked for `CLIENT_SEND_TIMEOUT`.
    pub fn send_timed_out(&self) -> bool {
        self.send_timed_out.load(Ordering::Acquire)
    }
}

/// Marks one request in progress on its connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnActivity>);

impl RequestGuard {
    pub fn connection(&self) -> &ConnActivity {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.born.elapsed().as_millis() as u64, Ordering::Release);
        a.head_started_ms.store(0, Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket whose writes fail with `TimedOut` after `limit` without progress.
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is blocked; boxed once, then reset (no allocation per write).
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    activity: Arc<ConnActivity>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration, activity: Arc<ConnActivity>) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
            activity,
        }
    }

    /// The inner write returned `progress`: disarm on progress, else arm the timer and
    /// report `TimedOut` once it fires.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if progress.is_ready() {
            self.armed = false;
            return progress;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.activity.send_timed_out.store(true, Ordering::Release);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client accepted no bytes within CLIENT_SEND_TIMEOUT",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Default `MAX_CONNECTIONS`: half the file-descriptor limit (each client connection may
/// hold one upstream connection), minus a reserve for listeners, the database and files.
pub fn default_max_connections(nofile: u64) -> usize {
    (nofile.saturating_sub(128) / 2).clamp(16, 1 << 20) as usize
}

/// Raise the soft file limit to the hard one (as nginx's `worker_rlimit_nofile` and Go's
/// runtime do) and return it.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_leaves_room() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(100), 16);
        assert_eq!(default_max_connections(1_048_576), 524_224);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_deadlines_follow_requests() {
        let a = ConnActivity::new();
        let first = Duration::from_secs(10);
        let between = Duration::from_secs(75);
        let d0 = a.idle_deadline(first, between).expect("idle");
        assert_eq!(d0 - a.born, first);
        let g = a.enter();
        assert!(a.idle_deadline(first, between).is_none());
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(g);
        let d1 = a.idle_deadline(first, between).expect("idle");
        assert_eq!(d1 - a.born, Duration::from_secs(3) + between);
        tokio::time::advance(Duration::from_secs(2)).await;
        a.bytes_read();
        let d2 = a.idle_deadline(first, between).expect("idle");
        assert_eq!(
            d2 - a.born,
            Duration::from_secs(5) + first,
            "a started head must finish soon"
        );
    }
}
