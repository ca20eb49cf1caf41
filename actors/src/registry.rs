//! RegistryActor: the single writer of backend state.
//!
//! It applies discovery results and health changes to its working copy of the routing table
//! and publishes a new immutable snapshot (with a bumped generation) only when something
//! changed. It starts from the last published snapshot, so a restart loses nothing and the
//! hot path keeps routing from that snapshot while the actor is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::slot::Slot;
use crate::table::{
    BackendId, HealthState, InFlightGuard, ModelCard, ModelSource, PickError, RoutingTable,
    SharedTable,
};

pub enum RegistryMsg {
    /// Result of one discovery poll of one server (level-triggered: the full list).
    Discovered {
        id: BackendId,
        result: Result<Vec<ModelCard>, String>,
    },
    /// A health actor's verdict.
    Health { id: BackendId, state: HealthState },
    /// Admin drain/undrain; replies false for an unknown id.
    SetDrain {
        id: BackendId,
        drained: bool,
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
    /// Fault injection for supervision tests.
    Crash,
}

pub struct RegistryActor;

pub struct RegistryState {
    shared: Arc<SharedTable>,
    table: Arc<RoutingTable>,
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<SharedTable>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Arc<SharedTable>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let table = shared.load();
        info!(
            generation = table.generation,
            "registry started from the last published snapshot"
        );
        Ok(RegistryState { shared, table })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Discovered { id, result } => state.apply_discovery(&id, result),
            RegistryMsg::Health { id, state: health } => state.apply_health(&id, health),
            RegistryMsg::SetDrain { id, drained, reply } => {
                let known = state.apply_drain(&id, drained);
                let _ = reply.send(known);
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
            RegistryMsg::Crash => panic!("fault injection: registry crash"),
        }
        Ok(())
    }
}

// === impl RegistryState ===

impl RegistryState {
    fn modify(
        &mut self,
        id: &BackendId,
        f: impl FnOnce(&mut crate::table::BackendEntry) -> bool,
    ) -> bool {
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
        let next = RoutingTable::new(self.table.generation + 1, backends);
        self.table = Arc::new(next.clone());
        self.shared.publish(next);
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

    fn apply_health(&mut self, id: &BackendId, health: HealthState) {
        let generation = self.table.generation;
        self.modify(id, |e| {
            if e.health == health {
                return false;
            }
            info!(backend = %id, from = e.health.label(), to = health.label(), generation = generation + 1, "health changed");
            e.health = health;
            true
        });
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

    /// Drain (true) or undrain a server. `Ok(false)`: no such server.
    pub async fn set_drain(&self, id: BackendId, drained: bool) -> Result<bool, RegistryError> {
        let actor = self.slot.get().ok_or(RegistryError::Unavailable)?;
        match actor
            .call(
                |reply| RegistryMsg::SetDrain { id, drained, reply },
                Some(Duration::from_secs(2)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(known)) => Ok(known),
            Ok(ractor::rpc::CallResult::Timeout) => Err(RegistryError::Timeout),
            _ => Err(RegistryError::Unavailable),
        }
    }

    /// Wait until the registry applied every message sent before this call.
    pub async fn sync(&self, timeout: Duration) -> Result<u64, RegistryError> {
        let actor = self.slot.get().ok_or(RegistryError::Unavailable)?;
        match actor.call(RegistryMsg::Sync, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(g)) => Ok(g),
            Ok(ractor::rpc::CallResult::Timeout) => Err(RegistryError::Timeout),
            _ => Err(RegistryError::Unavailable),
        }
    }
}
