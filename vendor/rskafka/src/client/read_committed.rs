//! reclamacoes patch 5 (vendor/README.md): what a fetch gives a `read_committed` consumer.
//!
//! A fetch with `isolation_level = READ_COMMITTED` stops at the partition's last stable offset
//! (LSO), but below it the broker still sends every batch as it is in the log: data of committed
//! *and* aborted transactions, and the control batches (transaction markers) that ended them.
//! The consumer drops the aborted ones itself, from the response's list of aborted transactions
//! (producer id, first offset), as Kafka's Java client does (`CompletedFetch`):
//!
//! - batches are taken in offset order; before each batch of a producer (`producer_id != -1`),
//!   every aborted transaction whose first offset is at or below the batch's last offset makes
//!   its producer id "aborted";
//! - a transactional data batch of an aborted producer id is aborted: its records are dropped;
//! - an ABORT marker of a producer id ends that producer's aborted transaction (what the
//!   producer writes after it is another transaction);
//! - control batches carry no data and are stepped over.
//!
//! Every skipped batch still moves the fetch offset past it: [`FetchedBatch`] keeps aborted and
//! control batches (without their records) so that the caller knows where the next fetch starts.
//! The list of aborted transactions covers the fetched range, those that began before the
//! fetch offset included, so the decision needs no state across fetches: fetching again from
//! any offset (after a restart, say) drops exactly the same records.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

pub use crate::protocol::messages::IsolationLevel;
pub use crate::protocol::record::{ControlBatchRecord, CorruptBatch};

use crate::protocol::record::RawRecords;

/// One record batch of a fetch ([`super::partition::PartitionClient::fetch_record_batches`]).
#[derive(Debug)]
pub struct FetchedBatch {
    pub base_offset: i64,
    /// The batch's last offset is `base_offset + last_offset_delta`; the next batch starts after it.
    pub last_offset_delta: i32,
    /// Record timestamps are `first_timestamp + timestamp_delta`.
    pub first_timestamp: i64,
    /// The idempotent or transactional producer that wrote the batch; -1: none.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub is_transactional: bool,
    pub content: FetchedContent,
}

impl FetchedBatch {
    /// The batch's last offset.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// What a fetched batch holds for its reader.
#[derive(Debug)]
pub enum FetchedContent {
    /// Data: records of no transaction or of a committed one (or, read uncommitted, any).
    Records(RawRecords),
    /// Data of an aborted transaction (read committed): dropped, never read.
    Aborted,
    /// A control batch: a transaction marker (or another control record), no data.
    Control(ControlBatchRecord),
    /// A batch that cannot be read: CRC mismatch, unknown format, impossible length.
    Corrupt(CorruptBatch),
}

/// An aborted transaction of a fetch response: the producer and the transaction's first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// One partition's answer to a fetch.
#[derive(Debug)]
pub struct FetchedPartition {
    /// In offset order; read committed, aborted data is [`FetchedContent::Aborted`] already.
    pub batches: Vec<FetchedBatch>,
    pub high_watermark: i64,
    /// The last stable offset: every transaction below it is decided. A read committed fetch
    /// gives nothing at or after it; the high watermark when the broker did not say.
    pub last_stable_offset: i64,
    /// How many aborted transactions the broker listed for the fetched range.
    pub aborted_transactions: usize,
}

/// Turns the data batches of aborted transactions into [`FetchedContent::Aborted`], given the
/// fetch response's aborted transactions (the module docs say how). `batches` are one fetch's,
/// in offset order.
pub fn drop_aborted(batches: &mut [FetchedBatch], aborted: &[AbortedTransaction]) {
    let mut pending: BinaryHeap<Reverse<(i64, i64)>> = aborted
        .iter()
        .map(|t| Reverse((t.first_offset, t.producer_id)))
        .collect();
    let mut aborted_producers: HashSet<i64> = HashSet::new();
    for batch in batches {
        if batch.producer_id == -1 {
            continue;
        }
        while let Some(Reverse((first_offset, producer_id))) = pending.peek().copied() {
            if first_offset > batch.last_offset() {
                break;
            }
            pending.pop();
            aborted_producers.insert(producer_id);
        }
        match &batch.content {
            FetchedContent::Control(ControlBatchRecord::Abort) => {
                aborted_producers.remove(&batch.producer_id);
            }
            FetchedContent::Records(_)
                if batch.is_transactional && aborted_producers.contains(&batch.producer_id) =>
            {
                batch.content = FetchedContent::Aborted;
            }
            _ => {}
        }
    }
}
