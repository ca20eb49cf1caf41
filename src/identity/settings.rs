//! Identity settings: validation of the configuration block they come from, and the
//! derived values the service runs with.

use std::time::Duration;

use crate::config::{Config, ConfigError, Secret};

/// Shortest accepted `JWT_SECRET` and `API_KEY_PEPPER`, in bytes (HS256 wants a key as
/// long as its output).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest accepted access-token lifetime: tokens are revoked by version checks, but a
/// short lifetime bounds what a stolen token is worth.
pub const MAX_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// A secret setting; blank means unset.
pub fn secret(raw: Option<String>) -> Option<Secret> {
    raw.map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(Secret::new)
}

/// Problems with the identity settings, each naming its variable.
pub fn validate(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |name: &str, reason: String| {
        errors.push(ConfigError {
            name: name.into(),
            reason,
        })
    };
    if let Some(url) = &c.database_url {
        if crate::storage::parse_url(url.expose()).is_err() {
            err(
                "DATABASE_URL",
                "not a valid PostgreSQL URL (postgres://user@host:5432/db) or connection string"
                    .into(),
            );
        }
        if c.jwt_secret.is_none() {
            err(
                "JWT_SECRET",
                format!(
                    "required with DATABASE_URL (at least {MIN_SECRET_BYTES} random bytes, \
                     e.g. `openssl rand -base64 48`)"
                ),
            );
        }
    }
    for (name, s) in [
        ("JWT_SECRET", &c.jwt_secret),
        ("API_KEY_PEPPER", &c.api_key_pepper),
    ] {
        if let Some(s) = s {
            if s.expose().len() < MIN_SECRET_BYTES {
                err(
                    name,
                    format!("must be at least {MIN_SECRET_BYTES} bytes long"),
                );
            }
        }
    }
    if c.jwt_access_ttl.is_zero() || c.jwt_access_ttl > MAX_ACCESS_TTL {
        err(
            "JWT_ACCESS_TTL",
            "must be between 1 and 900000 ms (15 minutes)".into(),
        );
    }
    if c.jwt_refresh_ttl <= c.jwt_access_ttl {
        err(
            "JWT_REFRESH_TTL",
            "must be longer than JWT_ACCESS_TTL".into(),
        );
    }
    if let Some(p) = &c.admin_password {
        if c.database_url.is_none() {
            err(
                "ADMIN_PASSWORD",
                "needs DATABASE_URL (the account is stored there)".into(),
            );
        }
        if let Err(reason) = super::input::password_problem(p.expose()) {
            err("ADMIN_PASSWORD", reason.into());
        }
    }
    if let Err(reason) = super::input::username_problem(&c.admin_username) {
        err("ADMIN_USERNAME", reason.into());
    }
    if let Some(url) = &c.redis_url {
        let u = url.expose();
        if !(u.starts_with("redis://") || u.starts_with("unix://"))
            || redis::Client::open(u).is_err()
        {
            err(
                "REDIS_URL",
                "not a valid redis:// URL (TLS is not supported)".into(),
            );
        }
    }
    if c.redis_key_prefix.chars().any(char::is_control) || c.redis_key_prefix.len() > 64 {
        err(
            "REDIS_KEY_PREFIX",
            "at most 64 characters, no control characters".into(),
        );
    }
    if !(1..=1000).contains(&c.db_pool_size) {
        err("DB_POOL_SIZE", "must be between 1 and 1000".into());
    }
    for (name, d) in [
        ("DB_ACQUIRE_TIMEOUT", c.db_acquire_timeout),
        ("DB_STATEMENT_TIMEOUT", c.db_statement_timeout),
        ("RATE_LIMIT_SYNC_INTERVAL", c.rate_limit_sync_interval),
        ("LOGIN_LOCKOUT_BASE", c.login_lockout_base),
    ] {
        if d.is_zero() {
            err(name, "must be greater than 0 ms".into());
        }
    }
    if c.login_lockout_max < c.login_lockout_base {
        err(
            "LOGIN_LOCKOUT_MAX",
            "must not be smaller than LOGIN_LOCKOUT_BASE".into(),
        );
    }
    if c.login_max_failures == 0 || c.login_max_failures_per_ip == 0 {
        err(
            "LOGIN_MAX_FAILURES",
            "LOGIN_MAX_FAILURES and LOGIN_MAX_FAILURES_PER_IP must be at least 1".into(),
        );
    }
    if !(1..=64).contains(&c.password_hash_concurrency) {
        err(
            "PASSWORD_HASH_CONCURRENCY",
            "must be between 1 and 64".into(),
        );
    }
    errors
}

/// What the identity service runs with, taken from a validated configuration.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    pub db: crate::storage::DbSettings,
    pub jwt_secret: Secret,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// `API_KEY_PEPPER`, or `None` to derive it from the JWT secret.
    pub pepper: Option<Secret>,
    pub admin_username: String,
    pub admin_password: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub redis_key_prefix: String,
    pub rate_limit_sync_interval: Duration,
    pub login_max_failures: u32,
    pub login_max_failures_per_ip: u32,
    pub login_lockout_base: Duration,
    pub login_lockout_max: Duration,
    pub password_hash_concurrency: usize,
    /// The start-up migration could not run (the database was down): whatever the
    /// database answers by the time the service starts, start-up reads nothing from it and
    /// the background task migrates before it creates the first admin or loads the cache.
    pub schema_pending: bool,
}

impl IdentitySettings {
    /// `None` without `DATABASE_URL` (validation guarantees `JWT_SECRET` with it).
    pub fn from_config(c: &Config) -> Option<IdentitySettings> {
        Some(IdentitySettings {
            db: crate::storage::DbSettings::from_config(c)?,
            jwt_secret: c.jwt_secret.clone()?,
            access_ttl: c.jwt_access_ttl,
            refresh_ttl: c.jwt_refresh_ttl,
            pepper: c.api_key_pepper.clone(),
            admin_username: c.admin_username.clone(),
            admin_password: c.admin_password.clone(),
            redis_url: c.redis_url.clone(),
            redis_key_prefix: c.redis_key_prefix.clone(),
            rate_limit_sync_interval: c.rate_limit_sync_interval,
            login_max_failures: c.login_max_failures,
            login_max_failures_per_ip: c.login_max_failures_per_ip,
            login_lockout_base: c.login_lockout_base,
            login_lockout_max: c.login_lockout_max,
            password_hash_concurrency: c.password_hash_concurrency,
            schema_pending: false,
        })
    }
}
