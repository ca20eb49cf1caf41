//! Fault injection for supervision tests and the chaos suite: crash a live actor of a given
//! kind. Compiled only with the `fault-injection` feature, never into a release build.

use llmmux_actors::discovery::DiscoveryMsg;
use llmmux_actors::registry::RegistryMsg;
use llmmux_actors::slot::Slot;
use llmmux_actors::stream::StreamSpawner;
use llmmux_actors::table::SharedTable;
use std::sync::Arc;

/// Which actor to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Registry,
    Discovery,
    Health,
    Stream,
    Audit,
}

impl std::str::FromStr for ActorKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "registry" => Ok(Self::Registry),
            "discovery" => Ok(Self::Discovery),
            "health" => Ok(Self::Health),
            "stream" => Ok(Self::Stream),
            "audit" => Ok(Self::Audit),
            _ => Err(()),
        }
    }
}

#[derive(Clone)]
pub struct FaultInjector {
    pub registry: Slot<RegistryMsg>,
    pub discovery: Slot<DiscoveryMsg>,
    pub table: Arc<SharedTable>,
    pub streams: StreamSpawner,
    pub audit: Option<crate::audit::Audit>,
}

impl FaultInjector {
    /// Crash one actor of the kind; false when none was running.
    pub async fn crash(&self, kind: ActorKind) -> bool {
        match kind {
            ActorKind::Registry => self.registry.cast(RegistryMsg::Crash),
            ActorKind::Discovery => self.discovery.cast(DiscoveryMsg::Crash),
            ActorKind::Health => self.table.load().backends.values().next().is_some_and(|e| {
                e.handle
                    .health
                    .cast(llmmux_actors::health::HealthMsg::Crash)
            }),
            ActorKind::Stream => self.streams.crash_one().await,
            ActorKind::Audit => self.audit.as_ref().is_some_and(|a| a.crash_writer()),
        }
    }
}
