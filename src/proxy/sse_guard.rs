//! A guard between the upstream byte stream and the SSE decoder ([`super::sse`]), so that
//! the decoder only ever sees bytes it can handle:
//!
//! - **Invalid UTF-8.** Validated incrementally (a sequence may be split across chunks; at
//!   most 3 bytes of state); the stream fails at the first invalid byte. (eventsource-stream,
//!   the decoder before issue #13, kept a bad byte buffered and stalled until the idle
//!   timeout while memory grew.)
//! - **Unbounded events.** A decoder buffers an event until its blank line, however long.
//!   The guard counts the bytes of the unfinished event and fails past `max_event_bytes`.
//! - **A last event without its blank line.** The decoder drops it at EOF (as the SSE spec
//!   says), so `data: [DONE]` sent without `\n\n` before the close would look like a broken
//!   stream. The guard adds the missing terminator at EOF when an event is pending.
//! - **A leading BOM.** Stripped, as the spec says (eventsource-stream panicked on it).
//!
//! Chunks pass through unchanged (`Bytes` slices, no copy). On a violation the guard first
//! yields the valid part of the chunk (events completed before the bad byte still reach the
//! client), then the error, then ends: no byte after the violation reaches the parser.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;

const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Closes a pending event whatever its last line ending was: after a bare CR, the LF makes
/// a CRLF and the second LF the blank line; otherwise the first LF ends the line (or is the
/// blank line) and a second blank line is an empty event, which parsers ignore.
const TERMINATOR: &[u8] = b"\n\n";

/// Why the guard ended a stream.
#[derive(Debug, thiserror::Error)]
pub enum SseGuardError<E> {
    /// The upstream transport failed; passed through.
    #[error("upstream transport failed: {0}")]
    Upstream(#[source] E),
    #[error("the event stream is not valid UTF-8")]
    InvalidUtf8,
    #[error("an event exceeds {max} bytes")]
    EventTooLarge { max: usize },
}

/// A stream violation found by [`Scanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Violation {
    InvalidUtf8,
    EventTooLarge,
}

/// Incremental UTF-8 validation: the only state is the incomplete sequence at the end of the
/// bytes seen so far (at most 3 bytes).
#[derive(Debug, Default)]
struct Utf8Check {
    pending: [u8; 4],
    len: usize,
}

/// Length of the sequence a (valid) lead byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Check {
    /// `Err(at)`: the stream stops being valid UTF-8 at `at` in `chunk` (0 when the bad
    /// sequence began in an earlier chunk).
    fn feed(&mut self, chunk: &[u8]) -> Result<(), usize> {
        let mut from = 0;
        if self.len > 0 {
            let need = sequence_len(self.pending[0]) - self.len;
            let take = need.min(chunk.len());
            self.pending[self.len..self.len + take].copy_from_slice(&chunk[..take]);
            match std::str::from_utf8(&self.pending[..self.len + take]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.len += take;
                    return Ok(());
                }
                Err(_) => return Err(0),
            }
            from = take;
        }
        match std::str::from_utf8(&chunk[from..]) {
            Ok(_) => Ok(()),
            Err(e) => {
                let at = from + e.valid_up_to();
                if e.error_len().is_some() {
                    return Err(at);
                }
                // A sequence cut by the chunk boundary: at most 3 bytes, checked with the
                // next chunk.
                let tail = &chunk[at..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                Ok(())
            }
        }
    }

    /// The stream ended: an incomplete sequence is invalid.
    fn finish(&self) -> Result<(), Violation> {
        if self.len == 0 {
            Ok(())
        } else {
            Err(Violation::InvalidUtf8)
        }
    }
}

/// Size of the unfinished event, with SSE line endings (CRLF, LF or CR) that may be split
/// across chunks.
#[derive(Debug)]
struct EventSize {
    max: usize,
    /// Bytes since the last blank line (a CRLF counts as one byte).
    event: usize,
    /// The current line has content (so its line ending does not make a blank line).
    in_line: bool,
    /// The last byte was a CR: an LF now completes a CRLF instead of ending another line.
    after_cr: bool,
}

impl EventSize {
    fn new(max: usize) -> Self {
        Self {
            max,
            event: 0,
            in_line: false,
            after_cr: false,
        }
    }

    /// Count `n` more bytes of the current event; `Err(k)` when the cap is reached after
    /// `k` of them.
    fn grow(&mut self, n: usize) -> Result<(), usize> {
        let room = self.max - self.event;
        if n > room {
            self.event = self.max;
            return Err(room);
        }
        self.event += n;
        Ok(())
    }

    /// `Err(at)`: the event grows past the cap at `at` in `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let mut i = 0;
        while i < bytes.len() {
            if std::mem::take(&mut self.after_cr) && bytes[i] == b'\n' {
                i += 1;
                continue;
            }
            let Some(j) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) else {
                self.in_line = true;
                return self.grow(bytes.len() - i).map_err(|k| i + k);
            };
            if j > 0 {
                self.in_line = true;
                self.grow(j).map_err(|k| i + k)?;
            }
            if std::mem::take(&mut self.in_line) {
                self.grow(1).map_err(|_| i + j)?;
            } else {
                // A blank line: the event is complete.
                self.event = 0;
            }
            self.after_cr = bytes[i + j] == b'\r';
            i += j + 1;
        }
        Ok(())
    }

    /// At EOF the parser still holds an event (or a CR it cannot decide yet).
    fn pending(&self) -> bool {
        self.event > 0 || self.after_cr
    }
}

/// The pure part of the guard: feed chunks, learn how much of each may pass.
#[derive(Debug)]
struct Scanner {
    utf8: Utf8Check,
    size: EventSize,
}

impl Scanner {
    fn new(max_event_bytes: usize) -> Self {
        Self {
            utf8: Utf8Check::default(),
            size: EventSize::new(max_event_bytes),
        }
    }

    /// `Err((at, why))`: only `chunk[..at]` may pass.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), (usize, Violation)> {
        let utf8 = self.utf8.feed(chunk).err();
        let valid = utf8.unwrap_or(chunk.len());
        if let Err(at) = self.size.feed(&chunk[..valid]) {
            return Err((at, Violation::EventTooLarge));
        }
        match utf8 {
            Some(at) => Err((at, Violation::InvalidUtf8)),
            None => Ok(()),
        }
    }

    /// What to add at EOF, if anything.
    fn finish(&self) -> Result<Option<&'static [u8]>, Violation> {
        self.utf8.finish()?;
        Ok(self.size.pending().then_some(TERMINATOR))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing passed yet; this many bytes of a possible BOM are held back.
    Start(usize),
    Body,
    Ended,
}

/// What the guard yields next, queued when one upstream item produced several.
enum Out {
    Chunk(Bytes),
    Fail(Violation),
}

pin_project! {
    /// See the module documentation. Build with [`SseGuard::new`], then decode with
    /// [`SseEvents`](super::sse::SseEvents).
    pub struct SseGuard<S> {
        #[pin]
        inner: S,
        scanner: Scanner,
        phase: Phase,
        // Used (and allocated) only around a BOM prefix or a violation.
        queue: VecDeque<Out>,
    }
}

impl<S> SseGuard<S> {
    pub fn new(inner: S, max_event_bytes: usize) -> Self {
        Self {
            inner,
            scanner: Scanner::new(max_event_bytes),
            phase: Phase::Start(0),
            queue: VecDeque::new(),
        }
    }

    /// Scan `chunk`: it may pass whole (returned), or its valid part and the violation are
    /// queued and the stream ends.
    fn pass(
        scanner: &mut Scanner,
        phase: &mut Phase,
        queue: &mut VecDeque<Out>,
        chunk: Bytes,
    ) -> Option<Bytes> {
        match scanner.feed(&chunk) {
            Ok(()) => Some(chunk),
            Err((at, why)) => {
                if at > 0 {
                    queue.push_back(Out::Chunk(chunk.slice(..at)));
                }
                queue.push_back(Out::Fail(why));
                *phase = Phase::Ended;
                None
            }
        }
    }
}

impl<S, E> Stream for SseGuard<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, SseGuardError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(out) = this.queue.pop_front() {
                return Poll::Ready(Some(match out {
                    Out::Chunk(b) => Ok(b),
                    Out::Fail(Violation::InvalidUtf8) => Err(SseGuardError::InvalidUtf8),
                    Out::Fail(Violation::EventTooLarge) => Err(SseGuardError::EventTooLarge {
                        max: this.scanner.size.max,
                    }),
                }));
            }
            if *this.phase == Phase::Ended {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Err(e)) => {
                    *this.phase = Phase::Ended;
                    return Poll::Ready(Some(Err(SseGuardError::Upstream(e))));
                }
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(mut chunk)) => {
                    if let Phase::Start(held) = *this.phase {
                        let want = &BOM[held..];
                        let n = chunk.iter().zip(want).take_while(|(a, b)| a == b).count();
                        if n == want.len() {
                            chunk = chunk.slice(n..);
                            *this.phase = Phase::Body;
                        } else if n == chunk.len() {
                            *this.phase = Phase::Start(held + n);
                            continue;
                        } else {
                            *this.phase = Phase::Body;
                            if held > 0 {
                                let prefix = Bytes::from_static(&BOM[..held]);
                                if let Some(p) =
                                    Self::pass(this.scanner, this.phase, this.queue, prefix)
                                {
                                    this.queue.push_back(Out::Chunk(p));
                                }
                            }
                        }
                    }
                    if *this.phase != Phase::Ended && !chunk.is_empty() {
                        if let Some(c) = Self::pass(this.scanner, this.phase, this.queue, chunk) {
                            if this.queue.is_empty() {
                                return Poll::Ready(Some(Ok(c)));
                            }
                            this.queue.push_back(Out::Chunk(c));
                        }
                    }
                }
                None => {
                    if let Phase::Start(held) = *this.phase {
                        // A BOM prefix and then nothing: not even a full character.
                        if held > 0 {
                            let prefix = Bytes::from_static(&BOM[..held]);
                            if let Some(p) =
                                Self::pass(this.scanner, this.phase, this.queue, prefix)
                            {
                                this.queue.push_back(Out::Chunk(p));
                            }
                        }
                    }
                    if *this.phase != Phase::Ended {
                        *this.phase = Phase::Ended;
                        match this.scanner.finish() {
                            Err(why) => this.queue.push_back(Out::Fail(why)),
                            Ok(Some(t)) => this.queue.push_back(Out::Chunk(Bytes::from_static(t))),
                            Ok(None) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::sse::SseEvents;
    use futures_util::{FutureExt, StreamExt};
    use proptest::prelude::*;

    type Outcome = (Vec<String>, Option<SseGuardError<&'static str>>);

    /// Events (their `data`) and the error that ended the stream, if any.
    fn run(chunks: Vec<Vec<u8>>, max: usize) -> Outcome {
        let upstream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, &'static str>(Bytes::from(c))),
        );
        let mut events = SseEvents::new(SseGuard::new(upstream, max));
        let mut out = Vec::new();
        loop {
            // The source is synchronous: every poll is ready.
            match events.next().now_or_never() {
                Some(Some(Ok(ev))) => out.push(
                    std::str::from_utf8(ev.data())
                        .expect("valid UTF-8")
                        .to_owned(),
                ),
                Some(Some(Err(e))) => {
                    let after = events.next().now_or_never();
                    assert!(
                        matches!(after, Some(None)),
                        "{after:?} after the guard's error"
                    );
                    return (out, Some(e));
                }
                Some(None) => return (out, None),
                None => panic!("a synchronous stream was pending"),
            }
        }
    }

    /// The bytes the guard lets through.
    fn passed(chunks: &[&'static [u8]], max: usize) -> Vec<u8> {
        let upstream = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, &'static str>(Bytes::from_static(c))),
        );
        let mut guard = SseGuard::new(upstream, max);
        let mut out = Vec::new();
        while let Some(Some(Ok(b))) = guard.next().now_or_never() {
            out.extend_from_slice(&b);
        }
        out
    }

    /// Every way to cut `bytes` in two, one chunk per byte, and a cut at each of `cuts`.
    fn splits(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<Vec<u8>>> {
        let mut all: Vec<Vec<Vec<u8>>> = (0..=bytes.len())
            .map(|i| vec![bytes[..i].to_vec(), bytes[i..].to_vec()])
            .collect();
        all.push(bytes.iter().map(|b| vec![*b]).collect());
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut from = 0;
        let mut multi = Vec::new();
        for i in at.into_iter().chain([bytes.len()]) {
            multi.push(bytes[from..i].to_vec());
            from = i;
        }
        all.push(multi);
        all
    }

    fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
        prop::collection::vec(any::<prop::sample::Index>(), 0..16)
    }

    /// An outcome as comparable text.
    fn flat(r: &Outcome) -> Vec<String> {
        let mut v = r.0.clone();
        if let Some(e) = &r.1 {
            v.push(format!("error: {e}"));
        }
        v
    }

    const EOLS: [&str; 3] = ["\n", "\r\n", "\r"];

    /// One event: data lines (no CR/LF inside), an optional comment, and its line endings.
    #[derive(Debug, Clone)]
    struct Ev {
        lines: Vec<String>,
        comment: bool,
        eols: Vec<usize>,
        blank: usize,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        (
            prop::collection::vec("[a-z0-9 é€😀\u{0}:\\[\\]{}\"]{0,12}", 1..4),
            any::<bool>(),
            prop::collection::vec(0..3usize, 4),
            0..3usize,
        )
            .prop_map(|(lines, comment, eols, blank)| Ev {
                lines,
                comment,
                eols,
                blank,
            })
    }

    /// The wire text, and the size of each event as the guard counts it.
    fn render(evs: &[Ev], last_blank: bool, last_eol: bool) -> (String, Vec<usize>) {
        let mut s = String::new();
        let mut sizes = Vec::new();
        for (k, e) in evs.iter().enumerate() {
            let last = k + 1 == evs.len();
            let cut = last && !last_blank && !last_eol;
            let mut size = 0;
            let mut prev_cr = false;
            let mut lines: Vec<String> = e.lines.iter().map(|l| format!("data: {l}")).collect();
            if e.comment {
                lines.insert(0, ": note".into());
            }
            let n = lines.len();
            for (i, l) in lines.iter().enumerate() {
                s.push_str(l);
                size += l.len();
                if cut && i + 1 == n {
                    break;
                }
                let eol = EOLS[e.eols[i % e.eols.len()]];
                s.push_str(eol);
                size += 1;
                prev_cr = eol == "\r";
            }
            if last && !last_blank {
                sizes.push(size);
                break;
            }
            // A bare CR then an LF would be one CRLF, not a blank line.
            let blank = match EOLS[e.blank] {
                "\n" if prev_cr => "\r",
                b => b,
            };
            s.push_str(blank);
            sizes.push(size);
        }
        (s, sizes)
    }

    fn expected(evs: &[Ev]) -> Vec<String> {
        evs.iter().map(|e| e.lines.join("\n")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chunk_boundaries_never_matter(
            evs in prop::collection::vec(ev(), 1..4),
            last_blank in any::<bool>(),
            last_eol in any::<bool>(),
            cuts in cuts(),
        ) {
            let (text, _) = render(&evs, last_blank, last_eol);
            let want = expected(&evs);
            let whole = run(vec![text.clone().into_bytes()], 1 << 20);
            prop_assert_eq!(&whole.0, &want, "one chunk: {:?}", text);
            prop_assert!(whole.1.is_none());
            for chunks in splits(text.as_bytes(), &cuts) {
                let got = run(chunks.clone(), 1 << 20);
                prop_assert_eq!(flat(&got), flat(&whole), "{:?}", chunks);
            }
        }

        #[test]
        fn invalid_utf8_fails_at_once_and_nothing_after_it_is_parsed(
            evs in prop::collection::vec(ev(), 1..4),
            at in any::<prop::sample::Index>(),
            bad in prop::sample::select(vec![
                &b"\xFF"[..], b"\xC3A", b"\xE2\x82A", b"\xC0\x80", b"\xED\xA0\x80",
                b"\xF4\x90\x80\x80", b"\x80", b"\xF0\x9F\x98",
            ]),
            cuts in cuts(),
        ) {
            let (text, _) = render(&evs, true, true);
            let boundaries: Vec<usize> =
                (0..=text.len()).filter(|i| text.is_char_boundary(*i)).collect();
            let p = boundaries[at.index(boundaries.len())];
            let mut bytes = text.as_bytes()[..p].to_vec();
            bytes.extend_from_slice(bad);
            // After the bad bytes: an event that must never come out.
            bytes.extend_from_slice(text.as_bytes()[p..].as_ref());
            bytes.extend_from_slice(b"data: AFTER\n\n");
            // What the decoder makes of the valid prefix alone, without an EOF terminator.
            let prefix = SseEvents::new(futures_util::stream::iter([Ok::<_, ()>(Bytes::copy_from_slice(&bytes[..p]))]))
                .filter_map(|r| async move { r.ok().and_then(|e| std::str::from_utf8(e.data()).ok().map(str::to_owned)) })
                .collect::<Vec<_>>()
                .now_or_never()
                .unwrap_or_default();
            for chunks in splits(&bytes, &cuts) {
                let (got, err) = run(chunks.clone(), 1 << 20);
                prop_assert!(matches!(err, Some(SseGuardError::InvalidUtf8)), "{:?}: {:?}", chunks, err);
                prop_assert_eq!(&got, &prefix, "{:?}", chunks);
                prop_assert!(got.iter().all(|d| !d.contains("AFTER")));
            }
        }

        #[test]
        fn event_size_is_capped(
            evs in prop::collection::vec(ev(), 1..5),
            max in 8usize..60,
            cuts in cuts(),
        ) {
            let (text, sizes) = render(&evs, true, true);
            let want = expected(&evs);
            let first_big = sizes.iter().position(|s| *s > max);
            for chunks in splits(text.as_bytes(), &cuts) {
                let (got, err) = run(chunks.clone(), max);
                match first_big {
                    Some(k) => {
                        prop_assert_eq!(&got[..], &want[..k], "{:?}", chunks);
                        let capped = matches!(err, Some(SseGuardError::EventTooLarge { max: m }) if m == max);
                        prop_assert!(capped, "{:?}: {:?}", chunks, err);
                    }
                    None => {
                        prop_assert_eq!(&got, &want);
                        prop_assert!(err.is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn done_without_its_blank_line_is_delivered() {
        for text in [
            "data: [DONE]",
            "data: [DONE]\n",
            "data: [DONE]\r",
            "data: [DONE]\r\n",
            "data: [DONE]\r\r",
            "data: a\n\ndata: [DONE]\r\n",
        ] {
            for chunks in splits(text.as_bytes(), &[]) {
                let (got, err) = run(chunks.clone(), 1024);
                assert_eq!(got.last().map(String::as_str), Some("[DONE]"), "{chunks:?}");
                assert!(err.is_none());
            }
        }
        assert_eq!(passed(&[b"data: [DONE]"], 1024), b"data: [DONE]\n\n");
        // Nothing pending: nothing added.
        assert_eq!(passed(&[b"data: a\n", b"\n"], 1024), b"data: a\n\n");
        assert_eq!(passed(&[b"data: a\r\n\r\n"], 1024), b"data: a\r\n\r\n");
    }

    #[test]
    fn multibyte_characters_split_anywhere_pass() {
        let text = "data: é€😀 ok 😀\n\n";
        for chunks in splits(text.as_bytes(), &[]) {
            let (got, err) = run(chunks, 1024);
            assert_eq!(got, vec!["é€😀 ok 😀".to_string()]);
            assert!(err.is_none());
        }
        // A sequence cut off by the end of the stream is invalid.
        let (got, err) = run(vec![b"data: a\n\ndata: \xF0\x9F".to_vec()], 1024);
        assert_eq!(got, vec!["a".to_string()]);
        assert!(matches!(err, Some(SseGuardError::InvalidUtf8)));
    }

    #[test]
    fn a_leading_bom_is_stripped_wherever_the_chunks_split() {
        let text = "\u{feff}data: a\n\ndata: b\n\n";
        for chunks in splits(text.as_bytes(), &[]) {
            let (got, err) = run(chunks.clone(), 1024);
            assert_eq!(got, vec!["a".to_string(), "b".to_string()], "{chunks:?}");
            assert!(err.is_none());
        }
        // A BOM prefix that turns out not to be one is invalid UTF-8.
        for bytes in [&b"\xEF\xBBdata: a\n\n"[..], b"\xEF", b"\xEF\xBB"] {
            for chunks in splits(bytes, &[]) {
                let (got, err) = run(chunks.clone(), 1024);
                assert!(got.is_empty(), "{chunks:?}");
                assert!(
                    matches!(err, Some(SseGuardError::InvalidUtf8)),
                    "{chunks:?}"
                );
            }
        }
    }

    #[test]
    fn chunks_pass_without_a_copy_and_transport_errors_pass_through() {
        let chunk = Bytes::from_static(b"data: a\n\n");
        let upstream = futures_util::stream::iter([Ok(chunk.clone()), Err("reset")]);
        let mut guard = SseGuard::new(upstream, 1024);
        let first = guard.next().now_or_never().flatten();
        assert!(matches!(&first, Some(Ok(b)) if b.as_ptr() == chunk.as_ptr()));
        assert!(matches!(
            guard.next().now_or_never().flatten(),
            Some(Err(SseGuardError::Upstream("reset")))
        ));
        assert!(matches!(guard.next().now_or_never(), Some(None)));
    }

    #[test]
    fn state_is_constant_and_every_chunk_passes_uncopied() {
        const EVENT: &[u8] = "data: {\"content\":\"é€😀\"}\r\n\r\n".as_bytes();
        // Cuts at every offset: inside characters, between CR and LF, inside the blank line.
        let chunks: Vec<Bytes> = (0..10_000)
            .flat_map(|i| {
                let cut = i % EVENT.len();
                [
                    Bytes::from_static(&EVENT[..cut]),
                    Bytes::from_static(&EVENT[cut..]),
                ]
            })
            .filter(|c| !c.is_empty())
            .collect();
        let upstream = futures_util::stream::iter(chunks.clone().into_iter().map(Ok::<_, ()>));
        let mut guard = SseGuard::new(upstream, EVENT.len());
        for sent in &chunks {
            let got = guard.next().now_or_never().flatten();
            assert!(
                matches!(&got, Some(Ok(b)) if b.as_ptr() == sent.as_ptr() && b.len() == sent.len()),
                "{got:?}"
            );
        }
        assert!(matches!(guard.next().now_or_never(), Some(None)));
        // The only heap-backed state was never used; the rest is a few words.
        assert_eq!(guard.queue.capacity(), 0);
        assert!(std::mem::size_of::<Scanner>() <= 64);
    }

    #[test]
    fn an_oversized_event_passes_at_most_the_cap() {
        let mut bytes = b"data: ok\n\ndata: ".to_vec();
        bytes.resize(bytes.len() + 4096, b'x');
        let upstream = futures_util::stream::iter([Ok::<_, ()>(Bytes::from(bytes))]);
        let mut guard = SseGuard::new(upstream, 1000);
        let Some(Some(Ok(passed))) = guard.next().now_or_never() else {
            panic!("the valid part passes first");
        };
        assert_eq!(passed.len(), b"data: ok\n\n".len() + 1000);
        assert!(matches!(
            guard.next().now_or_never().flatten(),
            Some(Err(SseGuardError::EventTooLarge { max: 1000 }))
        ));
    }
}
