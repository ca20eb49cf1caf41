//! The change listener: one dedicated connection with `LISTEN`, re-reading each changed
//! account or key into the cache, and reloading everything after every (re)connect since
//! notifications sent during a disconnection are lost. A periodic ping detects a silent
//! connection (a partition leaves no error behind).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::cache::Cache;
use super::store;
use crate::storage::{Db, StorageError};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(5);

/// Loads every account, key and recently logged-out session into the cache.
pub(super) async fn reload(
    db: &Db,
    cache: &Cache,
    session_ttl: Duration,
) -> Result<(), StorageError> {
    let c = db.client().await?;
    let users = store::all_users(&c).await?;
    let keys = store::all_keys(&c).await?;
    let revoked = store::recently_revoked_sessions(&c, session_ttl.as_secs_f64()).await?;
    let purged = store::purge_expired_refresh(&c).await?;
    tracing::info!(
        users = users.len(),
        keys = keys.len(),
        purged_refresh_tokens = purged,
        "identity cache loaded"
    );
    cache.replace_all(users, keys, revoked, session_ttl);
    Ok(())
}

/// Applies one notification by re-reading the row it names.
async fn apply(
    db: &Db,
    cache: &Cache,
    payload: &str,
    session_ttl: Duration,
) -> Result<(), StorageError> {
    let Some((kind, id)) = payload.split_once(':') else {
        return Ok(());
    };
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(());
    };
    match kind {
        "u" => {
            let c = db.client().await?;
            match store::user_by_id(&c, id).await? {
                Some(u) => cache.put_user(u),
                None => cache.remove_user(id),
            }
        }
        "k" => {
            let c = db.client().await?;
            match store::key_by_id(&c, id).await? {
                Some(k) => cache.put_key(k),
                None => cache.remove_key(id),
            }
        }
        "s" => cache.revoke_session(id, session_ttl),
        _ => {}
    }
    Ok(())
}

/// Runs until aborted; `listening` tells whether changes are being received.
pub(super) async fn run(
    db: Db,
    cache: Arc<Cache>,
    session_ttl: Duration,
    listening: watch::Sender<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    // One warning per outage, not one per attempt.
    let mut reported = false;
    loop {
        let result = session(&db, &cache, session_ttl, &listening).await;
        if listening.send_replace(false) {
            tracing::warn!("identity listener lost its connection; cached credentials keep working while it reconnects");
            reported = true;
            backoff = BACKOFF_MIN;
        } else if let Err(e) = result {
            if !reported {
                tracing::warn!(error = %e, "identity listener cannot connect; retrying");
                reported = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connected period: LISTEN, reload, then apply notifications until the connection
/// fails.
async fn session(
    db: &Db,
    cache: &Cache,
    session_ttl: Duration,
    listening: &watch::Sender<bool>,
) -> Result<(), StorageError> {
    let timeout = db.acquire_timeout();
    let (client, mut connection) =
        match tokio::time::timeout(timeout, db.pg_config().connect(NoTls)).await {
            Ok(r) => r?,
            Err(_) => return Err(StorageError::Unavailable("timed out connecting")),
        };
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let result = async {
        tokio::time::timeout(timeout, client.batch_execute(store::LISTEN))
            .await
            .map_err(|_| StorageError::Unavailable("LISTEN timed out"))??;
        reload(db, cache, session_ttl).await?;
        listening.send_replace(true);
        tracing::info!("identity listener connected");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(payload) => apply(db, cache, &payload, session_ttl).await?,
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    tokio::time::timeout(timeout, client.simple_query(""))
                        .await
                        .map_err(|_| StorageError::Unavailable("listener ping timed out"))??;
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
