//! The client side: one chat request judged as an OpenAI client would judge it, and bounded
//! load (a fixed number of requests, or a fixed time) at a fixed concurrency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 200; a stream ended with `data: [DONE]` and no error event.
    Ok,
    /// Any other status (with the error `code` of the body when there is one).
    Http(u16, String),
    /// A stream that ended with an SSE error event (its `code`) and `[DONE]`.
    StreamError(String),
    /// A stream with an error event but no `[DONE]` after it, or one that stopped without
    /// either: a silent end, the failure P1 forbids.
    Truncated,
    /// The connection failed (refused, reset) before an answer.
    Transport,
    /// No end within the client's timeout: a hang.
    Timeout,
}

impl Verdict {
    /// The key this verdict is counted under in the report (None for success).
    pub fn kind(&self) -> Option<String> {
        match self {
            Verdict::Ok => None,
            Verdict::Http(s, code) if code.is_empty() => Some(format!("http_{s}")),
            Verdict::Http(s, code) => Some(format!("http_{s}_{code}")),
            Verdict::StreamError(code) => Some(format!("sse_{code}")),
            Verdict::Truncated => Some("truncated".into()),
            Verdict::Transport => Some("transport".into()),
            Verdict::Timeout => Some("timeout".into()),
        }
    }
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub verdict: Verdict,
    pub stream: bool,
    pub started: Instant,
    /// First response body byte (streams: the first SSE bytes).
    pub first_byte: Option<Instant>,
    pub ended: Instant,
    /// Generated text (streams: the concatenated `delta.content`).
    pub text: String,
    /// Raw body bytes received.
    pub bytes: usize,
    pub retry_after: bool,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct Chat {
    pub base: String,
    pub key: String,
    pub model: String,
    pub stream: bool,
    pub timeout: Duration,
    /// Drop the connection after this many body bytes (a client that goes away).
    pub abort_after_bytes: Option<usize>,
    /// `max_tokens` of the request (the simulator generates at most this many).
    pub max_tokens: Option<u32>,
}

impl Chat {
    pub fn new(base: &str, key: &str, model: &str, stream: bool) -> Chat {
        Chat {
            base: base.to_owned(),
            key: key.to_owned(),
            model: model.to_owned(),
            stream,
            timeout: Duration::from_secs(30),
            abort_after_bytes: None,
            max_tokens: None,
        }
    }

    pub fn max_tokens(mut self, n: u32) -> Chat {
        self.max_tokens = Some(n);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Chat {
        self.timeout = t;
        self
    }
}

fn body(c: &Chat) -> Value {
    let mut v = serde_json::json!({
        "model": c.model,
        "stream": c.stream,
        "messages": [{"role": "user", "content": "chaos"}],
    });
    if let Some(n) = c.max_tokens {
        v["max_tokens"] = n.into();
    }
    v
}

/// Send one request and judge it. Never panics: every failure is a verdict.
pub async fn send(http: &reqwest::Client, c: &Chat) -> Sample {
    let started = Instant::now();
    let mut s = Sample {
        verdict: Verdict::Transport,
        stream: c.stream,
        started,
        first_byte: None,
        ended: started,
        text: String::new(),
        bytes: 0,
        retry_after: false,
    };
    let run = async {
        let r = http
            .post(format!("{}/v1/chat/completions", c.base))
            .bearer_auth(&c.key)
            .json(&body(c))
            .send()
            .await;
        let mut r = match r {
            Ok(r) => r,
            Err(_) => return (Verdict::Transport, Vec::new()),
        };
        let status = r.status().as_u16();
        s.retry_after = r.headers().contains_key("retry-after");
        let mut buf = Vec::new();
        loop {
            match r.chunk().await {
                Ok(Some(chunk)) => {
                    if s.first_byte.is_none() {
                        s.first_byte = Some(Instant::now());
                    }
                    buf.extend_from_slice(&chunk);
                    if c.abort_after_bytes.is_some_and(|n| buf.len() >= n) {
                        // Dropping the response closes the connection: a client gone.
                        return (Verdict::Ok, buf);
                    }
                }
                Ok(None) => break,
                // A connection cut mid-body: judged by what arrived (a stream without its
                // terminal events is `Truncated`).
                Err(_) if status == 200 && c.stream => break,
                Err(_) => return (Verdict::Transport, buf),
            }
        }
        if status != 200 {
            let code = serde_json::from_slice::<Value>(&buf)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return (Verdict::Http(status, code), buf);
        }
        (Verdict::Ok, buf)
    };
    let (verdict, buf) = match tokio::time::timeout(c.timeout, run).await {
        Ok(v) => v,
        Err(_) => (Verdict::Timeout, Vec::new()),
    };
    s.ended = Instant::now();
    s.bytes = buf.len();
    s.verdict = match verdict {
        Verdict::Ok if c.abort_after_bytes.is_some() => Verdict::Ok,
        Verdict::Ok if c.stream => {
            let (v, text) = judge_stream(&buf);
            s.text = text;
            v
        }
        Verdict::Ok => match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => {
                s.text = v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Verdict::Ok
            }
            Err(_) => Verdict::Truncated,
        },
        other => other,
    };
    s
}

/// Judge an SSE body: `[DONE]` last and no error event is success; an error event followed
/// by `[DONE]` is a clean error end; anything else ended silently.
pub fn judge_stream(buf: &[u8]) -> (Verdict, String) {
    let text = String::from_utf8_lossy(buf);
    let mut content = String::new();
    let mut error: Option<String> = None;
    let mut last = "";
    for event in text.split("\n\n") {
        for line in event.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            last = data;
            if data == "[DONE]" {
                continue;
            }
            match serde_json::from_str::<Value>(data) {
                Ok(v) if v.get("error").is_some() => {
                    error = Some(
                        v["error"]["code"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| "error".into()),
                    );
                }
                Ok(v) => {
                    if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                        content.push_str(t);
                    }
                }
                Err(_) => {}
            }
        }
    }
    let done = last == "[DONE]" && text.ends_with("\n\n");
    let verdict = match (error, done) {
        (None, true) => Verdict::Ok,
        (Some(code), true) => Verdict::StreamError(code),
        _ => Verdict::Truncated,
    };
    (verdict, content)
}

/// Bounded load: `concurrency` workers until `total` requests were sent or `duration`
/// passed (whichever comes first) or `stop` is set.
#[derive(Debug, Clone)]
pub struct Load {
    pub chat: Chat,
    pub concurrency: usize,
    pub total: Option<usize>,
    pub duration: Option<Duration>,
    /// Every n-th request streams (1: all, 2: every second, 0: none).
    pub stream_every: usize,
    /// Wait this long after a 429/503 before the next request (a client honouring
    /// `Retry-After` a little, instead of spinning on the gateway's CPU).
    pub backoff_on_reject: Option<Duration>,
}

/// Run a load to its end.
pub async fn drive(http: &reqwest::Client, load: &Load, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        let (http, load, stop, next) = (http.clone(), load.clone(), stop.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed)
                    || load.duration.is_some_and(|d| started.elapsed() >= d)
                {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if load.total.is_some_and(|t| i >= t) {
                    break;
                }
                let mut chat = load.chat.clone();
                chat.stream = load.stream_every > 0 && i % load.stream_every == 0;
                let s = send(&http, &chat).await;
                let rejected = matches!(s.verdict, Verdict::Http(429 | 503, _));
                out.push(s);
                if let (true, Some(b)) = (rejected, load.backoff_on_reject) {
                    tokio::time::sleep(b).await;
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(v) = w.await {
            all.extend(v);
        }
    }
    all
}

/// A load running in the background until [`Background::finish`].
pub struct Background {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Background {
    pub fn start(http: &reqwest::Client, load: Load) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let (http, s) = (http.clone(), stop.clone());
        let task = tokio::spawn(async move { drive(&http, &load, s).await });
        Background { stop, task }
    }

    /// Wait for a load with its own limit (count or time) to end by itself.
    pub async fn finish_when_done(self) -> Vec<Sample> {
        self.task.await.unwrap_or_default()
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Requests, errors by kind, p50 and p99 of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Tally {
    pub fn of(samples: &[Sample]) -> Tally {
        let mut t = Tally {
            requests: samples.len() as u64,
            ..Tally::default()
        };
        for s in samples {
            if let Some(k) = s.verdict.kind() {
                *t.errors.entry(k).or_default() += 1;
            }
        }
        let lat: Vec<Duration> = samples.iter().map(Sample::latency).collect();
        t.p50_ms = ms(percentile(&lat, 0.50));
        t.p99_ms = ms(percentile(&lat, 0.99));
        t
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Add another set (rows that combine phases).
    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.p50_ms = self.p50_ms.max(other.p50_ms);
        self.p99_ms = self.p99_ms.max(other.p99_ms);
    }
}

/// Nearest-rank percentile; zero for no samples.
pub fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}
