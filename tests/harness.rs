//! Proves the local services harness: real Kafka via rskafka and kcat, real MariaDB.

mod common;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use mysql_async::prelude::Queryable;
use reclamacoes::kafka::Compression;
use rskafka::record::Record;

#[tokio::test]
async fn rskafka_round_trips_1000_records_and_kcat_reads_them() {
    let kafka = common::require_kafka().await;
    let topic = common::random_topic("harness");
    let (partitions, created) = kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    assert_eq!((partitions, created), (1, true));
    let handle = common::partition(&kafka, &topic, 0).await;
    let records: Vec<Record> = (0..1000)
        .map(|i| Record {
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(format!("{{\"i\":{i},\"texto\":\"reclamação nº {i}\"}}").into_bytes()),
            headers: BTreeMap::new(),
            timestamp: Utc.timestamp_millis_opt(1_700_000_000_000 + i).unwrap(),
        })
        .collect();
    for chunk in records.chunks(250) {
        handle
            .produce(chunk.to_vec(), Compression::Lz4)
            .await
            .unwrap();
    }
    let mut fetched = Vec::new();
    let mut offset = 0;
    while fetched.len() < records.len() {
        let (batch, high) = handle.fetch(offset, 1 << 20, 500).await.unwrap();
        assert_eq!(high, 1000);
        offset = batch.last().map_or(offset, |r| r.offset + 1);
        fetched.extend(batch);
    }
    for (i, (got, sent)) in fetched.iter().zip(&records).enumerate() {
        assert_eq!(got.offset, i as i64);
        assert_eq!(got.record.key, sent.key);
        assert_eq!(got.record.value, sent.value, "value of offset {i}");
        assert_eq!(got.record.timestamp, sent.timestamp);
    }

    // kcat lists the topic and reads back what rskafka wrote.
    let listing = std::process::Command::new("kcat")
        .args(["-b", &common::brokers(), "-L", "-t", &topic])
        .output()
        .expect("kcat");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains(&format!("topic \"{topic}\" with 1 partitions")),
        "{listing}"
    );
    let read = common::kcat_read_all(&topic);
    assert_eq!(read.len(), 1000);
    for (r, sent) in read.iter().zip(&records) {
        assert_eq!(
            r.payload.as_deref().map(str::as_bytes),
            sent.value.as_deref()
        );
        assert_eq!(r.key.as_deref().map(str::as_bytes), sent.key.as_deref());
    }
}

#[tokio::test]
async fn mysql_bancos_is_readable() {
    let mut conn = common::require_mysql().await;
    let count: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM bancos")
        .await
        .unwrap();
    assert!(count.unwrap() > 0, "table bancos is empty; run `make seed`");
    let rows: Vec<(String, String, String)> = conn
        .query("SELECT cnpj, segmento, nome FROM bancos ORDER BY cnpj LIMIT 5")
        .await
        .unwrap();
    for (cnpj, segmento, _) in &rows {
        assert_eq!(cnpj.len(), 8, "cnpj {cnpj} keeps its leading zeros");
        assert!(segmento.starts_with('S'), "segmento {segmento}");
    }
    conn.disconnect().await.unwrap();
}

#[tokio::test]
async fn unreachable_broker_fails_fast_with_the_address() {
    let config = reclamacoes::kafka::KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = match reclamacoes::kafka::Kafka::connect(config).await {
        Ok(_) => panic!("connected to a port where nothing listens"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("make up"), "{err}");
    // Generous bound: the point is "not a hang", not a timing.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
