//! PostgreSQL access: one connection pool with bounded waits, and the migration runner.
//!
//! Every wait is bounded (acquire, connect, statement), so a slow or absent database turns
//! into an error within `DB_ACQUIRE_TIMEOUT` / `DB_STATEMENT_TIMEOUT`, never a hang.
//! Errors keep only the SQLSTATE: a database message can quote row values (a key digest in
//! a unique violation, say), and neither values nor SQL text may reach a log or a client.

pub mod migrate;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::{Config, Secret};

pub use migrate::{migrate, migrate_client, Migration, MIGRATIONS};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL or connection string")]
    InvalidUrl,
    /// The database could not be reached in time (pool wait, connect, timeout, lost
    /// connection). Callers answer 503.
    #[error("database unavailable ({0})")]
    Unavailable(&'static str),
    /// The database answered with an error; only its SQLSTATE is kept.
    #[error("database error (SQLSTATE {0})")]
    Query(String),
    #[error("migration {name} was changed after it was applied (checksum mismatch)")]
    ChecksumMismatch { name: String },
}

impl StorageError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }

    /// The SQLSTATE of a database error, for callers that map constraint violations.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StorageError::Query(code) => Some(code),
            _ => None,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        self.sqlstate() == Some(SqlState::UNIQUE_VIOLATION.code())
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            // Cancelled by statement_timeout, or the server going away under us.
            Some(c)
                if *c == SqlState::QUERY_CANCELED
                    || *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CRASH_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || *c == SqlState::TOO_MANY_CONNECTIONS
                    || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
            {
                StorageError::Unavailable("the database refused or cancelled the query")
            }
            Some(c) => StorageError::Query(c.code().to_owned()),
            // No SQLSTATE: an I/O or protocol failure, i.e. the connection is gone.
            None => StorageError::Unavailable("connection failed"),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Timeout(_) => {
                StorageError::Unavailable("timed out waiting for a connection")
            }
            PoolError::Backend(e) => e.into(),
            _ => StorageError::Unavailable("connection pool failure"),
        }
    }
}

/// Pool settings, from the configuration.
#[derive(Clone, Debug)]
pub struct DbSettings {
    pub url: Secret,
    pub pool_size: usize,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

impl DbSettings {
    /// `None` without `DATABASE_URL`.
    pub fn from_config(cfg: &Config) -> Option<DbSettings> {
        cfg.database_url.as_ref().map(|url| DbSettings {
            url: url.clone(),
            pool_size: cfg.db_pool_size,
            acquire_timeout: cfg.db_acquire_timeout,
            statement_timeout: cfg.db_statement_timeout,
        })
    }
}

/// Parses `DATABASE_URL` (URL or key=value form) without echoing it in the error.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StorageError> {
    tokio_postgres::Config::from_str(url).map_err(|_| StorageError::InvalidUrl)
}

/// The connection pool. Connections are opened lazily, so building it needs no database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    url: Secret,
    pg: tokio_postgres::Config,
    acquire_timeout: Duration,
}

impl Db {
    pub fn new(s: &DbSettings) -> Result<Db, StorageError> {
        let mut pg = parse_url(s.url.expose())?;
        pg.connect_timeout(s.acquire_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("llmmux");
        }
        let timeout = format!("-c statement_timeout={}", s.statement_timeout.as_millis());
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {timeout}"),
            _ => timeout,
        };
        pg.options(&options);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                // A connection the server closed (restart, pg_terminate_backend) reports
                // itself closed; it is replaced instead of failing a request.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(s.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(s.acquire_timeout))
            .create_timeout(Some(s.acquire_timeout))
            .recycle_timeout(Some(s.acquire_timeout))
            .build()
            .map_err(|_| StorageError::Unavailable("cannot build the connection pool"))?;
        Ok(Db {
            pool,
            url: s.url.clone(),
            pg,
            acquire_timeout: s.acquire_timeout,
        })
    }

    /// A pooled connection, within the acquire timeout.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        // The pool bounds its own waits; this outer bound also covers a connect that hangs
        // in TLS-less authentication against a server that accepts but never answers.
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StorageError::Unavailable(
                "timed out waiting for a connection",
            )),
        }
    }

    /// The connection settings, for dedicated connections (the LISTEN connection).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// `DATABASE_URL`, for [`migrate`] (a secret: never log it).
    pub fn url(&self) -> &str {
        self.url.expose()
    }

    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }
}
