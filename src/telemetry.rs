//! Logging and tracing setup: `tracing` with `LOG_LEVEL` as an env-filter and `LOG_FORMAT`
//! text or json (every line inside a request carries its span, so its request id), and an
//! OpenTelemetry exporter (OTLP over HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set. Text logs are coloured only on a terminal and never when `NO_COLOR` is set.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Colour only for a human at a terminal (<https://no-color.org>).
pub fn use_colour(no_color: Option<&str>, stdout_is_terminal: bool) -> bool {
    stdout_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Where traces go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelConfig {
    /// `http://collector:4318` (the `/v1/traces` path is added).
    pub endpoint: String,
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the trace pipeline alive; flush it before the process ends.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export every finished span now (shutdown, tests).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Set once a subscriber with the OpenTelemetry layer is installed.
static EXPORTING_SPANS: AtomicBool = AtomicBool::new(false);

/// Whether spans leave the process. Only then does a request span carry its full set of
/// attributes: log lines need just the request id (the access line has the rest), and
/// formatting and recording the others was a sixth of a proxied request's instructions.
pub fn exporting_spans() -> bool {
    EXPORTING_SPANS.load(Ordering::Relaxed)
}

/// Whether an event may be logged whatever `LOG_LEVEL` asks for. tokio-postgres logs
/// every statement with its parameters at debug level: SQL text, password hashes and
/// credential digests, none of which may reach a log line.
fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
}

/// Install the global subscriber. A second call (tests) keeps the first subscriber.
pub fn init(
    level: &str,
    format: LogFormat,
    otel: Option<&OtelConfig>,
) -> Result<Telemetry, TelemetryError> {
    let filter = || EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::env::var("NO_COLOR").ok().as_deref(),
        std::io::stdout().is_terminal(),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(colour);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (otel_layer, provider) = match otel {
        Some(o) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", o.endpoint.trim_end_matches('/')))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder_empty()
                        .with_service_name(o.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("llmmux");
            // Only the request and attempt spans are exported, whatever LOG_LEVEL says.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new("llmmux=info"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    // Every layer carries its own filter, and an absent OpenTelemetry layer is left out
    // (an empty `Option` layer counts as interested in everything): otherwise every request
    // would build spans that no layer records.
    let registry =
        tracing_subscriber::registry().with(fmt.with_filter(filter().and(filter_fn(never_secret))));
    match otel_layer {
        Some(otel) => {
            if registry.with(otel).try_init().is_ok() {
                EXPORTING_SPANS.store(true, Ordering::Relaxed);
            }
        }
        None => {
            let _ = registry.try_init();
        }
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(None, true));
        assert!(!use_colour(None, false));
        assert!(!use_colour(Some("1"), true));
        assert!(use_colour(Some(""), true));
    }
}
