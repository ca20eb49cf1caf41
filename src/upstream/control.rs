//! Probes and model listing over HTTP: the `Prober` and `ModelLister` ports.

use std::sync::Arc;

use llmmux_actors::backend::{BackendHandle, HealthCheck};
use llmmux_actors::ports::{BoxFuture, ModelLister, ProbeError, Prober};
use llmmux_actors::table::ModelCard;

use super::ServerExt;

/// Largest `/v1/models` answer accepted (a misbehaving server must not blow up memory).
const MAX_MODELS_BODY: usize = 4 * 1024 * 1024;
/// Most model ids taken from one server.
const MAX_MODELS_PER_SERVER: usize = 4096;

/// Probes and model listing over HTTP, with each server's own credentials and headers.
pub struct HttpControlPlane {
    pub client: reqwest::Client,
}

impl HttpControlPlane {
    fn get(&self, backend: &BackendHandle, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.get(format!("{}{path}", backend.base_url));
        if let Some(ext) = backend.ext::<ServerExt>() {
            req = req.headers(ext.headers.clone());
        }
        req
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
    fn probe<'a>(&'a self, backend: &'a BackendHandle) -> BoxFuture<'a, Result<(), ProbeError>> {
        Box::pin(async move {
            let path = match &backend.health_check {
                HealthCheck::Passive => return Ok(()),
                HealthCheck::Models => "/v1/models",
                HealthCheck::Path(p) => p,
            };
            let resp = self.get(backend, path).send().await.map_err(|e| {
                // A connect timeout counts as a timeout: a full accept queue is busy too.
                if e.is_timeout() {
                    ProbeError::TimedOut
                } else {
                    ProbeError::Failed(reason(&e))
                }
            })?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(ProbeError::Failed(format!(
                    "health check answered {}",
                    resp.status().as_u16()
                )))
            }
        })
    }
}

impl ModelLister for HttpControlPlane {
    fn list_models<'a>(
        &'a self,
        backend: &'a BackendHandle,
    ) -> BoxFuture<'a, Result<Vec<ModelCard>, String>> {
        Box::pin(async move {
            let mut resp = self
                .get(backend, "/v1/models")
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
