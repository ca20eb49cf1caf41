//! Every SQL statement of the identity service. Statements are static strings with
//! numbered parameters (no SQL is ever built from input), prepared once per connection.
//! Password hashes are read by exactly one query, for login; nothing else selects them.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::principal::Role;
use crate::storage::StorageError;

/// The notification channel; payloads are `u:<id>` (account), `k:<id>` (key) and
/// `s:<id>` (session logged out).
pub const CHANNEL: &str = "llmmux_identity";
/// `LISTEN` takes an identifier, not a parameter; this is [`CHANNEL`].
pub const LISTEN: &str = "LISTEN llmmux_identity";

macro_rules! user_cols {
    () => {
        "id, username, email, role, enabled, token_version, models, rpm_limit, tpm_limit, \
         created_at, updated_at, last_login_at"
    };
}

macro_rules! key_cols {
    () => {
        "id, user_id, name, key_hash, display_prefix, models, rpm_limit, tpm_limit, \
         expires_at, enabled, created_at, updated_at"
    };
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn rows<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<Vec<Row>, StorageError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, p).await?)
}

async fn opt<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<Row>, StorageError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, p).await?)
}

async fn exec<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<u64, StorageError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, p).await?)
}

/// An account, without its password hash.
#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub enabled: bool,
    pub token_version: i64,
    pub models: Vec<String>,
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

fn user(r: &Row) -> Result<UserRow, StorageError> {
    let role: String = r.try_get("role")?;
    Ok(UserRow {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        email: r.try_get("email")?,
        // The CHECK constraint admits only the three names.
        role: Role::parse(&role).unwrap_or(Role::User),
        enabled: r.try_get("enabled")?,
        token_version: r.try_get("token_version")?,
        models: r.try_get("models")?,
        rpm_limit: r.try_get("rpm_limit")?,
        tpm_limit: r.try_get("tpm_limit")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_login_at: r.try_get("last_login_at")?,
    })
}

/// An API key's stored form: its digest, never the key.
#[derive(Clone, Debug)]
pub struct KeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub display_prefix: String,
    pub models: Vec<String>,
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn key(r: &Row) -> Result<KeyRow, StorageError> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        display_prefix: r.try_get("display_prefix")?,
        models: r.try_get("models")?,
        rpm_limit: r.try_get("rpm_limit")?,
        tpm_limit: r.try_get("tpm_limit")?,
        expires_at: r.try_get("expires_at")?,
        enabled: r.try_get("enabled")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

// === users ===

pub async fn user_by_id<C: GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Option<UserRow>, StorageError> {
    opt(
        c,
        concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

/// The account, its row locked until the transaction ends: decisions about it (policy,
/// "is this the last SUPER_ADMIN") are made on what will be changed, not on a stale read.
pub async fn user_by_id_for_update<C: GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Option<UserRow>, StorageError> {
    opt(
        c,
        concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE id = $1 FOR UPDATE"
        ),
        &[&id],
    )
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

/// Serialises account administration (role, enabled, delete) until the transaction
/// ends. Taken before any row lock, so two administrators changing two SUPER_ADMINs at
/// once queue up instead of each locking one row and waiting for the other (a deadlock).
pub async fn lock_account_admin<C: GenericClient>(c: &C) -> Result<(), StorageError> {
    const ACCOUNT_ADMIN_LOCK: i64 = 0x6c6c_6d6d_7578_0003;
    opt(
        c,
        "SELECT pg_advisory_xact_lock($1)",
        &[&ACCOUNT_ADMIN_LOCK],
    )
    .await?;
    Ok(())
}

/// The account and its password hash, for login only.
pub async fn user_for_login<C: GenericClient>(
    c: &C,
    username: &str,
) -> Result<Option<(UserRow, String)>, StorageError> {
    let row = opt(
        c,
        concat!(
            "SELECT ",
            user_cols!(),
            ", password_hash FROM users WHERE lower(username) = lower($1)"
        ),
        &[&username],
    )
    .await?;
    row.map(|r| Ok((user(&r)?, r.try_get("password_hash")?)))
        .transpose()
}

pub async fn password_hash<C: GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Option<String>, StorageError> {
    opt(c, "SELECT password_hash FROM users WHERE id = $1", &[&id])
        .await?
        .map(|r| r.try_get(0).map_err(StorageError::from))
        .transpose()
}

pub async fn all_users<C: GenericClient>(c: &C) -> Result<Vec<UserRow>, StorageError> {
    rows(c, concat!("SELECT ", user_cols!(), " FROM users"), &[])
        .await?
        .iter()
        .map(user)
        .collect()
}

/// A page of accounts, optionally filtered by role and by a username substring.
pub async fn list_users<C: GenericClient>(
    c: &C,
    role: Option<Role>,
    contains: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<UserRow>, StorageError> {
    let role = role.map(Role::as_str);
    // The substring is matched with strpos, not LIKE, so `%` and `_` are plain characters.
    rows(
        c,
        concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE ($1::text IS NULL OR role = $1) \
              AND ($2::text IS NULL OR strpos(lower(username), lower($2)) > 0) \
              ORDER BY lower(username) LIMIT $3 OFFSET $4"
        ),
        &[&role, &contains, &limit, &offset],
    )
    .await?
    .iter()
    .map(user)
    .collect()
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: Option<&'a str>,
    pub password_hash: &'a str,
    pub role: Role,
    pub models: &'a [String],
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
}

/// Inserts an account; `None` if the username is taken.
pub async fn insert_user<C: GenericClient>(
    c: &C,
    u: &NewUser<'_>,
) -> Result<Option<UserRow>, StorageError> {
    let id = Uuid::new_v4();
    let role = u.role.as_str();
    let r = opt(
        c,
        concat!(
            "INSERT INTO users (id, username, email, password_hash, role, models, rpm_limit, tpm_limit) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT ((lower(username))) DO NOTHING RETURNING ",
            user_cols!()
        ),
        &[&id, &u.username, &u.email, &u.password_hash, &role, &u.models, &u.rpm_limit, &u.tpm_limit],
    )
    .await?;
    r.as_ref().map(user).transpose()
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserChange<'a> {
    pub email: Option<Option<&'a str>>,
    pub role: Option<Role>,
    pub enabled: Option<bool>,
    pub password_hash: Option<&'a str>,
    pub models: Option<&'a [String]>,
    pub rpm_limit: Option<Option<i32>>,
    pub tpm_limit: Option<Option<i64>>,
    /// Kills every access token and refresh token of the account.
    pub revoke_tokens: bool,
}

pub async fn update_user<C: GenericClient>(
    c: &C,
    id: Uuid,
    ch: &UserChange<'_>,
) -> Result<Option<UserRow>, StorageError> {
    let role = ch.role.map(Role::as_str);
    let (set_email, email) = (ch.email.is_some(), ch.email.flatten());
    let (set_rpm, rpm) = (ch.rpm_limit.is_some(), ch.rpm_limit.flatten());
    let (set_tpm, tpm) = (ch.tpm_limit.is_some(), ch.tpm_limit.flatten());
    let r = opt(
        c,
        concat!(
            "UPDATE users SET \
               email = CASE WHEN $2 THEN $3 ELSE email END, \
               role = COALESCE($4, role), \
               enabled = COALESCE($5, enabled), \
               password_hash = COALESCE($6, password_hash), \
               models = COALESCE($7, models), \
               rpm_limit = CASE WHEN $8 THEN $9 ELSE rpm_limit END, \
               tpm_limit = CASE WHEN $10 THEN $11 ELSE tpm_limit END, \
               token_version = token_version + CASE WHEN $12 THEN 1 ELSE 0 END, \
               updated_at = now() \
             WHERE id = $1 RETURNING ",
            user_cols!()
        ),
        &[
            &id,
            &set_email,
            &email,
            &role,
            &ch.enabled,
            &ch.password_hash,
            &ch.models,
            &set_rpm,
            &rpm,
            &set_tpm,
            &tpm,
            &ch.revoke_tokens,
        ],
    )
    .await?;
    if ch.revoke_tokens {
        revoke_user_refresh(c, id).await?;
    }
    r.as_ref().map(user).transpose()
}

pub async fn touch_login<C: GenericClient>(c: &C, id: Uuid) -> Result<(), StorageError> {
    exec(
        c,
        "UPDATE users SET last_login_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

pub async fn delete_user<C: GenericClient>(c: &C, id: Uuid) -> Result<bool, StorageError> {
    Ok(exec(c, "DELETE FROM users WHERE id = $1", &[&id]).await? > 0)
}

/// Locks every enabled SUPER_ADMIN row until the transaction ends and returns their ids,
/// so two concurrent demotions cannot both see "another one is left".
pub async fn lock_super_admins<C: GenericClient>(c: &C) -> Result<Vec<Uuid>, StorageError> {
    rows(
        c,
        "SELECT id FROM users WHERE role = 'SUPER_ADMIN' AND enabled ORDER BY id FOR UPDATE",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0).map_err(StorageError::from))
    .collect()
}

pub async fn count_users<C: GenericClient>(c: &C) -> Result<i64, StorageError> {
    let r = opt(c, "SELECT count(*) FROM users", &[]).await?;
    Ok(r.map(|r| r.try_get::<_, i64>(0)).transpose()?.unwrap_or(0))
}

// === keys ===

pub async fn key_by_hash<C: GenericClient>(
    c: &C,
    digest: &[u8],
) -> Result<Option<KeyRow>, StorageError> {
    opt(
        c,
        concat!("SELECT ", key_cols!(), " FROM api_keys WHERE key_hash = $1"),
        &[&digest],
    )
    .await?
    .as_ref()
    .map(key)
    .transpose()
}

pub async fn key_by_id<C: GenericClient>(c: &C, id: Uuid) -> Result<Option<KeyRow>, StorageError> {
    opt(
        c,
        concat!("SELECT ", key_cols!(), " FROM api_keys WHERE id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(key)
    .transpose()
}

pub async fn all_keys<C: GenericClient>(c: &C) -> Result<Vec<KeyRow>, StorageError> {
    rows(c, concat!("SELECT ", key_cols!(), " FROM api_keys"), &[])
        .await?
        .iter()
        .map(key)
        .collect()
}

/// Keys of one account, or of every account when `user` is `None`.
pub async fn list_keys<C: GenericClient>(
    c: &C,
    user: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<Vec<KeyRow>, StorageError> {
    rows(
        c,
        concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE ($1::uuid IS NULL OR user_id = $1) \
              ORDER BY created_at, id LIMIT $2 OFFSET $3"
        ),
        &[&user, &limit, &offset],
    )
    .await?
    .iter()
    .map(key)
    .collect()
}

pub struct NewKey<'a> {
    pub user_id: Uuid,
    pub name: &'a str,
    pub key_hash: &'a [u8],
    pub display_prefix: &'a str,
    pub models: &'a [String],
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert_key<C: GenericClient>(c: &C, k: &NewKey<'_>) -> Result<KeyRow, StorageError> {
    let id = Uuid::new_v4();
    let r = opt(
        c,
        concat!(
            "INSERT INTO api_keys (id, user_id, name, key_hash, display_prefix, models, rpm_limit, \
             tpm_limit, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
            key_cols!()
        ),
        &[
            &id,
            &k.user_id,
            &k.name,
            &k.key_hash,
            &k.display_prefix,
            &k.models,
            &k.rpm_limit,
            &k.tpm_limit,
            &k.expires_at,
        ],
    )
    .await?;
    match r {
        Some(r) => key(&r),
        None => Err(StorageError::Query("no row returned".into())),
    }
}

#[derive(Default)]
pub struct KeyChange<'a> {
    pub name: Option<&'a str>,
    pub enabled: Option<bool>,
    pub models: Option<&'a [String]>,
    pub rpm_limit: Option<Option<i32>>,
    pub tpm_limit: Option<Option<i64>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

pub async fn update_key<C: GenericClient>(
    c: &C,
    id: Uuid,
    ch: &KeyChange<'_>,
) -> Result<Option<KeyRow>, StorageError> {
    let (set_rpm, rpm) = (ch.rpm_limit.is_some(), ch.rpm_limit.flatten());
    let (set_tpm, tpm) = (ch.tpm_limit.is_some(), ch.tpm_limit.flatten());
    let (set_exp, exp) = (ch.expires_at.is_some(), ch.expires_at.flatten());
    opt(
        c,
        concat!(
            "UPDATE api_keys SET \
               name = COALESCE($2, name), \
               enabled = COALESCE($3, enabled), \
               models = COALESCE($4, models), \
               rpm_limit = CASE WHEN $5 THEN $6 ELSE rpm_limit END, \
               tpm_limit = CASE WHEN $7 THEN $8 ELSE tpm_limit END, \
               expires_at = CASE WHEN $9 THEN $10 ELSE expires_at END, \
               updated_at = now() \
             WHERE id = $1 RETURNING ",
            key_cols!()
        ),
        &[
            &id,
            &ch.name,
            &ch.enabled,
            &ch.models,
            &set_rpm,
            &rpm,
            &set_tpm,
            &tpm,
            &set_exp,
            &exp,
        ],
    )
    .await?
    .as_ref()
    .map(key)
    .transpose()
}

pub async fn delete_key<C: GenericClient>(c: &C, id: Uuid) -> Result<bool, StorageError> {
    Ok(exec(c, "DELETE FROM api_keys WHERE id = $1", &[&id]).await? > 0)
}

pub async fn key_ids_of<C: GenericClient>(c: &C, user: Uuid) -> Result<Vec<Uuid>, StorageError> {
    rows(c, "SELECT id FROM api_keys WHERE user_id = $1", &[&user])
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(StorageError::from))
        .collect()
}

// === refresh tokens ===

pub async fn insert_refresh<C: GenericClient>(
    c: &C,
    digest: &[u8],
    family: Uuid,
    user: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)",
        &[&digest, &family, &user, &expires_at],
    )
    .await?;
    Ok(())
}

pub struct RefreshRow {
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub revoked: bool,
}

/// The token's row, locked until the transaction ends (two refreshes of one token
/// serialise: the second sees it used).
pub async fn refresh_for_update<C: GenericClient>(
    c: &C,
    digest: &[u8],
) -> Result<Option<RefreshRow>, StorageError> {
    let r = opt(
        c,
        "SELECT family_id, user_id, expires_at, used_at IS NOT NULL, revoked_at IS NOT NULL \
         FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        &[&digest],
    )
    .await?;
    r.map(|r| {
        Ok(RefreshRow {
            family_id: r.try_get(0)?,
            user_id: r.try_get(1)?,
            expires_at: r.try_get(2)?,
            used: r.try_get(3)?,
            revoked: r.try_get(4)?,
        })
    })
    .transpose()
}

pub async fn mark_refresh_used<C: GenericClient>(c: &C, digest: &[u8]) -> Result<(), StorageError> {
    exec(
        c,
        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
        &[&digest],
    )
    .await?;
    Ok(())
}

pub async fn revoke_family<C: GenericClient>(c: &C, family: Uuid) -> Result<(), StorageError> {
    exec(
        c,
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        &[&family],
    )
    .await?;
    Ok(())
}

pub async fn revoke_user_refresh<C: GenericClient>(c: &C, user: Uuid) -> Result<(), StorageError> {
    exec(
        c,
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        &[&user],
    )
    .await?;
    Ok(())
}

/// Sessions logged out within the last `secs` seconds: their access tokens may still be
/// unexpired, so every replica keeps refusing them.
pub async fn recently_revoked_sessions<C: GenericClient>(
    c: &C,
    secs: f64,
) -> Result<Vec<Uuid>, StorageError> {
    rows(
        c,
        "SELECT DISTINCT family_id FROM refresh_tokens \
         WHERE revoked_at > now() - make_interval(secs => $1)",
        &[&secs],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0).map_err(StorageError::from))
    .collect()
}

/// Drops refresh tokens that expired more than a day ago.
pub async fn purge_expired_refresh<C: GenericClient>(c: &C) -> Result<u64, StorageError> {
    exec(
        c,
        "DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'",
        &[],
    )
    .await
}

/// Queues a change notification, delivered to every listener when the transaction commits.
pub async fn notify<C: GenericClient>(c: &C, payload: &str) -> Result<(), StorageError> {
    opt(c, "SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await?;
    Ok(())
}
