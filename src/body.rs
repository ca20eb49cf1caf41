//! Response bodies: a full body, a stream fed by the pump it runs, and
//! the wrapper that ties every response to its request's outcome record.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use sync_wrapper::SyncWrapper;

use crate::gated::Gated;
use crate::http::conn::RequestGuard;
use crate::outcome::Outcome;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The pump's side of its frame queue. The pump and the body that drains the queue run in
/// the same task (the body polls the pump), so a frame needs no wake-up to be seen; only a
/// pump waiting for room is woken, when the client took a frame.
pub struct Frames(Arc<Shared>);

struct Shared {
    /// Frames queued, read without the lock: the body looks at least once per poll, and
    /// most looks find none.
    len: AtomicUsize,
    queue: Mutex<Queue>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    capacity: usize,
    /// The pump, waiting for room.
    room: Option<Waker>,
}

/// A queue of at most `capacity` frames from a pump to its [`PumpBody`].
pub fn frames(capacity: usize) -> (Frames, FrameQueue) {
    let q = Arc::new(Shared {
        len: AtomicUsize::new(0),
        queue: Mutex::new(Queue {
            frames: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            room: None,
        }),
    });
    (Frames(q.clone()), FrameQueue(q))
}

fn lock(q: &Shared) -> MutexGuard<'_, Queue> {
    q.queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl Frames {
    /// Queues a frame once there is room.
    pub async fn send(&self, frame: Bytes) {
        let mut frame = Some(frame);
        std::future::poll_fn(|cx| {
            let mut q = lock(&self.0);
            if q.frames.len() < q.capacity {
                if let Some(f) = frame.take() {
                    q.frames.push_back(f);
                    self.0.len.store(q.frames.len(), Ordering::Release);
                }
                Poll::Ready(())
            } else {
                q.room = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// The body's side of a pump's frame queue.
pub struct FrameQueue(Arc<Shared>);

impl FrameQueue {
    fn pop(&self) -> Option<Bytes> {
        if self.0.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = lock(&self.0);
        let f = q.frames.pop_front();
        self.0.len.store(q.frames.len(), Ordering::Release);
        if f.is_some() {
            if let Some(w) = q.room.take() {
                w.wake();
            }
        }
        f
    }
}

/// A stream's pump: fills its frame queue, ends when the stream is done.
pub type Pump = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A streaming response: runs its pump (a future that fills a [`FrameQueue`]) and streams
/// the frames, ending when the pump has ended and its frames are out. The pump is polled
/// here, in the client connection's task, so an upstream event reaches the client without
/// waking a task of its own; dropping the body (the client left) drops the pump with it.
pub struct PumpBody {
    /// Polled only when something it waits on fired, not on each of the connection's
    /// polls; only ever polled through `&mut`, so it need not be `Sync` itself.
    pump: Option<SyncWrapper<Gated<Pump>>>,
    queue: FrameQueue,
}

impl PumpBody {
    pub fn boxed_body(pump: Pump, queue: FrameQueue) -> Body {
        PumpBody {
            pump: Some(SyncWrapper::new(Gated::new(pump))),
            queue,
        }
        .boxed()
    }
}

impl http_body::Body for PumpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(f) = this.queue.pop() {
            return Poll::Ready(Some(Ok(Frame::data(f))));
        }
        let Some(pump) = &mut this.pump else {
            return Poll::Ready(None);
        };
        if Pin::new(pump.get_mut()).poll(cx).is_ready() {
            this.pump = None;
        }
        if let Some(f) = this.queue.pop() {
            return Poll::Ready(Some(Ok(Frame::data(f))));
        }
        if this.pump.is_none() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Holds the request's outcome (and its place on the connection) until the response body
/// is finished or dropped, and marks the moment its first byte went to the client.
pub struct OutcomeBody {
    inner: Body,
    outcome: Option<Outcome>,
    request: RequestGuard,
    first_sent: bool,
}

impl OutcomeBody {
    pub fn wrap(inner: Body, outcome: Outcome, request: RequestGuard) -> Body {
        OutcomeBody {
            inner,
            outcome: Some(outcome),
            request,
            first_sent: false,
        }
        .boxed()
    }
}

impl Drop for OutcomeBody {
    fn drop(&mut self) {
        // Recorded before the pump notices the closed channel and calls it `client_gone`.
        if let Some(o) = &self.outcome {
            if self.request.connection().send_timed_out() {
                o.fail("client_send_timeout");
            }
        }
    }
}

impl http_body::Body for OutcomeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(_)) if !this.first_sent => {
                this.first_sent = true;
                if let Some(o) = &this.outcome {
                    o.first_byte();
                }
            }
            // The whole body went out: the record can finish now rather than when the
            // connection drops the body.
            Poll::Ready(None) => {
                if !this.first_sent {
                    if let Some(o) = &this.outcome {
                        o.first_byte();
                    }
                }
                this.outcome = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pump that sends more frames than the queue holds waits for room, is woken when
    /// the client takes a frame, and every frame arrives once, in order; the body ends
    /// when the pump has ended.
    #[tokio::test]
    async fn a_pump_larger_than_its_queue_streams_every_frame_in_order() {
        let (out, queue) = frames(2);
        let pump: Pump = Box::pin(async move {
            for i in 0..50u32 {
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                out.send(Bytes::from(i.to_string())).await;
            }
        });
        let mut body = PumpBody::boxed_body(pump, queue);
        let mut got = Vec::new();
        let drained = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame;
                if let Ok(data) = frame.into_data() {
                    got.push(String::from_utf8_lossy(&data).into_owned());
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the stream stalled after {got:?}");
        let want: Vec<String> = (0..50u32).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}
