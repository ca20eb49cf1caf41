//! PostgreSQL for tests: a fresh database per test on the machine's server (created here,
//! dropped when the handle drops), and throwaway server instances for tests that take the
//! database away (never the machine's server).
//!
//! A missing server is a test failure with a message saying how to start it, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::Rng;

/// The machine's PostgreSQL (trust auth, user `postgres`).
pub const MACHINE_PG: &str = "host=127.0.0.1 port=5432 user=postgres";

fn admin_conn_string(host_port: &str) -> String {
    format!("{host_port} dbname=postgres connect_timeout=5")
}

async fn connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = match tokio_postgres::connect(conn, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable ({conn}): {e}. Tests need it running: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test, dropped (with FORCE) when this handle drops.
pub struct TestDb {
    pub name: String,
    server: String,
}

impl TestDb {
    /// Create a fresh database on the machine's server.
    pub async fn create() -> TestDb {
        Self::create_on(MACHINE_PG).await
    }

    /// Create a fresh database on the server at `server` ("host=... port=... user=...").
    pub async fn create_on(server: &str) -> TestDb {
        let name = format!("llmmux_t_{:016x}", rand::rng().random::<u64>());
        let admin = connect(&admin_conn_string(server)).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        TestDb {
            name,
            server: server.to_owned(),
        }
    }

    /// `postgres://` URL for `DATABASE_URL`.
    pub fn url(&self) -> String {
        let (host, port) = host_port(&self.server);
        format!("postgres://postgres@{host}:{port}/{}", self.name)
    }

    /// A direct client for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&format!("{} dbname={}", self.server, self.name)).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_conn_string(&server), tokio_postgres::NoTls)
                        .await
                {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn host_port(server: &str) -> (String, String) {
    let mut host = "127.0.0.1".to_owned();
    let mut port = "5432".to_owned();
    for part in server.split_whitespace() {
        if let Some(h) = part.strip_prefix("host=") {
            host = h.to_owned();
        } else if let Some(p) = part.strip_prefix("port=") {
            port = p.to_owned();
        }
    }
    (host, port)
}

fn pg_bin(name: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    match versions.last() {
        Some(v) => v.join("bin").join(name),
        None => PathBuf::from(name),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Run a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn as_pg(bin: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
        c
    } else {
        Command::new(pg_bin(bin))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A PostgreSQL server of its own (initdb in a temp dir, random port, trust auth), for
/// tests that stop and restart the database. Stopped and deleted on drop.
pub struct ThrowawayPg {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

impl ThrowawayPg {
    pub fn start() -> ThrowawayPg {
        let dir = tempfile::Builder::new()
            .prefix("llmmux-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the throwaway PostgreSQL directory failed");
        }
        let data = dir.path().join("data");
        let out = as_pg("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs (is PostgreSQL installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = ThrowawayPg {
            dir,
            port: free_port(),
            running: false,
        };
        pg.resume();
        pg
    }

    /// `host=127.0.0.1 port=N user=postgres` for [`TestDb::create_on`].
    pub fn server(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// Stop the server (fast shutdown: connections are cut).
    pub fn stop(&mut self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
        self.running = false;
    }

    /// Start it again on the same port.
    pub fn resume(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(&log)
            .arg("start")
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    fn pg_ctl(&self, args: &[&str]) {
        let _ = as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output();
    }

    /// Wait until the server accepts connections again (after `resume`).
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let conn = admin_conn_string(&self.server());
            if tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        if self.running {
            self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}
