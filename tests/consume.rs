//! `app consume` end to end against the real Kafka and MariaDB, read back with an independent
//! Parquet reader (DuckDB from PyPI): fixtures, the real Banco Central data, dead letters, and
//! exactly-once under repeated SIGKILL.

mod common;

use common::{duckdb, scalar};

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{TimeZone, Utc};
use common::{handle, output, random_topic, run_app};
use mysql_async::prelude::Queryable;
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;
use serde_json::Value as Json;

fn windows_glob() -> &'static str {
    common::output::TABLE
}

/// A bounded run (`--until-caught-up --close-windows`) with `extra` flags; returns its summary.
fn consume(topic: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = common::consume_args(topic, out, &common::BOUNDED);
    args.extend_from_slice(extra);
    let o = run_app(&args, out.parent().unwrap(), true);
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn fixtures_end_to_end_with_enrichment_windows_and_dead_letters() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("consume-fixtures");
    let work = tempfile::tempdir().unwrap();
    common::produce_input(&topic, "3", &common::fixtures(), work.path());
    // Three undecodable messages on partition 1 (not JSON, wrong type, empty value).
    kafka.ensure_topic(&topic, 3, 1).await.unwrap();
    common::produce_undecodable(&kafka, &topic, 1).await;

    let out = work.path().join("output");
    let summary = consume(&topic, &out, &["--window", "1m"]);
    assert!(summary.contains("rows written: 80"), "{summary}");
    assert!(summary.contains("dead letters: 3"), "{summary}");

    let glob = windows_glob();
    assert_eq!(scalar(&out, &format!("SELECT count(*) FROM {glob}")), 80);
    // Enrichment: 44 rows have a CNPJ in seed.sql; 31 blank + 5 unknown CNPJs stay null.
    assert_eq!(
        scalar(
            &out,
            &format!("SELECT count(*) FROM {glob} WHERE banco_nome IS NOT NULL")
        ),
        44
    );
    assert_eq!(
        scalar(
            &out,
            &format!(
                "SELECT count(*) FROM {glob} WHERE cnpj_if IS NOT NULL AND banco_nome IS NULL"
            )
        ),
        5
    );
    // Types as an independent reader sees them.
    let types: BTreeMap<String, String> = duckdb(
        &out,
        &format!("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {glob})"),
    )
    .into_iter()
    .map(|r| {
        (
            r[0].as_str().unwrap().to_string(),
            r[1].as_str().unwrap().to_string(),
        )
    })
    .collect();
    assert_eq!(types["ano"], "BIGINT");
    assert_eq!(types["indice"], "DOUBLE");
    assert_eq!(types["cnpj_if"], "VARCHAR");
    assert_eq!(types["banco_nome"], "VARCHAR");
    assert_eq!(types["kafka_partition"], "INTEGER");
    assert_eq!(types["kafka_offset"], "BIGINT");
    assert_eq!(types["kafka_timestamp"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(types["window_start"], "TIMESTAMP WITH TIME ZONE");
    // Every (partition, offset) once; window columns agree with the directory.
    assert_eq!(
        scalar(
            &out,
            &format!("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {glob}")
        ),
        80
    );
    for entry in std::fs::read_dir(&out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            name.starts_with("window=") || name.starts_with('_'),
            "unexpected entry {name}"
        );
    }
    // Text survives in UTF-8.
    assert!(scalar(
        &out,
        &format!("SELECT count(*) FROM {glob} WHERE instituicao_financeira LIKE '%Ç%' OR instituicao_financeira LIKE '%Ã%' OR instituicao_financeira LIKE '%Ô%'")
    ) > 0);
    // Dead letters keep the raw bytes and the error.
    let dead = duckdb(
        &out,
        &format!(
            "SELECT kafka_partition, kafka_offset, value, error FROM {} ORDER BY kafka_offset",
            common::output::DEAD
        ),
    );
    assert_eq!(dead.len(), 3);
    assert!(
        dead[0][3].as_str().unwrap().contains("not valid JSON"),
        "{dead:?}"
    );
    assert!(dead[1][3].as_str().unwrap().contains("ano"), "{dead:?}");

    // A second run over the same output reads nothing new and writes nothing twice.
    let again = consume(&topic, &out, &["--window", "1m"]);
    assert!(again.contains("records read: 0"), "{again}");
    assert_eq!(scalar(&out, &format!("SELECT count(*) FROM {glob}")), 80);
}

#[tokio::test]
async fn real_data_918_rows_enriched_from_the_real_bancos_file() {
    common::require_kafka().await;
    let mut conn = common::require_mysql().await;
    let data = common::real_data_dir();
    // Load the real enquadramento file into a table of this test (the shared `bancos` keeps the seed).
    let table = format!("bancos_real_{:08x}", rand::random::<u32>());
    conn.query_drop(format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4) NOT NULL, nome VARCHAR(255) NOT NULL) DEFAULT CHARSET utf8mb4"
    ))
    .await
    .unwrap();
    let tsv =
        std::fs::read_to_string(data.join("bcb-enquadramento/EnquadramentoInicia_v2.tsv")).unwrap();
    let mut rows: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if cols.len() >= 3 {
            rows.insert(
                format!("{:0>8}", cols[1].trim()),
                (cols[0].to_string(), cols[2].to_string()),
            );
        }
    }
    assert_eq!(rows.len(), 1459);
    conn.exec_batch(
        format!("INSERT INTO {table} (cnpj, segmento, nome) VALUES (?, ?, ?)"),
        rows.iter()
            .map(|(c, (s, n))| (c.clone(), s.clone(), n.clone())),
    )
    .await
    .unwrap();

    let topic = random_topic("consume-real");
    let work = tempfile::tempdir().unwrap();
    common::produce_input(
        &topic,
        "3",
        &data.join("bcb-ranking-reclamacoes"),
        work.path(),
    );
    let out = work.path().join("output");
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let summary = consume(&topic, &out, &["--enrich-query", &query]);
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    assert!(summary.contains("rows written: 918"), "{summary}");

    let glob = windows_glob();
    assert_eq!(scalar(&out, &format!("SELECT count(*) FROM {glob}")), 918);
    // Exactly the rows whose cnpj_if is in the file carry banco_nome.
    let in_file: Vec<Vec<Json>> = duckdb(&out, &format!("SELECT cnpj_if, banco_nome FROM {glob}"));
    let mut carried = 0;
    for r in &in_file {
        let cnpj = r[0].as_str();
        let expected = cnpj.and_then(|c| rows.get(c)).map(|(_, n)| n.as_str());
        assert_eq!(r[1].as_str(), expected, "row {r:?}");
        carried += usize::from(expected.is_some());
    }
    assert_eq!(carried, 321);
}

#[tokio::test]
async fn exactly_once_across_repeated_sigkill() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("crash");
    kafka.ensure_topic(&topic, 3, 1).await.unwrap();
    let schema = Schema::banco_central();
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    const PER_PARTITION: u64 = 34_000;
    let mut expected_dead = 0u64;
    for p in 0..3 {
        let h = handle(&topic, p).await;
        let mut batch = Vec::new();
        for i in 0..PER_PARTITION {
            // Event time walks forward through 25 one-minute windows with +-40 s of disorder;
            // every 997th record is 5 minutes behind (late once its window has closed) and every
            // 1009th is not JSON at all.
            let forward = (i as i64 * 25 * 60_000) / PER_PARTITION as i64;
            let jitter = ((i * 7919 + p as u64 * 31) % 80_000) as i64 - 40_000;
            let mut event = base + forward + jitter;
            if i % 997 == 0 && i > 0 {
                event -= 5 * 60_000;
            }
            let record = if i % 1009 == 500 {
                expected_dead += 1;
                common::garbage_record(i, event)
            } else {
                common::synthetic_record(&schema, i, event)
            };
            batch.push(record);
            if batch.len() == 2000 {
                h.produce(std::mem::take(&mut batch), Compression::Lz4)
                    .await
                    .unwrap();
            }
        }
        h.produce(batch, Compression::Lz4).await.unwrap();
    }
    let total = PER_PARTITION * 3;

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let args = common::consume_args(
        &topic,
        &out,
        &[&common::BOUNDED[..], &common::KILL_TEST_FLAGS].concat(),
    );
    // Killed at committed-progress targets, so the kills land mid-stream on any machine.
    let (kills, attempts) = common::kill_mid_stream(
        || {
            let mut cmd = common::app();
            cmd.args(&args).current_dir(work.path());
            cmd
        },
        || common::output::committed_offsets(&out),
        total,
        5,
        25,
        std::time::Duration::from_secs(120),
    );
    assert!(
        kills >= 5,
        "only {kills} kills hit a run mid-stream in {attempts} attempts"
    );
    let summary = consume(&topic, &out, &common::KILL_TEST_FLAGS);
    assert!(summary.contains("(resumed from checkpoint)"), "{summary}");
    eprintln!("final run after {kills} kills:\n{summary}");

    common::output::assert_exactly_once(&out, total, &format!("{kills} kills"));
    let dead = output::count(&out, output::DEAD);
    assert_eq!(dead as u64, expected_dead);
    let late = output::count(&out, output::LATE);
    assert!(late > 0, "some records were late");
    let windows = scalar(
        &out,
        &format!(
            "SELECT count(DISTINCT window_start) FROM {}",
            common::output::TABLE
        ),
    );
    assert!(windows >= 20, "{windows} windows");
    // Closed windows carry _SUCCESS; no temporary file is left.
    let mut success = 0;
    for entry in common::walk(&out) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "leftover {name}");
        success += usize::from(name == "_SUCCESS");
    }
    assert!(success >= 20, "{success} _SUCCESS markers");
}
