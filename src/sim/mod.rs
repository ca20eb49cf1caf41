//! Simulated vLLM OpenAI-compatible server for tests, demos and benchmarks.
//!
//! Wire format follows real vLLM 0.32 captures (`tests/fixtures/vllm-samples/`):
//! response field sets and order, SSE framing, `{"error":{..,"code":<int>}}` errors,
//! `/health` with an empty body, `/v1/models` ModelCards, `/metrics`, `/version`.
//!
//! Start with [`start`] on an already bound listener; steer it with the returned
//! [`SimHandle`] (in process) or the `/sim/*` control routes (out of process), or per
//! request with the `x-sim-fault` header.
#![forbid(unsafe_code)]

mod server;
mod tooltext;
mod vllm;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

pub use tooltext::render_tool_text;

/// Static configuration of a simulated server. Everything can also be changed at
/// runtime (`POST /sim/config`, [`SimHandle::update_config`]).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Served names; the first one is the name used in every response's `model`.
    pub models: Vec<String>,
    /// Context length reported in `/v1/models` and used for validation.
    pub max_model_len: u32,
    /// Delay before response headers of every inference request.
    pub latency_ms: u64,
    /// Streams: delay before the first generated token (after the role chunk).
    pub ttft_ms: u64,
    /// Streams: delay between generated tokens.
    pub token_delay_ms: u64,
    /// Default number of generated tokens (capped by `max_tokens`).
    pub completion_tokens: u32,
    /// When set and the chat request has non-empty `tools`, emit a tool call as text.
    pub tool_text: Option<ToolText>,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Streams: delay between the response headers and the first SSE event (queueing and
    /// prefill on a busy GPU; vLLM sends its headers at once). Non-stream: added before
    /// the answer.
    pub prefill_ms: u64,
    /// The health route (`/health` like vLLM, SGLang, llama.cpp); `None` for engines and
    /// providers without one (Ollama, hosted APIs): it answers 404.
    pub health_path: Option<String>,
    /// Delay before the health route answers: an API server too busy to answer probes
    /// promptly while it keeps generating.
    pub health_delay_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            models: vec!["sim-model".to_string()],
            max_model_len: 4096,
            latency_ms: 0,
            ttft_ms: 0,
            token_delay_ms: 0,
            completion_tokens: 16,
            tool_text: None,
            api_key: None,
            prefill_ms: 0,
            health_delay_ms: 0,
            health_path: Some("/health".into()),
        }
    }
}

/// Text format in which a simulated model "writes" a tool call into `content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolText {
    /// `{"name": "f", "arguments": {...}}` as the whole content (gpt-oss failure mode A1).
    GptOssJson,
    /// Raw harmony markup: analysis message + `commentary to=functions.f` call (B1/B9).
    GptOssHarmony,
    /// `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`.
    Hermes,
    /// `{"name": "f", "parameters": {...}}`.
    Llama3Json,
    /// `[TOOL_CALLS][{"name": "f", "arguments": {...}}]`.
    Mistral,
    /// `[f(a="x", b=1)]`.
    Pythonic,
}

/// Error for unparsable [`ToolText`] / [`Fault`] strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseSimError(pub String);

impl FromStr for ToolText {
    type Err = ParseSimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gptoss" | "gpt-oss" | "gptoss_json" | "gpt_oss" => Ok(Self::GptOssJson),
            "harmony" | "gptoss_harmony" => Ok(Self::GptOssHarmony),
            "hermes" => Ok(Self::Hermes),
            "llama3_json" | "llama3" => Ok(Self::Llama3Json),
            "mistral" => Ok(Self::Mistral),
            "pythonic" => Ok(Self::Pythonic),
            other => Err(ParseSimError(format!("unknown tool text family `{other}`"))),
        }
    }
}

impl ToolText {
    /// Canonical name (accepted by `FromStr`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::GptOssJson => "gptoss",
            Self::GptOssHarmony => "harmony",
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
            Self::Pythonic => "pythonic",
        }
    }
}

/// Failure injected into inference requests (chat, completions, embeddings, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answer this status with a vLLM-shaped error body; 503 adds `Retry-After: 1`.
    Status(u16),
    /// Read the request, never send headers (until the client goes away).
    Hang,
    /// Read the request, then reset the connection (RST) before any response byte.
    CloseBeforeHeaders,
    /// Streams: N SSE events then a connection reset (no `[DONE]`). Non-stream: half of
    /// the body (content-length announced in full) then a reset.
    ResetAfter(u32),
    /// Streams: N SSE events then silence with the socket open. Non-stream: half of the
    /// body then silence.
    StallAfter(u32),
    /// Streams: each SSE event is delayed by this many ms (instead of the token delay).
    /// Non-stream: this many ms extra before the headers.
    Drip(u64),
    /// 404 "The model `X` does not exist." for every model.
    ModelNotFound,
    /// Streams: N SSE events, then a vLLM in-stream error event
    /// `data: {"error":{..,"code":500}}` and `data: [DONE]`. Non-stream: 500.
    ErrorAfter(u32),
    /// Every `every`-th inference request (the 1st, the `every+1`-th, ...) answers `status`;
    /// the others are served normally.
    StatusEvery { status: u16, every: u32 },
    /// Streams: N SSE events, then bytes that are not UTF-8, then the rest of the stream.
    BadUtf8After(u32),
    /// Streams: N SSE events, then one `data:` event of this many bytes, then the rest.
    HugeEvent { after: u32, bytes: u64 },
    /// Streams: the last event (`data: [DONE]`) is not followed by its blank line.
    NoFinalBlankLine,
}

impl FromStr for Fault {
    type Err = ParseSimError;
    /// Mini syntax: `none`, `status=503`, `hang`, `close_before_headers`,
    /// `reset_after=3`, `stall_after=2`, `drip=50`, `model_not_found`, `error_after=2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s, None),
        };
        let name = name.to_ascii_lowercase().replace('-', "_");
        let num = |what: &str| -> Result<u64, ParseSimError> {
            arg.ok_or_else(|| ParseSimError(format!("fault `{name}` needs `={what}`")))?
                .parse::<u64>()
                .map_err(|_| ParseSimError(format!("fault `{name}`: bad number")))
        };
        let n32 = |what: &str| -> Result<u32, ParseSimError> {
            u32::try_from(num(what)?).map_err(|_| ParseSimError("number too large".into()))
        };
        Ok(match name.as_str() {
            "" | "none" | "off" => Fault::None,
            "status" => {
                let st = n32("STATUS")?;
                if !(100..=999).contains(&st) {
                    return Err(ParseSimError(format!("bad status {st}")));
                }
                Fault::Status(st as u16)
            }
            "hang" => Fault::Hang,
            "close_before_headers" | "close" | "reset_before_headers" => Fault::CloseBeforeHeaders,
            "reset_after" => Fault::ResetAfter(n32("N")?),
            "stall_after" => Fault::StallAfter(n32("N")?),
            "drip" => Fault::Drip(num("MS")?),
            "model_not_found" => Fault::ModelNotFound,
            "error_after" => Fault::ErrorAfter(n32("N")?),
            "status_every" => {
                let a = arg.ok_or_else(|| ParseSimError("status_every needs =STATUS/N".into()))?;
                let (st, n) = a
                    .split_once('/')
                    .ok_or_else(|| ParseSimError("status_every needs =STATUS/N".into()))?;
                let status = st
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| ParseSimError("status_every: bad status".into()))?;
                let every = n
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ParseSimError("status_every: bad N".into()))?;
                Fault::StatusEvery { status, every }
            }
            "bad_utf8_after" => Fault::BadUtf8After(n32("N")?),
            "huge_event" => {
                let a = arg.ok_or_else(|| ParseSimError("huge_event needs =AFTER:BYTES".into()))?;
                let (after, bytes) = a
                    .split_once(':')
                    .ok_or_else(|| ParseSimError("huge_event needs =AFTER:BYTES".into()))?;
                Fault::HugeEvent {
                    after: after
                        .trim()
                        .parse()
                        .map_err(|_| ParseSimError("huge_event: bad AFTER".into()))?,
                    bytes: bytes
                        .trim()
                        .parse()
                        .map_err(|_| ParseSimError("huge_event: bad BYTES".into()))?,
                }
            }
            "no_final_blank_line" => Fault::NoFinalBlankLine,
            other => return Err(ParseSimError(format!("unknown fault `{other}`"))),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => write!(f, "none"),
            Fault::Status(s) => write!(f, "status={s}"),
            Fault::Hang => write!(f, "hang"),
            Fault::CloseBeforeHeaders => write!(f, "close_before_headers"),
            Fault::ResetAfter(n) => write!(f, "reset_after={n}"),
            Fault::StallAfter(n) => write!(f, "stall_after={n}"),
            Fault::Drip(ms) => write!(f, "drip={ms}"),
            Fault::ModelNotFound => write!(f, "model_not_found"),
            Fault::ErrorAfter(n) => write!(f, "error_after={n}"),
            Fault::StatusEvery { status, every } => write!(f, "status_every={status}/{every}"),
            Fault::BadUtf8After(n) => write!(f, "bad_utf8_after={n}"),
            Fault::HugeEvent { after, bytes } => write!(f, "huge_event={after}:{bytes}"),
            Fault::NoFinalBlankLine => write!(f, "no_final_blank_line"),
        }
    }
}

/// Snapshot of the simulator's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimStats {
    /// All HTTP requests except the `/sim/*` control plane.
    pub requests: u64,
    /// Requests to inference routes (chat, completions, embeddings, responses, ...).
    pub inference_requests: u64,
    /// `/health` and `/ping`.
    pub health_probes: u64,
    /// `/v1/models`.
    pub models_requests: u64,
    pub active_connections: u64,
    /// Inference requests whose response is still being produced.
    pub active_requests: u64,
    /// Inference responses cut short because the peer went away.
    pub client_disconnects: u64,
    /// Headers of the last inference request (lower-case names, in arrival order).
    pub last_headers: Vec<(String, String)>,
    /// Body of the last inference request (None if it was not JSON).
    pub last_body: Option<serde_json::Value>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    inference_requests: AtomicU64,
    health_probes: AtomicU64,
    models_requests: AtomicU64,
    active_connections: AtomicU64,
    active_requests: AtomicU64,
    completed_requests: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
}

struct Mutable {
    cfg: SimConfig,
    /// Accept connections but answer nothing at all, health checks included.
    silent: bool,
    fault: Fault,
    health: u16,
    last_headers: Vec<(String, String)>,
    last_body: Option<serde_json::Value>,
}

pub(crate) struct Shared {
    counters: Counters,
    mutable: Mutex<Mutable>,
    disconnects: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.mutable.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn add_disconnect(&self) {
        self.disconnects.send_modify(|c| *c += 1);
    }
}

/// Handle to a running simulator. Cheap to clone.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }
    /// `http://IP:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }
    /// Global fault for all following inference requests (`x-sim-fault` overrides it).
    pub fn set_fault(&self, f: Fault) {
        self.shared.lock().fault = f;
    }
    pub fn fault(&self) -> Fault {
        self.shared.lock().fault
    }
    /// Status `/health` and `/ping` answer (always with an empty body).
    pub fn set_health(&self, status: u16) {
        self.shared.lock().health = status;
    }
    /// Accept connections but never answer anything, `/health` included (a wedged host).
    pub fn set_silent(&self, silent: bool) {
        self.shared.lock().silent = silent;
    }
    pub fn set_models(&self, models: Vec<String>) {
        self.shared.lock().cfg.models = models;
    }
    pub fn set_tool_text(&self, t: Option<ToolText>) {
        self.shared.lock().cfg.tool_text = t;
    }
    /// Change any part of the configuration at runtime.
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.shared.lock().cfg);
    }
    pub fn config(&self) -> SimConfig {
        self.shared.lock().cfg.clone()
    }
    pub fn stats(&self) -> SimStats {
        stats_snapshot(&self.shared)
    }
    /// Wait until `client_disconnects >= at_least`; false on timeout.
    pub async fn wait_disconnects(&self, at_least: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.disconnects.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= at_least))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
    /// Stop accepting and reset every open connection (a killed server).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

fn stats_snapshot(shared: &Shared) -> SimStats {
    let c = &shared.counters;
    let (last_headers, last_body) = {
        let m = shared.lock();
        (m.last_headers.clone(), m.last_body.clone())
    };
    SimStats {
        requests: c.requests.load(Ordering::SeqCst),
        inference_requests: c.inference_requests.load(Ordering::SeqCst),
        health_probes: c.health_probes.load(Ordering::SeqCst),
        models_requests: c.models_requests.load(Ordering::SeqCst),
        active_connections: c.active_connections.load(Ordering::SeqCst),
        active_requests: c.active_requests.load(Ordering::SeqCst),
        client_disconnects: *shared.disconnects.borrow(),
        last_headers,
        last_body,
    }
}

/// Serve the simulator on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn start(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        mutable: Mutex::new(Mutable {
            cfg,
            fault: Fault::None,
            health: 200,
            silent: false,
            last_headers: Vec::new(),
            last_body: None,
        }),
        disconnects: watch::channel(0).0,
        shutdown: watch::channel(false).0,
        addr,
    });
    tokio::spawn(server::accept_loop(listener, shared.clone()));
    Ok(SimHandle { shared })
}
