//! Subcommands. Exit codes: 0 success, 1 runtime failure (including escalation of the actor
//! tree), 2 configuration or usage error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::app::{App, Exit};
use crate::config::{Config, ConfigError, ConfigSource, Sources, ValidatedConfig};
use crate::sim::{self, SimConfig, ToolText};

#[derive(Parser, Debug)]
#[command(
    name = "llmmux",
    version,
    about = "OpenAI-compatible gateway in front of many vLLM servers"
)]
pub struct Cli {
    /// Optional YAML file with the same settings as the environment (the environment wins).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Start simulated vLLM servers and the gateway in front of them.
    Demo,
    /// Run one simulated vLLM server.
    SimVllm(SimArgs),
    /// Apply the database migrations (`DATABASE_URL`) and exit.
    Migrate,
    /// Create a SUPER_ADMIN, or reset an existing account to one (password prompted, or read
    /// from standard input, or from ADMIN_PASSWORD).
    CreateAdmin {
        /// Defaults to ADMIN_USERNAME (`superadmin`).
        #[arg(long)]
        username: Option<String>,
    },
    /// Probe the local gateway's /healthz (for Docker HEALTHCHECK).
    Healthcheck {
        /// Defaults to http://127.0.0.1:$PORT/healthz.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Served model name; repeat for aliases (the first is the primary name).
    #[arg(long = "model", default_value = "sim-model")]
    pub models: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// Default completion length in tokens.
    #[arg(long, default_value_t = 16)]
    pub tokens: u32,
    /// Emit tool calls as text in this format: gptoss, harmony, hermes, llama3_json, mistral, pythonic.
    #[arg(long)]
    pub tool_text: Option<String>,
    /// Streams: delay between the response headers and the first event (prefill).
    #[arg(long, default_value_t = 0)]
    pub prefill_ms: u64,
    /// Fault for every inference request (e.g. `status=503`, `status_every=503/2`, `hang`).
    #[arg(long)]
    pub fault: Option<String>,
    /// Delay before `/health` answers (a server too busy to answer probes promptly).
    #[arg(long, default_value_t = 0)]
    pub health_delay_ms: u64,
    /// No `/health` route (like Ollama or a hosted API).
    #[arg(long)]
    pub no_health_route: bool,
}

fn load_config(
    file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ValidatedConfig, Vec<ConfigError>> {
    Config::load(&Sources { env, file })
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn report(errors: &[ConfigError]) -> i32 {
    for e in errors {
        eprintln!("config error: {e}");
    }
    2
}

pub fn main_exit_code() -> i32 {
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        // The configuration comes first: the runtime's size is part of it.
        Command::Serve => match load_config(config.clone(), &process_env) {
            Ok(cfg) => block_on(
                cfg.worker_threads,
                serve(cfg, ConfigSource::process(config)),
            ),
            Err(errors) => report(&errors),
        },
        Command::CheckConfig => match load_config(config, &process_env) {
            Ok(cfg) => {
                print!("{}", cfg.render_masked());
                if !cfg.has_backends() {
                    eprintln!("warning: no backend configured (BACKENDS or VLLM_SERVERS)");
                }
                0
            }
            Err(errors) => report(&errors),
        },
        Command::Demo => block_on(0, demo(config)),
        Command::Migrate => match load_config(config, &process_env) {
            Ok(cfg) => block_on(0, migrate(cfg)),
            Err(errors) => report(&errors),
        },
        Command::CreateAdmin { username } => match load_config(config, &process_env) {
            Ok(cfg) => block_on(0, create_admin(cfg, username)),
            Err(errors) => report(&errors),
        },
        Command::SimVllm(args) => block_on(0, sim_vllm(args)),
        Command::Healthcheck { url } => block_on(0, healthcheck(url, config)),
    }
}

/// Runs `f` on a multi-threaded runtime of `workers` threads (0: one per CPU).
fn block_on(workers: usize, f: impl std::future::Future<Output = i32>) -> i32 {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            1
        }
    }
}

async fn bind(cfg: &ValidatedConfig) -> Result<TcpListener, i32> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    TcpListener::bind(&addr).await.map_err(|e| {
        eprintln!("cannot listen on {addr}: {e}");
        1
    })
}

/// Logs and traces for the process; exit 1 if the exporter cannot be built.
fn telemetry(cfg: &ValidatedConfig) -> Result<crate::telemetry::Telemetry, i32> {
    crate::telemetry::init(&cfg.log_level, cfg.log_format, cfg.otel().as_ref()).map_err(|e| {
        eprintln!("{e}");
        1
    })
}

pub async fn serve(cfg: ValidatedConfig, source: ConfigSource) -> i32 {
    let telemetry = match telemetry(&cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if !cfg.has_backends() {
        eprintln!("no backend configured: set BACKENDS=model:host:port,... or VLLM_SERVERS=host:port,...\n(to try LLMMux without vLLM, run `llmmux demo`)");
        return 2;
    }
    let listener = match bind(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let code = run_app(cfg, listener, source).await;
    telemetry.shutdown();
    code
}

async fn run_app(cfg: ValidatedConfig, listener: TcpListener, source: ConfigSource) -> i32 {
    if cfg.api_keys.is_empty() {
        warn!("API_KEYS is empty: the gateway is OPEN, anyone who can reach it can use it");
    }
    // Installed before the gateway says it listens: a SIGHUP that comes right after must
    // reload, and a SIGTERM drain, not take the default action (terminate).
    let shutdown = ShutdownSignal::install();
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangups = None::<()>;
    let app = match App::start_with_source(cfg, listener, Some(source)).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "cannot start");
            return 1;
        }
    };
    let reloads = tokio::spawn(reload_on_sighup(app.state.clone(), hangups));
    tokio::select! {
        _ = shutdown.wait() => info!("shutdown requested"),
        _ = app.escalated() => {},
    }
    reloads.abort();
    match app.shutdown().await {
        Exit::Requested => 0,
        Exit::Escalated => 1,
    }
}

/// SIGHUP re-reads the configuration; a refused one is logged and the old one stays.
#[cfg(unix)]
async fn reload_on_sighup(
    state: std::sync::Arc<crate::state::AppState>,
    hangups: Option<tokio::signal::unix::Signal>,
) {
    {
        let Some(mut hup) = hangups else {
            warn!("cannot listen for SIGHUP: reload only through POST /admin/reload");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            let result = crate::reload::reload(&state).await;
            if let Err(e) = &result {
                warn!(error = %e, "reload refused; the old configuration keeps serving");
            }
            // Recorded like `POST /admin/reload`: a signal is an operator's action too.
            if let Some(audit) = &state.audit {
                let (outcome, detail) = match &result {
                    Ok(report) => (
                        "success",
                        serde_json::json!({"trigger": "SIGHUP", "result": report.to_json()}),
                    ),
                    Err(e) => (
                        "failure",
                        serde_json::json!({"trigger": "SIGHUP", "error": e.to_string()}),
                    ),
                };
                audit.activity(
                    crate::audit::record::ActivityEntry::new("config_reload", outcome)
                        .detail(detail),
                );
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_state: std::sync::Arc<crate::state::AppState>, _hangups: Option<()>) {}

/// SIGTERM and SIGINT, listened for from the moment this is made: a signal that comes right
/// after a process says it listens must shut it down cleanly, not take the default action.
struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                _ = next(self.term) => {},
                _ = next(self.int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn migrate(cfg: ValidatedConfig) -> i32 {
    let Some(url) = &cfg.database_url else {
        eprintln!("migrate needs DATABASE_URL");
        return 2;
    };
    match crate::storage::migrate(url.expose()).await {
        Ok(applied) if applied.is_empty() => {
            println!("the database schema is up to date");
            0
        }
        Ok(applied) => {
            println!("applied: {}", applied.join(", "));
            0
        }
        Err(e) => {
            eprintln!("migration failed: {e}");
            1
        }
    }
}

async fn create_admin(cfg: ValidatedConfig, username: Option<String>) -> i32 {
    let Some(settings) = crate::storage::DbSettings::from_config(&cfg) else {
        eprintln!("create-admin needs DATABASE_URL");
        return 2;
    };
    if let Err(e) = crate::storage::migrate(settings.url.expose()).await {
        eprintln!("migration failed: {e}");
        return 1;
    }
    let username = username.unwrap_or_else(|| cfg.admin_username.clone());
    let password = match &cfg.admin_password {
        Some(p) => p.expose().to_owned(),
        None => match crate::identity::bootstrap::read_password("Password for the SUPER_ADMIN: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cannot read the password: {e}");
                return 2;
            }
        },
    };
    let db = match crate::storage::Db::new(&settings) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("cannot connect: {e}");
            return 1;
        }
    };
    let hook = crate::identity::activity_log();
    match crate::identity::bootstrap::create_admin(&db, &username, &password, &hook).await {
        Ok(crate::identity::bootstrap::AdminOutcome::Created) => {
            println!("created SUPER_ADMIN {username:?}");
            0
        }
        Ok(crate::identity::bootstrap::AdminOutcome::Reset) => {
            println!("reset {username:?} to an enabled SUPER_ADMIN with the new password");
            0
        }
        Err(e) => {
            eprintln!("create-admin failed: {e}");
            1
        }
    }
}

async fn sim_vllm(args: SimArgs) -> i32 {
    let _ = crate::telemetry::init("info", crate::config::LogFormat::Text, None);
    let tool_text = match args.tool_text.as_deref().map(str::parse::<ToolText>) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            eprintln!(
                "--tool-text: expected gptoss, harmony, hermes, llama3_json, mistral or pythonic"
            );
            return 2;
        }
    };
    let fault = match args.fault.as_deref().map(str::parse::<sim::Fault>) {
        None => sim::Fault::None,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("--fault: {e}");
            return 2;
        }
    };
    let cfg = SimConfig {
        models: args.models,
        latency_ms: args.latency_ms,
        ttft_ms: args.ttft_ms,
        token_delay_ms: args.token_delay_ms,
        completion_tokens: args.tokens,
        tool_text,
        prefill_ms: args.prefill_ms,
        health_delay_ms: args.health_delay_ms,
        health_path: (!args.no_health_route).then(|| "/health".to_owned()),
        ..SimConfig::default()
    };
    let addr = format!("{}:{}", args.host, args.port);
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let shutdown = ShutdownSignal::install();
    match sim::start(listener, cfg).await {
        Ok(h) => {
            h.set_fault(fault);
            println!("simulated vLLM server listening on http://{}", h.addr());
            shutdown.wait().await;
            h.shutdown();
            0
        }
        Err(e) => {
            eprintln!("cannot start the simulated server: {e}");
            1
        }
    }
}

/// Demo: three simulated vLLM servers (two replicas of a Hermes-style model that writes tool
/// calls as text, one Llama-3-style model) behind the gateway, with static keys.
async fn demo(file: Option<PathBuf>) -> i32 {
    let mut sims = Vec::new();
    let specs: [(&str, ToolText); 3] = [
        ("qwen3-8b", ToolText::Hermes),
        ("qwen3-8b", ToolText::Hermes),
        ("llama-3.1-8b-instruct", ToolText::Llama3Json),
    ];
    for (model, tool) in specs {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot start a simulated server: {e}");
                return 1;
            }
        };
        let cfg = SimConfig {
            models: vec![model.to_owned()],
            ttft_ms: 80,
            token_delay_ms: 25,
            completion_tokens: 24,
            tool_text: Some(tool),
            ..SimConfig::default()
        };
        match sim::start(listener, cfg).await {
            Ok(h) => sims.push(h),
            Err(e) => {
                eprintln!("cannot start a simulated server: {e}");
                return 1;
            }
        }
    }
    let servers = sims
        .iter()
        .map(|h| h.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let demo_env = move |name: &str| -> Option<String> {
        match name {
            "VLLM_SERVERS" => Some(servers.clone()),
            "BACKENDS" => Some(String::new()),
            "API_KEYS" => Some(std::env::var("API_KEYS").unwrap_or_else(|_| "sk-demo".into())),
            "ADMIN_API_KEYS" => {
                Some(std::env::var("ADMIN_API_KEYS").unwrap_or_else(|_| "sk-demo-admin".into()))
            }
            "HEALTH_CHECK_INTERVAL" => Some(std::env::var(name).unwrap_or_else(|_| "5000".into())),
            "DISCOVERY_INTERVAL" => Some(std::env::var(name).unwrap_or_else(|_| "10000".into())),
            "HOST" => Some(std::env::var(name).unwrap_or_else(|_| "127.0.0.1".into())),
            other => std::env::var(other).ok(),
        }
    };
    let source = ConfigSource {
        env: std::sync::Arc::new(demo_env),
        file,
    };
    let cfg = match source.load() {
        Ok(c) => c,
        Err(errors) => return report(&errors),
    };
    let telemetry = match telemetry(&cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let listener = match bind(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let addr: SocketAddr = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return 1,
    };
    let key = cfg
        .api_keys
        .first()
        .map(|k| k.expose().to_owned())
        .unwrap_or_default();
    println!(
        r#"
LLMMux demo: gateway on http://{addr} in front of 3 simulated vLLM servers
(models: qwen3-8b on two replicas, llama-3.1-8b-instruct). API key: {key}

  curl -s http://{addr}/v1/models -H 'Authorization: Bearer {key}'
  curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
    -d '{{"model":"qwen3-8b","messages":[{{"role":"user","content":"Hello"}}]}}'
  curl -sN http://{addr}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
    -d '{{"model":"qwen3-8b","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'
  # tool call written as text by the model, repaired into tool_calls by the gateway:
  curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
    -d '{{"model":"qwen3-8b","messages":[{{"role":"user","content":"Weather in Paris?"}}],"tools":[{{"type":"function","function":{{"name":"get_weather","parameters":{{"type":"object","properties":{{"city":{{"type":"string"}}}},"required":["city"]}}}}}}]}}'
  curl -s http://{addr}/admin/backends -H 'Authorization: Bearer {admin}'
  # the audit log of every request and admin action (kept in {journal}):
  curl -s 'http://{addr}/admin/audit/requests?limit=5' -H 'Authorization: Bearer {admin}'
  curl -s 'http://{addr}/admin/usage?group_by=model' -H 'Authorization: Bearer {admin}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="http://{addr}/v1", api_key="{key}"); print(c.chat.completions.create(model="qwen3-8b", messages=[{{"role":"user","content":"Hi"}}]).choices[0].message.content)'

Ctrl-C stops the demo.
"#,
        journal = if cfg.audit_enabled {
            cfg.audit_journal_path.display().to_string()
        } else {
            "nowhere: AUDIT_ENABLED=false".into()
        },
        admin = cfg
            .admin_api_keys
            .first()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default(),
    );
    let code = run_app(cfg, listener, source).await;
    for s in sims {
        s.shutdown();
    }
    telemetry.shutdown();
    code
}

/// The gateway's own address as its configuration says (YAML, env or `PORT_FILE`), so the
/// Docker HEALTHCHECK probes the port the gateway really listens on.
fn local_healthz(file: Option<PathBuf>) -> String {
    let (host, port) = match load_config(file, &process_env) {
        Ok(cfg) => (cfg.host.clone(), cfg.port),
        Err(_) => ("0.0.0.0".to_owned(), 8080),
    };
    let host = match host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_owned(),
    };
    format!("http://{host}:{port}/healthz")
}

async fn healthcheck(url: Option<String>, file: Option<PathBuf>) -> i32 {
    let url = url.unwrap_or_else(|| local_healthz(file));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return 1,
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            eprintln!("unhealthy: {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("unreachable: {e}");
            1
        }
    }
}
