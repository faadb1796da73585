//! The Parquet format of the output: the columns of table rows and of dead letters, the writer
//! properties, in-memory row groups, and the concatenation of staged row groups into a final
//! file without re-encoding.
//!
//! - [`OutputSchema`]: the schema's fields, then the enrichment columns, then `kafka_partition`,
//!   `kafka_offset`, `kafka_timestamp`, `window_start`, `window_end`. Timestamps are
//!   microseconds, UTC (`isAdjustedToUTC = true`): nanoseconds break Spark and older readers.
//! - [`dead_letter_schema`]: raw key and value bytes (lossless), the error, the Kafka position.
//! - [`RowGroup`]: an `ArrowWriter` over an in-memory buffer that only ever holds one row group.
//!   Its [`memory`](RowGroup::memory) is what the consumer's memory bound counts; closing it gives
//!   a complete one-row-group Parquet file.
//! - [`concat`]: copies the encoded column chunks of several such files into one file, as
//!   arrow-rs's `parquet-concat` does (`SerializedRowGroupWriter::append_column`): closing a
//!   window whose rows were staged under memory pressure costs a byte copy, not an encode.
//!   Every input row group becomes one row group of the output, so memory pressure gives smaller
//!   row groups, never more files.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::{WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::store::{ObjectWriter, StoreError};
use crate::schema::{FieldType, Schema};

pub const COLUMN_PARTITION: &str = "kafka_partition";
pub const COLUMN_OFFSET: &str = "kafka_offset";
pub const COLUMN_TIMESTAMP: &str = "kafka_timestamp";
pub const COLUMN_WINDOW_START: &str = "window_start";
pub const COLUMN_WINDOW_END: &str = "window_end";

/// Errors of Parquet encoding. Each names what was being written and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ParquetFormatError {
    #[error("encoding Parquet for {what} failed: {source}; this is a bug, please report it")]
    Encode { what: String, source: ParquetError },
    #[error(
        "cannot read the Parquet file {what}: {source}; the file is damaged or not Parquet. Move \
         it aside and restart (its rows are replayed if the checkpoint does not cover them)"
    )]
    Read { what: String, source: ParquetError },
    #[error("output columns are not valid: {0}")]
    Columns(String),
}

/// Parquet compression codec (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    Snappy,
    Gzip,
    /// LZ4_RAW (the LZ4 codec other Parquet readers agree on).
    Lz4,
    #[default]
    Zstd,
}

impl Compression {
    fn to_parquet(self) -> ParquetCompression {
        match self {
            Compression::None => ParquetCompression::UNCOMPRESSED,
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Gzip => ParquetCompression::GZIP(GzipLevel::default()),
            Compression::Lz4 => ParquetCompression::LZ4_RAW,
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(Compression::None),
            "snappy" => Ok(Compression::Snappy),
            "gzip" => Ok(Compression::Gzip),
            "lz4" | "lz4_raw" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "`{other}` is not a Parquet compression; use one of none, snappy, gzip, lz4, zstd"
            )),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of table rows (and of late rows, which have the same shape).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    schema: SchemaRef,
    /// Schema fields + enrichment columns.
    value_columns: usize,
}

impl OutputSchema {
    /// Schema fields, then enrichment columns (names as given, e.g. `banco_segmento`), then the
    /// pipeline's own columns. Fails if a name appears twice.
    pub fn new(
        schema: &Schema,
        enrichment: &[(String, FieldType)],
    ) -> Result<Self, ParquetFormatError> {
        let mut fields = schema.arrow_fields();
        fields.extend(
            enrichment
                .iter()
                .map(|(name, ty)| Field::new(name, ty.arrow_type(), true)),
        );
        let value_columns = fields.len();
        fields.extend([
            Field::new(COLUMN_PARTITION, DataType::Int32, false),
            Field::new(COLUMN_OFFSET, DataType::Int64, false),
            Field::new(COLUMN_TIMESTAMP, utc_micros(), false),
            Field::new(COLUMN_WINDOW_START, utc_micros(), false),
            Field::new(COLUMN_WINDOW_END, utc_micros(), false),
        ]);
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().as_str()) {
                return Err(ParquetFormatError::Columns(format!(
                    "column `{}` appears twice (a schema field, an enrichment column and the \
                     pipeline's own columns must all differ); change the enrichment column \
                     prefix (--enrich-prefix) or the schema",
                    f.name()
                )));
            }
        }
        Ok(OutputSchema {
            schema: Arc::new(ArrowSchema::new(fields)),
            value_columns,
        })
    }

    pub fn arrow(&self) -> &SchemaRef {
        &self.schema
    }

    /// How many columns come from the schema and the enrichment table.
    pub fn value_columns(&self) -> usize {
        self.value_columns
    }
}

/// The columns of dead-letter files.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![
        Field::new(COLUMN_PARTITION, DataType::Int32, false),
        Field::new(COLUMN_OFFSET, DataType::Int64, false),
        Field::new(COLUMN_TIMESTAMP, utc_micros(), false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("error", DataType::Utf8, false),
    ]))
}

/// How files are encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatConfig {
    pub compression: Compression,
}

impl Default for FormatConfig {
    fn default() -> Self {
        FormatConfig {
            compression: Compression::Zstd,
        }
    }
}

impl FormatConfig {
    /// Writer properties: our codec, no automatic row-group flush (the consumer decides when a
    /// row group ends, by its memory bound), and no dictionary for the Kafka offset and
    /// timestamp: they are unique per record, so a dictionary would only hash every value until
    /// parquet gives up on it. (Turning dictionaries off for every number column as well was
    /// measured: no less CPU, as zstd then had more to compress, and 3 % larger files.)
    pub fn writer_properties(&self) -> WriterPropertiesPtr {
        Arc::new(
            WriterProperties::builder()
                .set_compression(self.compression.to_parquet())
                .set_max_row_group_row_count(None)
                .set_max_row_group_bytes(None)
                .set_column_dictionary_enabled(ColumnPath::from(COLUMN_OFFSET), false)
                .set_column_dictionary_enabled(ColumnPath::from(COLUMN_TIMESTAMP), false)
                .build(),
        )
    }
}

/// Where a row group's bytes go: the 4-byte header is kept until the row group ends, then
/// everything streams into the object it becomes. The encoded pages are held by the Arrow
/// writer (and counted by [`RowGroup::memory`]); a finished row group is never copied whole.
#[derive(Default)]
struct LazySink {
    head: Vec<u8>,
    target: Option<Box<dyn ObjectWriter>>,
}

impl Write for LazySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.target {
            Some(t) => t.write(buf),
            None => {
                self.head.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.target {
            Some(t) => t.flush(),
            None => Ok(()),
        }
    }
}

/// One row group being encoded in memory, with the offsets it holds.
pub struct RowGroup {
    writer: ArrowWriter<LazySink>,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
}

impl fmt::Debug for RowGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowGroup")
            .field("first_offset", &self.first_offset)
            .field("last_offset", &self.last_offset)
            .field("rows", &self.rows)
            .finish()
    }
}

/// How finishing a row group failed: storage (the caller maps it) or encoding.
#[derive(Debug)]
pub enum FinishError {
    Store(StoreError),
    Format(ParquetFormatError),
}

impl RowGroup {
    pub fn new(
        schema: &SchemaRef,
        props: &WriterPropertiesPtr,
        first_offset: i64,
    ) -> Result<RowGroup, ParquetFormatError> {
        let writer = ArrowWriter::try_new(
            LazySink::default(),
            Arc::clone(schema),
            Some((**props).clone()),
        )
        .map_err(|source| ParquetFormatError::Encode {
            what: "a new row group".into(),
            source,
        })?;
        Ok(RowGroup {
            writer,
            first_offset,
            last_offset: first_offset,
            rows: 0,
        })
    }

    /// Encodes `batch`, whose last row has offset `last_offset`.
    pub fn write(
        &mut self,
        batch: &RecordBatch,
        last_offset: i64,
    ) -> Result<(), ParquetFormatError> {
        self.writer
            .write(batch)
            .map_err(|source| ParquetFormatError::Encode {
                what: format!("offsets {}..={last_offset}", self.first_offset),
                source,
            })?;
        self.last_offset = last_offset;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Bytes held: the encoder state and the encoded pages of the row group.
    pub fn memory(&self) -> usize {
        self.writer.memory_size()
    }

    /// Ends the row group as a complete Parquet file of one row group, streamed into `out`;
    /// returns its size once `out` made it durable.
    pub fn finish_to(mut self, mut out: Box<dyn ObjectWriter>) -> Result<u64, FinishError> {
        let what = format!("offsets {}..={}", self.first_offset, self.last_offset);
        let head = std::mem::take(&mut self.writer.inner_mut().head);
        out.write_all(&head)
            .map_err(|e| FinishError::Store(StoreError::io("write", &what, e)))?;
        self.writer.inner_mut().target = Some(out);
        let sink = self.writer.into_inner().map_err(|source| match source {
            ParquetError::External(e) => match e.downcast::<std::io::Error>() {
                Ok(io) => FinishError::Store(StoreError::io("write", &what, *io)),
                Err(e) => FinishError::Format(ParquetFormatError::Encode {
                    what: what.clone(),
                    source: ParquetError::External(e),
                }),
            },
            source => FinishError::Format(ParquetFormatError::Encode {
                what: what.clone(),
                source,
            }),
        })?;
        sink.target
            .expect("the target was set above")
            .finish()
            .map_err(FinishError::Store)
    }
}

/// Reads a file's footer (and page index, if present).
pub fn read_metadata(bytes: &Bytes, what: &str) -> Result<ParquetMetaData, ParquetFormatError> {
    ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(bytes)
        .map_err(|source| ParquetFormatError::Read {
            what: what.to_string(),
            source,
        })
}

/// Copies every row group of `count` inputs (complete Parquet files with the same schema, in
/// order, each loaded only when its turn comes and dropped after) into one Parquet file written
/// to `out`, without decoding or re-encoding any page. The Arrow schema and other key-value
/// metadata of the first input are kept. Returns the rows written.
pub fn concat<W: Write + Send, E>(
    count: usize,
    mut load: impl FnMut(usize) -> Result<(String, Bytes), E>,
    out: W,
    props: &WriterPropertiesPtr,
) -> Result<(W, u64), ConcatError<E>> {
    let encode = |source| {
        ConcatError::Format(ParquetFormatError::Encode {
            what: format!("the concatenation of {count} staged row groups"),
            source,
        })
    };
    if count == 0 {
        return Err(ConcatError::Format(ParquetFormatError::Columns(
            "nothing to concatenate".into(),
        )));
    }
    let (first_name, first_bytes) = load(0).map_err(ConcatError::Load)?;
    let first_meta = read_metadata(&first_bytes, &first_name).map_err(ConcatError::Format)?;
    let mut props = (**props).clone();
    if let Some(kv) = first_meta.file_metadata().key_value_metadata() {
        props = props
            .into_builder()
            .set_key_value_metadata(Some(kv.clone()))
            .build();
    }
    let schema = first_meta.file_metadata().schema_descr().root_schema_ptr();
    let mut writer = SerializedFileWriter::new(out, schema, Arc::new(props)).map_err(encode)?;
    let mut rows = 0u64;
    let mut next = Some((first_name.clone(), first_bytes, first_meta.clone()));
    let mut i = 0;
    while let Some((what, bytes, meta)) = next.take() {
        if meta.file_metadata().schema_descr().root_schema()
            != first_meta.file_metadata().schema_descr().root_schema()
        {
            return Err(ConcatError::Format(ParquetFormatError::Columns(format!(
                "{what} has other columns than {first_name}; staged row groups of one window \
                 must share their columns (was the enrichment table changed between runs?)"
            ))));
        }
        let page_index = meta.page_index();
        for (rg_idx, rg) in meta.row_groups().iter().enumerate() {
            let mut rg_out = writer.next_row_group().map_err(encode)?;
            for (col_idx, column) in rg.columns().iter().enumerate() {
                let column_index = page_index
                    .and_then(|pi| pi.column_index(rg_idx, col_idx))
                    .cloned();
                let offset_index = page_index
                    .and_then(|pi| pi.offset_index(rg_idx, col_idx))
                    .cloned();
                let result = ColumnCloseResult {
                    bytes_written: column.compressed_size() as _,
                    rows_written: rg.num_rows() as _,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index,
                    offset_index,
                };
                rg_out.append_column(&bytes, result).map_err(encode)?;
            }
            rg_out.close().map_err(encode)?;
            rows += rg.num_rows() as u64;
        }
        drop(bytes);
        i += 1;
        if i < count {
            let (name, bytes) = load(i).map_err(ConcatError::Load)?;
            let meta = read_metadata(&bytes, &name).map_err(ConcatError::Format)?;
            next = Some((name, bytes, meta));
        }
    }
    let out = writer.into_inner().map_err(encode)?;
    Ok((out, rows))
}

/// How a concatenation failed: loading an input, or Parquet.
#[derive(Debug)]
pub enum ConcatError<E> {
    Load(E),
    Format(ParquetFormatError),
}

/// The number of rows of a Parquet file, from its footer.
/// The row count of a Parquet file from its footer alone, read through `suffix` (the file's
/// last `n` bytes): two small reads (the footer's length, then the footer) instead of the file.
/// `None` when the file is absent or its footer cannot be read.
pub fn footer_row_count<E>(mut suffix: impl FnMut(u64) -> Result<Option<Bytes>, E>) -> Option<u64> {
    // A Parquet file ends with the footer's length (u32, little-endian) and the magic `PAR1`.
    let tail = suffix(8).ok()??;
    if tail.len() < 8 || &tail[tail.len() - 4..] != b"PAR1" {
        return None;
    }
    let len = u32::from_le_bytes(tail[tail.len() - 8..tail.len() - 4].try_into().ok()?);
    let footer = suffix(u64::from(len) + 8).ok()??;
    let metadata = footer.get(..footer.len().checked_sub(8)?)?;
    let meta = ParquetMetaDataReader::decode_metadata(metadata).ok()?;
    u64::try_from(meta.file_metadata().num_rows()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn schema() -> SchemaRef {
        Arc::new(ArrowSchema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", utc_micros(), false),
        ]))
    }

    fn batch(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(StringArray::from_iter(
                    (from..from + n).map(|i| Some(format!("v{}", i % 7))),
                )),
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from_iter_values(from..from + n)
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    /// A row group finished into memory (through the store seam, like the sink does).
    fn finish(rg: RowGroup) -> Bytes {
        let store = crate::output::store::MemStore::new();
        use crate::output::store::Store;
        let w = store.writer("x").unwrap();
        match rg.finish_to(w) {
            Ok(_) => store.get("x").unwrap().unwrap(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn read(bytes: Vec<u8>) -> (Vec<i64>, usize, SchemaRef) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let groups = reader.metadata().num_row_groups();
        let reader = reader.build().unwrap();
        let mut values = Vec::new();
        let mut schema = None;
        for b in reader {
            let b = b.unwrap();
            schema = Some(b.schema());
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            values.extend(col.values().iter().copied());
        }
        (values, groups, schema.unwrap())
    }

    #[test]
    fn concat_copies_row_groups_and_keeps_the_arrow_schema() {
        let props = FormatConfig::default().writer_properties();
        let mut files = Vec::new();
        for (i, (from, n)) in [(0, 1000), (1000, 1), (1001, 5000)].into_iter().enumerate() {
            let mut rg = RowGroup::new(&schema(), &props, from).unwrap();
            rg.write(&batch(from, n), from + n - 1).unwrap();
            assert!(rg.memory() > 0);
            files.push((format!("staged {i}"), finish(rg)));
        }
        let (out, rows) = concat(
            files.len(),
            |i| Ok::<_, ()>(files[i].clone()),
            Vec::new(),
            &props,
        )
        .unwrap();
        assert_eq!(rows, 6001);
        let (values, groups, schema) = read(out);
        assert_eq!(values, (0..6001).collect::<Vec<_>>());
        assert_eq!(groups, 3, "one row group per staged file");
        assert_eq!(
            schema.field(2).data_type(),
            &utc_micros(),
            "the time zone comes back from the Arrow schema"
        );
    }

    #[test]
    fn concat_refuses_other_columns() {
        let props = FormatConfig::default().writer_properties();
        let mut a = RowGroup::new(&schema(), &props, 0).unwrap();
        a.write(&batch(0, 3), 2).unwrap();
        let other = Arc::new(ArrowSchema::new(vec![Field::new(
            "x",
            DataType::Int64,
            false,
        )]));
        let mut b = RowGroup::new(&other, &props, 3).unwrap();
        b.write(
            &RecordBatch::try_new(
                Arc::clone(&other),
                vec![Arc::new(Int64Array::from(vec![1]))],
            )
            .unwrap(),
            3,
        )
        .unwrap();
        let files = [("a".to_string(), finish(a)), ("b".to_string(), finish(b))];
        let e = match concat(
            files.len(),
            |i| Ok::<_, ()>(files[i].clone()),
            Vec::new(),
            &props,
        ) {
            Err(ConcatError::Format(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(e.contains("other columns"), "{e}");
    }

    #[test]
    fn the_row_count_is_read_from_the_footer_alone() {
        let props = FormatConfig::default().writer_properties();
        let mut rg = RowGroup::new(&schema(), &props, 0).unwrap();
        rg.write(&batch(0, 1234), 1233).unwrap();
        let file = finish(rg);
        let mut asked = Vec::new();
        let suffix = |n: u64| {
            asked.push(n);
            let start = file.len().saturating_sub(n as usize);
            Ok::<_, ()>(Some(file.slice(start..)))
        };
        assert_eq!(footer_row_count(suffix), Some(1234));
        assert_eq!(asked.len(), 2);
        assert!(
            asked[1] < file.len() as u64 / 4,
            "only the footer is read: {asked:?}"
        );
        // Not a Parquet file, a truncated one, an absent one: no count.
        let garbage = Bytes::from_static(b"not a parquet file at all");
        assert_eq!(
            footer_row_count(|_| Ok::<_, ()>(Some(garbage.clone()))),
            None
        );
        let cut = file.slice(..file.len() - 3);
        assert_eq!(
            footer_row_count(|n: u64| Ok::<_, ()>(Some(
                cut.slice(cut.len().saturating_sub(n as usize)..)
            ))),
            None
        );
        assert_eq!(footer_row_count(|_| Ok::<_, ()>(None)), None);
    }

    #[test]
    fn compressions_parse_and_write() {
        for c in ["none", "snappy", "gzip", "lz4", "zstd"] {
            let config = FormatConfig {
                compression: c.parse().unwrap(),
            };
            let mut rg = RowGroup::new(&schema(), &config.writer_properties(), 0).unwrap();
            rg.write(&batch(0, 100), 99).unwrap();
            let (values, _, _) = read(finish(rg).to_vec());
            assert_eq!(values.len(), 100, "{c}");
        }
        assert!("brotli".parse::<Compression>().is_err());
    }
}
