//! Shared test harness: real gateways (`App::start`) on 127.0.0.1:0 in front of simulated
//! vLLM servers, real HTTP clients, waits on conditions instead of sleeps.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use llmmux::app::App;
use llmmux::sim::{self, SimConfig, SimHandle};
use tokio::net::TcpListener;

pub mod child;
pub mod pg;

pub const KEY: &str = "sk-test";
pub const ADMIN: &str = "sk-admin";

pub async fn sim(models: &[&str]) -> SimHandle {
    sim_with(models, |_| {}).await
}

pub async fn sim_with(models: &[&str], f: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    let mut cfg = SimConfig {
        models: models.iter().map(|m| m.to_string()).collect(),
        completion_tokens: 8,
        ..SimConfig::default()
    };
    f(&mut cfg);
    sim::start(listener, cfg).await.expect("start sim")
}

/// A new empty directory under the system's temporary directory.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    reap_scratch_dirs_of_exited_tests();
    let dir = std::env::temp_dir().join(format!(
        "llmmux-test-{what}-{}-{}-{}",
        pid_namespace(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The inode of this process's pid namespace (0 when it cannot be read). A pid means
/// something only in its own namespace: tests in another container sharing the temporary
/// directory have pids this one cannot see.
fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|p| {
            p.to_str()?
                .strip_prefix("pid:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Removes the scratch directories of test processes that have exited. A test cannot remove
/// its own: the gateway processes it starts write there until the test ends, and a restarted
/// process reads what the previous one left. So each test process, on its first scratch
/// directory, removes those whose process (the pid in the name, of this pid namespace) is
/// gone.
fn reap_scratch_dirs_of_exited_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Liveness is read from /proc; without it nothing is known to have exited.
        let ns = pid_namespace();
        if ns == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("llmmux-test-")) else {
                continue;
            };
            // `{what}-{pid namespace}-{pid}-{uuid}`
            let mut parts = rest.rsplit('-').skip(1);
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let same_ns = parts.next().and_then(|n| n.parse::<u64>().ok()) == Some(ns);
            if same_ns
                && pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Test defaults: short intervals and timeouts so faults resolve in well under a second.
pub fn base_vars() -> Vec<(&'static str, String)> {
    vec![
        ("API_KEYS", KEY.into()),
        ("ADMIN_API_KEYS", ADMIN.into()),
        ("HEALTH_CHECK_INTERVAL", "200".into()),
        ("HEALTH_PROBE_TIMEOUT", "500".into()),
        ("DISCOVERY_INTERVAL", "200".into()),
        ("CONNECT_TIMEOUT", "500".into()),
        ("FIRST_BYTE_TIMEOUT", "1000".into()),
        ("REQUEST_TIMEOUT", "3000".into()),
        ("STREAM_IDLE_TIMEOUT", "1000".into()),
        ("EJECT_BASE", "1000".into()),
        ("EJECT_MAX", "5000".into()),
        ("SHUTDOWN_GRACE", "2000".into()),
        ("LOG_LEVEL", "warn".into()),
    ]
}

pub async fn gateway(extra: &[(&str, String)]) -> App {
    gateway_with_file(extra, None).await
}

/// The environment a test gateway reads, changeable for reloads.
#[derive(Clone, Default)]
pub struct TestEnv(std::sync::Arc<std::sync::RwLock<HashMap<String, String>>>);

impl TestEnv {
    pub fn set(&self, k: &str, v: impl Into<String>) {
        self.0.write().expect("env").insert(k.to_owned(), v.into());
    }
    pub fn get(&self, k: &str) -> Option<String> {
        self.0.read().expect("env").get(k).cloned()
    }
}

/// A gateway with a YAML config file as well (`--config`).
pub async fn gateway_with_file(extra: &[(&str, String)], file: Option<std::path::PathBuf>) -> App {
    gateway_with_env(extra, file).await.0
}

/// A gateway whose environment the test can change before a reload.
pub async fn gateway_with_env(
    extra: &[(&str, String)],
    file: Option<std::path::PathBuf>,
) -> (App, TestEnv) {
    let env = TestEnv::default();
    for (k, v) in base_vars() {
        env.set(k, v);
    }
    let audit = scratch_dir("audit");
    env.set("AUDIT_SPOOL_DIR", audit.join("spool").display().to_string());
    env.set(
        "AUDIT_JOURNAL_PATH",
        audit.join("audit.jsonl").display().to_string(),
    );
    for (k, v) in extra {
        env.set(k, v.clone());
    }
    if std::env::var("TEST_LOG").is_ok() {
        let _ = llmmux::telemetry::init("info", llmmux::config::LogFormat::Text, None);
    }
    let reader = env.clone();
    let source = llmmux::config::ConfigSource {
        env: std::sync::Arc::new(move |k: &str| reader.get(k)),
        file,
    };
    let cfg = source.load().expect("valid test config");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gateway");
    let app = App::start_with_source(cfg, listener, Some(source))
        .await
        .expect("start gateway");
    (app, env)
}

/// `BACKENDS` value: `model` served by each sim.
pub fn backends(model: &str, sims: &[&SimHandle]) -> String {
    sims.iter()
        .map(|s| format!("{model}:{}", s.addr()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `VLLM_SERVERS` value for some sims.
pub fn servers(sims: &[&SimHandle]) -> String {
    sims.iter()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub fn url(app: &App, path: &str) -> String {
    format!("http://{}{}", app.addr, path)
}

pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

pub async fn post(app: &App, path: &str, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(url(app, path))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// Poll `cond` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until every server in the routing table has been probed healthy.
pub async fn all_healthy(app: &App) {
    let ok = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(10), |t| {
            t.backends
                .values()
                .all(|e| *e.health() == llmmux_actors::table::HealthState::Healthy)
        })
        .await;
    assert!(ok, "servers did not become healthy");
}

/// SSE `data:` payloads of a finished stream body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Concatenated `delta.content` of a chat stream.
pub fn stream_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The gateway's id of a simulated server (derived from its URL).
pub fn id_of(s: &SimHandle) -> String {
    llmmux_actors::backend::BackendId::from_url(&s.base_url()).to_string()
}

/// How one request of a load run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// 200 and, for a stream, `[DONE]` without an error event.
    Ok,
    /// Any other status, or a stream with an error event.
    Failed(String),
}

/// One request, streamed or not, judged as a client would.
pub async fn one_chat(app: &App, model: &str, stream: bool, timeout: Duration) -> Ended {
    let sent = client()
        .post(url(app, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .timeout(timeout)
        .json(&chat(model, stream))
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Ended::Failed(format!("transport: {e}")),
    };
    let status = r.status().as_u16();
    let body = match r.text().await {
        Ok(b) => b,
        Err(e) => return Ended::Failed(format!("{status} body: {e}")),
    };
    if status != 200 {
        return Ended::Failed(format!("{status}: {body}"));
    }
    if stream && (!body.ends_with("data: [DONE]\n\n") || body.contains("\"error\"")) {
        return Ended::Failed(format!("bad stream: {body}"));
    }
    Ended::Ok
}

/// `n` requests at `concurrency`, every second one streamed; the failures.
pub async fn load(
    app: &App,
    model: &str,
    n: usize,
    concurrency: usize,
    timeout: Duration,
) -> Vec<String> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| one_chat(app, model, i % 2 == 1, timeout))
        .buffer_unordered(concurrency)
        .filter_map(|e| async move {
            match e {
                Ended::Ok => None,
                Ended::Failed(why) => Some(why),
            }
        })
        .collect()
        .await
}
