//! LLMMux chaos suite: scenarios that inject real faults (killed and hung servers, network
//! toxics through the `noxious` proxy, misbehaving simulated vLLM servers, actor panics, a
//! database outage, overload) into the real `llmmux` binary running as a child process,
//! drive bounded load on 127.0.0.1, and report one row per scenario with the measured figure
//! for its promise.
//!
//! The runner (`src/main.rs`) and the short-form tests (`tests/scenarios.rs`) share
//! everything here; they differ only in [`Ctx::short`] and the deadline margin.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod harness;
pub mod pg;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod soak;

pub use error::{ChaosError, Result};
pub use harness::Ctx;
pub use report::Row;
