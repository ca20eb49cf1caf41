//! Soak mode (`--soak 30m`): one gateway and three servers under steady load while every
//! kind of fault is injected in turn; memory, descriptors, threads and in-flight requests
//! sampled over time. Not run in CI (it takes as long as it is told to).

use std::time::{Duration, Instant};

use rand::Rng;

use crate::client::{Background, Chat, Load, Tally};
use crate::error::{ChaosError, Result};
use crate::harness::{backends, metric, Ctx, Gateway, ProcStats, Sim, KEY};
use crate::report::Row;

/// `30m`, `90s`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// One sample of the gateway's resources.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub at_s: u64,
    #[serde(flatten)]
    pub proc: ProcStats,
    pub in_flight: f64,
    pub connections: f64,
}

/// Run the soak; one row with the series summarised, every sample printed to stderr.
pub async fn soak(ctx: &Ctx, total: Duration) -> Result<(Row, Vec<Sample>)> {
    let mut row = Row::new("soak", "all faults in turn");
    let args = ["--model", "m", "--tokens", "16", "--token-delay-ms", "5"];
    let mut sims = [
        Sim::start(ctx, "a", &args).await?,
        Sim::start(ctx, "b", &args).await?,
        Sim::start(ctx, "c", &args).await?,
    ];
    let refs: Vec<&Sim> = sims.iter().collect();
    let mut gw = Gateway::start(
        ctx,
        &[
            ("BACKENDS", backends("m", &refs)),
            (
                "VLLM_SERVERS",
                sims.iter().map(Sim::addr).collect::<Vec<_>>().join(","),
            ),
        ],
    )
    .await?;
    gw.wait_healthy(3, Duration::from_secs(10)).await?;
    let bg = Background::start(
        &ctx.http,
        Load {
            chat: Chat::new(&gw.base(), KEY, "m", false),
            concurrency: 8,
            total: None,
            duration: Some(total),
            stream_every: 2,
            backoff_on_reject: Some(Duration::from_millis(20)),
        },
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut faults = 0u64;
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < total {
        if started.elapsed() >= next_sample {
            let m = gw.metrics().await.unwrap_or_default();
            let s = Sample {
                at_s: started.elapsed().as_secs(),
                proc: gw.proc(),
                in_flight: metric(&m, "llmmux_backend_in_flight", &[]),
                connections: metric(&m, "llmmux_connections_open", &[]),
            };
            eprintln!(
                "soak t={}s rss={} MiB fds={} threads={} in_flight={} conns={}",
                s.at_s,
                s.proc.rss_kib / 1024,
                s.proc.fds,
                s.proc.threads,
                s.in_flight,
                s.connections
            );
            samples.push(s);
            next_sample += Duration::from_secs(10);
        }
        // The rng is not held across an await (it is not Send).
        let (pick, victim) = {
            let mut rng = rand::rng();
            (rng.random_range(0..8u32), rng.random_range(0..sims.len()))
        };
        let sim = &mut sims[victim];
        match pick {
            0 => {
                sim.kill().await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                sim.launch().await?;
            }
            1..=4 => {
                let fault =
                    ["status=503", "hang", "reset_after=3", "stall_after=2"][(pick - 1) as usize];
                sim.fault(fault).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                sim.fault("none").await?;
            }
            5 => {
                sim.control("models", serde_json::json!({"models": ["other"]}))
                    .await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                sim.control("models", serde_json::json!({"models": ["m"]}))
                    .await?;
            }
            _ => {
                let actor = ["registry", "discovery", "health", "stream"][victim % 4];
                let _ = gw.crash(actor).await?;
            }
        }
        faults += 1;
        if !gw.alive() {
            return Err(ChaosError::Exited {
                what: "gateway".into(),
                status: "during the soak".into(),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let t = Tally::of(&bg.finish().await);
    row.tally(&t);
    let rate = t.failed() as f64 / t.requests.max(1) as f64 * 100.0;
    let (first, last) = (samples.first().cloned(), samples.last().cloned());
    let max_rss = samples.iter().map(|s| s.proc.rss_kib).max().unwrap_or(0);
    if let (Some(f), Some(l)) = (first, last) {
        row.check(
            l.proc.fds <= f.proc.fds + 32,
            format!("fds grew {} → {}", f.proc.fds, l.proc.fds),
        );
        row.evidence = format!(
            "{faults} faults; RSS {} → {} MiB (max {}), fds {} → {}, threads {} → {}",
            f.proc.rss_kib / 1024,
            l.proc.rss_kib / 1024,
            max_rss / 1024,
            f.proc.fds,
            l.proc.fds,
            f.proc.threads,
            l.proc.threads
        );
    }
    row.check(gw.alive(), "the gateway exited");
    row.figure = format!("error rate {rate:.3} % over {} s", total.as_secs());
    Ok((row, samples))
}
