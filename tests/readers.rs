//! Every common reader opens an output directory as one table, with plain calls (issue 11):
//! `pandas.read_parquet("output")`, `pyarrow.parquet.read_table("output")`,
//! `polars.scan_parquet("output/**/*.parquet", hive_partitioning=True)` and DuckDB's
//! `read_parquet('output/**/*.parquet', hive_partitioning=true)`: every row of the closed
//! windows, `window_start` a timestamp, and nothing else — not the late rows, not the dead
//! letters, not an open window's staged row groups, not the checkpoints. (Spark reads it too; it
//! is too heavy for `make test` and runs in `make bench`.)

mod common;

use std::process::Command;

use chrono::Utc;
use common::{output, random_topic, raw_record as record, run_app};
use reclamacoes::kafka::Compression;

const READERS: &str = r#"
import sys, json
import duckdb, pandas, polars, pyarrow.parquet as pq
duckdb.execute("SET enable_progress_bar = false")  # stdout is the answer
out = sys.argv[1]
result = {}
df = pandas.read_parquet(out)
result["pandas"] = [len(df), str(df["window_start"].dtype)]
t = pq.read_table(out)
result["pyarrow"] = [t.num_rows, str(t.schema.field("window_start").type)]
p = polars.scan_parquet(out + "/**/*.parquet", hive_partitioning=True).collect()
result["polars"] = [p.height, str(p.schema["window_start"])]
d = duckdb.sql(f"SELECT count(*), typeof(any_value(window_start)) FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true)").fetchall()[0]
result["duckdb"] = [d[0], d[1]]
print(json.dumps(result))
"#;

#[tokio::test]
async fn pandas_pyarrow_polars_and_duckdb_read_the_output_as_one_table() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("readers");
    let work = tempfile::tempdir().unwrap();
    common::produce_input(&topic, "2", &common::fixtures(), work.path());
    let payload = common::kcat_read_all(&topic)
        .into_iter()
        .find_map(|r| r.payload)
        .unwrap();
    let h = common::partition(&kafka, &topic, 0).await;
    // Partition 0: two dead letters, then a record three minutes ahead (the fixtures' window
    // closes; this one's window stays open: staged, not in the table), then one record of the
    // fixtures' (closed) window: late.
    h.produce(
        vec![
            record(b"not json", Utc::now()),
            record(br#"{"ano":"x"}"#, Utc::now()),
            record(
                payload.as_bytes(),
                Utc::now() + chrono::Duration::minutes(3),
            ),
            record(
                payload.as_bytes(),
                Utc::now() - chrono::Duration::seconds(70),
            ),
        ],
        Compression::None,
    )
    .await
    .unwrap();
    // Partition 1 passes the fixtures' window too, so it is complete.
    common::partition(&kafka, &topic, 1)
        .await
        .produce(
            vec![record(
                payload.as_bytes(),
                Utc::now() + chrono::Duration::minutes(3),
            )],
            Compression::None,
        )
        .await
        .unwrap();
    let out = work.path().join("output");
    let summary = run_app(
        &common::consume_args(&topic, &out, &["--until-caught-up"]),
        work.path(),
        true,
    );
    let summary = String::from_utf8_lossy(&summary.stdout).to_string();
    assert!(summary.contains("dead letters: 2"), "{summary}");
    assert!(summary.contains("late rows: 1"), "{summary}");
    assert!(
        output::has(&out, "_staging/*/*.staged"),
        "an open window is staged"
    );
    let table_rows = output::count(&out, output::TABLE);
    assert_eq!(table_rows, 80, "the fixtures' window: {summary}");

    let python = common::python();
    let run = Command::new(&python)
        .args(["-c", READERS, out.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); run `make test`", python.display()));
    assert!(
        run.status.success(),
        "a reader failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    eprintln!("readers: {result}");
    let expect_type = |reader: &str, wanted: &[&str]| {
        let t = result[reader][1].as_str().unwrap().to_string();
        assert!(
            wanted.iter().any(|w| t.contains(w)),
            "{reader}: window_start is {t}, not a timestamp"
        );
    };
    for reader in ["pandas", "pyarrow", "polars", "duckdb"] {
        assert_eq!(
            result[reader][0].as_i64(),
            Some(table_rows),
            "{reader} reads every row of the table and nothing else: {result}"
        );
    }
    expect_type("pandas", &["datetime64[us, UTC]"]);
    expect_type("pyarrow", &["timestamp[us, tz=UTC]"]);
    expect_type("polars", &["Datetime(time_unit='us', time_zone='UTC')"]);
    expect_type("duckdb", &["TIMESTAMP WITH TIME ZONE"]);
}
