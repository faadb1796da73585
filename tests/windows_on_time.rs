//! Windows that close on time (issue 12), against the real broker, as a user runs the consumer:
//!
//! - a live stream that goes quiet gets its last window's `_SUCCESS` within window + allowed
//!   lateness + idle timeout (+ a few seconds), from the wall clock alone (`--idle-advance`);
//! - one record 50 minutes ahead (Kafka timestamp) among 1,000 good ones, with `--max-future
//!   5m`: 1,000 rows in their windows, none late, one dead letter with the reason; without the
//!   guard the same record would make every later record late;
//! - the same with a record-field event time in 2099;
//! - a bounded run with `--close-windows`: `_SUCCESS` in every window.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::output::{self, count};
use common::{duckdb, random_topic, run_app};
use reclamacoes::kafka::{Compression, PartitionHandle};
use reclamacoes::output::layout;
use reclamacoes::schema::{Schema, Value};
use rskafka::record::Record;

fn json_record(schema: &Schema, values: &[Value], timestamp: DateTime<Utc>) -> Record {
    let mut json = String::new();
    schema.write_json(values, None, &mut json);
    common::raw_record(json.as_bytes(), timestamp)
}

fn complaint(schema: &Schema, i: i64, timestamp: DateTime<Utc>) -> Record {
    let mut values = vec![Value::Null; schema.fields.len()];
    values[0] = Value::Int(2025);
    values[1] = Value::Int(1);
    values[2] = Value::Str("Tempo".into());
    values[3] = Value::Str("Banco".into());
    values[5] = Value::Str(format!("INSTITUIÇÃO {i}"));
    json_record(schema, &values, timestamp)
}

/// Partition 0 of `topic`, a new one-partition topic on the shared broker.
async fn handle(topic: &str) -> PartitionHandle {
    let kafka = common::require_kafka().await;
    kafka.ensure_topic(topic, 1, 1).await.unwrap();
    common::partition(&kafka, topic, 0).await
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn success_markers(out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return found;
    };
    for entry in entries {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if layout::parse_window_dir(&name).is_some() && dir.join("_SUCCESS").exists() {
            found.push(name);
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn a_quiet_live_stream_closes_its_last_window_on_time() {
    common::require_mysql().await;
    let topic = random_topic("quiet");
    let h = handle(&topic).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let (window, lateness, idle) = (
        Duration::from_secs(10),
        Duration::from_secs(2),
        Duration::from_secs(3),
    );
    let mut consumer = KillOnDrop(
        common::app()
            .args(common::consume_args(
                &topic,
                &out,
                &[
                    "--window",
                    "10s",
                    "--allowed-lateness",
                    "2s",
                    "--idle-timeout",
                    "3s",
                ],
            ))
            .current_dir(work.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A short burst, then nothing: the stream goes quiet.
    let schema = Schema::banco_central();
    let records: Vec<Record> = (0..200)
        .map(|i| complaint(&schema, i, Utc::now()))
        .collect();
    h.produce(records, Compression::Lz4).await.unwrap();
    let last_sent = Utc::now();
    let started = Instant::now();
    let end_ms = reclamacoes::window::window_end(
        reclamacoes::window::window_start(last_sent.timestamp_millis(), 10_000),
        10_000,
    );
    // The bound: the window's end, plus lateness and the idle timeout, plus a few seconds.
    let until_end = Duration::from_millis((end_ms - last_sent.timestamp_millis()).max(0) as u64);
    let bound = until_end + lateness + idle + Duration::from_secs(5);
    let marker = loop {
        let markers = success_markers(&out);
        if !markers.is_empty() && output::committed_offsets(&out) >= 200 {
            let complete = markers
                .iter()
                .map(|m| layout::parse_window_dir(m).unwrap())
                .max()
                .unwrap();
            if reclamacoes::window::window_end(complete, 10_000) >= end_ms {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < bound + Duration::from_secs(30),
            "no _SUCCESS for the last window {:?} after the stream went quiet (bound {bound:?})",
            started.elapsed()
        );
        assert!(
            consumer.0.try_wait().unwrap().is_none(),
            "the consumer exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &consumer.0.id().to_string()])
        .status();
    assert!(consumer.0.wait().unwrap().success());
    eprintln!(
        "last window's _SUCCESS {marker:?} after the last record (window {window:?}, lateness \
         {lateness:?}, idle timeout {idle:?}; bound {bound:?})"
    );
    assert!(
        marker <= bound,
        "_SUCCESS came {marker:?} after the stream went quiet, over the bound {bound:?}"
    );
    assert_eq!(count(&out, output::TABLE), 200, "every row is in the table");
}

/// Produces 1,000 good records a second apart (ending now) with one far-future record in the
/// middle, consumes them as a bounded run, and returns (table rows, late rows, dead letters,
/// the dead letter's error).
async fn far_future_run(
    topic: &str,
    records: Vec<Record>,
    extra: &[&str],
) -> (i64, i64, i64, Option<String>) {
    let h = handle(topic).await;
    for chunk in records.chunks(250) {
        h.produce(chunk.to_vec(), Compression::Lz4).await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let mut args = common::consume_args(topic, &out, &common::BOUNDED);
    args.extend_from_slice(extra);
    run_app(&args, work.path(), true);
    let late = if output::has(&out, "_late/*/*.pq") {
        count(&out, output::LATE)
    } else {
        0
    };
    let (dead, error) = if output::has(&out, "_dead_letter/*.pq") {
        let rows = duckdb(&out, &format!("SELECT error FROM {}", output::DEAD));
        (
            rows.len() as i64,
            rows.first().and_then(|r| r[0].as_str().map(str::to_string)),
        )
    } else {
        (0, None)
    };
    (count(&out, output::TABLE), late, dead, error)
}

#[tokio::test]
async fn one_far_future_kafka_timestamp_is_refused_and_moves_nothing() {
    common::require_mysql().await;
    let schema = Schema::banco_central();
    let now = Utc::now();
    let records = || -> Vec<Record> {
        let mut records: Vec<Record> = (0..1000)
            .map(|i| complaint(&schema, i, now - chrono::Duration::seconds(1000 - i)))
            .collect();
        // 50 minutes ahead: under the broker's 1 h limit (log.message.timestamp.after.max.ms).
        records.insert(
            500,
            complaint(&schema, -1, now + chrono::Duration::minutes(50)),
        );
        records
    };
    let (rows, late, dead, error) =
        far_future_run(&random_topic("future"), records(), &["--max-future", "5m"]).await;
    assert_eq!((rows, late, dead), (1000, 0, 1), "{error:?}");
    let error = error.unwrap();
    assert!(
        error.contains("ahead of the wall clock") && error.contains("--max-future"),
        "{error}"
    );
    // Without the guard, that one record raises the watermark: the 499 good records after it
    // are late.
    let (rows, late, dead, _) = far_future_run(
        &random_topic("future-off"),
        records(),
        &["--max-future", "off"],
    )
    .await;
    assert_eq!((rows, late, dead), (501, 500, 0));
}

#[tokio::test]
async fn a_2099_record_field_event_time_is_refused_and_moves_nothing() {
    common::require_mysql().await;
    let work = tempfile::tempdir().unwrap();
    let schema_file = work.path().join("schema.toml");
    std::fs::write(
        &schema_file,
        "name = \"timed\"\nkey = \"cnpj_if\"\nevent_time = \"quando\"\n\n\
         [[fields]]\ncolumn = \"CNPJ IF\"\ntype = \"digits\"\nwidth = 8\n\n\
         [[fields]]\ncolumn = \"Quando\"\ntype = \"timestamp\"\nrequired = true\n",
    )
    .unwrap();
    let schema = Schema::from_toml_file(&schema_file).unwrap();
    let base = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    let record = |t: DateTime<Utc>| {
        json_record(
            &schema,
            &[
                Value::Str("00360305".into()),
                Value::Timestamp(t.timestamp_micros()),
            ],
            Utc::now(),
        )
    };
    let mut records: Vec<Record> = (0..1000)
        .map(|i| record(base + chrono::Duration::seconds(i)))
        .collect();
    records.insert(
        500,
        record(Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap()),
    );
    let schema_arg = schema_file.display().to_string();
    let (rows, late, dead, error) = far_future_run(
        &random_topic("future-field"),
        records,
        &[
            "--schema",
            &schema_arg,
            "--event-time-field",
            "quando",
            "--max-future",
            "5m",
        ],
    )
    .await;
    assert_eq!((rows, late, dead), (1000, 0, 1), "{error:?}");
    assert!(error.unwrap().contains("2099-01-01"));
}

#[tokio::test]
async fn a_bounded_run_with_close_windows_completes_every_window() {
    common::require_mysql().await;
    let topic = random_topic("bounded");
    let h = handle(&topic).await;
    let schema = Schema::banco_central();
    let base = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    // Five minutes of records: five one-minute windows.
    let records: Vec<Record> = (0..300)
        .map(|i| complaint(&schema, i, base + chrono::Duration::seconds(i)))
        .collect();
    h.produce(records, Compression::Lz4).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    // Without --close-windows the last window stays open (staged, not in the table yet).
    let open = run_app(
        &common::consume_args(&topic, &out, &["--until-caught-up"]),
        work.path(),
        true,
    );
    let open = String::from_utf8_lossy(&open.stdout).to_string();
    assert_eq!(success_markers(&out).len(), 4, "{open}");
    assert_eq!(count(&out, output::TABLE), 240);
    // With it, the end of the topic is the end of the stream: every window closes.
    let closed = run_app(
        &common::consume_args(&topic, &out, &common::BOUNDED),
        work.path(),
        true,
    );
    let closed = String::from_utf8_lossy(&closed.stdout).to_string();
    assert_eq!(
        success_markers(&out),
        (0..5)
            .map(|m| layout::window_dir((base + chrono::Duration::minutes(m)).timestamp_millis()))
            .collect::<Vec<_>>(),
        "{closed}"
    );
    assert_eq!(count(&out, output::TABLE), 300);
    assert!(
        !output::has(&out, "_staging/*/*.staged"),
        "nothing left staged"
    );
}
