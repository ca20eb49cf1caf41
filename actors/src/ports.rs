//! Traits at the I/O boundary. The `llmmux` crate implements them over HTTP; actor tests
//! use in-memory fakes.

use std::future::Future;
use std::pin::Pin;

use crate::backend::BackendHandle;
use crate::table::ModelCard;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a probe failed. A timeout may be a server too busy to answer in time; anything else
/// is an answer (refused, reset, a bad status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("health probe timed out")]
    TimedOut,
    /// A short reason that names no address.
    #[error("{0}")]
    Failed(String),
}

/// Active health probe of one server, as its [`crate::backend::HealthCheck`] says.
pub trait Prober: Send + Sync + 'static {
    fn probe<'a>(&'a self, backend: &'a BackendHandle) -> BoxFuture<'a, Result<(), ProbeError>>;
}

/// Reads the models a server serves (`GET /v1/models`).
pub trait ModelLister: Send + Sync + 'static {
    fn list_models<'a>(
        &'a self,
        backend: &'a BackendHandle,
    ) -> BoxFuture<'a, Result<Vec<ModelCard>, String>>;
}
