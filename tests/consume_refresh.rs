//! The enrichment cache refreshes during a live run: a row changed in MySQL shows up in the
//! records processed after the next refresh, and not in those before.

mod common;

use std::process::Stdio;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use mysql_async::prelude::Queryable;
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;
use rskafka::record::Record;

fn record(schema: &Schema, cnpj: &str, label: &str, event_ms: i64) -> Record {
    common::keyed_record(schema, "Refresh", cnpj, label, event_ms)
}

fn wait_for_window(out: &std::path::Path, start_ms: i64) {
    let dir = out.join(reclamacoes::output::layout::window_dir(start_ms));
    common::wait_until(
        Duration::from_secs(60),
        &format!("window {} to be written", dir.display()),
        || {
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                })
                .unwrap_or(false)
        },
    );
}

#[tokio::test]
async fn a_row_changed_in_mysql_reaches_records_after_the_next_refresh() {
    let kafka = common::require_kafka().await;
    let mut conn = common::require_mysql().await;
    let table = format!("bancos_refresh_{:08x}", rand::random::<u32>());
    conn.query_drop(format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4) NOT NULL, nome VARCHAR(255) NOT NULL)"
    ))
    .await
    .unwrap();
    conn.query_drop(format!(
        "INSERT INTO {table} VALUES ('00777777', 'S2', 'ANTES')"
    ))
    .await
    .unwrap();

    let topic = common::random_topic("refresh");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let handle = common::partition(&kafka, &topic, 0).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let mut consumer = common::app()
        .args(common::consume_args(
            &topic,
            &out,
            &[
                "--enrich-query",
                &query,
                "--refresh-interval",
                "300ms",
                "--window",
                "1m",
                "--allowed-lateness",
                "0s",
            ],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let schema = Schema::banco_central();
    let base = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .unwrap()
        .timestamp_millis();
    let minute = 60_000;
    // Batch A in the window at `base`; a later record closes that window.
    let mut batch: Vec<Record> = (0..10)
        .map(|i| record(&schema, "00777777", "A", base + i * 1000))
        .collect();
    batch.push(record(&schema, "00777777", "tick", base + 2 * minute));
    handle.produce(batch, Compression::None).await.unwrap();
    wait_for_window(&out, base);

    conn.query_drop(format!(
        "UPDATE {table} SET nome = 'DEPOIS' WHERE cnpj = '00777777'"
    ))
    .await
    .unwrap();
    // Several refresh intervals pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut batch: Vec<Record> = (0..10)
        .map(|i| record(&schema, "00777777", "B", base + 5 * minute + i * 1000))
        .collect();
    batch.push(record(&schema, "00777777", "tick", base + 10 * minute));
    handle.produce(batch, Compression::None).await.unwrap();
    wait_for_window(&out, base + 5 * minute);

    // SIGTERM: the consumer writes what it holds, commits and exits 0.
    let pid = consumer.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = consumer.wait().unwrap();
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    assert!(
        status.success(),
        "consumer exited with {status:?} after SIGTERM"
    );

    let rows = common::duckdb(
        &out,
        &format!(
            "SELECT instituicao_financeira, banco_nome, count(*) FROM {} \
             WHERE instituicao_financeira IN ('A', 'B') GROUP BY 1, 2 ORDER BY 1",
            common::output::TABLE
        ),
    );
    assert_eq!(
        rows,
        vec![
            vec![
                serde_json::json!("A"),
                serde_json::json!("ANTES"),
                serde_json::json!(10)
            ],
            vec![
                serde_json::json!("B"),
                serde_json::json!("DEPOIS"),
                serde_json::json!(10)
            ],
        ],
        "rows before the refresh carry the old name, rows after it the new one"
    );
}
