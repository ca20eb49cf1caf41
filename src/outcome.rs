//! One record per request, finished exactly once on every path.
//!
//! The router opens an [`Outcome`] when a request arrives; the proxy fills it in (model,
//! server, attempts, tokens, how a stream ended) and the response body marks the first byte
//! the client received. Clones share one record; when the last clone drops (the response
//! body finished or was dropped, the handler future was cancelled, a stream's pump ended,
//! a panic unwound through any of them) the record is completed and handed to every
//! [`OutcomeSink`]: the access log, metrics, the audit log and token limits read the same record.
//! Finishing in `Drop` is what makes "exactly once" hold by construction.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use llmmux_actors::table::BackendId;

use crate::principal::Principal;

/// Status recorded when a request ended before any response was produced (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// The finished record of one request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub id: String,
    /// When the request arrived (fixed when the record is made).
    pub ts: SystemTime,
    pub method: http::Method,
    /// Request path.
    pub endpoint: String,
    /// The route pattern it matched (`unmatched` if none): a bounded label for metrics.
    pub route: &'static str,
    pub client_addr: IpAddr,
    pub principal: Option<Arc<Principal>>,
    /// The model the client asked for.
    pub model: Option<String>,
    /// The server that answered (the last one tried).
    pub backend: Option<BackendId>,
    pub stream: bool,
    /// Status sent to the client; [`CLIENT_CLOSED`] if none was.
    pub status: u16,
    /// Machine-readable reason when the request did not end normally (`upstream_timeout`,
    /// `client_gone`, ...), also for streams that started with 200.
    pub error: Option<&'static str>,
    /// Upstream attempts made.
    pub attempts: u32,
    pub latency: Duration,
    /// Time until the first response byte was handed to the client connection.
    pub ttfb: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Request and answer bodies, only with `AUDIT_BODIES=true`.
    pub bodies: Option<Box<Bodies>>,
}

/// Bodies kept for the audit log (clipped to `AUDIT_BODY_MAX_BYTES`).
#[derive(Clone, Debug, Default)]
pub struct Bodies {
    pub request: Option<String>,
    /// The answer of a non-streamed request.
    pub response: Option<String>,
}

/// Where finished records go. Called once per request, on the task that dropped the last
/// handle: implementations must not block (hand off to a queue if they do I/O).
pub trait OutcomeSink: Send + Sync + 'static {
    fn record(&self, rec: &RequestRecord);
}

/// The sinks every record goes to, in order.
#[derive(Default)]
pub struct OutcomeSinks(Vec<Arc<dyn OutcomeSink>>);

impl OutcomeSinks {
    pub fn new(sinks: Vec<Arc<dyn OutcomeSink>>) -> Self {
        Self(sinks)
    }
}

struct Cell {
    start: Instant,
    /// The request's span, kept open until the record finishes, which then writes the
    /// OpenTelemetry GenAI attributes onto it.
    span: tracing::Span,
    rec: Mutex<RequestRecord>,
    sinks: Arc<OutcomeSinks>,
}

impl Drop for Cell {
    fn drop(&mut self) {
        let rec = self.rec.get_mut().unwrap_or_else(|p| p.into_inner());
        rec.latency = self.start.elapsed();
        if rec.status == 0 {
            rec.status = CLIENT_CLOSED;
            rec.error.get_or_insert("client_gone");
        }
        annotate(&self.span, rec);
        for sink in &self.sinks.0 {
            sink.record(rec);
        }
    }
}

/// A shared handle on the record of one request in progress.
#[derive(Clone)]
pub struct Outcome(Arc<Cell>);

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Outcome").field(&self.lock().id).finish()
    }
}

impl Outcome {
    pub fn begin(
        id: String,
        method: http::Method,
        endpoint: &str,
        client_addr: IpAddr,
        sinks: Arc<OutcomeSinks>,
        span: tracing::Span,
    ) -> Self {
        Self(Arc::new(Cell {
            start: Instant::now(),
            span,
            rec: Mutex::new(RequestRecord {
                id,
                ts: SystemTime::now(),
                method,
                endpoint: endpoint.to_owned(),
                route: "unmatched",
                client_addr,
                principal: None,
                model: None,
                backend: None,
                stream: false,
                status: 0,
                error: None,
                attempts: 0,
                latency: Duration::ZERO,
                ttfb: None,
                prompt_tokens: None,
                completion_tokens: None,
                bodies: None,
            }),
            sinks,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, RequestRecord> {
        self.0.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the record in progress.
    pub fn update(&self, f: impl FnOnce(&mut RequestRecord)) {
        f(&mut self.lock());
    }

    pub fn client_ip(&self) -> IpAddr {
        self.lock().client_addr
    }

    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    pub fn elapsed(&self) -> Duration {
        self.0.start.elapsed()
    }

    /// The response status sent to the client.
    pub fn respond(&self, status: u16) {
        self.lock().status = status;
    }

    /// Why the request did not end normally; the first reason given wins.
    pub fn fail(&self, why: &'static str) {
        self.lock().error.get_or_insert(why);
    }

    /// The first response byte reached the client connection (first call wins).
    pub fn first_byte(&self) {
        let at = self.0.start.elapsed();
        self.lock().ttfb.get_or_insert(at);
    }

    pub fn usage(&self, prompt_tokens: u64, completion_tokens: u64) {
        let mut rec = self.lock();
        rec.prompt_tokens = Some(prompt_tokens);
        rec.completion_tokens = Some(completion_tokens);
    }
}

/// GenAI semantic-convention operation of a route.
fn operation(route: &str) -> &'static str {
    match route {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        "/v1/responses" => "chat",
        _ => "other",
    }
}

/// The attributes tracing and OpenTelemetry exporters read (fields declared by the router's
/// request span; unknown fields are ignored by `tracing`).
fn annotate(span: &tracing::Span, r: &RequestRecord) {
    if span.is_disabled() || !crate::telemetry::exporting_spans() {
        return;
    }
    let op = operation(r.route);
    span.record("http.response.status_code", r.status);
    span.record("llmmux.attempts", r.attempts);
    if let Some(m) = &r.model {
        span.record("gen_ai.request.model", m.as_str());
        // The GenAI span name, "{operation} {model}". The exported span may already exist
        // (child spans were entered), so rename it there as well.
        let name = format!("{op} {m}");
        span.record("otel.name", name.as_str());
        {
            use opentelemetry::trace::TraceContextExt;
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            span.context().span().update_name(name);
        }
    }
    if op != "other" {
        span.record("gen_ai.operation.name", op);
        span.record("gen_ai.system", "vllm");
    }
    if let Some(b) = &r.backend {
        span.record("llmmux.backend", b.as_str());
    }
    if let Some(n) = r.prompt_tokens {
        span.record("gen_ai.usage.input_tokens", n);
    }
    if let Some(n) = r.completion_tokens {
        span.record("gen_ai.usage.output_tokens", n);
    }
    if let Some(e) = r.error {
        span.record("error.type", e);
    }
    if r.status >= 500 || (r.error.is_some() && r.status < 400) {
        span.record("otel.status_code", "ERROR");
    }
}

/// One access-log line per request.
pub struct AccessLog;

impl OutcomeSink for AccessLog {
    fn record(&self, r: &RequestRecord) {
        tracing::info!(
            target: "llmmux::access",
            request_id = %r.id,
            principal = r.principal.as_deref().map(Principal::label).unwrap_or("-"),
            client = %r.client_addr,
            method = %r.method,
            path = %r.endpoint,
            model = r.model.as_deref().unwrap_or("-"),
            server = r.backend.as_ref().map(BackendId::as_str).unwrap_or("-"),
            stream = r.stream,
            status = r.status,
            error = r.error.unwrap_or("-"),
            attempts = r.attempts,
            latency_ms = r.latency.as_secs_f64() * 1000.0,
            ttfb_ms = r.ttfb.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize, Mutex<Vec<RequestRecord>>);
    impl OutcomeSink for Count {
        fn record(&self, rec: &RequestRecord) {
            self.0.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut v) = self.1.lock() {
                v.push(rec.clone());
            }
        }
    }

    fn begin(sink: &Arc<Count>) -> Outcome {
        Outcome::begin(
            "r1".into(),
            http::Method::POST,
            "/v1/chat/completions",
            IpAddr::from([127, 0, 0, 1]),
            Arc::new(OutcomeSinks::new(vec![sink.clone()])),
            tracing::Span::none(),
        )
    }

    #[test]
    fn finished_once_when_the_last_clone_drops() {
        let sink = Arc::new(Count::default());
        let o = begin(&sink);
        let (a, b) = (o.clone(), o.clone());
        drop(o);
        a.respond(200);
        a.first_byte();
        drop(a);
        assert_eq!(sink.0.load(Ordering::SeqCst), 0);
        b.fail("client_gone");
        b.fail("ignored: the first reason wins");
        drop(b);
        assert_eq!(sink.0.load(Ordering::SeqCst), 1);
        let rec = sink.1.lock().expect("records")[0].clone();
        assert_eq!(rec.status, 200);
        assert_eq!(rec.error, Some("client_gone"));
        assert!(rec.ttfb.is_some());
    }

    #[test]
    fn a_request_dropped_before_answering_is_recorded_as_client_closed() {
        let sink = Arc::new(Count::default());
        drop(begin(&sink));
        let rec = sink.1.lock().expect("records")[0].clone();
        assert_eq!(rec.status, CLIENT_CLOSED);
        assert_eq!(rec.error, Some("client_gone"));
    }

    #[test]
    fn a_panic_while_holding_the_record_still_finishes_it() {
        let sink = Arc::new(Count::default());
        let o = begin(&sink);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            o.respond(200);
            panic!("boom");
        }));
        assert!(r.is_err());
        assert_eq!(sink.0.load(Ordering::SeqCst), 1);
    }
}
