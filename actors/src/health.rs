//! HealthActor: one per vLLM server. Owns the breaker; probes `/health` on a timer (faster
//! while the server is failing) and handles passive trips from real traffic.
//!
//! Probes run in a spawned task and report back with `ProbeDone`, so a hanging server never
//! blocks the mailbox; the probe itself is bounded by `probe_timeout`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info};

use crate::ports::Prober;
use crate::registry::RegistryMsg;
use crate::slot::Slot;
use crate::table::{BackendHandle, HealthState, SharedTable};

pub enum HealthMsg {
    Probe,
    ProbeDone(Result<(), String>),
    /// The request path saw `failure_threshold` consecutive server-side failures.
    PassiveTrip,
    /// Fault injection for supervision tests.
    Crash,
}

#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub eject_base: Duration,
    pub eject_max: Duration,
}

impl HealthConfig {
    /// Probing speeds up while a server is out, so it comes back quickly.
    pub fn fast_interval(&self) -> Duration {
        (self.interval / 4)
            .max(Duration::from_millis(50))
            .min(self.interval)
    }
}

/// Pure breaker state machine.
#[derive(Clone, Debug)]
pub struct Breaker {
    pub state: HealthState,
    ejections: u32,
    healthy_since: Option<Instant>,
}

impl Breaker {
    pub fn new(state: HealthState) -> Self {
        let ejections = match &state {
            HealthState::Ejected { ejections, .. } => *ejections,
            _ => 0,
        };
        Self {
            state,
            ejections,
            healthy_since: None,
        }
    }

    pub fn on_probe(&mut self, ok: Result<(), String>, now: Instant, cfg: &HealthConfig) {
        match (&self.state, ok) {
            (HealthState::Ejected { until, .. }, Ok(())) if now < *until => {}
            (HealthState::Ejected { .. }, Err(_)) => {}
            (_, Ok(())) => {
                if self.state != HealthState::Healthy {
                    self.healthy_since = Some(now);
                }
                self.state = HealthState::Healthy;
                // A long healthy stretch forgives earlier ejections.
                if self
                    .healthy_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= cfg.eject_max)
                {
                    self.ejections = 0;
                }
            }
            (_, Err(reason)) => {
                self.healthy_since = None;
                self.state = HealthState::Down { reason };
            }
        }
    }

    /// Eject for `eject_base × n` (capped), n counting ejections.
    pub fn eject(&mut self, now: Instant, cfg: &HealthConfig) {
        self.ejections = self.ejections.saturating_add(1);
        let span = cfg
            .eject_base
            .saturating_mul(self.ejections)
            .min(cfg.eject_max);
        self.healthy_since = None;
        self.state = HealthState::Ejected {
            until: now + span,
            ejections: self.ejections,
        };
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
    breaker: Breaker,
    probing: bool,
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
        let seeded = args
            .table
            .load()
            .backends
            .get(&args.handle.id)
            .map(|e| e.health.clone())
            .unwrap_or(HealthState::Unknown);
        args.handle.health.set(myself);
        Ok(HealthActorState {
            breaker: Breaker::new(seeded),
            args,
            probing: false,
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

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealthMsg::Probe => {
                if !state.probing {
                    state.probing = true;
                    let prober = state.args.prober.clone();
                    let url = state.args.handle.base_url.clone();
                    let timeout = state.args.cfg.probe_timeout;
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let res = match tokio::time::timeout(timeout, prober.probe(&url)).await {
                            Ok(r) => r,
                            Err(_) => Err("health probe timed out".to_owned()),
                        };
                        let _ = me.cast(HealthMsg::ProbeDone(res));
                    });
                }
            }
            HealthMsg::ProbeDone(res) => {
                state.probing = false;
                if let Err(reason) = &res {
                    debug!(backend = %state.args.handle.id, %reason, "health probe failed");
                }
                // A green probe does not clear passive failures: a wedged engine can keep
                // /health green while every request fails.
                state.breaker.on_probe(res, Instant::now(), &state.args.cfg);
                state.report();
                let next = if state.breaker.state == HealthState::Healthy {
                    state.args.cfg.interval
                } else {
                    state.args.cfg.fast_interval()
                };
                myself.send_after(next, || HealthMsg::Probe);
            }
            HealthMsg::PassiveTrip => {
                let id = &state.args.handle.id;
                state
                    .args
                    .handle
                    .consecutive_failures
                    .store(0, Ordering::Release);
                if matches!(state.breaker.state, HealthState::Ejected { .. }) {
                    return Ok(());
                }
                if state.is_last_server_of_a_model() {
                    info!(backend = %id, "not ejecting: last routable server of one of its models");
                    return Ok(());
                }
                state.breaker.eject(Instant::now(), &state.args.cfg);
                info!(backend = %id, ejections = state.breaker.ejections, "ejected after consecutive request failures");
                state.report();
            }
            HealthMsg::Crash => panic!("fault injection: health actor crash"),
        }
        Ok(())
    }
}

// === impl HealthActorState ===

impl HealthActorState {
    /// Level-triggered: tell the registry whenever the snapshot disagrees with the breaker,
    /// which also repairs a report lost while the registry restarted.
    fn report(&self) {
        let id = &self.args.handle.id;
        let published = self
            .args
            .table
            .load()
            .backends
            .get(id)
            .map(|e| e.health.clone());
        if published.as_ref() != Some(&self.breaker.state) {
            self.args.registry.cast(RegistryMsg::Health {
                id: id.clone(),
                state: self.breaker.state.clone(),
            });
        }
    }

    fn is_last_server_of_a_model(&self) -> bool {
        let table = self.args.table.load();
        let id = &self.args.handle.id;
        let Some(me) = table.backends.get(id) else {
            return false;
        };
        me.models
            .iter()
            .any(|m| table.routable_for(&m.id).all(|e| &e.handle.id == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(1),
            eject_base: Duration::from_secs(30),
            eject_max: Duration::from_secs(300),
        }
    }

    #[test]
    fn ejection_grows_linearly_and_caps() {
        let c = cfg();
        let mut b = Breaker::new(HealthState::Healthy);
        let t0 = Instant::now();
        let mut spans = Vec::new();
        for _ in 0..12 {
            b.eject(t0, &c);
            if let HealthState::Ejected { until, .. } = b.state {
                spans.push((until - t0).as_secs());
            }
        }
        assert_eq!(&spans[..4], &[30, 60, 90, 120]);
        assert_eq!(*spans.last().expect("12 spans"), 300);
    }

    #[test]
    fn ejected_server_needs_time_and_a_good_probe() {
        let c = cfg();
        let mut b = Breaker::new(HealthState::Healthy);
        let t0 = Instant::now();
        b.eject(t0, &c);
        b.on_probe(Ok(()), t0 + Duration::from_secs(10), &c);
        assert!(matches!(b.state, HealthState::Ejected { .. }));
        b.on_probe(Err("x".into()), t0 + Duration::from_secs(40), &c);
        assert!(matches!(b.state, HealthState::Ejected { .. }));
        b.on_probe(Ok(()), t0 + Duration::from_secs(41), &c);
        assert_eq!(b.state, HealthState::Healthy);
    }

    #[test]
    fn probe_failure_takes_down_and_success_readmits() {
        let c = cfg();
        let mut b = Breaker::new(HealthState::Unknown);
        let t0 = Instant::now();
        b.on_probe(Err("refused".into()), t0, &c);
        assert!(!b.state.admits_traffic());
        b.on_probe(Ok(()), t0, &c);
        assert!(b.state.admits_traffic());
    }
}
