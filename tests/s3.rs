//! `app consume --output s3://…` against a real S3 server (versitygw, started by `make test`
//! and `make up S3=1` on 127.0.0.1:7070), with the shared Kafka and MariaDB: exactly once under
//! repeated SIGKILL (in the files, and in the Delta table as its readers read it from S3), an S3 outage ridden out (a PRIVATE versitygw on a free port, stopped and
//! started again), clear errors for wrong credentials and a missing bucket with no secret
//! printed, two consumers on one prefix fenced by the conditional commit, and independent
//! readers (pyarrow's S3 filesystem, DuckDB's httpfs) reading the output straight from the
//! server. Every test writes under a random prefix of its own.

mod faultkit;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use faultkit::common::{self, consume_args, free_port, output, s3, BOUNDED, KILL_TEST_FLAGS};
use faultkit::{run_bounded, wait_bounded, wait_until};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;

const HANG_GUARD: Duration = Duration::from_secs(300);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Produces `count` records per partition (numbered from `from`), event times walking through
/// `minutes` one-minute windows from 2026-01-01 with ±40 s of disorder, every 1009th not JSON.
/// Returns how many are garbage (dead letters).
fn produce(topic: &str, partitions: i32, from: u64, count: u64, minutes: i64) -> u64 {
    let schema = Schema::banco_central();
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    runtime().block_on(async {
        let kafka = common::require_kafka().await;
        kafka.ensure_topic(topic, partitions, 1).await.unwrap();
        let mut dead = 0;
        for p in 0..partitions {
            let h = faultkit::partition(&kafka, topic, p).await;
            let mut batch = Vec::new();
            for i in from..from + count {
                let forward = (i as i64 * minutes * 60_000) / (from + count).max(1) as i64;
                let jitter = ((i * 7919 + p as u64 * 31) % 80_000) as i64 - 40_000;
                let event = base + forward + jitter;
                let r = if i % 1009 == 500 {
                    dead += 1;
                    common::garbage_record(i, event)
                } else {
                    common::synthetic_record(&schema, i, event)
                };
                batch.push(r);
                if batch.len() == 2000 {
                    h.produce(std::mem::take(&mut batch), Compression::Lz4)
                        .await
                        .unwrap();
                }
            }
            if !batch.is_empty() {
                h.produce(batch, Compression::Lz4).await.unwrap();
            }
        }
        dead
    })
}

/// `app` against the shared Kafka and MariaDB, with exactly the S3 settings of `endpoint`.
fn app_s3(endpoint: &str) -> Command {
    let mut cmd = common::app();
    s3::env_for(&mut cmd, endpoint, s3::SECRET_KEY);
    cmd
}

/// Downloads the prefix (pyarrow) and checks every (partition, offset) of `total` appears
/// exactly once across the table, staged row groups, late rows and dead letters.
fn assert_exactly_once(endpoint: &str, prefix: &str, total: u64, dead: u64, local: &Path) {
    s3::download(endpoint, prefix, local);
    output::assert_exactly_once(local, total, "S3 output");
    let dead_rows = output::count(local, output::DEAD);
    assert_eq!(dead_rows as u64, dead, "dead letters");
}

#[test]
fn exactly_once_across_repeated_sigkill_on_s3() {
    s3::require();
    let topic = common::random_topic("s3-crash");
    const PER_PARTITION: u64 = 30_000;
    let dead = produce(&topic, 3, 0, PER_PARTITION, 20);
    let total = PER_PARTITION * 3;
    let prefix = s3::random_prefix("crash");
    let url = s3::url(&prefix);
    let endpoint = s3::endpoint();
    let store = s3::store(&endpoint, &prefix);
    let work = tempfile::tempdir().unwrap();
    let args = consume_args(&topic, &url, &[&BOUNDED[..], &KILL_TEST_FLAGS].concat());
    // Killed at committed-progress targets, so the kills land mid-stream on any machine.
    let (kills, attempts) = common::kill_mid_stream(
        || {
            let mut cmd = app_s3(&endpoint);
            cmd.args(&args).current_dir(work.path());
            cmd
        },
        || s3::committed_offsets(&store),
        total,
        5,
        25,
        Duration::from_secs(120),
    );
    assert!(
        kills >= 5,
        "only {kills} kills hit a run mid-stream in {attempts} attempts"
    );
    let done = run_bounded(app_s3(&endpoint).args(&args), HANG_GUARD);
    assert!(done.status.success(), "final run failed:\n{}", done.both());
    assert!(
        done.stdout.contains("(resumed from checkpoint)"),
        "{}",
        done.stdout
    );
    eprintln!("final run after {kills} kills:\n{}", done.stdout);
    assert_eq!(s3::committed_offsets(&store), total);
    let local = work.path().join("copy");
    assert_exactly_once(&endpoint, &prefix, total, dead, &local);
    let late = output::count(&local, output::LATE);
    let windows = common::scalar(
        &local,
        &format!("SELECT count(DISTINCT window_start) FROM {}", output::TABLE),
    );
    assert!(windows >= 15, "{windows} windows ({late} late rows)");
    // Closed windows carry _SUCCESS, no staged row group is left, and `inspect` reads it too.
    let listed = faultkit::walk(&local);
    let success = listed
        .iter()
        .filter(|p| p.file_name().unwrap() == "_SUCCESS")
        .count();
    assert!(success >= 15, "{success} _SUCCESS markers");
    // The manifests' rows (read from each file's footer on S3, with ranged reads) add up to the
    // rows of the windows they complete.
    let markers: Vec<_> = listed
        .iter()
        .filter(|p| p.file_name().unwrap() == "_SUCCESS")
        .collect();
    let manifest_rows: i64 = markers
        .iter()
        .map(|m| {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
            m["rows"].as_i64().unwrap()
        })
        .sum();
    let globs: Vec<String> = markers
        .iter()
        .map(|m| format!("'{}/*.parquet'", m.parent().unwrap().display()))
        .collect();
    let window_rows = common::scalar(
        &local,
        &format!("SELECT count(*) FROM read_parquet([{}])", globs.join(", ")),
    );
    assert_eq!(
        manifest_rows, window_rows,
        "manifest rows vs the windows' rows"
    );
    let inspect = run_bounded(
        app_s3(&endpoint).args(["inspect", &url, "--json", "--sample", "0"]),
        HANG_GUARD,
    );
    assert!(inspect.status.success(), "{}", inspect.both());
    let report: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(
        report["total_rows"].as_u64().unwrap() + report["late"]["rows"].as_u64().unwrap(),
        total - dead,
        "inspect over S3 counts every row"
    );
    // The Delta table, read straight from S3 by deltalake, polars and DuckDB: every row of the
    // closed windows (neither late rows nor dead letters), none twice.
    common::delta::assert_rows(&url, total - dead - late as u64, &format!("{kills} kills"));
}

/// A private versitygw on a free port, data in a directory of the test's own.
struct PrivateServer {
    child: Option<Child>,
    port: u16,
    data: std::path::PathBuf,
}

impl PrivateServer {
    fn start(port: u16, data: &Path) -> PrivateServer {
        std::fs::create_dir_all(data).unwrap();
        let mut server = PrivateServer {
            child: None,
            port,
            data: data.to_path_buf(),
        };
        server.run();
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new(s3::server_binary())
            .args([
                "--port",
                &format!("127.0.0.1:{}", self.port),
                "--region",
                s3::REGION,
                "--health",
                "/health",
                "--quiet",
                "posix",
            ])
            .arg(&self.data)
            .env("ROOT_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("ROOT_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start versitygw");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(30), "the private S3 server", || {
            common::http_get(port, "/health").is_some_and(|(s, _)| s == 200)
        });
    }

    /// SIGKILL: the server vanishes mid-request.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn an_s3_outage_is_waited_out_and_reported_by_healthz() {
    s3::server_binary();
    let work = tempfile::tempdir().unwrap();
    let mut server = PrivateServer::start(free_port(), &work.path().join("s3"));
    let endpoint = server.endpoint();
    s3::create_bucket(&endpoint, s3::BUCKET);
    let topic = common::random_topic("s3-outage");
    let mut dead = produce(&topic, 2, 0, 5_000, 10);
    let prefix = s3::random_prefix("outage");
    let url = s3::url(&prefix);
    let store = s3::store(&endpoint, &prefix);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let consumer = faultkit::spawn(
        app_s3(&endpoint)
            .args(consume_args(
                &topic,
                &url,
                &[
                    "--checkpoint-interval",
                    "300ms",
                    "--output-timeout",
                    "3s",
                    "--output-retry-timeout",
                    "3m",
                    "--idle-advance",
                    "off",
                    "--metrics-addr",
                    &metrics_addr,
                ],
            ))
            .env("RUST_LOG", "info")
            .current_dir(work.path()),
    );
    wait_until(
        Duration::from_secs(60),
        "the first 10,000 records committed",
        || s3::committed_offsets(&store) >= 10_000,
    );
    assert_eq!(
        common::http_get(metrics_port, "/healthz").map(|(s, _)| s),
        Some(200),
        "healthy before the outage"
    );

    // The server goes away; new records arrive meanwhile, so the consumer must write.
    server.kill();
    let outage_started = Instant::now();
    dead += produce(&topic, 2, 5_000, 3_000, 10);
    let mut reported = String::new();
    wait_until(
        Duration::from_secs(60),
        "/healthz reporting the outage",
        || match common::http_get(metrics_port, "/healthz") {
            Some((503, body)) if body.contains("output") => {
                reported = body;
                true
            }
            _ => false,
        },
    );
    assert!(
        reported.contains(&format!("127.0.0.1:{}", server.port)) && reported.contains(s3::BUCKET),
        "/healthz names the endpoint and bucket: {reported}"
    );
    assert!(!reported.contains(s3::SECRET_KEY), "{reported}");
    eprintln!("/healthz during the outage: {reported}");
    std::thread::sleep(Duration::from_secs(5));

    // Back again: the consumer goes on by itself.
    server.run();
    eprintln!(
        "S3 server down for {:.1} s",
        outage_started.elapsed().as_secs_f64()
    );
    wait_until(
        Duration::from_secs(120),
        "every record committed after the outage",
        || s3::committed_offsets(&store) >= 16_000,
    );
    wait_until(Duration::from_secs(30), "/healthz healthy again", || {
        common::http_get(metrics_port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    faultkit::interrupt(&consumer);
    let finished = wait_bounded(consumer, HANG_GUARD);
    assert!(
        finished.status.success(),
        "the consumer rode out the outage:\n{}",
        finished.both()
    );
    assert!(
        finished.stderr.contains("Output storage failing; retrying")
            && finished.stderr.contains("Output storage answers again"),
        "{}",
        finished.stderr
    );
    assert!(!finished.both().contains(s3::SECRET_KEY));
    assert_exactly_once(&endpoint, &prefix, 16_000, dead, &work.path().join("copy"));
}

#[test]
fn wrong_credentials_and_a_missing_bucket_fail_clearly_without_the_secret() {
    s3::require();
    let endpoint = s3::endpoint();
    let topic = common::random_topic("s3-errors");
    produce(&topic, 1, 0, 10, 1);
    let work = tempfile::tempdir().unwrap();
    let wrong = "Wr0ng-S3cret-Value-123";
    let prefix = s3::random_prefix("errors");
    let url = s3::url(&prefix);
    let mut cmd = common::app();
    s3::env_for(&mut cmd, &endpoint, wrong)
        .env("RUST_LOG", "debug")
        .args(consume_args(&topic, &url, &["--until-caught-up"]))
        .current_dir(work.path());
    let out = run_bounded(&mut cmd, HANG_GUARD);
    assert!(!out.status.success(), "{}", out.both());
    let error = out.error_line();
    eprintln!("wrong credentials: {error}");
    assert!(
        error.contains(&endpoint.replace("http://", ""))
            && error.contains("s3://reclamacoes/")
            && error.contains("credentials")
            && error.contains("AWS_SECRET_ACCESS_KEY"),
        "{error}"
    );
    assert!(
        !out.both().contains(wrong),
        "the secret leaked:\n{}",
        out.both()
    );

    // inspect says the same.
    let mut cmd = common::app();
    s3::env_for(&mut cmd, &endpoint, wrong).args(["inspect", &url]);
    let out = run_bounded(&mut cmd, HANG_GUARD);
    assert!(!out.status.success());
    assert!(out.stderr.contains("credentials"), "{}", out.both());
    assert!(!out.both().contains(wrong));

    // A missing bucket.
    let bucket = format!("no-such-bucket-{:08x}", rand::random::<u32>());
    let missing = format!("s3://{bucket}/x/");
    let mut cmd = app_s3(&endpoint);
    cmd.env("RUST_LOG", "debug")
        .args(consume_args(&topic, &missing, &["--until-caught-up"]))
        .current_dir(work.path());
    let out = run_bounded(&mut cmd, HANG_GUARD);
    assert!(!out.status.success(), "{}", out.both());
    let error = out.error_line();
    eprintln!("missing bucket: {error}");
    assert!(
        error.contains(&bucket)
            && error.contains("does not exist")
            && error.contains(&endpoint.replace("http://", "")),
        "{error}"
    );
    assert!(!out.both().contains(s3::SECRET_KEY), "{}", out.both());

    // --help never shows the secret, nor does a successful run's debug log.
    let mut cmd = app_s3(&endpoint);
    let help = run_bounded(cmd.args(["consume", "--help"]), HANG_GUARD);
    assert!(help.stdout.contains("--s3-endpoint"), "{}", help.stdout);
    assert!(!help.both().contains(s3::SECRET_KEY));
    let mut cmd = app_s3(&endpoint);
    cmd.env("RUST_LOG", "debug")
        .args(consume_args(&topic, &url, &BOUNDED))
        .current_dir(work.path());
    let out = run_bounded(&mut cmd, HANG_GUARD);
    assert!(out.status.success(), "{}", out.both());
    assert!(!out.both().contains(s3::SECRET_KEY), "{}", out.both());
}

#[test]
fn two_consumers_on_one_prefix_are_fenced_and_the_output_stays_exactly_once() {
    s3::require();
    let endpoint = s3::endpoint();
    let topic = common::random_topic("s3-fence");
    let mut dead = produce(&topic, 2, 0, 10_000, 10);
    let prefix = s3::random_prefix("fence");
    let url = s3::url(&prefix);
    let store = s3::store(&endpoint, &prefix);
    let work = tempfile::tempdir().unwrap();
    let base = consume_args(
        &topic,
        &url,
        &["--checkpoint-interval", "200ms", "--idle-advance", "off"],
    );
    // A: runs on (no --until-caught-up), holding open windows once it has read everything.
    let first = faultkit::spawn(app_s3(&endpoint).args(&base).current_dir(work.path()));
    wait_until(Duration::from_secs(60), "A committed everything", || {
        s3::committed_offsets(&store) >= 20_000
    });
    // B, started by mistake on the same prefix and partitions: it claims them (A is idle, so
    // it commits nothing meanwhile) and reads to the end.
    let second = run_bounded(
        app_s3(&endpoint)
            .args(&base)
            .args(["--until-caught-up"])
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(second.status.success(), "B: {}", second.both());
    // New records: A writes them and its next commit finds its generation taken: fenced.
    dead += produce(&topic, 2, 10_000, 2_000, 10);
    let first = wait_bounded(first, HANG_GUARD);
    assert!(!first.status.success(), "A must stop: {}", first.both());
    let error = first.error_line();
    eprintln!("A: {error}");
    assert!(
        error.contains("committed by another consumer")
            && error.contains("exactly once")
            && error.contains(s3::BUCKET),
        "{}",
        first.both()
    );
    // Two started at the same moment: at most one claims each partition.
    let racers: Vec<faultkit::Running> = (0..2)
        .map(|_| {
            faultkit::spawn(
                app_s3(&endpoint)
                    .args(&base)
                    .args(BOUNDED)
                    .current_dir(work.path()),
            )
        })
        .collect();
    let results: Vec<_> = racers
        .into_iter()
        .map(|c| wait_bounded(c, HANG_GUARD))
        .collect();
    for r in &results {
        assert!(
            r.status.success() || r.stderr.contains("committed by another consumer"),
            "a racer failed for another reason:\n{}",
            r.both()
        );
    }
    // Whatever the race left, a last run completes the output, exactly once.
    let done = run_bounded(
        app_s3(&endpoint)
            .args(&base)
            .args(BOUNDED)
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(done.status.success(), "{}", done.both());
    assert_exactly_once(&endpoint, &prefix, 24_000, dead, &work.path().join("copy"));
}

#[test]
fn pyarrow_and_duckdb_read_the_output_straight_from_s3() {
    s3::require();
    let endpoint = s3::endpoint();
    let topic = common::random_topic("s3-readers");
    let dead = produce(&topic, 3, 0, 2_000, 5);
    let prefix = s3::random_prefix("readers");
    let work = tempfile::tempdir().unwrap();
    let url = s3::url(&prefix);
    let out = run_bounded(
        app_s3(&endpoint)
            .args(consume_args(&topic, &url, &BOUNDED))
            .args(["--allowed-lateness", "2m"])
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(out.status.success(), "{}", out.both());
    let expected = 6_000 - dead;
    // pyarrow: the prefix as one dataset (it skips _-prefixed folders and files).
    let arrow = s3::python_s3(
        &endpoint,
        "import pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1], filesystem=s3)\n\
         print(t.num_rows, t.schema.field('window_start').type)",
        &[&format!("{}/{prefix}", s3::BUCKET)],
    );
    assert_eq!(
        arrow.trim(),
        format!("{expected} timestamp[us, tz=UTC]"),
        "pyarrow read: {arrow}"
    );
    // DuckDB with the httpfs extension shipped by duckdb-ext-httpfs.
    let python = common::python();
    let script = r#"
import os, sys, duckdb, duckdb_ext
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")  # stdout is the answer
con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
con.execute("SET autoinstall_known_extensions = false")
con.execute("LOAD httpfs")
con.execute(f"SET s3_endpoint = '{sys.argv[1]}'")
con.execute("SET s3_url_style = 'path'")
con.execute("SET s3_use_ssl = false")
con.execute("SET s3_region = 'us-east-1'")
con.execute(f"SET s3_access_key_id = '{os.environ['KEY_ID']}'")
con.execute(f"SET s3_secret_access_key = '{os.environ['SECRET']}'")
rows = con.execute(f"SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), typeof(any_value(window_start)) FROM read_parquet('s3://{sys.argv[2]}/**/*.parquet', hive_partitioning = true)").fetchall()
print(rows[0][0], rows[0][1], rows[0][2])
"#;
    let result = Command::new(&python)
        .args([
            "-c",
            script,
            endpoint.trim_start_matches("http://"),
            &format!("{}/{prefix}", s3::BUCKET),
        ])
        .env("KEY_ID", s3::ACCESS_KEY)
        .env("SECRET", s3::SECRET_KEY)
        .output()
        .expect("run the DuckDB reader (scripts/python-env.sh)");
    assert!(
        result.status.success(),
        "DuckDB httpfs failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let duck = String::from_utf8_lossy(&result.stdout);
    assert_eq!(
        duck.trim(),
        format!("{expected} {expected} TIMESTAMP WITH TIME ZONE"),
        "DuckDB read: {duck}"
    );
}

#[test]
fn the_s3_store_keeps_the_store_contract() {
    use reclamacoes::output::Store;
    s3::require();
    let endpoint = s3::endpoint();
    let prefix = s3::random_prefix("contract");
    let store = s3::store(&endpoint, &prefix);
    // The store blocks: run it on a thread of its own, as the consumer does.
    std::thread::spawn(move || {
        store.put("a/b/x.json", b"one").unwrap();
        store.put("a/b/x.json", b"two").unwrap();
        assert_eq!(store.get("a/b/x.json").unwrap().unwrap(), &b"two"[..]);
        assert!(store.put_new("a/c.json", b"first").unwrap());
        assert!(!store.put_new("a/c.json", b"second").unwrap());
        assert!(
            store.put_new("a/c.json", b"first").unwrap(),
            "our own bytes: a retried create whose first attempt landed"
        );
        assert_eq!(store.get("a/c.json").unwrap().unwrap(), &b"first"[..]);
        // Three 8 MiB parts and a bit: a multipart upload, invisible until finished.
        let big: Vec<u8> = (0..(25 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let mut w = store.writer("z/big.bin").unwrap();
        w.write_all(&big).unwrap();
        assert_eq!(
            store.get("z/big.bin").unwrap(),
            None,
            "invisible until finish"
        );
        assert_eq!(w.finish().unwrap(), big.len() as u64);
        assert_eq!(store.get("z/big.bin").unwrap().unwrap(), &big[..]);
        // A suffix is a ranged read (a Parquet footer without the file); longer than the object:
        // all of it; no object: `None`.
        assert_eq!(
            store.get_suffix("z/big.bin", 1000).unwrap().unwrap(),
            &big[big.len() - 1000..]
        );
        assert_eq!(
            store.get_suffix("a/b/x.json", 100).unwrap().unwrap(),
            &b"two"[..]
        );
        assert_eq!(store.get_suffix("z/none.bin", 8).unwrap(), None);
        let mut unfinished = store.writer("z/gone.bin").unwrap();
        unfinished.write_all(&big[..(9 << 20)]).unwrap();
        drop(unfinished);
        let mut small = store.writer("z/small.bin").unwrap();
        small.write_all(b"tiny").unwrap();
        assert_eq!(small.finish().unwrap(), 4);
        let keys = |p: &str| -> Vec<String> {
            store.list(p).unwrap().into_iter().map(|o| o.key).collect()
        };
        assert_eq!(
            keys(""),
            ["a/b/x.json", "a/c.json", "z/big.bin", "z/small.bin"],
            "recursive, relative to the prefix, sorted; no unfinished upload"
        );
        assert_eq!(keys("a/"), ["a/b/x.json", "a/c.json"]);
        assert_eq!(
            keys("a/b"),
            ["a/b/x.json"],
            "a string prefix, not only folders"
        );
        assert_eq!(store.list("").unwrap()[2].size, big.len() as u64);
        store.delete("a/c.json").unwrap();
        store.delete("a/c.json").unwrap();
        assert_eq!(store.get("a/c.json").unwrap(), None);
        assert!(store.failing().is_none());
        assert!(store.describe().contains(&prefix), "{}", store.describe());
        assert!(!format!("{store:?}").contains(s3::SECRET_KEY));
    })
    .join()
    .unwrap();
}
