//! Users, roles, sessions (JWT), API keys and per-key limits, backed by PostgreSQL.
//!
//! [`Identity`] is one service with framework-agnostic endpoint functions: each takes the
//! caller's [`Principal`] (none for login and refresh), the client address, path ids and
//! the raw JSON body or query pairs, and returns a [`Reply`] or an [`IdentityError`]; the
//! HTTP layer maps routes to them. [`Identity::authenticate`] turns a bearer token (a JWT
//! access token or an `sk-llmmux-` key) into a principal from the in-memory cache
//! ([`cache`]), and [`Identity::admit`] / [`Identity::record_tokens`] apply per-key rate
//! limits without I/O ([`limits`]).
//!
//! Module map: [`settings`] (config validation), [`policy`] (the RBAC matrix, pure),
//! [`scope`] (key ≤ owner clamping, pure), [`store`] (all SQL), [`cache`] + `listen`
//! (mirror and LISTEN/NOTIFY), [`jwt`], [`secrets`] (keys, refresh tokens, pepper),
//! [`password`] (argon2id), [`throttle`] (login lockout), [`input`] (body rules),
//! `sessions` / `users` / `keys` (the endpoints), [`bootstrap`] (first admin, CLI).
//!
//! Nothing here logs or returns a secret, a hash or SQL text; database errors keep only
//! their SQLSTATE.

pub mod bootstrap;
pub mod cache;
pub mod input;
pub mod jwt;
mod keys;
pub mod limits;
mod listen;
pub mod password;
pub mod policy;
pub mod scope;
pub mod secrets;
mod sessions;
pub mod settings;
pub mod store;
pub mod throttle;
mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Config;
use crate::error::GatewayError;
use crate::principal::{CredentialKind, Limits, Principal, Role};
use crate::storage::{Db, StorageError};

use cache::{Cache, KeyEntry};
use jwt::{Jwt, JwtError};
use limits::{Admission, RateLimited, RateLimiter};
use password::{PasswordError, Passwords};
use secrets::{Pepper, KEY_PREFIX};
pub use settings::IdentitySettings;
use store::{KeyRow, UserRow};
use throttle::LoginThrottle;

/// An endpoint's answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    fn created(body: Value) -> Reply {
        Reply { status: 201, body }
    }
}

/// Endpoint failures. Messages are written here for clients; none carries internal
/// detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// 401: wrong credentials, an unusable refresh token.
    #[error("unauthorized: {message}")]
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("no such {what}")]
    NotFound { what: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// 429: too many failed logins for the account or the address.
    #[error("too many attempts")]
    Throttled { retry_after: Duration },
    /// 503: the database cannot be reached in time.
    #[error("identity store unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl IdentityError {
    const BAD_LOGIN: IdentityError = IdentityError::Unauthorized {
        code: "invalid_credentials",
        message: "Invalid username or password.",
    };
    const BAD_REFRESH: IdentityError = IdentityError::Unauthorized {
        code: "invalid_refresh_token",
        message: "The refresh token is invalid, expired or revoked; log in again.",
    };

    fn not_found(what: &'static str, id: &str) -> IdentityError {
        IdentityError::NotFound {
            what,
            id: input::printable(id),
        }
    }

    pub fn status(&self) -> u16 {
        GatewayError::from(self.clone()).status().as_u16()
    }
}

impl From<StorageError> for IdentityError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "identity store unavailable");
            IdentityError::Unavailable
        } else {
            tracing::error!(error = %e, "identity store query failed");
            IdentityError::Internal
        }
    }
}

impl From<tokio_postgres::Error> for IdentityError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::from(e).into()
    }
}

impl From<PasswordError> for IdentityError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => IdentityError::Unavailable,
            PasswordError::Hashing => IdentityError::Internal,
        }
    }
}

impl From<secrets::RandomError> for IdentityError {
    fn from(_: secrets::RandomError) -> Self {
        tracing::error!("the operating system's random source failed");
        IdentityError::Internal
    }
}

impl From<JwtError> for IdentityError {
    fn from(_: JwtError) -> Self {
        tracing::error!("signing an access token failed");
        IdentityError::Internal
    }
}

impl From<IdentityError> for GatewayError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::BadRequest(message) => GatewayError::InvalidRequest {
                message,
                param: None,
            },
            IdentityError::Unauthorized { code, message } => {
                GatewayError::AuthFailed { code, message }
            }
            IdentityError::Forbidden(why) => GatewayError::Forbidden(why),
            IdentityError::NotFound { what, id } => GatewayError::NotFound { what, id },
            IdentityError::Conflict(why) => GatewayError::Conflict(why.into()),
            IdentityError::Throttled { retry_after } => GatewayError::RateLimited {
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                headers: Vec::new(),
            },
            IdentityError::Unavailable => {
                GatewayError::Unavailable("The account store is unavailable; retry shortly.")
            }
            IdentityError::Internal => GatewayError::Internal,
        }
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown key, bad signature, malformed token, disabled or expired key: 401.
    #[error("invalid credential")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    /// The session was logged out, or the account changed (password, role, disabled).
    #[error("token revoked")]
    Revoked,
    /// The credential is not cached and the database cannot be asked in time: 503.
    #[error("identity store unavailable")]
    Unavailable,
}

impl From<AuthError> for GatewayError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid => GatewayError::Unauthorized,
            AuthError::Expired => GatewayError::AuthFailed {
                code: "token_expired",
                message: "The access token has expired; refresh it or log in again.",
            },
            AuthError::NotYetValid => GatewayError::AuthFailed {
                code: "token_not_yet_valid",
                message: "The access token is not valid yet (check the clock).",
            },
            AuthError::Revoked => GatewayError::AuthFailed {
                code: "token_revoked",
                message: "The access token was revoked; log in again.",
            },
            AuthError::Unavailable => {
                GatewayError::Unavailable("Credentials cannot be checked right now; retry shortly.")
            }
        }
    }
}

/// Something the audit log should record. Never carries a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEvent {
    /// `login`, `refresh`, `logout`, `password_change`, `user_create`, `user_update`,
    /// `user_role_change`, `user_delete`, `key_create`, `key_update`, `key_delete`,
    /// `admin_bootstrap`.
    pub action: &'static str,
    pub actor_user_id: Option<Uuid>,
    pub actor_key_id: Option<String>,
    /// The account or key acted on (`user:<id>`, `key:<id>`).
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: &'static str,
    pub client_ip: Option<IpAddr>,
    pub detail: Value,
}

pub type ActivityHook = Arc<dyn Fn(ActivityEvent) + Send + Sync>;

/// A hook that drops every event.
pub fn no_activity() -> ActivityHook {
    Arc::new(|_| {})
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("JWT_SECRET cannot be used as a signing key")]
    Jwt,
    #[error("REDIS_URL is not usable")]
    Redis,
    #[error("creating the first SUPER_ADMIN failed: {0}")]
    Bootstrap(IdentityError),
}

/// Aborts the background task when the service goes away.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    db: Db,
    jwt: Jwt,
    pepper: Pepper,
    passwords: Passwords,
    cache: Arc<Cache>,
    throttle: LoginThrottle,
    limiter: RateLimiter,
    activity: ActivityHook,
    settings: IdentitySettings,
    listening: watch::Receiver<bool>,
    _listener: TaskGuard,
}

/// The identity service. Cloning shares it.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

impl Identity {
    /// The service for this configuration, or `None` without `DATABASE_URL`. The schema is
    /// migrated first ([`crate::storage::migrate`]); `schema_pending` says that migration
    /// could not run, and the service then migrates in the background before anything
    /// else (see [`IdentitySettings::schema_pending`]).
    pub async fn from_config(
        cfg: &Config,
        activity: ActivityHook,
        schema_pending: bool,
    ) -> Result<Option<Identity>, StartError> {
        match IdentitySettings::from_config(cfg) {
            Some(mut s) => {
                s.schema_pending = schema_pending;
                Ok(Some(Identity::start(s, activity).await?))
            }
            None => Ok(None),
        }
    }

    /// Builds the service: pool, keys, limiter; creates the first SUPER_ADMIN when the
    /// user table is empty and `ADMIN_PASSWORD` is set; loads the cache and starts the
    /// change listener. A database that is down now only delays all that: a background
    /// task applies the migrations, creates the first admin and starts the listener once
    /// it is back; until then credentials it would have to look up get 503.
    pub async fn start(
        settings: IdentitySettings,
        activity: ActivityHook,
    ) -> Result<Identity, StartError> {
        let db = Db::new(&settings.db)?;
        let jwt = Jwt::new(settings.jwt_secret.expose(), settings.access_ttl)
            .map_err(|_| StartError::Jwt)?;
        let pepper = Pepper::new(
            settings.pepper.as_ref().map(|p| p.expose()),
            settings.jwt_secret.expose(),
        );
        let passwords = Passwords::new(settings.password_hash_concurrency).await?;
        let limiter = match &settings.redis_url {
            Some(url) => RateLimiter::with_redis(
                url.expose(),
                &settings.redis_key_prefix,
                settings.rate_limit_sync_interval,
            )
            .map_err(|_| StartError::Redis)?,
            None => RateLimiter::local(),
        };
        let throttle = LoginThrottle::new(
            settings.login_max_failures,
            settings.login_max_failures_per_ip,
            settings.login_lockout_base,
            settings.login_lockout_max,
        );
        let cache = Arc::new(Cache::default());
        let session_ttl = settings.access_ttl + Duration::from_secs(jwt::LEEWAY_SECS);
        // A database that is down now must not keep the gateway from starting: static
        // keys work without it, and the schema and the first SUPER_ADMIN are set up in the
        // background as soon as it is back.
        // With the schema pending nothing is read from a database that may be behind this
        // build: the background task migrates first.
        let mut deferred = settings.schema_pending;
        if let (false, Some(password)) = (deferred, &settings.admin_password) {
            match bootstrap::ensure_initial_admin(
                &db,
                &passwords,
                &settings.admin_username,
                password.expose(),
                &activity,
            )
            .await
            {
                Ok(_) => {}
                Err(IdentityError::Unavailable) => deferred = true,
                Err(e) => return Err(StartError::Bootstrap(e)),
            }
        }
        if !deferred {
            // Any failure here (down again, say) leaves it to the background task, which
            // migrates first.
            if let Err(e) = listen::reload(&db, &cache, session_ttl).await {
                deferred = true;
                tracing::warn!(error = %e, "identity cache not loaded yet; retrying in the background");
            }
        }
        if deferred {
            tracing::warn!(
                "the account database is unavailable; accounts and database keys answer 503 \
                 until it is back (static keys keep working)"
            );
        }
        let (tx, listening) = watch::channel(false);
        let task = {
            let (db, cache, passwords, activity) = (
                db.clone(),
                cache.clone(),
                passwords.clone(),
                activity.clone(),
            );
            let admin = settings
                .admin_password
                .as_ref()
                .map(|p| (settings.admin_username.clone(), p.clone()));
            tokio::spawn(async move {
                if deferred {
                    bootstrap::prepare_when_back(&db, &passwords, admin, &activity).await;
                }
                listen::run(db, cache, session_ttl, tx).await
            })
        };
        Ok(Identity {
            inner: Arc::new(Inner {
                db,
                jwt,
                pepper,
                passwords,
                cache,
                throttle,
                limiter,
                activity,
                settings,
                listening,
                _listener: TaskGuard(task),
            }),
        })
    }

    /// Whether the change listener is connected (changes from other replicas arrive).
    pub fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    /// Waits until the change listener is connected, up to `within`.
    pub async fn wait_listening(&self, within: Duration) -> bool {
        let mut rx = self.inner.listening.clone();
        tokio::time::timeout(within, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The pool, for other stores sharing the database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    // === rate limits ===

    /// Admits one request of `p` under its per-minute limits (no I/O).
    pub fn admit(&self, p: &Principal) -> Result<Admission, RateLimited> {
        self.inner.limiter.admit(p)
    }

    /// Charges the tokens of a finished request (from the upstream `usage`).
    pub fn record_tokens(&self, p: &Principal, prompt: u64, completion: u64) {
        self.inner.limiter.record_tokens(p, prompt, completion)
    }

    // === authentication ===

    /// The principal of a bearer token: a JWT access token or an `sk-llmmux-` key.
    /// Static keys (`API_KEYS`, `ADMIN_API_KEYS`) are checked by the HTTP layer first.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.starts_with(KEY_PREFIX) {
            self.authenticate_key(token).await
        } else if jwt::looks_like_jwt(token) {
            self.authenticate_jwt(token).await
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// Bounds a database step on the authentication path: an answer within the acquire
    /// timeout, or 503.
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, AuthError> {
        match tokio::time::timeout(self.inner.db.acquire_timeout(), f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if !e.is_unavailable() => {
                tracing::error!(error = %e, "credential lookup failed");
                Err(AuthError::Unavailable)
            }
            _ => Err(AuthError::Unavailable),
        }
    }

    async fn cached_user(&self, id: Uuid) -> Result<Option<Arc<UserRow>>, AuthError> {
        if let Some(u) = self.inner.cache.user(id) {
            return Ok(Some(u));
        }
        let row = self
            .bounded(async {
                let c = self.inner.db.client().await?;
                store::user_by_id(&c, id).await
            })
            .await?;
        Ok(row.map(|u| {
            self.inner.cache.put_user(u.clone());
            Arc::new(u)
        }))
    }

    async fn authenticate_key(&self, token: &str) -> Result<Principal, AuthError> {
        let cache = &self.inner.cache;
        let digest = self.inner.pepper.digest(token);
        let entry: Arc<KeyEntry> = match cache.key(&digest) {
            Some(e) => e,
            None if cache.is_known_missing(&digest) => return Err(AuthError::Invalid),
            None => {
                let row = self
                    .bounded(async {
                        let c = self.inner.db.client().await?;
                        store::key_by_hash(&c, &digest).await
                    })
                    .await?;
                match row {
                    Some(row) => {
                        cache.put_key(row);
                        cache.key(&digest).ok_or(AuthError::Invalid)?
                    }
                    None => {
                        cache.note_missing(digest);
                        return Err(AuthError::Invalid);
                    }
                }
            }
        };
        let user = self
            .cached_user(entry.row.user_id)
            .await?
            .ok_or(AuthError::Invalid)?;
        key_principal(&entry.row, &user).ok_or(AuthError::Invalid)
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.inner.jwt.verify(token).map_err(|e| match e {
            JwtError::Expired => AuthError::Expired,
            JwtError::NotYetValid => AuthError::NotYetValid,
            JwtError::Invalid => AuthError::Invalid,
        })?;
        if self.inner.cache.is_session_revoked(claims.sid) {
            return Err(AuthError::Revoked);
        }
        let user = self
            .cached_user(claims.sub)
            .await?
            .ok_or(AuthError::Revoked)?;
        if !user.enabled || user.token_version != claims.ver {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            kind: CredentialKind::Session,
            user_id: Some(user.id),
            key_id: format!("session:{}", claims.sid),
            role: user.role,
            models: (!user.models.is_empty()).then(|| user.models.clone()),
            limits: Limits {
                rpm: user.rpm_limit.and_then(|n| u32::try_from(n).ok()),
                tpm: user.tpm_limit.and_then(|n| u64::try_from(n).ok()),
            },
        })
    }

    // === helpers shared by the endpoints ===

    fn emit(&self, ev: ActivityEvent) {
        (self.inner.activity)(ev)
    }

    /// An event by `caller`.
    fn event(
        &self,
        action: &'static str,
        caller: Option<&Principal>,
        ip: Option<IpAddr>,
        target: Option<String>,
        outcome: &'static str,
        detail: Value,
    ) {
        self.emit(ActivityEvent {
            action,
            actor_user_id: caller.and_then(|p| p.user_id),
            actor_key_id: caller.map(|p| p.key_id.clone()),
            target,
            outcome,
            client_ip: ip,
            detail,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, IdentityError> {
        Ok(self.inner.db.client().await?)
    }

    fn session_ttl(&self) -> Duration {
        self.inner.settings.access_ttl + Duration::from_secs(jwt::LEEWAY_SECS)
    }
}

/// The caller as an administrator, or 403.
fn admin(p: &Principal) -> Result<policy::Actor, IdentityError> {
    if p.is_admin() {
        Ok(policy::Actor {
            role: p.role,
            user_id: p.user_id,
        })
    } else if p.kind == CredentialKind::ApiKey {
        Err(IdentityError::Forbidden(
            "API keys cannot manage accounts; log in to get an access token.",
        ))
    } else {
        Err(IdentityError::Forbidden(
            "Administrator rights are required.",
        ))
    }
}

/// The account of a session caller, or 403 for any other credential.
fn session_user(p: &Principal) -> Result<Uuid, IdentityError> {
    match (p.kind, p.user_id) {
        (CredentialKind::Session, Some(id)) => Ok(id),
        _ => Err(IdentityError::Forbidden(
            "This endpoint needs a user session (log in to get an access token).",
        )),
    }
}

fn parse_id(id: &str, what: &'static str) -> Result<Uuid, IdentityError> {
    Uuid::parse_str(id).map_err(|_| IdentityError::not_found(what, id))
}

/// The principal of a key, or `None` if it may not be used now.
fn key_principal(k: &KeyRow, owner: &UserRow) -> Option<Principal> {
    let expired = k.expires_at.is_some_and(|t| t <= chrono::Utc::now());
    if !k.enabled || expired || !owner.enabled {
        return None;
    }
    let to_u32 = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
    let to_u64 = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
    Some(Principal {
        kind: CredentialKind::ApiKey,
        user_id: Some(owner.id),
        key_id: k.id.to_string(),
        role: Role::User,
        models: scope::effective_models(&k.models, &owner.models),
        limits: Limits {
            rpm: scope::min_limit(to_u32(k.rpm_limit), to_u32(owner.rpm_limit)),
            tpm: scope::min_limit(to_u64(k.tpm_limit), to_u64(owner.tpm_limit)),
        },
    })
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An account as the API shows it (never the password hash).
fn user_json(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "role": u.role.as_str(),
        "enabled": u.enabled,
        "models": u.models,
        "rpm_limit": u.rpm_limit,
        "tpm_limit": u.tpm_limit,
        "created_at": ts(&u.created_at),
        "updated_at": ts(&u.updated_at),
        "last_login_at": u.last_login_at.as_ref().map(ts),
    })
}

/// A key as the API shows it; LiteLLM's names where they overlap (`key_name` is the
/// non-secret display prefix). The secret appears only in the create response.
fn key_json(k: &KeyRow) -> Value {
    json!({
        "id": k.id,
        "key_name": format!("{}...", k.display_prefix),
        "name": k.name,
        "user_id": k.user_id,
        "models": k.models,
        "rpm_limit": k.rpm_limit,
        "tpm_limit": k.tpm_limit,
        "expires_at": k.expires_at.as_ref().map(ts),
        "enabled": k.enabled,
        "created_at": ts(&k.created_at),
        "updated_at": ts(&k.updated_at),
    })
}

/// Charges the tokens of every finished request to its credential's limits.
pub struct TokenCounter(pub Identity);

impl crate::outcome::OutcomeSink for TokenCounter {
    fn record(&self, r: &crate::outcome::RequestRecord) {
        if let (Some(p), Some(prompt), Some(completion)) =
            (&r.principal, r.prompt_tokens, r.completion_tokens)
        {
            self.0.record_tokens(p, prompt, completion);
        }
    }
}

/// Until the audit writer takes them: activity events as log lines (target
/// `llmmux::activity`), never with a secret.
pub fn activity_log() -> ActivityHook {
    Arc::new(|e: ActivityEvent| {
        tracing::info!(
            target: "llmmux::activity",
            action = e.action,
            outcome = e.outcome,
            actor_user = ?e.actor_user_id,
            actor_key = e.actor_key_id.as_deref().unwrap_or("-"),
            target_id = e.target.as_deref().unwrap_or("-"),
            client = ?e.client_ip,
            "activity"
        );
    })
}
