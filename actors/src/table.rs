//! The routing snapshot: an immutable [`RoutingTable`] published by the registry through one
//! `ArcSwap`, read lock-free on every request.
//!
//! [`BackendHandle`]s are reused across snapshots, so in-flight counters and passive failure
//! counts survive every republish.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::watch;

pub use crate::backend::{BackendHandle, BackendId, InFlightGuard};
use crate::breaker::Breaker;
pub use crate::breaker::HealthState;

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

/// Where a server's model list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Static,
    Discovered,
}

/// One server's entry in a snapshot.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    pub handle: Arc<BackendHandle>,
    /// Health state machine; only the registry moves it.
    pub breaker: Breaker,
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
    /// A server just added: not probed yet, serving its static models.
    pub fn new(
        handle: Arc<BackendHandle>,
        static_models: Vec<ModelCard>,
        discovered: bool,
    ) -> Self {
        Self {
            handle,
            breaker: Breaker::default(),
            drained: false,
            models: static_models.clone(),
            model_source: ModelSource::Static,
            static_models,
            discovered,
            last_change: Instant::now(),
        }
    }

    pub fn health(&self) -> &HealthState {
        &self.breaker.state
    }

    pub fn routable(&self) -> bool {
        self.health().admits_traffic() && !self.drained
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

    /// Power of two choices over admitted servers not in `exclude`, by lowest
    /// [`BackendHandle::cost`] (in-flight requests inflated by recent failures); the
    /// winner's slot is reserved before returning.
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
                if candidates[b].cost() < candidates[a].cost() {
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
    use crate::backend::{BackendSpec, HealthCheck, Observed, PassivePolicy};
    use crate::slot::Slot;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn entry(
        id: &str,
        models: &[&str],
        health: HealthState,
        cap: u32,
    ) -> (BackendId, BackendEntry) {
        let spec = BackendSpec {
            id: BackendId::new(id),
            base_url: "http://x".into(),
            static_models: vec![],
            discover: false,
            max_in_flight: cap,
            health: HealthCheck::Passive,
            passive: PassivePolicy::default(),
            ext: Arc::new(()),
            origin: crate::backend::Origin::Config,
            revision: 0,
        };
        let models: Vec<ModelCard> = models.iter().map(|m| ModelCard::bare(m)).collect();
        let mut e = BackendEntry::new(
            Arc::new(BackendHandle::new(&spec, Slot::default())),
            models,
            false,
        );
        e.breaker = Breaker::new(health);
        (spec.id, e)
    }

    fn table(entries: Vec<(BackendId, BackendEntry)>) -> RoutingTable {
        RoutingTable::new(1, entries.into_iter().collect())
    }

    #[test]
    fn unknown_no_healthy_and_capacity_errors() {
        let t = table(vec![
            entry("a", &["m"], HealthState::Down { reason: "x".into() }, 0),
            entry("b", &["n"], HealthState::Healthy, 1),
        ]);
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

    fn count_picks(t: &RoutingTable, n: usize, seed: u64) -> BTreeMap<String, usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let g = t.pick("m", &[], &mut rng).expect("routable");
            *counts.entry(g.backend().id.to_string()).or_insert(0) += 1;
        }
        counts
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
            let entries = states.iter().enumerate().map(|(i, (h, serves, cap))| {
                let health = match h { 0 => HealthState::Unknown, 1 => HealthState::Healthy,
                    2 => HealthState::Down{reason: String::new()}, _ => HealthState::Ejected{until: Instant::now(), ejections: 1} };
                let models: &[&str] = if *serves { &["m"] } else { &["other"] };
                entry(&format!("b{i}"), models, health, *cap)
            }).collect();
            let t = table(entries);
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
                        prop_assert!(cap == 0 || e.handle.in_flight.load(std::sync::atomic::Ordering::Relaxed) <= cap);
                        guards.push(g);
                    }
                    Err(_) => break,
                }
            }
        }

        /// Equal, idle servers share load evenly: the distribution, not an alternation.
        #[test]
        fn p2c_spreads_load_evenly(seed in any::<u64>()) {
            let t = table((0..4).map(|i| entry(&format!("s{i}"), &["m"], HealthState::Healthy, 0)).collect());
            let counts = count_picks(&t, 4000, seed);
            prop_assert_eq!(counts.len(), 4);
            for (id, n) in &counts {
                // mean 1000, sd ≈ 27: ±200 is over 7 sd.
                prop_assert!((800..=1200).contains(n), "{id} got {n}: {counts:?}");
            }
        }

        /// A server failing half its requests loses most comparisons to a sound one, even
        /// when the sound one is busier (it gets traffic again as its failure rate decays).
        #[test]
        fn recent_failures_weigh_in_the_choice(seed in any::<u64>()) {
            let t = table(vec![
                entry("flaky", &["m"], HealthState::Healthy, 0),
                entry("sound", &["m"], HealthState::Healthy, 0),
            ]);
            let flaky = t.backends[&BackendId::new("flaky")].handle.clone();
            let sound = t.backends[&BackendId::new("sound")].handle.clone();
            for i in 0..40 {
                let success = Observed::Success { started: std::time::Instant::now() };
                flaky.observe(if i % 2 == 0 { Observed::ServerFailure } else { success });
                sound.observe(success);
            }
            // The sound server carries 4 requests, the flaky one none.
            let busy: Vec<_> = (0..4).filter_map(|_| sound.try_acquire()).collect();
            let counts = count_picks(&t, 1000, seed);
            let f = counts.get("flaky").copied().unwrap_or(0);
            prop_assert!(f < 250, "flaky got {f} of 1000");
            drop(busy);
        }
    }
}
