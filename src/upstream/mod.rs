//! The upstream side: the hot path's HTTP client (`client`), the probe and discovery port
//! implementations (`control`), and how servers are described (`servers`).
//!
//! Both clients pool HTTP/1.1 keep-alive connections, follow no redirects and trust the
//! optional private CA: hyper-util's for proxied requests, reqwest's for the control plane.

mod client;
mod control;
mod servers;

use std::time::Duration;

use client::read_ca_file;
pub use client::{SendError, UpstreamClient};
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

/// The clients for proxied requests and for the control plane.
pub fn build_clients(
    cfg: &ValidatedConfig,
) -> Result<(UpstreamClient, reqwest::Client), UpstreamSetupError> {
    let roots = match &cfg.upstream_ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    Ok((
        UpstreamClient::new(cfg.connect_timeout, &roots)?,
        control_client(cfg, &roots)?,
    ))
}

fn control_client(
    cfg: &ValidatedConfig,
    roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<reqwest::Client, UpstreamSetupError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .http1_only();
    for der in roots {
        let cert = reqwest::Certificate::from_der(der)
            .map_err(|e| UpstreamSetupError::CaFile(e.to_string()))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| UpstreamSetupError::Client(e.to_string()))
}
