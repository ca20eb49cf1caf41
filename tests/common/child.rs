//! The `llmmux` binary as a child process: spawn, wait for a line, read its memory and
//! descriptors from /proc, SIGTERM, and kill-and-reap when a test ends early.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary with a clean environment (only `PATH`).
pub fn llmmux() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmmux"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    audit_files(&mut c);
    c
}

/// The audit spool and journal of a test process go to a fresh directory of their own,
/// never into the checkout.
pub fn audit_files(c: &mut Command) {
    let dir = super::scratch_dir("audit");
    c.env("AUDIT_SPOOL_DIR", dir.join("spool"))
        .env("AUDIT_JOURNAL_PATH", dir.join("audit.jsonl"));
}

/// The binary under `ulimit -n nofile`.
pub fn llmmux_with_nofile(nofile: u32) -> Command {
    let mut c = Command::new("sh");
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_llmmux"));
    audit_files(&mut c);
    c
}

/// A child process that is killed and reaped if the test ends early.
pub struct Running(
    pub std::process::Child,
    pub std::sync::mpsc::Receiver<String>,
);

impl Running {
    /// Spawn and wait (up to 20 s) for a stdout line that `find` accepts; return its answer.
    pub fn spawn_until(cmd: Command, find: impl Fn(&str) -> Option<String>) -> (Running, String) {
        Self::spawn_capturing(cmd, false, find)
    }

    /// As [`Running::spawn_until`]; with `stderr`, standard error's lines go to the same
    /// channel as standard output's.
    pub fn spawn_capturing(
        mut cmd: Command,
        stderr: bool,
        find: impl Fn(&str) -> Option<String>,
    ) -> (Running, String) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(if stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let running = Running(child, rx);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let line = match running
                .1
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => line,
                Err(e) => panic!(
                    "expected output ({e}); the child printed:\n{}",
                    seen.join("\n")
                ),
            };
            if let Some(found) = find(&line) {
                return (running, found);
            }
            seen.push(line);
        }
    }

    /// SIGTERM, then the exit code (None if it did not stop within 10 s).
    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `http://host:port` printed after `marker` on a line.
pub fn addr_after(marker: &'static str) -> impl Fn(&str) -> Option<String> {
    move |line| {
        let rest = line.split(marker).nth(1)?;
        Some(
            rest.trim_start()
                .trim_start_matches("http://")
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect(),
        )
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Lines the child printed since the last call.
    pub fn drain_lines(&self) -> Vec<String> {
        self.1.try_iter().collect()
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Start `llmmux serve` with `vars` and JSON logs; its address.
pub fn serve(cmd: Command, vars: &[(&str, String)]) -> (Running, String) {
    serve_capturing(cmd, vars, false)
}

/// As [`serve`]; with `stderr`, standard error is captured as well (every line of both
/// arrives in `Running::1`).
pub fn serve_capturing(
    mut cmd: Command,
    vars: &[(&str, String)],
    stderr: bool,
) -> (Running, String) {
    cmd.arg("serve")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FORMAT", "json");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Running::spawn_capturing(cmd, stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "llmmux listening")
            .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
    })
}
