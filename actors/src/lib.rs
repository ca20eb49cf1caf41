//! `llmmux-actors`: the supervised runtime behind the gateway.
//!
//! ```text
//! RootActor                      restarts children from their ChildSpec (supervision.rs)
//! ├── RegistryActor              single writer of backend state and membership (breakers
//! │                              included); publishes RoutingTable snapshots
//! ├── DiscoveryActor             polls the discovered servers' /v1/models (level-triggered)
//! ├── HealthActor × servers      active probes (timer and on demand), reported to the registry
//! ├── StreamSupervisor × shards  parents of the per-request StreamActors (never restarted)
//! └── AuditWriter                drains the audit queue to the store, or the spool
//! ```
//!
//! Architecture invariants:
//! - No HTTP server, JSON or database code here: I/O goes through the traits in [`ports`],
//!   implemented by the `llmmux` crate.
//! - Only the registry writes backend state; everyone else reads [`table::RoutingTable`]
//!   snapshots from the shared [`table::SharedTable`].
//! - No response bytes travel through a mailbox: stream actors own a pump task that writes
//!   to a bounded channel; mailboxes carry control messages only.
//! - Every request/reply goes through a handle method with a timeout.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod breaker;
pub mod discovery;
pub mod health;
pub mod ports;
pub mod registry;
pub mod root;
pub mod slot;
pub mod stream;
pub mod supervision;
pub mod table;

pub use ractor;
