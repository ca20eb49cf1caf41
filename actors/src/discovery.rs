//! DiscoveryActor: polls `/v1/models` of every server marked for discovery in the current
//! routing snapshot (so servers added at runtime are polled too) each interval, and sends the
//! full result per server to the registry (level-triggered, so a restarted registry or a lost
//! message is repaired by the next poll). A failed poll keeps the last-known-good models.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ports::ModelLister;
use crate::registry::RegistryMsg;
use crate::slot::Slot;
use crate::table::SharedTable;

pub enum DiscoveryMsg {
    Tick,
    /// Poll now; reply with the stats once the registry applied the results.
    Refresh(RpcReplyPort<DiscoveryStats>),
    /// Fault injection for supervision tests and the chaos suite.
    #[cfg(feature = "fault-injection")]
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
    pub table: Arc<SharedTable>,
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
            #[cfg(feature = "fault-injection")]
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
    let servers: Vec<_> = state
        .table
        .load()
        .backends
        .values()
        .filter(|e| e.discovered)
        .map(|e| e.handle.clone())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for handle in servers.iter().cloned() {
        let lister = state.lister.clone();
        let timeout = state.poll_timeout;
        set.spawn(async move {
            let res = match tokio::time::timeout(timeout, lister.list_models(&handle)).await {
                Ok(r) => r,
                Err(_) => Err("model listing timed out".to_owned()),
            };
            (handle.id.clone(), res)
        });
    }
    if let Ok(mut stats) = state.stats.lock() {
        // Servers removed since the last round leave the stats.
        stats
            .servers
            .retain(|s| servers.iter().any(|h| h.id.as_str() == s.id));
    }
    while let Some(joined) = set.join_next().await {
        let Ok((id, res)) = joined else { continue };
        if let Ok(mut stats) = state.stats.lock() {
            let at = match stats.servers.iter().position(|s| s.id == id.as_str()) {
                Some(i) => i,
                None => {
                    stats.servers.push(ServerDiscovery {
                        id: id.to_string(),
                        ..Default::default()
                    });
                    stats.servers.len() - 1
                }
            };
            let s = &mut stats.servers[at];
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
            stats.servers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        state
            .registry
            .cast(RegistryMsg::Discovered { id, result: res });
    }
    if let Ok(mut stats) = state.stats.lock() {
        stats.rounds += 1;
        stats.last_round_unix = Some(unix_now());
        stats.last_round_ms = Some(started.elapsed().as_millis() as u64);
    }
}

/// At most one refresh per this period; later callers share the last result.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Typed access to the discovery actor.
#[derive(Clone)]
pub struct DiscoveryHandle {
    pub slot: Slot<DiscoveryMsg>,
    pub stats: Arc<Mutex<DiscoveryStats>>,
    last_refresh: Arc<tokio::sync::Mutex<Option<(Instant, DiscoveryStats)>>>,
}

impl DiscoveryHandle {
    pub fn new(slot: Slot<DiscoveryMsg>, stats: Arc<Mutex<DiscoveryStats>>) -> Self {
        Self {
            slot,
            stats,
            last_refresh: Arc::default(),
        }
    }

    /// Current counters; answered from shared memory, so it works while the actor restarts.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Poll every server now and return the stats after the registry applied the results.
    /// Calls made while a refresh runs wait for it and share its result, and a call within
    /// [`REFRESH_EVERY`] of the last refresh gets that result: a burst of callers costs one
    /// round of polls. `None` when the actor is down or the poll did not finish in `timeout`.
    pub async fn refresh(&self, timeout: Duration) -> Option<DiscoveryStats> {
        let run = async {
            let mut last = self.last_refresh.lock().await;
            if let Some((at, stats)) = last.as_ref() {
                if at.elapsed() < REFRESH_EVERY {
                    return Some(stats.clone());
                }
            }
            let actor = self.slot.get()?;
            match actor.call(DiscoveryMsg::Refresh, Some(timeout)).await {
                Ok(ractor::rpc::CallResult::Success(s)) => {
                    *last = Some((Instant::now(), s.clone()));
                    Some(s)
                }
                _ => None,
            }
        };
        tokio::time::timeout(timeout, run).await.ok().flatten()
    }
}
