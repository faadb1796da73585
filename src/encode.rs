//! The producer's hot path: a chunk of CSV records in, Kafka records out — typed JSON values
//! with their key, partition and lane, stored compactly per lane ([`Segment`]).
//!
//! ```text
//!  Chunk ──parse_chunk──▶ DecodedRecord ──parse_cell_ref (per field)──▶ JSON bytes, written
//!        straight into the Segment of the row's lane: precomputed `{"field":` prefixes, clean
//!        string runs copied whole, itoa/ryu numbers, one `_source` prefix per file
//! ```
//!
//! Why the bytes are the ones `Schema::write_json` writes: both are made of the same pieces
//! (`Schema::json_field_prefix`, `push_cell_json`, `json_source_prefix`) over the same typed cell
//! (`Schema::parse_cell_ref`), and the key is `Cell::push_key`, which is `Value::as_key`
//! (checked by the tests below against the owned-value path).
//!
//! A lane is a slice of a partition's keys ([`Lanes`]): all rows of one key go to one lane, and
//! the sender keeps one batch in flight per lane, so one key's rows stay in order however many
//! lanes a partition has.

use std::sync::Arc;

use crate::csv_source::{parse_chunk, Chunk, FileLayout, RecordScratch, Reject};
use crate::kafka::murmur2;
use crate::schema::{push_cell_json, push_json_source_line, Schema};

/// Position of a row in the input: (index of the file in input order, line).
pub type Position = (usize, u64);

/// How rows map to partitions and lanes. A key's partition is the Java client's
/// (`toPositive(murmur2(key)) % partitions`); its lane within the partition is the next digit of
/// the same hash, so a key always has one lane. Rows without a key use lane 0 of their partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    partitions: usize,
    per_partition: usize,
}

impl Lanes {
    pub fn new(partitions: usize, per_partition: usize) -> Lanes {
        Lanes {
            partitions: partitions.max(1),
            per_partition: per_partition.max(1),
        }
    }

    /// Lanes in all: lane `l` belongs to partition `l / per_partition`.
    pub fn total(&self) -> usize {
        self.partitions * self.per_partition
    }

    pub fn partition_of(&self, lane: usize) -> i32 {
        (lane / self.per_partition) as i32
    }

    /// The (partition, lane) of a keyed row.
    pub fn of_key(&self, key: &[u8]) -> (i32, usize) {
        let positive = (murmur2(key) & 0x7fff_ffff) as u32 as usize;
        let partition = positive % self.partitions;
        let sub = (positive / self.partitions) % self.per_partition;
        (partition as i32, partition * self.per_partition + sub)
    }

    /// The (partition, lane) of a row without a key in chunk `seq`: partitions take turns per
    /// chunk (sticky, like the Java client's batches).
    pub fn keyless(&self, seq: u64) -> (i32, usize) {
        let partition = (seq % self.partitions as u64) as usize;
        (partition as i32, partition * self.per_partition)
    }
}

/// Where one row is inside a [`Segment`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct RowMeta {
    line: u64,
    /// -1: no key.
    key_len: i32,
    value_len: u32,
    timestamp_ms: i64,
}

impl RowMeta {
    fn data_len(&self) -> usize {
        self.key_len.max(0) as usize + self.value_len as usize
    }

    /// The size a row counts for in a batch (key + value + 32 bytes of record overhead).
    fn size(&self) -> usize {
        self.data_len() + 32
    }
}

/// Consecutive rows of one lane from one file: keys and values back to back in one buffer.
/// Cheap to move and split; [`Segment::write_kafka_records`] writes them as a batch's records.
#[derive(Debug, Default)]
pub struct Segment {
    pub lane: usize,
    pub file_idx: usize,
    data: Vec<u8>,
    rows: Vec<RowMeta>,
    bytes: usize,
}

impl Segment {
    /// An empty segment with room for `sized` (bytes, rows): what the lane's last one held plus
    /// an eighth, so the buffers rarely grow (each growth copied the JSON written so far).
    fn new(lane: usize, file_idx: usize, sized: (usize, usize)) -> Segment {
        let (bytes, rows) = sized;
        Segment {
            lane,
            file_idx,
            data: Vec::with_capacity(bytes + bytes / 8),
            rows: Vec::with_capacity(rows + rows / 8),
            bytes: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Batch bytes of all rows.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn first_position(&self) -> Option<Position> {
        self.rows.first().map(|r| (self.file_idx, r.line))
    }

    /// How many leading rows fit in `room` batch bytes.
    pub fn rows_fitting(&self, room: usize) -> usize {
        let mut used = 0;
        self.rows
            .iter()
            .take_while(|r| {
                used += r.size();
                used <= room
            })
            .count()
    }

    /// Splits off the rows from `at` on into a new segment.
    pub fn split_off(&mut self, at: usize) -> Segment {
        let offset: usize = self.rows[..at].iter().map(RowMeta::data_len).sum();
        let rows = self.rows.split_off(at);
        let bytes = rows.iter().map(RowMeta::size).sum();
        self.bytes -= bytes;
        Segment {
            lane: self.lane,
            file_idx: self.file_idx,
            data: self.data.split_off(offset),
            rows,
            bytes,
        }
    }

    /// The first and the largest timestamp of the rows (ms); `None`: no rows.
    pub fn timestamp_range(&self) -> Option<(i64, i64)> {
        let first = self.rows.first()?.timestamp_ms;
        let max = self.rows.iter().map(|r| r.timestamp_ms).max()?;
        Some((first, max))
    }

    /// Appends the rows to `out` in Kafka's record format (v2, no headers), offset deltas from
    /// `*offset_delta` on (advanced past them) and timestamp deltas from `first_timestamp_ms`:
    /// a record batch's records section, before compression. Keys and values are copied once,
    /// straight from the segment's buffer.
    pub fn write_kafka_records(
        &self,
        first_timestamp_ms: i64,
        offset_delta: &mut i32,
        out: &mut Vec<u8>,
    ) {
        for (row, key, value) in self.rows_with_data() {
            let timestamp_delta = row.timestamp_ms - first_timestamp_ms;
            let key_len = key.map_or(-1, |k| k.len() as i64);
            let body_len = 1 // attributes
                + varint_len(timestamp_delta)
                + varint_len(i64::from(*offset_delta))
                + varint_len(key_len)
                + key.map_or(0, <[u8]>::len)
                + varint_len(value.len() as i64)
                + value.len()
                + 1; // no headers
            put_varint(out, body_len as i64);
            out.push(0);
            put_varint(out, timestamp_delta);
            put_varint(out, i64::from(*offset_delta));
            put_varint(out, key_len);
            if let Some(key) = key {
                out.extend_from_slice(key);
            }
            put_varint(out, value.len() as i64);
            out.extend_from_slice(value);
            put_varint(out, 0);
            *offset_delta += 1;
        }
    }

    /// Every row with its key and value, borrowed from the buffer.
    fn rows_with_data(&self) -> impl Iterator<Item = (&RowMeta, Option<&[u8]>, &[u8])> {
        let mut at = 0;
        self.rows.iter().map(move |row| {
            let key = (row.key_len >= 0).then(|| {
                let key = &self.data[at..at + row.key_len as usize];
                at += key.len();
                key
            });
            let value = &self.data[at..at + row.value_len as usize];
            at += value.len();
            (row, key, value)
        })
    }

    /// (key, value) of every row, for tests.
    #[cfg(test)]
    pub fn key_values(&self) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        self.rows_with_data()
            .map(|(_, key, value)| (key.map(<[u8]>::to_vec), value.to_vec()))
            .collect()
    }
}

/// Kafka's (protobuf's) zig-zag varint: small magnitudes, of either sign, in few bytes.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(v: i64) -> usize {
    let bits = 64 - (zigzag(v) | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One chunk to encode, with what the encoder needs to know about its file.
pub struct ChunkJob {
    /// Position of the chunk in the whole input (0, 1, 2, …).
    pub seq: u64,
    pub file_idx: usize,
    /// `None`: the file is empty (no header); the job only reports that.
    pub chunk: Option<Chunk>,
    pub layout: Option<Arc<FileLayout>>,
    /// `,"_source":{"file":"…","line":` of the file.
    pub source_prefix: Arc<Vec<u8>>,
    /// The chunk starts with the file's header.
    pub has_header: bool,
    /// Rows starting at or before this line are skipped (resume).
    pub skip_through_line: u64,
    /// The last chunk of its file.
    pub last_of_file: bool,
}

/// What encoding one chunk produced.
#[derive(Debug, Default)]
pub struct EncodedChunk {
    pub seq: u64,
    pub file_idx: usize,
    /// At most one per lane, in lane order.
    pub segments: Vec<Segment>,
    /// In line order.
    pub rejects: Vec<Reject>,
    pub rows: u64,
    /// The position after the last row encoded, when there was one.
    pub read_up_to: Option<Position>,
    /// `--strict` and a row was rejected: the rows after it were not encoded.
    pub strict_stop: bool,
    pub last_of_file: bool,
    pub empty_file: bool,
}

/// Encodes chunks; one per worker thread (it keeps its buffers between chunks).
pub struct ChunkEncoder {
    schema: Arc<Schema>,
    /// `{"name":` / `,"name":` per field.
    prefixes: Vec<Vec<u8>>,
    lanes: Lanes,
    batch_limit: usize,
    strict: bool,
    scratch: RecordScratch,
    key: Vec<u8>,
    /// Per lane, the (bytes, rows) of its segment in the last chunk: the next one's size.
    last_sizes: Vec<(usize, usize)>,
}

impl ChunkEncoder {
    pub fn new(schema: Arc<Schema>, lanes: Lanes, batch_limit: usize, strict: bool) -> Self {
        let prefixes = (0..schema.fields.len())
            .map(|i| {
                let mut prefix = Vec::new();
                schema.json_field_prefix(i, &mut prefix);
                prefix
            })
            .collect();
        ChunkEncoder {
            schema,
            prefixes,
            lanes,
            batch_limit,
            strict,
            scratch: RecordScratch::default(),
            key: Vec::with_capacity(64),
            last_sizes: vec![(0, 0); lanes.total()],
        }
    }

    pub fn encode(&mut self, job: &ChunkJob) -> EncodedChunk {
        let mut out = EncodedChunk {
            seq: job.seq,
            file_idx: job.file_idx,
            last_of_file: job.last_of_file,
            ..EncodedChunk::default()
        };
        let (Some(chunk), Some(layout)) = (&job.chunk, &job.layout) else {
            out.empty_file = true;
            return out;
        };
        let mut lanes: Vec<Option<Segment>> = (0..self.lanes.total()).map(|_| None).collect();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let schema = &*self.schema;
        let (prefixes, key, lane_map) = (&self.prefixes, &mut self.key, self.lanes);
        let last_sizes = &mut self.last_sizes;
        let (batch_limit, strict) = (self.batch_limit, self.strict);
        let positions = &layout.positions;
        parse_chunk(
            chunk,
            layout,
            job.has_header,
            job.skip_through_line,
            &mut self.scratch,
            |record| {
                let record = match record {
                    Ok(record) => record,
                    Err(reject) => {
                        out.rejects.push(reject);
                        out.strict_stop = strict;
                        return !strict;
                    }
                };
                // The key first (its lane decides where the JSON goes); a bad key cell is
                // reported below, in field order, like every other cell.
                key.clear();
                let key_cell = |i: Option<usize>| {
                    i.and_then(|i| schema.parse_cell_ref(i, record.cell(positions[i])).ok())
                };
                let has_key = key_cell(schema.key_field).is_some_and(|c| c.push_key(key))
                    || key_cell(schema.key_fallback).is_some_and(|c| c.push_key(key));
                let (_, lane) = if has_key {
                    lane_map.of_key(key)
                } else {
                    lane_map.keyless(job.seq)
                };
                let segment = lanes[lane]
                    .get_or_insert_with(|| Segment::new(lane, job.file_idx, last_sizes[lane]));
                let start = segment.data.len();
                segment.data.extend_from_slice(key);
                let value_start = segment.data.len();
                let mut timestamp_ms = now_ms;
                for (i, &col) in positions.iter().enumerate() {
                    let cell = match schema.parse_cell_ref(i, record.cell(col)) {
                        Ok(cell) => cell,
                        Err(e) => {
                            segment.data.truncate(start);
                            out.rejects.push(Reject {
                                file: layout.shown.clone(),
                                line: record.line,
                                reason: format!("column {}: {e}", col + 1),
                                raw: record.raw(),
                            });
                            out.strict_stop = strict;
                            return !strict;
                        }
                    };
                    segment.data.extend_from_slice(&prefixes[i]);
                    push_cell_json(&mut segment.data, &cell);
                    if schema.event_time_field == Some(i) {
                        if let Some(ms) = cell.event_time_ms() {
                            timestamp_ms = ms;
                        }
                    }
                }
                segment.data.extend_from_slice(&job.source_prefix);
                push_json_source_line(&mut segment.data, record.line);
                let value_len = segment.data.len() - value_start;
                let size = value_len + if has_key { key.len() } else { 0 } + 32;
                if size > batch_limit {
                    let json = String::from_utf8_lossy(&segment.data[value_start..]);
                    let raw = json.chars().take(1000).collect();
                    segment.data.truncate(start);
                    out.rejects.push(Reject {
                        file: layout.shown.clone(),
                        line: record.line,
                        reason: format!(
                            "row is {size} bytes as JSON, more than --batch-bytes {batch_limit}"
                        ),
                        raw,
                    });
                    out.strict_stop = strict;
                    return !strict;
                }
                segment.rows.push(RowMeta {
                    line: record.line,
                    key_len: if has_key { key.len() as i32 } else { -1 },
                    value_len: value_len as u32,
                    timestamp_ms,
                });
                segment.bytes += size;
                out.rows += 1;
                out.read_up_to = Some((job.file_idx, record.line + 1));
                true
            },
        );
        for segment in lanes.iter().flatten() {
            last_sizes[segment.lane] = (segment.data.len(), segment.rows.len());
        }
        out.segments = lanes
            .into_iter()
            .flatten()
            .filter(|s| s.rows() > 0)
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_source::{for_each_row_in_bytes, ChunkReader, SourceConfig, TextEncoding};
    use crate::schema::{json_source_prefix, Source};
    use proptest::prelude::*;
    use rskafka::record::{RawRecordIter, RawRecords, RecordBatchCompression};

    const HEADER: &str = "Ano;Trimestre;Categoria;Tipo;CNPJ IF;Instituição financeira;Índice;Quantidade de reclamações reguladas procedentes;Quantidade de reclamações reguladas - outras;Quantidade de reclamações não reguladas;Quantidade total de reclamações;Quantidade total de clientes – CCS e SCR;Quantidade de clientes – CCS;Quantidade de clientes – SCR;";

    type Key = Option<Vec<u8>>;
    /// (line, key, value, lane)
    type EncodedRow = (u64, Key, Vec<u8>, usize);
    /// (line, key, value)
    type KeyedRow = (u64, Key, Vec<u8>);

    /// Encodes `text` (cp1252) with chunks of `target` bytes; returns per row (line, key, JSON)
    /// in input order within each lane, plus the reject lines.
    fn encode_all(text: &str, target: usize, lanes: Lanes) -> (Vec<EncodedRow>, Vec<u64>) {
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        let schema = Arc::new(Schema::banco_central());
        let mut reader = ChunkReader::from_bytes(bytes.to_vec(), TextEncoding::Cp1252, b';');
        let first = reader.next_chunk(target).unwrap().unwrap();
        let layout = Arc::new(
            FileLayout::from_header(&first, "f.csv", TextEncoding::Cp1252, b';', &schema)
                .unwrap()
                .unwrap(),
        );
        let mut encoder = ChunkEncoder::new(Arc::clone(&schema), lanes, 1 << 20, false);
        let prefix = Arc::new(json_source_prefix("f.csv"));
        let (mut rows, mut rejects) = (Vec::new(), Vec::new());
        let mut chunk = Some(first);
        let mut seq = 0;
        while let Some(c) = chunk.take() {
            let job = ChunkJob {
                seq,
                file_idx: 0,
                chunk: Some(c),
                layout: Some(Arc::clone(&layout)),
                source_prefix: Arc::clone(&prefix),
                has_header: seq == 0,
                skip_through_line: 0,
                last_of_file: false,
            };
            let out = encoder.encode(&job);
            for segment in &out.segments {
                let lines: Vec<u64> = segment.rows.iter().map(|r| r.line).collect();
                for (line, (k, v)) in lines.into_iter().zip(segment.key_values()) {
                    rows.push((line, k, v, segment.lane));
                }
            }
            rejects.extend(out.rejects.iter().map(|r| r.line));
            seq += 1;
            chunk = reader.next_chunk(target).unwrap();
        }
        rows.sort_by_key(|r| r.0);
        (rows, rejects)
    }

    /// What the owned-value path (`for_each_row_in_bytes` + `write_json` + `key_of`) gives.
    fn reference(text: &str) -> (Vec<KeyedRow>, Vec<u64>) {
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        let config = SourceConfig {
            schema: Arc::new(Schema::banco_central()),
            encoding: Some(crate::csv_source::Encoding::Windows1252),
            delimiter: Some(b';'),
        };
        let (mut rows, mut rejects) = (Vec::new(), Vec::new());
        for_each_row_in_bytes(&bytes, "f.csv", &config, |r| {
            match r {
                Ok(row) => {
                    let mut json = String::new();
                    let source = Source {
                        file: "f.csv".into(),
                        line: row.line,
                    };
                    config
                        .schema
                        .write_json(&row.values, Some(&source), &mut json);
                    let key = config.schema.key_of(&row.values).map(String::into_bytes);
                    rows.push((row.line, key, json.into_bytes()));
                }
                Err(reject) => rejects.push(reject.line),
            }
            true
        })
        .unwrap();
        (rows, rejects)
    }

    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(" ".to_string()),
            "[0-9]{1,8}",
            "[0-9]{1,3},[0-9]{2}",
            "[a-zA-Z çãÉº\"\\\\/-]{0,12}",
            "\"[a-z;\n]{0,6}\"",
        ]
    }

    fn row() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("2021".to_string()), "[0-9a]{1,4}"],
            prop_oneof![Just("4º".to_string()), Just("1".to_string()), cell()],
            proptest::collection::vec(cell(), 12),
            prop_oneof![Just("\n"), Just("\r\n"), Just("\n\n")],
        )
            .prop_map(|(ano, tri, rest, end)| format!("{ano};{tri};{};{end}", rest.join(";")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunked_encoding_equals_the_owned_value_path(
            rows in proptest::collection::vec(row(), 1..40),
            target in 1usize..400,
            per_partition in 1usize..4,
        ) {
            let text = format!("{HEADER}\n{}", rows.concat());
            let (got, got_rejects) = encode_all(&text, target, Lanes::new(3, per_partition));
            let (want, want_rejects) = reference(&text);
            let got_rows: Vec<_> = got.iter().map(|(l, k, v, _)| (*l, k.clone(), v.clone())).collect();
            prop_assert_eq!(got_rows, want);
            prop_assert_eq!(got_rejects, want_rejects);
            // Same key, same lane; and the lane is in the key's Java partition.
            let lanes = Lanes::new(3, per_partition);
            for (_, key, _, lane) in &got {
                if let Some(key) = key {
                    prop_assert_eq!(lanes.of_key(key).1, *lane);
                    prop_assert_eq!(lanes.partition_of(*lane), crate::kafka::partition_for_key(key, 3));
                }
            }
        }
    }

    #[test]
    fn segments_split_and_rebuild_records() {
        let text = format!(
            "{HEADER}\n{}",
            (0..10)
                .map(|i| format!("2021;1º;C;T;{i:08};Banco {i};1,5;1;2;3;4;5;6;7;\n"))
                .collect::<String>()
        );
        let (rows, _) = encode_all(&text, 1 << 16, Lanes::new(1, 1));
        assert_eq!(rows.len(), 10);
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text.as_str());
        let schema = Arc::new(Schema::banco_central());
        let mut reader = ChunkReader::from_bytes(bytes.to_vec(), TextEncoding::Cp1252, b';');
        let first = reader.next_chunk(1 << 16).unwrap().unwrap();
        let layout = FileLayout::from_header(&first, "f.csv", TextEncoding::Cp1252, b';', &schema)
            .unwrap()
            .unwrap();
        let mut encoder = ChunkEncoder::new(schema, Lanes::new(1, 1), 1 << 20, false);
        let out = encoder.encode(&ChunkJob {
            seq: 0,
            file_idx: 3,
            chunk: Some(first),
            layout: Some(Arc::new(layout)),
            source_prefix: Arc::new(json_source_prefix("f.csv")),
            has_header: true,
            skip_through_line: 4,
            last_of_file: true,
        });
        assert_eq!(out.rows, 7, "lines 2..=4 skipped");
        let mut segment = out.segments.into_iter().next().unwrap();
        assert_eq!(segment.first_position(), Some((3, 5)));
        let whole = segment.key_values();
        let total = segment.bytes();
        assert_eq!(segment.rows_fitting(total), 7);
        assert_eq!(segment.rows_fitting(total - 1), 6);
        assert_eq!(segment.rows_fitting(0), 0);
        let tail = segment.split_off(3);
        assert_eq!(tail.first_position(), Some((3, 8)));
        assert_eq!((segment.rows(), tail.rows()), (3, 4));
        assert_eq!(segment.bytes() + tail.bytes(), total);
        let mut joined = segment.key_values();
        joined.extend(tail.key_values());
        assert_eq!(joined, whole);
        assert_eq!(whole[0].0.as_deref(), Some(&b"00000003"[..]));
    }

    /// (key, value, timestamp ms) of one row.
    type TimedRow = (Key, Vec<u8>, i64);

    /// A segment holding `rows`.
    fn segment_of(rows: &[TimedRow]) -> Segment {
        let mut segment = Segment::new(0, 0, (0, 0));
        for (line, (key, value, ts)) in rows.iter().enumerate() {
            if let Some(key) = key {
                segment.data.extend_from_slice(key);
            }
            segment.data.extend_from_slice(value);
            let meta = RowMeta {
                line: line as u64 + 2,
                key_len: key.as_ref().map_or(-1, |k| k.len() as i32),
                value_len: value.len() as u32,
                timestamp_ms: *ts,
            };
            segment.bytes += meta.size();
            segment.rows.push(meta);
        }
        segment
    }

    proptest! {
        /// The records section produce sends, compressed and read back the way a consumer reads
        /// it (rskafka's reader, after the codec): every row's key, value, timestamp and offset
        /// delta, in order, across segments. Timestamps span the whole i64 range of deltas.
        #[test]
        fn kafka_records_read_back_as_written(
            segments in prop::collection::vec(
                prop::collection::vec(
                    (
                        prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
                        prop::collection::vec(any::<u8>(), 0..300),
                        prop_oneof![0i64..10_000, any::<i32>().prop_map(i64::from)],
                    ),
                    1..8,
                ),
                1..4,
            ),
            lz4 in any::<bool>(),
        ) {
            let first_ts = segments[0][0].2;
            let mut plain = Vec::new();
            let mut delta = 0;
            for rows in &segments {
                segment_of(rows).write_kafka_records(first_ts, &mut delta, &mut plain);
            }
            let expected: Vec<_> = segments.iter().flatten().collect();
            prop_assert_eq!(delta as usize, expected.len());
            let codec = if lz4 { RecordBatchCompression::Lz4 } else { RecordBatchCompression::NoCompression };
            let raw = RawRecords::compress(&plain, expected.len(), codec).unwrap();
            let mut section = Vec::new();
            raw.decompress_into(&mut section).unwrap();
            prop_assert_eq!(&section, &plain);
            let read: Vec<_> = RawRecordIter::new(&section, raw.len()).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(read.len(), expected.len());
            for (i, (r, (key, value, ts))) in read.iter().zip(&expected).enumerate() {
                prop_assert_eq!(r.offset_delta, i as i32);
                prop_assert_eq!(first_ts + r.timestamp_delta, *ts);
                prop_assert_eq!(r.key, key.as_deref());
                prop_assert_eq!(r.value, Some(value.as_slice()));
            }
        }

        #[test]
        fn varint_len_is_the_length_put_varint_writes(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
        }
    }
}
