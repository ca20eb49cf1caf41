//! HTTP client for the vLLM servers, and the port implementations the actors use.
//!
//! One `reqwest` client (pooled, HTTP/1.1 keep-alive, no redirects followed, optional private
//! CA) serves both the request hot path and the control plane (probes, discovery).

use std::sync::Arc;
use std::time::Duration;

use llmmux_actors::ports::{BoxFuture, ModelLister, Prober};
use llmmux_actors::table::ModelCard;

use crate::config::ValidatedConfig;

/// Largest `/v1/models` answer accepted (a misbehaving server must not blow up memory).
const MAX_MODELS_BODY: usize = 4 * 1024 * 1024;
/// Most model ids taken from one server.
const MAX_MODELS_PER_SERVER: usize = 4096;

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

/// Probes and model listing over HTTP.
pub struct HttpControlPlane {
    pub client: reqwest::Client,
    pub api_key: Option<String>,
}

impl HttpControlPlane {
    fn get(&self, url: String) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }
}

/// Short reason for a failed control-plane call, without the URL reqwest would print.
fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "bad response body".into()
    } else {
        "request failed".into()
    }
}

impl Prober for HttpControlPlane {
    fn probe<'a>(&'a self, base_url: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let resp = self
                .get(format!("{base_url}/health"))
                .send()
                .await
                .map_err(|e| reason(&e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("health answered {}", resp.status().as_u16()))
            }
        })
    }
}

impl ModelLister for HttpControlPlane {
    fn list_models<'a>(
        &'a self,
        base_url: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ModelCard>, String>> {
        Box::pin(async move {
            let mut resp = self
                .get(format!("{base_url}/v1/models"))
                .send()
                .await
                .map_err(|e| reason(&e))?;
            if !resp.status().is_success() {
                return Err(format!("/v1/models answered {}", resp.status().as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| reason(&e))? {
                if body.len() + chunk.len() > MAX_MODELS_BODY {
                    return Err("/v1/models answer too large".into());
                }
                body.extend_from_slice(&chunk);
            }
            parse_model_list(&body)
        })
    }
}

/// Accept only plausible model ids: printable, no whitespace or path tricks, bounded length.
pub fn valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && !id.contains("..")
        && id.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

pub fn parse_model_list(body: &[u8]) -> Result<Vec<ModelCard>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "invalid /v1/models JSON".to_owned())?;
    let data = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| "/v1/models has no data list".to_owned())?;
    let mut out: Vec<ModelCard> = Vec::new();
    for card in data.iter().take(MAX_MODELS_PER_SERVER) {
        let Some(id) = card.get("id").and_then(|i| i.as_str()) else {
            continue;
        };
        if !valid_model_id(id) || out.iter().any(|m| &*m.id == id) {
            continue;
        }
        out.push(ModelCard {
            id: id.into(),
            card: Some(Arc::from(card.to_string())),
        });
    }
    Ok(out)
}
