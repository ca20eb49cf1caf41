//! The HTTP front end on plain hyper: accept loop, routing, auth, CORS, error mapping.
//! OpenAI protocol types live only here and in `proxy`.

pub mod accounts;
pub mod admin;
pub mod audit_api;
pub mod auth;
pub mod conn;
pub mod cors;
pub mod metrics_port;
pub mod models;
pub mod ops;
pub mod request_id;
pub mod router;
pub mod server;
