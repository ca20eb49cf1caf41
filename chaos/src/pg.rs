//! A throwaway PostgreSQL server for the database-outage scenario: `initdb` in a temp dir,
//! a random loopback port, trust auth, run as the `postgres` user when we are root (initdb
//! refuses root). The machine's server (127.0.0.1:5432) is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{ChaosError, Result};
use crate::harness::free_port;

fn pg_bin(name: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    match versions.last() {
        Some(v) if v.join("bin").join(name).exists() => v.join("bin").join(name),
        _ => PathBuf::from(name),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_pg(bin: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
        c
    } else {
        Command::new(pg_bin(bin))
    }
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| ChaosError::Pg(format!("{what}: {e} (is PostgreSQL installed?)")))?;
    if !out.status.success() {
        return Err(ChaosError::Pg(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

pub struct ThrowawayPg {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

impl ThrowawayPg {
    pub fn start() -> Result<ThrowawayPg> {
        let dir = tempfile::Builder::new()
            .prefix("llmmux-chaos-pg-")
            .tempdir()?;
        if is_root() {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(dir.path());
            run(c, "chown of the temp dir")?;
        }
        let mut c = as_pg("initdb");
        c.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(dir.path().join("data"));
        run(c, "initdb")?;
        let mut pg = ThrowawayPg {
            dir,
            port: free_port()?,
            running: false,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// `DATABASE_URL` for the gateway.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop (fast: sessions are cut), waiting until it is down.
    pub fn stop(&mut self) -> Result<()> {
        let mut c = as_pg("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["stop", "-m", "fast", "-w"]);
        run(c, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Start again on the same port, waiting until it accepts connections.
    pub fn resume(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let mut c = as_pg("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start");
        run(c, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// Wait until a TCP connection to the server succeeds.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        if self.running {
            let mut c = as_pg("pg_ctl");
            c.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["stop", "-m", "immediate", "-w"]);
            let _ = c.output();
        }
    }
}
