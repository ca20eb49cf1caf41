//! The one error type of the suite. A scenario whose setup fails (a process that does not
//! start, a port that cannot be bound) reports a failed row carrying this error's text.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {within:?}")]
    NotReady { what: String, within: Duration },
    #[error("{what} exited early ({status})")]
    Exited { what: String, status: String },
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("fault-injection proxy: {0}")]
    Proxy(String),
    #[error("postgresql: {0}")]
    Pg(String),
    #[error("building the gateway: {0}")]
    Build(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("unknown scenario `{0}` (see --list)")]
    UnknownScenario(String),
}

pub type Result<T> = std::result::Result<T, ChaosError>;
