//! `app inspect --json` against a real output directory (fixtures produced to the real Kafka and
//! consumed with `--until-caught-up`, with dead letters, a closed window and late rows), its
//! numbers checked against DuckDB reading the same files; and its Delta table section (versions,
//! rows per version, app versions per partition, files not in the table) against what the test
//! produced and python deltalake reads.

mod common;

use common::{duckdb, scalar_u64 as scalar};

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{Duration as ChronoDuration, Utc};
use common::{handle, random_topic, raw_record as record, run_app};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;
use serde_json::Value as Json;

const PARTITIONS: i32 = 3;

fn consume(topic: &str, out: &Path) -> String {
    let o = run_app(
        &common::consume_args(topic, out, &["--window", "1m", "--until-caught-up"]),
        out.parent().unwrap(),
        true,
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn inspect_json(out: &Path) -> Json {
    let o = run_app(
        &["inspect", "--json", out.to_str().unwrap()],
        out.parent().unwrap(),
        true,
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}): {:?}", o.stdout))
}

#[tokio::test]
async fn inspect_json_agrees_with_duckdb() {
    common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("inspect");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    common::produce_input(
        &topic,
        &PARTITIONS.to_string(),
        &common::fixtures(),
        work.path(),
    );
    // A valid record to copy, and on every partition one record 3 minutes in the future (under
    // --max-future 5m): every partition's watermark passes the fixtures' window, which closes
    // (_SUCCESS); the future window stays open, its rows staged.
    let payload = common::kcat_read_all(&topic)
        .into_iter()
        .find_map(|r| r.payload)
        .expect("the fixtures produced records");
    let future = Utc::now() + ChronoDuration::minutes(3);
    for p in 0..PARTITIONS {
        handle(&topic, p)
            .await
            .produce(vec![record(payload.as_bytes(), future)], Compression::None)
            .await
            .unwrap();
    }
    // Two undecodable records -> _dead_letter.
    handle(&topic, 1)
        .await
        .produce(
            vec![
                record(b"not json", Utc::now()),
                record(br#"{"ano":"x"}"#, Utc::now()),
            ],
            Compression::None,
        )
        .await
        .unwrap();
    let first = consume(&topic, &out);
    assert!(first.contains("rows written: 80"), "{first}");

    // Records of the (now closed) present window arrive after the first run: late, one per
    // partition.
    for p in 0..PARTITIONS {
        handle(&topic, p)
            .await
            .produce(
                vec![record(payload.as_bytes(), Utc::now())],
                Compression::None,
            )
            .await
            .unwrap();
    }
    let second = consume(&topic, &out);
    assert!(second.contains("late rows: 3 to _late"), "{second}");

    let report = inspect_json(&out);
    let num = |v: &Json| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
    let windows_glob = common::output::TABLE_FILES;

    // Row totals: the table holds the closed windows; the future window's rows are staged.
    let total = scalar(&out, &format!("SELECT count(*) FROM {windows_glob}"));
    assert_eq!(num(&report["total_rows"]), total);
    assert_eq!(total, 80, "the 80 fixture rows");
    assert_eq!(num(&report["staged"]["rows"]), 3, "the 3 future records");
    assert_eq!(num(&report["staged"]["windows"]), 1);

    // Rows per window, keyed by directory name; the rows' window_start column agrees.
    let by_dir: BTreeMap<String, u64> = duckdb(
        &out,
        &format!(
            "SELECT regexp_extract(filename, '(window=[^/]+)/', 1) AS dir, count(*), \
             count(DISTINCT window_start) FROM {windows_glob} GROUP BY dir ORDER BY dir"
        ),
    )
    .into_iter()
    .map(|r| {
        assert_eq!(
            r[2].as_u64(),
            Some(1),
            "one window_start value per directory: {r:?}"
        );
        (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap())
    })
    .collect();
    let windows = report["windows"].as_array().unwrap();
    let reported: BTreeMap<String, u64> = windows
        .iter()
        .map(|w| (w["dir"].as_str().unwrap().to_string(), num(&w["rows"])))
        .collect();
    assert_eq!(reported, by_dir);
    assert!(!windows.is_empty(), "the present window(s)");

    // Window count and files per window.
    let files_by_dir: BTreeMap<String, u64> = duckdb(
        &out,
        "SELECT regexp_extract(file, '(window=[^/]+)/', 1) AS dir, count(*) \
         FROM glob('{out}/window=*/*.parquet') GROUP BY dir",
    )
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
    .collect();
    assert_eq!(num(&report["window_count"]), files_by_dir.len() as u64);
    for w in windows {
        assert_eq!(num(&w["files"]), files_by_dir[w["dir"].as_str().unwrap()]);
    }
    assert_eq!(
        num(&report["total_files"]),
        files_by_dir.values().sum::<u64>()
    );

    // Closed windows = directories holding _SUCCESS.
    let closed: Vec<String> = duckdb(
        &out,
        "SELECT regexp_extract(file, '(window=[^/]+)/', 1) FROM glob('{out}/window=*/_SUCCESS') ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].as_str().unwrap().to_string())
    .collect();
    let reported_closed: Vec<String> = windows
        .iter()
        .filter(|w| w["closed"] == Json::Bool(true))
        .map(|w| w["dir"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported_closed, closed);
    assert_eq!(num(&report["closed_windows"]), closed.len() as u64);
    assert!(!closed.is_empty(), "the fixtures' window closed");
    assert_eq!(
        num(&report["open_windows"]),
        windows.len() as u64 - closed.len() as u64
    );

    // Late rows and dead letters.
    let late = scalar(
        &out,
        &format!("SELECT count(*) FROM {}", common::output::LATE),
    );
    assert_eq!(num(&report["late"]["rows"]), late);
    assert_eq!(late, 3);
    let dead = duckdb(
        &out,
        &format!(
            "SELECT kafka_partition, kafka_offset, error FROM {} ORDER BY kafka_offset",
            common::output::DEAD
        ),
    );
    assert_eq!(num(&report["dead_letters"]["rows"]), dead.len() as u64);
    assert_eq!(dead.len(), 2);
    let errors = report["dead_letters"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    for (reported, read) in errors.iter().zip(&dead) {
        assert_eq!(reported["kafka_partition"], read[0]);
        assert_eq!(reported["kafka_offset"], read[1]);
        assert_eq!(reported["error"], read[2]);
    }

    // Schema: the columns and order DuckDB sees, with the Arrow types.
    let columns: Vec<String> = duckdb(
        &out,
        &format!(
            "SELECT column_name FROM (DESCRIBE SELECT * EXCLUDE (filename) FROM {windows_glob})"
        ),
    )
    .into_iter()
    .map(|r| r[0].as_str().unwrap().to_string())
    .collect();
    let schema: Vec<String> = report["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(schema, columns);
    let sample_rows = report["sample"]["rows"].as_array().unwrap();
    assert_eq!(sample_rows.len(), 5);
    assert_eq!(sample_rows[0].as_array().unwrap().len(), columns.len());

    // Checkpoints: one per partition; every next offset is the end of the partition, and so is
    // the resume offset (the open window's rows are staged, so nothing is held only in memory).
    let checkpoints = report["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), PARTITIONS as usize, "{checkpoints:?}");
    for (p, c) in checkpoints.iter().enumerate() {
        assert_eq!(c["partition"].as_u64(), Some(p as u64));
        assert_eq!(c["topic"], Json::String(topic.clone()));
        assert!(num(&c["generation"]) >= 2, "two runs committed: {c}");
        let (_, high) = handle(&topic, p as i32).await.offsets().await.unwrap();
        assert_eq!(c["next_offset"].as_i64(), Some(high), "partition {p}");
        assert_eq!(c["resume_offset"].as_i64(), Some(high), "partition {p}");
        assert_eq!(c["staged_windows"].as_u64(), Some(1), "partition {p}");
    }

    // The text report says the same.
    let text = run_app(&["inspect", out.to_str().unwrap()], work.path(), true);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "windows: {} ({} closed, {} open)",
            windows.len(),
            closed.len(),
            windows.len() - closed.len()
        )),
        "{text}"
    );
    assert!(text.contains("late rows (_late): 3 rows"), "{text}");
    assert!(
        text.contains("dead letters (_dead_letter): 2 records"),
        "{text}"
    );

    // A directory that is not an output is a clear error.
    let err = run_app(
        &["inspect", work.path().to_str().unwrap()],
        work.path(),
        false,
    );
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("holds no output"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The Delta table

const MINUTE_MS: i64 = 60_000;

/// `rows` records of partition `p` with event (Kafka) time `event_ms`.
async fn produce_at(topic: &str, p: i32, rows: usize, event_ms: i64) {
    let schema = Schema::banco_central();
    let records = (0..rows as u64)
        .map(|i| common::synthetic_record(&schema, i, event_ms))
        .collect();
    handle(topic, p)
        .await
        .produce(records, Compression::None)
        .await
        .unwrap();
}

/// The start of a window an hour ago: far enough in the past that the wall clock plays no part.
fn an_hour_ago() -> i64 {
    let now = Utc::now().timestamp_millis();
    (now - 60 * MINUTE_MS) / MINUTE_MS * MINUTE_MS
}

/// A consumer run to the end of the topic; windows close on the records' event time only.
fn consume_table(topic: &str, out: &Path, extra: &[&str]) -> String {
    let mut flags = vec![
        "--window",
        "1m",
        "--until-caught-up",
        "--idle-advance",
        "off",
    ];
    flags.extend_from_slice(extra);
    let o = run_app(
        &common::consume_args(topic, out, &flags),
        out.parent().unwrap(),
        true,
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn inspect_with(out: &Path, flags: &[&str]) -> (Json, String) {
    let path = out.to_str().unwrap();
    let mut args = vec!["inspect", "--sample", "0"];
    args.extend_from_slice(flags);
    let json = run_app(
        &[&args[..], &["--json", path]].concat(),
        out.parent().unwrap(),
        true,
    );
    let json = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}): {:?}", json.stdout));
    let text = run_app(&[&args[..], &[path]].concat(), out.parent().unwrap(), true);
    (json, String::from_utf8_lossy(&text.stdout).into_owned())
}

/// (app id -> (files added, rows added, txn version)) of versions `range`, each commit setting
/// exactly one txn.
fn by_app(delta: &Json, range: std::ops::RangeInclusive<u64>) -> BTreeMap<String, (u64, u64, i64)> {
    delta["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| range.contains(&v["version"].as_u64().unwrap()))
        .map(|v| {
            assert_eq!(v["operation"], "STREAMING UPDATE", "{v}");
            let txns = v["txns"].as_array().unwrap();
            assert_eq!(txns.len(), 1, "one txn per commit: {v}");
            (
                txns[0]["app_id"].as_str().unwrap().to_string(),
                (
                    v["files_added"].as_u64().unwrap(),
                    v["rows_added"].as_u64().unwrap(),
                    txns[0]["version"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// What python deltalake reads at `version` (tests/delta_readers.py: rows, and the history).
fn deltalake_at(out: &Path, version: u64) -> Json {
    let o = std::process::Command::new(common::python())
        .arg(common::repo_root().join("tests/delta_readers.py"))
        .arg(out)
        .args(["--version", &version.to_string()])
        .output()
        .expect("run tests/delta_readers.py");
    assert!(
        o.status.success(),
        "delta_readers.py failed on version {version}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Two runs over three partitions: the first closes a window (one commit per partition), the
/// second the next one. `app inspect` lists the seven versions with their rows and txns, each
/// partition's app version beside its checkpoint, and python deltalake reads at every version
/// the rows the versions added up to it.
#[tokio::test]
async fn inspect_reports_the_delta_tables_versions_and_partitions() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("inspect-delta");
    kafka.ensure_topic(&topic, PARTITIONS, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let started = Utc::now();
    let t0 = an_hour_ago();
    // Run 1: window t0 gets p+1 rows per partition and closes (a record at t0+2m10s passes
    // the watermark, 10 s of lateness, over its end); the window t0+2m stays open.
    for p in 0..PARTITIONS {
        produce_at(&topic, p, p as usize + 1, t0 + 10_000).await;
        produce_at(&topic, p, 1, t0 + 2 * MINUTE_MS + 10_000).await;
    }
    consume_table(&topic, &out, &["--delta-checkpoint-every", "2"]);
    // Run 2: window t0+2m gets 2p+2 more rows and closes: 2p+3 rows per partition.
    for p in 0..PARTITIONS {
        produce_at(&topic, p, 2 * p as usize + 2, t0 + 2 * MINUTE_MS + 20_000).await;
        produce_at(&topic, p, 1, t0 + 4 * MINUTE_MS + 10_000).await;
    }
    consume_table(&topic, &out, &["--delta-checkpoint-every", "2"]);

    let (report, text) = inspect_with(&out, &[]);
    let delta = &report["delta"];
    let app = |p: i32| format!("{topic}-{p}");
    assert_eq!(delta["version"], 6, "{delta:#}");
    assert_eq!(
        (delta["files"].as_u64(), delta["rows"].as_u64()),
        (Some(6), Some(6 + 15))
    );
    assert_eq!(
        (delta["commits"].as_u64(), delta["oldest_commit"].as_u64()),
        (Some(7), Some(0))
    );
    // The newest Delta checkpoint (one every 2 versions; a writer skips its turn when another
    // commit lands first) is the one in the log directory.
    let newest_checkpoint = std::fs::read_dir(out.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".checkpoint.parquet")?
                .parse::<u64>()
                .ok()
        })
        .max();
    assert!(
        newest_checkpoint.is_some(),
        "--delta-checkpoint-every 2 wrote one"
    );
    assert_eq!(delta["checkpoint"].as_u64(), newest_checkpoint);

    // The versions, oldest first: the table's creation, then one commit per partition and run.
    let versions = delta["versions"].as_array().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..=6).collect::<Vec<_>>());
    assert_eq!(versions[0]["operation"], "CREATE TABLE");
    assert_eq!(
        (
            versions[0]["files_added"].as_u64(),
            versions[0]["rows_added"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let first = by_app(delta, 1..=3);
    let second = by_app(delta, 4..=6);
    for p in 0..PARTITIONS {
        let (files, rows, _) = first[&app(p)];
        assert_eq!(
            (files, rows),
            (1, p as u64 + 1),
            "run 1, partition {p}: {first:?}"
        );
        let (files, rows, _) = second[&app(p)];
        assert_eq!(
            (files, rows),
            (1, 2 * p as u64 + 3),
            "run 2, partition {p}: {second:?}"
        );
        assert!(
            second[&app(p)].2 > first[&app(p)].2,
            "the app version grows"
        );
    }
    for v in versions {
        let at = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
        assert!(
            at >= started - ChronoDuration::seconds(1) && at <= Utc::now(),
            "{v}"
        );
    }

    // Per partition: the table's app version is the txn of its last commit, next to the
    // newest checkpoint generation; everything committed is published.
    let partitions = delta["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), PARTITIONS as usize, "{partitions:?}");
    for (p, row) in partitions.iter().enumerate() {
        let p = p as i32;
        let checkpoint = &report["checkpoints"][p as usize];
        assert_eq!(row["app_id"], Json::String(app(p)));
        assert_eq!(row["table_version"].as_i64(), Some(second[&app(p)].2));
        assert_eq!(row["checkpoint_generation"], checkpoint["generation"]);
        assert!(
            row["table_version"].as_i64().unwrap() <= checkpoint["generation"].as_i64().unwrap()
        );
        assert_eq!(row["state"], "published", "{row}");
        assert_eq!(row["pending_files"], 0);
        // The text row: app id, table version, checkpoint generation, state.
        let row_text: Vec<&str> = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", app(p))))
            .unwrap_or_else(|| panic!("no row for partition {p}:\n{text}"))
            .split_whitespace()
            .take(4)
            .collect();
        let generation = checkpoint["generation"].to_string();
        let table_version = second[&app(p)].2.to_string();
        assert_eq!(
            row_text,
            [app(p).as_str(), &table_version, &generation, "published"],
            "{text}"
        );
    }
    let checks = &delta["checks"];
    assert_eq!(checks["consistent"], true);
    assert_eq!(checks["checked"], 6);
    assert_eq!(
        (
            checks["not_in_table"]["count"].as_u64(),
            checks["pending"]["count"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // The text says the same, and how to read a version.
    for needle in [
        "delta table (_delta_log): version 6, 6 files, 21 rows".to_string(),
        "versions (7 of 7 commits kept):".to_string(),
        format!("{}=", app(2)),
        "all 6 files of version 6 in the output with their recorded sizes".to_string(),
        format!("deltalake.DeltaTable(\"{}\", version=6)", out.display()),
    ] {
        assert!(text.contains(&needle), "`{needle}` missing:\n{text}");
    }

    // An independent reader: python deltalake at every version reads the rows the versions
    // added up to it, and its history has the same operations.
    let mut total = 0;
    for v in &versions[1..] {
        total += v["rows_added"].as_u64().unwrap();
        let version = v["version"].as_u64().unwrap();
        let read = deltalake_at(&out, version);
        assert_eq!(
            read["deltalake"]["rows"].as_u64(),
            Some(total),
            "version {version}: {read}"
        );
        assert_eq!(read["deltalake"]["duplicates"], 0);
        // deltalake's history is the latest snapshot's, whatever version was read.
        let history: Vec<&str> = read["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["operation"].as_str().unwrap())
            .collect();
        let ours: Vec<&str> = versions
            .iter()
            .map(|v| v["operation"].as_str().unwrap())
            .collect();
        assert_eq!(history, ours);
    }
    assert_eq!(total, 21);

    // --versions N: the newest N; the totals stay whole.
    let (limited, text) = inspect_with(&out, &["--versions", "2"]);
    let numbers: Vec<u64> = limited["delta"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![5, 6]);
    assert_eq!(limited["delta"]["rows"], 21);
    assert!(
        text.contains("versions (2 of 7 commits kept; --versions N or --versions all for more)"),
        "{text}"
    );
}

/// A `.parquet` file dropped in a window directory is reported as not in the table; a run
/// that stopped between its checkpoint and its table commit shows as a checkpoint ahead of the
/// table; the next run publishes the files and its recovery removes the stray one.
#[tokio::test]
async fn inspect_reports_files_not_in_the_delta_table() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("inspect-stray");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let t0 = an_hour_ago();
    produce_at(&topic, 0, 3, t0 + 10_000).await;
    produce_at(&topic, 0, 1, t0 + 2 * MINUTE_MS + 10_000).await;
    consume_table(&topic, &out, &[]);
    let (report, _) = inspect_with(&out, &[]);
    let delta = &report["delta"];
    assert_eq!(
        (
            delta["version"].as_u64(),
            delta["files"].as_u64(),
            delta["rows"].as_u64()
        ),
        (Some(1), Some(1), Some(3))
    );
    let committed = report["windows"][0]["dir"].as_str().unwrap().to_string();
    let dir = out.join(&committed);
    let table_file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();

    // A file written but never committed (offsets past the checkpoint, another writer).
    let stray = format!("{committed}/part-0-1000-1001-0badf00d.parquet");
    std::fs::copy(&table_file, out.join(&stray)).unwrap();
    let (report, text) = inspect_with(&out, &[]);
    let checks = &report["delta"]["checks"];
    assert_eq!(checks["consistent"], true, "{checks}");
    assert_eq!(checks["not_in_table"]["count"], 1, "{checks}");
    assert_eq!(
        checks["not_in_table"]["first"][0],
        Json::String(stray.clone())
    );
    assert!(
        text.contains("not in the table: 1 .parquet file under window=…/")
            && text.contains(&format!("not in the table: {stray}")),
        "{text}"
    );

    // The run "stopped" between its checkpoint and its table commit: the commit is not there,
    // and neither are the generations the run committed after it (each generation carries the
    // file until the table is known to hold it, `output::table`). The table is at version 0,
    // the checkpoint ahead.
    let published = report["delta"]["versions"][1]["txns"][0]["version"]
        .as_u64()
        .unwrap();
    // (Its version checksum, written only after a commit lands, goes with it.)
    std::fs::remove_file(out.join("_delta_log/00000000000000000001.json")).unwrap();
    std::fs::remove_file(out.join("_delta_log/00000000000000000001.crc")).unwrap();
    let generations = out.join("_checkpoint/partition=0");
    for e in std::fs::read_dir(&generations).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let generation: u64 = name
            .strip_prefix("gen-")
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a checkpoint name: {name}"));
        if generation > published {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let (report, text) = inspect_with(&out, &[]);
    let delta = &report["delta"];
    assert_eq!(
        (delta["version"].as_u64(), delta["files"].as_u64()),
        (Some(0), Some(0))
    );
    let p = &delta["partitions"][0];
    assert_eq!(p["state"], "pending", "{p}");
    assert_eq!(
        (p["pending_files"].as_u64(), p["pending_rows"].as_u64()),
        (Some(1), Some(3))
    );
    assert!(p["table_version"].is_null());
    assert_eq!(delta["checks"]["pending"]["count"], 1);
    assert_eq!(
        delta["checks"]["not_in_table"]["count"], 1,
        "the stray alone"
    );
    assert!(
        text.contains("CHECKPOINT AHEAD: 1 file (3 rows) committed, not in the table yet"),
        "{text}"
    );

    // The next run publishes the file (version 1 again) and removes the stray.
    consume_table(&topic, &out, &[]);
    let (report, text) = inspect_with(&out, &[]);
    let delta = &report["delta"];
    assert_eq!(
        (
            delta["version"].as_u64(),
            delta["files"].as_u64(),
            delta["rows"].as_u64()
        ),
        (Some(1), Some(1), Some(3))
    );
    assert_eq!(delta["partitions"][0]["state"], "published");
    assert_eq!(
        delta["checks"]["not_in_table"]["count"], 0,
        "recovery removed the stray"
    );
    assert!(!out.join(&stray).exists());
    assert!(!text.contains("not in the table:"), "{text}");
}
