//! The upstream side: one HTTP client for every server, the probe and discovery port
//! implementations (`control`), and how servers are described (`servers`).
//!
//! One `reqwest` client (pooled, HTTP/1.1 keep-alive, no redirects followed, optional private
//! CA) serves both the request hot path and the control plane (probes, discovery).

mod control;
mod servers;

use std::time::Duration;

pub use control::{parse_model_list, valid_model_id, HttpControlPlane};
pub use servers::{spec_from_options, specs_from_config, ServerExt};

use crate::config::ValidatedConfig;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("UPSTREAM_CA_FILE: {0}")]
    CaFile(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

pub fn build_client(cfg: &ValidatedConfig) -> Result<reqwest::Client, UpstreamSetupError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .http1_only();
    if let Some(path) = &cfg.upstream_ca_file {
        let pem = std::fs::read(path).map_err(|e| UpstreamSetupError::CaFile(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| UpstreamSetupError::CaFile(e.to_string()))?;
        if certs.is_empty() {
            return Err(UpstreamSetupError::CaFile(
                "no certificate found in the file".into(),
            ));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| UpstreamSetupError::Client(e.to_string()))
}
