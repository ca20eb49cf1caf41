//! RegistryActor: the single writer of backend state and membership.
//!
//! It applies discovery results, probe results and passive trips to its working copy of the
//! routing table (the health state machine of every server lives here, so two observers can
//! never both eject the last routable server of a model), adds and removes servers (starting
//! and stopping their health actors through a [`HealthSpawner`]), and publishes a new
//! immutable snapshot only when something changed. It starts from the last published
//! snapshot, so a restart loses nothing and the hot path keeps routing meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::backend::{BackendHandle, BackendId, BackendSpec};
use crate::breaker::{EjectPolicy, HealthState};
use crate::slot::Slot;
use crate::table::{
    BackendEntry, InFlightGuard, ModelCard, ModelSource, PickError, RoutingTable, SharedTable,
};

pub enum RegistryMsg {
    /// Result of one discovery poll of one server (level-triggered: the full list).
    Discovered {
        id: BackendId,
        result: Result<Vec<ModelCard>, String>,
    },
    /// Result of one active probe.
    Probed {
        id: BackendId,
        result: Result<(), String>,
    },
    /// The request path saw enough failures on this server; repeats are ignored.
    PassiveTrip { id: BackendId },
    /// Admin drain/undrain; replies false for an unknown id.
    SetDrain {
        id: BackendId,
        drained: bool,
        reply: RpcReplyPort<bool>,
    },
    /// Add a server at runtime.
    Add {
        spec: BackendSpec,
        reply: RpcReplyPort<Result<(), MembershipError>>,
    },
    /// Make the configured servers (`Origin::Config`) exactly `specs`: add the new ones,
    /// replace the changed ones, remove the others, in one snapshot. Requests in flight on
    /// a replaced or removed server finish on it. Servers added by the admin API stay.
    Reconcile {
        specs: Vec<BackendSpec>,
        reply: RpcReplyPort<Reconciled>,
    },
    /// Remove a server (callers drain it first); replies false for an unknown id.
    Remove {
        id: BackendId,
        reply: RpcReplyPort<bool>,
    },
    /// Pick a server for `model`, reserving its in-flight slot.
    Route {
        model: String,
        exclude: Vec<BackendId>,
        reply: RpcReplyPort<Result<InFlightGuard, PickError>>,
    },
    /// Replies with the generation once every earlier message is applied.
    Sync(RpcReplyPort<u64>),
    /// Fault injection for supervision tests and the chaos suite.
    #[cfg(feature = "fault-injection")]
    Crash,
}

/// What a reconcile changed, by server id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Configured ids that an admin-added server already uses (left alone).
    pub skipped: Vec<String>,
}

/// Why a server could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("a server with id `{0}` already exists")]
    DuplicateId(String),
    #[error("server `{0}` already has this URL")]
    DuplicateUrl(String),
}

/// Starts and stops the health actor of one server (implemented by the composition root,
/// which owns the supervision tree).
pub trait HealthSpawner: Send + Sync + 'static {
    fn start(&self, backend: Arc<BackendHandle>);
    fn stop(&self, id: &BackendId);
}

pub struct RegistryArgs {
    pub shared: Arc<SharedTable>,
    pub eject: EjectPolicy,
    pub health: Arc<dyn HealthSpawner>,
    /// This actor's own slot, given to new servers' handles for their passive trips.
    pub slot: Slot<RegistryMsg>,
}

pub struct RegistryActor;

pub struct RegistryState {
    args: RegistryArgs,
    table: Arc<RoutingTable>,
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let table = args.shared.load();
        info!(
            generation = table.generation,
            "registry started from the last published snapshot"
        );
        Ok(RegistryState { args, table })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Discovered { id, result } => state.apply_discovery(&id, result),
            RegistryMsg::Probed { id, result } => state.apply_probe(&id, result),
            RegistryMsg::PassiveTrip { id } => state.apply_trip(&id),
            RegistryMsg::SetDrain { id, drained, reply } => {
                let known = state.apply_drain(&id, drained);
                let _ = reply.send(known);
            }
            RegistryMsg::Add { spec, reply } => {
                let _ = reply.send(state.add(spec));
            }
            RegistryMsg::Reconcile { specs, reply } => {
                let _ = reply.send(state.reconcile(specs));
            }
            RegistryMsg::Remove { id, reply } => {
                let _ = reply.send(state.remove(&id));
            }
            RegistryMsg::Route {
                model,
                exclude,
                reply,
            } => {
                let _ = reply.send(state.table.pick(&model, &exclude, &mut rand::rng()));
            }
            RegistryMsg::Sync(reply) => {
                let _ = reply.send(state.table.generation);
            }
            #[cfg(feature = "fault-injection")]
            RegistryMsg::Crash => panic!("fault injection: registry crash"),
        }
        Ok(())
    }
}

// === impl RegistryState ===

impl RegistryState {
    fn publish(&mut self, backends: std::collections::BTreeMap<BackendId, BackendEntry>) {
        let next = RoutingTable::new(self.table.generation + 1, backends);
        self.table = Arc::new(next.clone());
        self.args.shared.publish(next);
    }

    /// Apply `f` to one entry; publish if it reports a change. False for an unknown id.
    fn modify(&mut self, id: &BackendId, f: impl FnOnce(&mut BackendEntry) -> bool) -> bool {
        let Some(entry) = self.table.backends.get(id) else {
            return false;
        };
        let mut entry = entry.clone();
        if !f(&mut entry) {
            return true;
        }
        entry.last_change = Instant::now();
        let mut backends = self.table.backends.clone();
        backends.insert(id.clone(), entry);
        self.publish(backends);
        true
    }

    fn apply_discovery(&mut self, id: &BackendId, result: Result<Vec<ModelCard>, String>) {
        let generation = self.table.generation;
        match result {
            Ok(models) => {
                self.modify(id, |e| {
                    if e.model_source == ModelSource::Discovered && e.models == models {
                        return false;
                    }
                    let before: Vec<&str> = e.models.iter().map(|m| &*m.id).collect();
                    let after: Vec<&str> = models.iter().map(|m| &*m.id).collect();
                    if before != after {
                        info!(backend = %id, from = ?before, to = ?after, generation = generation + 1, "models changed");
                    }
                    e.models = models;
                    e.model_source = ModelSource::Discovered;
                    true
                });
            }
            // Last-known-good: a failed poll changes nothing.
            Err(reason) => {
                warn!(backend = %id, %reason, "discovery poll failed; keeping the last known models")
            }
        }
    }

    fn apply_probe(&mut self, id: &BackendId, result: Result<(), String>) {
        let generation = self.table.generation;
        let eject = self.args.eject;
        self.modify(id, |e| {
            let before = e.health().clone();
            e.breaker.on_probe(result, Instant::now(), &eject);
            if *e.health() == before {
                return false;
            }
            info!(backend = %id, from = before.label(), to = e.health().label(), generation = generation + 1, "health changed");
            if matches!(e.health(), HealthState::Down { .. }) {
                // Requests still waiting on a dead server are retried elsewhere at once.
                e.handle.declare_dead();
            }
            true
        });
    }

    fn apply_trip(&mut self, id: &BackendId) {
        let Some(entry) = self.table.backends.get(id) else {
            return;
        };
        if !entry.health().admits_traffic() {
            return;
        }
        if let Some(model) = self.last_routable_model(id) {
            info!(backend = %id, %model, "not ejecting: last routable server of a model");
            entry.handle.reset_passive();
            return;
        }
        let eject = self.args.eject;
        let generation = self.table.generation;
        self.modify(id, |e| {
            e.breaker.eject(Instant::now(), &eject);
            e.handle.reset_passive();
            e.handle
                .ejections_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(backend = %id, ejections = e.breaker.ejections(), generation = generation + 1, "ejected after request failures");
            true
        });
    }

    /// A model for which `id` is the only routable server, if any.
    fn last_routable_model(&self, id: &BackendId) -> Option<Arc<str>> {
        let me = self.table.backends.get(id)?;
        me.models
            .iter()
            .find(|m| self.table.routable_for(&m.id).all(|e| &e.handle.id == id))
            .map(|m| m.id.clone())
    }

    fn apply_drain(&mut self, id: &BackendId, drained: bool) -> bool {
        self.modify(id, |e| {
            if e.drained == drained {
                return false;
            }
            info!(backend = %id, drained, "drain changed");
            e.drained = drained;
            true
        })
    }

    fn add(&mut self, spec: BackendSpec) -> Result<(), MembershipError> {
        if self.table.backends.contains_key(&spec.id) {
            return Err(MembershipError::DuplicateId(spec.id.to_string()));
        }
        if let Some(e) = self
            .table
            .backends
            .values()
            .find(|e| e.handle.base_url == spec.base_url)
        {
            return Err(MembershipError::DuplicateUrl(e.handle.id.to_string()));
        }
        let handle = Arc::new(BackendHandle::new(&spec, self.args.slot.clone()));
        let models = spec
            .static_models
            .iter()
            .map(|m| ModelCard::bare(m))
            .collect();
        let mut backends = self.table.backends.clone();
        backends.insert(
            spec.id.clone(),
            BackendEntry::new(handle.clone(), models, spec.discover),
        );
        info!(backend = %spec.id, generation = self.table.generation + 1, "server added");
        self.publish(backends);
        self.args.health.start(handle);
        Ok(())
    }

    fn reconcile(&mut self, specs: Vec<BackendSpec>) -> Reconciled {
        use crate::backend::Origin;
        let mut out = Reconciled::default();
        let mut backends = self.table.backends.clone();
        let mut start = Vec::new();
        let mut stop = Vec::new();
        let wanted: std::collections::BTreeSet<BackendId> =
            specs.iter().map(|s| s.id.clone()).collect();
        backends.retain(|id, e| {
            let keep = e.handle.origin != Origin::Config || wanted.contains(id);
            if !keep {
                out.removed.push(id.to_string());
                stop.push(id.clone());
            }
            keep
        });
        for spec in specs {
            let models: Vec<ModelCard> = spec
                .static_models
                .iter()
                .map(|m| ModelCard::bare(m))
                .collect();
            match backends.get(&spec.id) {
                Some(e) if e.handle.origin != Origin::Config => {
                    out.skipped.push(spec.id.to_string());
                }
                Some(e) if e.handle.revision == spec.revision => {}
                Some(e) => {
                    let handle = Arc::new(BackendHandle::new(&spec, self.args.slot.clone()));
                    let mut next = BackendEntry::new(handle.clone(), models, spec.discover);
                    if e.handle.base_url == spec.base_url {
                        // Same server, new options: it keeps its health and its models.
                        next.breaker = e.breaker.clone();
                        next.models = e.models.clone();
                        next.model_source = e.model_source;
                        next.drained = e.drained;
                    }
                    out.updated.push(spec.id.to_string());
                    stop.push(spec.id.clone());
                    start.push(handle);
                    backends.insert(spec.id.clone(), next);
                }
                None => {
                    let handle = Arc::new(BackendHandle::new(&spec, self.args.slot.clone()));
                    out.added.push(spec.id.to_string());
                    start.push(handle.clone());
                    backends.insert(
                        spec.id.clone(),
                        BackendEntry::new(handle, models, spec.discover),
                    );
                }
            }
        }
        if out.added.is_empty() && out.updated.is_empty() && out.removed.is_empty() {
            return out;
        }
        info!(added = ?out.added, updated = ?out.updated, removed = ?out.removed, generation = self.table.generation + 1, "configured servers reconciled");
        self.publish(backends);
        for id in &stop {
            self.args.health.stop(id);
        }
        for h in start {
            self.args.health.start(h);
        }
        out
    }

    fn remove(&mut self, id: &BackendId) -> bool {
        if !self.table.backends.contains_key(id) {
            return false;
        }
        let mut backends = self.table.backends.clone();
        backends.remove(id);
        info!(backend = %id, generation = self.table.generation + 1, "server removed");
        self.publish(backends);
        self.args.health.stop(id);
        true
    }
}

/// Errors of [`RegistryHandle`] calls.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry is restarting")]
    Unavailable,
    #[error("registry did not answer in time")]
    Timeout,
}

/// Typed access to the registry; every call has a timeout.
#[derive(Clone)]
pub struct RegistryHandle {
    pub slot: Slot<RegistryMsg>,
    pub table: Arc<SharedTable>,
    pub route_timeout: Duration,
    /// Route by asking the actor (true) or by reading the snapshot directly (false).
    pub route_via_actor: bool,
}

impl RegistryHandle {
    /// Ask the registry where to send a request. Falls back to the last published snapshot
    /// when the actor is down or slow, so routing never waits on a restart.
    pub async fn route(
        &self,
        model: &str,
        exclude: &[BackendId],
    ) -> Result<InFlightGuard, PickError> {
        if self.route_via_actor {
            if let Some(actor) = self.slot.get() {
                let asked = actor
                    .call(
                        |reply| RegistryMsg::Route {
                            model: model.to_owned(),
                            exclude: exclude.to_vec(),
                            reply,
                        },
                        Some(self.route_timeout),
                    )
                    .await;
                if let Ok(ractor::rpc::CallResult::Success(answer)) = asked {
                    return answer;
                }
            }
        }
        self.table.load().pick(model, exclude, &mut rand::rng())
    }

    async fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        msg: impl FnOnce(RpcReplyPort<T>) -> RegistryMsg,
    ) -> Result<T, RegistryError> {
        let actor = self.slot.get().ok_or(RegistryError::Unavailable)?;
        match actor.call(msg, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(RegistryError::Timeout),
            _ => Err(RegistryError::Unavailable),
        }
    }

    /// Drain (true) or undrain a server. `Ok(false)`: no such server.
    pub async fn set_drain(&self, id: BackendId, drained: bool) -> Result<bool, RegistryError> {
        self.call(Duration::from_secs(2), |reply| RegistryMsg::SetDrain {
            id,
            drained,
            reply,
        })
        .await
    }

    /// Add a server; its health actor starts at once.
    pub async fn add(
        &self,
        spec: BackendSpec,
    ) -> Result<Result<(), MembershipError>, RegistryError> {
        self.call(Duration::from_secs(2), |reply| RegistryMsg::Add {
            spec,
            reply,
        })
        .await
    }

    /// Make the configured servers exactly `specs` (see [`RegistryMsg::Reconcile`]).
    pub async fn reconcile(&self, specs: Vec<BackendSpec>) -> Result<Reconciled, RegistryError> {
        self.call(Duration::from_secs(5), |reply| RegistryMsg::Reconcile {
            specs,
            reply,
        })
        .await
    }

    /// Drain a server, wait up to `grace` for its requests to finish, then remove it.
    /// `Ok(false)`: no such server.
    pub async fn drain_and_remove(
        &self,
        id: BackendId,
        grace: Duration,
    ) -> Result<bool, RegistryError> {
        if !self.set_drain(id.clone(), true).await? {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            let busy = self.table.load().backends.get(&id).is_some_and(|e| {
                e.handle
                    .in_flight
                    .load(std::sync::atomic::Ordering::Acquire)
                    > 0
            });
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.call(Duration::from_secs(2), |reply| RegistryMsg::Remove {
            id,
            reply,
        })
        .await
    }

    /// Wait until the registry applied every message sent before this call.
    pub async fn sync(&self, timeout: Duration) -> Result<u64, RegistryError> {
        self.call(timeout, RegistryMsg::Sync).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{HealthCheck, Observed, PassivePolicy};
    use std::collections::BTreeMap;

    struct NoHealth;
    impl HealthSpawner for NoHealth {
        fn start(&self, _: Arc<BackendHandle>) {}
        fn stop(&self, _: &BackendId) {}
    }

    fn spec(id: &str) -> BackendSpec {
        BackendSpec {
            id: BackendId::new(id),
            base_url: format!("http://{id}").into(),
            static_models: vec!["m".into()],
            discover: false,
            max_in_flight: 0,
            health: HealthCheck::Passive,
            passive: PassivePolicy {
                consecutive: 5,
                rate: 1.0,
            },
            ext: Arc::new(()),
            origin: crate::backend::Origin::Config,
            revision: 0,
        }
    }

    async fn registry(ids: &[&str]) -> (RegistryHandle, Slot<RegistryMsg>) {
        let slot: Slot<RegistryMsg> = Slot::default();
        let backends: BTreeMap<_, _> = ids
            .iter()
            .map(|id| {
                let s = spec(id);
                let h = Arc::new(BackendHandle::new(&s, slot.clone()));
                (
                    s.id,
                    BackendEntry::new(h, vec![ModelCard::bare("m")], false),
                )
            })
            .collect();
        let shared = SharedTable::new(RoutingTable::new(1, backends));
        let args = RegistryArgs {
            shared: shared.clone(),
            eject: EjectPolicy::default(),
            health: Arc::new(NoHealth),
            slot: slot.clone(),
        };
        let (actor, _) = Actor::spawn(None, RegistryActor, args)
            .await
            .expect("spawn registry");
        let handle = RegistryHandle {
            slot: slot.clone(),
            table: shared,
            route_timeout: Duration::from_millis(50),
            route_via_actor: true,
        };
        // Held back until the test lets messages through.
        slot.clear();
        (handle, {
            let s = Slot::default();
            s.set(actor);
            s
        })
    }

    fn ejected(h: &RegistryHandle, id: &str) -> bool {
        matches!(
            h.table.load().backends[&BackendId::new(id)].health(),
            HealthState::Ejected { .. }
        )
    }

    #[tokio::test]
    async fn a_lost_trip_is_repaired_by_the_next_failure() {
        let (h, actor) = registry(&["a", "b"]).await;
        let a = h.table.load().backends[&BackendId::new("a")].handle.clone();
        // The threshold is crossed while the registry is away: that trip is lost.
        for _ in 0..5 {
            a.observe(Observed::ServerFailure);
        }
        h.slot.set(actor.get().expect("actor"));
        h.sync(Duration::from_secs(1)).await.expect("sync");
        assert!(!ejected(&h, "a"));
        // At or above the threshold, the next failure trips again.
        a.observe(Observed::ServerFailure);
        h.sync(Duration::from_secs(1)).await.expect("sync");
        assert!(ejected(&h, "a"), "tripped at 6 failures (threshold 5)");
    }

    #[tokio::test]
    async fn two_trips_at_once_never_eject_the_last_routable_server() {
        let (h, actor) = registry(&["a", "b"]).await;
        h.slot.set(actor.get().expect("actor"));
        let table = h.table.load();
        for id in ["a", "b"] {
            for _ in 0..5 {
                table.backends[&BackendId::new(id)]
                    .handle
                    .observe(Observed::ServerFailure);
            }
        }
        h.sync(Duration::from_secs(1)).await.expect("sync");
        let out = ["a", "b"].iter().filter(|id| ejected(&h, id)).count();
        assert_eq!(out, 1, "exactly one of the two is ejected");
        assert_eq!(h.table.load().routable_for("m").count(), 1);
    }

    #[tokio::test]
    async fn servers_are_added_and_removed_at_runtime() {
        let (h, actor) = registry(&["a"]).await;
        h.slot.set(actor.get().expect("actor"));
        let mut s = spec("c");
        s.static_models = vec!["n".into()];
        h.add(s.clone()).await.expect("answer").expect("added");
        assert!(h.table.load().knows_model("n"));
        assert_eq!(
            h.add(s).await.expect("answer"),
            Err(MembershipError::DuplicateId("c".into()))
        );
        assert!(h
            .drain_and_remove(BackendId::new("c"), Duration::from_secs(1))
            .await
            .expect("answer"));
        assert!(!h.table.load().knows_model("n"));
        assert!(!h
            .drain_and_remove(BackendId::new("zz"), Duration::from_secs(1))
            .await
            .expect("answer"));
    }
}
