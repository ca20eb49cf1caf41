//! Servers that break the protocol (issue 12 scenario 12): invalid UTF-8, one 50 MiB SSE
//! event, headers then silence, an answer that never ends.

use std::time::Duration;

use super::fmt_ms;
use crate::client::{self, Chat, Load, Sample, Tally, Verdict};
use crate::error::Result;
use crate::harness::{Ctx, Gateway, Sim, KEY};
use crate::report::Row;

async fn setup(ctx: &Ctx, fault: &str, vars: &[(&str, String)]) -> Result<(Sim, Gateway)> {
    let sim = Sim::start(
        ctx,
        "a",
        &["--model", "m", "--tokens", "16", "--fault", fault],
    )
    .await?;
    let mut v = vec![("BACKENDS", format!("m:{}", sim.addr()))];
    v.extend(vars.iter().cloned());
    let gw = Gateway::start(ctx, &v).await?;
    gw.wait_healthy(1, Duration::from_secs(10)).await?;
    Ok((sim, gw))
}

async fn requests(ctx: &Ctx, gw: &Gateway, stream: bool, n: usize, c: usize) -> Vec<Sample> {
    let load = Load {
        chat: Chat::new(&gw.base(), KEY, "m", stream).timeout(Duration::from_secs(60)),
        concurrency: c,
        total: Some(n),
        duration: None,
        stream_every: if stream { 1 } else { 0 },
        backoff_on_reject: None,
    };
    client::drive(&ctx.http, &load, Default::default()).await
}

fn slowest(samples: &[Sample]) -> Duration {
    samples
        .iter()
        .map(Sample::latency)
        .max()
        .unwrap_or_default()
}

fn all_error_events(samples: &[Sample]) -> bool {
    !samples.is_empty()
        && samples
            .iter()
            .all(|s| matches!(s.verdict, Verdict::StreamError(_)))
}

/// Bytes that are not UTF-8 after 3 events.
///
/// Pass: every stream ends with an error event + `[DONE]`, within 1 s (at once: no
/// timeout is involved).
/// Figure: the slowest stream.
pub async fn bad_utf8(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("bad-utf8", "invalid UTF-8 after 3 events");
    let (_sim, gw) = setup(ctx, "bad_utf8_after=3", &[]).await?;
    let s = requests(ctx, &gw, true, ctx.n(6, 50), 3).await;
    row.tally(&Tally::of(&s));
    row.check(all_error_events(&s), format!("{:?}", Tally::of(&s).errors));
    row.check(
        slowest(&s) <= ctx.deadline(Duration::from_secs(1)),
        format!("slowest {}", fmt_ms(slowest(&s))),
    );
    row.evidence = format!("{} streams carried invalid UTF-8", s.len());
    row.figure = format!("slowest end {}", fmt_ms(slowest(&s)));
    Ok(row)
}

/// One 50 MiB `data:` event after 2 events (`SSE_MAX_EVENT_BYTES` is 4 MiB).
///
/// Pass: every stream ends with an error event + `[DONE]`; the gateway's peak RSS grows by
/// at most 64 MiB.
/// Figure: the RSS growth.
pub async fn huge_event(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("huge-event", "one 50 MiB SSE event");
    // A simulator busy writing 50 MiB answers its health checks late, and on a loaded
    // machine may take more than a second to write the first 4 MiB: long probe, first-byte
    // and idle timeouts leave the event-size limit as the only thing that can end these
    // streams (the timeouts have scenarios of their own).
    let (_sim, gw) = setup(
        ctx,
        "huge_event=2:52428800",
        &[
            ("HEALTH_PROBE_TIMEOUT", "5000".into()),
            ("FIRST_BYTE_TIMEOUT", "15000".into()),
            ("STREAM_IDLE_TIMEOUT", "15000".into()),
            ("REQUEST_TIMEOUT", "30000".into()),
        ],
    )
    .await?;
    let before = gw.proc().rss_kib;
    let s = requests(ctx, &gw, true, ctx.n(3, 20), 2).await;
    let growth = gw.proc().hwm_kib.saturating_sub(before);
    row.tally(&Tally::of(&s));
    row.check(all_error_events(&s), format!("{:?}", Tally::of(&s).errors));
    row.check(
        growth <= 64 * 1024,
        format!("RSS grew {} MiB", growth / 1024),
    );
    let relayed: usize = s.iter().map(|x| x.bytes).max().unwrap_or(0);
    row.evidence = format!(
        "{} × 50 MiB events sent; at most {relayed} B reached a client",
        s.len()
    );
    row.figure = format!("RSS +{} MiB", growth / 1024);
    Ok(row)
}

/// Response headers, then nothing (socket open, health checks passing).
///
/// Pass: every stream ends (504 or an error event after keep-alive comments) within
/// REQUEST_TIMEOUT (3 s) + 1 s; none hangs, none ends silently.
/// Figure: the slowest end.
pub async fn headers_then_silence(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("headers-then-silence", "headers, then silence");
    let (_sim, gw) = setup(
        ctx,
        "stall_after=0",
        &[
            ("REQUEST_TIMEOUT", "3000".into()),
            ("STREAM_KEEPALIVE_INTERVAL", "1000".into()),
        ],
    )
    .await?;
    let s = requests(ctx, &gw, true, ctx.n(4, 20), 4).await;
    row.tally(&Tally::of(&s));
    let clean = s
        .iter()
        .all(|x| matches!(x.verdict, Verdict::StreamError(_) | Verdict::Http(504, _)));
    row.check(
        clean && !s.is_empty(),
        format!("{:?}", Tally::of(&s).errors),
    );
    row.check(
        slowest(&s) <= ctx.deadline(Duration::from_secs(4)),
        format!("slowest {}", fmt_ms(slowest(&s))),
    );
    row.evidence = format!("{} streams got headers and no event", s.len());
    row.figure = format!("slowest end {}", fmt_ms(slowest(&s)));
    Ok(row)
}

/// The answer stops half-way and never ends (socket open): streams after 3 events, whole
/// answers after half the body.
///
/// Pass: streams end with an error event within STREAM_IDLE_TIMEOUT (1 s) + 1 s; whole
/// answers get 504 within REQUEST_TIMEOUT (3 s) + 1 s.
/// Figure: the slowest end of each kind.
pub async fn never_ends(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("never-ends", "the answer stops half-way, forever");
    let (_sim, gw) = setup(ctx, "stall_after=3", &[("REQUEST_TIMEOUT", "3000".into())]).await?;
    let streams = requests(ctx, &gw, true, ctx.n(4, 20), 4).await;
    let whole = requests(ctx, &gw, false, ctx.n(4, 20), 4).await;
    let mut all = streams.clone();
    all.extend(whole.iter().cloned());
    row.tally(&Tally::of(&all));
    row.check(
        all_error_events(&streams),
        format!("streams: {:?}", Tally::of(&streams).errors),
    );
    row.check(
        !whole.is_empty()
            && whole
                .iter()
                .all(|x| matches!(x.verdict, Verdict::Http(504, _))),
        format!("whole answers: {:?}", Tally::of(&whole).errors),
    );
    row.check(
        slowest(&streams) <= ctx.deadline(Duration::from_secs(2)),
        format!("slowest stream {}", fmt_ms(slowest(&streams))),
    );
    row.check(
        slowest(&whole) <= ctx.deadline(Duration::from_secs(4)),
        format!("slowest whole answer {}", fmt_ms(slowest(&whole))),
    );
    row.evidence = format!(
        "{} streams and {} answers stalled",
        streams.len(),
        whole.len()
    );
    row.figure = format!(
        "stream end {}; whole answer 504 {}",
        fmt_ms(slowest(&streams)),
        fmt_ms(slowest(&whole))
    );
    Ok(row)
}
