//! The enrichment cache against the real MariaDB of `make up` (URL from `MYSQL_URL`, default
//! `mysql://reclamacoes:reclamacoes@127.0.0.1:3306/reclamacoes_db`).
//!
//! These tests never skip: without a reachable database they fail and say to run `make up`.
//! The only row they write is a test-owned `bancos` row with a random CNPJ starting with `9`,
//! deleted at the end (also when an assertion fails).

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::mysql_url;
use futures::FutureExt;
use mysql_async::prelude::Queryable;
use rand::Rng;
use reclamacoes::enrich::{
    redact_url, EnrichConfig, EnrichError, EnrichmentCache, Join, MySqlSource, OnMiss,
    ReferenceTable,
};
use reclamacoes::schema::{FieldType, Value};
use reclamacoes::shutdown::{self, ShutdownTrigger};

/// A direct connection for setup and checks; fails the test clearly when MariaDB is down.
async fn connect() -> mysql_async::Conn {
    let url = mysql_url();
    let opts = mysql_async::Opts::from_url(&url).expect("MYSQL_URL is a valid mysql:// URL");
    let opts = mysql_async::OptsBuilder::from_opts(opts).init(vec!["SET time_zone = '+00:00'"]);
    match tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "MariaDB not reachable at {} — run `make up` (error: {})",
            redact_url(&url),
            redact_url(&e.to_string())
        ),
        Err(_) => panic!(
            "MariaDB not reachable at {} within 10s — run `make up`",
            redact_url(&url)
        ),
    }
}

/// The values of `key`'s row, through the consumer's join.
fn lookup(table: &ReferenceTable, key: &str) -> Option<Vec<Value>> {
    match table.join(Some(key), OnMiss::Null, "test") {
        Join::Hit(row) => Some(table.row(row)),
        _ => None,
    }
}

/// Every row of the table.
fn all_rows(table: &ReferenceTable) -> Vec<Vec<Value>> {
    (0..table.len() as u32).map(|row| table.row(row)).collect()
}

fn config(query: &str) -> EnrichConfig {
    EnrichConfig {
        mysql_url: mysql_url(),
        query: query.to_string(),
        refresh_interval: Duration::from_secs(60),
        first_load_timeout: Duration::from_secs(10),
        query_timeout: Duration::from_secs(5),
        ..EnrichConfig::default()
    }
}

async fn start(
    config: &EnrichConfig,
) -> (
    EnrichmentCache,
    tokio::task::JoinHandle<()>,
    ShutdownTrigger,
) {
    let (tx, rx) = shutdown::channel();
    let source = MySqlSource::new(config).expect("valid URL");
    let (cache, task) = EnrichmentCache::start(source, config.clone(), rx)
        .await
        .unwrap_or_else(|e| panic!("first load failed: {e}"));
    (cache, task, tx)
}

async fn stop(task: tokio::task::JoinHandle<()>, tx: ShutdownTrigger) {
    tx.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("refresh task stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn loads_bancos_with_string_columns_and_leading_zero_keys() {
    let mut conn = connect().await;
    let count: u64 = conn
        .query_first("SELECT COUNT(*) FROM bancos")
        .await
        .unwrap()
        .unwrap();
    let (cnpj, segmento, nome): (String, String, String) = conn
        .query_first(
            "SELECT cnpj, segmento, nome FROM bancos WHERE cnpj LIKE '0%' ORDER BY cnpj LIMIT 1",
        )
        .await
        .unwrap()
        .expect("bancos has a CNPJ with a leading zero (seed: 00360305); run `make seed`");
    conn.disconnect().await.unwrap();

    let (cache, task, tx) = start(&config("SELECT cnpj, segmento, nome FROM bancos")).await;
    assert_eq!(
        cache.columns(),
        vec![
            ("banco_segmento".to_string(), FieldType::String),
            ("banco_nome".to_string(), FieldType::String),
        ]
    );
    let snapshot = cache.snapshot();
    // Other tests may add their own row meanwhile.
    assert!(snapshot.table().len() as u64 >= count.saturating_sub(1));
    assert!(cnpj.starts_with('0') && cnpj.len() == 8, "{cnpj}");
    assert_eq!(
        lookup(snapshot.table(), &cnpj),
        Some(vec![Value::Str(segmento), Value::Str(nome)]),
        "key {cnpj} keeps its leading zeros and the name its accents"
    );
    let unpadded = cnpj.trim_start_matches('0');
    if !unpadded.is_empty() {
        assert_eq!(lookup(snapshot.table(), unpadded), None);
    }
    let stats = cache.stats();
    assert_eq!((stats.refresh_ok, stats.refresh_failures), (1, 0));
    assert_eq!(cache.describe(), redact_url(&mysql_url()));
    stop(task, tx).await;
}

#[tokio::test]
async fn timestamps_are_utc_micros() {
    let mut conn = connect().await;
    let (cnpj, unix): (String, i64) = conn
        .query_first("SELECT cnpj, UNIX_TIMESTAMP(atualizado_em) FROM bancos ORDER BY cnpj LIMIT 1")
        .await
        .unwrap()
        .expect("bancos is not empty; run `make seed`");
    conn.disconnect().await.unwrap();
    let (cache, task, tx) = start(&config("SELECT cnpj, atualizado_em FROM bancos")).await;
    assert!(matches!(
        cache.columns()[0],
        (ref name, FieldType::Timestamp { .. }) if name == "banco_atualizado_em"
    ));
    assert_eq!(
        lookup(cache.snapshot().table(), &cnpj),
        Some(vec![Value::Timestamp(unix * 1_000_000)])
    );
    stop(task, tx).await;
}

#[tokio::test]
async fn custom_query_columns_get_int_timestamp_and_other_types() {
    let (cache, task, tx) = start(&config(
        "SELECT cnpj, 42 AS n, CAST('2026-01-02 03:04:05' AS DATETIME) AS t FROM bancos LIMIT 3",
    ))
    .await;
    assert_eq!(
        cache.columns(),
        vec![
            ("banco_n".to_string(), FieldType::Int { ordinal: false }),
            (
                "banco_t".to_string(),
                FieldType::Timestamp {
                    format: "%Y-%m-%d %H:%M:%S%.f".into()
                }
            ),
        ]
    );
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.table().len(), 3);
    for values in all_rows(snapshot.table()) {
        assert_eq!(
            values,
            vec![Value::Int(42), Value::Timestamp(1_767_323_045_000_000)]
        );
    }
    stop(task, tx).await;

    let (cache, task, tx) = start(&config(
        "SELECT cnpj, CAST('2026-01-02' AS DATE) AS d, CAST(54.79 AS DECIMAL(6,2)) AS i, \
         CAST(-7 AS SIGNED) AS s, CAST(NULL AS CHAR) AS z, 'ação' AS txt FROM bancos LIMIT 1",
    ))
    .await;
    let types: Vec<FieldType> = cache.columns().into_iter().map(|(_, t)| t).collect();
    assert!(matches!(types[0], FieldType::Date { .. }), "{types:?}");
    assert_eq!(
        types[1..3],
        [FieldType::Float, FieldType::Int { ordinal: false }]
    );
    assert_eq!(types[3..], [FieldType::String, FieldType::String]);
    let row = all_rows(cache.snapshot().table()).remove(0);
    assert_eq!(
        row,
        vec![
            Value::Date(20_455),
            Value::Float(54.79),
            Value::Int(-7),
            Value::Null,
            Value::Str("ação".into())
        ]
    );
    stop(task, tx).await;
}

/// Inserts a test-owned row with a random CNPJ `9xxxxxxx` (retrying on collision).
async fn insert_test_row(conn: &mut mysql_async::Conn, nome: &str) -> String {
    for _ in 0..10 {
        let cnpj = format!("9{:07}", rand::rng().random_range(0..10_000_000u32));
        let inserted = conn
            .exec_drop(
                "INSERT INTO bancos (cnpj, segmento, nome) VALUES (?, 'S9', ?)",
                (&cnpj, nome),
            )
            .await;
        match inserted {
            Ok(()) => return cnpj,
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => continue,
            Err(e) => panic!("cannot insert the test row into bancos: {e}"),
        }
    }
    panic!("could not find a free random CNPJ starting with 9");
}

#[tokio::test]
async fn refresh_sees_an_updated_row() {
    let mut conn = connect().await;
    let cnpj = insert_test_row(&mut conn, "BANCO TESTE ENRICH ANTES").await;
    let body = async {
        let mut cfg = config("SELECT cnpj, segmento, nome FROM bancos");
        cfg.refresh_interval = Duration::from_millis(300);
        let (cache, task, tx) = start(&cfg).await;
        let nome = |cache: &EnrichmentCache| {
            lookup(cache.snapshot().table(), &cnpj).map(|values| values[1].clone())
        };
        assert_eq!(
            nome(&cache),
            Some(Value::Str("BANCO TESTE ENRICH ANTES".into()))
        );
        let mut update = connect().await;
        update
            .exec_drop(
                "UPDATE bancos SET nome = ? WHERE cnpj = ?",
                ("BANCO TESTE ENRICH DEPOIS – ÇÃO", &cnpj),
            )
            .await
            .unwrap();
        update.disconnect().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while nome(&cache) != Some(Value::Str("BANCO TESTE ENRICH DEPOIS – ÇÃO".into())) {
            assert!(
                Instant::now() < deadline,
                "the refresh did not pick up the update within 5s: {:?}, stats {:?}",
                nome(&cache),
                cache.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = cache.stats();
        assert!(stats.refresh_ok >= 2, "{stats:?}");
        assert_eq!(stats.last_error, None);
        stop(task, tx).await;
    };
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    conn.exec_drop("DELETE FROM bancos WHERE cnpj = ?", (&cnpj,))
        .await
        .expect("delete the test row");
    conn.disconnect().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn unreachable_database_fails_within_the_timeout_without_the_password() {
    let cfg = EnrichConfig {
        mysql_url: "mysql://reclamacoes:Sup3r%40Secret@127.0.0.1:1/reclamacoes_db".into(),
        first_load_timeout: Duration::from_millis(1500),
        query_timeout: Duration::from_millis(500),
        ..EnrichConfig::default()
    };
    let (_tx, rx) = shutdown::channel();
    let started = Instant::now();
    let err = EnrichmentCache::start(MySqlSource::new(&cfg).unwrap(), cfg.clone(), rx)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    let msg = err.to_string();
    assert!(
        matches!(err, EnrichError::FirstLoad { attempts, .. } if attempts >= 2),
        "{msg}"
    );
    assert!(!msg.contains("Sup3r") && !msg.contains("Secret"), "{msg}");
    for needle in [
        "mysql://reclamacoes:***@127.0.0.1:1/reclamacoes_db",
        "make up",
        "MYSQL_URL",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
}

#[tokio::test]
async fn a_broken_query_names_the_query() {
    connect().await.disconnect().await.unwrap();
    let mut cfg = config("SELECT cnpj, nome FROM tabela_que_nao_existe");
    cfg.first_load_timeout = Duration::from_millis(800);
    let (_tx, rx) = shutdown::channel();
    let err = EnrichmentCache::start(MySqlSource::new(&cfg).unwrap(), cfg.clone(), rx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tabela_que_nao_existe"), "{err}");
    assert!(!err.contains(":reclamacoes@"), "{err}");
}
