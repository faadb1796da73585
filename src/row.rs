//! The unit that flows from decode to the sinks: one Kafka record, typed and enriched.

use crate::schema::Value;

/// One decoded, enriched record on its way to a window and a Parquet file.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp, UTC milliseconds.
    pub kafka_timestamp_ms: i64,
    /// The event time used for windowing, UTC milliseconds.
    pub event_time_ms: i64,
    /// The schema's fields in order, followed by the enrichment columns in order.
    pub values: Vec<Value>,
}

impl OutputRow {
    /// Approximate memory held by this row, used to bound buffers (`--max-buffer-bytes`).
    pub fn size_bytes(&self) -> usize {
        // The vector's spare capacity and its allocation count too: the estimate should track
        // what the allocator really holds, or --max-buffer-bytes is exceeded several times over.
        let spare = self.values.capacity() - self.values.len();
        std::mem::size_of::<OutputRow>()
            + 16
            + spare * std::mem::size_of::<Value>()
            + self.values.iter().map(Value::size_bytes).sum::<usize>()
    }
}

/// A Kafka message that could not be decoded, kept losslessly for `_dead_letter/`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub kafka_timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub error: String,
}

impl DeadLetter {
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<DeadLetter>()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.error.len()
    }
}
