//! LLMMux: one OpenAI-compatible endpoint in front of many vLLM servers.
//!
//! Codemap (see ARCHITECTURE.md for the request flow and the actor tree):
//! - [`config`]: typed settings from env / YAML, validated at start-up.
//! - [`app`]: composition root; builds the routing snapshot and the supervised actor tree
//!   (crate `llmmux-actors`), then serves.
//! - [`state`]: what handlers share, split by concern ([`lifecycle`], the live config, the
//!   proxy context, auth, outcome sinks).
//! - [`http`]: hyper front end: accept loop, router, auth, CORS, admin/ops endpoints.
//! - [`proxy`]: the hot path: prepare, route, retry before the first byte, relay, stream pump.
//! - [`outcome`]: the one record per request, finished exactly once.
//! - [`error`]: `GatewayError`, the one mapping from failures to HTTP and SSE error events.
//! - [`body`]: response body types.
//! - [`upstream`]: the HTTP client and the probe / discovery port implementations.
//! - [`toolcall`]: pure tool-call repair transform (no I/O).
//! - [`sim`]: the simulated vLLM server used by tests, the demo and benchmarks.
//! - [`identity`]: users, roles, JWT sessions, database API keys, per-key rate limits.
//! - [`storage`]: the PostgreSQL pool and the embedded migrations.
//! - [`cli`]: subcommands (`serve`, `check-config`, `demo`, `sim-vllm`, `healthcheck`).
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod gated;
pub mod glob;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod outcome;
pub mod principal;
pub mod proxy;
pub mod reload;
pub mod sim;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod toolcall;
pub mod upstream;
