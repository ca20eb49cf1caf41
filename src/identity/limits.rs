//! Per-credential rate limits: requests per minute and tokens per minute.
//!
//! The decision is local and synchronous (no I/O on the hot path): a sliding-window
//! estimate over one-minute windows aligned to Unix time, `prev × (1 − elapsed) + curr`.
//! Tokens are charged after the response from the upstream `usage`; a request is admitted
//! while the token estimate is below the limit, so one large answer can overshoot it once
//! and then blocks until the window slides.
//!
//! With Redis, every replica pushes its increments every `RATE_LIMIT_SYNC_INTERVAL` with
//! `INCRBY` on per-window keys and learns the shared totals from the replies. Over-
//! admission is bounded by what the other replicas admitted since their last sync: at
//! most one interval of their traffic (in the worst case, a burst hitting every replica in
//! the same interval, up to one limit per replica). If Redis is unreachable, replicas
//! limit on their own counts and catch up once it is back.
//!
//! Memory is bounded: counters idle for two windows are dropped, and each shard holds at
//! most [`SHARD_CAP`] subjects (the stalest is evicted beyond that).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use crate::principal::Principal;

const WINDOW_SECS: u64 = 60;
const SHARDS: usize = 16;
const SHARD_CAP: usize = 65_536;
/// Subjects per Redis pipeline.
const BATCH: usize = 500;
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Window keys outlive the two windows they are read in.
const KEY_TTL_SECS: u64 = 3 * WINDOW_SECS;

const REQ: usize = 0;
const TOK: usize = 1;

/// `x-ratelimit-*` headers (OpenAI names), ready to insert: built on every admitted
/// request, so names are constants and each value costs one allocation.
pub type LimitHeaders = Vec<(HeaderName, HeaderValue)>;

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// Which limit turned a request away (the `kind` label of the rate-limited counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
}

/// Over a limit: answer 429 with these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded")]
pub struct RateLimited {
    pub retry_after: Duration,
    pub exceeded: Exceeded,
    pub headers: LimitHeaders,
}

impl RateLimited {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// Admitted: the `x-ratelimit-*` headers to send (none for an unlimited credential).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub headers: LimitHeaders,
}

#[derive(Default, Debug)]
struct Counter {
    window: u64,
    prev: [f64; 2],
    /// Shared count of the current window as of the last sync (includes our synced part).
    synced: [u64; 2],
    /// Local increments not yet sent.
    pending: [u64; 2],
    /// Sent, reply not yet back.
    in_flight: [u64; 2],
    /// Increments of the previous window still to send after a roll-over.
    prev_pending: [u64; 2],
}

impl Counter {
    fn roll(&mut self, now_window: u64) {
        if now_window == self.window {
            return;
        }
        let total = |c: &Counter, k: usize| (c.synced[k] + c.pending[k] + c.in_flight[k]) as f64;
        if now_window == self.window + 1 {
            self.prev = [total(self, REQ), total(self, TOK)];
            self.prev_pending = self.pending;
        } else {
            self.prev = [0.0; 2];
            self.prev_pending = [0; 2];
        }
        self.window = now_window;
        self.synced = [0; 2];
        self.pending = [0; 2];
        self.in_flight = [0; 2];
    }

    fn curr(&self, k: usize) -> f64 {
        (self.synced[k] + self.pending[k] + self.in_flight[k]) as f64
    }

    fn estimate(&self, k: usize, frac: f64) -> f64 {
        self.prev[k] * (1.0 - frac) + self.curr(k)
    }

    fn idle(&self, now_window: u64) -> bool {
        self.window + 1 < now_window
    }
}

/// Seconds until `estimate + need <= limit`.
fn wait_secs(prev: f64, curr: f64, limit: f64, need: f64, frac: f64) -> f64 {
    let w = WINDOW_SECS as f64;
    let room = limit - need - curr;
    if room >= 0.0 {
        if prev <= 0.0 {
            return 0.0;
        }
        let f = 1.0 - room / prev;
        return ((f - frac) * w).max(0.0);
    }
    let room_next = limit - need;
    if room_next < 0.0 {
        // A limit of 0: never; say "two windows" rather than forever.
        return 2.0 * w;
    }
    let g = if curr > 0.0 {
        1.0 - room_next / curr
    } else {
        0.0
    };
    (1.0 - frac) * w + g.max(0.0) * w
}

/// Seconds until the estimate is back to zero.
fn reset_secs(c: &Counter, k: usize, frac: f64) -> f64 {
    let w = WINDOW_SECS as f64;
    if c.curr(k) > 0.0 {
        (1.0 - frac) * w + w
    } else if c.prev[k] > 0.0 {
        (1.0 - frac) * w
    } else {
        0.0
    }
}

/// OpenAI's reset format: `20ms`, `1.5s`, `6m0s` (rounded up).
fn write_duration(out: &mut Small, secs: f64) -> Option<()> {
    if secs < 1.0 {
        out.num((secs * 1000.0).ceil() as u64)?;
        out.push("ms")
    } else if secs < 60.0 {
        let tenths = (secs * 10.0).ceil() as u64;
        out.num(tenths / 10)?;
        if tenths % 10 != 0 {
            out.push(".")?;
            out.num(tenths % 10)?;
        }
        out.push("s")
    } else {
        let total = secs.ceil() as u64;
        out.num(total / 60)?;
        out.push("m")?;
        out.num(total % 60)?;
        out.push("s")
    }
}

/// A header value made with one allocation: `HeaderValue::from(u64)` and a `String` turned
/// into one cost two or three.
fn number_value(n: u64) -> HeaderValue {
    HeaderValue::from_str(itoa::Buffer::new().format(n)).unwrap_or(HeaderValue::from_static("0"))
}

/// A fixed-size stack buffer to format a reset duration into.
struct Small {
    buf: [u8; 48],
    len: usize,
}

impl Small {
    fn push(&mut self, s: &str) -> Option<()> {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Some(())
    }

    fn num(&mut self, n: u64) -> Option<()> {
        self.push(itoa::Buffer::new().format(n))
    }
}

fn duration_value(secs: f64) -> Option<HeaderValue> {
    let mut s = Small {
        buf: [0; 48],
        len: 0,
    };
    write_duration(&mut s, secs)?;
    HeaderValue::from_bytes(&s.buf[..s.len]).ok()
}

/// The window and how far into it (0 to 1), in integers until the fraction: `%` on
/// floats is a libm call.
fn now() -> (u64, f64) {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let window_us = WINDOW_SECS * 1_000_000;
    (us / window_us, (us % window_us) as f64 / window_us as f64)
}

/// Subjects are ids the gateway made (key ids, account ids), never a client's choice, so
/// the counters need no keyed hash: Fx costs a tenth of SipHash on these short strings.
type Counters = HashMap<String, Counter, rustc_hash::FxBuildHasher>;

struct Inner {
    shards: Vec<Mutex<Counters>>,
}

impl Inner {
    fn shard(&self, subject: &str) -> MutexGuard<'_, Counters> {
        let h = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        // Counters stay usable after a panic elsewhere; worst case one count is off.
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn counter<'a>(map: &'a mut Counters, subject: &str, now_window: u64) -> &'a mut Counter {
        // Looked up before inserting: the entry API would copy the subject every request.
        if !map.contains_key(subject) {
            if map.len() >= SHARD_CAP {
                map.retain(|_, c| !c.idle(now_window));
            }
            if map.len() >= SHARD_CAP {
                let stalest = map
                    .iter()
                    .min_by_key(|(_, c)| c.window)
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    map.remove(&k);
                }
            }
            map.insert(
                subject.to_owned(),
                Counter {
                    window: now_window,
                    ..Counter::default()
                },
            );
        }
        let c = map
            .get_mut(subject)
            .expect("the counter was just looked up or inserted");
        c.roll(now_window);
        c
    }
}

/// The limiter. Cloning shares it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::local()
    }
}

impl RateLimiter {
    /// Per-process counters only.
    pub fn local() -> RateLimiter {
        RateLimiter {
            inner: Arc::new(Inner {
                shards: (0..SHARDS)
                    .map(|_| Mutex::new(Counters::default()))
                    .collect(),
            }),
        }
    }

    /// Counters shared through Redis at `url`, synced every `interval` by a background
    /// task that ends when the last clone of the limiter is dropped. Fails only on a
    /// malformed URL; an unreachable server is retried in the background.
    pub fn with_redis(
        url: &str,
        prefix: &str,
        interval: Duration,
    ) -> Result<RateLimiter, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let limiter = Self::local();
        tokio::spawn(sync_loop(
            Arc::downgrade(&limiter.inner),
            client,
            prefix.to_owned(),
            interval,
        ));
        Ok(limiter)
    }

    /// Admits one request of `p` or says when to retry. No I/O.
    pub fn admit(&self, p: &Principal) -> Result<Admission, RateLimited> {
        let (rpm, tpm) = (p.limits.rpm, p.limits.tpm);
        if rpm.is_none() && tpm.is_none() {
            return Ok(Admission::default());
        }
        let subject = p.limit_subject();
        let (window, frac) = now();
        let mut shard = self.inner.shard(&subject);
        let c = Inner::counter(&mut shard, &subject, window);
        // How long until the request fits, and which limit it is waiting for.
        let mut over: Option<(f64, Exceeded)> = None;
        if let Some(limit) = rpm {
            if c.estimate(REQ, frac) + 1.0 > limit as f64 {
                let w = wait_secs(c.prev[REQ], c.curr(REQ), limit as f64, 1.0, frac);
                over = Some((w, Exceeded::Requests));
            }
        }
        if let Some(limit) = tpm {
            if c.estimate(TOK, frac) + 1.0 > limit as f64 {
                let w = wait_secs(c.prev[TOK], c.curr(TOK), limit as f64, 1.0, frac);
                over = Some(over.map_or((w, Exceeded::Tokens), |(r, e)| (r.max(w), e)));
            }
        }
        if let Some((secs, exceeded)) = over {
            return Err(RateLimited {
                retry_after: Duration::from_secs_f64(secs.max(0.001)),
                exceeded,
                headers: headers(c, rpm, tpm, frac),
            });
        }
        c.pending[REQ] += 1;
        Ok(Admission {
            headers: headers(c, rpm, tpm, frac),
        })
    }

    /// Charges the tokens of a finished request (from the upstream `usage`).
    pub fn record_tokens(&self, p: &Principal, prompt: u64, completion: u64) {
        if p.limits.tpm.is_none() {
            return;
        }
        let subject = p.limit_subject();
        let (window, _) = now();
        let mut shard = self.inner.shard(&subject);
        let c = Inner::counter(&mut shard, &subject, window);
        c.pending[TOK] = c.pending[TOK].saturating_add(prompt.saturating_add(completion));
    }
}

fn headers(c: &Counter, rpm: Option<u32>, tpm: Option<u64>, frac: f64) -> LimitHeaders {
    let mut h = Vec::with_capacity(6);
    let mut push = |names: [HeaderName; 3], limit: u64, i: usize| {
        let remaining = (limit as f64 - c.estimate(i, frac)).floor().max(0.0) as u64;
        let [l, r, reset] = names;
        h.push((l, number_value(limit)));
        h.push((r, number_value(remaining)));
        if let Some(v) = duration_value(reset_secs(c, i, frac)) {
            h.push((reset, v));
        }
    };
    if let Some(limit) = rpm {
        push(
            [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS],
            u64::from(limit),
            REQ,
        );
    }
    if let Some(limit) = tpm {
        push([LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS], limit, TOK);
    }
    h
}

// === Redis reconciliation ===

struct Pushed {
    subject: String,
    window: u64,
    curr: [u64; 2],
    prev: [u64; 2],
}

impl Inner {
    /// Moves every active counter's unsent increments into flight.
    fn take_batch(&self, window: u64) -> Vec<Pushed> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, c| !c.idle(window));
            for (subject, c) in map.iter_mut() {
                c.roll(window);
                let p = Pushed {
                    subject: subject.clone(),
                    window,
                    curr: c.pending,
                    prev: c.prev_pending,
                };
                for k in [REQ, TOK] {
                    c.in_flight[k] += c.pending[k];
                }
                c.pending = [0; 2];
                c.prev_pending = [0; 2];
                out.push(p);
            }
        }
        out
    }

    /// Applies the shared totals (`[curr_req, curr_tok, prev_req, prev_tok]` per subject).
    fn apply(&self, batch: &[Pushed], totals: &[[u64; 4]]) {
        for (p, t) in batch.iter().zip(totals) {
            let mut shard = self.shard(&p.subject);
            let Some(c) = shard.get_mut(&p.subject) else {
                continue;
            };
            if c.window == p.window {
                for k in [REQ, TOK] {
                    c.in_flight[k] = c.in_flight[k].saturating_sub(p.curr[k]);
                    c.synced[k] = t[k];
                    c.prev[k] = c.prev[k].max(t[2 + k] as f64);
                }
            } else if c.window == p.window + 1 {
                for k in [REQ, TOK] {
                    c.prev[k] = c.prev[k].max(t[k] as f64);
                }
            }
        }
    }

    /// Puts a failed batch back, to be sent with the next one.
    fn restore(&self, batch: Vec<Pushed>) {
        for p in batch {
            let mut shard = self.shard(&p.subject);
            let Some(c) = shard.get_mut(&p.subject) else {
                continue;
            };
            if c.window == p.window {
                for k in [REQ, TOK] {
                    c.in_flight[k] = c.in_flight[k].saturating_sub(p.curr[k]);
                    c.pending[k] += p.curr[k];
                    c.prev_pending[k] += p.prev[k];
                }
            } else if c.window == p.window + 1 {
                for k in [REQ, TOK] {
                    c.prev_pending[k] += p.curr[k];
                }
            }
        }
    }
}

async fn sync_loop(inner: Weak<Inner>, client: redis::Client, prefix: String, interval: Duration) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut healthy = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if conn.is_none() {
            match tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    if healthy {
                        tracing::warn!(
                            "rate limits: Redis unreachable; limiting per replica until it is back"
                        );
                        healthy = false;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let (window, _) = now();
        let batch = inner.take_batch(window);
        let mut failed = false;
        let mut totals = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for p in chunk {
                for (w, delta) in [(p.window, p.curr), (p.window.saturating_sub(1), p.prev)] {
                    for (k, suffix) in [(REQ, "r"), (TOK, "t")] {
                        let key = format!("{prefix}rl:{}:{w}:{suffix}", p.subject);
                        pipe.cmd("INCRBY").arg(&key).arg(delta[k]);
                        pipe.cmd("EXPIRE").arg(&key).arg(KEY_TTL_SECS).ignore();
                    }
                }
            }
            match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<Vec<u64>>(c)).await {
                Ok(Ok(v)) if v.len() == chunk.len() * 4 => {
                    totals.extend(v.chunks(4).map(|t| [t[0], t[1], t[2], t[3]]));
                }
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Whatever was sent of this batch may be counted twice; an over-count errs on
            // the safe side and fades with the window.
            let done = totals.len();
            inner.apply(&batch[..done], &totals);
            inner.restore(batch.into_iter().skip(done).collect());
            conn = None;
            if healthy {
                tracing::warn!(
                    "rate limits: Redis sync failed; limiting per replica until it is back"
                );
                healthy = false;
            }
        } else {
            inner.apply(&batch, &totals);
            if !healthy {
                tracing::info!("rate limits: Redis sync restored");
                healthy = true;
            }
        }
    }
}

impl From<RateLimited> for crate::error::GatewayError {
    fn from(r: RateLimited) -> Self {
        crate::error::GatewayError::RateLimited {
            retry_after_secs: r.retry_after_secs(),
            headers: r.headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_formats() {
        // 10 used this window, limit 10: wait for the next window (frac 0.5 → 30 s) plus
        // the decay of 10 to 9 (6 s).
        let w = wait_secs(0.0, 10.0, 10.0, 1.0, 0.5);
        assert!((w - 36.0).abs() < 1e-6, "{w}");
        // Previous window full, current empty, half way: 5 + 1 > 5? wait for decay to 4.
        let w = wait_secs(10.0, 0.0, 5.0, 1.0, 0.5);
        assert!((w - 6.0).abs() < 1e-6, "{w}");
        assert_eq!(duration_value(0.02).expect("fits"), "20ms");
        assert_eq!(duration_value(1.0).expect("fits"), "1s");
        assert_eq!(duration_value(1.45).expect("fits"), "1.5s");
        assert_eq!(duration_value(360.0).expect("fits"), "6m0s");
    }
}
