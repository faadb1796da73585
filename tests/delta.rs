//! `app consume` writes a Delta Lake table (`--table delta`, the default), and real readers prove
//! it: python `deltalake`, `polars.read_delta` and DuckDB's delta extension
//! (`tests/delta_readers.py`, through `common::delta`) read every row of the closed windows
//! exactly once, at the latest version and at every earlier one; and the log under
//! `_delta_log/` is what `src/output/delta.rs` says it writes. Against the shared Kafka,
//! MariaDB and S3 server, with the real binary; every test has its own topic and output.
//!
//! | test | what is done | what must hold |
//! |---|---|---|
//! | `a_bounded_run_...` | 3 partitions, 4 one-minute windows, one bounded run into a directory | the three readers read every row once; history: CREATE TABLE, then STREAMING UPDATEs; every version reads exactly the rows its commits added up to it (time travel), none twice; each add's stats (numRecords, min/max of kafka_partition, kafka_offset, window_start) are its file's (DuckDB), and the numRecords add up to the rows; one txn a commit, `<topic>-<partition>` of its files, rising, at most the partition's checkpoint generation; what the last checkpoints carry as unpublished is in the table; the table's files are the window files on disk |
//! | `a_second_run_...` | a run that leaves windows open (no `--close-windows`: after it every record is late), more records in later windows, a second run on the same output | the same table (one metaData, the same id); the readers read the union once; the first run's last version still reads the first run's rows |
//! | `table_none_...` | `--table none` | no `_delta_log/`; the Parquet files hold every row |
//! | `delta_checkpoints_...` | `--delta-checkpoint-every 2`, 4 partitions, two runs (as the second) | `_last_checkpoint` names a `.checkpoint.parquet` that holds every add and every partition's txn up to it; exact reads; with every commit up to the checkpoint deleted (a log cleanup), still exact |
//! | `a_bounded_run_into_s3_...` | the first test with `--output s3://…` (shared versitygw) | the same, the readers reading straight from S3 (the log checked on a download) |
//! | `sigkilled_consumer_...` | a run that closes windows but commits nothing (`--checkpoint-interval 1h`) SIGKILLed with their files on disk; then SIGKILLed mid-stream 3 times; then run to completion | nothing of the first run in the table; after the kills: every add's file is on disk, the readers read the log's rows once; at the end: every row once, every add's file on disk, the table's files exactly the window files on disk; no file that no checkpoint had committed (the first run's, and those beside the table after the last kill) was ever added, and none is left; the files committed but not yet published at the last kill are in the table |

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::delta::{self, LogCommit};
use common::{consume_args, output, random_topic, s3, BOUNDED, KILL_TEST_FLAGS};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;
use serde_json::Value as Json;

/// Produces records `from..from + count` to each of the `partitions` partitions of `topic`
/// (created if needed), their event times rising through the one-minute windows
/// `first_minute..first_minute + minutes` after 2026-01-01 with under 5 s of disorder (less than
/// the allowed lateness): no record is late and none undecodable, so the table gets them all.
async fn produce(
    topic: &str,
    partitions: i32,
    from: u64,
    count: u64,
    first_minute: i64,
    minutes: i64,
) {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    kafka.ensure_topic(topic, partitions, 1).await.unwrap();
    let schema = Schema::banco_central();
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
        + first_minute * 60_000;
    for p in 0..partitions {
        let h = common::partition(&kafka, topic, p).await;
        let records: Vec<_> = (from..from + count)
            .map(|i| {
                let forward = ((i - from) as i64 * minutes * 60_000) / count as i64;
                let jitter = ((i * 7919 + p as u64 * 31) % 5_000) as i64;
                common::synthetic_record(&schema, i, start + forward + jitter)
            })
            .collect();
        for chunk in records.chunks(2000) {
            h.produce(chunk.to_vec(), Compression::Lz4).await.unwrap();
        }
    }
}

/// A bounded run (`--until-caught-up --close-windows`) of `topic` into `output` (a directory or
/// an `s3://` URL of the shared server) with `flags`; it must succeed. Returns its summary.
fn consume(topic: &str, output: &str, flags: &[&str], cwd: &Path) -> String {
    consume_with(topic, output, &[&BOUNDED[..], flags].concat(), cwd)
}

/// `app consume` of `topic` into `output` with `flags` (and the S3 server's settings for an
/// `s3://` output); it must succeed. Returns its summary.
fn consume_with(topic: &str, output: &str, flags: &[&str], cwd: &Path) -> String {
    let mut cmd = common::app();
    if output.starts_with("s3://") {
        s3::env(&mut cmd);
    }
    let args = consume_args(topic, output, flags);
    let out = cmd.args(&args).current_dir(cwd).output().expect("run app");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "app {args:?} failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A run to the end of the topic that leaves the windows the watermark has not passed open
/// (`--until-caught-up` without `--close-windows`, which would make every later record late),
/// then [`delta::assert_rows`] of what it published, which is part of the `all` records.
/// Returns the table version and rows after it.
fn consume_leaving_windows_open(
    topic: &str,
    out: &Path,
    flags: &[&str],
    all: u64,
    cwd: &Path,
) -> (u64, u64) {
    let table = out.to_str().unwrap();
    consume_with(topic, table, &[&["--until-caught-up"], flags].concat(), cwd);
    let (_, rows) = delta::live_files(out);
    assert!(
        0 < rows && rows < all,
        "the closed windows are published, the open ones not: {rows} of {all}"
    );
    let reads = delta::assert_rows(table, rows, "windows left open");
    (reads.version(), rows)
}

/// The table id of the log: its one metaData action (version 0; no later commit changes it).
fn table_id(log: &[LogCommit]) -> String {
    let metadata: Vec<(u64, &Json)> = log
        .iter()
        .flat_map(|c| c.actions("metaData").map(move |m| (c.version, m)))
        .collect();
    assert_eq!(metadata.len(), 1, "one metaData action: {metadata:?}");
    assert_eq!(metadata[0].0, 0, "the metaData is the creation's");
    metadata[0].1["id"].as_str().unwrap().to_string()
}

/// Microseconds since the epoch of a timestamp of the stats (`2026-01-01T00:01:00.000Z`).
fn stat_micros(v: &Json) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp stat: {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("timestamp stat {s}: {e}"))
        .timestamp_micros()
}

/// Per window file on disk (canonical path): rows and min/max of kafka_partition, kafka_offset
/// and window_start (µs), as DuckDB reads them from the files themselves.
fn file_facts(out: &Path) -> BTreeMap<std::path::PathBuf, [i64; 7]> {
    common::duckdb(
        out,
        &format!(
            "SELECT filename, count(*), min(kafka_partition), max(kafka_partition), \
             min(kafka_offset), max(kafka_offset), min(epoch_us(window_start)), \
             max(epoch_us(window_start)) FROM {} GROUP BY filename",
            output::TABLE_FILES
        ),
    )
    .into_iter()
    .map(|r| {
        let path = Path::new(r[0].as_str().unwrap()).canonicalize().unwrap();
        (path, std::array::from_fn(|i| r[i + 1].as_i64().unwrap()))
    })
    .collect()
}

/// Checks the log of the finished table in the directory `dir` (the output, or a download of
/// it) against the files and checkpoints there: the commits, their txn actions and the adds'
/// stats (see the module docs). Returns the log.
fn check_log(dir: &Path, topic: &str, partitions: i32, rows: u64) -> Vec<LogCommit> {
    let log = delta::log(dir);
    let versions: Vec<u64> = log.iter().map(|c| c.version).collect();
    assert_eq!(
        versions,
        (0..log.len() as u64).collect::<Vec<_>>(),
        "the commits are 0..=latest"
    );
    table_id(&log);
    let operation = |c: &LogCommit| {
        c.actions("commitInfo").next().expect("a commitInfo")["operation"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(operation(&log[0]), "CREATE TABLE");
    assert_eq!(log[0].adds().count(), 0, "the creation adds nothing");
    assert!(log.len() > 1, "the run published");

    let facts = file_facts(dir);
    let mut txn_versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut windows = BTreeSet::new();
    let mut sum = 0;
    for commit in &log[1..] {
        let what = format!("commit {}", commit.version);
        assert_eq!(operation(commit), "STREAMING UPDATE", "{what}");
        let txns: Vec<&Json> = commit.actions("txn").collect();
        assert_eq!(txns.len(), 1, "{what}: one txn: {txns:?}");
        let app = txns[0]["appId"].as_str().unwrap().to_string();
        let partition: i64 = app
            .strip_prefix(&format!("{topic}-"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: appId {app} is not {topic}-<partition>"));
        assert!((0..partitions as i64).contains(&partition), "{what}: {app}");
        txn_versions
            .entry(app)
            .or_default()
            .push(txns[0]["version"].as_i64().unwrap());
        assert!(commit.adds().count() > 0, "{what}: a publish adds files");
        for add in commit.adds() {
            let stats = delta::stats(add);
            let file = delta::add_file(dir, add);
            let what = format!("{what}: {}", file.display());
            let num = stats["numRecords"].as_i64().expect("numRecords");
            let (min, max) = (&stats["minValues"], &stats["maxValues"]);
            let stat = |m: &Json, column: &str| -> i64 {
                if column == "window_start" {
                    stat_micros(&m[column])
                } else {
                    m[column]
                        .as_i64()
                        .unwrap_or_else(|| panic!("{what}: no {column} in {stats}"))
                }
            };
            let claimed = [
                num,
                stat(min, "kafka_partition"),
                stat(max, "kafka_partition"),
                stat(min, "kafka_offset"),
                stat(max, "kafka_offset"),
                stat(min, "window_start"),
                stat(max, "window_start"),
            ];
            let actual = facts
                .get(&file)
                .unwrap_or_else(|| panic!("{what}: the added file is not on disk"));
            assert_eq!(
                &claimed, actual,
                "{what}: stats [rows, partition min/max, offset min/max, window_start min/max]"
            );
            assert_eq!(
                claimed[1], partition,
                "{what}: a file of the txn's partition"
            );
            windows.insert(claimed[5]);
            sum += num as u64;
        }
    }
    assert_eq!(sum, rows, "the adds' numRecords add up to the rows");
    assert!(windows.len() >= 2, "files of several windows: {windows:?}");

    // Per partition: versions rise, and the last is at most its newest checkpoint's generation
    // and at least that of every file the checkpoint still carries as unpublished (it was
    // captured before its own publish): the table holds those files.
    let (live, live_rows) = delta::live_files(dir);
    let store = reclamacoes::output::LocalStore::new(dir);
    let checkpoints = reclamacoes::checkpoint::store::read_latest(&store).unwrap();
    assert_eq!(checkpoints.len(), partitions as usize);
    for (cp, _) in &checkpoints {
        let app = format!("{topic}-{}", cp.partition);
        let versions = txn_versions
            .get(&app)
            .unwrap_or_else(|| panic!("no txn of {app}: {txn_versions:?}"));
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{app}: txn versions rise: {versions:?}"
        );
        let last = *versions.last().unwrap();
        assert!(
            (1..=cp.generation as i64).contains(&last),
            "{app}: txn version {last}, checkpoint generation {}",
            cp.generation
        );
        for f in &cp.unpublished {
            assert!(
                f.generation as i64 <= last,
                "{app}: txn version {last} below an unpublished file's generation: {f:?}"
            );
        }
    }
    for f in delta::unpublished_files(dir) {
        assert!(
            live.contains(&f),
            "an unpublished file is not in the table: {}",
            f.display()
        );
    }
    // The table's files are the window files on disk.
    assert_eq!(live_rows, rows);
    assert_eq!(
        live,
        delta::window_files(dir),
        "the table holds exactly the window files"
    );
    log
}

/// Checks the finished table at `location` (`dir`, or the S3 URL `dir` is a download of): the
/// log ([`check_log`]), then the readers at the latest version and at every earlier one (each
/// reads exactly the numRecords of the commits up to it, none twice; version 1 fewer than all).
/// Returns the log.
fn check_table(
    location: &str,
    dir: &Path,
    topic: &str,
    partitions: i32,
    rows: u64,
) -> Vec<LogCommit> {
    let log = check_log(dir, topic, partitions, rows);
    let reads = delta::assert_rows(location, rows, "latest");
    let latest = log.last().unwrap().version;
    assert_eq!(reads.version(), latest, "deltalake reads the latest commit");
    assert_eq!(
        reads.files,
        log.iter().map(|c| c.adds().count() as u64).sum::<u64>(),
        "deltalake's snapshot has every added file"
    );
    let history: Vec<(u64, &str)> = reads
        .history
        .iter()
        .map(|h| (h.version, h.operation.as_deref().unwrap_or("")))
        .collect();
    let expected: Vec<(u64, &str)> = (0..=latest)
        .map(|v| {
            (
                v,
                if v == 0 {
                    "CREATE TABLE"
                } else {
                    "STREAMING UPDATE"
                },
            )
        })
        .collect();
    assert_eq!(history, expected, "deltalake's history");

    let mut cumulative = 0;
    for commit in &log[1..] {
        cumulative += commit.adds().map(delta::num_records).sum::<u64>();
        let v = commit.version;
        let at = delta::read(location, Some(v));
        for (name, r) in at.readers() {
            assert_eq!(
                (r.rows, r.duplicates, r.version),
                (cumulative, 0, Some(v)),
                "{name} at version {v}: the rows added up to it, once: {at:?}"
            );
        }
        if v == 1 {
            assert!(cumulative < rows, "version 1 holds part of the table");
        }
    }
    eprintln!("time travel: versions 1..={latest} read exactly their rows");
    log
}

#[tokio::test]
async fn a_bounded_run_is_a_delta_table_every_reader_reads_exactly_at_every_version() {
    let topic = random_topic("delta");
    produce(&topic, 3, 0, 2_000, 0, 4).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let summary = consume(&topic, out.to_str().unwrap(), &[], work.path());
    assert!(summary.contains("rows written: 6000"), "{summary}");
    assert!(out.join(delta::LOG_DIR).is_dir(), "_delta_log/ exists");
    check_table(out.to_str().unwrap(), &out, &topic, 3, 6_000);
}

#[tokio::test]
async fn a_second_run_adds_to_the_same_table_and_readers_read_the_union_once() {
    let topic = random_topic("delta-again");
    produce(&topic, 3, 0, 1_000, 0, 3).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let table = out.to_str().unwrap();
    let (first_version, first_rows) =
        consume_leaving_windows_open(&topic, &out, &[], 3_000, work.path());
    let id = table_id(&delta::log(&out));

    // More records, in later windows (none late), and a second run on the same output that
    // closes every window.
    produce(&topic, 3, 1_000, 1_500, 3, 3).await;
    let summary = consume(&topic, table, &[], work.path());
    assert!(summary.contains("late rows: 0"), "{summary}");
    let log = check_table(table, &out, &topic, 3, 7_500);
    assert_eq!(table_id(&log), id, "the second run adds to the same table");
    assert!(log.last().unwrap().version > first_version);
    let then = delta::read(table, Some(first_version));
    for (name, r) in then.readers() {
        assert_eq!(
            (r.rows, r.duplicates),
            (first_rows, 0),
            "{name} at the first run's last version: {then:?}"
        );
    }
}

#[tokio::test]
async fn table_none_writes_no_delta_log() {
    let topic = random_topic("delta-none");
    produce(&topic, 2, 0, 500, 0, 2).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    consume(
        &topic,
        out.to_str().unwrap(),
        &["--table", "none"],
        work.path(),
    );
    assert!(!out.join(delta::LOG_DIR).exists(), "no _delta_log/");
    assert_eq!(
        output::count(&out, output::TABLE),
        1_000,
        "the Parquet files hold every row"
    );
}

#[tokio::test]
async fn delta_checkpoints_are_written_and_read() {
    let topic = random_topic("delta-checkpoint");
    let partitions = 4;
    produce(&topic, partitions, 0, 1_000, 0, 3).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let table = out.to_str().unwrap();
    let flags = ["--delta-checkpoint-every", "2"];
    consume_leaving_windows_open(&topic, &out, &flags, 4_000, work.path());
    produce(&topic, partitions, 1_000, 1_000, 3, 3).await;
    consume(&topic, table, &flags, work.path());
    let rows = 8_000;

    let last: Json = serde_json::from_slice(
        &std::fs::read(out.join("_delta_log/_last_checkpoint"))
            .expect("_delta_log/_last_checkpoint exists"),
    )
    .unwrap();
    let version = last["version"].as_u64().unwrap();
    let checkpoint = out.join(format!("_delta_log/{version:020}.checkpoint.parquet"));
    assert!(checkpoint.is_file(), "{} ({last})", checkpoint.display());
    assert!(version >= 2 && version % 2 == 0, "{last}");
    let log = check_table(table, &out, &topic, partitions, rows);
    eprintln!(
        "checkpoint at version {version} of {}",
        log.last().unwrap().version
    );

    // The checkpoint holds the state up to it: every add, and each partition's application
    // version (what a writer reads back after a log cleanup).
    let upto = &log[..=version as usize];
    let adds: BTreeSet<String> = upto
        .iter()
        .flat_map(|c| c.adds().map(|a| a["path"].as_str().unwrap().to_string()))
        .collect();
    let mut txns = BTreeMap::new();
    for c in upto {
        for t in c.actions("txn") {
            txns.insert(
                t["appId"].as_str().unwrap().to_string(),
                t["version"].as_i64().unwrap(),
            );
        }
    }
    let source = format!("read_parquet('{}')", checkpoint.display());
    let in_checkpoint = |sql: &str| common::duckdb(&out, &sql.replace("{cp}", &source));
    let cp_adds: BTreeSet<String> =
        in_checkpoint("SELECT add.path FROM {cp} WHERE add IS NOT NULL")
            .into_iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
    assert_eq!(cp_adds, adds, "the checkpoint's adds");
    let cp_txns: BTreeMap<String, i64> =
        in_checkpoint("SELECT txn.appId, txn.version FROM {cp} WHERE txn IS NOT NULL")
            .into_iter()
            .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
            .collect();
    assert_eq!(cp_txns, txns, "the checkpoint's application versions");

    // A log cleanup: a copy of the table without the commits up to the checkpoint reads the
    // same (the readers start from the checkpoint).
    let copy = work.path().join("cleaned");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&out)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    for v in 0..=version {
        std::fs::remove_file(copy.join(format!("_delta_log/{v:020}.json"))).unwrap();
    }
    let cleaned = delta::assert_rows(
        copy.to_str().unwrap(),
        rows,
        "commits up to the checkpoint deleted",
    );
    assert_eq!(cleaned.version(), log.last().unwrap().version);
}

#[tokio::test]
async fn a_bounded_run_into_s3_is_a_delta_table_every_reader_reads_from_s3() {
    s3::require();
    let topic = random_topic("delta-s3");
    produce(&topic, 3, 0, 2_000, 0, 4).await;
    let work = tempfile::tempdir().unwrap();
    let prefix = s3::random_prefix("delta");
    let url = s3::url(&prefix);
    let summary = consume(&topic, &url, &[], work.path());
    assert!(summary.contains("rows written: 6000"), "{summary}");
    // The log and files checked on a download (pyarrow), the readers reading from S3.
    let copy = work.path().join("copy");
    s3::download(&s3::endpoint(), &prefix, &copy);
    assert!(copy.join(delta::LOG_DIR).is_dir(), "_delta_log/ exists");
    check_table(&url, &copy, &topic, 3, 6_000);
}

#[tokio::test]
async fn sigkilled_consumer_leaves_only_committed_files_in_the_table() {
    let topic = random_topic("delta-sigkill");
    const PER_PARTITION: u64 = 15_000;
    produce(&topic, 3, 0, PER_PARTITION, 0, 15).await;
    let total = PER_PARTITION * 3;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let table = out.to_str().unwrap();
    // A run that closes windows, writing their files, but commits nothing (no checkpoint for an
    // hour), SIGKILLed once some are on disk: files written, never committed.
    let mut first = common::app()
        .args(consume_args(&topic, &out, &["--checkpoint-interval", "1h"]))
        .current_dir(work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let closed = common::wait_for(Duration::from_secs(120), || {
        delta::window_files(&out).len() >= 6
    });
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(closed, "the first run closed no windows within 120 s");
    let never_committed = delta::window_files(&out);
    assert_eq!(
        output::committed_offsets(&out),
        0,
        "the first run committed nothing"
    );
    let (live, _) = delta::live_files(&out);
    assert!(live.is_empty(), "nothing in the table: {live:?}");
    eprintln!(
        "SIGKILLed a run with {} window files written, none committed",
        never_committed.len()
    );

    // Then SIGKILLs at random moments, mid-stream.
    let flags = [&BOUNDED[..], &KILL_TEST_FLAGS].concat();
    let args = consume_args(&topic, &out, &flags);
    let (kills, attempts) = common::kill_mid_stream(
        || {
            let mut cmd = common::app();
            cmd.args(&args).current_dir(work.path());
            cmd
        },
        || output::committed_offsets(&out),
        total,
        3,
        15,
        Duration::from_secs(120),
    );
    assert!(
        kills >= 3,
        "only {kills} kills hit a run mid-stream in {attempts} attempts"
    );

    // After the last kill: the table is consistent, whatever was on disk beside it.
    let (live, live_rows) = delta::live_files(&out);
    for f in &live {
        assert!(f.is_file(), "an added file is missing: {}", f.display());
    }
    delta::assert_rows(table, live_rows, "after the last kill");
    let on_disk = delta::window_files(&out);
    let unpublished = delta::unpublished_files(&out);
    let beside: BTreeSet<_> = on_disk.difference(&live).cloned().collect();
    let waiting: BTreeSet<_> = beside.intersection(&unpublished).cloned().collect();
    eprintln!(
        "after {kills} kills: {} files in the table ({live_rows} rows), {} window files beside it \
         ({} committed and waiting to be published, {} never committed)",
        live.len(),
        beside.len(),
        waiting.len(),
        beside.len() - waiting.len()
    );
    let never_committed: BTreeSet<_> = never_committed
        .into_iter()
        .chain(beside.difference(&unpublished).cloned())
        .collect();

    let summary = consume(&topic, table, &KILL_TEST_FLAGS, work.path());
    assert!(summary.contains("(resumed from checkpoint)"), "{summary}");
    output::assert_exactly_once(&out, total, &format!("{kills} kills"));
    delta::assert_rows(table, total, &format!("{kills} kills and a last run"));
    let (live, live_rows) = delta::live_files(&out);
    assert_eq!(live_rows, total, "the log's numRecords");
    for f in &live {
        assert!(f.is_file(), "an added file is missing: {}", f.display());
    }
    assert_eq!(
        live,
        delta::window_files(&out),
        "the table holds exactly the window files"
    );
    let added: Vec<_> = never_committed.intersection(&live).collect();
    assert!(
        added.is_empty(),
        "files no checkpoint committed were added: {added:?}"
    );
    let left: Vec<_> = never_committed.iter().filter(|f| f.exists()).collect();
    assert!(
        left.is_empty(),
        "files no checkpoint committed are left: {left:?}"
    );
    for f in &waiting {
        assert!(
            live.contains(f),
            "a committed file was not published: {}",
            f.display()
        );
    }
}
