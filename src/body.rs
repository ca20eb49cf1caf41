//! Response bodies: a full body, a stream fed by a bounded channel from a pump task, and
//! the wrapper that ties every response to its request's outcome record.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tokio::sync::mpsc;

use crate::http::conn::RequestGuard;
use crate::outcome::Outcome;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Streams what the pump sends; ends when the pump drops its sender.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn boxed_body(rx: mpsc::Receiver<Bytes>) -> Body {
        ChannelBody { rx }.boxed()
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
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
