//! One fetch's record batches, turned into the [`RawRecord`]s the decoder reads.
//!
//! Owns: decompressing a fetch's batches into one buffer that the decoding thread reuses,
//! reading their records without an allocation per record (rskafka's [`RawRecordIter`] borrows
//! keys and values from that buffer, or from the batch itself when it is uncompressed), skipping
//! the records before the fetched offset, and the offset the next fetch starts at.
//!
//! Why it is correct: this is Kafka's record batch format v2, the only one the broker sends to a
//! fetch of this version. A record's offset is the batch's `base_offset + offset_delta` and its
//! timestamp `first_timestamp + timestamp_delta`. Kafka does not split a batch, so a fetch from
//! the middle of one gets the batch whole: records before the requested offset were routed by
//! an earlier fetch and are skipped here. The next fetch starts after the last batch's last
//! offset (`base_offset + last_offset_delta`), which also steps over control batches
//! (transaction markers, no data) and records that compaction removed from a batch. Every
//! batch's CRC-32C was checked when the response was read; a batch that still does not parse
//! fails the partition with its offset, it is not skipped.

use std::ops::Range;
use std::sync::Mutex;

use rskafka::record::{RawRecordIter, RecordBatchCompression};

use super::decode::RawRecord;
use crate::kafka::FetchedBatch;

/// A decompression buffer larger than this is not kept for the next fetch.
const KEEP_BUFFER_BYTES: usize = 16 << 20;
/// Decompression buffers kept for the next fetches. A buffer per decoding thread would be
/// kept by every thread of tokio's blocking pool that ever decoded (measured: +13 MB peak RSS
/// with 3 partitions); a fresh buffer per fetch costs page faults. Partitions decode one fetch
/// at a time each, so a few buffers serve them all.
const POOLED_BUFFERS: usize = 4;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the record batch at offset {offset}: {reason}. Its CRC matched, so it is \
     stored this way in Kafka: check what produced it (`kcat -C -o {offset} -c 1` shows it); \
     `--on-data-loss` does not skip it"
)]
pub struct FetchError {
    pub offset: i64,
    pub reason: String,
}

/// The record batches of one fetch from `from`, in offset order.
#[derive(Debug)]
pub struct FetchedRecords {
    batches: Vec<FetchedBatch>,
    from: i64,
}

/// Where one batch's records section is: in the batch (uncompressed) or in the buffer.
enum Section {
    InBatch,
    InBuffer(Range<usize>),
}

impl FetchedRecords {
    pub fn new(batches: Vec<FetchedBatch>, from: i64) -> Self {
        FetchedRecords { batches, from }
    }

    /// The offset after the last batch, where the next fetch starts; `None`: no batch.
    pub fn next_offset(&self) -> Option<i64> {
        self.batches
            .last()
            .map(|b| b.base_offset + i64::from(b.last_offset_delta) + 1)
    }

    /// Records the batches hold, those before `from` included.
    pub fn len_upper_bound(&self) -> usize {
        self.batches
            .iter()
            .filter_map(|b| b.records.as_ref())
            .map(|r| r.len())
            .sum()
    }

    /// Calls `f` with the records from `from` on, in offset order, decompressed into a reused
    /// buffer.
    pub fn with_records<T>(
        &self,
        f: impl FnOnce(Vec<RawRecord<'_>>) -> T,
    ) -> Result<T, FetchError> {
        let mut buffer = BUFFERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_default();
        buffer.clear();
        let result = self.read_into(&mut buffer).map(f);
        if buffer.capacity() <= KEEP_BUFFER_BYTES {
            let mut pool = BUFFERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if pool.len() < POOLED_BUFFERS {
                pool.push(buffer);
            }
        }
        result
    }

    fn read_into<'a>(&'a self, buffer: &'a mut Vec<u8>) -> Result<Vec<RawRecord<'a>>, FetchError> {
        let mut sections = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            let Some(raw) = &batch.records else {
                sections.push(Section::InBatch);
                continue;
            };
            if raw.compression() == RecordBatchCompression::NoCompression {
                sections.push(Section::InBatch);
                continue;
            }
            let start = buffer.len();
            raw.decompress_into(buffer).map_err(|e| FetchError {
                offset: batch.base_offset,
                reason: format!("{:?} decompression failed: {e}", raw.compression()),
            })?;
            sections.push(Section::InBuffer(start..buffer.len()));
        }
        let buffer: &'a [u8] = buffer;
        let mut records = Vec::with_capacity(self.len_upper_bound());
        for (batch, section) in self.batches.iter().zip(sections) {
            let Some(raw) = &batch.records else { continue };
            let bytes = match section {
                Section::InBatch => raw.section(),
                Section::InBuffer(range) => &buffer[range],
            };
            for record in RawRecordIter::new(bytes, raw.len()) {
                let record = record.map_err(|e| FetchError {
                    offset: batch.base_offset,
                    reason: e.to_string(),
                })?;
                let offset = batch.base_offset + i64::from(record.offset_delta);
                if offset < self.from {
                    continue;
                }
                let timestamp_ms = batch
                    .first_timestamp
                    .checked_add(record.timestamp_delta)
                    .ok_or_else(|| FetchError {
                        offset,
                        reason: format!(
                            "timestamp overflow ({} + {})",
                            batch.first_timestamp, record.timestamp_delta
                        ),
                    })?;
                records.push(RawRecord {
                    offset,
                    timestamp_ms,
                    key: record.key,
                    value: record.value,
                });
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rskafka::chrono::{TimeZone, Utc};
    use rskafka::record::{RawRecords, Record};

    /// What one record must come out as: (offset, timestamp, key, value).
    type Expected = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

    const CODECS: [RecordBatchCompression; 5] = [
        RecordBatchCompression::NoCompression,
        RecordBatchCompression::Gzip,
        RecordBatchCompression::Snappy,
        RecordBatchCompression::Lz4,
        RecordBatchCompression::Zstd,
    ];

    fn record(
        key: &Option<Vec<u8>>,
        value: &Option<Vec<u8>>,
        headers: usize,
        ts_ms: i64,
    ) -> Record {
        Record {
            key: key.clone(),
            value: value.clone(),
            headers: (0..headers)
                .map(|h| (format!("h{h}"), vec![h as u8; h]))
                .collect(),
            timestamp: Utc.timestamp_millis_opt(ts_ms).unwrap(),
        }
    }

    fn read_all(fetched: &FetchedRecords) -> Result<Vec<Expected>, FetchError> {
        fetched.with_records(|records| {
            records
                .iter()
                .map(|r| {
                    (
                        r.offset,
                        r.timestamp_ms,
                        r.key.map(<[u8]>::to_vec),
                        r.value.map(<[u8]>::to_vec),
                    )
                })
                .collect()
        })
    }

    type Row = (Option<Vec<u8>>, Option<Vec<u8>>, usize, i64);

    fn rows() -> impl Strategy<Value = Vec<Row>> {
        let bytes = prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
        prop::collection::vec((bytes.clone(), bytes, 0usize..3, 0i64..100_000), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Batches of every codec, with gaps between them (compaction) and control batches,
        /// fetched from anywhere in the first batch: every record from the fetched offset on,
        /// once, in order, with its offset, timestamp, key and value.
        #[test]
        fn records_come_out_as_they_were_written(
            batches in prop::collection::vec((rows(), 0usize..5, 0i64..3, any::<bool>()), 1..5),
            skip in 0usize..12,
        ) {
            let mut fetched = Vec::new();
            let mut expected = Vec::new();
            let mut base = 1_000i64;
            let first_base = base;
            let mut next = base;
            for (rows, codec, gap, control_after) in &batches {
                let first_ts = 1_700_000_000_000;
                let records: Vec<Record> = rows
                    .iter()
                    .map(|(k, v, h, dt)| record(k, v, *h, first_ts + dt))
                    .collect();
                let raw = RawRecords::encode(&records, first_ts, CODECS[*codec]).unwrap();
                prop_assert_eq!(raw.len(), rows.len());
                for (i, (k, v, _, dt)) in rows.iter().enumerate() {
                    expected.push((base + i as i64, first_ts + dt, k.clone(), v.clone()));
                }
                let last_offset_delta = rows.len() as i32 - 1;
                fetched.push(FetchedBatch {
                    base_offset: base,
                    last_offset_delta,
                    first_timestamp: first_ts,
                    records: Some(raw),
                });
                next = base + i64::from(last_offset_delta) + 1;
                base = next + gap;
                if *control_after {
                    fetched.push(FetchedBatch {
                        base_offset: base,
                        last_offset_delta: 0,
                        first_timestamp: first_ts,
                        records: None,
                    });
                    next = base + 1;
                    base = next;
                }
            }
            let from = first_base + (skip % batches[0].0.len()) as i64;
            expected.retain(|e| e.0 >= from);
            let fetched = FetchedRecords::new(fetched, from);
            prop_assert_eq!(fetched.next_offset(), Some(next));
            prop_assert_eq!(read_all(&fetched).unwrap(), expected);
        }

        /// Arbitrary bytes as a records section: an error or records, never a panic, and never
        /// a key or value reaching past the section.
        #[test]
        fn arbitrary_sections_fail_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            n in 0usize..6,
        ) {
            for record in RawRecordIter::new(&bytes, n) {
                match record {
                    Ok(r) => {
                        let inside = |s: Option<&[u8]>| s.is_none_or(|s| s.len() <= bytes.len());
                        prop_assert!(inside(r.key) && inside(r.value));
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn a_truncated_section_names_its_batch() {
        let records = [record(&None, &Some(b"{\"a\":1}".to_vec()), 0, 5)];
        let raw = RawRecords::encode(&records, 5, RecordBatchCompression::NoCompression).unwrap();
        let section = raw.section();
        let cut = &section[..section.len() - 2];
        let errors: Vec<_> = RawRecordIter::new(cut, 1).filter_map(Result::err).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        // The count in the header says two records, the section holds one.
        let short: Vec<_> = RawRecordIter::new(section, 2).collect();
        assert!(short[0].is_ok() && short[1].is_err(), "{short:?}");
        // One record more in the section than the header says.
        let long: Vec<_> = RawRecordIter::new(section, 0).collect();
        assert!(long.len() == 1 && long[0].is_err(), "{long:?}");
    }

    #[test]
    fn only_control_batches_hold_no_records_but_move_the_offset() {
        let fetched = FetchedRecords::new(
            vec![FetchedBatch {
                base_offset: 41,
                last_offset_delta: 0,
                first_timestamp: 0,
                records: None,
            }],
            41,
        );
        assert_eq!(fetched.len_upper_bound(), 0);
        assert_eq!(fetched.next_offset(), Some(42));
        assert_eq!(read_all(&fetched).unwrap(), vec![]);
        assert_eq!(FetchedRecords::new(vec![], 7).next_offset(), None);
    }
}
