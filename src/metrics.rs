//! Prometheus metrics (`GET /metrics`, text format 0.0.4, `prometheus-client`).
//!
//! Request metrics come from the one outcome record per request ([`OutcomeSink`]), so they
//! count exactly what the access log and the audit log count. State that already lives
//! elsewhere (per-server in-flight counts and health, retries per model, actor restarts,
//! connections, tool-call repairs, the audit queue) is read at scrape time by a collector,
//! never copied on the hot path.
//!
//! Label values are bounded: `model` is the requested model only once it was routed (else
//! `none`), `endpoint` is the matched route pattern, `backend` a server id.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use llmmux_actors::root::SupervisionReport;
use llmmux_actors::table::SharedTable;

use crate::http::server::FrontDoor;
use crate::outcome::{OutcomeSink, RequestRecord};
use crate::proxy::retry::RetryBudgets;
use crate::toolcall::{Counters as ToolCallCounters, Family as ToolFamily};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

// Label sets are built for every request to look their series up: text labels are shared
// (`Arc<str>`: the server's id as it is, the model copied once) or static, numbers and flags
// are themselves. Owned strings cost seven allocations per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: Arc<str>,
    backend: Arc<str>,
    status: u16,
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    model: Arc<str>,
    endpoint: &'static str,
    stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~164 s
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Extra state read at scrape time (the audit writer's counters, say).
pub trait ScrapeSource: Send + Sync + 'static {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error>;
}

/// What the scrape-time collector reads.
pub struct Sources {
    pub table: Arc<SharedTable>,
    pub budgets: Arc<RetryBudgets>,
    pub supervision: SupervisionReport,
    pub front: Arc<FrontDoor>,
    pub toolcalls: Arc<ToolCallCounters>,
    pub extra: Vec<Arc<dyn ScrapeSource>>,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<LatencyLabels>,
    ttft: HistogramFamily<ModelLabel>,
    prompt_tokens: Family<ModelLabel, Counter>,
    completion_tokens: Family<ModelLabel, Counter>,
    rate_limited: Family<KindLabel, Counter>,
    /// The `none` label value, shared.
    none: Arc<str>,
}

impl Metrics {
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::with_prefix("llmmux");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<LatencyLabels> =
            Family::new_with_constructor(latency_histogram);
        let ttft: HistogramFamily<ModelLabel> = Family::new_with_constructor(latency_histogram);
        let prompt_tokens = Family::<ModelLabel, Counter>::default();
        let completion_tokens = Family::<ModelLabel, Counter>::default();
        let rate_limited = Family::<KindLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests by model, server, status and route",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to the end of the response",
            duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Streams: time until the first response byte reached the client",
            ttft.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens reported by the servers",
            prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Completion tokens reported by the servers (estimated for streams cut short)",
            completion_tokens.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a per-key limit, by kind",
            rate_limited.clone(),
        );
        registry.register_collector(Box::new(Live(sources)));
        Self {
            registry,
            requests,
            duration,
            ttft,
            prompt_tokens,
            completion_tokens,
            rate_limited,
            none: Arc::from("none"),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }

    /// A request refused by a per-key limit (`rpm`, `tpm`).
    pub fn rate_limited(&self, kind: &'static str) {
        self.rate_limited.get_or_create(&KindLabel { kind }).inc();
    }
}

impl OutcomeSink for Metrics {
    fn record(&self, r: &RequestRecord) {
        let none = || Arc::clone(&self.none);
        let model: Arc<str> = match (&r.backend, &r.model) {
            (Some(_), Some(m)) => m.as_str().into(),
            _ => none(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                backend: r.backend.as_ref().map_or_else(none, |b| b.0.clone()),
                status: r.status,
                endpoint: r.route,
            })
            .inc();
        self.duration
            .get_or_create(&LatencyLabels {
                model: model.clone(),
                endpoint: r.route,
                stream: r.stream,
            })
            .observe(r.latency.as_secs_f64());
        let label = ModelLabel { model };
        if r.stream && r.status == 200 {
            if let Some(t) = r.ttfb {
                self.ttft.get_or_create(&label).observe(t.as_secs_f64());
            }
        }
        if let Some(n) = r.prompt_tokens {
            self.prompt_tokens.get_or_create(&label).inc_by(n);
        }
        if let Some(n) = r.completion_tokens {
            self.completion_tokens.get_or_create(&label).inc_by(n);
        }
    }
}

/// State owned elsewhere, encoded at scrape time.
struct Live(Sources);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

pub(crate) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0i64);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(crate) fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let table = s.table.load();
        let servers: Vec<_> = table.backends.values().collect();
        let id =
            |e: &&llmmux_actors::table::BackendEntry| vec![("backend", e.handle.id.to_string())];
        gauge(
            &mut enc,
            "backend_in_flight",
            "Requests in flight per server",
            servers
                .iter()
                .map(|e| (id(e), i64::from(e.handle.in_flight.load(Ordering::Relaxed)))),
        )?;
        gauge(
            &mut enc,
            "backend_up",
            "1 when the server takes traffic (healthy or not yet probed, not drained)",
            servers.iter().map(|e| (id(e), i64::from(e.routable()))),
        )?;
        counter(
            &mut enc,
            "backend_ejections",
            "Passive ejections per server",
            servers
                .iter()
                .map(|e| (id(e), e.handle.ejections_total.load(Ordering::Relaxed))),
        )?;
        counter(
            &mut enc,
            "backend_busy_probes",
            "Health probes that timed out while the server kept sending responses (busy, not taken down)",
            servers
                .iter()
                .map(|e| (id(e), e.handle.busy_probes_total.load(Ordering::Relaxed))),
        )?;
        let budgets = s.budgets.snapshot();
        counter(
            &mut enc,
            "retries",
            "Retries on another server, per model",
            budgets
                .iter()
                .map(|(m, r, _)| (vec![("model", m.clone())], *r)),
        )?;
        counter(
            &mut enc,
            "retries_denied",
            "Retries the model's retry budget refused",
            budgets
                .iter()
                .map(|(m, _, d)| (vec![("model", m.clone())], *d)),
        )?;
        let restarts: Vec<_> = s
            .supervision
            .lock()
            .map(|r| {
                r.iter()
                    .map(|c| (vec![("actor", c.key.clone())], c.restarts))
                    .collect()
            })
            .unwrap_or_default();
        counter(
            &mut enc,
            "actor_restarts",
            "Restarts of each supervised actor",
            restarts,
        )?;
        gauge(
            &mut enc,
            "connections_open",
            "Client connections open",
            [(vec![], s.front.open.load(Ordering::Relaxed) as i64)],
        )?;
        counter(
            &mut enc,
            "connections_shed",
            "Connections refused over MAX_CONNECTIONS",
            [(vec![], s.front.shed.load(Ordering::Relaxed))],
        )?;
        let mut repairs = Vec::new();
        for f in ToolFamily::TRANSFORMING {
            let (converted, left, _) = s.toolcalls.get(f);
            for (result, n) in [("converted", converted), ("left_as_text", left)] {
                repairs.push((
                    vec![
                        ("family", f.as_str().to_owned()),
                        ("result", result.to_owned()),
                    ],
                    n,
                ));
            }
        }
        counter(
            &mut enc,
            "tool_call_repairs",
            "Tool calls written as text: repaired, or left as text",
            repairs,
        )?;
        for extra in &s.extra {
            extra.encode(&mut enc)?;
        }
        Ok(())
    }
}
