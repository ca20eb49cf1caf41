//! Every scenario in its short form against the gateway that `cargo test` builds (the
//! example `llmmux_gateway`: the binary's `main` linked with the fault-injection feature),
//! with deadlines asserted at 5× the promise. `LLMMUX_BIN` overrides the binary.
//!
//! Why an example and not a nested `cargo build`: cargo holds the target directory's lock
//! while tests run, so a nested build would need a second target dir and a second full
//! compile of the gateway; the example is built by the same `cargo test` invocation, from
//! the same sources.

use std::path::PathBuf;

use llmmux_chaos::report::table;
use llmmux_chaos::scenarios;
use llmmux_chaos::Ctx;

fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMMUX_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/scenarios-<hash> → target/<profile>/examples/llmmux_gateway
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("llmmux_gateway");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test -p llmmux-chaos` (which builds the example) or set LLMMUX_BIN",
        bin.display()
    );
    bin
}

async fn check(name: &str) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let log_dir =
        std::env::temp_dir().join(format!("llmmux-chaos-test-{name}-{}", std::process::id()));
    let ctx = Ctx::new(gateway_bin(), true, 5.0, log_dir.clone()).expect("context");
    let row = scenarios::run(name, &ctx).await;
    println!("{}", table(std::slice::from_ref(&row)));
    // The children are gone with the scenario; their logs are kept only when it failed.
    if row.pass {
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    assert!(
        row.pass,
        "{name} failed: {:?} (child logs in {})",
        row.failures,
        log_dir.display()
    );
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                check($name).await;
            }
        )*

        /// Every scenario of the catalogue has a test here.
        #[test]
        fn every_scenario_is_tested() {
            let tested = [$($name),*];
            for s in scenarios::ALL {
                assert!(tested.contains(&s.name), "no test for {}", s.name);
            }
        }
    };
}

scenario_tests! {
    kill_mid_stream => "kill-mid-stream",
    backend_hang => "backend-hang",
    unavailable_then_recover => "503-then-recover",
    latency_jitter => "latency-jitter",
    bandwidth => "bandwidth",
    slicer => "slicer",
    limit_data => "limit-data",
    timeout_stall => "timeout-stall",
    sim_reset => "sim-reset",
    flapping => "flapping",
    discovery_churn => "discovery-churn",
    disconnect_wave => "disconnect-wave",
    panic_registry => "panic-registry",
    panic_discovery => "panic-discovery",
    panic_health => "panic-health",
    panic_stream => "panic-stream",
    panic_audit => "panic-audit",
    db_outage => "db-outage",
    overload => "overload",
    half_503_late_start => "half-503-late-start",
    bad_utf8 => "bad-utf8",
    huge_event => "huge-event",
    headers_then_silence => "headers-then-silence",
    never_ends => "never-ends",
}
