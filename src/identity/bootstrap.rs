//! The first administrator: created at start-up when the user table is empty and
//! `ADMIN_PASSWORD` is set, or created / reset at any time by `llmmux create-admin`.

use std::io::{BufRead, IsTerminal};

use serde_json::json;

use super::password::Passwords;
use super::store::{self, NewUser, UserChange};
use super::{input, ActivityEvent, ActivityHook, IdentityError};
use crate::principal::Role;
use crate::storage::Db;

/// Serialises first-admin creation between replicas starting at once.
const BOOTSTRAP_LOCK: i64 = 0x6c6c_6d6d_7578_0002;

/// What `create_admin` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOutcome {
    Created,
    /// The account existed: it is now an enabled SUPER_ADMIN with the new password, and
    /// its sessions are ended.
    Reset,
}

fn event(action: &'static str, id: uuid::Uuid, detail: serde_json::Value) -> ActivityEvent {
    ActivityEvent {
        action,
        actor_user_id: None,
        actor_key_id: None,
        target: Some(format!("user:{id}")),
        outcome: "success",
        client_ip: None,
        detail,
    }
}

/// Creates `username` as SUPER_ADMIN if no account exists at all. `Ok(true)` if it did.
pub(super) async fn ensure_initial_admin(
    db: &Db,
    passwords: &Passwords,
    username: &str,
    password: &str,
    activity: &ActivityHook,
) -> Result<bool, IdentityError> {
    {
        let c = db.client().await?;
        if store::count_users(&c).await? > 0 {
            return Ok(false);
        }
    }
    let hash = passwords.hash(password.to_owned()).await?;
    let mut c = db.client().await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
        .await?;
    if store::count_users(&tx).await? > 0 {
        return Ok(false);
    }
    let new = NewUser {
        username,
        email: None,
        password_hash: &hash,
        role: Role::SuperAdmin,
        models: &[],
        rpm_limit: None,
        tpm_limit: None,
    };
    let Some(u) = store::insert_user(&tx, &new).await? else {
        return Ok(false);
    };
    store::notify(&tx, &format!("u:{}", u.id)).await?;
    tx.commit().await?;
    tracing::info!(username = %u.username, "created the first SUPER_ADMIN from ADMIN_PASSWORD");
    activity(event(
        "admin_bootstrap",
        u.id,
        json!({"username": u.username, "source": "ADMIN_PASSWORD"}),
    ));
    Ok(true)
}

/// After a start with the database down: retries until it is back, then applies the
/// migrations and, with `admin` (`ADMIN_USERNAME`, `ADMIN_PASSWORD`), creates the first
/// SUPER_ADMIN if there is no account yet.
pub(super) async fn prepare_when_back(
    db: &Db,
    passwords: &Passwords,
    admin: Option<(String, crate::config::Secret)>,
    activity: &ActivityHook,
) {
    const BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
    const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);
    let mut backoff = BACKOFF_MIN;
    let mut last: Option<IdentityError> = None;
    loop {
        let step = async {
            crate::storage::migrate(db.url()).await.map_err(|e| {
                if e.is_unavailable() {
                    IdentityError::Unavailable
                } else {
                    IdentityError::from(e)
                }
            })?;
            if let Some((username, password)) = &admin {
                ensure_initial_admin(db, passwords, username, password.expose(), activity).await?;
            }
            Ok::<(), IdentityError>(())
        };
        match step.await {
            Ok(()) => {
                tracing::info!("the account database is back: schema and first admin ready");
                return;
            }
            Err(e) => {
                // Unavailable is expected here; anything else is worth a line, once.
                if e != IdentityError::Unavailable && last.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "preparing the account database failed; retrying");
                }
                last = Some(e);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// `llmmux create-admin`: creates `username` as an enabled SUPER_ADMIN, or resets an
/// existing account to that with the new password.
pub async fn create_admin(
    db: &Db,
    username: &str,
    password: &str,
    activity: &ActivityHook,
) -> Result<AdminOutcome, IdentityError> {
    let username = input::username(username)?;
    input::password(password, "password")?;
    // One hash: a `Passwords` service would first hash a dummy password of its own.
    let hash = super::password::hash_once(password.to_owned()).await?;
    let mut c = db.client().await?;
    let tx = c.transaction().await?;
    let existing = store::user_for_login(&tx, &username).await?;
    let (user, outcome) = match existing {
        Some((u, _)) => {
            let change = UserChange {
                role: Some(Role::SuperAdmin),
                enabled: Some(true),
                password_hash: Some(&hash),
                revoke_tokens: true,
                ..UserChange::default()
            };
            let u = store::update_user(&tx, u.id, &change)
                .await?
                .ok_or(IdentityError::Internal)?;
            (u, AdminOutcome::Reset)
        }
        None => {
            let new = NewUser {
                username: &username,
                email: None,
                password_hash: &hash,
                role: Role::SuperAdmin,
                models: &[],
                rpm_limit: None,
                tpm_limit: None,
            };
            let u = store::insert_user(&tx, &new)
                .await?
                .ok_or(IdentityError::Conflict("A user with this username exists."))?;
            (u, AdminOutcome::Created)
        }
    };
    store::notify(&tx, &format!("u:{}", user.id)).await?;
    tx.commit().await?;
    activity(event(
        "admin_bootstrap",
        user.id,
        json!({"username": user.username, "source": "create-admin", "reset": outcome == AdminOutcome::Reset}),
    ));
    Ok(outcome)
}

/// Reads a password for the CLI: without echo (asked twice) on a terminal, otherwise one
/// line from standard input (for scripts: `echo "$PW" | llmmux create-admin ...`).
pub fn read_password(prompt: &str) -> std::io::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt)?;
        let again = rpassword::prompt_password("Repeat the password: ")?;
        if first != again {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the passwords differ",
            ));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}
