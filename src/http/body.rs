//! Response bodies: a full body, or a stream fed by a bounded channel from a pump task.
//! The channel body owns an optional guard (an in-flight slot, for instance) so accounting
//! ends exactly when the client stops reading, whatever the reason.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Streams what the pump sends; ends when the pump drops its sender.
pub struct ChannelBody<G: Send + Sync + Unpin + 'static> {
    rx: mpsc::Receiver<Bytes>,
    _guard: G,
}

impl<G: Send + Sync + Unpin + 'static> ChannelBody<G> {
    pub fn boxed_body(rx: mpsc::Receiver<Bytes>, guard: G) -> Body {
        ChannelBody { rx, _guard: guard }.boxed()
    }
}

impl<G: Send + Sync + Unpin + 'static> http_body::Body for ChannelBody<G> {
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
