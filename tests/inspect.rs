//! `app inspect --json` against a real output directory (fixtures produced to the real Kafka and
//! consumed with `--until-caught-up`, with dead letters, a closed window and late rows), its
//! numbers checked against DuckDB reading the same files.

mod common;

use common::{duckdb, scalar_u64 as scalar};

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{Duration as ChronoDuration, Utc};
use common::{handle, random_topic, raw_record as record, run_app};
use reclamacoes::kafka::Compression;
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
