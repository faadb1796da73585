//! Shared helpers for the integration tests: the services' settings and the environment of the
//! `app` binary (`services`), random names, records, `app produce` / `app consume` arguments,
//! polling, free ports, and independent readers (kcat; DuckDB from the Python environment that
//! `scripts/python-env.sh` makes, which `make test` and `make chaos` run first; the Delta table
//! read by `deltalake`, polars and DuckDB, and its log, in `delta`; Kafka's own tools from its
//! jars). A service or reader that cannot be reached fails the test with a message saying what
//! to run; nothing is skipped. Every test crate includes this module (`mod common;`, or through
//! `tests/faultkit`, which re-exports what its tests use), so a helper some crates do not use is
//! not dead code (`allow(dead_code)`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use reclamacoes::kafka::{Compression, Kafka, PartitionHandle};
use reclamacoes::schema::{Schema, Source, Value};
use rskafka::record::Record;

pub mod delta;
mod services;
// Re-exported for the crates that use them (each crate uses some).
#[allow(unused_imports)]
pub use services::{
    app, app_env, app_env_for, app_with, brokers, kafka_config, kafka_config_for, kafka_dir,
    kafka_java, kafka_libs, mysql_url, mysql_url_on_port, python,
};

/// Connects to the shared broker or fails with what to do.
pub async fn require_kafka() -> Kafka {
    connect(&brokers()).await
}

/// Connects to `brokers` ([`kafka_config_for`]) or fails with what to do.
pub async fn connect(brokers: &str) -> Kafka {
    match Kafka::connect(kafka_config_for(brokers)).await {
        Ok(k) => k,
        Err(e) => panic!(
            "Kafka is not reachable at {brokers} ({e}). Start the local services with `make up` \
             (or run the tests through `make test`, which starts them)"
        ),
    }
}

pub async fn require_mysql() -> mysql_async::Conn {
    let url = mysql_url();
    let opts = mysql_async::Opts::from_url(&url).expect("valid MYSQL_URL");
    match tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "MariaDB/MySQL is not reachable at 127.0.0.1:3306 ({e}). Start the local services \
             with `make up` (or run the tests through `make test`)"
        ),
        Err(_) => panic!("MariaDB/MySQL did not answer within 10s; run `make up`"),
    }
}

/// A producer and fetcher of partition `p` of `topic` on the broker `kafka` is connected to.
pub async fn partition(kafka: &Kafka, topic: &str, p: i32) -> PartitionHandle {
    PartitionHandle {
        config: kafka.config.clone(),
        topic: topic.to_string(),
        partition: p,
        client: kafka.partition(topic, p).await.unwrap(),
    }
}

/// [`partition`] `p` of `topic` on the shared broker.
pub async fn handle(topic: &str, p: i32) -> PartitionHandle {
    partition(&require_kafka().await, topic, p).await
}

/// A topic name no other test uses.
pub fn random_topic(prefix: &str) -> String {
    format!("test-{prefix}-{:016x}", rand::random::<u64>())
}

/// A Banco Central record keyed by its CNPJ (the enrichment join key), with `tag` and `label`
/// in two of its text columns, at `event_ms`: the enrichment tests' records.
pub fn keyed_record(schema: &Schema, tag: &str, cnpj: &str, label: &str, event_ms: i64) -> Record {
    let mut values = vec![Value::Null; schema.fields.len()];
    values[0] = Value::Int(2025);
    values[1] = Value::Int(1);
    values[2] = Value::Str(tag.into());
    values[3] = Value::Str("Banco/financeira".into());
    values[4] = Value::Str(cnpj.into());
    values[5] = Value::Str(label.into());
    let mut json = String::new();
    schema.write_json(&values, None, &mut json);
    Record {
        key: Some(cnpj.as_bytes().to_vec()),
        value: Some(json.into_bytes()),
        headers: Default::default(),
        timestamp: Utc.timestamp_millis_opt(event_ms).unwrap(),
    }
}

/// JSON complaint record `i` of the built-in schema with Kafka timestamp `event_ms`, keyed by
/// institution (13 keys, 7 base CNPJs).
pub fn synthetic_record(schema: &Schema, i: u64, event_ms: i64) -> Record {
    let mut values = vec![Value::Null; schema.fields.len()];
    values[0] = Value::Int(2025);
    values[1] = Value::Int(1 + (i % 4) as i64);
    values[2] = Value::Str("Sintético".into());
    values[3] = Value::Str("Banco/financeira".into());
    values[4] = Value::Str(format!("{:08}", 360305 + (i % 7)));
    values[5] = Value::Str(format!("INSTITUIÇÃO {}", i % 13));
    values[7] = Value::Int(i as i64);
    let mut json = String::new();
    schema.write_json(
        &values,
        Some(&Source {
            file: "synthetic".into(),
            line: i,
        }),
        &mut json,
    );
    Record {
        key: Some(format!("{}", i % 13).into_bytes()),
        value: Some(json.into_bytes()),
        headers: Default::default(),
        timestamp: Utc.timestamp_millis_opt(event_ms).unwrap(),
    }
}

/// A record without a key whose value is `value`, as given.
pub fn raw_record(value: &[u8], timestamp: DateTime<Utc>) -> Record {
    Record {
        key: None,
        value: Some(value.to_vec()),
        headers: Default::default(),
        timestamp,
    }
}

/// A record whose value is not JSON (`garbage <i>`): a dead letter for the consumer.
pub fn garbage_record(i: u64, event_ms: i64) -> Record {
    raw_record(
        format!("garbage {i}").as_bytes(),
        Utc.timestamp_millis_opt(event_ms).unwrap(),
    )
}

/// Three messages the consumer cannot decode (not JSON, a wrong type, an empty value),
/// produced now to `partition` `p` of `topic`: three dead letters.
pub async fn produce_undecodable(kafka: &Kafka, topic: &str, p: i32) {
    let bad: Vec<Record> = [&b"not json"[..], br#"{"ano":"x"}"#, b""]
        .iter()
        .map(|v| raw_record(v, Utc::now()))
        .collect();
    partition(kafka, topic, p)
        .await
        .produce(bad, Compression::None)
        .await
        .unwrap();
}

/// One HTTP GET: (status code, body); `None` when nothing answers yet.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `N` distinct ports that were free a moment ago.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Polls `check` every `every` until it gives `Some` (returned), or `bound` has passed
/// (`None`).
pub fn poll<T>(
    bound: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls `cond` every 100 ms until it holds (true) or `bound` has passed (false), for a caller
/// that gathers its own diagnosis before failing.
pub fn wait_for(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(bound, Duration::from_millis(100), || cond().then_some(())).is_some()
}

/// Polls `cond` every 100 ms until it holds, failing after `bound` with `what`.
pub fn wait_until(bound: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(bound, cond),
        "timed out after {bound:?} waiting for {what}"
    );
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

/// The real Banco Central files (`RECLAMACOES_DATA_DIR`, else `../shared/data`).
pub fn real_data_dir() -> PathBuf {
    let dir = std::env::var("RECLAMACOES_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/data"));
    assert!(
        dir.join("bcb-ranking-reclamacoes").is_dir(),
        "the real data is not at {} — set RECLAMACOES_DATA_DIR to the folder holding \
         bcb-ranking-reclamacoes/ and bcb-enquadramento/",
        dir.display()
    );
    dir
}

/// Every file under `dir`, recursively (none when `dir` cannot be read).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Copies `from` into `to` until end of stream, on a thread of its own (a child's output read
/// while it runs, so that it never blocks on a full pipe).
pub fn read_into(
    mut from: impl Read + Send + 'static,
    to: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            to.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

/// The arguments of `app consume` reading `topic` into `output` (a directory or an `s3://` URL),
/// then `flags`.
pub fn consume_args<'a, O: AsRef<std::ffi::OsStr> + ?Sized>(
    topic: &'a str,
    output: &'a O,
    flags: &[&'a str],
) -> Vec<&'a str> {
    let output = output.as_ref().to_str().expect("a UTF-8 output");
    let mut args = vec!["consume", "--topic", topic, "--output", output];
    args.extend_from_slice(flags);
    args
}

/// A bounded run that completes its windows: read to the end of the topic, then close every
/// window.
pub const BOUNDED: [&str; 2] = ["--until-caught-up", "--close-windows"];

/// The consumer settings of the SIGKILL tests: frequent checkpoints, small buffers and fetches
/// (many flushes and commits for a kill to land in), and 30 s of allowed lateness.
pub const KILL_TEST_FLAGS: [&str; 8] = [
    "--checkpoint-interval",
    "200ms",
    "--max-buffer-bytes",
    "4000000",
    "--fetch-max-bytes",
    "65536",
    "--allowed-lateness",
    "30s",
];

/// The arguments of `app produce` sending `input` (a file or a directory) to `topic`, created
/// with `partitions` partitions.
pub fn produce_args<'a>(topic: &'a str, partitions: &'a str, input: &'a Path) -> [&'a str; 6] {
    let input = input.to_str().expect("a UTF-8 input path");
    [
        "produce",
        "--topic",
        topic,
        "--partitions",
        partitions,
        input,
    ]
}

/// `app produce` of `input` to `topic` (`partitions` partitions), run in `cwd`; it must succeed.
pub fn produce_input(topic: &str, partitions: &str, input: &Path, cwd: &Path) -> Output {
    run_app(&produce_args(topic, partitions, input), cwd, true)
}

/// Runs `app` with `args`, returning the output; panics with both streams if `expect_success`
/// does not match.
pub fn run_app(args: &[&str], cwd: &Path, expect_success: bool) -> Output {
    let out = app().args(args).current_dir(cwd).output().expect("run app");
    if out.status.success() != expect_success {
        panic!(
            "app {args:?} exited with {:?} (expected success = {expect_success})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// One record as kcat reads it (`-J` envelope).
#[derive(Debug, serde::Deserialize)]
pub struct KcatRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<String>,
    pub ts: i64,
}

/// Reads every record of `topic` with kcat (an independent, librdkafka-based client).
pub fn kcat_read_all(topic: &str) -> Vec<KcatRecord> {
    let out = Command::new("kcat")
        .args([
            "-b",
            &brokers(),
            "-C",
            "-t",
            topic,
            "-e",
            "-q",
            "-J",
            "-o",
            "beginning",
        ])
        .output()
        .expect("kcat is installed (Debian package `kcat`; `make test` / `make up` install it)");
    assert!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("kcat prints UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("kcat line {l}: {e}")))
        .collect()
}

/// Runs a small Java program (single-file source) with the Kafka jars on the classpath.
pub fn run_java(source: &str, class: &str, args: &[&str]) -> String {
    let libs = kafka_libs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{class}.java"));
    std::fs::write(&file, source).unwrap();
    let out = kafka_java(&libs)
        .arg(&file)
        .args(args)
        .output()
        .expect("java is installed");
    assert!(
        out.status.success(),
        "java {class} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One record batch of a partition's log, as Kafka's own `DumpLogSegments` prints it.
#[derive(Debug, Clone)]
pub struct LogBatch {
    pub partition: i32,
    pub base_offset: i64,
    pub count: i64,
    /// -1: written without a producer id.
    pub producer_id: i64,
    pub base_sequence: i64,
    pub last_sequence: i64,
    /// A control batch (a transaction marker).
    pub control: bool,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub codec: String,
    /// `COMMIT` or `ABORT` for a transaction marker, when read `with_markers`.
    pub marker: Option<String>,
}

/// Every record batch of `topic` in a broker's log directory `kafka_dir/data` (a checkout's
/// `.local/kafka`, or the fault tests' private one), in (partition, offset) order, read from
/// the segment files by Kafka's own `org.apache.kafka.tools.DumpLogSegments` from
/// `kafka_dir/libs`, not by our client. `with_markers` also reads the records (`--print-data-log`)
/// to name each marker: slow on big topics, which need only the batch headers.
pub fn dump_log_segments(kafka_dir: &Path, topic: &str, with_markers: bool) -> Vec<LogBatch> {
    let data = kafka_dir.join("data");
    let mut partitions: Vec<(i32, PathBuf)> = std::fs::read_dir(&data)
        .unwrap_or_else(|e| {
            panic!(
                "cannot list the broker's log directory {} ({e}): start the services (`make up`)",
                data.display()
            )
        })
        .filter_map(|entry| {
            let dir = entry.unwrap().path();
            let name = dir.file_name()?.to_string_lossy().to_string();
            let partition = name.strip_prefix(&format!("{topic}-"))?.parse().ok()?;
            Some((partition, dir))
        })
        .collect();
    partitions.sort();
    let mut batches = Vec::new();
    for (partition, dir) in partitions {
        let mut segments: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| p.display().to_string())
            .collect();
        segments.sort();
        let mut cmd = kafka_java(&kafka_dir.join("libs"));
        cmd.arg(format!(
            "-Dlog4j2.configurationFile={}",
            repo_root().join("services/kafka/log4j2.xml").display()
        ))
        .arg("org.apache.kafka.tools.DumpLogSegments");
        if with_markers {
            cmd.arg("--print-data-log");
        }
        let out = cmd
            .arg("--files")
            .arg(segments.join(","))
            .output()
            .expect("run java (Kafka's DumpLogSegments)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "DumpLogSegments {} failed:\n{text}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // "key: value" pairs of one line.
        let fields = |line: &str| -> std::collections::BTreeMap<String, String> {
            let words: Vec<&str> = line.split_whitespace().collect();
            words
                .windows(2)
                .filter(|w| w[0].ends_with(':'))
                .map(|w| (w[0].trim_end_matches(':').to_string(), w[1].to_string()))
                .collect()
        };
        for line in text.lines() {
            if line.starts_with("baseOffset:") {
                let f = fields(line);
                let num = |k: &str| -> i64 {
                    f.get(k)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("DumpLogSegments line without {k}: {line}"))
                };
                batches.push(LogBatch {
                    partition,
                    base_offset: num("baseOffset"),
                    count: num("count"),
                    producer_id: num("producerId"),
                    base_sequence: num("baseSequence"),
                    last_sequence: num("lastSequence"),
                    control: f.get("isControl").is_some_and(|v| v == "true"),
                    codec: f.get("compresscodec").cloned().unwrap_or_default(),
                    marker: None,
                });
            } else if line.starts_with('|') {
                if let (Some(batch), Some(marker)) =
                    (batches.last_mut(), fields(line).get("endTxnMarker"))
                {
                    batch.marker = Some(marker.clone());
                }
            }
        }
    }
    batches
}

/// Runs SQL in DuckDB (an independent Parquet reader; `{out}` is replaced by the output
/// directory) and returns the rows as JSON arrays.
pub fn duckdb(out: &Path, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let python = python();
    let script = r#"
import sys, json, duckdb
# No progress bar on stdout: a query slower than 2 s would print one before the JSON.
duckdb.execute("SET enable_progress_bar = false")
rows = duckdb.sql(sys.argv[1]).fetchall()
print(json.dumps([[v if isinstance(v, (int, float, str, type(None), bool)) else str(v) for v in r] for r in rows]))
"#;
    let sql = sql.replace("{out}", &out.display().to_string());
    let result = Command::new(&python)
        .args(["-c", script, &sql])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the Python readers are missing. Run the tests through \
                 `make test` (it runs scripts/python-env.sh first), or run \
                 scripts/python-env.sh once, which creates .local/venv with duckdb and pyarrow",
                python.display()
            )
        });
    assert!(
        result.status.success(),
        "duckdb ({}) failed on {sql}: {}\n(if duckdb is missing there, rerun \
         scripts/python-env.sh; it reinstalls the pinned set)",
        python.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&result.stdout).unwrap()
}

/// The one value of a DuckDB query over `out` (its first row's first column), as i64.
pub fn scalar(out: &Path, sql: &str) -> i64 {
    duckdb(out, sql)[0][0].as_i64().unwrap()
}

/// [`scalar`] as u64.
pub fn scalar_u64(out: &Path, sql: &str) -> u64 {
    duckdb(out, sql)[0][0].as_u64().unwrap()
}

/// [`scalar`] as f64.
pub fn scalar_f64(out: &Path, sql: &str) -> f64 {
    duckdb(out, sql)[0][0].as_f64().unwrap()
}

/// The parts of a consumer output as DuckDB sources (`{out}` is the output directory). The names
/// come from `src/output/layout.rs`: the table is `window=*/*.parquet`, late rows and dead
/// letters are `.pq` files so that a glob over the output reads the table and nothing else.
pub mod output {
    use std::path::Path;

    /// The table, as a plain glob (no Hive columns).
    pub const TABLE: &str = "read_parquet('{out}/window=*/*.parquet', hive_partitioning = false)";
    /// The table with a `filename` column.
    pub const TABLE_FILES: &str =
        "read_parquet('{out}/window=*/*.parquet', hive_partitioning = false, filename = true)";
    /// The table as a user reads it: every Parquet file under the output, Hive columns on.
    pub const TABLE_HIVE: &str = "read_parquet('{out}/**/*.parquet', hive_partitioning = true)";
    /// Late rows.
    pub const LATE: &str = "read_parquet('{out}/_late/*/*.pq', hive_partitioning = false)";
    /// Dead letters.
    pub const DEAD: &str = "read_parquet('{out}/_dead_letter/*.pq')";
    /// Staged row groups of open windows (durable, committed, not in the table until the window
    /// closes). Only meaningful with the consumer stopped cleanly: between a close and the
    /// commits after it, merged row groups may still be there beside the final file.
    pub const STAGED: &str = "read_parquet('{out}/_staging/*/*.staged', hive_partitioning = false)";

    /// Every row with the table's columns that the output holds durably: the table, the staged
    /// row groups of open windows and the late rows (only the parts that exist).
    pub fn rows(out: &Path) -> String {
        let parts: Vec<String> = [
            ("window=*/*.parquet", TABLE),
            ("_staging/*/*.staged", STAGED),
            ("_late/*/*.pq", LATE),
        ]
        .iter()
        .filter(|(g, _)| has(out, g))
        .map(|(_, source)| format!("SELECT * FROM {source}"))
        .collect();
        assert!(!parts.is_empty(), "{} holds no rows", out.display());
        format!("({})", parts.join(" UNION ALL BY NAME "))
    }

    /// `count(*)` of a DuckDB source over `out` (one of the parts above, or [`rows`]).
    pub fn count(out: &Path, source: &str) -> i64 {
        super::scalar(out, &format!("SELECT count(*) FROM {source}"))
    }

    /// Whether the part behind `glob_pattern` (relative to `out`) holds any file.
    pub fn has(out: &Path, glob_pattern: &str) -> bool {
        glob::glob(&out.join(glob_pattern).display().to_string())
            .unwrap()
            .next()
            .is_some()
    }

    /// A DuckDB source of `(kafka_partition, kafka_offset)` over the table, staged row groups,
    /// late rows and dead letters that exist (`None` when there is nothing yet).
    pub fn all_offsets(out: &Path) -> Option<String> {
        offsets_union(
            out,
            has(out, "_staging/*/*.staged").then(|| STAGED.to_string()),
        )
    }

    /// [`all_offsets`] with only the staged row groups that the latest checkpoints list: a
    /// writer that lost its partition while a staging write was in flight may leave one behind
    /// (not committed; the next claim of the partition removes it, and readers of the table
    /// never see `_staging`).
    pub fn committed_offsets_sql(out: &Path) -> Option<String> {
        let store = reclamacoes::output::LocalStore::new(out);
        let checkpoints = reclamacoes::checkpoint::store::read_latest(&store).unwrap_or_default();
        let staged: Vec<String> = checkpoints
            .iter()
            .flat_map(|(cp, _)| {
                cp.staged.iter().flat_map(|(window, files)| {
                    files.iter().map(|f| {
                        let key = reclamacoes::output::layout::staged_key_named(*window, &f.name);
                        format!("'{}'", out.join(key).display())
                    })
                })
            })
            .collect();
        let staged = (!staged.is_empty()).then(|| {
            format!(
                "read_parquet([{}], hive_partitioning = false)",
                staged.join(", ")
            )
        });
        offsets_union(out, staged)
    }

    /// The union of `(kafka_partition, kafka_offset)` over the table, `staged` (a source, when
    /// there is one), late rows and dead letters, with `{out}` filled in.
    fn offsets_union(out: &Path, staged: Option<String>) -> Option<String> {
        let existing = |glob: &str, source: &str| has(out, glob).then(|| source.to_string());
        let parts: Vec<String> = [
            existing("window=*/*.parquet", TABLE),
            staged,
            existing("_late/*/*.pq", LATE),
            existing("_dead_letter/*.pq", DEAD),
        ]
        .into_iter()
        .flatten()
        .map(|source| format!("SELECT kafka_partition, kafka_offset FROM {source}"))
        .collect();
        let sql = (!parts.is_empty()).then(|| format!("({})", parts.join(" UNION ALL ")))?;
        Some(sql.replace("{out}", &out.display().to_string()))
    }

    /// Asserts that every (partition, offset) of the `total` records appears exactly once
    /// across the table, staging, `_late` and `_dead_letter` of `out` (DuckDB).
    pub fn assert_exactly_once(out: &Path, total: u64, what: &str) {
        assert_sources_exactly_once(out, &all_offsets(out).expect("output written"), total, what)
    }

    /// [`assert_exactly_once`] over [`committed_offsets_sql`].
    pub fn assert_committed_exactly_once(out: &Path, total: u64, what: &str) {
        let all = committed_offsets_sql(out).expect("output written");
        assert_sources_exactly_once(out, &all, total, what)
    }

    fn assert_sources_exactly_once(out: &Path, all: &str, total: u64, what: &str) {
        let count = |sql: String| super::scalar(out, &sql) as u64;
        let rows = count(format!("SELECT count(*) FROM {all}"));
        let distinct = count(format!(
            "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {all}"
        ));
        assert_eq!(distinct, total, "every (partition, offset) appears");
        assert_eq!(rows, total, "and appears once ({what})");
    }

    /// Sum over partitions of the committed checkpoints' `next_offset` (0 without any).
    pub fn committed_offsets(out: &Path) -> u64 {
        let store = reclamacoes::output::LocalStore::new(out);
        reclamacoes::checkpoint::store::read_latest(&store)
            .map(|cps| cps.iter().map(|(c, _)| c.next_offset.max(0) as u64).sum())
            .unwrap_or(0)
    }
}

/// The local S3 server (versitygw, `scripts/s3.sh`, started by `make test` and `make up S3=1`):
/// its settings (from `services`: addresses, local-development credentials, the environment of
/// a test's `app`, set explicitly so that a developer's own AWS settings never leak into a
/// test), random prefixes, and independent readers of what the consumer wrote there (pyarrow's
/// S3 filesystem).
pub mod s3 {
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    #[allow(unused_imports)]
    pub use super::services::s3::{endpoint, env, env_for, ACCESS_KEY, BUCKET, REGION, SECRET_KEY};

    /// The versitygw binary `scripts/s3.sh build` made (for tests that run a private server).
    pub fn server_binary() -> std::path::PathBuf {
        let bin = super::repo_root().join(".local/s3/bin/versitygw");
        assert!(
            bin.is_file(),
            "{} is missing: run `scripts/s3.sh build` (or `make up S3=1`; `make test` does it)",
            bin.display()
        );
        bin
    }

    /// Fails with what to run when the S3 server does not answer.
    pub fn require() {
        let url = format!("{}/health", endpoint());
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let ok = std::net::TcpStream::connect_timeout(
            &host.parse().expect("endpoint is host:port"),
            Duration::from_secs(2),
        )
        .is_ok();
        assert!(
            ok,
            "the S3 server does not answer at {} — start it with `make up S3=1` (or run the tests \
             through `make test`, which starts it)",
            endpoint()
        );
    }

    /// A prefix no other test uses.
    pub fn random_prefix(tag: &str) -> String {
        format!("test/{tag}-{:016x}", rand::random::<u64>())
    }

    /// `s3://reclamacoes/<prefix>/`.
    pub fn url(prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}/")
    }

    /// Runs a Python snippet with pyarrow's S3 filesystem `s3` (an independent client) bound to
    /// `endpoint`; `argv` follows. Returns stdout.
    pub fn python_s3(endpoint: &str, snippet: &str, argv: &[&str]) -> String {
        let script = format!(
            "import sys, pyarrow.fs as pafs\n\
             s3 = pafs.S3FileSystem(access_key='{ACCESS_KEY}', secret_key='{SECRET_KEY}', \
             endpoint_override='{}', scheme='http', region='{REGION}', \
             allow_bucket_creation=True)\n{snippet}",
            endpoint.trim_start_matches("http://")
        );
        let python = super::python();
        let out = Command::new(&python)
            .arg("-c")
            .arg(&script)
            .args(argv)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): run scripts/python-env.sh (make test does)",
                    python.display()
                )
            });
        assert!(
            out.status.success(),
            "pyarrow S3 snippet failed:\n{snippet}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates `bucket` on the server at `endpoint` (pyarrow; fine when it exists).
    pub fn create_bucket(endpoint: &str, bucket: &str) {
        python_s3(endpoint, "s3.create_dir(sys.argv[1])", &[bucket]);
    }

    /// Copies everything under `prefix` of the bucket to the local directory `dest` with
    /// pyarrow, so the local readers of `super::output` can check it.
    pub fn download(endpoint: &str, prefix: &str, dest: &Path) {
        std::fs::create_dir_all(dest).unwrap();
        python_s3(
            endpoint,
            "pafs.copy_files(sys.argv[1], sys.argv[2], source_filesystem=s3, \
             destination_filesystem=pafs.LocalFileSystem())",
            &[&format!("{BUCKET}/{prefix}"), dest.to_str().unwrap()],
        );
    }

    /// The consumer's own view of the prefix (for polling checkpoints), opened from a thread of
    /// its own (the store blocks).
    pub fn store(endpoint: &str, prefix: &str) -> reclamacoes::output::ObjectOutput {
        let url = reclamacoes::output::ObjectUrl::parse(&url(prefix))
            .unwrap()
            .unwrap();
        let options = reclamacoes::output::ObjectOptions {
            endpoint: Some(endpoint.to_string()),
            region: Some(REGION.into()),
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        // Credentials as the consumer reads them: from the environment of this process.
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::thread::spawn(move || reclamacoes::output::ObjectOutput::open(&url, &options))
            .join()
            .unwrap()
            .expect("open the test prefix")
    }

    /// Sum over partitions of the committed checkpoints' `next_offset` under `prefix`.
    pub fn committed_offsets(store: &reclamacoes::output::ObjectOutput) -> u64 {
        let store = store.clone();
        std::thread::spawn(move || {
            reclamacoes::checkpoint::store::read_latest(&store)
                .map(|cps| cps.iter().map(|(c, _)| c.next_offset.max(0) as u64).sum())
                .unwrap_or(0)
        })
        .join()
        .unwrap()
    }
}

/// SIGKILLs runs of a bounded consumer (`command()`, output discarded) until `want` kills have
/// hit a run mid-stream (alive, its committed offsets short of `total`), at most `max_runs` runs;
/// returns (kills, runs). A run that does not reach its target within `hang_guard` fails the test.
///
/// Kills are paced by the committed progress, not by the clock, so they spread over the stream
/// whatever the machine's speed: each run is killed once `committed()` passes a random target
/// (what is left of the kill span shared among the kills still to come, times a random factor in
/// [0.5, 1.5)), after a further random delay of up to 100 ms, so the kill lands anywhere between
/// checkpoints (in a flush, a rename, a checkpoint write, or a replay after the previous kill).
/// The kill span is the first 90% of the stream, less twice the largest overshoot seen
/// (committed offsets past the target at the kill), so that no run reaches the end before it is
/// killed; past the span, runs are killed during startup or replay. Every kill moves the
/// committed offsets by its target's advance plus an overshoot, so each kill still to come has
/// one overshoot set aside before the rest is shared: without that, a fast build used up the span
/// with kills to spare and its next run finished the stream.
pub fn kill_mid_stream(
    mut command: impl FnMut() -> Command,
    committed: impl Fn() -> u64,
    total: u64,
    want: usize,
    max_runs: usize,
    hang_guard: Duration,
) -> (usize, usize) {
    let (mut kills, mut runs, mut overshoot) = (0usize, 0usize, 0u64);
    while kills < want && runs < max_runs {
        runs += 1;
        let kill_span = (total * 9 / 10).min(total.saturating_sub(2 * overshoot));
        let done = committed();
        let kills_left = (want - kills) as u64;
        let stride = kill_span
            .saturating_sub(done)
            .saturating_sub(kills_left * overshoot)
            / kills_left;
        let target =
            (done + stride / 2 + rand::random::<u64>() % (stride + 1)).min(kill_span.max(done));
        let mut child = command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + hang_guard;
        while child.try_wait().unwrap().is_none() && committed() < target {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("run {runs} did not commit up to {target} of {total} offsets within {hang_guard:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 100));
        let alive = child.try_wait().unwrap().is_none();
        if alive {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        let after = committed();
        overshoot = overshoot.max(after.saturating_sub(target));
        eprintln!("run {runs}: committed {done} -> {after} (target {target}), killed: {alive}");
        if alive && after < total {
            kills += 1;
        }
    }
    (kills, runs)
}

/// Kafka's own consumer-group tool (`kafka-consumer-groups`, from the broker's jars) and its
/// tables.
pub mod groups {
    use std::collections::BTreeMap;

    /// Kafka's own consumer-groups tool, with `args` after `--bootstrap-server ... --group ...`.
    pub fn consumer_groups(group: &str, args: &[&str]) -> String {
        let out = super::kafka_java(&super::kafka_libs())
            .arg("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand")
            .args(["--bootstrap-server", &super::brokers(), "--group", group])
            .args(args)
            .output()
            .expect("java is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kafka-consumer-groups {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The rows of a `--describe` table under its header, keyed by column name.
    pub fn table(output: &str, first_column: &str) -> Vec<BTreeMap<String, String>> {
        let mut lines = output.lines().skip_while(|l| !l.starts_with(first_column));
        let Some(header) = lines.next() else {
            panic!("no table starting with {first_column} in:\n{output}");
        };
        let names: Vec<&str> = header.split_whitespace().collect();
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                names
                    .iter()
                    .map(|n| n.to_string())
                    .zip(l.split_whitespace().map(str::to_string))
                    .collect()
            })
            .collect()
    }
}
