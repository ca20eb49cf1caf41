//! From configuration (`BACKENDS`, `VLLM_SERVERS`, YAML `servers:`) or an admin request to
//! the [`BackendSpec`]s the registry serves. Ids are stable: a YAML `name`, or derived from
//! the URL, so reordering the configuration renames nothing.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use std::hash::{Hash, Hasher};

use llmmux_actors::backend::{BackendId, BackendSpec, HealthCheck, Origin, PassivePolicy};

use crate::config::{normalize_base_url, Config, HealthOption, Secret, ServerOptions};

/// What the HTTP layer sends to one server besides the request itself: its credentials
/// (a per-server key, else `VLLM_API_KEY`) and extra headers. Built once per server.
#[derive(Debug, Default, Clone)]
pub struct ServerExt {
    pub headers: HeaderMap,
    /// The base URL, parsed once: parsing it for every request (host, IDNA) cost about a
    /// tenth of the gateway's instructions per request.
    pub base: Option<reqwest::Url>,
    /// The URI of every proxied endpoint, joined and parsed once.
    endpoints: Vec<(&'static str, Uri)>,
    /// The `Host` header of this server, made once instead of by the HTTP client for every
    /// request.
    pub host: Option<HeaderValue>,
}

impl ServerExt {
    /// The URI of `path` on this server (`None` if the base did not parse).
    pub fn url(&self, path: &str) -> Option<Uri> {
        if let Some((_, uri)) = self.endpoints.iter().find(|(p, _)| *p == path) {
            return Some(uri.clone());
        }
        self.base.as_ref().and_then(|b| join(b, path))
    }

    fn new(base: &str, key: Option<&Secret>, extra: &[(String, String)]) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in extra {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers: {k:?} is not a header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("headers: the value of {k:?} is not valid"))?;
            headers.insert(name, value);
        }
        if let Some(k) = key {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                .map_err(|_| "api_key: not a valid header value".to_owned())?;
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
        }
        let base = reqwest::Url::parse(base).ok();
        let endpoints = base
            .iter()
            .flat_map(|b| {
                crate::proxy::Endpoint::ALL
                    .iter()
                    .filter_map(move |ep| Some((ep.path(), join(b, ep.path())?)))
            })
            .collect();
        let host = base.as_ref().and_then(host_header);
        Ok(Self {
            headers,
            base,
            endpoints,
            host,
        })
    }
}

fn join(base: &reqwest::Url, path: &str) -> Option<Uri> {
    let mut url = base.clone();
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Uri::try_from(url.as_str()).ok()
}

/// `host[:port]`, the port only when it is not the scheme's default (as HTTP clients send it).
fn host_header(url: &reqwest::Url) -> Option<HeaderValue> {
    let host = url.host_str()?;
    let value = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

fn passive(cfg: &Config) -> PassivePolicy {
    PassivePolicy {
        consecutive: cfg.failure_threshold,
        rate: cfg.failure_rate_percent as f32 / 100.0,
    }
}

/// One server being assembled from several configuration sources.
struct Plan {
    url: String,
    name: Option<String>,
    models: Vec<String>,
    discover: bool,
    max_in_flight: u32,
    health: HealthOption,
    key: Option<Secret>,
    headers: Vec<(String, String)>,
}

impl Plan {
    fn spec(self, id: BackendId, cfg: &Config, origin: Origin) -> Result<BackendSpec, String> {
        let key = self.key.as_ref().or(cfg.vllm_api_key.as_ref());
        let ext = ServerExt::new(&self.url, key, &self.headers)?;
        let passive = passive(cfg);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.url,
            &self.models,
            self.discover,
            self.max_in_flight,
            &self.health,
            &self.headers,
            key.map(Secret::expose),
            passive.consecutive,
            passive.rate.to_bits(),
        )
            .hash(&mut h);
        Ok(BackendSpec {
            origin,
            revision: h.finish(),
            id,
            base_url: self.url.into(),
            static_models: self.models.iter().map(|m| Arc::from(m.as_str())).collect(),
            discover: self.discover,
            max_in_flight: self.max_in_flight,
            health: match self.health {
                HealthOption::Path(p) => HealthCheck::Path(p.into()),
                HealthOption::Models => HealthCheck::Models,
                HealthOption::None => HealthCheck::Passive,
            },
            passive,
            ext: Arc::new(ext),
        })
    }

    fn apply(&mut self, o: &ServerOptions) -> Result<(), String> {
        if o.name.is_some() {
            self.name = o.name.clone();
        }
        self.discover = o.discover;
        if let Some(n) = o.max_in_flight {
            self.max_in_flight = n;
        }
        for m in &o.models {
            if !self.models.contains(m) {
                self.models.push(m.clone());
            }
        }
        self.health = o.health()?;
        self.key = o.key()?;
        self.headers = o
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(())
    }
}

fn plan(url: String, cfg: &Config) -> Plan {
    Plan {
        url,
        name: None,
        models: Vec::new(),
        discover: false,
        max_in_flight: cfg.max_in_flight_per_server,
        health: HealthOption::Path("/health".into()),
        key: None,
        headers: Vec::new(),
    }
}

/// Every server the configuration names. The configuration was validated, so entries that
/// still fail here are skipped (with the reason in the log).
pub fn specs_from_config(cfg: &Config) -> Vec<BackendSpec> {
    let mut plans: Vec<Plan> = Vec::new();
    fn entry<'a>(plans: &'a mut Vec<Plan>, url: &str, cfg: &Config) -> &'a mut Plan {
        let i = match plans.iter().position(|p| p.url == url) {
            Some(i) => i,
            None => {
                plans.push(plan(url.to_owned(), cfg));
                plans.len() - 1
            }
        };
        &mut plans[i]
    }
    for url in &cfg.vllm_servers {
        entry(&mut plans, url, cfg).discover = true;
    }
    for b in &cfg.backends {
        let p = entry(&mut plans, &b.url, cfg);
        if !p.models.contains(&b.model) {
            p.models.push(b.model.clone());
        }
    }
    for o in &cfg.server_options {
        let Ok(url) = normalize_base_url(&o.url) else {
            continue;
        };
        if let Err(e) = entry(&mut plans, &url, cfg).apply(o) {
            tracing::warn!(reason = %e, "server options skipped");
        }
    }
    let mut specs: Vec<BackendSpec> = Vec::new();
    for p in plans {
        let id = unique_id(&specs, p.name.clone(), &p.url);
        match p.spec(id, cfg, Origin::Config) {
            Ok(s) => specs.push(s),
            Err(e) => tracing::warn!(reason = %e, "server skipped"),
        }
    }
    specs
}

/// A URL-derived id, made unique against `taken` (http and https of one host, say).
fn unique_id(taken: &[BackendSpec], name: Option<String>, url: &str) -> BackendId {
    if let Some(n) = name {
        return BackendId::new(n);
    }
    let base = BackendId::from_url(url);
    if !taken.iter().any(|s| s.id == base) {
        return base;
    }
    (2..)
        .map(|n| BackendId::new(format!("{base}-{n}")))
        .find(|id| !taken.iter().any(|s| &s.id == id))
        .unwrap_or(base)
}

/// A server added at runtime (`POST /admin/backends`): the same options as YAML.
pub fn spec_from_options(o: &ServerOptions, cfg: &Config) -> Result<BackendSpec, Vec<String>> {
    let problems = o.problems();
    if !problems.is_empty() {
        return Err(problems);
    }
    let url = normalize_base_url(&o.url).map_err(|e| vec![format!("url: {e}")])?;
    let mut p = plan(url, cfg);
    p.apply(o).map_err(|e| vec![e])?;
    let id = p
        .name
        .clone()
        .map(BackendId::new)
        .unwrap_or_else(|| BackendId::from_url(&p.url));
    p.spec(id, cfg, Origin::Admin).map_err(|e| vec![e])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};

    fn load(vars: &[(&str, &str)]) -> crate::config::ValidatedConfig {
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        Config::load(&Sources {
            env: &env,
            file: None,
        })
        .expect("valid")
    }

    fn ids(cfg: &Config) -> Vec<(String, String)> {
        let mut v: Vec<_> = specs_from_config(cfg)
            .into_iter()
            .map(|s| (s.id.to_string(), s.base_url.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn endpoint_urls_and_host_are_made_once_as_a_client_would() {
        let cases = [
            ("http://10.0.0.1:8000/prefix/", "10.0.0.1:8000"),
            ("https://vllm.example.com", "vllm.example.com"),
            ("http://vllm.example.com:80", "vllm.example.com"),
            ("http://[::1]:8000", "[::1]:8000"),
        ];
        for (base, host) in cases {
            let ext = ServerExt::new(base, None, &[]).expect("valid");
            assert_eq!(ext.host, Some(HeaderValue::from_static(host)), "{base}");
            let root = base.trim_end_matches('/');
            for ep in crate::proxy::Endpoint::ALL {
                let url = ext.url(ep.path()).expect("url");
                assert_eq!(
                    url.to_string(),
                    format!("{root}{}", ep.path()).replace(":80/", "/")
                );
            }
            let other = ext.url("/metrics").expect("url");
            assert_eq!(
                other.to_string(),
                format!("{root}/metrics").replace(":80/", "/")
            );
        }
        let bad = ServerExt::new("not a url", None, &[]).expect("kept");
        assert!(bad.url("/v1/models").is_none() && bad.host.is_none());
    }

    #[test]
    fn ids_do_not_depend_on_the_order_of_the_configuration() {
        let a = load(&[("BACKENDS", "m:10.0.0.1:8000,n:10.0.0.2:8000")]);
        let b = load(&[("BACKENDS", "n:10.0.0.2:8000,m:10.0.0.1:8000")]);
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(ids(&a)[0].0, "10.0.0.1-8000");
    }

    #[test]
    fn the_same_host_over_http_and_https_gets_two_ids() {
        let cfg = load(&[("VLLM_SERVERS", "http://gpu:8000,https://gpu:8000")]);
        let v = ids(&cfg);
        assert_eq!(v.len(), 2);
        assert_ne!(v[0].0, v[1].0);
    }

    #[test]
    fn the_server_key_wins_over_vllm_api_key() {
        let cfg = load(&[("VLLM_SERVERS", "gpu:8000"), ("VLLM_API_KEY", "global")]);
        let spec = &specs_from_config(&cfg)[0];
        let ext = spec.ext.downcast_ref::<ServerExt>().expect("ext");
        assert_eq!(
            ext.headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer global"[..])
        );
        let o: ServerOptions = serde_json::from_value(serde_json::json!({
            "url": "gpu:9000", "api_key": "own", "headers": {"X-A": "1"}
        }))
        .expect("options");
        let spec = spec_from_options(&o, &cfg).expect("spec");
        let ext = spec.ext.downcast_ref::<ServerExt>().expect("ext");
        assert_eq!(
            ext.headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer own"[..])
        );
        assert!(ext
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.is_sensitive()));
        assert_eq!(
            ext.headers.get("x-a").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
}
