//! Child processes: the gateway (`llmmux serve`) and simulated vLLM servers
//! (`llmmux sim-vllm`), started from one binary, steered over HTTP, killed with SIGKILL.
//!
//! Readiness is polled over HTTP on a port chosen here (not read from logs), so the
//! children can log at `warn` into files and nothing has to drain a pipe.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::error::{ChaosError, Result};

/// Client key the gateway accepts (`API_KEYS`).
pub const KEY: &str = "sk-chaos-client-0123456789";
/// Admin key (`ADMIN_API_KEYS`): `/admin/*`, fault injection.
pub const ADMIN: &str = "sk-chaos-admin-0123456789";

/// What every scenario needs: the binary, the scale, the margin on deadlines.
#[derive(Clone)]
pub struct Ctx {
    /// The `llmmux` binary, built with `--features fault-injection`.
    pub bin: PathBuf,
    /// Short form (the tests): fewer requests, shorter windows, deadlines × `margin`.
    pub short: bool,
    /// Factor on every promised deadline before a scenario fails it: 1 for the runner
    /// (it reports the exact figure against the promise), ≥ 5 for the tests, so a busy
    /// machine does not fail them while a real regression (a hang) still does.
    pub margin: f64,
    /// Where the children's logs go (one file per process).
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Ctx {
    pub fn new(bin: PathBuf, short: bool, margin: f64, log_dir: PathBuf) -> Result<Ctx> {
        std::fs::create_dir_all(&log_dir)?;
        // Many sockets per scenario (1,000 clients in the disconnect wave): no client-side
        // pool limit, short idle lifetime so finished scenarios do not keep sockets.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(Ctx {
            bin,
            short,
            margin,
            log_dir,
            http,
        })
    }

    /// `short` in the tests, `full` in the runner.
    pub fn n(&self, short: usize, full: usize) -> usize {
        if self.short {
            short
        } else {
            full
        }
    }

    /// A window: `short` ms in the tests, `full` ms in the runner.
    pub fn window(&self, short_ms: u64, full_ms: u64) -> Duration {
        Duration::from_millis(if self.short { short_ms } else { full_ms })
    }

    /// The deadline a scenario asserts for a promised duration.
    pub fn deadline(&self, promise: Duration) -> Duration {
        promise.mul_f64(self.margin)
    }

    fn log_file(&self, name: &str) -> Result<File> {
        Ok(File::create(self.log_dir.join(format!("{name}.log")))?)
    }
}

/// A free loopback port. Racy by nature (it is released before the child binds it), which
/// is acceptable on a test machine; the child's bind error is reported if it loses.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn command(ctx: &Ctx, name: &str) -> Result<Command> {
    let mut c = Command::new(&ctx.bin);
    let log = ctx.log_file(name)?;
    let err = log.try_clone()?;
    // A clean environment: only what the scenario sets reaches the child, so the
    // machine's DATABASE_URL or API keys can never leak into a scenario.
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    Ok(c)
}

/// Poll `url` until it answers 200, the child exits, or `within` passes.
async fn wait_http_ok(
    http: &reqwest::Client,
    url: &str,
    child: &mut Child,
    what: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(ChaosError::Exited {
                what: what.to_owned(),
                status: status.to_string(),
            });
        }
        let ok = http
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ChaosError::NotReady {
                what: what.to_owned(),
                within,
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A simulated vLLM server in its own process, restartable on the same port.
pub struct Sim {
    pub name: String,
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    ctx: Ctx,
    /// SIGKILLs sent to this server (evidence for the report).
    pub kills: u32,
}

impl Sim {
    /// A server on a reserved port, not started yet (a server that comes up late).
    pub fn reserve(ctx: &Ctx, name: &str, args: &[&str]) -> Result<Sim> {
        Ok(Sim {
            name: name.to_owned(),
            port: free_port()?,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            ctx: ctx.clone(),
            kills: 0,
        })
    }

    /// Start a server: `llmmux sim-vllm --port P ARGS...`.
    pub async fn start(ctx: &Ctx, name: &str, args: &[&str]) -> Result<Sim> {
        let mut s = Sim::reserve(ctx, name, args)?;
        s.launch().await?;
        Ok(s)
    }

    /// Start (or restart after a kill) the process on its port.
    pub async fn launch(&mut self) -> Result<()> {
        let mut cmd = command(&self.ctx, &format!("sim-{}-{}", self.name, self.port))?;
        cmd.arg("sim-vllm")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.args);
        let mut child = cmd.spawn().map_err(|e| ChaosError::Spawn {
            what: format!("simulated server {}", self.name),
            source: e,
        })?;
        let url = format!("{}/sim/stats", self.base());
        wait_http_ok(
            &self.ctx.http,
            &url,
            &mut child,
            &format!("simulated server {}", self.name),
            Duration::from_secs(20),
        )
        .await?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (tokio's `start_kill` is `kill(2)` with SIGKILL on Unix) and reap.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
            self.kills += 1;
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The gateway's id for this server (derived from its URL).
    pub fn backend_id(&self) -> String {
        format!("127.0.0.1-{}", self.port)
    }

    /// `POST /sim/<what>` with a JSON body (fault, health, models, silent, config).
    pub async fn control(&self, what: &str, body: Value) -> Result<()> {
        let r = self
            .ctx
            .http
            .post(format!("{}/sim/{what}", self.base()))
            .timeout(Duration::from_secs(5))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(ChaosError::Protocol(format!(
                "/sim/{what}: {status} {text}"
            )));
        }
        Ok(())
    }

    /// Set the fault for every following inference request (`none` to clear).
    pub async fn fault(&self, fault: &str) -> Result<()> {
        self.control("fault", serde_json::json!({ "fault": fault }))
            .await
    }

    /// The simulator's counters (`GET /sim/stats`).
    pub async fn stats(&self) -> Result<SimStats> {
        let v: Value = self
            .ctx
            .http
            .get(format!("{}/sim/stats", self.base()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(SimStats {
            inference_requests: n("inference_requests"),
            active_connections: n("active_connections"),
            active_requests: n("active_requests"),
            client_disconnects: n("client_disconnects"),
        })
    }
}

/// The counters of a simulated server that scenarios read.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    pub inference_requests: u64,
    pub active_connections: u64,
    pub active_requests: u64,
    pub client_disconnects: u64,
}

/// Settings every scenario's gateway starts with: short intervals and timeouts so faults
/// resolve in about a second (the same values as the gateway's own test suite).
pub fn base_vars() -> Vec<(&'static str, String)> {
    vec![
        ("API_KEYS", KEY.into()),
        ("ADMIN_API_KEYS", ADMIN.into()),
        ("HEALTH_CHECK_INTERVAL", "200".into()),
        ("HEALTH_PROBE_TIMEOUT", "500".into()),
        ("DISCOVERY_INTERVAL", "200".into()),
        ("CONNECT_TIMEOUT", "500".into()),
        ("FIRST_BYTE_TIMEOUT", "1000".into()),
        ("REQUEST_TIMEOUT", "5000".into()),
        ("STREAM_IDLE_TIMEOUT", "1000".into()),
        ("EJECT_BASE", "1000".into()),
        ("EJECT_MAX", "5000".into()),
        ("SHUTDOWN_GRACE", "2000".into()),
        ("LOG_LEVEL", "warn".into()),
        ("LOG_FORMAT", "json".into()),
    ]
}

/// `BACKENDS` value: `model` on each server.
pub fn backends(model: &str, sims: &[&Sim]) -> String {
    sims.iter()
        .map(|s| format!("{model}:{}", s.addr()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The gateway (`llmmux serve`) as a child process.
pub struct Gateway {
    child: Child,
    pub port: u16,
    pub pid: u32,
    ctx: Ctx,
}

impl Gateway {
    /// Start with [`base_vars`] overridden by `vars`; ready once `/healthz` answers 200.
    pub async fn start(ctx: &Ctx, vars: &[(&str, String)]) -> Result<Gateway> {
        let port = free_port()?;
        let mut env: HashMap<&str, String> = base_vars().into_iter().collect();
        for (k, v) in vars {
            env.insert(k, v.clone());
        }
        env.insert("HOST", "127.0.0.1".into());
        env.insert("PORT", port.to_string());
        // The audit log's files go with the run's logs, never into the working directory.
        let audit = ctx.log_dir.join(format!("audit-{port}"));
        env.entry("AUDIT_SPOOL_DIR")
            .or_insert_with(|| audit.join("spool").display().to_string());
        env.entry("AUDIT_JOURNAL_PATH")
            .or_insert_with(|| audit.join("audit.jsonl").display().to_string());
        let mut cmd = command(ctx, &format!("gateway-{port}"))?;
        cmd.arg("serve").envs(env);
        let mut child = cmd.spawn().map_err(|e| ChaosError::Spawn {
            what: "gateway".into(),
            source: e,
        })?;
        let pid = child.id().unwrap_or(0);
        wait_http_ok(
            &ctx.http,
            &format!("http://127.0.0.1:{port}/healthz"),
            &mut child,
            "gateway",
            Duration::from_secs(30),
        )
        .await?;
        Ok(Gateway {
            child,
            port,
            pid,
            ctx: ctx.clone(),
        })
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Still running (not crashed, not exited by escalation)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .ctx
            .http
            .get(format!("{}/metrics", self.base()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?)
    }

    /// `GET /admin/backends`: servers, retries, supervision report.
    /// Requests of `model` in the audit log (`/admin/usage`, summed over days).
    pub async fn audited_requests(&self, model: &str) -> Result<u64> {
        let v: Value = self
            .ctx
            .http
            .get(format!("{}/admin/usage?group_by=model", self.base()))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["data"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["model"] == model)
                    .filter_map(|r| r["requests"].as_u64())
                    .sum()
            })
            .unwrap_or(0))
    }

    pub async fn admin_backends(&self) -> Result<Value> {
        Ok(self
            .ctx
            .http
            .get(format!("{}/admin/backends", self.base()))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Wait until every listed server is probed healthy.
    pub async fn wait_healthy(&self, servers: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(v) = self.admin_backends().await {
                let healthy = v["servers"]
                    .as_array()
                    .map(|a| a.iter().filter(|s| s["health"] == "healthy").count())
                    .unwrap_or(0);
                if healthy >= servers {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::NotReady {
                    what: format!("{servers} healthy servers behind the gateway"),
                    within,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /admin/faults/crash/{actor}`: true when an actor of the kind was crashed.
    pub async fn crash(&self, actor: &str) -> Result<bool> {
        let v: Value = self
            .ctx
            .http
            .post(format!("{}/admin/faults/crash/{actor}", self.base()))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["crashed"].as_bool().unwrap_or(false))
    }

    pub fn proc(&self) -> ProcStats {
        ProcStats::of(self.pid)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Memory, threads and descriptors of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcStats {
    pub rss_kib: u64,
    /// Resident anonymous memory (heap, stacks): RSS without the binary's pages.
    pub anon_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

impl ProcStats {
    pub fn of(pid: u32) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        ProcStats {
            rss_kib: field("VmRSS"),
            anon_kib: field("RssAnon"),
            hwm_kib: field("VmHWM"),
            threads: field("Threads"),
            fds,
        }
    }
}

/// Sum of a Prometheus series over the lines whose labels contain every `labels` entry
/// (`name="value"` substrings); 0 when absent.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Poll `cond` every 20 ms until it holds or `within` passes; the time it took.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workspace root, for building the gateway (this crate lives in `chaos/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
