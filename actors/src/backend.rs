//! One upstream server as the hot path sees it: identity, options and the counters every
//! request updates. A [`BackendHandle`] is shared by `Arc` across routing snapshots, so its
//! counters survive every republish.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::health::HealthMsg;
use crate::registry::RegistryMsg;
use crate::slot::Slot;

/// Stable name of one server, derived from its URL (or given in YAML), so reordering the
/// configuration renames nothing. Shown to operators only, never to API clients.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub Arc<str>);

impl BackendId {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }

    /// `http://10.0.0.5:8000/v1-prefix` → `10.0.0.5-8000-v1-prefix`: readable, and made of
    /// characters that are safe in paths, logs and metric labels.
    pub fn from_url(url: &str) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let mut id = String::with_capacity(rest.len());
        for c in rest.trim_end_matches('/').chars() {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                id.push(c.to_ascii_lowercase());
            } else if !id.ends_with('-') {
                id.push('-');
            }
        }
        let id = id.trim_matches('-');
        Self::new(if id.is_empty() { "server" } else { id })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Names an operator may give in YAML or the admin API.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a server's liveness is checked actively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET {base}{path}` must answer 2xx (`/health` for vLLM, SGLang, llama.cpp).
    Path(Arc<str>),
    /// `GET {base}/v1/models` must answer 2xx (servers without a health route).
    Models,
    /// No active probe: passive signals from real traffic decide alone.
    Passive,
}

/// Everything needed to add one server to the registry.
#[derive(Clone)]
pub struct BackendSpec {
    pub id: BackendId,
    pub base_url: Arc<str>,
    pub static_models: Vec<Arc<str>>,
    /// Poll `/v1/models` for this server.
    pub discover: bool,
    /// 0 = no cap.
    pub max_in_flight: u32,
    pub health: HealthCheck,
    pub passive: PassivePolicy,
    /// Options of the HTTP layer (credentials, extra headers), opaque to the actors.
    pub ext: Arc<dyn Any + Send + Sync>,
    /// Where it came from: a config reload only adds, changes and removes `Config` servers.
    pub origin: Origin,
    /// Digest of every option, so a reload can tell a changed server from an unchanged one.
    pub revision: u64,
}

/// Who added a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration (environment, YAML).
    Config,
    /// The admin API at runtime.
    Admin,
}

impl fmt::Debug for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSpec")
            .field("id", &self.id)
            .field("models", &self.static_models)
            .field("discover", &self.discover)
            .finish()
    }
}

/// When passive signals take a server out (failure accrual, as linkerd and Finagle do).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassivePolicy {
    /// Consecutive server-side failures that trip an ejection.
    pub consecutive: u32,
    /// Recent failure rate (EWMA) that trips an ejection, once enough requests were seen.
    pub rate: f32,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        Self {
            consecutive: 5,
            rate: 0.5,
        }
    }
}

/// How a finished attempt counts for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The attempt that began at `started` succeeded.
    Success { started: Instant },
    /// Connect error, reset, timeout, 5xx: the server's fault.
    ServerFailure,
}

/// Time constant of the failure-rate decay: a server that stopped failing (or stopped
/// getting traffic because it failed) is forgiven within a few of these.
const ACCRUAL_TAU_MS: f32 = 10_000.0;
/// Weight of one observation in the failure-rate EWMA (≈ the last 10 requests).
const ACCRUAL_ALPHA: f32 = 0.1;
/// Observations needed before the failure rate alone may trip an ejection.
const ACCRUAL_MIN_SAMPLES: u32 = 10;
/// How strongly recent failures weigh in the routing cost.
const FAILURE_PENALTY: f32 = 20.0;

/// Shared per-server handle: static identity plus the counters the hot path updates.
pub struct BackendHandle {
    pub id: BackendId,
    pub origin: Origin,
    pub revision: u64,
    pub base_url: Arc<str>,
    pub max_in_flight: u32,
    pub health_check: HealthCheck,
    pub ext: Arc<dyn Any + Send + Sync>,
    pub in_flight: AtomicU32,
    pub consecutive_failures: AtomicU32,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub ejections_total: AtomicU64,
    /// Probes that timed out while the server kept answering (busy, not down).
    pub busy_probes_total: AtomicU64,
    passive: PassivePolicy,
    /// Failure-rate EWMA: f32 bits in the high half, the time of the last update (ms since
    /// `born`, wrapping) in the low half, so one CAS keeps both consistent.
    accrual: AtomicU64,
    accrual_samples: AtomicU32,
    /// When the last server-side failure was observed (ns since `born`).
    last_failure_ns: AtomicU64,
    born: Instant,
    /// When the server last sent response bytes (ms since `born`; 0: never): evidence that
    /// a server whose probe timed out is busy, not dead.
    last_progress: AtomicU64,
    /// Cancelled when the server is found dead, so requests waiting on it give up at once.
    liveness: ArcSwap<CancellationToken>,
    /// Where passive trips go (the registry decides, as the single writer).
    registry: Slot<RegistryMsg>,
    /// This server's health actor, for on-demand probes.
    pub health: Slot<HealthMsg>,
}

impl fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendHandle")
            .field("id", &self.id)
            .finish()
    }
}

fn pack(rate: f32, at_ms: u32) -> u64 {
    (u64::from(rate.to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(v: u64) -> (f32, u32) {
    (f32::from_bits((v >> 32) as u32), v as u32)
}

fn decayed(rate: f32, elapsed_ms: u32) -> f32 {
    if elapsed_ms == 0 {
        rate
    } else {
        rate * (-(elapsed_ms as f32) / ACCRUAL_TAU_MS).exp()
    }
}

impl BackendHandle {
    pub fn new(spec: &BackendSpec, registry: Slot<RegistryMsg>) -> Self {
        Self {
            id: spec.id.clone(),
            origin: spec.origin,
            revision: spec.revision,
            base_url: spec.base_url.clone(),
            max_in_flight: spec.max_in_flight,
            health_check: spec.health.clone(),
            ext: spec.ext.clone(),
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            busy_probes_total: AtomicU64::new(0),
            passive: spec.passive,
            accrual: AtomicU64::new(pack(0.0, 0)),
            accrual_samples: AtomicU32::new(0),
            last_failure_ns: AtomicU64::new(0),
            born: Instant::now(),
            last_progress: AtomicU64::new(0),
            liveness: ArcSwap::from_pointee(CancellationToken::new()),
            registry,
            health: Slot::default(),
        }
    }

    /// Ask for a probe now (coalesced by the health actor). Used by requests that find
    /// no routable server, or that wait long on this one.
    pub fn probe_now(&self) {
        self.health.cast(HealthMsg::ProbeNow);
    }

    /// The HTTP layer's options for this server.
    pub fn ext<T: 'static>(&self) -> Option<&T> {
        self.ext.downcast_ref::<T>()
    }

    fn now_ms(&self) -> u32 {
        self.born.elapsed().as_millis() as u32
    }

    /// The server sent response bytes (headers, an event, a body chunk) just now.
    pub fn progressed(&self) {
        // +1 keeps 0 meaning "never"; skipping the store within the same millisecond keeps
        // the shared cache line quiet when many streams of one server are busy.
        let now = self.born.elapsed().as_millis() as u64 + 1;
        if self.last_progress.load(Ordering::Relaxed) != now {
            self.last_progress.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the server sent response bytes at or after `since`.
    pub fn progressed_since(&self, since: Instant) -> bool {
        let last = self.last_progress.load(Ordering::Relaxed);
        last != 0 && last > since.saturating_duration_since(self.born).as_millis() as u64
    }

    /// Reserve a request slot, unless the server is at its cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightGuard> {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if self.max_in_flight != 0 && cur >= self.max_in_flight {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.requests_total.fetch_add(1, Ordering::Relaxed);
                    return Some(InFlightGuard(self.clone()));
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Recent failure rate in [0, 1], decayed to now.
    pub fn failure_rate(&self) -> f32 {
        let (rate, at) = unpack(self.accrual.load(Ordering::Relaxed));
        decayed(rate, self.now_ms().wrapping_sub(at))
    }

    /// Routing cost for P2C: in-flight requests, inflated by recent failures so a server
    /// that fails fast (and so always looks idle) loses to one that answers.
    pub fn cost(&self) -> f32 {
        let load = self.in_flight.load(Ordering::Relaxed) as f32 + 1.0;
        load * (1.0 + FAILURE_PENALTY * self.failure_rate())
    }

    /// Passive health signal from one finished attempt. Every failure at or above a trip
    /// condition asks the registry to eject (it ignores repeats), so a lost message is
    /// repaired by the next failure.
    pub fn observe(&self, what: Observed) {
        let failed = what == Observed::ServerFailure;
        let since_born = |t: Instant| t.saturating_duration_since(self.born).as_nanos() as u64;
        let now = self.now_ms();
        let mut cur = self.accrual.load(Ordering::Relaxed);
        let rate = loop {
            let (rate, at) = unpack(cur);
            let base = decayed(rate, now.wrapping_sub(at));
            let next = base + ACCRUAL_ALPHA * (f32::from(u8::from(failed)) - base);
            match self.accrual.compare_exchange_weak(
                cur,
                pack(next, now),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(actual) => cur = actual,
            }
        };
        let samples = self.accrual_samples.fetch_add(1, Ordering::Relaxed) + 1;
        if let Observed::Success { started } = what {
            // Only an attempt begun after the last failure shows the server works now: one
            // already under way when it started failing (a long answer, a stream) must not
            // wipe out the failures that followed, or a server failing every new request
            // is never taken out.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0
                && since_born(started) >= self.last_failure_ns.load(Ordering::Acquire)
            {
                self.consecutive_failures.store(0, Ordering::Release);
            }
            return;
        }
        self.last_failure_ns
            .fetch_max(since_born(Instant::now()), Ordering::AcqRel);
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let by_rate = samples >= ACCRUAL_MIN_SAMPLES && rate >= self.passive.rate;
        if n >= self.passive.consecutive || by_rate {
            self.registry.cast(RegistryMsg::PassiveTrip {
                id: self.id.clone(),
            });
        }
    }

    /// After an ejection: the next trip needs fresh evidence.
    pub(crate) fn reset_passive(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.accrual_samples.store(0, Ordering::Relaxed);
    }

    /// A token cancelled when this server is next found dead.
    pub fn liveness(&self) -> CancellationToken {
        (**self.liveness.load()).clone()
    }

    /// The server was found dead: wake every request waiting on it.
    pub(crate) fn declare_dead(&self) {
        let old = self.liveness.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }
}

/// RAII in-flight slot: whatever ends a request (answer, disconnect, panic), the count
/// goes down exactly once.
#[derive(Debug)]
pub struct InFlightGuard(Arc<BackendHandle>);

impl InFlightGuard {
    pub fn backend(&self) -> &Arc<BackendHandle> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> BackendSpec {
        BackendSpec {
            id: BackendId::new(id),
            base_url: "http://x".into(),
            static_models: vec![],
            discover: false,
            max_in_flight: 0,
            health: HealthCheck::Passive,
            passive: PassivePolicy::default(),
            ext: Arc::new(()),
            origin: Origin::Config,
            revision: 0,
        }
    }

    #[test]
    fn progress_counts_only_after_the_given_instant() {
        let h = BackendHandle::new(&spec("a"), Slot::default());
        let t0 = Instant::now();
        assert!(!h.progressed_since(t0), "never progressed");
        std::thread::sleep(std::time::Duration::from_millis(3));
        h.progressed();
        assert!(h.progressed_since(t0));
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(!h.progressed_since(Instant::now()), "nothing since");
    }

    #[test]
    fn ids_come_from_urls() {
        assert_eq!(
            BackendId::from_url("http://10.0.0.5:8000").as_str(),
            "10.0.0.5-8000"
        );
        assert_eq!(
            BackendId::from_url("https://GPU-a.internal:443/v1/").as_str(),
            "gpu-a.internal-443-v1"
        );
        assert!(BackendId::is_valid(
            BackendId::from_url("http://[::1]:80").as_str()
        ));
    }

    #[test]
    fn failures_raise_the_cost_and_successes_bring_it_back() {
        let h = BackendHandle::new(&spec("a"), Slot::default());
        let idle = h.cost();
        for _ in 0..10 {
            h.observe(Observed::ServerFailure);
        }
        assert!(h.failure_rate() > 0.6, "rate {}", h.failure_rate());
        assert!(h.cost() > 10.0 * idle);
        for _ in 0..40 {
            h.observe(Observed::Success {
                started: Instant::now(),
            });
        }
        assert!(h.failure_rate() < 0.05, "rate {}", h.failure_rate());
        assert_eq!(h.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_success_begun_before_the_failures_does_not_clear_them() {
        let h = BackendHandle::new(&spec("a"), Slot::default());
        let long_answer = Instant::now();
        for _ in 0..3 {
            h.observe(Observed::ServerFailure);
        }
        h.observe(Observed::Success {
            started: long_answer,
        });
        assert_eq!(h.consecutive_failures.load(Ordering::Relaxed), 3);
        h.observe(Observed::Success {
            started: Instant::now(),
        });
        assert_eq!(h.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn liveness_token_fires_once_per_death() {
        let h = BackendHandle::new(&spec("a"), Slot::default());
        let t = h.liveness();
        assert!(!t.is_cancelled());
        h.declare_dead();
        assert!(t.is_cancelled());
        assert!(!h.liveness().is_cancelled());
    }
}
