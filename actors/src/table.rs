//! The routing snapshot: an immutable [`RoutingTable`] published by the registry through one
//! `ArcSwap`, read lock-free on every request.
//!
//! [`BackendHandle`]s are reused across snapshots, so in-flight counters and passive failure
//! counts survive every republish.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::watch;

use crate::health::HealthMsg;
use crate::slot::Slot;

/// Stable, URL-free name of one vLLM server (shown in /healthz and admin output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub Arc<str>);

impl BackendId {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One model a server serves. `card` is the server's `/v1/models` entry as JSON text, kept
/// opaque here so the front end can return vLLM's extra fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelCard {
    pub id: Arc<str>,
    pub card: Option<Arc<str>>,
}

impl ModelCard {
    pub fn bare(id: &str) -> Self {
        Self {
            id: id.into(),
            card: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Not probed yet: admitted optimistically so a fresh gateway serves at once.
    Unknown,
    Healthy,
    /// The last active probe failed; re-admitted after the next successful probe.
    Down {
        reason: String,
    },
    /// Taken out after consecutive request failures; re-admitted by a successful probe
    /// once `until` passed.
    Ejected {
        until: Instant,
        ejections: u32,
    },
}

impl HealthState {
    pub fn admits_traffic(&self) -> bool {
        matches!(self, HealthState::Unknown | HealthState::Healthy)
    }
    pub fn label(&self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Down { .. } => "down",
            HealthState::Ejected { .. } => "ejected",
        }
    }
}

/// Where a server's model list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Static,
    Discovered,
}

/// Shared per-server handle: static identity plus the counters the hot path updates.
pub struct BackendHandle {
    pub id: BackendId,
    pub base_url: Arc<str>,
    pub max_in_flight: u32,
    pub in_flight: AtomicU32,
    pub consecutive_failures: AtomicU32,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    /// The server's health actor, for passive trips from the request path.
    pub health: Slot<HealthMsg>,
    /// How many consecutive request failures trip a passive ejection.
    pub failure_threshold: u32,
}

impl fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl BackendHandle {
    pub fn new(id: BackendId, base_url: &str, max_in_flight: u32, failure_threshold: u32) -> Self {
        Self {
            id,
            base_url: base_url.into(),
            max_in_flight,
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            health: Slot::default(),
            failure_threshold,
        }
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

    /// Passive health signal from real traffic. A server-side failure counts toward a trip;
    /// the crossing of the threshold sends exactly one message to the health actor.
    pub fn record_outcome(&self, server_failure: bool) {
        if server_failure {
            self.failures_total.fetch_add(1, Ordering::Relaxed);
            let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n == self.failure_threshold {
                self.health.cast(HealthMsg::PassiveTrip);
            }
        } else if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Release);
        }
    }
}

/// RAII in-flight slot; lives inside the response body so a disconnect or panic releases it.
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

/// One server's entry in a snapshot.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    pub handle: Arc<BackendHandle>,
    pub health: HealthState,
    pub drained: bool,
    pub models: Vec<ModelCard>,
    pub model_source: ModelSource,
    /// Models from `BACKENDS` for this server, the fallback when discovery never succeeded.
    pub static_models: Vec<ModelCard>,
    /// Whether discovery polls this server.
    pub discovered: bool,
    pub last_change: Instant,
}

impl BackendEntry {
    pub fn routable(&self) -> bool {
        self.health.admits_traffic() && !self.drained
    }
}

/// Why no server could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickError {
    /// No server (healthy or not) lists the model.
    UnknownModel,
    /// Servers list it but none is admitted (all down, ejected or drained).
    NoHealthy,
    /// Admitted servers exist but all are at their in-flight cap.
    AtCapacity,
}

/// Immutable routing snapshot.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    pub generation: u64,
    pub backends: BTreeMap<BackendId, BackendEntry>,
    /// model id → servers listing it, in id order.
    pub by_model: HashMap<Arc<str>, Vec<BackendId>>,
}

impl RoutingTable {
    pub fn new(generation: u64, backends: BTreeMap<BackendId, BackendEntry>) -> Self {
        let mut by_model: HashMap<Arc<str>, Vec<BackendId>> = HashMap::new();
        for (id, entry) in &backends {
            for m in &entry.models {
                let list = by_model.entry(m.id.clone()).or_default();
                if !list.contains(id) {
                    list.push(id.clone());
                }
            }
        }
        Self {
            generation,
            backends,
            by_model,
        }
    }

    pub fn knows_model(&self, model: &str) -> bool {
        self.by_model.contains_key(model)
    }

    /// Servers that list `model` and currently take traffic.
    pub fn routable_for<'a>(&'a self, model: &str) -> impl Iterator<Item = &'a BackendEntry> + 'a {
        self.by_model
            .get(model)
            .into_iter()
            .flatten()
            .filter_map(|id| self.backends.get(id))
            .filter(|e| e.routable())
    }

    /// Power of two choices over admitted servers not in `exclude`, by fewest in-flight
    /// requests; the winner's slot is reserved before returning.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        model: &str,
        exclude: &[BackendId],
        rng: &mut R,
    ) -> Result<InFlightGuard, PickError> {
        let Some(ids) = self.by_model.get(model) else {
            return Err(PickError::UnknownModel);
        };
        let mut candidates: Vec<&Arc<BackendHandle>> = ids
            .iter()
            .filter(|id| !exclude.contains(id))
            .filter_map(|id| self.backends.get(id))
            .filter(|e| e.routable())
            .map(|e| &e.handle)
            .collect();
        if candidates.is_empty() {
            return Err(PickError::NoHealthy);
        }
        while !candidates.is_empty() {
            let chosen = if candidates.len() == 1 {
                0
            } else {
                let a = rng.random_range(0..candidates.len());
                let mut b = rng.random_range(0..candidates.len() - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| candidates[i].in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            };
            if let Some(guard) = candidates[chosen].try_acquire() {
                return Ok(guard);
            }
            candidates.swap_remove(chosen);
        }
        Err(PickError::AtCapacity)
    }
}

/// The published snapshot plus a generation watch that tests and waiters can await.
pub struct SharedTable {
    current: ArcSwap<RoutingTable>,
    generation: watch::Sender<u64>,
}

impl SharedTable {
    pub fn new(initial: RoutingTable) -> Arc<Self> {
        let (tx, _) = watch::channel(initial.generation);
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
            generation: tx,
        })
    }

    pub fn load(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    pub fn publish(&self, table: RoutingTable) {
        let generation = table.generation;
        self.current.store(Arc::new(table));
        self.generation.send_replace(generation);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Wait until `pred` holds on the current snapshot, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&RoutingTable) -> bool) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.load()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return pred(&self.load()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn entry(
        id: &str,
        models: &[&str],
        health: HealthState,
        cap: u32,
    ) -> (BackendId, BackendEntry) {
        let bid = BackendId::new(id);
        let models: Vec<ModelCard> = models.iter().map(|m| ModelCard::bare(m)).collect();
        (
            bid.clone(),
            BackendEntry {
                handle: Arc::new(BackendHandle::new(bid, "http://x", cap, 5)),
                health,
                drained: false,
                static_models: models.clone(),
                models,
                model_source: ModelSource::Static,
                discovered: false,
                last_change: Instant::now(),
            },
        )
    }

    #[test]
    fn unknown_no_healthy_and_capacity_errors() {
        let t = RoutingTable::new(
            1,
            [
                entry("a", &["m"], HealthState::Down { reason: "x".into() }, 0),
                entry("b", &["n"], HealthState::Healthy, 1),
            ]
            .into_iter()
            .collect(),
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            t.pick("zz", &[], &mut rng).err(),
            Some(PickError::UnknownModel)
        );
        assert_eq!(t.pick("m", &[], &mut rng).err(), Some(PickError::NoHealthy));
        let g = t.pick("n", &[], &mut rng).expect("first fits");
        assert_eq!(
            t.pick("n", &[], &mut rng).err(),
            Some(PickError::AtCapacity)
        );
        drop(g);
        assert!(t.pick("n", &[], &mut rng).is_ok());
    }

    proptest! {
        /// pick() never returns a server that is not admitted, excluded, or lacks the model,
        /// and never exceeds a cap.
        #[test]
        fn pick_respects_health_exclusion_and_caps(
            states in proptest::collection::vec((0u8..4, any::<bool>(), 0u32..3), 1..8),
            exclude_mask in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let backends: BTreeMap<_, _> = states.iter().enumerate().map(|(i, (h, serves, cap))| {
                let health = match h { 0 => HealthState::Unknown, 1 => HealthState::Healthy,
                    2 => HealthState::Down{reason: String::new()}, _ => HealthState::Ejected{until: Instant::now(), ejections: 1} };
                let models: &[&str] = if *serves { &["m"] } else { &["other"] };
                entry(&format!("b{i}"), models, health, *cap)
            }).collect();
            let t = RoutingTable::new(1, backends);
            let exclude: Vec<BackendId> = (0..8).filter(|i| exclude_mask & (1 << i) != 0).map(|i| BackendId::new(format!("b{i}"))).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut guards = Vec::new();
            for _ in 0..20 {
                match t.pick("m", &exclude, &mut rng) {
                    Ok(g) => {
                        let e = &t.backends[&g.backend().id];
                        prop_assert!(e.routable());
                        prop_assert!(!exclude.contains(&e.handle.id));
                        prop_assert!(e.models.iter().any(|m| &*m.id == "m"));
                        let cap = e.handle.max_in_flight;
                        prop_assert!(cap == 0 || e.handle.in_flight.load(Ordering::Relaxed) <= cap);
                        guards.push(g);
                    }
                    Err(_) => break,
                }
            }
        }

        /// Two equal servers share load roughly evenly under P2C.
        #[test]
        fn p2c_spreads_load(seed in any::<u64>()) {
            let t = RoutingTable::new(1, [entry("a", &["m"], HealthState::Healthy, 0), entry("b", &["m"], HealthState::Healthy, 0)].into_iter().collect());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let guards: Vec<_> = (0..100).filter_map(|_| t.pick("m", &[], &mut rng).ok()).collect();
            let a = guards.iter().filter(|g| g.backend().id.as_str() == "a").count();
            prop_assert!((40..=60).contains(&a), "a got {a}");
        }
    }
}
