//! One fetch's record batches, turned into the [`RawRecord`]s the decoder reads.
//!
//! Owns: decompressing a fetch's batches into one buffer that the decoding thread reuses,
//! reading their records without an allocation per record (rskafka's [`RawRecordIter`] borrows
//! keys and values from that buffer, or from the batch itself when it is uncompressed), skipping
//! the records before the fetched offset, the offset the next fetch starts at, and what becomes
//! of a batch that cannot be read (`--on-corrupt-batch`).
//!
//! Why it is correct: this is Kafka's record batch format v2, the only one the broker sends to a
//! fetch of this version. A record's offset is the batch's `base_offset + offset_delta` and its
//! timestamp `first_timestamp + timestamp_delta`. Kafka does not split a batch, so a fetch from
//! the middle of one gets the batch whole: records before the requested offset were routed by
//! an earlier fetch and are skipped here. The next fetch starts after the last batch's last
//! offset (`base_offset + last_offset_delta`), which also steps over control batches
//! (transaction markers, no data), the data of aborted transactions (rskafka marks it
//! [`FetchedContent::Aborted`] from the fetch's aborted transactions: read committed, see
//! `rskafka::client::read_committed`) and records that compaction removed from a batch.
//!
//! A batch that cannot be read (its CRC does not match, its length or format is impossible, its
//! compression or records do not decode) is never retried as if the broker were at fault: it
//! is the same bytes on every fetch. [`CorruptBatchPolicy::Fail`] stops the partition with the
//! batch's offset and reason; [`CorruptBatchPolicy::Skip`] gives one refused record for the whole
//! batch (its raw bytes, to `_dead_letter/`) and goes on after it. Where a corrupt batch ends is
//! taken from the next batch's base offset when the response has one (its framing was sound),
//! else from its own header when that lies below the end of what the fetch could return (the
//! last stable offset), else one offset on: the
//! next fetch always moves forward, and never past a batch that could be read.

use std::ops::Range;
use std::sync::Mutex;

use rskafka::record::{RawRecordIter, RecordBatchCompression};

use super::decode::RawRecord;
use crate::kafka::{FetchedBatch, FetchedContent};

/// A decompression buffer larger than this is not kept for the next fetch.
const KEEP_BUFFER_BYTES: usize = 16 << 20;
/// Decompression buffers kept for the next fetches. A buffer per decoding thread would be
/// kept by every thread of tokio's blocking pool that ever decoded (measured: +13 MB peak RSS
/// with 3 partitions); a fresh buffer per fetch costs page faults. Partitions decode one fetch
/// at a time each, so a few buffers serve them all.
const POOLED_BUFFERS: usize = 4;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// What becomes of a record batch that cannot be read (`--on-corrupt-batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorruptBatchPolicy {
    /// Stop the partition (and so the run) with the batch's offset and reason.
    #[default]
    Fail,
    /// Write the batch's raw bytes to `_dead_letter/` as one refused record, and go on after it.
    Skip,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the record batch at offset {offset}: {reason}. The same bytes come back on every \
     fetch, so this is not retried: check what produced it and the broker's disk (`kcat -C -o \
     {offset} -c 1` or Kafka's DumpLogSegments show it), or run with `--on-corrupt-batch skip` to \
     set the batch aside in _dead_letter/ and go on"
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
    on_corrupt: CorruptBatchPolicy,
}

/// Where one batch's records section is: in the batch (uncompressed) or in the buffer.
enum Section {
    InBatch,
    InBuffer(Range<usize>),
    /// Its decompression failed, for this reason.
    Unreadable(String),
}

impl FetchedRecords {
    /// `fetched_to` is the end of what the fetch could return (the last stable offset, read
    /// committed): a corrupt last batch is not taken to end past it (module docs).
    pub fn new(
        mut batches: Vec<FetchedBatch>,
        from: i64,
        fetched_to: i64,
        on_corrupt: CorruptBatchPolicy,
    ) -> Self {
        bound_corrupt_batches(&mut batches, from, fetched_to);
        FetchedRecords {
            batches,
            from,
            on_corrupt,
        }
    }

    /// The offset after the last batch, where the next fetch starts; `None`: no batch.
    pub fn next_offset(&self) -> Option<i64> {
        self.batches.last().map(|b| b.last_offset() + 1)
    }

    /// Records the batches hold, those before `from` included; a corrupt batch counts one.
    pub fn len_upper_bound(&self) -> usize {
        self.batches
            .iter()
            .map(|b| match &b.content {
                FetchedContent::Records(r) => r.len(),
                FetchedContent::Corrupt(_) => 1,
                FetchedContent::Aborted | FetchedContent::Control(_) => 0,
            })
            .sum()
    }

    /// What the batches skipped for the reader: (data batches of aborted transactions, control
    /// batches), those before `from` left out.
    pub fn skipped(&self) -> (u64, u64) {
        let mut skipped = (0, 0);
        for b in self.batches.iter().filter(|b| b.last_offset() >= self.from) {
            match &b.content {
                FetchedContent::Aborted => skipped.0 += 1,
                FetchedContent::Control(_) => skipped.1 += 1,
                _ => {}
            }
        }
        skipped
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
        // Decompress first (the buffer grows), then borrow from it.
        let mut sections = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            let section = match &batch.content {
                FetchedContent::Records(raw)
                    if raw.compression() != RecordBatchCompression::NoCompression =>
                {
                    let start = buffer.len();
                    match raw.decompress_into(buffer) {
                        Ok(()) => Section::InBuffer(start..buffer.len()),
                        Err(e) => {
                            buffer.truncate(start);
                            Section::Unreadable(format!(
                                "{:?} decompression failed: {e}",
                                raw.compression()
                            ))
                        }
                    }
                }
                _ => Section::InBatch,
            };
            sections.push(section);
        }
        let buffer: &'a [u8] = buffer;
        let mut records = Vec::with_capacity(self.len_upper_bound());
        for (batch, section) in self.batches.iter().zip(sections) {
            if batch.last_offset() < self.from {
                continue;
            }
            let raw = match &batch.content {
                FetchedContent::Records(raw) => raw,
                FetchedContent::Aborted | FetchedContent::Control(_) => continue,
                FetchedContent::Corrupt(corrupt) => {
                    self.refuse(batch, &corrupt.reason, &corrupt.bytes, &mut records)?;
                    continue;
                }
            };
            let bytes = match section {
                Section::InBatch => raw.section(),
                Section::InBuffer(range) => &buffer[range],
                Section::Unreadable(reason) => {
                    self.refuse(batch, &reason, raw.section(), &mut records)?;
                    continue;
                }
            };
            let first = records.len();
            if let Err(e) = self.read_batch(batch, bytes, raw.len(), &mut records) {
                // The whole batch or none of it: its records are not to be trusted.
                records.truncate(first);
                self.refuse(batch, &e.reason, raw.section(), &mut records)?;
            }
        }
        Ok(records)
    }

    /// Appends the records of `batch` (records section `bytes`, `n` records) from `from` on.
    fn read_batch<'a>(
        &self,
        batch: &FetchedBatch,
        bytes: &'a [u8],
        n: usize,
        records: &mut Vec<RawRecord<'a>>,
    ) -> Result<(), FetchError> {
        for record in RawRecordIter::new(bytes, n) {
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
                refused: None,
            });
        }
        Ok(())
    }

    /// A batch that cannot be read: an error ([`CorruptBatchPolicy::Fail`]) or one refused
    /// record holding its bytes, at the first offset not yet routed.
    fn refuse<'a>(
        &self,
        batch: &FetchedBatch,
        reason: &str,
        bytes: &'a [u8],
        records: &mut Vec<RawRecord<'a>>,
    ) -> Result<(), FetchError> {
        let reason = format!(
            "corrupt record batch (offsets {}..={}, producer id {}): {reason}",
            batch.base_offset,
            batch.last_offset(),
            batch.producer_id
        );
        match self.on_corrupt {
            CorruptBatchPolicy::Fail => Err(FetchError {
                offset: batch.base_offset,
                reason,
            }),
            CorruptBatchPolicy::Skip => {
                records.push(RawRecord {
                    offset: batch.base_offset.max(self.from),
                    timestamp_ms: batch.first_timestamp.max(0),
                    key: None,
                    value: Some(bytes),
                    refused: Some(reason),
                });
                Ok(())
            }
        }
    }
}

/// Sets where each corrupt batch ends (its `last_offset_delta`), as the module docs say: the
/// next batch's base offset, else its own header below `fetched_to`, else one offset on.
fn bound_corrupt_batches(batches: &mut [FetchedBatch], from: i64, fetched_to: i64) {
    for i in 0..batches.len() {
        if !matches!(batches[i].content, FetchedContent::Corrupt(_)) {
            continue;
        }
        let base = batches[i].base_offset;
        let own_end = batches[i].last_offset();
        let end = match batches.get(i + 1) {
            Some(next) if next.base_offset > base => next.base_offset - 1,
            _ if batches[i].last_offset_delta >= 0 && own_end < fetched_to => own_end,
            _ => base.max(from),
        };
        let end = end.max(base.max(from));
        batches[i].last_offset_delta = i32::try_from(end - base).unwrap_or(i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rskafka::chrono::{TimeZone, Utc};
    use rskafka::record::{RawRecords, Record};

    use crate::kafka::{drop_aborted, AbortedTransaction, ControlBatchRecord, CorruptBatch};

    fn data_batch(
        base: i64,
        last_offset_delta: i32,
        first_ts: i64,
        raw: RawRecords,
    ) -> FetchedBatch {
        FetchedBatch {
            base_offset: base,
            last_offset_delta,
            first_timestamp: first_ts,
            producer_id: -1,
            producer_epoch: -1,
            is_transactional: false,
            content: FetchedContent::Records(raw),
        }
    }

    /// A control batch of `producer_id` at `offset`.
    fn marker(offset: i64, producer_id: i64, control: ControlBatchRecord) -> FetchedBatch {
        FetchedBatch {
            base_offset: offset,
            last_offset_delta: 0,
            first_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            is_transactional: true,
            content: FetchedContent::Control(control),
        }
    }

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
                fetched.push(data_batch(base, last_offset_delta, first_ts, raw));
                next = base + i64::from(last_offset_delta) + 1;
                base = next + gap;
                if *control_after {
                    fetched.push(marker(base, -1, ControlBatchRecord::Commit));
                    next = base + 1;
                    base = next;
                }
            }
            let from = first_base + (skip % batches[0].0.len()) as i64;
            expected.retain(|e| e.0 >= from);
            let fetched = FetchedRecords::new(fetched, from, next, CorruptBatchPolicy::Fail);
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
            vec![marker(41, 3, ControlBatchRecord::Other(2))],
            41,
            42,
            CorruptBatchPolicy::Fail,
        );
        assert_eq!(fetched.len_upper_bound(), 0);
        assert_eq!(fetched.next_offset(), Some(42));
        assert_eq!(fetched.skipped(), (0, 1));
        assert_eq!(read_all(&fetched).unwrap(), vec![]);
        let none = FetchedRecords::new(vec![], 7, 7, CorruptBatchPolicy::Fail);
        assert_eq!(none.next_offset(), None);
    }

    /// One batch of a simulated partition log: who wrote it and what it is.
    #[derive(Debug, Clone)]
    enum LogBatch {
        /// Records `base..base + n` of `producer` (-1: not transactional).
        Data { producer: i64, base: i64, n: i64 },
        /// A transaction marker of `producer` at `offset`.
        Marker {
            producer: i64,
            offset: i64,
            commit: bool,
        },
    }

    /// A log of interleaved transactions (each step: a producer writes a batch, or ends its
    /// transaction), what a read committed reader must get from it, the aborted transactions
    /// the broker knows ((producer, first offset, marker offset)) and the last stable offset.
    struct Log {
        batches: Vec<LogBatch>,
        committed: Vec<i64>,
        aborted: Vec<(i64, i64, i64)>,
        stable: i64,
    }

    fn simulate(steps: &[(u8, u8, bool)]) -> Log {
        use std::collections::BTreeMap;
        let mut batches = Vec::new();
        let mut next = 0i64;
        // producer -> (first offset of its open transaction, its record offsets)
        let mut open: BTreeMap<i64, (i64, Vec<i64>)> = BTreeMap::new();
        let mut committed = Vec::new();
        let mut aborted = Vec::new();
        for &(who, n, end_commit) in steps {
            let producer = i64::from(who % 4) - 1; // -1: a producer without transactions
            let n = i64::from(n % 4) + 1;
            let ends = producer >= 0 && n == 4 && open.contains_key(&producer);
            if ends {
                let (first, offsets) = open.remove(&producer).expect("open");
                batches.push(LogBatch::Marker {
                    producer,
                    offset: next,
                    commit: end_commit,
                });
                if end_commit {
                    committed.extend(offsets);
                } else {
                    aborted.push((producer, first, next));
                }
                next += 1;
                continue;
            }
            batches.push(LogBatch::Data {
                producer,
                base: next,
                n,
            });
            let offsets = (next..next + n).collect::<Vec<_>>();
            if producer < 0 {
                committed.extend(offsets);
            } else {
                open.entry(producer)
                    .or_insert_with(|| (next, Vec::new()))
                    .1
                    .extend(offsets);
            }
            next += n;
        }
        let stable = open.values().map(|(first, _)| *first).min().unwrap_or(next);
        committed.retain(|o| *o < stable);
        committed.sort_unstable();
        Log {
            batches,
            committed,
            aborted,
            stable,
        }
    }

    fn to_fetched(batch: &LogBatch) -> FetchedBatch {
        match *batch {
            LogBatch::Data { producer, base, n } => {
                let records: Vec<Record> = (base..base + n)
                    .map(|o| record(&None, &Some(o.to_string().into_bytes()), 0, 1_000))
                    .collect();
                let raw =
                    RawRecords::encode(&records, 1_000, RecordBatchCompression::NoCompression)
                        .unwrap();
                FetchedBatch {
                    base_offset: base,
                    last_offset_delta: (n - 1) as i32,
                    first_timestamp: 1_000,
                    producer_id: producer,
                    producer_epoch: 0,
                    is_transactional: producer >= 0,
                    content: FetchedContent::Records(raw),
                }
            }
            LogBatch::Marker {
                producer,
                offset,
                commit,
            } => marker(
                offset,
                producer,
                if commit {
                    ControlBatchRecord::Commit
                } else {
                    ControlBatchRecord::Abort
                },
            ),
        }
    }

    fn last_offset(batch: &LogBatch) -> i64 {
        match *batch {
            LogBatch::Data { base, n, .. } => base + n - 1,
            LogBatch::Marker { offset, .. } => offset,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Read committed, as the broker serves it: fetches of a few batches each, from any
        /// offset (a restart resumes anywhere, mid-batch or mid-transaction), each with the
        /// aborted transactions overlapping its range, up to the last stable offset. Every
        /// committed (or non-transactional) record comes out exactly once, in order; no record
        /// of an aborted or open transaction does; the reads end at the last stable offset.
        #[test]
        fn read_committed_gives_exactly_the_committed_records(
            steps in prop::collection::vec((any::<u8>(), any::<u8>(), any::<bool>()), 1..60),
            start in 0i64..200,
            per_fetch in prop::collection::vec(1usize..6, 1..20),
        ) {
            let log = simulate(&steps);
            let start = start % (log.stable + 1);
            let mut from = start;
            let mut got = Vec::new();
            let mut fetches = 0;
            while from < log.stable {
                // The batch holding `from` and the next ones, below the last stable offset.
                let take = per_fetch[fetches % per_fetch.len()];
                let chosen: Vec<&LogBatch> = log
                    .batches
                    .iter()
                    .filter(|b| last_offset(b) >= from && last_offset(b) < log.stable)
                    .take(take)
                    .collect();
                prop_assert!(!chosen.is_empty(), "no batch at {} below {}", from, log.stable);
                let upper = last_offset(chosen[chosen.len() - 1]) + 1;
                let aborted: Vec<AbortedTransaction> = log
                    .aborted
                    .iter()
                    .filter(|(_, first, last)| *last >= from && *first < upper)
                    .map(|&(producer_id, first_offset, _)| AbortedTransaction { producer_id, first_offset })
                    .collect();
                let mut batches: Vec<FetchedBatch> = chosen.into_iter().map(to_fetched).collect();
                drop_aborted(&mut batches, &aborted);
                let fetched = FetchedRecords::new(batches, from, log.stable, CorruptBatchPolicy::Fail);
                for (offset, _, _, value) in read_all(&fetched).unwrap() {
                    let value = String::from_utf8(value.unwrap()).unwrap();
                    prop_assert_eq!(value, offset.to_string());
                    got.push(offset);
                }
                let next = fetched.next_offset().unwrap();
                prop_assert!(next > from);
                from = next;
                fetches += 1;
            }
            prop_assert_eq!(from, log.stable.max(start));
            let expected: Vec<i64> = log.committed.iter().copied().filter(|o| *o >= start).collect();
            prop_assert_eq!(got, expected);
        }
    }

    fn corrupt(base: i64, last_offset_delta: i32, bytes: &[u8]) -> FetchedBatch {
        FetchedBatch {
            base_offset: base,
            last_offset_delta,
            first_timestamp: 5,
            producer_id: -1,
            producer_epoch: -1,
            is_transactional: false,
            content: FetchedContent::Corrupt(CorruptBatch {
                reason: "CRC error, got 0x1, expected 0x2".into(),
                bytes: bytes.to_vec(),
            }),
        }
    }

    fn one_record(base: i64, value: &[u8]) -> FetchedBatch {
        let raw = RawRecords::encode(
            &[record(&None, &Some(value.to_vec()), 0, 5)],
            5,
            RecordBatchCompression::NoCompression,
        )
        .unwrap();
        data_batch(base, 0, 5, raw)
    }

    #[test]
    fn a_corrupt_batch_fails_with_its_offset_or_is_refused_whole() {
        let batches = || {
            vec![
                one_record(10, b"a"),
                corrupt(11, 2, b"\x00junk"),
                one_record(14, b"b"),
            ]
        };
        let failing = FetchedRecords::new(batches(), 10, 20, CorruptBatchPolicy::Fail);
        let err = read_all(&failing).unwrap_err();
        assert_eq!(err.offset, 11);
        assert!(err.reason.contains("CRC error"), "{err}");
        assert!(err.to_string().contains("--on-corrupt-batch skip"), "{err}");

        let skipping = FetchedRecords::new(batches(), 10, 20, CorruptBatchPolicy::Skip);
        let records = skipping
            .with_records(|records| {
                records
                    .iter()
                    .map(|r| (r.offset, r.value.map(<[u8]>::to_vec), r.refused.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], (10, Some(b"a".to_vec()), None));
        assert_eq!(records[1].0, 11);
        assert_eq!(records[1].1.as_deref(), Some(&b"\x00junk"[..]));
        let reason = records[1].2.as_deref().unwrap();
        assert!(
            reason.contains("offsets 11..=13") && reason.contains("CRC error"),
            "{reason}"
        );
        assert_eq!(records[2], (14, Some(b"b".to_vec()), None));
        assert_eq!(skipping.next_offset(), Some(15));
    }

    #[test]
    fn a_corrupt_last_batch_ends_where_it_can_be_trusted() {
        // Its header's end lies below the end of the fetch: taken.
        let f = FetchedRecords::new(vec![corrupt(11, 2, b"x")], 11, 20, CorruptBatchPolicy::Skip);
        assert_eq!(f.next_offset(), Some(14));
        // An end at or past the end of the fetch, or a negative delta: one offset on.
        let f = FetchedRecords::new(
            vec![corrupt(11, 900, b"x")],
            11,
            20,
            CorruptBatchPolicy::Skip,
        );
        assert_eq!(f.next_offset(), Some(12));
        let f = FetchedRecords::new(
            vec![corrupt(11, -7, b"x")],
            12,
            20,
            CorruptBatchPolicy::Skip,
        );
        assert_eq!(f.next_offset(), Some(13));
        // Fetched again from inside it: its refusal is not repeated.
        let again = FetchedRecords::new(
            vec![corrupt(11, 900, b"x")],
            12,
            20,
            CorruptBatchPolicy::Skip,
        );
        assert_eq!(again.next_offset(), Some(13));
        assert_eq!(read_all(&again).unwrap().len(), 1);
    }

    #[test]
    fn a_batch_whose_records_do_not_parse_is_refused_whole() {
        let rows = [
            record(&None, &Some(b"{}".to_vec()), 0, 5),
            record(&None, &Some(b"{}".to_vec()), 0, 5),
        ];
        let good = RawRecords::encode(&rows, 5, RecordBatchCompression::NoCompression).unwrap();
        // The first record whole, the second cut: the first must not come out alone.
        let section = &good.section()[..good.section().len() - 1];
        let cut =
            || RawRecords::compress(section, 2, RecordBatchCompression::NoCompression).unwrap();
        let f = FetchedRecords::new(
            vec![data_batch(3, 1, 5, cut())],
            3,
            9,
            CorruptBatchPolicy::Fail,
        );
        assert_eq!(read_all(&f).unwrap_err().offset, 3);
        let f = FetchedRecords::new(
            vec![data_batch(3, 1, 5, cut())],
            3,
            9,
            CorruptBatchPolicy::Skip,
        );
        let out = f
            .with_records(|r| {
                r.iter()
                    .map(|r| (r.offset, r.refused.is_some()))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(out, vec![(3, true)]);
        assert_eq!(f.next_offset(), Some(5));
    }
}
