//! Helpers of the fault, bad-input and security tests (`tests/faults.rs`, `tests/bad_input.rs`,
//! `tests/security.rs`):
//!
//! - [`Private`]: a PRIVATE Kafka + MariaDB (`scripts/services.sh` with
//!   `LOCAL_DIR=.local/faults`, ports 19092/19093/13306, or `RECLAMACOES_FAULTS_KAFKA_PORT`,
//!   `RECLAMACOES_FAULTS_KAFKA_CONTROLLER_PORT`, `RECLAMACOES_FAULTS_MYSQL_PORT`, so that two
//!   checkouts can run the fault suite at once) that tests may stop and start; the shared
//!   instance (9092/3306) is never stopped. Tests that use it hold a process-wide lock, so they
//!   run one at a time; whatever `acquire` started is stopped again when the guard drops.
//! - the helpers of `tests/common` its tests use (the `app` binary against given services, the
//!   independent Parquet reader [`duckdb`], [`scalar`], [`walk`], polling; re-exported), a topic
//!   reader (rskafka), a Banco Central CSV generator, and child-process helpers ([`spawn`] reads
//!   a child's output while it runs, so a chatty child never blocks on a full pipe; waits with a
//!   bound).
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;
// Re-exported for the crates that use them (each crate uses some).
#[allow(unused_imports)]
pub use common::{
    app_with as app, connect, duckdb, kafka_config_for as kafka_config, output, partition,
    repo_root, scalar, wait_for, wait_until, walk,
};
pub mod secure_broker;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// A port of the private instance: `var` when set, else `default`.
fn private_port(var: &str, default: u16) -> u16 {
    match std::env::var(var) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            panic!("{var}={v:?} is not a TCP port; set it to a free port (1-65535) or unset it")
        }),
        Err(_) => default,
    }
}

/// Kafka listener of the private instance (`RECLAMACOES_FAULTS_KAFKA_PORT`, default 19092).
pub fn private_kafka_port() -> u16 {
    private_port("RECLAMACOES_FAULTS_KAFKA_PORT", 19092)
}

/// Kafka controller of the private instance (`RECLAMACOES_FAULTS_KAFKA_CONTROLLER_PORT`, 19093).
pub fn private_kafka_controller_port() -> u16 {
    private_port("RECLAMACOES_FAULTS_KAFKA_CONTROLLER_PORT", 19093)
}

/// MariaDB of the private instance (`RECLAMACOES_FAULTS_MYSQL_PORT`, default 13306).
pub fn private_mysql_port() -> u16 {
    private_port("RECLAMACOES_FAULTS_MYSQL_PORT", 13306)
}

pub fn private_dir() -> PathBuf {
    repo_root().join(".local/faults")
}

pub fn private_brokers() -> String {
    format!("127.0.0.1:{}", private_kafka_port())
}

pub fn private_mysql_url() -> String {
    common::mysql_url_on_port(private_mysql_port())
}

static PRIVATE_LOCK: Mutex<()> = Mutex::new(());

/// The private Kafka + MariaDB, held by one test at a time.
pub struct Private {
    _lock: MutexGuard<'static, ()>,
    record: PathBuf,
}

impl Private {
    /// Takes the lock and starts whatever of the private instance is not running (the first
    /// start formats Kafka and initializes MariaDB under `.local/faults`, ~20 s).
    pub fn acquire() -> Private {
        let lock = PRIVATE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(private_dir()).unwrap();
        // Reuse the shared instance's Kafka jars instead of resolving them with maven again.
        let libs = private_dir().join("kafka/libs");
        let shared_libs = common::kafka_dir().join("libs");
        if !libs.join(".pom.sha256").exists() && shared_libs.join(".pom.sha256").exists() {
            std::fs::create_dir_all(private_dir().join("kafka")).unwrap();
            let status = Command::new("cp")
                .arg("-a")
                .arg(&shared_libs)
                .arg(private_dir().join("kafka/"))
                .status()
                .unwrap();
            assert!(status.success(), "copying the Kafka jars failed");
        }
        let record = private_dir().join(format!("started-by-test-{}", std::process::id()));
        let p = Private {
            _lock: lock,
            record,
        };
        p.services(&["up", "--record", p.record.to_str().unwrap()]);
        p
    }

    fn services(&self, args: &[&str]) {
        let out = Command::new(repo_root().join("scripts/services.sh"))
            .args(args)
            .env("LOCAL_DIR", private_dir())
            .env("KAFKA_PORT", private_kafka_port().to_string())
            .env(
                "KAFKA_CONTROLLER_PORT",
                private_kafka_controller_port().to_string(),
            )
            .env("MYSQL_PORT", private_mysql_port().to_string())
            .env("SERVICES_MODE", "local")
            // The fault suite needs no S3 server; `make test` exports S3=1 for the shared one,
            // whose port a private instance must not try to take.
            .env_remove("S3")
            .output()
            .expect("run scripts/services.sh");
        assert!(
            out.status.success(),
            "private services `{}` failed (LOCAL_DIR=.local/faults, ports {}/{}/{}; another checkout \
             running the fault suite needs other RECLAMACOES_FAULTS_*_PORT values):\n{}",
            args.join(" "),
            private_kafka_port(),
            private_kafka_controller_port(),
            private_mysql_port(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pid(&self, file: &str) -> Option<u32> {
        std::fs::read_to_string(private_dir().join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn kill_and_wait(&self, pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() {
            // A zombie (exited, not yet reaped by its parent) counts as stopped.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(") Z ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} did not exit after {signal}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the private broker with SIGKILL (a crash, not a clean shutdown).
    pub fn kill_kafka(&self) {
        let pid = self
            .pid("kafka/kafka.pid")
            .expect("the private Kafka has a pid file");
        self.kill_and_wait(pid, "-KILL");
    }

    /// Stops the private broker cleanly (SIGTERM): on its next start it skips log recovery, so
    /// it serves its segments as they are on disk.
    pub fn stop_kafka(&self) {
        let pid = self
            .pid("kafka/kafka.pid")
            .expect("the private Kafka has a pid file");
        self.kill_and_wait(pid, "-TERM");
    }

    /// Freezes the private broker (SIGSTOP): its connections stay open and it answers nothing,
    /// as a broker in a long GC pause or on a stalled disk; requests sent meanwhile wait in its
    /// socket buffers until [`Private::resume_kafka`].
    pub fn pause_kafka(&self) {
        self.signal_kafka("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT): it then handles what it received meanwhile.
    pub fn resume_kafka(&self) {
        self.signal_kafka("-CONT");
    }

    fn signal_kafka(&self, signal: &str) {
        let pid = self
            .pid("kafka/kafka.pid")
            .expect("the private Kafka has a pid file");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Stops the private MariaDB (SIGTERM, as an administrator would).
    pub fn stop_mysql(&self) {
        let pid = self
            .pid("mysql/mariadbd.pid")
            .expect("the private MariaDB has a pid file");
        self.kill_and_wait(pid, "-TERM");
    }

    /// Starts whatever is not running (after `kill_kafka` / `stop_mysql`) and waits until ready.
    pub fn start_again(&self) {
        self.services(&["up"]);
    }

    /// Runs SQL on the private MariaDB as the application user.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &private_mysql_port().to_string(),
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
}

impl Drop for Private {
    fn drop(&mut self) {
        // Leave nothing half-stopped (nor paused), then stop exactly what acquire started.
        if let Some(pid) = self.pid("kafka/kafka.pid") {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start_again()));
        if self.record.exists() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.services(&["down", "--only", self.record.to_str().unwrap()])
            }));
            let _ = std::fs::remove_file(&self.record);
        }
    }
}

/// Deletes a topic this test created (big topics should not pile up on the shared broker).
pub async fn delete_topic(brokers: &str, topic: &str) {
    let kafka = connect(brokers).await;
    let controller = kafka.client.controller_client().unwrap();
    if let Err(e) = controller.delete_topic(topic, 30_000).await {
        eprintln!("could not delete topic {topic}: {e}");
    }
}

/// One record as read back from the topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Every record of every partition of `topic`, read with rskafka from the earliest offset to
/// the high watermark at the time of the call.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<TopicRecord> {
    let kafka = connect(brokers).await;
    let n = kafka
        .partition_count(topic)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let mut out = Vec::new();
    for p in 0..n as i32 {
        let h = partition(&kafka, topic, p).await;
        let (mut offset, end) = h.offsets().await.unwrap();
        while offset < end {
            let (records, _) = h.fetch(offset, 8 * 1024 * 1024, 500).await.unwrap();
            for r in records {
                if r.offset >= offset && r.offset < end {
                    out.push(TopicRecord {
                        partition: p,
                        offset: r.offset,
                        key: r.record.key,
                        value: r.record.value,
                    });
                }
                offset = offset.max(r.offset + 1);
            }
        }
    }
    out
}

/// `_source` (file, line) of a produced JSON value.
pub fn source_of(value: &[u8]) -> (String, u64) {
    let json: Json = serde_json::from_slice(value).expect("produced values are JSON");
    (
        json["_source"]["file"].as_str().unwrap().to_string(),
        json["_source"]["line"].as_u64().unwrap(),
    )
}

/// Every (partition, offset) written under `out`, per place: `window`, `late` or `dead`.
pub fn written_offsets(out: &Path) -> BTreeMap<&'static str, Vec<(i64, i64)>> {
    let mut result = BTreeMap::new();
    for (name, pattern, source) in [
        ("window", "window=*/*.parquet", output::TABLE),
        ("late", "_late/*/*.pq", output::LATE),
        ("dead", "_dead_letter/*.pq", output::DEAD),
    ] {
        let rows = if output::has(out, pattern) {
            duckdb(
                out,
                &format!("SELECT kafka_partition, kafka_offset FROM {source} ORDER BY 1, 2"),
            )
        } else {
            Vec::new()
        };
        result.insert(
            name,
            rows.into_iter()
                .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
                .collect(),
        );
    }
    result
}

/// Sum over partitions of the committed checkpoints' `next_offset` (0 without any), as the
/// consumer itself would resume.
pub fn committed_offsets(out: &Path) -> u64 {
    output::committed_offsets(out)
}

/// Output of a finished child, both streams as text.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn both(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }

    /// The `error:` line of a failed run (`(no error line)` when there is none).
    pub fn error_line(&self) -> String {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("(no error line)")
            .to_string()
    }
}

/// Runs `cmd` to completion, failing the test if it takes longer than `bound` (a hang guard,
/// far above the expected time; not a timing assertion).
pub fn run_bounded(cmd: &mut Command, bound: Duration) -> Finished {
    wait_bounded(spawn(cmd), bound)
}

/// A child started by [`spawn`]: its stdout and stderr are read while it runs, into buffers the
/// test can look at before it ends. A pipe read only after the child ends holds 64 KiB; a child
/// that logs more (rskafka warns at every failed reconnect, about 10 lines of 190 bytes a second
/// during a broker outage) blocks on its next log line, and so stops working while the test
/// waits for its progress.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `cmd` with stdin closed and both output streams read by [`Running`].
pub fn spawn(cmd: &mut Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn app");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        common::read_into(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&stdout),
        ),
        common::read_into(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        ),
    ];
    Running {
        child,
        stdout,
        stderr,
        readers,
    }
}

impl Running {
    /// What the child has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

/// Waits for `child` to end, failing the test (with its stderr) if it takes longer than `bound`
/// (a hang guard, far above the expected time; not a timing assertion).
pub fn wait_bounded(mut child: Running, bound: Duration) -> Finished {
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.child.kill();
            let _ = child.child.wait();
            panic!(
                "the process did not finish within {bound:?} (hang guard); stderr:\n{}",
                child.stderr_so_far()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The streams end with the child (unless it left a grandchild holding them).
    for reader in child.readers.drain(..) {
        let _ = reader.join();
    }
    Finished {
        status,
        stdout: String::from_utf8_lossy(&child.stdout.lock().unwrap()).into_owned(),
        stderr: child.stderr_so_far(),
    }
}

/// Sends SIGINT (like Ctrl-C) to a child this test started.
pub fn interrupt(child: &Running) {
    let status = Command::new("kill")
        .args(["-INT", &child.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub const BCB_HEADER: &str = "Ano;Trimestre;Categoria;Tipo;CNPJ IF;Instituição financeira;Índice;Quantidade de reclamações reguladas procedentes;Quantidade de reclamações reguladas - outras;Quantidade de reclamações não reguladas;Quantidade total de reclamações;Quantidade total de clientes – CCS e SCR;Quantidade de clientes – CCS;Quantidade de clientes – SCR;";

/// Writes a Banco Central CSV (Windows-1252, `;`, trailing `;`) with `rows` unique data lines:
/// line `n` (2-based) has CNPJ `first_cnpj + n` and institution `INSTITUIÇÃO <tag> <n>`.
pub fn write_bcb_csv(path: &Path, rows: usize, tag: &str) {
    let mut text = String::with_capacity(rows * 160);
    text.push_str(BCB_HEADER);
    text.push('\n');
    for i in 0..rows {
        let line = i + 2;
        text.push_str(&format!(
            "2025;{}º;Demais bancos, financeiras;Banco/financeira;{:08};INSTITUIÇÃO {tag} {line};{},{:02};{};{};{};{};{};{};{};\n",
            1 + i % 4,
            10_000_000 + i,
            i % 100,
            i % 97,
            i % 7,
            i % 11,
            i % 13,
            i % 7 + i % 11 + i % 13,
            100_000 + i,
            90_000 + i,
            10_000,
        ));
    }
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
    assert!(!unmappable);
    std::fs::File::create(path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}
