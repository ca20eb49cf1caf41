//! Composition root: builds the routing snapshot from config, spawns the supervised actor
//! tree, and serves HTTP until shutdown or escalation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmmux_actors::discovery::{
    DiscoveryActor, DiscoveryArgs, DiscoveryHandle, DiscoveryMsg, DiscoveryStats,
};
use llmmux_actors::health::{HealthActor, HealthArgs, HealthConfig, HealthMsg};
use llmmux_actors::ractor::{Actor, ActorRef};
use llmmux_actors::registry::{RegistryActor, RegistryHandle, RegistryMsg};
use llmmux_actors::root::{ChildSpec, RootActor, RootArgs, RootMsg, SupervisionReport};
use llmmux_actors::slot::Slot;
use llmmux_actors::stream::{StreamSpawner, StreamSupervisor, StreamSupervisorMsg};
use llmmux_actors::supervision::RestartPolicy;
use llmmux_actors::table::{
    BackendEntry, BackendHandle, BackendId, HealthState, ModelCard, ModelSource, RoutingTable,
    SharedTable,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{normalize_base_url, ValidatedConfig};
use crate::proxy::retry::RetryBudget;
use crate::toolcall::Counters as ToolCallCounters;
use crate::upstream::{build_client, HttpControlPlane};

/// Everything a request handler needs; shared by `Arc`.
pub struct AppState {
    pub cfg: ValidatedConfig,
    pub registry: RegistryHandle,
    pub discovery: Option<DiscoveryHandle>,
    pub streams: StreamSpawner,
    pub client: reqwest::Client,
    pub retry: RetryBudget,
    pub concurrency: Arc<Semaphore>,
    pub draining: AtomicBool,
    pub escalated: AtomicBool,
    pub supervision: SupervisionReport,
    pub toolcalls: Arc<ToolCallCounters>,
    /// First time each model id was seen, for a stable `created` in /v1/models.
    pub model_first_seen: Mutex<HashMap<String, u64>>,
    pub faults: FaultInjector,
    pub started: Instant,
}

/// Which actor to crash, for supervision tests and the chaos suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Registry,
    Discovery,
    Health,
    Stream,
}

/// Sends `Crash` messages to live actors (tests and chaos only reach it).
#[derive(Clone)]
pub struct FaultInjector {
    registry: Slot<RegistryMsg>,
    discovery: Slot<DiscoveryMsg>,
    health: Vec<Slot<HealthMsg>>,
    streams: StreamSpawner,
}

impl FaultInjector {
    /// Crash one actor of the kind; false when none was running.
    pub async fn crash(&self, kind: ActorKind) -> bool {
        match kind {
            ActorKind::Registry => self.registry.cast(RegistryMsg::Crash),
            ActorKind::Discovery => self.discovery.cast(DiscoveryMsg::Crash),
            ActorKind::Health => self
                .health
                .first()
                .is_some_and(|s| s.cast(HealthMsg::Crash)),
            ActorKind::Stream => self.streams.crash_one().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamSetupError),
    #[error("cannot start the actor tree: {0}")]
    Actors(String),
    #[error("cannot read the listener address: {0}")]
    Listener(std::io::Error),
}

/// A server the gateway knows from configuration.
struct ServerPlan {
    url: String,
    static_models: Vec<String>,
    discovered: bool,
    max_in_flight: u32,
}

fn plan_servers(cfg: &ValidatedConfig) -> Vec<ServerPlan> {
    let mut plans: Vec<ServerPlan> = Vec::new();
    fn entry<'a>(plans: &'a mut Vec<ServerPlan>, url: &str, cap: u32) -> &'a mut ServerPlan {
        if let Some(i) = plans.iter().position(|p| p.url == url) {
            return &mut plans[i];
        }
        plans.push(ServerPlan {
            url: url.to_owned(),
            static_models: Vec::new(),
            discovered: false,
            max_in_flight: cap,
        });
        let last = plans.len() - 1;
        &mut plans[last]
    }
    let cap = cfg.max_in_flight_per_server;
    for url in &cfg.vllm_servers {
        entry(&mut plans, url, cap).discovered = true;
    }
    for b in &cfg.backends {
        let p = entry(&mut plans, &b.url, cap);
        if !p.static_models.contains(&b.model) {
            p.static_models.push(b.model.clone());
        }
    }
    for s in &cfg.server_options {
        let Ok(url) = normalize_base_url(&s.url) else {
            continue;
        };
        let p = entry(&mut plans, &url, cap);
        p.discovered = s.discover;
        if let Some(n) = s.max_in_flight {
            p.max_in_flight = n;
        }
        for m in &s.models {
            if !p.static_models.contains(m) {
                p.static_models.push(m.clone());
            }
        }
    }
    plans
}

fn initial_table(cfg: &ValidatedConfig) -> RoutingTable {
    let mut backends = BTreeMap::new();
    for (i, plan) in plan_servers(cfg).into_iter().enumerate() {
        let id = BackendId::new(format!("server-{}", i + 1));
        let models: Vec<ModelCard> = plan
            .static_models
            .iter()
            .map(|m| ModelCard::bare(m))
            .collect();
        let handle = Arc::new(BackendHandle::new(
            id.clone(),
            &plan.url,
            plan.max_in_flight,
            cfg.failure_threshold,
        ));
        backends.insert(
            id,
            BackendEntry {
                handle,
                health: HealthState::Unknown,
                drained: false,
                static_models: models.clone(),
                models,
                model_source: ModelSource::Static,
                discovered: plan.discovered,
                last_change: Instant::now(),
            },
        );
    }
    RoutingTable::new(1, backends)
}

/// A running gateway.
pub struct App {
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    root: ActorRef<RootMsg>,
    root_done: tokio::task::JoinHandle<()>,
    stop_accepting: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// Why the gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (signal or `shutdown()`).
    Requested,
    /// A child exceeded its restart budget: exit non-zero so the orchestrator restarts us.
    Escalated,
}

impl App {
    /// Build everything and start serving on `listener` (bound by the caller).
    pub async fn start(cfg: ValidatedConfig, listener: TcpListener) -> Result<App, AppError> {
        let addr = listener.local_addr().map_err(AppError::Listener)?;
        let client = build_client(&cfg)?;
        let control = Arc::new(HttpControlPlane {
            client: client.clone(),
            api_key: cfg.vllm_api_key.as_ref().map(|s| s.expose().to_owned()),
        });
        let table = SharedTable::new(initial_table(&cfg));
        let registry_slot: Slot<RegistryMsg> = Slot::default();
        let discovery_slot: Slot<DiscoveryMsg> = Slot::default();
        let policy = RestartPolicy::default();
        let mut children = Vec::new();

        {
            let (slot, table) = (registry_slot.clone(), table.clone());
            children.push(ChildSpec {
                key: "registry".into(),
                policy,
                start: Arc::new(move |sup| {
                    let (slot, table) = (slot.clone(), table.clone());
                    Box::pin(async move {
                        let (actor, _) =
                            Actor::spawn_linked(None, RegistryActor, table, sup).await?;
                        slot.set(actor.clone());
                        Ok(actor.get_cell())
                    })
                }),
            });
        }

        let snapshot = table.load();
        let discovered: Vec<(BackendId, Arc<str>)> = snapshot
            .backends
            .values()
            .filter(|e| e.discovered)
            .map(|e| (e.handle.id.clone(), e.handle.base_url.clone()))
            .collect();
        let discovery_stats = Arc::new(Mutex::new(DiscoveryStats::default()));
        let discovery = if discovered.is_empty() {
            None
        } else {
            let (slot, reg, stats, control) = (
                discovery_slot.clone(),
                registry_slot.clone(),
                discovery_stats.clone(),
                control.clone(),
            );
            let (interval, timeout) = (cfg.discovery_interval, cfg.health_probe_timeout);
            children.push(ChildSpec {
                key: "discovery".into(),
                policy,
                start: Arc::new(move |sup| {
                    let args = DiscoveryArgs {
                        servers: discovered.clone(),
                        lister: control.clone(),
                        registry: reg.clone(),
                        interval,
                        poll_timeout: timeout,
                        stats: stats.clone(),
                    };
                    let slot = slot.clone();
                    Box::pin(async move {
                        let (actor, _) =
                            Actor::spawn_linked(None, DiscoveryActor, args, sup).await?;
                        slot.set(actor.clone());
                        Ok(actor.get_cell())
                    })
                }),
            });
            Some(DiscoveryHandle {
                slot: discovery_slot.clone(),
                stats: discovery_stats,
            })
        };

        let health_cfg = HealthConfig {
            interval: cfg.health_check_interval,
            probe_timeout: cfg.health_probe_timeout,
            eject_base: cfg.eject_base,
            eject_max: cfg.eject_max,
        };
        let mut health_slots = Vec::new();
        for entry in snapshot.backends.values() {
            let handle = entry.handle.clone();
            health_slots.push(handle.health.clone());
            let (prober, reg, table, hc) = (
                control.clone(),
                registry_slot.clone(),
                table.clone(),
                health_cfg.clone(),
            );
            children.push(ChildSpec {
                key: format!("health-{}", handle.id),
                policy,
                start: Arc::new(move |sup| {
                    let args = HealthArgs {
                        handle: handle.clone(),
                        prober: prober.clone(),
                        registry: reg.clone(),
                        table: table.clone(),
                        cfg: hc.clone(),
                    };
                    Box::pin(async move {
                        let (actor, _) = Actor::spawn_linked(None, HealthActor, args, sup).await?;
                        Ok(actor.get_cell())
                    })
                }),
            });
        }

        let shard_slots: Vec<Slot<StreamSupervisorMsg>> =
            (0..cfg.stream_shards).map(|_| Slot::default()).collect();
        for (i, slot) in shard_slots.iter().enumerate() {
            let slot = slot.clone();
            children.push(ChildSpec {
                key: format!("streams-{i}"),
                policy,
                start: Arc::new(move |sup| {
                    let slot = slot.clone();
                    Box::pin(async move {
                        let (actor, _) =
                            Actor::spawn_linked(None, StreamSupervisor, i, sup).await?;
                        slot.set(actor.clone());
                        Ok(actor.get_cell())
                    })
                }),
            });
        }
        let streams = StreamSpawner::new(shard_slots);

        let report: SupervisionReport = Arc::default();
        let (root, root_join) = Actor::spawn(
            None,
            RootActor,
            RootArgs {
                children,
                report: report.clone(),
            },
        )
        .await
        .map_err(|e| AppError::Actors(e.to_string()))?;

        let state = Arc::new(AppState {
            registry: RegistryHandle {
                slot: registry_slot.clone(),
                table,
                route_timeout: Duration::from_millis(50),
                route_via_actor: cfg.route_via_registry,
            },
            discovery,
            streams: streams.clone(),
            client,
            retry: RetryBudget::new(0.2, 3),
            concurrency: Arc::new(Semaphore::new(cfg.max_in_flight)),
            draining: AtomicBool::new(false),
            escalated: AtomicBool::new(false),
            supervision: report,
            toolcalls: Arc::new(ToolCallCounters::default()),
            model_first_seen: Mutex::new(HashMap::new()),
            faults: FaultInjector {
                registry: registry_slot,
                discovery: discovery_slot,
                health: health_slots,
                streams,
            },
            started: Instant::now(),
            cfg,
        });

        let stop_accepting = CancellationToken::new();
        let root_done = {
            let state = state.clone();
            let stop = stop_accepting.clone();
            tokio::spawn(async move {
                let _ = root_join.await;
                if !state.draining.load(Ordering::Acquire) {
                    error!("actor tree stopped: restart budget exceeded");
                    state.escalated.store(true, Ordering::Release);
                    stop.cancel();
                }
            })
        };
        let server = tokio::spawn(crate::http::server::serve(
            listener,
            state.clone(),
            stop_accepting.clone(),
        ));
        info!(%addr, servers = state.registry.table.load().backends.len(), "llmmux listening");
        Ok(App {
            state,
            addr,
            root,
            root_done,
            stop_accepting,
            server,
        })
    }

    /// Resolves when the gateway should stop by itself (escalation).
    pub async fn escalated(&self) {
        self.stop_accepting.cancelled().await
    }

    /// Graceful shutdown: readiness goes 503 at once, the listener closes, in-flight requests
    /// and streams get up to `SHUTDOWN_GRACE`; streams still open then end with an error event.
    pub async fn shutdown(self) -> Exit {
        let escalated = self.state.escalated.load(Ordering::Acquire);
        self.state.draining.store(true, Ordering::Release);
        self.stop_accepting.cancel();
        let grace = self.state.cfg.shutdown_grace;
        let streams = self.state.streams.clone();
        let mut server = self.server;
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            warn!("shutdown grace period over; cancelling remaining streams");
            streams.cancel_all("gateway shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
            server.abort();
        }
        self.root.stop(None);
        let _ = self.root_done.await;
        if escalated {
            Exit::Escalated
        } else {
            Exit::Requested
        }
    }
}
