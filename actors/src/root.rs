//! RootActor: supervises the long-lived children (registry, discovery, health actors, stream
//! shard supervisors) with one_for_one semantics.
//!
//! Each child is rebuilt from its [`ChildSpec`] (never from the dead actor). The first restart
//! within the window is immediate, later ones back off; past the budget the root stops itself,
//! which stops every child, and the process exits non-zero so the orchestrator restarts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tracing::{error, info, warn};

use crate::ports::BoxFuture;
use crate::supervision::{RestartBook, RestartDecision, RestartPolicy};

pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// How to (re)build one child: `start` spawns it linked to the given supervisor cell and
/// publishes its new address (for example in a [`crate::slot::Slot`]).
#[derive(Clone)]
pub struct ChildSpec {
    pub key: String,
    pub policy: RestartPolicy,
    pub start: StartFn,
}

/// Restart history visible to admin output and tests.
#[derive(Clone, Debug, Default)]
pub struct ChildReport {
    pub key: String,
    pub running: bool,
    pub restarts: u64,
    /// Time from the child's exit to its replacement running, for the last restart.
    pub last_restart_ms: Option<f64>,
}

pub type SupervisionReport = Arc<Mutex<Vec<ChildReport>>>;

pub enum RootMsg {
    Restart {
        key: String,
        failed_at: Instant,
    },
    /// Start and supervise one more child (a server added at runtime).
    Start(ChildSpec),
    /// Stop a child for good (a server removed at runtime).
    Stop(String),
}

pub struct RootArgs {
    pub children: Vec<ChildSpec>,
    pub report: SupervisionReport,
    /// Published as soon as the root runs, so children can ask it to add or stop siblings.
    pub slot: crate::slot::Slot<RootMsg>,
}

pub struct RootActor;

pub struct RootState {
    specs: HashMap<String, ChildSpec>,
    running: HashMap<ActorId, String>,
    books: HashMap<String, RestartBook>,
    report: SupervisionReport,
}

impl Actor for RootActor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        args.slot.set(myself.clone());
        let mut state = RootState {
            specs: HashMap::new(),
            running: HashMap::new(),
            books: HashMap::new(),
            report: args.report,
        };
        for spec in args.children {
            state.start(&myself, spec).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RootMsg>,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children(None);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (key, failed_at) = match msg {
            RootMsg::Restart { key, failed_at } => (key, failed_at),
            RootMsg::Start(spec) => {
                let key = spec.key.clone();
                if state.specs.contains_key(&key) {
                    return Ok(());
                }
                if let Err(e) = state.start(&myself, spec.clone()).await {
                    warn!(child = %key, error = %e, "child failed to start");
                    state.specs.insert(key.clone(), spec);
                    state.on_child_exit(&myself, key, Instant::now());
                }
                return Ok(());
            }
            RootMsg::Stop(key) => {
                state.specs.remove(&key);
                state.books.remove(&key);
                if let Ok(mut reports) = state.report.lock() {
                    reports.retain(|r| r.key != key);
                }
                let ids: Vec<ActorId> = state
                    .running
                    .iter()
                    .filter(|(_, k)| **k == key)
                    .map(|(id, _)| *id)
                    .collect();
                for child in myself.get_children() {
                    if ids.contains(&child.get_id()) {
                        state.running.remove(&child.get_id());
                        child.stop(Some("removed".into()));
                    }
                }
                return Ok(());
            }
        };
        let Some(spec) = state.specs.get(&key).cloned() else {
            return Ok(());
        };
        match (spec.start)(myself.get_cell()).await {
            Ok(cell) => {
                let ms = failed_at.elapsed().as_secs_f64() * 1000.0;
                info!(child = %key, restart_ms = ms, "child restarted");
                state.running.insert(cell.get_id(), key.clone());
                state.set_report(&key, |r| {
                    r.running = true;
                    r.restarts += 1;
                    r.last_restart_ms = Some(ms);
                });
            }
            Err(e) => {
                warn!(child = %key, error = %e, "child failed to start");
                state.on_child_exit(&myself, key, failed_at);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if let Some(key) = state.running.remove(&cell.get_id()) {
            warn!(child = %key, reason = %why, "child exited");
            state.set_report(&key, |r| r.running = false);
            state.on_child_exit(&myself, key, Instant::now());
        }
        Ok(())
    }
}

// === impl RootState ===

impl RootState {
    async fn start(&mut self, myself: &ActorRef<RootMsg>, spec: ChildSpec) -> Result<(), SpawnErr> {
        let cell = (spec.start)(myself.get_cell()).await?;
        self.running.insert(cell.get_id(), spec.key.clone());
        self.set_report(&spec.key, |r| r.running = true);
        self.specs.insert(spec.key.clone(), spec);
        Ok(())
    }

    fn on_child_exit(&mut self, myself: &ActorRef<RootMsg>, key: String, failed_at: Instant) {
        let Some(spec) = self.specs.get(&key) else {
            return;
        };
        let decision = self
            .books
            .entry(key.clone())
            .or_default()
            .on_exit(&spec.policy, Instant::now());
        match decision {
            RestartDecision::RestartAfter(d) if d == Duration::ZERO => {
                let _ = myself.cast(RootMsg::Restart { key, failed_at });
            }
            RestartDecision::RestartAfter(d) => {
                myself.send_after(d, move || RootMsg::Restart {
                    key: key.clone(),
                    failed_at,
                });
            }
            RestartDecision::GiveUp => {
                error!(child = %key, "restart budget exceeded; stopping the gateway");
                myself.stop(Some(format!("restart budget exceeded for {key}")));
            }
        }
    }

    fn set_report(&self, key: &str, f: impl FnOnce(&mut ChildReport)) {
        if let Ok(mut reports) = self.report.lock() {
            match reports.iter_mut().find(|r| r.key == key) {
                Some(r) => f(r),
                None => {
                    let mut r = ChildReport {
                        key: key.to_owned(),
                        ..Default::default()
                    };
                    f(&mut r);
                    reports.push(r);
                }
            }
        }
    }
}
