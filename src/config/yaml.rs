//! The optional YAML config file: the same settings as the environment (variable names in
//! lower case) plus a `servers:` list of per-server options. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// Per-server options (YAML only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// `host:port` or URL of a vLLM server.
    pub url: String,
    /// Static models for this server (fallback when discovery fails).
    #[serde(default)]
    pub models: Vec<String>,
    /// Poll this server's `/v1/models` (default true).
    #[serde(default = "yes")]
    pub discover: bool,
    /// Override of MAX_IN_FLIGHT_PER_SERVER for this server.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

fn yes() -> bool {
    true
}

const KNOWN: &[&str] = &[
    "host",
    "port",
    "api_keys",
    "admin_api_keys",
    "backends",
    "vllm_servers",
    "enable_cors",
    "cors_origin",
    "health_check_interval",
    "health_probe_timeout",
    "discovery_interval",
    "connect_timeout",
    "first_byte_timeout",
    "request_timeout",
    "body_read_timeout",
    "stream_idle_timeout",
    "header_read_timeout",
    "max_body_bytes",
    "max_attempts",
    "max_in_flight",
    "max_in_flight_per_server",
    "shutdown_grace",
    "eject_base",
    "eject_max",
    "failure_threshold",
    "model_aliases",
    "vllm_api_key",
    "upstream_ca_file",
    "log_level",
    "log_format",
    "stream_shards",
    "route_via",
    "tool_call_formats",
    "tool_call_code_fence",
    "tool_call_harmony_stripped",
];

fn err(reason: String) -> ConfigError {
    ConfigError {
        name: "--config".into(),
        reason,
    }
}

/// Flatten the file into `NAME → string` (lists become comma-separated) plus server options.
pub(super) fn load(
    path: &Path,
) -> Result<(BTreeMap<String, String>, Vec<ServerOptions>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let doc: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| err(format!("invalid YAML: {e}")))?;
    let mut flat = BTreeMap::new();
    let mut servers = Vec::new();
    for (key, value) in doc {
        if key == "servers" {
            servers = serde_yaml::from_value(value).map_err(|e| err(format!("servers: {e}")))?;
            continue;
        }
        if !KNOWN.contains(&key.as_str()) {
            return Err(err(format!("unknown setting {key:?}")));
        }
        let text = scalar_or_list(&value)
            .ok_or_else(|| err(format!("{key}: expected a value or a list")))?;
        flat.insert(key.to_ascii_uppercase(), text);
    }
    Ok((flat, servers))
}

fn scalar_or_list(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        Value::Sequence(items) => items
            .iter()
            .map(scalar_or_list)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| Some(format!("{}={}", scalar_or_list(k)?, scalar_or_list(v)?)))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Tagged(_) => None,
    }
}
