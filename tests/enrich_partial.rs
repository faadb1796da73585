//! The partial enrichment cache (`--enrich-cache partial`) against the real MariaDB:
//! - on a generated dimension of 1,000,000 rows and skewed keys, with a cache far smaller than
//!   the keys used (so it evicts), every row and dead letter equals what the full cache gives
//!   on the same input;
//! - MariaDB stopped in the middle of a run (a private instance, `tests/privdb`): cached keys
//!   keep being enriched, a key not cached waits `--enrich-miss-timeout`, then follows
//!   `--on-miss` as `dimension unreachable` (counted on `/metrics`, said by `/healthz`), and
//!   after the restart new keys are enriched again; nothing is lost.

mod common;
mod privdb;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use mysql_async::prelude::Queryable;
use reclamacoes::kafka::{Compression, PartitionHandle};
use reclamacoes::schema::Schema;
use rskafka::record::Record;

fn record(schema: &Schema, cnpj: &str, label: &str, event_ms: i64) -> Record {
    common::keyed_record(schema, "Partial", cnpj, label, event_ms)
}

fn base_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 4, 1, 12, 0, 0)
        .unwrap()
        .timestamp_millis()
}

async fn handle(kafka: &reclamacoes::kafka::Kafka, topic: &str, partition: i32) -> PartitionHandle {
    PartitionHandle {
        config: common::kafka_config(),
        topic: topic.to_string(),
        partition,
        client: kafka.partition(topic, partition).await.unwrap(),
    }
}

/// A key of the skewed workload: rank `r` of a Zipf-like draw over 1..=1,000,000, or (one in
/// twenty) a key the dimension does not have.
fn skewed_key(rng: &mut rand::rngs::StdRng) -> String {
    use rand::Rng;
    if rng.random_range(0..20) == 0 {
        return format!("9{:07}", rng.random_range(0..10_000_000u32) % 10_000_000);
    }
    let u: f64 = rng.random_range(0.0..1.0);
    let rank = ((1_000_000f64).powf(u)) as u32;
    format!("{:08}", rank.clamp(1, 1_000_000))
}

fn consume(out: &Path, topic: &str, query: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "consume",
        "--topic",
        topic,
        "--output",
        out.to_str().unwrap(),
        "--enrich-query",
        query,
        "--on-miss",
        "dead-letter",
        "--until-caught-up",
        "--close-windows",
        "--window",
        "1m",
        "--mysql-timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    let out = common::app().args(&args).output().expect("run app consume");
    assert!(
        out.status.success(),
        "app {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn partial_cache_rows_equal_full_cache_rows_on_a_million_row_dimension() {
    use rand::SeedableRng;
    let kafka = common::require_kafka().await;
    let mut conn = common::require_mysql().await;
    let table = format!("dim_partial_{:08x}", rand::random::<u32>());
    conn.query_drop(format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4) NOT NULL, \
         nome VARCHAR(64) NOT NULL)"
    ))
    .await
    .unwrap();
    let started = Instant::now();
    conn.query_drop(format!(
        "INSERT INTO {table} SELECT LPAD(seq, 8, '0'), CONCAT('S', seq % 5 + 1), \
         CONCAT('INSTITUICAO ', seq) FROM seq_1_to_1000000"
    ))
    .await
    .unwrap();
    eprintln!("1,000,000 dimension rows in {:?}", started.elapsed());

    let topic = common::random_topic("partial");
    kafka.ensure_topic(&topic, 2, 1).await.unwrap();
    let schema = Schema::banco_central();
    let mut rng = rand::rngs::StdRng::seed_from_u64(25);
    let mut produced = 0;
    for p in 0..2 {
        let h = handle(&kafka, &topic, p).await;
        for chunk in 0..5 {
            let batch: Vec<Record> = (0..2000)
                .map(|i| {
                    let key = skewed_key(&mut rng);
                    let t = base_ms() + (chunk * 2000 + i) * 10;
                    record(&schema, &key, &format!("r{p}-{chunk}-{i}"), t)
                })
                .collect();
            produced += batch.len();
            h.produce(batch, Compression::Lz4).await.unwrap();
        }
    }

    let work = tempfile::tempdir().unwrap();
    let (full, partial) = (work.path().join("full"), work.path().join("partial"));
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let t = Instant::now();
    consume(&full, &topic, &query, &[]);
    let full_secs = t.elapsed();
    let t = Instant::now();
    // 256 KiB hold about a thousand entries: far fewer than the distinct keys, so it evicts.
    let out = consume(
        &partial,
        &topic,
        &query,
        &[
            "--enrich-cache",
            "partial",
            "--enrich-cache-bytes",
            "262144",
        ],
    );
    let partial_secs = t.elapsed();
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    eprintln!("full {full_secs:?}, partial {partial_secs:?}");
    let summary = String::from_utf8_lossy(&out.stdout);

    let rows = |out: &Path| {
        common::duckdb(
            out,
            &format!(
                "SELECT kafka_partition, kafka_offset, cnpj_if, banco_segmento, banco_nome \
                 FROM {} ORDER BY 1, 2",
                common::output::TABLE
            ),
        )
    };
    let dead = |out: &Path| {
        common::duckdb(
            out,
            &format!(
                "SELECT kafka_partition, kafka_offset, error FROM {} ORDER BY 1, 2",
                common::output::DEAD
            ),
        )
    };
    let (full_rows, partial_rows) = (rows(&full), rows(&partial));
    let (full_dead, partial_dead) = (dead(&full), dead(&partial));
    assert_eq!(full_rows.len() + full_dead.len(), produced);
    assert!(
        full_dead.len() > produced / 40 && full_dead.len() < produced / 10,
        "about one in twenty keys is absent: {} of {produced}",
        full_dead.len()
    );
    assert!(
        full_rows.iter().all(|r| !r[4].is_null()),
        "every row found is enriched"
    );
    assert_eq!(
        partial_rows, full_rows,
        "partial-cache rows = full-cache rows"
    );
    assert_eq!(
        partial_dead, full_dead,
        "the same misses, with the same reasons"
    );
    assert!(
        summary.contains("enrichment:"),
        "the summary reports the enrichment: {summary}"
    );
}

/// A running `app consume` whose output is drained in the background.
struct Consumer {
    child: Child,
    metrics_port: u16,
}

impl Consumer {
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = common::http_get(self.metrics_port, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn wait_metric(&self, name: &str, at_least: f64, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            if self.metric(name).is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not reach {at_least} within {bound:?} (now {:?})",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn health(&self) -> Option<(u16, String)> {
        common::http_get(self.metrics_port, "/healthz")
    }
}

#[tokio::test]
async fn a_mariadb_restart_mid_run_loses_nothing_and_says_why() {
    let db = privdb::PrivateDb::start("enrich", "RECLAMACOES_ENRICH_MYSQL_PORT", 13317, false);
    let table = format!("dim_outage_{:08x}", rand::random::<u32>());
    db.sql(&format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4), nome VARCHAR(64)); \
         INSERT INTO {table} VALUES ('00000001', 'S1', 'UM'), ('00000002', 'S2', 'DOIS'), \
         ('00000003', 'S3', 'TRES')"
    ));
    let kafka = common::require_kafka().await;
    let topic = common::random_topic("partial-outage");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let h = handle(&kafka, &topic, 0).await;
    let schema = Schema::banco_central();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let [metrics_port] = common::free_ports::<1>();
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let child = Command::new(env!("CARGO_BIN_EXE_app"))
        .env("KAFKA_BROKERS", common::brokers())
        .env("MYSQL_URL", db.url())
        .env("RUST_LOG", "warn")
        .args([
            "consume",
            "--topic",
            &topic,
            "--output",
            out.to_str().unwrap(),
            "--enrich-query",
            &query,
            "--enrich-cache",
            "partial",
            "--enrich-miss-timeout",
            "3s",
            "--on-miss",
            "dead-letter",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--window",
            "1m",
            "--fetch-max-wait",
            "100ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let consumer = Consumer {
        child,
        metrics_port,
    };
    let base = base_ms();
    // A: keys 1 and 2, cached from now on.
    let a: Vec<Record> = (0..10)
        .map(|i| record(&schema, &format!("0000000{}", 1 + i % 2), "A", base + i))
        .collect();
    h.produce(a, Compression::None).await.unwrap();
    consumer.wait_metric(
        "reclamacoes_consume_records_read_total",
        10.0,
        Duration::from_secs(60),
    );
    let healthy = consumer.health().unwrap();
    assert_eq!(healthy.0, 200, "{healthy:?}");

    // MariaDB goes away. B: key 1 (cached) and key 3 (not cached).
    db.stop();
    let b = vec![
        record(&schema, "00000001", "B-cached", base + 1000),
        record(&schema, "00000003", "B-uncached", base + 1001),
    ];
    let stopped = Instant::now();
    h.produce(b, Compression::None).await.unwrap();
    consumer.wait_metric(
        "reclamacoes_consume_enrichment_unreachable_total",
        1.0,
        Duration::from_secs(30),
    );
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "the uncached key waited (up to --enrich-miss-timeout, 3 s) first ({:?})",
        stopped.elapsed()
    );
    let (status, body) = consumer.health().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("dimension unreachable") && !body.contains(":reclamacoes@"),
        "{body}"
    );

    // Back: C, key 3 again, is enriched.
    db.start_again();
    h.produce(
        vec![record(&schema, "00000003", "C", base + 2000)],
        Compression::None,
    )
    .await
    .unwrap();
    consumer.wait_metric(
        "reclamacoes_consume_records_read_total",
        13.0,
        Duration::from_secs(60),
    );
    let (status, body) = consumer.health().unwrap();
    assert_eq!(status, 200, "{body}");
    let unreachable = consumer.metric("reclamacoes_consume_enrichment_unreachable_total");
    assert_eq!(unreachable, Some(1.0));

    // SIGTERM: stages what it holds, commits, exits 0.
    let mut child = consumer.child;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    db.sql(&format!("DROP TABLE {table}"));
    assert!(status.success(), "{status:?}");
    let rows = common::duckdb(
        &out,
        &format!(
            "SELECT instituicao_financeira, banco_nome, count(*) FROM {} GROUP BY 1, 2 ORDER BY 1, 2",
            common::output::rows(&out)
        ),
    );
    assert_eq!(
        rows,
        vec![
            vec![
                serde_json::json!("A"),
                serde_json::json!("DOIS"),
                serde_json::json!(5)
            ],
            vec![
                serde_json::json!("A"),
                serde_json::json!("UM"),
                serde_json::json!(5)
            ],
            vec![
                serde_json::json!("B-cached"),
                serde_json::json!("UM"),
                serde_json::json!(1)
            ],
            vec![
                serde_json::json!("C"),
                serde_json::json!("TRES"),
                serde_json::json!(1)
            ],
        ]
    );
    let dead = common::duckdb(&out, &format!("SELECT error FROM {}", common::output::DEAD));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0][0].as_str().unwrap();
    assert!(
        error.starts_with("enrichment: dimension unreachable: key `00000003`")
            && !error.contains(":reclamacoes@"),
        "{error}"
    );
}
