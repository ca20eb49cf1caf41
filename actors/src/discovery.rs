//! DiscoveryActor: polls every `VLLM_SERVERS` entry's `/v1/models` each interval and sends the
//! full result per server to the registry (level-triggered, so a restarted registry or a lost
//! message is repaired by the next poll). A failed poll keeps the last-known-good models.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ports::ModelLister;
use crate::registry::RegistryMsg;
use crate::slot::Slot;
use crate::table::BackendId;

pub enum DiscoveryMsg {
    Tick,
    /// Poll now; reply with the stats once the registry applied the results.
    Refresh(RpcReplyPort<DiscoveryStats>),
    Stats(RpcReplyPort<DiscoveryStats>),
    /// Fault injection for supervision tests.
    Crash,
}

#[derive(Clone, Debug, Default)]
pub struct ServerDiscovery {
    pub id: String,
    pub polls: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub last_success_unix: Option<u64>,
    pub last_error: Option<String>,
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DiscoveryStats {
    pub interval_ms: u64,
    pub rounds: u64,
    pub last_round_unix: Option<u64>,
    pub last_round_ms: Option<u64>,
    pub servers: Vec<ServerDiscovery>,
}

pub struct DiscoveryArgs {
    pub servers: Vec<(BackendId, Arc<str>)>,
    pub lister: Arc<dyn ModelLister>,
    pub registry: Slot<RegistryMsg>,
    pub interval: Duration,
    pub poll_timeout: Duration,
    /// Kept outside the actor so counters survive restarts.
    pub stats: Arc<Mutex<DiscoveryStats>>,
}

pub struct DiscoveryActor;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Actor for DiscoveryActor {
    type Msg = DiscoveryMsg;
    type State = DiscoveryArgs;
    type Arguments = DiscoveryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DiscoveryMsg>,
        args: DiscoveryArgs,
    ) -> Result<DiscoveryArgs, ActorProcessingErr> {
        if let Ok(mut stats) = args.stats.lock() {
            stats.interval_ms = args.interval.as_millis() as u64;
            if stats.servers.is_empty() {
                stats.servers = args
                    .servers
                    .iter()
                    .map(|(id, _)| ServerDiscovery {
                        id: id.to_string(),
                        ..Default::default()
                    })
                    .collect();
            }
        }
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ActorRef<DiscoveryMsg>,
        _state: &mut DiscoveryArgs,
    ) -> Result<(), ActorProcessingErr> {
        let _ = myself.cast(DiscoveryMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DiscoveryMsg>,
        msg: DiscoveryMsg,
        state: &mut DiscoveryArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DiscoveryMsg::Tick => {
                poll_all(state).await;
                myself.send_after(state.interval, || DiscoveryMsg::Tick);
            }
            DiscoveryMsg::Refresh(reply) => {
                poll_all(state).await;
                if let Some(registry) = state.registry.get() {
                    let _ = registry
                        .call(RegistryMsg::Sync, Some(Duration::from_secs(2)))
                        .await;
                }
                let _ = reply.send(state.snapshot());
            }
            DiscoveryMsg::Stats(reply) => {
                let _ = reply.send(state.snapshot());
            }
            DiscoveryMsg::Crash => panic!("fault injection: discovery crash"),
        }
        Ok(())
    }
}

impl DiscoveryArgs {
    fn snapshot(&self) -> DiscoveryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn poll_all(state: &mut DiscoveryArgs) {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, (_, url)) in state.servers.iter().enumerate() {
        let lister = state.lister.clone();
        let url = url.clone();
        let timeout = state.poll_timeout;
        set.spawn(async move {
            let res = match tokio::time::timeout(timeout, lister.list_models(&url)).await {
                Ok(r) => r,
                Err(_) => Err("model listing timed out".to_owned()),
            };
            (i, res)
        });
    }
    while let Some(joined) = set.join_next().await {
        let Ok((i, res)) = joined else { continue };
        let Some((id, _)) = state.servers.get(i) else {
            continue;
        };
        if let Ok(mut stats) = state.stats.lock() {
            if let Some(s) = stats.servers.get_mut(i) {
                s.polls += 1;
                match &res {
                    Ok(models) => {
                        s.consecutive_failures = 0;
                        s.last_success_unix = Some(unix_now());
                        s.last_error = None;
                        s.models = models.iter().map(|m| m.id.to_string()).collect();
                    }
                    Err(e) => {
                        s.failures += 1;
                        s.consecutive_failures += 1;
                        s.last_error = Some(e.clone());
                    }
                }
            }
        }
        state.registry.cast(RegistryMsg::Discovered {
            id: id.clone(),
            result: res,
        });
    }
    if let Ok(mut stats) = state.stats.lock() {
        stats.rounds += 1;
        stats.last_round_unix = Some(unix_now());
        stats.last_round_ms = Some(started.elapsed().as_millis() as u64);
    }
}

/// Typed access to the discovery actor.
#[derive(Clone)]
pub struct DiscoveryHandle {
    pub slot: Slot<DiscoveryMsg>,
    pub stats: Arc<Mutex<DiscoveryStats>>,
}

impl DiscoveryHandle {
    /// Current counters; answered from shared memory, so it works while the actor restarts.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Poll every server now and return the stats after the registry applied the results.
    /// `None` when the actor is down or the poll did not finish within `timeout`.
    pub async fn refresh(&self, timeout: Duration) -> Option<DiscoveryStats> {
        let actor = self.slot.get()?;
        match actor.call(DiscoveryMsg::Refresh, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }
}
