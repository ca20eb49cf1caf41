//! Composition root: builds the routing snapshot from config, spawns the supervised actor
//! tree, and serves HTTP until shutdown or escalation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmmux_actors::backend::{BackendHandle, BackendId, BackendSpec};
use llmmux_actors::breaker::EjectPolicy;
use llmmux_actors::discovery::{DiscoveryActor, DiscoveryArgs, DiscoveryHandle, DiscoveryMsg};
use llmmux_actors::health::{HealthActor, HealthArgs, HealthConfig};
use llmmux_actors::ports::Prober;
use llmmux_actors::ractor::{Actor, ActorRef};
use llmmux_actors::registry::{
    HealthSpawner, RegistryActor, RegistryArgs, RegistryHandle, RegistryMsg,
};
use llmmux_actors::root::{ChildSpec, RootActor, RootArgs, RootMsg, SupervisionReport};
use llmmux_actors::slot::Slot;
use llmmux_actors::stream::{StreamSpawner, StreamSupervisor, StreamSupervisorMsg};
use llmmux_actors::supervision::RestartPolicy;
use llmmux_actors::table::{BackendEntry, ModelCard, RoutingTable, SharedTable};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ConfigSource, LiveConfig, ValidatedConfig};
use crate::http::auth::Authenticator;
use crate::http::server::FrontDoor;
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, Sources as MetricSources};
use crate::outcome::{AccessLog, OutcomeSinks};
use crate::proxy::retry::{BudgetPolicy, RetryBudgets};
use crate::proxy::Proxy;
use crate::state::AppState;
use crate::toolcall::Counters as ToolCallCounters;
use crate::upstream::{build_clients, specs_from_config, HttpControlPlane};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamSetupError),
    #[error("cannot start the actor tree: {0}")]
    Actors(String),
    #[error("cannot read the listener address: {0}")]
    Listener(std::io::Error),
    #[error("cannot listen on METRICS_PORT: {0}")]
    MetricsListener(std::io::Error),
    #[error("database migrations failed: {0}")]
    Migrate(crate::storage::StorageError),
    #[error("cannot start the identity store: {0}")]
    Identity(#[from] crate::identity::StartError),
    #[error("cannot start the audit log: {0}")]
    Audit(#[from] crate::audit::AuditStartError),
}

fn initial_table(specs: &[BackendSpec], registry: &Slot<RegistryMsg>) -> RoutingTable {
    let mut backends = BTreeMap::new();
    for spec in specs {
        let handle = Arc::new(BackendHandle::new(spec, registry.clone()));
        let models = spec
            .static_models
            .iter()
            .map(|m| ModelCard::bare(m))
            .collect();
        backends.insert(
            spec.id.clone(),
            BackendEntry::new(handle, models, spec.discover),
        );
    }
    RoutingTable::new(1, backends)
}

/// Longest wait for the audit writer to flush at shutdown.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a health actor needs besides its server; shared by every health child spec.
#[derive(Clone)]
struct HealthDeps {
    prober: Arc<dyn Prober>,
    registry: Slot<RegistryMsg>,
    table: Arc<SharedTable>,
    cfg: HealthConfig,
    policy: RestartPolicy,
}

fn health_key(id: &BackendId) -> String {
    format!("health-{id}")
}

impl HealthDeps {
    fn spec(&self, handle: Arc<BackendHandle>) -> ChildSpec {
        let deps = self.clone();
        ChildSpec {
            key: health_key(&handle.id),
            policy: self.policy,
            start: Arc::new(move |sup| {
                let args = HealthArgs {
                    handle: handle.clone(),
                    prober: deps.prober.clone(),
                    registry: deps.registry.clone(),
                    table: deps.table.clone(),
                    cfg: deps.cfg.clone(),
                };
                Box::pin(async move {
                    let (actor, _) = Actor::spawn_linked(None, HealthActor, args, sup).await?;
                    Ok(actor.get_cell())
                })
            }),
        }
    }
}

/// Servers added or removed at runtime get their health actor started or stopped under
/// the root supervisor.
struct RootHealthSpawner {
    root: Slot<RootMsg>,
    deps: HealthDeps,
}

impl HealthSpawner for RootHealthSpawner {
    fn start(&self, backend: Arc<BackendHandle>) {
        self.root.cast(RootMsg::Start(self.deps.spec(backend)));
    }

    fn stop(&self, id: &BackendId) {
        self.root.cast(RootMsg::Stop(health_key(id)));
    }
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
    /// Build everything and start serving on `listener` (bound by the caller). Without a
    /// configuration source, reloads are refused.
    pub async fn start(cfg: ValidatedConfig, listener: TcpListener) -> Result<App, AppError> {
        Self::start_with_source(cfg, listener, None).await
    }

    /// As [`App::start`], keeping where the configuration came from for reloads.
    pub async fn start_with_source(
        cfg: ValidatedConfig,
        listener: TcpListener,
        source: Option<ConfigSource>,
    ) -> Result<App, AppError> {
        let addr = listener.local_addr().map_err(AppError::Listener)?;
        for w in crate::http::auth::short_key_warnings(&cfg) {
            warn!("{w}");
        }
        let audit = match crate::audit::AuditSettings::from_config(&cfg) {
            Some(s) => Some(crate::audit::Audit::open(
                &s,
                crate::storage::DbSettings::from_config(&cfg).as_ref(),
            )?),
            None => None,
        };
        let activity = match &audit {
            Some(a) => a.hook(),
            None => crate::identity::activity_log(),
        };
        let identity = match &cfg.database_url {
            Some(url) => {
                let schema_pending = match crate::storage::migrate(url.expose()).await {
                    Ok(applied) => {
                        if !applied.is_empty() {
                            info!(migrations = ?applied, "database migrated");
                        }
                        false
                    }
                    // Down now: the identity service migrates once it is back.
                    Err(e) if e.is_unavailable() => {
                        warn!(error = %e, "database unavailable at start; migrations wait for it");
                        true
                    }
                    Err(e) => return Err(AppError::Migrate(e)),
                };
                crate::identity::Identity::from_config(&cfg, activity, schema_pending).await?
            }
            None => None,
        };
        let (client, control_client) = build_clients(&cfg)?;
        let control = Arc::new(HttpControlPlane {
            client: control_client,
        });
        let registry_slot: Slot<RegistryMsg> = Slot::default();
        let discovery_slot: Slot<DiscoveryMsg> = Slot::default();
        let root_slot: Slot<RootMsg> = Slot::default();
        let table = SharedTable::new(initial_table(&specs_from_config(&cfg), &registry_slot));
        let policy = RestartPolicy::default();
        let health = HealthDeps {
            prober: control.clone(),
            registry: registry_slot.clone(),
            table: table.clone(),
            cfg: HealthConfig {
                interval: cfg.health_check_interval,
                probe_timeout: cfg.health_probe_timeout,
                on_demand_every: cfg.on_demand_probe_interval,
            },
            policy,
        };
        let mut children = Vec::new();
        {
            let spawner: Arc<dyn HealthSpawner> = Arc::new(RootHealthSpawner {
                root: root_slot.clone(),
                deps: health.clone(),
            });
            let (slot, table) = (registry_slot.clone(), table.clone());
            let eject = EjectPolicy {
                base: cfg.eject_base,
                max: cfg.eject_max,
            };
            children.push(ChildSpec {
                key: "registry".into(),
                policy,
                start: Arc::new(move |sup| {
                    let args = RegistryArgs {
                        shared: table.clone(),
                        eject,
                        health: spawner.clone(),
                        slot: slot.clone(),
                    };
                    let slot = slot.clone();
                    Box::pin(async move {
                        let (actor, _) =
                            Actor::spawn_linked(None, RegistryActor, args, sup).await?;
                        slot.set(actor.clone());
                        Ok(actor.get_cell())
                    })
                }),
            });
        }
        let discovery_stats: Arc<Mutex<llmmux_actors::discovery::DiscoveryStats>> = Arc::default();
        {
            let (slot, reg, stats, control, table) = (
                discovery_slot.clone(),
                registry_slot.clone(),
                Arc::clone(&discovery_stats),
                control.clone(),
                table.clone(),
            );
            let (interval, timeout) = (cfg.discovery_interval, cfg.health_probe_timeout);
            children.push(ChildSpec {
                key: "discovery".into(),
                policy,
                start: Arc::new(move |sup| {
                    let args = DiscoveryArgs {
                        table: table.clone(),
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
        }
        let discovery = DiscoveryHandle::new(discovery_slot.clone(), discovery_stats);
        for entry in table.load().backends.values() {
            children.push(health.spec(entry.handle.clone()));
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
        if let Some(a) = &audit {
            children.push(a.child_spec(policy));
        }

        let report: SupervisionReport = Arc::default();
        let (root, root_join) = Actor::spawn(
            None,
            RootActor,
            RootArgs {
                children,
                report: report.clone(),
                slot: root_slot,
            },
        )
        .await
        .map_err(|e| AppError::Actors(e.to_string()))?;

        let budgets = Arc::new(RetryBudgets::new(BudgetPolicy {
            percent: cfg.retry_budget_percent,
            min_per_sec: cfg.retry_budget_min_per_sec,
            ttl: cfg.retry_budget_ttl,
        }));
        let toolcalls = Arc::new(ToolCallCounters::default());
        let front = Arc::new(FrontDoor::default());
        let metrics = Arc::new(Metrics::new(MetricSources {
            table: table.clone(),
            budgets: budgets.clone(),
            supervision: report.clone(),
            front: front.clone(),
            toolcalls: toolcalls.clone(),
            extra: audit
                .iter()
                .map(|a| Arc::new(a.clone()) as Arc<dyn crate::metrics::ScrapeSource>)
                .collect(),
        }));
        let metrics_listener = match cfg.metrics_port {
            Some(port) => Some(
                TcpListener::bind((cfg.host.as_str(), port))
                    .await
                    .map_err(AppError::MetricsListener)?,
            ),
            None => None,
        };
        let state = Arc::new(AppState {
            proxy: Proxy {
                registry: RegistryHandle {
                    slot: registry_slot.clone(),
                    table: table.clone(),
                    route_timeout: Duration::from_millis(50),
                    route_via_actor: cfg.route_via_registry,
                },
                streams: streams.clone(),
                client,
                budgets,
                concurrency: Arc::new(Semaphore::new(cfg.max_in_flight)),
                toolcalls,
            },
            lifecycle: Lifecycle::new(report),
            discovery,
            auth: arc_swap::ArcSwap::from_pointee(Authenticator::new(&cfg)),
            source,
            front,
            sinks: Arc::new(OutcomeSinks::new({
                let mut sinks: Vec<Arc<dyn crate::outcome::OutcomeSink>> =
                    vec![Arc::new(AccessLog), metrics.clone()];
                if let Some(id) = &identity {
                    sinks.push(Arc::new(crate::identity::TokenCounter(id.clone())));
                }
                if let Some(a) = &audit {
                    sinks.push(Arc::new(a.clone()));
                }
                sinks
            })),
            identity,
            audit: audit.clone(),
            metrics,
            first_seen: Mutex::new(HashMap::new()),
            #[cfg(feature = "fault-injection")]
            faults: crate::faults::FaultInjector {
                registry: registry_slot,
                discovery: discovery_slot,
                table,
                streams,
                audit: audit.clone(),
            },
            config: LiveConfig::new(cfg),
        });
        if let Some(a) = &audit {
            a.activity(
                crate::audit::record::ActivityEntry::new("config_start", "success").detail(
                    serde_json::json!({
                        "settings": state.config.load().render_masked().lines().collect::<Vec<_>>()
                    }),
                ),
            );
        }
        if let Some(l) = metrics_listener {
            tokio::spawn(crate::http::metrics_port::serve(l, state.clone()));
        }
        Self::serve(state, addr, listener, root, root_join)
    }

    fn serve(
        state: Arc<AppState>,
        addr: SocketAddr,
        listener: TcpListener,
        root: ActorRef<RootMsg>,
        root_join: tokio::task::JoinHandle<()>,
    ) -> Result<App, AppError> {
        let stop_accepting = CancellationToken::new();
        let root_done = {
            let state = state.clone();
            let stop = stop_accepting.clone();
            tokio::spawn(async move {
                let _ = root_join.await;
                if !state.lifecycle.is_draining() {
                    error!("actor tree stopped: restart budget exceeded");
                    state.lifecycle.escalate();
                    stop.cancel();
                }
            })
        };
        let server = tokio::spawn(crate::http::server::serve(
            listener,
            state.clone(),
            stop_accepting.clone(),
        ));
        info!(%addr, servers = state.proxy.registry.table.load().backends.len(), "llmmux listening");
        Ok(App {
            state,
            addr,
            root,
            root_done,
            stop_accepting,
            server,
        })
    }

    /// Read the configuration again and apply it (SIGHUP).
    pub async fn reload(&self) -> Result<crate::reload::ReloadReport, crate::reload::ReloadError> {
        crate::reload::reload(&self.state).await
    }

    /// Resolves when the gateway should stop by itself (escalation).
    pub async fn escalated(&self) {
        self.stop_accepting.cancelled().await
    }

    /// Graceful shutdown: readiness goes 503 at once, the listener closes, in-flight requests
    /// and streams get up to `SHUTDOWN_GRACE`; streams still open then end with an error event.
    pub async fn shutdown(self) -> Exit {
        let escalated = self.state.lifecycle.is_escalated();
        self.state.lifecycle.start_draining();
        self.stop_accepting.cancel();
        let grace = self.state.config.load().shutdown_grace;
        let streams = self.state.proxy.streams.clone();
        let mut server = self.server;
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            warn!("shutdown grace period over; cancelling remaining streams");
            streams.cancel_all("gateway shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
            server.abort();
        }
        if let Some(a) = &self.state.audit {
            // Everything accepted is written (to the store, else the spool) before the
            // writer stops with the tree.
            if !a.flush(AUDIT_FLUSH_TIMEOUT).await {
                warn!("audit records could not all be flushed before shutdown");
            }
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
