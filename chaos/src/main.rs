//! `cargo run --release -p llmmux-chaos -- [scenario...] [--json] [--soak DURATION]`
//!
//! Builds the gateway with the fault-injection feature (or takes `LLMMUX_BIN`), runs the
//! named scenarios (all by default) against it, and prints one row per scenario as a
//! Markdown table, or as a JSON array on stdout with `--json`. Exits 1 if any row fails.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use llmmux_chaos::error::{ChaosError, Result};
use llmmux_chaos::harness::workspace_root;
use llmmux_chaos::report::{table, Row};
use llmmux_chaos::scenarios::{self, ALL};
use llmmux_chaos::Ctx;

struct Args {
    names: Vec<String>,
    json: bool,
    soak: Option<Duration>,
    short: bool,
    list: bool,
}

const USAGE: &str =
    "usage: llmmux-chaos [SCENARIO...] [--json] [--short] [--soak DURATION] [--list]";

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        names: Vec::new(),
        json: false,
        soak: None,
        short: false,
        list: false,
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--short" => a.short = true,
            "--list" => a.list = true,
            "--soak" => {
                // The duration is optional: `--soak` alone soaks for 30 minutes.
                let d = match it.peek() {
                    Some(v) if !v.starts_with("--") => {
                        let v = it.next().unwrap_or_default();
                        llmmux_chaos::soak::parse_duration(&v)
                            .ok_or_else(|| format!("--soak: bad duration `{v}`"))?
                    }
                    _ => Duration::from_secs(30 * 60),
                };
                a.soak = Some(d);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            name => a.names.push(name.to_owned()),
        }
    }
    Ok(a)
}

/// The gateway binary: `LLMMUX_BIN`, or built here with the fault-injection feature into
/// its own target dir (so it never mixes with the normal release build).
fn gateway_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LLMMUX_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let target = root.join("target").join("chaos");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building llmmux --release --features fault-injection into {}",
        target.display()
    );
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--features",
            "fault-injection",
            "--bin",
            "llmmux",
        ])
        .arg("--target-dir")
        .arg(&target)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| ChaosError::Build(e.to_string()))?;
    if !status.success() {
        return Err(ChaosError::Build(format!("cargo build: {status}")));
    }
    Ok(target.join("release").join("llmmux"))
}

async fn run(args: Args) -> Result<bool> {
    if args.list {
        print!("{}", scenarios::catalogue());
        return Ok(true);
    }
    for n in &args.names {
        if !ALL.iter().any(|s| s.name == n) {
            return Err(ChaosError::UnknownScenario(n.clone()));
        }
    }
    // 1,000 clients and their gateway sockets need more than the usual 1,024 descriptors;
    // the children inherit the raised limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
    let bin = gateway_bin()?;
    let log_dir = std::env::temp_dir().join(format!("llmmux-chaos-{}", std::process::id()));
    let margin = if args.short { 5.0 } else { 1.0 };
    let ctx = Ctx::new(bin, args.short, margin, log_dir.clone())?;
    eprintln!("child logs: {}", log_dir.display());
    let mut rows: Vec<Row> = Vec::new();
    if let Some(d) = args.soak {
        let row = match llmmux_chaos::soak::soak(&ctx, d).await {
            Ok((row, _)) => row,
            Err(e) => Row::broken("soak", &e),
        };
        rows.push(row);
    } else {
        let names: Vec<&str> = if args.names.is_empty() {
            ALL.iter().map(|s| s.name).collect()
        } else {
            args.names.iter().map(String::as_str).collect()
        };
        for name in names {
            eprintln!("running {name} ...");
            let row = scenarios::run(name, &ctx).await;
            eprintln!(
                "  {} {} — {}",
                if row.pass { "pass" } else { "FAIL" },
                row.figure,
                row.failures.join("; ")
            );
            rows.push(row);
        }
    }
    let all_pass = rows.iter().all(|r| r.pass);
    if args.json {
        let json =
            serde_json::to_string_pretty(&rows).map_err(|e| ChaosError::Protocol(e.to_string()))?;
        println!("{json}");
        eprint!("{}", table(&rows));
    } else {
        print!("{}", table(&rows));
    }
    Ok(all_pass)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let code = match run(args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}
