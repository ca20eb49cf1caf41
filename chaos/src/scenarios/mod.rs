//! The scenarios. Each one starts its own gateway and servers (nothing is shared, so a
//! scenario can kill anything it started), injects one fault, drives bounded load, and
//! returns one [`Row`]. Its pass conditions are in its doc comment; deadlines are
//! multiplied by [`Ctx::margin`].

mod backend;
mod database;
mod disconnect;
mod discovery;
mod misbehave;
mod network;
mod overload;
mod panics;

use crate::error::ChaosError;
use crate::harness::Ctx;
use crate::report::Row;

/// A scenario as listed by `--list` and in the README's table.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub fault: &'static str,
    pub pass: &'static str,
    pub figure: &'static str,
}

const fn s(
    name: &'static str,
    fault: &'static str,
    pass: &'static str,
    figure: &'static str,
) -> Scenario {
    Scenario {
        name,
        fault,
        pass,
        figure,
    }
}

/// Every scenario, in the order of issue 12's list.
pub const ALL: &[Scenario] = &[
    s("kill-mid-stream", "SIGKILL one of two servers with streams open",
      "every stream on it ends with an SSE error event + [DONE] ≤ 2 s after the kill; 0 silent ends; 0 failures afterwards",
      "slowest kill → stream end"),
    s("backend-hang", "one of two servers accepts and never answers inference",
      "0 client errors; every request ≤ FIRST_BYTE_TIMEOUT (1 s) + 1 s; upstream attempts ≤ 1.2 × requests + 3",
      "attempts / requests, slowest request"),
    s("503-then-recover", "one of two servers answers 503 for 30 s (short: 3 s), then recovers",
      "0 client errors; ejected (metrics); re-admitted ≤ EJECT_MAX + 1 s after recovery; attempts ≤ 1.2 × requests + 3",
      "recovery → first request served again"),
    s("latency-jitter", "noxious latency 50 ± 25 ms both ways + slow_close 200 ms",
      "every stream byte-identical to the clean one (or an error event); 0 hangs",
      "added p50 vs. the clean path"),
    s("bandwidth", "noxious bandwidth 1 KB/s from the server",
      "every stream byte-identical; first byte reaches the client before the last one leaves the server (no buffering)",
      "client TTFB p50 vs. stream duration p50"),
    s("slicer", "noxious slicer: SSE cut into 1–3 byte TCP writes",
      "every stream byte-identical to the clean one; 0 errors", "streams compared"),
    s("limit-data", "noxious limit_data: each upstream connection cut after 2,000 bytes",
      "every stream complete and identical, or ended with an error event (prefix intact) or a 502 before any byte; 0 silent ends, 0 hangs",
      "streams cut, bytes before the cut"),
    s("timeout-stall", "the server stops after 5 SSE events, socket open",
      "every stream ends with an SSE error event ≤ STREAM_IDLE_TIMEOUT (1 s) + 1 s after the stall",
      "slowest stall → stream end"),
    s("sim-reset", "the server resets the connection after 5 SSE events",
      "every stream = a prefix of the clean one + error event + [DONE]; never retried after the first byte",
      "upstream attempts per stream"),
    s("flapping", "one of two servers SIGKILLed and restarted: up 2 s / down 2 s for 60 s (short: 8 s)",
      "error rate < 1 %", "error rate"),
    s("discovery-churn", "a model appears and disappears on a server every 500 ms under load",
      "0 errors for the model still served elsewhere; 0 5xx for the other model", "model flips"),
    s("disconnect-wave", "1,000 clients (short: 200) drop their streams at once, three times",
      "every stream opens; upstream requests closed ≤ 1 s; fds, threads, connections and in-flight back to baseline; RSS peaks of waves 2 and 3 ≤ wave 1 + 5 %, every allocation written (malloc.perturb)",
      "wave → upstream closed"),
    s("panic-registry", "the registry actor panics 3× under load (fault-injection endpoint)",
      "a new request served ≤ 100 ms after each panic; restart ≤ 100 ms + backoff (0/50/100 ms); 0 failed requests", "restart times"),
    s("panic-discovery", "the discovery actor panics 3× under load",
      "a new request served ≤ 100 ms after each panic; restart ≤ 100 ms + backoff (0/50/100 ms); 0 failed requests", "restart times"),
    s("panic-health", "a health actor panics 3× under load",
      "a new request served ≤ 100 ms after each panic; restart ≤ 100 ms + backoff (0/50/100 ms); 0 failed requests", "restart times"),
    s("panic-audit", "the audit writer panics 3× under load",
      "a new request served ≤ 100 ms after each panic; restart ≤ 100 ms + backoff (0/50/100 ms); 0 failed requests", "restart times"),
    s("panic-stream", "a stream actor panics 3× under load",
      "only the crashed streams fail, each with an error event + [DONE]; a new request served ≤ 100 ms after each panic", "crashed streams"),
    s("db-outage", "the (throwaway) PostgreSQL stopped for 10 s (short: 2 s) under load",
      "cached database keys: 0 errors; login gets 503 ≤ 2 s + 100 ms, an unknown key 401/503 as fast; new keys work again ≤ 5 s after PostgreSQL is back; every request in the audit log once ≤ 10 s after",
      "login → 503; recovery"),
    s("overload", "10× MAX_IN_FLIGHT concurrent clients on slow servers",
      "excess gets 429/503 with Retry-After ≤ 100 ms; admitted p99 ≤ unloaded p99 + 10 % + 20 ms; RSS growth ≤ 64 MiB",
      "rejection p99, admitted p99"),
    s("half-503-late-start", "one server answers 503 to every 2nd request; another starts 1 s after the gateway; concurrency 64",
      "0 client errors", "client errors, late server's share"),
    s("bad-utf8", "the server sends bytes that are not UTF-8 mid-stream",
      "every stream ends with an error event + [DONE] at once", "slowest stream end"),
    s("huge-event", "the server sends one 50 MiB SSE event",
      "every stream ends with an error event + [DONE]; gateway RSS growth ≤ 64 MiB", "RSS growth"),
    s("headers-then-silence", "the server sends headers, then nothing",
      "every stream ends (error event or 504) ≤ REQUEST_TIMEOUT (3 s) + 1 s", "slowest end"),
    s("never-ends", "the server stalls half-way (stream and whole answer); the answer never ends",
      "streams end with an error event ≤ idle timeout + 1 s; whole answers get 504 ≤ REQUEST_TIMEOUT + 1 s",
      "slowest end"),
];

/// Run one scenario by name; a setup failure is a failed row.
pub async fn run(name: &str, ctx: &Ctx) -> Row {
    let result = match name {
        "kill-mid-stream" => backend::kill_mid_stream(ctx).await,
        "backend-hang" => backend::hang(ctx).await,
        "503-then-recover" => backend::unavailable_then_recover(ctx).await,
        "flapping" => backend::flapping(ctx).await,
        "half-503-late-start" => backend::half_503_late_start(ctx).await,
        "latency-jitter" => network::latency_jitter(ctx).await,
        "bandwidth" => network::bandwidth(ctx).await,
        "slicer" => network::slicer(ctx).await,
        "limit-data" => network::limit_data(ctx).await,
        "timeout-stall" => network::timeout_stall(ctx).await,
        "sim-reset" => network::sim_reset(ctx).await,
        "discovery-churn" => discovery::churn(ctx).await,
        "disconnect-wave" => disconnect::wave(ctx).await,
        "panic-registry" => panics::panic(ctx, "registry").await,
        "panic-discovery" => panics::panic(ctx, "discovery").await,
        "panic-health" => panics::panic(ctx, "health").await,
        "panic-stream" => panics::panic(ctx, "stream").await,
        "panic-audit" => panics::panic(ctx, "audit").await,
        "db-outage" => database::outage(ctx).await,
        "overload" => overload::overload(ctx).await,
        "bad-utf8" => misbehave::bad_utf8(ctx).await,
        "huge-event" => misbehave::huge_event(ctx).await,
        "headers-then-silence" => misbehave::headers_then_silence(ctx).await,
        "never-ends" => misbehave::never_ends(ctx).await,
        other => Err(ChaosError::UnknownScenario(other.to_owned())),
    };
    result.unwrap_or_else(|e| Row::broken(name, &e))
}

/// The README's scenario table (name, fault, pass condition, figure).
pub fn catalogue() -> String {
    let mut out =
        String::from("| scenario | fault | pass condition | figure |\n|---|---|---|---|\n");
    for s in ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.name, s.fault, s.pass, s.figure
        ));
    }
    out
}

/// Simulator arguments: model `m`, `tokens` tokens, `delay` ms between them.
fn sim_args(tokens: u32, delay_ms: u64) -> Vec<String> {
    vec![
        "--model".into(),
        "m".into(),
        "--tokens".into(),
        tokens.to_string(),
        "--token-delay-ms".into(),
        delay_ms.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn fmt_ms(d: std::time::Duration) -> String {
    format!("{} ms", crate::client::ms(d))
}
