//! `--enrich-cdc`: the dimension's changes, read from the server's binary log, reach the
//! records consumed a second later, with the periodic reload out of the way (an hour); against
//! a PRIVATE MariaDB (`tests/privdb`) with the row-based binary log on, and one with it off for
//! the fall-back:
//! - full and partial cache: an UPDATE and a DELETE made during a live run appear in the
//!   records consumed after them (the partial cache also across a restart of MariaDB between
//!   the first records and the changes: the stream resumes from its position);
//! - binary log off: one clear warning line, and the periodic reload still brings the change;
//! - a user without REPLICATION privileges: one line naming the GRANT, enrichment goes on.

mod common;
mod privdb;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use reclamacoes::kafka::{Compression, PartitionHandle};
use reclamacoes::schema::Schema;
use rskafka::record::Record;

fn record(schema: &Schema, cnpj: &str, label: &str, event_ms: i64) -> Record {
    common::keyed_record(schema, "Cdc", cnpj, label, event_ms)
}

fn base_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
        .unwrap()
        .timestamp_millis()
}

struct Consumer {
    child: Child,
    metrics_port: u16,
    stderr: std::path::PathBuf,
}

impl Consumer {
    fn start(db_url: &str, topic: &str, out: &Path, query: &str, extra: &[&str]) -> Consumer {
        let [metrics_port] = common::free_ports::<1>();
        let stderr = out.with_extension("stderr");
        let mut args = vec![
            "consume".to_string(),
            "--topic".into(),
            topic.into(),
            "--output".into(),
            out.to_str().unwrap().into(),
            "--enrich-query".into(),
            query.into(),
            "--enrich-cdc".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--fetch-max-wait".into(),
            "100ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--refresh-interval") {
            // Out of the way: only the binary log can bring a change in time.
            args.extend(["--refresh-interval".to_string(), "1h".to_string()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_app"))
            .env("KAFKA_BROKERS", common::brokers())
            .env("MYSQL_URL", db_url)
            .env("RUST_LOG", "warn")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Consumer {
            child,
            metrics_port,
            stderr,
        }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = common::http_get(self.metrics_port, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn wait_read(&self, n: f64) {
        let name = "reclamacoes_consume_records_read_total";
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.metric(name).is_some_and(|v| v >= n) {
            assert!(
                Instant::now() < deadline,
                "{name} did not reach {n} within 60 s ({:?}); stderr:\n{}",
                self.metric(name),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/healthz` says `text` and not `not`.
    fn wait_health(&self, text: &str, not: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = common::http_get(self.metrics_port, "/healthz").map(|(_, b)| b);
            if body
                .as_deref()
                .is_some_and(|b| b.contains(text) && !b.contains(not))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not say `{text}` within 30 s: {body:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, exit 0, then every durable row: (label, banco_nome, count).
    fn stop(mut self, out: &Path) -> (Vec<Vec<serde_json::Value>>, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr();
        assert!(status.success(), "{status:?}\n{stderr}");
        let rows = common::duckdb(
            out,
            &format!(
                "SELECT instituicao_financeira, banco_nome, count(*) FROM {} GROUP BY 1, 2 \
                 ORDER BY 1, 2",
                common::output::rows(out)
            ),
        );
        (rows, stderr)
    }
}

async fn partition(topic: &str) -> PartitionHandle {
    let kafka = common::require_kafka().await;
    kafka.ensure_topic(topic, 1, 1).await.unwrap();
    PartitionHandle {
        config: common::kafka_config(),
        topic: topic.to_string(),
        partition: 0,
        client: kafka.partition(topic, 0).await.unwrap(),
    }
}

fn j(v: &str) -> serde_json::Value {
    serde_json::json!(v)
}

/// A (keys 1 and 2) before the changes, B (keys 1 and 2) one second after an UPDATE of 1 and a
/// DELETE of 2; with `restart`, MariaDB is restarted between A and the changes.
async fn update_and_delete_reach_later_records(mode: &[&str], restart: bool) {
    let db = privdb::PrivateDb::start("enrich-cdc", "RECLAMACOES_CDC_MYSQL_PORT", 13318, true);
    let table = format!("dim_cdc_{:08x}", rand::random::<u32>());
    db.sql(&format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4), nome VARCHAR(64)); \
         INSERT INTO {table} VALUES ('00000001', 'S1', 'ANTES'), ('00000002', 'S2', 'APAGADO')"
    ));
    let topic = common::random_topic("cdc");
    let h = partition(&topic).await;
    let schema = Schema::banco_central();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let consumer = Consumer::start(&db.url(), &topic, &out, &query, mode);
    let base = base_ms();
    let a = vec![
        record(&schema, "00000001", "A", base),
        record(&schema, "00000002", "A", base + 1),
    ];
    h.produce(a, Compression::None).await.unwrap();
    consumer.wait_read(2.0);
    if restart {
        db.stop();
        db.start_again();
        // The follower reconnects (backoff up to 2 s) and resumes; then the promise holds again.
        consumer.wait_health("following the binary log at", "reconnecting");
    }
    db.sql(&format!(
        "UPDATE {table} SET nome = 'DEPOIS' WHERE cnpj = '00000001'; \
         DELETE FROM {table} WHERE cnpj = '00000002'"
    ));
    // One second is the promise.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = vec![
        record(&schema, "00000001", "B", base + 1000),
        record(&schema, "00000002", "B", base + 1001),
    ];
    h.produce(b, Compression::None).await.unwrap();
    consumer.wait_read(4.0);
    let changes = consumer.metric("reclamacoes_consume_enrichment_changes_total");
    let (rows, stderr) = consumer.stop(&out);
    db.sql(&format!("DROP TABLE {table}"));
    assert!(
        !stderr.contains("cannot follow") && !stderr.contains("not following"),
        "{stderr}"
    );
    assert!(changes.is_some_and(|c| c >= 2.0), "{changes:?}");
    let count = |n: i64| serde_json::json!(n);
    assert_eq!(
        rows,
        vec![
            vec![j("A"), j("ANTES"), count(1)],
            vec![j("A"), j("APAGADO"), count(1)],
            vec![j("B"), j("DEPOIS"), count(1)],
            vec![j("B"), serde_json::Value::Null, count(1)],
        ],
        "mode {mode:?}, restart {restart}; stderr:\n{stderr}"
    );
}

#[tokio::test]
async fn full_cache_an_update_and_a_delete_reach_the_records_after_them() {
    update_and_delete_reach_later_records(&[], false).await;
}

#[tokio::test]
async fn partial_cache_an_update_and_a_delete_reach_the_records_after_them() {
    update_and_delete_reach_later_records(
        &["--enrich-cache", "partial", "--enrich-cache-ttl", "off"],
        false,
    )
    .await;
}

#[tokio::test]
async fn partial_cache_follows_the_log_across_a_mariadb_restart() {
    update_and_delete_reach_later_records(
        &["--enrich-cache", "partial", "--enrich-cache-ttl", "off"],
        true,
    )
    .await;
}

#[tokio::test]
async fn without_a_binary_log_it_says_so_once_and_falls_back_to_periodic_reload() {
    let db = privdb::PrivateDb::start("enrich", "RECLAMACOES_ENRICH_MYSQL_PORT", 13317, false);
    let table = format!("dim_nolog_{:08x}", rand::random::<u32>());
    db.sql(&format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4), nome VARCHAR(64)); \
         INSERT INTO {table} VALUES ('00000001', 'S1', 'ANTES')"
    ));
    let topic = common::random_topic("cdc-off");
    let h = partition(&topic).await;
    let schema = Schema::banco_central();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    // The periodic reload is what brings the change here: every 500 ms.
    let consumer = Consumer::start(
        &db.url(),
        &topic,
        &out,
        &query,
        &["--refresh-interval", "500ms"],
    );
    let base = base_ms();
    h.produce(
        vec![record(&schema, "00000001", "A", base)],
        Compression::None,
    )
    .await
    .unwrap();
    consumer.wait_read(1.0);
    db.sql(&format!(
        "UPDATE {table} SET nome = 'DEPOIS' WHERE cnpj = '00000001'"
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.produce(
        vec![record(&schema, "00000001", "B", base + 1000)],
        Compression::None,
    )
    .await
    .unwrap();
    consumer.wait_read(2.0);
    let (_, health) = common::http_get(consumer.metrics_port, "/healthz").unwrap();
    let (rows, stderr) = consumer.stop(&out);
    db.sql(&format!("DROP TABLE {table}"));
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot follow the binary log"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line:\n{stderr}");
    assert!(
        lines[0].contains("log_bin=OFF") && lines[0].contains("periodic reload"),
        "{}",
        lines[0]
    );
    assert!(health.contains("not following the binary log"), "{health}");
    assert_eq!(
        rows,
        vec![
            vec![j("A"), j("ANTES"), serde_json::json!(1)],
            vec![j("B"), j("DEPOIS"), serde_json::json!(1)],
        ]
    );
}

#[tokio::test]
async fn without_the_replication_privileges_it_says_which_and_falls_back() {
    let db = privdb::PrivateDb::start("enrich-cdc", "RECLAMACOES_CDC_MYSQL_PORT", 13318, true);
    let user = format!("nopriv{:06x}", rand::random::<u32>() & 0xFF_FFFF);
    db.sql_admin(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; \
         GRANT ALL PRIVILEGES ON reclamacoes_db.* TO '{user}'@'%'"
    ));
    let table = format!("dim_nopriv_{:08x}", rand::random::<u32>());
    db.sql(&format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4), nome VARCHAR(64)); \
         INSERT INTO {table} VALUES ('00000001', 'S1', 'UM')"
    ));
    let topic = common::random_topic("cdc-nopriv");
    let h = partition(&topic).await;
    let schema = Schema::banco_central();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let url = format!("mysql://{user}:pw@127.0.0.1:{}/reclamacoes_db", db.port());
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let consumer = Consumer::start(&url, &topic, &out, &query, &[]);
    h.produce(
        vec![record(&schema, "00000001", "A", base_ms())],
        Compression::None,
    )
    .await
    .unwrap();
    consumer.wait_read(1.0);
    let (rows, stderr) = consumer.stop(&out);
    db.sql(&format!("DROP TABLE {table}"));
    db.sql_admin(&format!("DROP USER '{user}'@'%'"));
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot follow the binary log"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line:\n{stderr}");
    assert!(
        lines[0].contains("GRANT REPLICATION SLAVE, REPLICATION CLIENT")
            && !lines[0].contains(":pw@"),
        "{}",
        lines[0]
    );
    assert_eq!(
        rows,
        vec![vec![j("A"), j("UM"), serde_json::json!(1)]],
        "enrichment goes on without the log"
    );
}
