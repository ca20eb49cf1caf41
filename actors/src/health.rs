//! HealthActor: one per server. Probes it on a timer (faster while it is out of rotation)
//! and on demand, and reports every result to the registry, which owns the health state
//! machine. Reports are level-triggered: a result lost while the registry restarts is
//! repaired by the next one.
//!
//! Probes run in a spawned task bounded by `probe_timeout` and report back with
//! `ProbeDone`, so a hanging server never blocks the mailbox.
//!
//! A probe that times out while the server kept sending response bytes (its streams'
//! events, its answers) is not reported: the server is busy, not dead, and declaring it
//! down would abandon the requests waiting on it. Refusals, resets and bad statuses are
//! reported at once, as are timeouts of a server that sends nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use crate::backend::BackendHandle;
use crate::ports::{ProbeError, Prober};
use crate::registry::RegistryMsg;
use crate::slot::Slot;
use crate::table::SharedTable;

pub enum HealthMsg {
    /// Scheduled probe.
    Probe,
    /// Probe now, on behalf of a request (coalesced: one probe in flight, at most one
    /// on-demand probe per `on_demand_every`).
    ProbeNow,
    ProbeDone {
        started: Instant,
        result: Result<(), ProbeError>,
    },
    /// Fault injection for supervision tests and the chaos suite.
    #[cfg(feature = "fault-injection")]
    Crash,
}

#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub on_demand_every: Duration,
}

impl HealthConfig {
    /// Probing speeds up while a server is out, so it comes back quickly.
    pub fn fast_interval(&self) -> Duration {
        (self.interval / 4)
            .max(Duration::from_millis(50))
            .min(self.interval)
    }
}

pub struct HealthArgs {
    pub handle: Arc<BackendHandle>,
    pub prober: Arc<dyn Prober>,
    pub registry: Slot<RegistryMsg>,
    pub table: Arc<SharedTable>,
    pub cfg: HealthConfig,
}

pub struct HealthActor;

pub struct HealthActorState {
    args: HealthArgs,
    probing: bool,
    last_on_demand: Option<Instant>,
}

impl Actor for HealthActor {
    type Msg = HealthMsg;
    type State = HealthActorState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.handle.health.set(myself);
        Ok(HealthActorState {
            args,
            probing: false,
            last_on_demand: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<HealthMsg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = myself.cast(HealthMsg::Probe);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HealthMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.handle.health.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealthMsg::Probe => state.start_probe(&myself),
            HealthMsg::ProbeNow => {
                let now = Instant::now();
                let recent = state
                    .last_on_demand
                    .is_some_and(|t| now.duration_since(t) < state.args.cfg.on_demand_every);
                if !state.probing && !recent {
                    state.last_on_demand = Some(now);
                    state.start_probe(&myself);
                }
            }
            HealthMsg::ProbeDone { started, result } => {
                state.probing = false;
                let handle = &state.args.handle;
                let id = &handle.id;
                let busy = result == Err(ProbeError::TimedOut) && handle.progressed_since(started);
                let ok = result.is_ok();
                if busy {
                    handle
                        .busy_probes_total
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    debug!(backend = %id, "health probe timed out while the server kept answering: busy, not down");
                } else {
                    if let Err(reason) = &result {
                        debug!(backend = %id, %reason, "health probe failed");
                    }
                    state.args.registry.cast(RegistryMsg::Probed {
                        id: id.clone(),
                        result: result.map_err(|e| e.to_string()),
                    });
                }
                let admitted = state
                    .args
                    .table
                    .load()
                    .backends
                    .get(id)
                    .is_some_and(|e| e.health().admits_traffic());
                // A busy server in rotation is probed no faster than usual; one out of
                // rotation is probed fast so it comes back soon.
                let next = if (busy || ok) && admitted {
                    state.args.cfg.interval
                } else {
                    state.args.cfg.fast_interval()
                };
                myself.send_after(next, || HealthMsg::Probe);
            }
            #[cfg(feature = "fault-injection")]
            HealthMsg::Crash => panic!("fault injection: health actor crash"),
        }
        Ok(())
    }
}

// === impl HealthActorState ===

impl HealthActorState {
    fn start_probe(&mut self, myself: &ActorRef<HealthMsg>) {
        if self.probing {
            return;
        }
        self.probing = true;
        let prober = self.args.prober.clone();
        let handle = self.args.handle.clone();
        let timeout = self.args.cfg.probe_timeout;
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, prober.probe(&handle)).await {
                Ok(r) => r,
                Err(_) => Err(ProbeError::TimedOut),
            };
            let _ = me.cast(HealthMsg::ProbeDone { started, result });
        });
    }
}
