//! The audit log: every request's outcome and every administrative or security action,
//! written off the hot path by the audit-writer actor (`llmmux_actors::audit`).
//!
//! The request path only pushes a record into a bounded queue (an [`OutcomeSink`] for
//! requests, an [`ActivityHook`] for identity events, [`Audit::activity`] for the admin
//! routes). The writer batches them into PostgreSQL when `DATABASE_URL` is set, else into
//! the local JSON-lines journal; while the store is down or slow they wait in the spool
//! directory (on disk, synced every `AUDIT_SYNC_INTERVAL`) and are replayed in order when it
//! returns.

pub mod journal;
pub mod pg;
pub mod query;
pub mod record;
mod seen;
pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use llmmux_actors::audit::{
    AuditArgs, AuditHandle, AuditPort, AuditWriter, Batch, OnFull, SpoolError, WriterConfig,
};
use llmmux_actors::ports::BoxFuture;
use llmmux_actors::ractor::Actor;
use llmmux_actors::root::ChildSpec;
use llmmux_actors::supervision::RestartPolicy;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::Value;
use tracing::warn;

use crate::config::Config;
use crate::identity::{ActivityEvent, ActivityHook};
use crate::outcome::{OutcomeSink, RequestRecord};
use crate::storage::{Db, DbSettings};
use journal::Journal;
use pg::PgAudit;
use query::QueryError;
use record::{ActivityEntry, AuditRecord, RequestEntry};
use spool::Spool;

/// Audit settings, from the configuration.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub bodies: bool,
    pub body_max_bytes: usize,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub sync_interval: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub on_full: OnFull,
    pub retention_days: u32,
    pub journal_path: PathBuf,
    pub journal_max_bytes: u64,
    pub store_timeout: Duration,
}

impl AuditSettings {
    /// `None` with `AUDIT_ENABLED=false`.
    pub fn from_config(c: &Config) -> Option<AuditSettings> {
        c.audit_enabled.then(|| AuditSettings {
            bodies: c.audit_bodies,
            body_max_bytes: c.audit_body_max_bytes,
            queue_capacity: c.audit_queue_capacity,
            batch_size: c.audit_batch_size,
            flush_interval: c.audit_flush_interval,
            sync_interval: c.audit_sync_interval,
            spool_dir: c.audit_spool_dir.clone(),
            spool_max_bytes: c.audit_spool_max_bytes,
            on_full: c.audit_on_full,
            retention_days: c.audit_retention_days,
            journal_path: c.audit_journal_path.clone(),
            journal_max_bytes: c.audit_journal_max_bytes,
            store_timeout: c.db_statement_timeout + c.db_acquire_timeout,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolOpenError),
    #[error("audit journal {path}: {source}")]
    Journal {
        path: String,
        source: std::io::Error,
    },
    #[error("audit database: {0}")]
    Db(crate::storage::StorageError),
}

#[derive(Clone)]
enum Store {
    Pg(Box<PgAudit>),
    Journal(Journal),
}

/// The writer's storage: the store, and the spool in front of it.
pub struct Storage {
    store: Store,
    spool: Spool,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| "blocking task failed".to_owned())
}

/// How a batch is written to the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Made durable by the writer's next sync.
    Deferred,
    /// Durable before the call returns: a replayed batch, which the spool forgets next.
    Now,
}

impl Storage {
    async fn store_batch(&self, batch: Batch<AuditRecord>, d: Durability) -> Result<(), String> {
        match &self.store {
            // A commit is durable: PostgreSQL syncs its WAL before it answers.
            Store::Pg(pg) => pg.store(&batch).await.map_err(|e| e.to_string()),
            Store::Journal(j) => {
                let j = j.clone();
                blocking(move || {
                    j.append_blocking(&batch)?;
                    match d {
                        Durability::Now => j.sync_blocking(),
                        Durability::Deferred => Ok(()),
                    }
                })
                .await?
                .map_err(|e| format!("journal: {}", e.kind()))
            }
        }
    }
}

impl AuditPort for Storage {
    type Record = AuditRecord;

    fn store(&self, batch: Batch<AuditRecord>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.store_batch(batch, Durability::Deferred))
    }

    fn spool(&self, batch: Batch<AuditRecord>) -> BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move {
            let s = self.spool.clone();
            blocking(move || s.append_blocking(&batch))
                .await
                .map_err(SpoolError::Io)?
        })
    }

    fn replay(&self, max: usize) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            let s = self.spool.clone();
            let (records, mark) = blocking(move || s.read_blocking(max))
                .await?
                .map_err(|e| format!("spool: {}", e.kind()))?;
            if !records.is_empty() {
                self.store_batch(Arc::new(records), Durability::Now).await?;
            }
            self.spool.commit(mark);
            Ok(!self.spool.has_records())
        })
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (spool, journal) = match &self.store {
                Store::Journal(j) => (self.spool.clone(), Some(j.clone())),
                Store::Pg(_) => (self.spool.clone(), None),
            };
            blocking(move || {
                spool
                    .sync_blocking()
                    .map_err(|e| format!("spool: {}", e.kind()))?;
                match journal {
                    Some(j) => j
                        .sync_blocking()
                        .map_err(|e| format!("journal: {}", e.kind())),
                    None => Ok(()),
                }
            })
            .await?
        })
    }

    fn spooled(&self) -> bool {
        self.spool.has_records()
    }

    fn spool_bytes(&self) -> u64 {
        self.spool.bytes()
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Store::Pg(pg) = &self.store {
                if let Err(e) = pg.maintain().await {
                    warn!(error = %e, "audit partition upkeep failed; retried later");
                }
            }
        })
    }
}

/// The gateway's handle on the audit log. Cloning shares it.
#[derive(Clone)]
pub struct Audit {
    handle: AuditHandle<AuditRecord>,
    storage: Arc<Storage>,
    cfg: WriterConfig,
}

impl Audit {
    /// Opens the spool and the store (the database when `DATABASE_URL` is set, else the
    /// journal). Nothing is written until the writer runs ([`Audit::child_spec`]).
    pub fn open(s: &AuditSettings, db: Option<&DbSettings>) -> Result<Audit, AuditStartError> {
        let spool = Spool::open(&s.spool_dir, s.spool_max_bytes)?;
        let store = match db {
            Some(db) => {
                let db = Db::new(&DbSettings {
                    pool_size: 2,
                    ..db.clone()
                })
                .map_err(AuditStartError::Db)?;
                Store::Pg(Box::new(PgAudit::new(db, s.retention_days)))
            }
            None => Store::Journal(Journal::open(&s.journal_path, s.journal_max_bytes).map_err(
                |source| AuditStartError::Journal {
                    path: s.journal_path.display().to_string(),
                    source,
                },
            )?),
        };
        Ok(Audit {
            handle: AuditHandle {
                queue: llmmux_actors::audit::AuditQueue::new(s.queue_capacity, s.batch_size),
            },
            storage: Arc::new(Storage { store, spool }),
            cfg: WriterConfig {
                flush_interval: s.flush_interval,
                sync_interval: s.sync_interval,
                store_timeout: s.store_timeout,
                on_full: s.on_full,
                replay_backoff: (Duration::from_millis(250), Duration::from_secs(5)),
                maintain_every: Duration::from_secs(3600),
            },
        })
    }

    /// The audit writer, for the root supervisor.
    pub fn child_spec(&self, policy: RestartPolicy) -> ChildSpec {
        let (storage, queue, cfg) = (self.storage.clone(), self.handle.queue.clone(), self.cfg);
        ChildSpec {
            key: "audit".into(),
            policy,
            start: Arc::new(move |sup| {
                let args = AuditArgs {
                    port: storage.clone(),
                    queue: queue.clone(),
                    cfg,
                };
                Box::pin(async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, AuditWriter::<Storage>::default(), args, sup)
                            .await?;
                    Ok(actor.get_cell())
                })
            }),
        }
    }

    pub fn record(&self, r: AuditRecord) {
        self.handle.queue.push(r);
    }

    /// Records an administrative action.
    pub fn activity(&self, a: ActivityEntry) {
        self.record(AuditRecord::Activity(a));
    }

    /// Identity's events (logins, user and key changes) into the audit log.
    pub fn hook(&self) -> ActivityHook {
        let audit = self.clone();
        Arc::new(move |e: ActivityEvent| audit.activity(ActivityEntry::from_event(e)))
    }

    /// False while new requests must be refused (`AUDIT_ON_FULL=reject`, spool full).
    pub fn accepting(&self) -> bool {
        self.handle.accepting()
    }

    /// Writes everything queued (shutdown).
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.handle.flush(timeout).await
    }

    /// Panics the writer (fault injection).
    pub fn crash_writer(&self) -> bool {
        self.handle.crash()
    }

    pub fn stats(&self) -> &llmmux_actors::audit::AuditStats {
        &self.handle.queue.stats
    }

    /// Runs a query over the journal in the blocking pool.
    async fn over_journal<R: Send + 'static>(
        &self,
        query: impl FnOnce(query::Scan<'_>) -> Result<R, QueryError> + Send + 'static,
    ) -> Result<R, QueryError> {
        let Store::Journal(j) = &self.storage.store else {
            return Err(QueryError::Unavailable);
        };
        let j = j.clone();
        blocking(move || {
            // One snapshot for every pass of the query, so the passes agree.
            let snap = j.snapshot_blocking().map_err(|_| QueryError::Unavailable)?;
            let scan = |visit: &mut dyn FnMut(AuditRecord)| {
                snap.for_each(visit).map_err(|_| QueryError::Unavailable)
            };
            query(&scan)
        })
        .await
        .map_err(|_| QueryError::Unavailable)
        .and_then(|r| r)
    }

    pub async fn requests(&self, q: Option<&str>) -> Result<Value, QueryError> {
        let (f, page) = query::parse_list(q, false)?;
        match &self.storage.store {
            Store::Pg(pg) => pg.requests(&f, page).await,
            Store::Journal(_) => {
                self.over_journal(move |scan| query::scan_requests(scan, &f, page))
                    .await
            }
        }
    }

    pub async fn activity_log(&self, q: Option<&str>) -> Result<Value, QueryError> {
        let (f, page) = query::parse_list(q, true)?;
        match &self.storage.store {
            Store::Pg(pg) => pg.activity(&f, page).await,
            Store::Journal(_) => {
                self.over_journal(move |scan| query::scan_activity(scan, &f, page))
                    .await
            }
        }
    }

    pub async fn usage(&self, q: Option<&str>) -> Result<Value, QueryError> {
        let uq = query::parse_usage(q, record::micros(SystemTime::now()))?;
        let rows = match &self.storage.store {
            Store::Pg(pg) => pg.usage(&uq).await?,
            Store::Journal(_) => {
                let q = uq;
                self.over_journal(move |scan| query::scan_usage(scan, &q))
                    .await?
            }
        };
        Ok(query::usage_json(&uq, &rows))
    }
}

impl OutcomeSink for Audit {
    fn record(&self, r: &RequestRecord) {
        self.record(AuditRecord::Request(RequestEntry::from_outcome(r)));
    }
}

impl crate::metrics::ScrapeSource for Audit {
    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        let s = self.stats();
        gauge(
            enc,
            "audit_queue_depth",
            "Audit records waiting in memory for the writer",
            [(vec![], self.handle.queue.depth() as i64)],
        )?;
        gauge(
            enc,
            "audit_spool_bytes",
            "Bytes in the audit spool (AUDIT_SPOOL_DIR)",
            [(vec![], s.spool_bytes.load(Ordering::Relaxed) as i64)],
        )?;
        counter(
            enc,
            "audit_dropped",
            "Audit records dropped (queue full, or spool full with AUDIT_ON_FULL=drop)",
            [(vec![], s.dropped.load(Ordering::Relaxed))],
        )?;
        counter(
            enc,
            "audit_written",
            "Audit records written to the store directly",
            [(vec![], s.written.load(Ordering::Relaxed))],
        )?;
        counter(
            enc,
            "audit_spooled",
            "Audit records written to the spool while the store was failing",
            [(vec![], s.spooled.load(Ordering::Relaxed))],
        )?;
        counter(
            enc,
            "audit_store_failures",
            "Audit store writes that failed or timed out",
            [(vec![], s.store_failures.load(Ordering::Relaxed))],
        )?;
        gauge(
            enc,
            "audit_rejecting",
            "1 while new requests are refused because the audit spool is full",
            [(vec![], i64::from(!self.accepting()))],
        )
    }
}

/// The first `max` bytes of a body, as text (lossy at the cut).
pub fn clip(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
}
