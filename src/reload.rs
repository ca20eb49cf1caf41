//! Configuration reload (SIGHUP, `POST /admin/reload`): read the YAML file and the
//! environment (with its `NAME_FILE` secrets) again, validate the whole tree, and apply it
//! without dropping traffic, or refuse it whole and keep the old one.
//!
//! Applied at once: servers (added, changed, removed through the registry, in one snapshot;
//! requests in flight finish where they are), aliases, static keys, tool-call formats and
//! options, timeouts read per request, the retry budget policy. Settings baked into running
//! components (listeners, actor intervals, connection limits) are reported as needing a
//! restart.

use std::collections::BTreeMap;

use llmmux_actors::registry::Reconciled;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::config::{ConfigError, ValidatedConfig};
use crate::http::auth::Authenticator;
use crate::proxy::retry::BudgetPolicy;
use crate::state::AppState;
use crate::upstream::specs_from_config;

/// Settings a reload cannot change in a running process.
const RESTART_ONLY: &[&str] = &[
    "HOST",
    "PORT",
    "METRICS_PORT",
    "STREAM_SHARDS",
    "ROUTE_VIA",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_PROBE_TIMEOUT",
    "ON_DEMAND_PROBE_INTERVAL",
    "DISCOVERY_INTERVAL",
    "EJECT_BASE",
    "EJECT_MAX",
    "CONNECT_TIMEOUT",
    "UPSTREAM_CA_FILE",
    "MAX_IN_FLIGHT",
    "MAX_CONNECTIONS",
    "WORKER_THREADS",
    "HEADER_READ_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "HTTP2_KEEPALIVE_INTERVAL",
    "HTTP2_KEEPALIVE_TIMEOUT",
    "MAX_HEADER_BYTES",
    "CLIENT_SEND_TIMEOUT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "AUDIT_ENABLED",
    "AUDIT_BODIES",
    "AUDIT_BODY_MAX_BYTES",
    "AUDIT_QUEUE_CAPACITY",
    "AUDIT_BATCH_SIZE",
    "AUDIT_FLUSH_INTERVAL",
    "AUDIT_SYNC_INTERVAL",
    "AUDIT_SPOOL_DIR",
    "AUDIT_SPOOL_MAX_BYTES",
    "AUDIT_ON_FULL",
    "AUDIT_RETENTION_DAYS",
    "AUDIT_JOURNAL_PATH",
    "AUDIT_JOURNAL_MAX_BYTES",
];

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway was started without a configuration source to read again")]
    NoSource,
    #[error("the new configuration is invalid")]
    Invalid(Vec<ConfigError>),
    #[error("the registry did not apply the servers; nothing was changed")]
    Registry,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub servers: Reconciled,
    pub changed: Vec<String>,
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    pub fn to_json(&self) -> Value {
        json!({
            "reloaded": true,
            "servers": {
                "added": self.servers.added,
                "updated": self.servers.updated,
                "removed": self.servers.removed,
                "skipped": self.servers.skipped,
            },
            "changed": self.changed,
            "restart_needed": self.restart_needed,
        })
    }
}

fn settings(cfg: &ValidatedConfig) -> BTreeMap<String, String> {
    cfg.render_masked()
        .lines()
        .filter_map(|l| l.split_once('='))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            m.entry(k.to_owned())
                .and_modify(|old: &mut String| {
                    old.push('\n');
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_owned());
            m
        })
}

/// Read, validate and apply the configuration again.
pub async fn reload(state: &AppState) -> Result<ReloadReport, ReloadError> {
    let source = state.source.as_ref().ok_or(ReloadError::NoSource)?;
    let next = match source.load() {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                warn!(setting = %e.name, reason = %e.reason, "reload refused: invalid configuration");
            }
            return Err(ReloadError::Invalid(errors));
        }
    };
    let old = state.config.load();
    let (before, after) = (settings(&old), settings(&next));
    let mut report = ReloadReport::default();
    for (name, value) in &after {
        if before.get(name) != Some(value) {
            if RESTART_ONLY.contains(&name.as_str()) {
                report.restart_needed.push(name.clone());
            } else {
                report.changed.push(name.clone());
            }
        }
    }
    report.servers = state
        .proxy
        .registry
        .reconcile(specs_from_config(&next))
        .await
        .map_err(|_| ReloadError::Registry)?;
    state
        .auth
        .store(std::sync::Arc::new(Authenticator::new(&next)));
    state.proxy.budgets.set_policy(BudgetPolicy {
        percent: next.retry_budget_percent,
        min_per_sec: next.retry_budget_min_per_sec,
        ttl: next.retry_budget_ttl,
    });
    state.config.replace(next);
    info!(
        changed = ?report.changed,
        restart_needed = ?report.restart_needed,
        added = ?report.servers.added,
        updated = ?report.servers.updated,
        removed = ?report.servers.removed,
        "configuration reloaded"
    );
    Ok(report)
}
