//! Incremental SSE decoder (the HTML event-stream rules) for upstream streams that passed
//! [`SseGuard`](super::sse_guard::SseGuard), which has already stripped a BOM, stopped at
//! invalid UTF-8, capped event sizes and closed a last event left open at EOF.
//!
//! It replaces eventsource-stream on the streaming path (issue #13): that parser walked every
//! line char by char through nom combinators and copied the rest of its buffer after each
//! line, 28% of a streamed event's instructions. Here line ends are found with `memchr`, and
//! the common event (one `data: ` line and a blank line, LF endings, inside one chunk) is
//! handed out as slices of the upstream chunk: its data without a copy, and its bytes as the
//! frame the pump forwards unchanged, since re-framing it would give the same bytes. Such a
//! frame keeps its upstream read buffer alive only while it waits in the pump's bounded
//! frame queue.
//!
//! Only `data` fields are kept: the pump uses nothing else, and vLLM sends no `event`, `id`
//! or `retry`. A differential property test holds it to eventsource-stream's events at every
//! split of the input, behind the guard as in the pump. One difference is by design: a CR
//! last in a chunk ends its line at once, as the rules say, where eventsource-stream waits
//! for the next byte in case it is an LF; so an event closed by a bare CR goes out a chunk
//! sooner.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;

const DATA_PREFIX: &[u8] = b"data: ";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    data: Bytes,
    /// The event's own bytes when they are exactly `data: {data}\n\n`.
    frame: Option<Bytes>,
}

impl SseEvent {
    /// The event's data lines joined by LF: valid UTF-8 behind the guard, which checked
    /// every byte (so the relay does not check it again; `str` is made only where text is
    /// needed, for tool-call repair).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The event as it came, when that is already its canonical frame.
    pub fn frame(&self) -> Option<&Bytes> {
        self.frame.as_ref()
    }
}

/// The event's only line so far is a `data: ` line ending in LF, in the chunk being read.
#[derive(Debug)]
struct Single {
    start: usize,
    data: Range<usize>,
}

#[derive(Debug)]
struct Decoder {
    /// The unfinished line, when it spans chunks.
    line: Vec<u8>,
    /// Data lines of the unfinished event, each followed by LF.
    data: Vec<u8>,
    has_data: bool,
    /// No line of the current event seen yet.
    fresh: bool,
    /// The last chunk ended in CR: an LF first in the next one completes a CRLF.
    after_cr: bool,
    single: Option<Single>,
}

impl Decoder {
    fn new() -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            fresh: true,
            after_cr: false,
            single: None,
        }
    }

    fn feed(&mut self, chunk: &Bytes, out: &mut VecDeque<SseEvent>) {
        let bytes = &chunk[..];
        if bytes.is_empty() {
            // Not even a pending CR is decided by nothing.
            return;
        }
        let mut i = 0;
        if std::mem::take(&mut self.after_cr) && bytes.first() == Some(&b'\n') {
            i = 1;
        }
        while i < bytes.len() {
            let Some(j) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) else {
                self.line.extend_from_slice(&bytes[i..]);
                break;
            };
            let end = i + j;
            let lf = bytes[end] == b'\n';
            let mut next = end + 1;
            if !lf {
                match bytes.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.line_in_chunk(chunk, i..end, lf, out);
            } else {
                self.line.extend_from_slice(&bytes[i..end]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, out);
                // Keep the buffer's capacity for the next long line.
                self.line = line;
                self.line.clear();
            }
            i = next;
        }
        self.spill(chunk);
    }

    /// A complete line inside `chunk`, ended by LF (`lf`) or by CR or CRLF.
    fn line_in_chunk(
        &mut self,
        chunk: &Bytes,
        line: Range<usize>,
        lf: bool,
        out: &mut VecDeque<SseEvent>,
    ) {
        if line.is_empty() {
            if let Some(s) = self.single.take() {
                if lf {
                    out.push_back(SseEvent {
                        data: chunk.slice(s.data),
                        frame: Some(chunk.slice(s.start..line.end + 1)),
                    });
                    self.fresh = true;
                    return;
                }
                self.single = Some(s);
                self.spill(chunk);
            }
            self.dispatch(out);
            return;
        }
        let text = &chunk[line.clone()];
        if self.fresh && lf && text.starts_with(DATA_PREFIX) {
            self.fresh = false;
            self.single = Some(Single {
                start: line.start,
                data: line.start + DATA_PREFIX.len()..line.end,
            });
            return;
        }
        self.spill(chunk);
        self.line_done(text, out);
    }

    /// Moves a single data line held as a range of `chunk` into the data buffer.
    fn spill(&mut self, chunk: &Bytes) {
        if let Some(s) = self.single.take() {
            self.push_data(&chunk[s.data]);
        }
    }

    fn push_data(&mut self, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
        self.has_data = true;
    }

    fn line_done(&mut self, line: &[u8], out: &mut VecDeque<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        self.fresh = false;
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        if name == b"data" {
            self.push_data(value);
        }
    }

    /// A blank line: the event is complete (an event without data is none).
    fn dispatch(&mut self, out: &mut VecDeque<SseEvent>) {
        self.fresh = true;
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push_back(SseEvent {
            data: Bytes::from(data),
            frame: None,
        });
    }
}

pin_project! {
    /// The events of an upstream byte stream; a transport error ends it.
    pub struct SseEvents<S> {
        #[pin]
        inner: S,
        decoder: Decoder,
        ready: VecDeque<SseEvent>,
        done: bool,
    }
}

impl<S> SseEvents<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            decoder: Decoder::new(),
            ready: VecDeque::new(),
            done: false,
        }
    }
}

impl<S, E> Stream for SseEvents<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<SseEvent, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(ev) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.decoder.feed(&chunk, this.ready),
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                // An event still open at EOF is dropped, as the rules say.
                None => *this.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::sse_guard::{SseGuard, SseGuardError};
    use eventsource_stream::Eventsource;
    use futures_util::{FutureExt, StreamExt};
    use proptest::prelude::*;

    fn upstream(chunks: &[Bytes]) -> impl Stream<Item = Result<Bytes, ()>> + '_ {
        futures_util::stream::iter(chunks.iter().cloned().map(Ok::<_, ()>))
    }

    fn decode(chunks: &[Bytes]) -> Vec<SseEvent> {
        SseEvents::new(upstream(chunks))
            .map(|r| r.expect("no transport error"))
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("a synchronous stream is never pending")
    }

    fn datas(events: &[SseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| std::str::from_utf8(e.data()).expect("utf-8").to_owned())
            .collect()
    }

    /// Both decoders behind the guard, as the pump has them.
    fn guarded(chunks: &[Bytes]) -> impl Stream<Item = Result<Bytes, SseGuardError<()>>> + '_ {
        SseGuard::new(upstream(chunks), 1 << 20)
    }

    /// What eventsource-stream makes of the same chunks.
    fn reference(chunks: &[Bytes]) -> Vec<String> {
        guarded(chunks)
            .eventsource()
            .map(|r| r.expect("the reference parser accepts it").data)
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("a synchronous stream is never pending")
    }

    /// One chunk, every cut in two, one chunk per byte, and cuts at `at`.
    fn splits(bytes: &[u8], at: &[prop::sample::Index]) -> Vec<Vec<Bytes>> {
        let b = Bytes::copy_from_slice(bytes);
        let mut all: Vec<Vec<Bytes>> = (0..=b.len())
            .map(|i| vec![b.slice(..i), b.slice(i..)])
            .collect();
        all.push((0..b.len()).map(|i| b.slice(i..i + 1)).collect());
        let mut cuts: Vec<usize> = at.iter().map(|c| c.index(b.len() + 1)).collect();
        cuts.sort_unstable();
        let mut from = 0;
        let mut multi = Vec::new();
        for i in cuts.into_iter().chain([b.len()]) {
            multi.push(b.slice(from..i));
            from = i;
        }
        all.push(multi);
        all
    }

    /// Line pieces an upstream could send, valid or odd, with every line ending.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "data: ",
            "data:",
            "data",
            "data:  x",
            ": ping",
            ":",
            "event: e",
            "id: 7",
            "retry: 10",
            "dat",
            "x",
            "{\"a\":[1]}",
            "é€😀",
            " ",
            "\n",
            "\n",
            "\n",
            "\r\n",
            "\r",
            "[DONE]",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn same_events_as_eventsource_stream_at_every_split(
            pieces in prop::collection::vec(piece(), 0..24),
            at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let text: String = pieces.concat();
            for chunks in splits(text.as_bytes(), &at) {
                let got: Vec<SseEvent> = SseEvents::new(guarded(&chunks))
                    .map(|r| r.expect("valid input"))
                    .collect::<Vec<_>>()
                    .now_or_never()
                    .expect("a synchronous stream is never pending");
                prop_assert_eq!(datas(&got), reference(&chunks), "{:?}", chunks);
                for ev in &got {
                    if let Some(f) = ev.frame() {
                        // Forwarding the event's bytes is the same as re-framing its data.
                        prop_assert_eq!(f, &crate::proxy::pump::frame(ev.data()));
                    }
                }
            }
        }
    }

    #[test]
    fn a_plain_event_in_one_chunk_is_passed_without_a_copy() {
        let chunk = Bytes::from_static(b": hi\n\ndata: {\"n\":1}\n\ndata: a\ndata: b\n\n");
        let got = decode(std::slice::from_ref(&chunk));
        assert_eq!(datas(&got), ["{\"n\":1}", "a\nb"]);
        let frame = got[0].frame().expect("canonical");
        assert_eq!(&frame[..], b"data: {\"n\":1}\n\n");
        let inside = chunk.as_ptr_range();
        assert!(inside.contains(&frame.as_ptr()), "a slice of the chunk");
        assert!(
            inside.contains(&got[0].data.as_ptr()),
            "a slice of the chunk"
        );
        assert_eq!(got[1].frame(), None, "two data lines are re-framed");
    }

    #[test]
    fn events_split_across_chunks_or_with_other_endings_are_re_framed() {
        let got = decode(&[Bytes::from_static(b"data: a"), Bytes::from_static(b"b\n\n")]);
        assert_eq!(datas(&got), ["ab"]);
        assert_eq!(got[0].frame(), None);
        let got = decode(&[Bytes::from_static(b"data: a\r\n\r\ndata: b\n\r\n")]);
        assert_eq!(datas(&got), ["a", "b"]);
        assert!(got.iter().all(|e| e.frame().is_none()));
        // A CR at a chunk's end, an empty chunk, then the LF: one CRLF, not a blank line.
        let cut = [&b"data: a\r"[..], b"", b"\n", b"data: b\n\n"].map(Bytes::from_static);
        assert_eq!(datas(&decode(&cut)), ["a\nb"]);
        // A bare CR last in the chunk ends the event without waiting for the next byte.
        assert_eq!(datas(&decode(&[Bytes::from_static(b"data: a\r\r")])), ["a"]);
    }

    #[test]
    fn a_transport_error_ends_the_events_after_those_before_it() {
        let upstream = futures_util::stream::iter([
            Ok(Bytes::from_static(b"data: 1\n\ndata: 2\n\ndata: 3")),
            Err("reset"),
            Ok(Bytes::from_static(b"\n\n")),
        ]);
        let got: Vec<_> = SseEvents::new(upstream)
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("synchronous");
        let shown: Vec<_> = got
            .iter()
            .map(|r| match r {
                Ok(e) => std::str::from_utf8(e.data()).expect("utf-8").to_owned(),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        assert_eq!(shown, ["1", "2", "error: reset"]);
    }
}
