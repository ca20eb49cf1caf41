//! The global subscriber as `serve` installs it (one test per binary: the subscriber is
//! process-wide).

use llmmux::config::LogFormat;

/// Spans below LOG_LEVEL are never built (a span costs a registry slot, field formatting
/// and a lookup per poll); the request and attempt spans are at error level, so they are.
#[test]
fn spans_below_the_log_level_are_not_built() {
    let _t = llmmux::telemetry::init("warn", LogFormat::Text, None).expect("init");
    assert!(tracing::info_span!("detail").is_disabled());
    assert!(tracing::debug_span!("detail").is_disabled());
    assert!(!tracing::error_span!("request").is_disabled());
}
