//! What request handlers share, split by concern: the live configuration, the proxy's hot
//! path, the process lifecycle, discovery, authentication and where request records go.
//! Built by `app`; read by `http`. `proxy` never sees this type, so the modules form no cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llmmux_actors::discovery::DiscoveryHandle;

use crate::config::LiveConfig;
use crate::http::auth::Authenticator;
use crate::http::server::FrontDoor;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::outcome::OutcomeSinks;
use crate::proxy::Proxy;

pub struct AppState {
    pub config: LiveConfig,
    pub proxy: Proxy,
    pub lifecycle: Lifecycle,
    pub discovery: DiscoveryHandle,
    /// Rebuilt on reload (the static keys may change).
    pub auth: arc_swap::ArcSwap<Authenticator>,
    /// Users, sessions, database keys and per-key limits (`DATABASE_URL`).
    pub identity: Option<crate::identity::Identity>,
    /// The audit log (`AUDIT_ENABLED`, on by default).
    pub audit: Option<crate::audit::Audit>,
    /// Where a reload reads the configuration again (none: reload is refused).
    pub source: Option<crate::config::ConfigSource>,
    pub front: Arc<FrontDoor>,
    pub metrics: Arc<Metrics>,
    pub sinks: Arc<OutcomeSinks>,
    /// First time each model id was seen, for a stable `created` in /v1/models.
    pub first_seen: Mutex<HashMap<String, u64>>,
    #[cfg(feature = "fault-injection")]
    pub faults: crate::faults::FaultInjector,
}
