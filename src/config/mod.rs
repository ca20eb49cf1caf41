//! Typed configuration, validated once at start-up.
//!
//! Sources, lowest precedence first: built-in defaults, the optional YAML file
//! (`--config FILE`, keys are the variable names in lower case plus `servers:` for
//! per-server options), then the environment. Secrets may come from `NAME_FILE`.
//! [`Config::load`] collects every problem as a [`ConfigError`] naming the variable, so the
//! operator sees all of them at once; only a [`ValidatedConfig`] can start the gateway.

mod live;
mod parse;
mod secret;
mod yaml;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use live::LiveConfig;
pub use parse::{normalize_base_url, parse_backends, StaticBackend};
pub use secret::Secret;
pub use yaml::{HealthOption, ServerOptions};

use crate::toolcall::{FormatRules, Options as ToolOptions};

/// One problem with one setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub reason: String,
}

/// Which origins may call the gateway from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the gateway. Built only through [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub api_keys: Vec<Secret>,
    pub admin_api_keys: Vec<Secret>,
    pub backends: Vec<StaticBackend>,
    pub vllm_servers: Vec<String>,
    pub server_options: Vec<ServerOptions>,
    pub enable_cors: bool,
    pub cors_origins: CorsOrigins,
    pub health_check_interval: Duration,
    pub health_probe_timeout: Duration,
    pub discovery_interval: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub body_read_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_attempts: u32,
    pub max_in_flight: usize,
    pub max_in_flight_per_server: u32,
    pub shutdown_grace: Duration,
    pub eject_base: Duration,
    pub eject_max: Duration,
    pub failure_threshold: u32,
    pub model_aliases: BTreeMap<String, String>,
    pub vllm_api_key: Option<Secret>,
    pub upstream_ca_file: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub stream_shards: usize,
    pub route_via_registry: bool,
    pub tool_call_formats: FormatRules,
    pub tool_call_options: ToolOptions,
    // --- operations ---
    /// Bearer key required on `/metrics` (open when unset).
    pub metrics_key: Option<Secret>,
    /// Serve `/metrics` on this port only (not on `PORT`).
    pub metrics_port: Option<u16>,
    /// OTLP/HTTP collector for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otel_endpoint: Option<String>,
    pub otel_service_name: String,
    // --- failover and liveness ---
    /// Retries allowed per model: this percentage of recent requests...
    pub retry_budget_percent: u32,
    /// ...plus this reserve per second, over `retry_budget_ttl`.
    pub retry_budget_min_per_sec: u32,
    pub retry_budget_ttl: Duration,
    /// Recent failure rate (percent) that ejects a server.
    pub failure_rate_percent: u32,
    pub stream_keepalive_interval: Duration,
    pub no_backend_wait: Duration,
    pub on_demand_probe_interval: Duration,
    pub sse_max_event_bytes: usize,
    // --- front door ---
    /// `None`: derived from the file-descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Runtime worker threads; 0: one per CPU.
    pub worker_threads: usize,
    pub client_send_timeout: Duration,
    pub max_header_bytes: usize,
    pub keepalive_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    // --- identity: users, roles, API keys, per-key limits (src/identity, src/storage) ---
    /// PostgreSQL for users and keys; without it only static keys authenticate.
    pub database_url: Option<Secret>,
    pub db_pool_size: usize,
    pub db_acquire_timeout: Duration,
    pub db_statement_timeout: Duration,
    /// HS256 key for access tokens (at least 32 bytes); required with `database_url`.
    pub jwt_secret: Option<Secret>,
    pub jwt_access_ttl: Duration,
    pub jwt_refresh_ttl: Duration,
    /// HMAC key for stored API keys; derived from `jwt_secret` when absent.
    pub api_key_pepper: Option<Secret>,
    pub admin_username: String,
    /// Creates the first SUPER_ADMIN when the user table is empty.
    pub admin_password: Option<Secret>,
    /// Shares rate-limit counters between replicas.
    pub redis_url: Option<Secret>,
    pub redis_key_prefix: String,
    pub rate_limit_sync_interval: Duration,
    pub login_max_failures: u32,
    pub login_max_failures_per_ip: u32,
    pub login_lockout_base: Duration,
    pub login_lockout_max: Duration,
    pub password_hash_concurrency: usize,
    // --- audit log (src/audit, actors/src/audit.rs) ---
    pub audit_enabled: bool,
    pub audit_bodies: bool,
    pub audit_body_max_bytes: usize,
    pub audit_queue_capacity: usize,
    pub audit_batch_size: usize,
    /// Longest time a record waits in memory before it is written.
    pub audit_flush_interval: Duration,
    /// Least time between two syncs of the journal and spool; zero syncs every write.
    pub audit_sync_interval: Duration,
    pub audit_spool_dir: PathBuf,
    pub audit_spool_max_bytes: u64,
    pub audit_on_full: llmmux_actors::audit::OnFull,
    /// 0 keeps every partition.
    pub audit_retention_days: u32,
    /// The JSON-lines journal used without `DATABASE_URL`.
    pub audit_journal_path: PathBuf,
    pub audit_journal_max_bytes: u64,
}

/// A configuration that passed validation; the only thing `App::build` accepts.
#[derive(Debug, Clone)]
pub struct ValidatedConfig(Config);

impl std::ops::Deref for ValidatedConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl ValidatedConfig {
    /// For tests and the demo, which build a config in code: validate it the same way.
    pub fn new(cfg: Config) -> Result<Self, Vec<ConfigError>> {
        let errors = validate(&cfg);
        if errors.is_empty() {
            Ok(Self(cfg))
        } else {
            Err(errors)
        }
    }

    /// Where traces go, if anywhere.
    pub fn otel(&self) -> Option<crate::telemetry::OtelConfig> {
        self.otel_endpoint
            .as_ref()
            .map(|endpoint| crate::telemetry::OtelConfig {
                endpoint: endpoint.clone(),
                service_name: self.otel_service_name.clone(),
            })
    }

    pub fn has_backends(&self) -> bool {
        !self.backends.is_empty()
            || !self.vllm_servers.is_empty()
            || !self.server_options.is_empty()
    }

    /// The effective configuration, secrets masked, one `NAME=value` per line.
    pub fn render_masked(&self) -> String {
        let c = &self.0;
        let secrets = |v: &[Secret]| {
            if v.is_empty() {
                "(none)".to_owned()
            } else {
                v.iter().map(Secret::masked).collect::<Vec<_>>().join(",")
            }
        };
        let ms = |d: Duration| d.as_millis().to_string();
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "{k}={v}");
        };
        line("HOST", c.host.clone());
        line("PORT", c.port.to_string());
        line("API_KEYS", secrets(&c.api_keys));
        line("ADMIN_API_KEYS", secrets(&c.admin_api_keys));
        line(
            "BACKENDS",
            c.backends
                .iter()
                .map(|b| format!("{}={}", b.model, b.url))
                .collect::<Vec<_>>()
                .join(","),
        );
        line("VLLM_SERVERS", c.vllm_servers.join(","));
        line("ENABLE_CORS", c.enable_cors.to_string());
        line(
            "CORS_ORIGIN",
            match &c.cors_origins {
                CorsOrigins::Any => "*".to_owned(),
                CorsOrigins::List(l) => l.join(","),
            },
        );
        line("HEALTH_CHECK_INTERVAL", ms(c.health_check_interval));
        line("HEALTH_PROBE_TIMEOUT", ms(c.health_probe_timeout));
        line("DISCOVERY_INTERVAL", ms(c.discovery_interval));
        line("CONNECT_TIMEOUT", ms(c.connect_timeout));
        line("FIRST_BYTE_TIMEOUT", ms(c.first_byte_timeout));
        line("REQUEST_TIMEOUT", ms(c.request_timeout));
        line("BODY_READ_TIMEOUT", ms(c.body_read_timeout));
        line("STREAM_IDLE_TIMEOUT", ms(c.stream_idle_timeout));
        line("HEADER_READ_TIMEOUT", ms(c.header_read_timeout));
        line("MAX_BODY_BYTES", c.max_body_bytes.to_string());
        line("MAX_ATTEMPTS", c.max_attempts.to_string());
        line("MAX_IN_FLIGHT", c.max_in_flight.to_string());
        line(
            "MAX_IN_FLIGHT_PER_SERVER",
            c.max_in_flight_per_server.to_string(),
        );
        line("SHUTDOWN_GRACE", ms(c.shutdown_grace));
        line("EJECT_BASE", ms(c.eject_base));
        line("EJECT_MAX", ms(c.eject_max));
        line("FAILURE_THRESHOLD", c.failure_threshold.to_string());
        line(
            "MODEL_ALIASES",
            c.model_aliases
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        line(
            "VLLM_API_KEY",
            c.vllm_api_key
                .as_ref()
                .map(Secret::masked)
                .unwrap_or_else(|| "(none)".into()),
        );
        line(
            "UPSTREAM_CA_FILE",
            c.upstream_ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        );
        line("LOG_LEVEL", c.log_level.clone());
        line(
            "LOG_FORMAT",
            if c.log_format == LogFormat::Json {
                "json".into()
            } else {
                "text".into()
            },
        );
        line("STREAM_SHARDS", c.stream_shards.to_string());
        line(
            "ROUTE_VIA",
            if c.route_via_registry {
                "registry".into()
            } else {
                "snapshot".into()
            },
        );
        line(
            "TOOL_CALL_FORMATS",
            c.tool_call_formats
                .rules()
                .map(|(g, f)| format!("{g}={f}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        line(
            "TOOL_CALL_CODE_FENCE",
            c.tool_call_options.accept_code_fence.to_string(),
        );
        line(
            "TOOL_CALL_HARMONY_STRIPPED",
            c.tool_call_options.harmony_stripped_recovery.to_string(),
        );
        line(
            "METRICS_KEY",
            c.metrics_key
                .as_ref()
                .map(Secret::masked)
                .unwrap_or_else(|| "(none)".into()),
        );
        line(
            "METRICS_PORT",
            c.metrics_port.map(|p| p.to_string()).unwrap_or_default(),
        );
        line(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            c.otel_endpoint.clone().unwrap_or_default(),
        );
        line("OTEL_SERVICE_NAME", c.otel_service_name.clone());
        line("RETRY_BUDGET_PERCENT", c.retry_budget_percent.to_string());
        line(
            "RETRY_BUDGET_MIN_PER_SEC",
            c.retry_budget_min_per_sec.to_string(),
        );
        line("RETRY_BUDGET_TTL", ms(c.retry_budget_ttl));
        line("FAILURE_RATE_PERCENT", c.failure_rate_percent.to_string());
        line("STREAM_KEEPALIVE_INTERVAL", ms(c.stream_keepalive_interval));
        line("NO_BACKEND_WAIT", ms(c.no_backend_wait));
        line("ON_DEMAND_PROBE_INTERVAL", ms(c.on_demand_probe_interval));
        line("SSE_MAX_EVENT_BYTES", c.sse_max_event_bytes.to_string());
        line(
            "MAX_CONNECTIONS",
            c.max_connections
                .map(|n| n.to_string())
                .unwrap_or_else(|| "(from the file limit)".into()),
        );
        line(
            "WORKER_THREADS",
            match c.worker_threads {
                0 => "(one per CPU)".into(),
                n => n.to_string(),
            },
        );
        line("CLIENT_SEND_TIMEOUT", ms(c.client_send_timeout));
        line("MAX_HEADER_BYTES", c.max_header_bytes.to_string());
        line("KEEPALIVE_TIMEOUT", ms(c.keepalive_timeout));
        line("HTTP2_KEEPALIVE_INTERVAL", ms(c.http2_keepalive_interval));
        line("HTTP2_KEEPALIVE_TIMEOUT", ms(c.http2_keepalive_timeout));
        let secret = |s: &Option<Secret>| s.as_ref().map_or("(none)".into(), Secret::masked);
        line("DATABASE_URL", secret(&c.database_url));
        line("DB_POOL_SIZE", c.db_pool_size.to_string());
        line("DB_ACQUIRE_TIMEOUT", ms(c.db_acquire_timeout));
        line("DB_STATEMENT_TIMEOUT", ms(c.db_statement_timeout));
        line("JWT_SECRET", secret(&c.jwt_secret));
        line("JWT_ACCESS_TTL", ms(c.jwt_access_ttl));
        line("JWT_REFRESH_TTL", ms(c.jwt_refresh_ttl));
        line(
            "API_KEY_PEPPER",
            c.api_key_pepper
                .as_ref()
                .map_or("(derived from JWT_SECRET)".into(), Secret::masked),
        );
        line("ADMIN_USERNAME", c.admin_username.clone());
        line("ADMIN_PASSWORD", secret(&c.admin_password));
        line("REDIS_URL", secret(&c.redis_url));
        line("REDIS_KEY_PREFIX", c.redis_key_prefix.clone());
        line("RATE_LIMIT_SYNC_INTERVAL", ms(c.rate_limit_sync_interval));
        line("LOGIN_MAX_FAILURES", c.login_max_failures.to_string());
        line(
            "LOGIN_MAX_FAILURES_PER_IP",
            c.login_max_failures_per_ip.to_string(),
        );
        line("LOGIN_LOCKOUT_BASE", ms(c.login_lockout_base));
        line("LOGIN_LOCKOUT_MAX", ms(c.login_lockout_max));
        line(
            "PASSWORD_HASH_CONCURRENCY",
            c.password_hash_concurrency.to_string(),
        );
        line("AUDIT_ENABLED", c.audit_enabled.to_string());
        line("AUDIT_BODIES", c.audit_bodies.to_string());
        line("AUDIT_BODY_MAX_BYTES", c.audit_body_max_bytes.to_string());
        line("AUDIT_QUEUE_CAPACITY", c.audit_queue_capacity.to_string());
        line("AUDIT_BATCH_SIZE", c.audit_batch_size.to_string());
        line("AUDIT_FLUSH_INTERVAL", ms(c.audit_flush_interval));
        line("AUDIT_SYNC_INTERVAL", ms(c.audit_sync_interval));
        line("AUDIT_SPOOL_DIR", c.audit_spool_dir.display().to_string());
        line("AUDIT_SPOOL_MAX_BYTES", c.audit_spool_max_bytes.to_string());
        line(
            "AUDIT_ON_FULL",
            match c.audit_on_full {
                llmmux_actors::audit::OnFull::Drop => "drop".into(),
                llmmux_actors::audit::OnFull::Reject => "reject".into(),
            },
        );
        line("AUDIT_RETENTION_DAYS", c.audit_retention_days.to_string());
        line(
            "AUDIT_JOURNAL_PATH",
            c.audit_journal_path.display().to_string(),
        );
        line(
            "AUDIT_JOURNAL_MAX_BYTES",
            c.audit_journal_max_bytes.to_string(),
        );
        for s in &c.server_options {
            line("servers[]", s.render_masked());
        }
        out
    }
}

/// Where settings come from. The environment is passed in (not read globally) so tests and
/// the demo can load configs without touching the process environment.
pub struct Sources<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub file: Option<PathBuf>,
}

/// Reads one environment variable (the process environment, or a test's map).
pub type EnvReader = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the configuration is read from, kept for reloads (SIGHUP, `POST /admin/reload`):
/// the same file and environment (including `NAME_FILE` secrets) read again.
#[derive(Clone)]
pub struct ConfigSource {
    pub env: EnvReader,
    pub file: Option<PathBuf>,
}

impl ConfigSource {
    /// The process environment and an optional YAML file.
    pub fn process(file: Option<PathBuf>) -> Self {
        Self {
            env: std::sync::Arc::new(|name| std::env::var(name).ok()),
            file,
        }
    }

    pub fn load(&self) -> Result<ValidatedConfig, Vec<ConfigError>> {
        Config::load(&Sources {
            env: &*self.env,
            file: self.file.clone(),
        })
    }
}

impl Config {
    pub fn load(src: &Sources<'_>) -> Result<ValidatedConfig, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut raw: BTreeMap<String, String> = BTreeMap::new();
        let mut server_options = Vec::new();
        if let Some(path) = &src.file {
            match yaml::load(path) {
                Ok((flat, servers)) => {
                    raw.extend(flat);
                    server_options = servers;
                }
                Err(e) => errors.push(e),
            }
        }
        let file_errors = std::cell::RefCell::new(Vec::new());
        let get = |name: &str| -> Option<String> {
            if let Some(v) = (src.env)(name) {
                return Some(v);
            }
            let file_var = format!("{name}_FILE");
            if let Some(path) = (src.env)(&file_var) {
                return match std::fs::read_to_string(&path) {
                    Ok(s) => Some(s.trim().to_owned()),
                    Err(e) => {
                        file_errors.borrow_mut().push(ConfigError {
                            name: file_var,
                            reason: format!("cannot read {path}: {e}"),
                        });
                        None
                    }
                };
            }
            raw.get(name).cloned()
        };
        let mut p = parse::Parser {
            errors: &mut errors,
        };
        macro_rules! v {
            ($name:expr) => {
                get($name)
            };
        }
        let cfg = Config {
            host: v!("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: p.num("PORT", v!("PORT"), 8080u16),
            api_keys: p.secrets(v!("API_KEYS")),
            admin_api_keys: p.secrets(v!("ADMIN_API_KEYS")),
            backends: p.backends("BACKENDS", v!("BACKENDS")),
            vllm_servers: p.servers("VLLM_SERVERS", v!("VLLM_SERVERS")),
            server_options,
            enable_cors: p.bool("ENABLE_CORS", v!("ENABLE_CORS"), false),
            cors_origins: p.cors("CORS_ORIGIN", v!("CORS_ORIGIN")),
            health_check_interval: p.ms(
                "HEALTH_CHECK_INTERVAL",
                v!("HEALTH_CHECK_INTERVAL"),
                30_000,
            ),
            health_probe_timeout: p.ms("HEALTH_PROBE_TIMEOUT", v!("HEALTH_PROBE_TIMEOUT"), 5_000),
            discovery_interval: p.ms("DISCOVERY_INTERVAL", v!("DISCOVERY_INTERVAL"), 30_000),
            connect_timeout: p.ms("CONNECT_TIMEOUT", v!("CONNECT_TIMEOUT"), 5_000),
            first_byte_timeout: p.ms("FIRST_BYTE_TIMEOUT", v!("FIRST_BYTE_TIMEOUT"), 30_000),
            request_timeout: p.ms("REQUEST_TIMEOUT", v!("REQUEST_TIMEOUT"), 600_000),
            body_read_timeout: p.ms("BODY_READ_TIMEOUT", v!("BODY_READ_TIMEOUT"), 30_000),
            stream_idle_timeout: p.ms("STREAM_IDLE_TIMEOUT", v!("STREAM_IDLE_TIMEOUT"), 60_000),
            header_read_timeout: p.ms("HEADER_READ_TIMEOUT", v!("HEADER_READ_TIMEOUT"), 10_000),
            max_body_bytes: p.num(
                "MAX_BODY_BYTES",
                v!("MAX_BODY_BYTES"),
                10 * 1024 * 1024usize,
            ),
            max_attempts: p.num("MAX_ATTEMPTS", v!("MAX_ATTEMPTS"), 2u32),
            max_in_flight: p.num("MAX_IN_FLIGHT", v!("MAX_IN_FLIGHT"), 4096usize),
            max_in_flight_per_server: p.num(
                "MAX_IN_FLIGHT_PER_SERVER",
                v!("MAX_IN_FLIGHT_PER_SERVER"),
                512u32,
            ),
            shutdown_grace: p.ms("SHUTDOWN_GRACE", v!("SHUTDOWN_GRACE"), 30_000),
            eject_base: p.ms("EJECT_BASE", v!("EJECT_BASE"), 30_000),
            eject_max: p.ms("EJECT_MAX", v!("EJECT_MAX"), 300_000),
            failure_threshold: p.num("FAILURE_THRESHOLD", v!("FAILURE_THRESHOLD"), 5u32),
            model_aliases: p.aliases("MODEL_ALIASES", v!("MODEL_ALIASES")),
            vllm_api_key: v!("VLLM_API_KEY")
                .filter(|s| !s.trim().is_empty())
                .map(|s| Secret::new(s.trim())),
            upstream_ca_file: v!("UPSTREAM_CA_FILE")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            log_level: v!("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_format: p.log_format("LOG_FORMAT", v!("LOG_FORMAT")),
            stream_shards: p.num(
                "STREAM_SHARDS",
                v!("STREAM_SHARDS"),
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            ),
            route_via_registry: p.route_via("ROUTE_VIA", v!("ROUTE_VIA")),
            tool_call_formats: p.tool_formats("TOOL_CALL_FORMATS", v!("TOOL_CALL_FORMATS")),
            tool_call_options: ToolOptions {
                accept_code_fence: p.bool("TOOL_CALL_CODE_FENCE", v!("TOOL_CALL_CODE_FENCE"), true),
                harmony_stripped_recovery: p.bool(
                    "TOOL_CALL_HARMONY_STRIPPED",
                    v!("TOOL_CALL_HARMONY_STRIPPED"),
                    false,
                ),
            },
            metrics_key: v!("METRICS_KEY")
                .filter(|s| !s.trim().is_empty())
                .map(|s| Secret::new(s.trim())),
            otel_endpoint: v!("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            otel_service_name: v!("OTEL_SERVICE_NAME")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "llmmux".into()),
            metrics_port: v!("METRICS_PORT")
                .filter(|s| !s.trim().is_empty())
                .map(|s| p.num("METRICS_PORT", Some(s), 0u16)),
            retry_budget_percent: p.num("RETRY_BUDGET_PERCENT", v!("RETRY_BUDGET_PERCENT"), 20u32),
            retry_budget_min_per_sec: p.num(
                "RETRY_BUDGET_MIN_PER_SEC",
                v!("RETRY_BUDGET_MIN_PER_SEC"),
                10u32,
            ),
            retry_budget_ttl: p.ms("RETRY_BUDGET_TTL", v!("RETRY_BUDGET_TTL"), 10_000),
            failure_rate_percent: p.num("FAILURE_RATE_PERCENT", v!("FAILURE_RATE_PERCENT"), 50u32),
            stream_keepalive_interval: p.ms(
                "STREAM_KEEPALIVE_INTERVAL",
                v!("STREAM_KEEPALIVE_INTERVAL"),
                15_000,
            ),
            no_backend_wait: p.ms("NO_BACKEND_WAIT", v!("NO_BACKEND_WAIT"), 1_000),
            on_demand_probe_interval: p.ms(
                "ON_DEMAND_PROBE_INTERVAL",
                v!("ON_DEMAND_PROBE_INTERVAL"),
                1_000,
            ),
            sse_max_event_bytes: p.num(
                "SSE_MAX_EVENT_BYTES",
                v!("SSE_MAX_EVENT_BYTES"),
                4 * 1024 * 1024usize,
            ),
            max_connections: v!("MAX_CONNECTIONS")
                .filter(|s| !s.trim().is_empty())
                .map(|s| p.num("MAX_CONNECTIONS", Some(s), 0usize)),
            worker_threads: p.num("WORKER_THREADS", v!("WORKER_THREADS"), 0usize),
            client_send_timeout: p.ms("CLIENT_SEND_TIMEOUT", v!("CLIENT_SEND_TIMEOUT"), 60_000),
            max_header_bytes: p.num("MAX_HEADER_BYTES", v!("MAX_HEADER_BYTES"), 64 * 1024usize),
            keepalive_timeout: p.ms("KEEPALIVE_TIMEOUT", v!("KEEPALIVE_TIMEOUT"), 75_000),
            http2_keepalive_interval: p.ms(
                "HTTP2_KEEPALIVE_INTERVAL",
                v!("HTTP2_KEEPALIVE_INTERVAL"),
                20_000,
            ),
            http2_keepalive_timeout: p.ms(
                "HTTP2_KEEPALIVE_TIMEOUT",
                v!("HTTP2_KEEPALIVE_TIMEOUT"),
                10_000,
            ),
            database_url: crate::identity::settings::secret(v!("DATABASE_URL")),
            db_pool_size: p.num("DB_POOL_SIZE", v!("DB_POOL_SIZE"), 16usize),
            db_acquire_timeout: p.ms("DB_ACQUIRE_TIMEOUT", v!("DB_ACQUIRE_TIMEOUT"), 2_000),
            db_statement_timeout: p.ms("DB_STATEMENT_TIMEOUT", v!("DB_STATEMENT_TIMEOUT"), 5_000),
            jwt_secret: crate::identity::settings::secret(v!("JWT_SECRET")),
            jwt_access_ttl: p.ms("JWT_ACCESS_TTL", v!("JWT_ACCESS_TTL"), 900_000),
            jwt_refresh_ttl: p.ms("JWT_REFRESH_TTL", v!("JWT_REFRESH_TTL"), 604_800_000),
            api_key_pepper: crate::identity::settings::secret(v!("API_KEY_PEPPER")),
            admin_username: v!("ADMIN_USERNAME")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "superadmin".into()),
            admin_password: crate::identity::settings::secret(v!("ADMIN_PASSWORD")),
            redis_url: crate::identity::settings::secret(v!("REDIS_URL")),
            redis_key_prefix: v!("REDIS_KEY_PREFIX").unwrap_or_else(|| "llmmux:".into()),
            rate_limit_sync_interval: p.ms(
                "RATE_LIMIT_SYNC_INTERVAL",
                v!("RATE_LIMIT_SYNC_INTERVAL"),
                100,
            ),
            login_max_failures: p.num("LOGIN_MAX_FAILURES", v!("LOGIN_MAX_FAILURES"), 5u32),
            login_max_failures_per_ip: p.num(
                "LOGIN_MAX_FAILURES_PER_IP",
                v!("LOGIN_MAX_FAILURES_PER_IP"),
                20u32,
            ),
            login_lockout_base: p.ms("LOGIN_LOCKOUT_BASE", v!("LOGIN_LOCKOUT_BASE"), 1_000),
            login_lockout_max: p.ms("LOGIN_LOCKOUT_MAX", v!("LOGIN_LOCKOUT_MAX"), 900_000),
            password_hash_concurrency: p.num(
                "PASSWORD_HASH_CONCURRENCY",
                v!("PASSWORD_HASH_CONCURRENCY"),
                2usize,
            ),
            audit_enabled: p.bool("AUDIT_ENABLED", v!("AUDIT_ENABLED"), true),
            audit_bodies: p.bool("AUDIT_BODIES", v!("AUDIT_BODIES"), false),
            audit_body_max_bytes: p.num(
                "AUDIT_BODY_MAX_BYTES",
                v!("AUDIT_BODY_MAX_BYTES"),
                64 * 1024usize,
            ),
            audit_queue_capacity: p.num(
                "AUDIT_QUEUE_CAPACITY",
                v!("AUDIT_QUEUE_CAPACITY"),
                100_000usize,
            ),
            audit_batch_size: p.num("AUDIT_BATCH_SIZE", v!("AUDIT_BATCH_SIZE"), 1_000usize),
            // Short, so each write is small: at 100 ms the batch written under light load
            // delayed the requests it overlapped on shared cores (c=1 p99 +2.6 ms with
            // PostgreSQL, +0.2 at 10 ms), at no cost in throughput (under load batches fill
            // before the interval ends).
            audit_flush_interval: p.ms("AUDIT_FLUSH_INTERVAL", v!("AUDIT_FLUSH_INTERVAL"), 10),
            // An fdatasync takes about 0.4 ms on a 2-vCPU VM: once per 10 ms flush it showed
            // in the c=1 p99 (+0.645 ms against +0.271 unsynced, 8 rounds).
            audit_sync_interval: p.ms("AUDIT_SYNC_INTERVAL", v!("AUDIT_SYNC_INTERVAL"), 100),
            audit_spool_dir: PathBuf::from(
                v!("AUDIT_SPOOL_DIR")
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| "audit-spool".into()),
            ),
            audit_spool_max_bytes: p.num(
                "AUDIT_SPOOL_MAX_BYTES",
                v!("AUDIT_SPOOL_MAX_BYTES"),
                1024 * 1024 * 1024u64,
            ),
            audit_on_full: p.on_full("AUDIT_ON_FULL", v!("AUDIT_ON_FULL")),
            audit_retention_days: p.num("AUDIT_RETENTION_DAYS", v!("AUDIT_RETENTION_DAYS"), 90u32),
            audit_journal_path: PathBuf::from(
                v!("AUDIT_JOURNAL_PATH")
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| "llmmux-audit.jsonl".into()),
            ),
            audit_journal_max_bytes: p.num(
                "AUDIT_JOURNAL_MAX_BYTES",
                v!("AUDIT_JOURNAL_MAX_BYTES"),
                256 * 1024 * 1024u64,
            ),
        };
        errors.extend(file_errors.into_inner());
        errors.extend(validate(&cfg));
        if errors.is_empty() {
            Ok(ValidatedConfig(cfg))
        } else {
            Err(errors)
        }
    }
}

fn validate(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |name: &str, reason: &str| {
        errors.push(ConfigError {
            name: name.into(),
            reason: reason.into(),
        })
    };
    if c.max_attempts == 0 {
        err("MAX_ATTEMPTS", "must be at least 1");
    }
    if c.max_body_bytes == 0 {
        err("MAX_BODY_BYTES", "must be greater than 0");
    }
    if c.max_in_flight == 0 {
        err("MAX_IN_FLIGHT", "must be greater than 0");
    }
    if c.stream_shards == 0 || c.stream_shards > 256 {
        err("STREAM_SHARDS", "must be between 1 and 256");
    }
    for (name, d) in [
        ("HEALTH_CHECK_INTERVAL", c.health_check_interval),
        ("DISCOVERY_INTERVAL", c.discovery_interval),
        ("CONNECT_TIMEOUT", c.connect_timeout),
        ("FIRST_BYTE_TIMEOUT", c.first_byte_timeout),
        ("STREAM_IDLE_TIMEOUT", c.stream_idle_timeout),
        ("REQUEST_TIMEOUT", c.request_timeout),
        ("BODY_READ_TIMEOUT", c.body_read_timeout),
        ("HEADER_READ_TIMEOUT", c.header_read_timeout),
        ("HEALTH_PROBE_TIMEOUT", c.health_probe_timeout),
        ("RETRY_BUDGET_TTL", c.retry_budget_ttl),
        ("STREAM_KEEPALIVE_INTERVAL", c.stream_keepalive_interval),
        ("ON_DEMAND_PROBE_INTERVAL", c.on_demand_probe_interval),
        ("CLIENT_SEND_TIMEOUT", c.client_send_timeout),
        ("KEEPALIVE_TIMEOUT", c.keepalive_timeout),
        ("HTTP2_KEEPALIVE_INTERVAL", c.http2_keepalive_interval),
        ("HTTP2_KEEPALIVE_TIMEOUT", c.http2_keepalive_timeout),
    ] {
        if d.is_zero() {
            err(name, "must be greater than 0 ms");
        }
    }
    if c.eject_max < c.eject_base {
        err("EJECT_MAX", "must not be smaller than EJECT_BASE");
    }
    if c.failure_threshold == 0 {
        err("FAILURE_THRESHOLD", "must be at least 1");
    }
    if c.retry_budget_percent > 100 {
        err("RETRY_BUDGET_PERCENT", "must be between 0 and 100");
    }
    if !(1..=100).contains(&c.failure_rate_percent) {
        err("FAILURE_RATE_PERCENT", "must be between 1 and 100");
    }
    if let Some(e) = &c.otel_endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            err(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "expected an http:// URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318",
            );
        }
    }
    if c.metrics_port == Some(0) {
        err("METRICS_PORT", "must be a port number (1-65535)");
    }
    if c.metrics_port.is_some() && c.metrics_port == Some(c.port) {
        err("METRICS_PORT", "must differ from PORT");
    }
    if c.sse_max_event_bytes < 1024 {
        err("SSE_MAX_EVENT_BYTES", "must be at least 1024");
    }
    if c.worker_threads > 1024 {
        err("WORKER_THREADS", "must be between 0 (one per CPU) and 1024");
    }
    if c.max_connections == Some(0) {
        err(
            "MAX_CONNECTIONS",
            "must be greater than 0 (unset it to derive it from the file limit)",
        );
    }
    if !(8 * 1024..=1024 * 1024).contains(&c.max_header_bytes) {
        err("MAX_HEADER_BYTES", "must be between 8192 and 1048576");
    }
    if c.audit_flush_interval.is_zero() || c.audit_flush_interval > Duration::from_millis(100) {
        err(
            "AUDIT_FLUSH_INTERVAL",
            "must be between 1 and 100 ms (records reach the store at least every 100 ms)",
        );
    }
    if c.audit_sync_interval > Duration::from_millis(1000) {
        err(
            "AUDIT_SYNC_INTERVAL",
            "must be between 0 and 1000 ms (0 syncs every write)",
        );
    }
    if !(1..=50_000).contains(&c.audit_batch_size) {
        err("AUDIT_BATCH_SIZE", "must be between 1 and 50000");
    }
    if c.audit_queue_capacity < c.audit_batch_size {
        err("AUDIT_QUEUE_CAPACITY", "must be at least AUDIT_BATCH_SIZE");
    }
    if c.audit_spool_max_bytes < 1024 * 1024 {
        err("AUDIT_SPOOL_MAX_BYTES", "must be at least 1048576 (1 MiB)");
    }
    if c.audit_journal_max_bytes < 1024 * 1024 {
        err(
            "AUDIT_JOURNAL_MAX_BYTES",
            "must be at least 1048576 (1 MiB)",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &c.server_options {
        for reason in s.problems() {
            err("servers", &format!("{}: {reason}", s.url));
        }
        if let Some(n) = &s.name {
            if !names.insert(n.clone()) {
                err("servers", &format!("the name {n:?} is used twice"));
            }
        }
    }
    if c.enable_cors && c.cors_origins == CorsOrigins::List(Vec::new()) {
        err(
            "CORS_ORIGIN",
            "ENABLE_CORS=true needs CORS_ORIGIN (a list of origins, or *)",
        );
    }
    if let Some(path) = &c.upstream_ca_file {
        if !path.is_file() {
            err("UPSTREAM_CA_FILE", "file does not exist or is not readable");
        }
    }
    if tracing_subscriber::EnvFilter::try_new(&c.log_level).is_err() {
        err(
            "LOG_LEVEL",
            "not a valid level or filter (e.g. info, debug, llmmux=debug)",
        );
    }
    for (alias, target) in &c.model_aliases {
        if alias == target {
            err(
                "MODEL_ALIASES",
                &format!("alias {alias:?} points to itself"),
            );
        }
    }
    errors.extend(crate::identity::settings::validate(c));
    errors
}

#[cfg(test)]
mod tests;
