//! A record batch that cannot be read, made for real: records produced to the PRIVATE broker,
//! the broker stopped cleanly, one byte of a batch flipped in its log segment on disk, the
//! broker started again (a clean shutdown skips log recovery, so the broker serves the segment
//! as it is, and every fetch of that batch fails its CRC-32C).
//!
//! | run | what must hold |
//! |---|---|
//! | default (`--on-corrupt-batch fail`) | exits non-zero soon (not retried as "the broker may be down"), naming topic, partition, the batch's offset, the CRC mismatch and `--on-corrupt-batch skip`; nothing after the batch is written |
//! | `--on-corrupt-batch skip` | ends; every record of the other batches once in the table; the bad batch is one dead letter at its offset, holding its bytes, its reason naming the offsets and the CRC |

mod faultkit;

use std::path::Path;
use std::time::Duration;

use faultkit::common::{consume_args, BOUNDED};
use faultkit::{app, private_brokers, private_dir, run_bounded, scalar, Private};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;

const RECORDS_PER_BATCH: usize = 50;
const BATCHES: usize = 3;
/// The batch whose bytes are damaged (0-based).
const DAMAGED: usize = 1;

/// (base offset, byte position, length in bytes) of every batch in a log segment.
fn batches_in_segment(segment: &[u8]) -> Vec<(i64, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= segment.len() {
        let base = i64::from_be_bytes(segment[at..at + 8].try_into().unwrap());
        let len = i32::from_be_bytes(segment[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push((base, at, 12 + len));
        at += 12 + len;
    }
    out
}

fn consume(brokers: &str, topic: &str, out: &Path, extra: &[&str]) -> faultkit::Finished {
    let mut cmd = app(brokers, &faultkit::common::mysql_url());
    cmd.args(consume_args(topic, out, &BOUNDED)).args(extra);
    run_bounded(&mut cmd, Duration::from_secs(120))
}

#[tokio::test]
async fn a_corrupted_log_segment_stops_the_consumer_or_is_set_aside() {
    let private = Private::acquire();
    let brokers = private_brokers();
    let topic = faultkit::common::random_topic("corrupt-batch");
    let kafka = faultkit::connect(&brokers).await;
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let handle = faultkit::partition(&kafka, &topic, 0).await;
    let schema = Schema::banco_central();
    let now = chrono::Utc::now().timestamp_millis();
    for b in 0..BATCHES {
        let records = (0..RECORDS_PER_BATCH)
            .map(|i| {
                let i = (b * RECORDS_PER_BATCH + i) as u64;
                faultkit::common::synthetic_record(&schema, i, now)
            })
            .collect();
        // Uncompressed, so that the flipped byte is inside a record's value.
        handle.produce(records, Compression::None).await.unwrap();
    }
    drop(handle);
    drop(kafka);

    private.stop_kafka();
    let segment_path = private_dir()
        .join("kafka/data")
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let mut segment = std::fs::read(&segment_path).unwrap();
    let batches = batches_in_segment(&segment);
    assert_eq!(batches.len(), BATCHES, "{batches:?}");
    let (damaged_offset, at, len) = batches[DAMAGED];
    assert_eq!(damaged_offset, (DAMAGED * RECORDS_PER_BATCH) as i64);
    segment[at + len - 20] ^= 0x5a;
    std::fs::write(&segment_path, &segment).unwrap();
    private.start_again();

    // Default: a clear error, soon, naming where and what; not retried as a broker fault.
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("fail");
    let failed = consume(&brokers, &topic, &out, &[]);
    assert!(!failed.status.success(), "{}", failed.both());
    let text = failed.both();
    for needle in [
        format!("topic `{topic}` partition 0"),
        format!("record batch at offset {damaged_offset}"),
        "CRC error".to_string(),
        "--on-corrupt-batch skip".to_string(),
    ] {
        assert!(text.contains(&needle), "`{needle}` missing from:\n{text}");
    }
    assert!(
        !text.contains("The broker may be down"),
        "a corrupt batch was retried as a broker fault:\n{text}"
    );

    // Skip: the other batches whole, the damaged one a single dead letter with its bytes.
    let out = work.path().join("skip");
    let skipped = consume(&brokers, &topic, &out, &["--on-corrupt-batch", "skip"]);
    assert!(skipped.status.success(), "{}", skipped.both());
    let table = faultkit::output::TABLE;
    let dead = faultkit::output::DEAD;
    let rows = scalar(&out, &format!("SELECT count(*) FROM {table}"));
    let distinct = scalar(
        &out,
        &format!("SELECT count(DISTINCT kafka_offset) FROM {table}"),
    );
    let expected = ((BATCHES - 1) * RECORDS_PER_BATCH) as i64;
    assert_eq!((rows, distinct), (expected, expected), "{}", skipped.both());
    let in_damaged = scalar(
        &out,
        &format!(
            "SELECT count(*) FROM {table} WHERE kafka_offset BETWEEN {damaged_offset} AND {}",
            damaged_offset + RECORDS_PER_BATCH as i64 - 1
        ),
    );
    assert_eq!(in_damaged, 0);
    let letters = faultkit::duckdb(
        &out,
        &format!("SELECT kafka_offset, octet_length(value), error FROM {dead}"),
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0][0].as_i64(), Some(damaged_offset));
    assert_eq!(
        letters[0][1].as_i64(),
        Some(len as i64),
        "the batch's bytes, whole"
    );
    let reason = letters[0][2].as_str().unwrap();
    let last = damaged_offset + RECORDS_PER_BATCH as i64 - 1;
    assert!(
        reason.contains(&format!("offsets {damaged_offset}..={last}")) && reason.contains("CRC"),
        "{reason}"
    );
}
