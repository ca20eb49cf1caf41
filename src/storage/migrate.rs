//! Forward-only schema migrations, embedded in the binary.
//!
//! All pending migrations run in one transaction under a transaction-scoped advisory lock,
//! so replicas starting at once serialise: the first applies, the others wait, then find
//! nothing to do. Each applied file is recorded in `schema_migrations` with a SHA-256
//! checksum; a file changed after it was applied is refused rather than silently skipped.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use super::{parse_url, StorageError};

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A new file in `migrations/` goes at the end of this list.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_identity.sql",
        sql: include_str!("../../migrations/0001_identity.sql"),
    },
    Migration {
        version: 2,
        name: "0002_audit.sql",
        sql: include_str!("../../migrations/0002_audit.sql"),
    },
];

/// Arbitrary but fixed: the key of the advisory lock that serialises migrations.
const LOCK_KEY: i64 = 0x6c6c_6d6d_7578_0001;

/// Longest wait to connect for `migrate` (it runs at start-up or from the CLI, where a
/// slow database is worth waiting for longer than on the request path).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects to `url` and applies every pending migration. Returns the names applied now.
pub async fn migrate(url: &str) -> Result<Vec<&'static str>, StorageError> {
    let mut pg = parse_url(url)?;
    pg.connect_timeout(CONNECT_TIMEOUT);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls)).await;
    let (mut client, connection) = match connected {
        Ok(r) => r?,
        Err(_) => return Err(StorageError::Unavailable("timed out connecting")),
    };
    let conn_task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(code = ?e.code().map(|c| c.code()), "migration connection ended with an error");
        }
    });
    let result = migrate_client(&mut client).await;
    drop(client);
    let _ = conn_task.await;
    result
}

/// Applies every pending migration over an open connection.
pub async fn migrate_client(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<&'static str>, StorageError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    bigint      PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: HashMap<i64, (String, String)> = tx
        .query("SELECT version, name, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match applied.get(&m.version) {
            Some((_, recorded)) if *recorded == sum => continue,
            Some(_) => {
                return Err(StorageError::ChecksumMismatch {
                    name: m.name.to_owned(),
                })
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &sum],
                )
                .await?;
                done.push(m.name);
            }
        }
    }
    let known: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    for (version, (name, _)) in &applied {
        if !known.contains(version) {
            // A newer binary migrated this database (a rolled-back deploy, say): carry on,
            // since migrations only add.
            tracing::warn!(version, name = %name, "the database has a migration this binary does not know");
        }
    }
    tx.commit().await?;
    for name in &done {
        tracing::info!(migration = name, "migration applied");
    }
    Ok(done)
}
