//! [`Gated`]: a future polled only once something it waits on has woken it.
//!
//! A task that polls several futures on every wake-up (a connection with its rare control
//! signals, a response body with its pump) pays for the idle ones on each poll: a
//! cancellation token takes two locks, a `Notify` one. Gated, an idle future costs an
//! atomic swap instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Set by the inner future's wake-ups; it wakes the task that polls the gated future.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// Polls `F` on its first poll and then only after `F` asked to be woken.
    pub struct Gated<F> {
        #[pin]
        fut: F,
        gate: Arc<Gate>,
        waker: Waker,
    }
}

impl<F> Gated<F> {
    pub fn new(fut: F) -> Gated<F> {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            fut,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read, so a wake-up in between is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_gated_future_completes_when_what_it_waits_on_fires() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(7);
        });
        let got = tokio::time::timeout(Duration::from_secs(5), Gated::new(rx)).await;
        assert_eq!(got.ok().and_then(Result::ok), Some(7));
        sender.await.ok();
    }

    #[tokio::test]
    async fn an_idle_gated_future_is_not_polled_again_until_woken() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = {
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                polls.fetch_add(1, Ordering::Relaxed);
                Poll::<()>::Pending
            })
        };
        let mut gated = std::pin::pin!(Gated::new(counted));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }
}
