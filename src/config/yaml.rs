//! The optional YAML config file: the same settings as the environment (variable names in
//! lower case) plus a `servers:` list of per-server options. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// Per-server options (YAML `servers:` list, and the body of `POST /admin/backends`), for
/// vLLM and other OpenAI-compatible engines and providers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// `host:port` or URL of the server.
    pub url: String,
    /// Readable id (letters, digits, `.`, `_`, `-`); derived from the URL when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Static models for this server (fallback when discovery fails).
    #[serde(default)]
    pub models: Vec<String>,
    /// Poll this server's `/v1/models` (default true).
    #[serde(default = "yes")]
    pub discover: bool,
    /// Override of MAX_IN_FLIGHT_PER_SERVER for this server.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Bearer key sent to this server (instead of VLLM_API_KEY).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// File holding the key (for secrets mounted as files).
    #[serde(default)]
    pub api_key_file: Option<String>,
    /// Active health check: a path (`/health`, the default), `models` (probe
    /// `GET /v1/models`) or `none` (passive signals only).
    #[serde(default)]
    pub health: Option<String>,
    /// Extra request headers for this server.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// How a server's liveness is checked, from the `health` option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthOption {
    Path(String),
    Models,
    None,
}

impl ServerOptions {
    pub fn health(&self) -> Result<HealthOption, String> {
        match self.health.as_deref().map(str::trim) {
            None | Some("") => Ok(HealthOption::Path("/health".into())),
            Some("models") => Ok(HealthOption::Models),
            Some("none") => Ok(HealthOption::None),
            Some(p)
                if p.starts_with('/')
                    && !p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(HealthOption::Path(p.to_owned()))
            }
            Some(other) => Err(format!(
                "health: expected a path like /health, `models` or `none`, got {other:?}"
            )),
        }
    }

    /// The key from `api_key` or `api_key_file`.
    pub fn key(&self) -> Result<Option<Secret>, String> {
        match (&self.api_key, &self.api_key_file) {
            (Some(_), Some(_)) => Err("set api_key or api_key_file, not both".into()),
            (Some(k), None) => Ok(Some(k.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(Secret::new(s.trim())))
                .map_err(|e| format!("api_key_file: cannot read {path}: {e}")),
            (None, None) => Ok(None),
        }
    }

    /// Every problem with these options (the URL is checked where it is normalized).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = super::normalize_base_url(&self.url) {
            out.push(format!("url: {e}"));
        }
        if let Some(n) = &self.name {
            if !llmmux_actors::backend::BackendId::is_valid(n) {
                out.push(format!(
                    "name {n:?}: use letters, digits, '.', '_' and '-' (at most 128)"
                ));
            }
        }
        if let Err(e) = self.health() {
            out.push(e);
        }
        if let Err(e) = self.key() {
            out.push(e);
        }
        for (k, v) in &self.headers {
            let name_ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
            let reserved = matches!(
                k.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection" | "authorization"
            );
            if !name_ok || reserved {
                out.push(format!(
                    "headers: {k:?} is not a header name that may be set (use api_key for Authorization)"
                ));
            }
            if http::HeaderValue::from_str(v).is_err() {
                out.push(format!(
                    "headers: the value of {k:?} is not a valid header value"
                ));
            }
        }
        for m in &self.models {
            if m.trim().is_empty() {
                out.push("models: empty model id".into());
            }
        }
        out
    }

    /// One line for `check-config`, secrets masked.
    pub fn render_masked(&self) -> String {
        format!(
            "url={} name={} models={} discover={} max_in_flight={} health={} api_key={} headers={}",
            self.url,
            self.name.as_deref().unwrap_or(""),
            self.models.join("|"),
            self.discover,
            self.max_in_flight
                .map(|n| n.to_string())
                .unwrap_or_default(),
            self.health.as_deref().unwrap_or("/health"),
            match (&self.api_key, &self.api_key_file) {
                (Some(k), _) => k.masked(),
                (None, Some(f)) => format!("(file {f})"),
                (None, None) => "(none)".into(),
            },
            self.headers.keys().cloned().collect::<Vec<_>>().join("|"),
        )
    }
}

pub(super) const KNOWN: &[&str] = &[
    "host",
    "port",
    "api_keys",
    "admin_api_keys",
    "backends",
    "vllm_servers",
    "enable_cors",
    "cors_origin",
    "health_check_interval",
    "health_probe_timeout",
    "discovery_interval",
    "connect_timeout",
    "first_byte_timeout",
    "request_timeout",
    "body_read_timeout",
    "stream_idle_timeout",
    "header_read_timeout",
    "max_body_bytes",
    "max_attempts",
    "max_in_flight",
    "max_in_flight_per_server",
    "shutdown_grace",
    "eject_base",
    "eject_max",
    "failure_threshold",
    "model_aliases",
    "vllm_api_key",
    "upstream_ca_file",
    "log_level",
    "log_format",
    "stream_shards",
    "route_via",
    "tool_call_formats",
    "tool_call_code_fence",
    "tool_call_harmony_stripped",
    "metrics_key",
    "otel_exporter_otlp_endpoint",
    "otel_service_name",
    "metrics_port",
    "retry_budget_percent",
    "retry_budget_min_per_sec",
    "retry_budget_ttl",
    "failure_rate_percent",
    "stream_keepalive_interval",
    "no_backend_wait",
    "on_demand_probe_interval",
    "sse_max_event_bytes",
    "max_connections",
    "worker_threads",
    "client_send_timeout",
    "max_header_bytes",
    "keepalive_timeout",
    "http2_keepalive_interval",
    "http2_keepalive_timeout",
    "database_url",
    "db_pool_size",
    "db_acquire_timeout",
    "db_statement_timeout",
    "jwt_secret",
    "jwt_access_ttl",
    "jwt_refresh_ttl",
    "api_key_pepper",
    "admin_username",
    "admin_password",
    "redis_url",
    "redis_key_prefix",
    "rate_limit_sync_interval",
    "login_max_failures",
    "login_max_failures_per_ip",
    "login_lockout_base",
    "login_lockout_max",
    "password_hash_concurrency",
    "audit_enabled",
    "audit_bodies",
    "audit_body_max_bytes",
    "audit_queue_capacity",
    "audit_batch_size",
    "audit_flush_interval",
    "audit_sync_interval",
    "audit_spool_dir",
    "audit_spool_max_bytes",
    "audit_on_full",
    "audit_retention_days",
    "audit_journal_path",
    "audit_journal_max_bytes",
];

fn err(reason: String) -> ConfigError {
    ConfigError {
        name: "--config".into(),
        reason,
    }
}

/// Flatten the file into `NAME → string` (lists become comma-separated) plus server options.
pub(super) fn load(
    path: &Path,
) -> Result<(BTreeMap<String, String>, Vec<ServerOptions>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let doc: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| err(format!("invalid YAML: {e}")))?;
    let mut flat = BTreeMap::new();
    let mut servers = Vec::new();
    for (key, value) in doc {
        if key == "servers" {
            servers = serde_yaml::from_value(value).map_err(|e| err(format!("servers: {e}")))?;
            continue;
        }
        if !KNOWN.contains(&key.as_str()) {
            return Err(err(format!("unknown setting {key:?}")));
        }
        let text = scalar_or_list(&value)
            .ok_or_else(|| err(format!("{key}: expected a value or a list")))?;
        flat.insert(key.to_ascii_uppercase(), text);
    }
    Ok((flat, servers))
}

fn scalar_or_list(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        Value::Sequence(items) => items
            .iter()
            .map(scalar_or_list)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| Some(format!("{}={}", scalar_or_list(k)?, scalar_or_list(v)?)))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Tagged(_) => None,
    }
}
