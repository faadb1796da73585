//! A PRIVATE MariaDB for the enrichment tests that stop, restart or reconfigure the database
//! (`tests/enrich_partial.rs`, `tests/enrich_cdc.rs`): `scripts/services.sh up` with
//! `SERVICES=mariadb`, its own `LOCAL_DIR` (`.local/<name>-test`) and port, so the shared
//! instance (3306) is never touched. The binary log is on or off as asked (`MYSQL_BINLOG`),
//! which the configuration file takes at every start. Whatever `start` started is stopped when
//! the guard drops. One test at a time per process holds it (a lock).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

pub struct PrivateDb {
    _lock: MutexGuard<'static, ()>,
    dir: PathBuf,
    port: u16,
    binlog: bool,
    record: PathBuf,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl PrivateDb {
    /// Starts (or reuses) the private MariaDB `name` on `port` (`port_var` overrides it), with
    /// the binary log on or off; a first start initializes it (~10 s).
    pub fn start(name: &str, port_var: &str, default_port: u16, binlog: bool) -> PrivateDb {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let port = std::env::var(port_var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default_port);
        let dir = repo_root().join(format!(".local/{name}-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let record = dir.join(format!("started-by-test-{}", std::process::id()));
        let db = PrivateDb {
            _lock: lock,
            dir,
            port,
            binlog,
            record,
        };
        // A server left running with the other binary-log setting is restarted with this one.
        if db.running() && db.sql_admin("SELECT @@log_bin").trim() != if binlog { "1" } else { "0" }
        {
            db.stop();
        }
        db.services(&["up", "--record", db.record.to_str().unwrap()]);
        db
    }

    fn services(&self, args: &[&str]) {
        let out = Command::new(repo_root().join("scripts/services.sh"))
            .args(args)
            .env("LOCAL_DIR", &self.dir)
            .env("SERVICES", "mariadb")
            .env("MYSQL_PORT", self.port.to_string())
            .env("MYSQL_BINLOG", if self.binlog { "on" } else { "off" })
            .env("SERVICES_MODE", "local")
            .env_remove("S3")
            .output()
            .expect("run scripts/services.sh");
        assert!(
            out.status.success(),
            "private MariaDB `{}` failed ({}, port {}; set another port with the test's \
             RECLAMACOES_*_MYSQL_PORT if it is taken):\n{}",
            args.join(" "),
            self.dir.display(),
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!(
            "mysql://reclamacoes:reclamacoes@127.0.0.1:{}/reclamacoes_db",
            self.port
        )
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("mysql/mariadbd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn running(&self) -> bool {
        self.pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Stops it (SIGTERM, as an administrator would) and waits until it is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(") Z ") {
                break;
            }
            assert!(Instant::now() < deadline, "MariaDB pid {pid} did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts it again after [`stop`](Self::stop) and waits until it answers.
    pub fn start_again(&self) {
        self.services(&["up"]);
    }

    /// Runs SQL as the application user; the output, tab separated.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &self.port.to_string(),
                "-u",
                "reclamacoes",
                "-preclamacoes",
                "-N",
                "-B",
                "reclamacoes_db",
                "-e",
                sql,
            ])
            .output()
            .expect("mariadb client");
        assert!(
            out.status.success(),
            "SQL `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs SQL as the administrator (socket).
    pub fn sql_admin(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .arg(format!(
                "--defaults-file={}",
                self.dir.join("mysql/my.cnf").display()
            ))
            .args(["--protocol=socket", "-u", "root", "-N", "-B", "-e", sql])
            .output()
            .expect("mariadb client");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if self.record.exists() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.services(&["down", "--only", self.record.to_str().unwrap()])
            }));
            let _ = std::fs::remove_file(&self.record);
        }
    }
}
