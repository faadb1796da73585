//! Durable Parquet output: turns [`OutputRow`]s and [`DeadLetter`]s into Parquet files that
//! appear atomically under their final name.
//!
//! This module owns:
//! - [`OutputLayout`]: the Arrow schema of output files — the schema's fields, then the
//!   enrichment columns, then `kafka_partition`, `kafka_offset`, `kafka_timestamp`,
//!   `window_start`, `window_end` — and the conversion of rows into a `RecordBatch`;
//! - the dead-letter layout ([`dead_letter_schema`]): raw key/value bytes, losslessly;
//! - file naming (`part-<partition>-<first_offset>-<last_offset>.parquet`, see [`file_name`] and
//!   [`parse_file_name`]), rolling by size ([`SinkConfig::max_file_bytes`]) and the atomic write
//!   protocol: write `.part-<partition>-<first>-<first>.parquet.tmp` (a hidden name, so Spark/Hive
//!   readers of the directory skip it; the last offset is known only at close), fsync it, rename
//!   it to its final name, fsync the directory;
//! - [`read_row_count`], for `app inspect`.
//!
//! Timestamps are written as microseconds, UTC (`isAdjustedToUTC = true`): nanoseconds break
//! Spark. Writing is blocking I/O: call it from `tokio::task::spawn_blocking`.
//!
//! The same rows with the same [`SinkConfig`] always produce the same file names, so replaying
//! uncommitted offsets after a crash replaces (rename over) the files of the first attempt.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Array, Int64Array,
    Int64Builder, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::row::{DeadLetter, OutputRow};
use crate::schema::{FieldType, Schema, Value};
use crate::window::{window_end, window_start};

/// Rows per `RecordBatch` handed to the Parquet writer; files are rolled between batches, so a
/// file may exceed `max_file_bytes` by up to one batch.
const BATCH_ROWS: usize = 1024;

/// Errors of this module. Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no space left on device writing {path}; free space and restart — committed output is intact")]
    NoSpace { path: PathBuf },
    #[error(
        "cannot {action} {path}: {source}; check that the output directory is writable, then \
         restart — committed output is intact"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("writing Parquet file {path} failed: {source}; fix the cause and restart — committed output is intact")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("cannot read Parquet file {path}: {source}; the file may be truncated or not Parquet")]
    Read { path: PathBuf, source: ParquetError },
    #[error(
        "building the Arrow batch for {what} failed: {source}; this is a bug — please report it"
    )]
    Arrow { what: String, source: ArrowError },
    #[error("output columns are not valid: {0}")]
    Layout(String),
    #[error(
        "record at partition {partition} offset {offset}: {problem}; this is a bug (the row does \
         not match the output layout or the call) — please report it"
    )]
    BadRow {
        partition: i32,
        offset: i64,
        problem: String,
    },
}

/// Parquet compression codec (`--parquet-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    Snappy,
    Gzip,
    /// LZ4_RAW (the LZ4 codec that other Parquet readers agree on).
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

/// How files are written.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub compression: Compression,
    /// A new file is started once the current one is estimated to reach this size: bytes already
    /// written plus the open row group's uncompressed estimate. Files therefore end up between
    /// about `max_file_bytes - row_group_bytes` and `max_file_bytes` plus one batch of 1024 rows.
    pub max_file_bytes: u64,
    /// A row group is closed once its estimated encoded size reaches this; bounds writer memory.
    /// The estimate is taken before compression, so on disk a row group is usually several times
    /// smaller.
    pub row_group_bytes: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            compression: Compression::Zstd,
            max_file_bytes: 256 * 1024 * 1024,
            row_group_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One file made durable under its final name.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// `part-<partition>-<first_offset>-<last_offset>.parquet`.
pub fn file_name(partition: i32, first_offset: i64, last_offset: i64) -> String {
    format!("part-{partition}-{first_offset}-{last_offset}.parquet")
}

/// The (partition, first offset, last offset) of a name made by [`file_name`].
pub fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.splitn(3, '-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((partition, first, last))
}

/// Whether `name` is an in-progress file left by an interrupted write (safe to delete at startup).
pub fn is_tmp_file(name: &str) -> bool {
    name.starts_with(".part-") && name.ends_with(".tmp")
}

/// The name a file is written under: hidden (Spark and Hive skip `.` files) and ending in `.tmp`.
/// Its last offset is not known until the file is closed, so the name says `first-first`; startup
/// recovery (`checkpoint::plan_recovery`) recognises it as an unfinished part file either way.
fn tmp_name(partition: i32, first_offset: i64) -> String {
    format!(".{}.tmp", file_name(partition, first_offset, first_offset))
}

const COLUMN_PARTITION: &str = "kafka_partition";
const COLUMN_OFFSET: &str = "kafka_offset";
const COLUMN_TIMESTAMP: &str = "kafka_timestamp";
const COLUMN_WINDOW_START: &str = "window_start";
const COLUMN_WINDOW_END: &str = "window_end";

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of output files and how rows become Arrow batches.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputLayout {
    schema: SchemaRef,
    /// Schema fields + enrichment columns (the length of `OutputRow::values`).
    value_columns: usize,
}

impl OutputLayout {
    /// Schema fields, then enrichment columns (names as given, e.g. `banco_segmento`), then the
    /// pipeline columns. Fails if a name appears twice.
    pub fn new(schema: &Schema, enrichment: &[(String, FieldType)]) -> Result<Self, SinkError> {
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
                return Err(SinkError::Layout(format!(
                    "column `{}` appears twice (a schema field, an enrichment column and the \
                     pipeline's own columns must all differ); change the enrichment column \
                     prefix or the schema",
                    f.name()
                )));
            }
        }
        Ok(OutputLayout {
            schema: Arc::new(ArrowSchema::new(fields)),
            value_columns,
        })
    }

    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// How many values each [`OutputRow`] must carry.
    pub fn value_columns(&self) -> usize {
        self.value_columns
    }

    /// Converts rows into one batch. `window_start`/`window_end` are each row's own tumbling
    /// window of `window_ms` (so late rows carry their late window). A value whose type does not
    /// match its column is an error, never a silent null.
    pub fn record_batch(
        &self,
        rows: &[OutputRow],
        window_ms: i64,
    ) -> Result<RecordBatch, SinkError> {
        if window_ms <= 0 {
            return Err(SinkError::Layout(format!(
                "window size must be positive, got {window_ms} ms"
            )));
        }
        for row in rows {
            if row.values.len() != self.value_columns {
                return Err(bad_row(
                    row.partition,
                    row.offset,
                    format!(
                        "it has {} values but the output has {} columns (schema fields + enrichment)",
                        row.values.len(),
                        self.value_columns
                    ),
                ));
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (idx, field) in self.schema.fields()[..self.value_columns]
            .iter()
            .enumerate()
        {
            columns.push(value_column(field, rows, idx)?);
        }
        let micros = |row: &OutputRow, what: &str, ms: i64| {
            ms.checked_mul(1000).ok_or_else(|| {
                bad_row(
                    row.partition,
                    row.offset,
                    format!("{what} {ms} ms is out of range"),
                )
            })
        };
        let mut kafka_ts = Vec::with_capacity(rows.len());
        let mut starts = Vec::with_capacity(rows.len());
        let mut ends = Vec::with_capacity(rows.len());
        for row in rows {
            let start = window_start(row.event_time_ms, window_ms);
            kafka_ts.push(micros(row, "kafka timestamp", row.kafka_timestamp_ms)?);
            starts.push(micros(row, "window start", start)?);
            ends.push(micros(row, "window end", window_end(start, window_ms))?);
        }
        columns.push(Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.offset),
        )));
        for values in [kafka_ts, starts, ends] {
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(values).with_timezone("UTC"),
            ));
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|source| SinkError::Arrow {
            what: "output rows".into(),
            source,
        })
    }
}

fn bad_row(partition: i32, offset: i64, problem: String) -> SinkError {
    SinkError::BadRow {
        partition,
        offset,
        problem,
    }
}

fn value_column(field: &Field, rows: &[OutputRow], idx: usize) -> Result<ArrayRef, SinkError> {
    let mismatch = |row: &OutputRow, value: &Value| {
        bad_row(
            row.partition,
            row.offset,
            format!(
                "column `{}` is {} but its value is {value:?}",
                field.name(),
                field.data_type()
            ),
        )
    };
    macro_rules! build {
        ($builder:expr, $variant:ident, $convert:expr) => {{
            let mut builder = $builder;
            for row in rows {
                match &row.values[idx] {
                    Value::Null => builder.append_null(),
                    Value::$variant(v) => builder.append_value($convert(v)),
                    other => return Err(mismatch(row, other)),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    let n = rows.len();
    Ok(match field.data_type() {
        DataType::Utf8 => build!(
            StringBuilder::with_capacity(n, n * 16),
            Str,
            |s: &String| s.clone()
        ),
        DataType::Int64 => build!(Int64Builder::with_capacity(n), Int, |v: &i64| *v),
        DataType::Float64 => build!(Float64Builder::with_capacity(n), Float, |v: &f64| *v),
        DataType::Boolean => build!(BooleanBuilder::with_capacity(n), Bool, |v: &bool| *v),
        DataType::Date32 => build!(Date32Builder::with_capacity(n), Date, |v: &i32| *v),
        DataType::Timestamp(TimeUnit::Microsecond, _) => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            Timestamp,
            |v: &i64| *v
        ),
        other => {
            return Err(SinkError::Layout(format!(
                "column `{}` has unsupported type {other}",
                field.name()
            )))
        }
    })
}

/// The Arrow schema of dead-letter files.
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

fn dead_letter_batch(schema: &SchemaRef, letters: &[DeadLetter]) -> Result<RecordBatch, SinkError> {
    let n = letters.len();
    let mut timestamps = Vec::with_capacity(n);
    for l in letters {
        timestamps.push(l.kafka_timestamp_ms.checked_mul(1000).ok_or_else(|| {
            bad_row(
                l.partition,
                l.offset,
                format!(
                    "kafka timestamp {} ms is out of range",
                    l.kafka_timestamp_ms
                ),
            )
        })?);
    }
    let binary = |get: fn(&DeadLetter) -> Option<&Vec<u8>>| {
        let mut b =
            BinaryBuilder::with_capacity(n, letters.iter().filter_map(get).map(Vec::len).sum());
        for l in letters {
            b.append_option(get(l));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut errors = StringBuilder::with_capacity(n, letters.iter().map(|l| l.error.len()).sum());
    for l in letters {
        errors.append_value(&l.error);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|l| l.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|l| l.offset),
        )),
        Arc::new(TimestampMicrosecondArray::from(timestamps).with_timezone("UTC")),
        binary(|l| l.key.as_ref()),
        binary(|l| l.value.as_ref()),
        Arc::new(errors.finish()),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|source| SinkError::Arrow {
        what: "dead letters".into(),
        source,
    })
}

/// Writes output rows and dead letters as Parquet files.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    layout: OutputLayout,
    config: SinkConfig,
    dead_letter_schema: SchemaRef,
}

impl ParquetSink {
    pub fn new(layout: OutputLayout, config: SinkConfig) -> Self {
        ParquetSink {
            layout,
            config,
            dead_letter_schema: dead_letter_schema(),
        }
    }

    pub fn layout(&self) -> &OutputLayout {
        &self.layout
    }

    pub fn config(&self) -> &SinkConfig {
        &self.config
    }

    /// Writes the rows of one Kafka partition (in increasing offset order) into `dir` (created if
    /// needed), as one or more files rolled by `max_file_bytes`, each named by its own first and
    /// last offsets. Window columns are computed per row from `event_time_ms` and `window_ms`.
    /// When this returns, every listed file and its directory entry are durable. No rows, no
    /// files.
    pub fn write_rows(
        &self,
        dir: &Path,
        partition: i32,
        rows: &[OutputRow],
        window_ms: i64,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        self.write_rolling(
            dir,
            partition,
            rows,
            |r| (r.partition, r.offset),
            self.layout.arrow_schema(),
            |chunk| self.layout.record_batch(chunk, window_ms),
        )
    }

    /// Writes dead letters of one partition (in increasing offset order) into `dir`, with the
    /// same naming, rolling and atomicity as [`ParquetSink::write_rows`].
    pub fn write_dead_letters(
        &self,
        dir: &Path,
        partition: i32,
        letters: &[DeadLetter],
    ) -> Result<Vec<WrittenFile>, SinkError> {
        self.write_rolling(
            dir,
            partition,
            letters,
            |l| (l.partition, l.offset),
            &self.dead_letter_schema,
            |chunk| dead_letter_batch(&self.dead_letter_schema, chunk),
        )
    }

    fn write_rolling<T>(
        &self,
        dir: &Path,
        partition: i32,
        items: &[T],
        key: impl Fn(&T) -> (i32, i64),
        schema: &SchemaRef,
        build: impl Fn(&[T]) -> Result<RecordBatch, SinkError>,
    ) -> Result<Vec<WrittenFile>, SinkError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut previous: Option<i64> = None;
        for item in items {
            let (p, offset) = key(item);
            if p != partition {
                return Err(bad_row(
                    p,
                    offset,
                    format!("it was given to the writer of partition {partition}"),
                ));
            }
            if previous.is_some_and(|prev| offset <= prev) {
                return Err(bad_row(
                    p,
                    offset,
                    format!(
                        "offsets must increase, but it follows offset {}",
                        previous.unwrap_or_default()
                    ),
                ));
            }
            previous = Some(offset);
        }
        create_dir_durably(dir)?;
        let props = WriterProperties::builder()
            .set_compression(self.config.compression.to_parquet())
            .set_max_row_group_bytes(Some(self.config.row_group_bytes.max(1)))
            .build();
        let mut written = Vec::new();
        let mut open: Option<OpenFile> = None;
        for chunk in items.chunks(BATCH_ROWS) {
            let batch = build(chunk)?;
            let (_, first) = key(&chunk[0]);
            let (_, last) = key(&chunk[chunk.len() - 1]);
            let file = match open.as_mut() {
                Some(file) => file,
                None => open.insert(OpenFile::create(
                    dir,
                    partition,
                    first,
                    schema,
                    props.clone(),
                )?),
            };
            file.write(&batch, last)?;
            if file.estimated_bytes() >= self.config.max_file_bytes {
                if let Some(file) = open.take() {
                    written.push(file.finish(dir, partition)?);
                }
            }
        }
        if let Some(file) = open.take() {
            written.push(file.finish(dir, partition)?);
        }
        sync_dir(dir)?;
        Ok(written)
    }
}

/// A file being written under its temporary name; removed on drop unless finished.
struct OpenFile {
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    first_offset: i64,
    last_offset: i64,
    rows: u64,
}

impl OpenFile {
    fn create(
        dir: &Path,
        partition: i32,
        first_offset: i64,
        schema: &SchemaRef,
        props: WriterProperties,
    ) -> Result<Self, SinkError> {
        let tmp = dir.join(tmp_name(partition, first_offset));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_error("create", &tmp, e))?;
        let mut open = OpenFile {
            tmp,
            writer: None,
            first_offset,
            last_offset: first_offset,
            rows: 0,
        };
        let writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(props))
            .map_err(|e| parquet_error(&open.tmp, e))?;
        open.writer = Some(writer);
        Ok(open)
    }

    fn writer(&mut self) -> &mut ArrowWriter<File> {
        self.writer
            .as_mut()
            .expect("writer is present until finish")
    }

    fn write(&mut self, batch: &RecordBatch, last_offset: i64) -> Result<(), SinkError> {
        let result = self.writer().write(batch);
        result.map_err(|e| parquet_error(&self.tmp, e))?;
        self.last_offset = last_offset;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn estimated_bytes(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| (w.bytes_written() + w.in_progress_size()) as u64)
    }

    fn finish(mut self, dir: &Path, partition: i32) -> Result<WrittenFile, SinkError> {
        let finished = self.writer().finish();
        finished.map_err(|e| parquet_error(&self.tmp, e))?;
        let synced = self.writer().inner_mut().sync_all();
        synced.map_err(|e| io_error("fsync", &self.tmp, e))?;
        let bytes = self.writer().bytes_written() as u64;
        drop(self.writer.take());
        let path = dir.join(file_name(partition, self.first_offset, self.last_offset));
        fs::rename(&self.tmp, &path).map_err(|e| io_error("rename into place", &path, e))?;
        self.tmp = PathBuf::new();
        Ok(WrittenFile {
            path,
            partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.rows,
            bytes,
        })
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.writer.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn create_dir_durably(dir: &Path) -> Result<(), SinkError> {
    if dir.is_dir() {
        return Ok(());
    }
    // The directories about to be created, deepest first: each new entry is made durable by
    // fsyncing its parent.
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        current = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
    for d in missing {
        let parent = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync directory", dir, e))
}

fn is_no_space(e: &io::Error) -> bool {
    // ENOSPC (28) and EDQUOT (122) on Linux.
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> SinkError {
    if is_no_space(&source) {
        SinkError::NoSpace {
            path: path.to_path_buf(),
        }
    } else {
        SinkError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn parquet_error(path: &Path, source: ParquetError) -> SinkError {
    if let ParquetError::External(inner) = &source {
        if inner.downcast_ref::<io::Error>().is_some_and(is_no_space) {
            return SinkError::NoSpace {
                path: path.to_path_buf(),
            };
        }
    }
    SinkError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// The number of rows of a Parquet file, from its footer (the data is not read).
pub fn read_row_count(path: &Path) -> Result<u64, SinkError> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|source| SinkError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, BinaryArray, Date32Array, Float64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use proptest::prelude::*;

    fn read_all(path: &Path) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    fn enrichment() -> Vec<(String, FieldType)> {
        vec![
            ("banco_segmento".into(), FieldType::String),
            (
                "banco_atualizado_em".into(),
                FieldType::Timestamp {
                    format: String::new(),
                },
            ),
        ]
    }

    fn bcb_row(offset: i64, event_time_ms: i64) -> OutputRow {
        let schema = Schema::banco_central();
        let mut values = vec![Value::Null; schema.fields.len()];
        values[0] = Value::Int(2021);
        values[1] = Value::Int(4);
        values[2] = Value::Str("Demais bancos, financeiras e instituições de pagamento".into());
        values[3] = Value::Str("Banco/financeira".into());
        values[4] = Value::Str("00360305".into());
        values[5] = Value::Str(format!("CAIXA ECONÔMICA FEDERAL (CEF) #{offset}"));
        values[6] = Value::Float(54.79);
        values[10] = Value::Int(1_234_567);
        values.push(Value::Str("S1".into()));
        values.push(Value::Timestamp(1_767_323_045_123_456));
        OutputRow {
            partition: 3,
            offset,
            kafka_timestamp_ms: 1_700_000_000_123,
            event_time_ms,
            values,
        }
    }

    fn sink(config: SinkConfig) -> ParquetSink {
        ParquetSink::new(
            OutputLayout::new(&Schema::banco_central(), &enrichment()).unwrap(),
            config,
        )
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn rows_round_trip_with_types_and_per_row_windows() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("window=x");
        let mut late = bcb_row(11, 5 * HOUR + 17);
        late.values[6] = Value::Null;
        late.values[15] = Value::Null;
        let rows = vec![bcb_row(10, 7 * HOUR + 5), late];
        let files = sink(SinkConfig::default())
            .write_rows(&dir, 3, &rows, HOUR)
            .unwrap();
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert_eq!(f.path, dir.join("part-3-10-11.parquet"));
        assert_eq!(
            (f.partition, f.first_offset, f.last_offset, f.rows),
            (3, 10, 11, 2)
        );
        assert_eq!(f.bytes, fs::metadata(&f.path).unwrap().len());
        assert_eq!(read_row_count(&f.path).unwrap(), 2);
        assert_eq!(dir_names(&dir), vec!["part-3-10-11.parquet"]);

        let batch = read_all(&f.path);
        let schema = batch.schema();
        let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        assert_eq!(ty("ano"), DataType::Int64);
        assert_eq!(ty("indice"), DataType::Float64);
        assert_eq!(ty("instituicao_financeira"), DataType::Utf8);
        assert_eq!(ty("banco_segmento"), DataType::Utf8);
        assert_eq!(ty("banco_atualizado_em"), utc_micros());
        assert_eq!(ty("kafka_partition"), DataType::Int32);
        assert_eq!(ty("kafka_offset"), DataType::Int64);
        for name in ["kafka_timestamp", "window_start", "window_end"] {
            assert_eq!(ty(name), utc_micros(), "{name}");
            assert!(!schema.field_with_name(name).unwrap().is_nullable());
        }
        let col = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
        let strings = col("instituicao_financeira");
        let strings = strings.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(strings.value(0), "CAIXA ECONÔMICA FEDERAL (CEF) #10");
        let categoria = col("categoria");
        let categoria = categoria.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            categoria.value(1),
            "Demais bancos, financeiras e instituições de pagamento"
        );
        let indice = col("indice");
        let indice = indice.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(indice.value(0), 54.79);
        assert!(indice.is_null(1));
        let total = col("quantidade_total_de_reclamacoes");
        let total = total.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(total.value(0), 1_234_567);
        let ts = |name: &str| {
            let a = col(name);
            let a = a
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ts("banco_atualizado_em"),
            vec![Some(1_767_323_045_123_456), None]
        );
        assert_eq!(ts("kafka_timestamp"), vec![Some(1_700_000_000_123_000); 2]);
        assert_eq!(
            ts("window_start"),
            vec![Some(7 * HOUR * 1000), Some(5 * HOUR * 1000)]
        );
        assert_eq!(
            ts("window_end"),
            vec![Some(8 * HOUR * 1000), Some(6 * HOUR * 1000)]
        );
        let offsets = col("kafka_offset");
        let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values().to_vec(), vec![10, 11]);
    }

    #[test]
    fn rolls_by_size_into_contiguous_files_without_losing_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let rows: Vec<OutputRow> = (0..5000).map(|o| bcb_row(100 + o, o * 1000)).collect();
        let config = SinkConfig {
            max_file_bytes: 1,
            row_group_bytes: 4096,
            ..SinkConfig::default()
        };
        let files = sink(config).write_rows(tmp.path(), 3, &rows, HOUR).unwrap();
        assert_eq!(files.len(), 5000usize.div_ceil(BATCH_ROWS));
        assert_eq!(files[0].first_offset, 100);
        assert_eq!(files.last().unwrap().last_offset, 5099);
        for pair in files.windows(2) {
            assert_eq!(pair[1].first_offset, pair[0].last_offset + 1);
        }
        let mut total = 0;
        let mut offsets = Vec::new();
        for f in &files {
            let name = f.path.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                parse_file_name(name),
                Some((3, f.first_offset, f.last_offset))
            );
            assert_eq!(read_row_count(&f.path).unwrap(), f.rows);
            total += f.rows;
            let batch = read_all(&f.path);
            let col = batch
                .column(batch.schema().index_of("kafka_offset").unwrap())
                .clone();
            offsets.extend(
                col.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .iter()
                    .copied(),
            );
        }
        assert_eq!(total, 5000);
        assert_eq!(offsets, (100..5100).collect::<Vec<_>>());
        assert!(dir_names(tmp.path())
            .iter()
            .all(|n| n.ends_with(".parquet") && !is_tmp_file(n)));

        // Larger limits give fewer, bigger files, never losing rows; some limit gives a count
        // strictly between one file per batch and a single file.
        let mut counts = Vec::new();
        for max_file_bytes in (0..12).map(|i| 4_000u64 << i) {
            let tmp = tempfile::tempdir().unwrap();
            let config = SinkConfig {
                max_file_bytes,
                row_group_bytes: 4096,
                ..SinkConfig::default()
            };
            let files = sink(config).write_rows(tmp.path(), 3, &rows, HOUR).unwrap();
            assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 5000);
            counts.push(files.len());
        }
        assert!(counts.windows(2).all(|w| w[1] <= w[0]), "{counts:?}");
        assert_eq!(counts.last(), Some(&1), "{counts:?}");
        assert!(
            counts.iter().any(|&n| n > 1 && n < files.len()),
            "{counts:?}"
        );
    }

    #[test]
    fn rewriting_the_same_offsets_replaces_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = sink(SinkConfig::default());
        let rows: Vec<OutputRow> = (0..3).map(|o| bcb_row(o, 0)).collect();
        let first = s.write_rows(tmp.path(), 3, &rows, HOUR).unwrap();
        let again = s.write_rows(tmp.path(), 3, &rows, HOUR).unwrap();
        assert_eq!(first, again);
        assert_eq!(dir_names(tmp.path()), vec!["part-3-0-2.parquet"]);
    }

    #[test]
    fn bad_rows_are_errors_and_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let s = sink(SinkConfig::default());
        let mut rows: Vec<OutputRow> = (0..2000).map(|o| bcb_row(o, 0)).collect();
        rows[1500].values[0] = Value::Str("2021".into());
        let err = s
            .write_rows(tmp.path(), 3, &rows, HOUR)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("offset 1500") && err.contains("`ano`") && err.contains("bug"),
            "{err}"
        );
        assert!(
            dir_names(tmp.path()).is_empty(),
            "{:?}",
            dir_names(tmp.path())
        );

        let mut short = vec![bcb_row(1, 0)];
        short[0].values.pop();
        let err = s
            .write_rows(tmp.path(), 3, &short, HOUR)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("15 values") && err.contains("16 columns"),
            "{err}"
        );

        let err = s
            .write_rows(tmp.path(), 4, &[bcb_row(1, 0)], HOUR)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partition 4"), "{err}");
        let err = s
            .write_rows(tmp.path(), 3, &[bcb_row(2, 0), bcb_row(2, 0)], HOUR)
            .unwrap_err()
            .to_string();
        assert!(err.contains("offsets must increase"), "{err}");
        assert!(s.write_rows(tmp.path(), 3, &[bcb_row(1, 0)], 0).is_err());
        assert_eq!(s.write_rows(tmp.path(), 3, &[], HOUR).unwrap(), vec![]);
        assert!(dir_names(tmp.path()).is_empty());
    }

    #[test]
    fn layout_rejects_duplicate_columns() {
        let err = OutputLayout::new(
            &Schema::banco_central(),
            &[("ano".into(), FieldType::String)],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`ano` appears twice"), "{err}");
        let err = OutputLayout::new(
            &Schema::banco_central(),
            &[("window_end".into(), FieldType::String)],
        );
        assert!(err.is_err());
    }

    #[test]
    fn every_compression_writes_readable_files() {
        for name in ["none", "snappy", "gzip", "lz4", "zstd"] {
            let compression: Compression = name.parse().unwrap();
            assert_eq!(compression.to_string(), name);
            let tmp = tempfile::tempdir().unwrap();
            let config = SinkConfig {
                compression,
                ..SinkConfig::default()
            };
            let files = sink(config)
                .write_rows(tmp.path(), 3, &[bcb_row(7, 0)], HOUR)
                .unwrap();
            assert_eq!(read_all(&files[0].path).num_rows(), 1, "{name}");
        }
        assert!("brotli"
            .parse::<Compression>()
            .unwrap_err()
            .contains("zstd"));
        assert_eq!(Compression::default(), Compression::Zstd);
    }

    #[test]
    fn dates_and_booleans_from_custom_schemas() {
        let schema = Schema::from_toml_str(
            "[[fields]]\ncolumn='d'\ntype='date'\n[[fields]]\ncolumn='b'\ntype='bool'",
            "t.toml",
        )
        .unwrap();
        let layout = OutputLayout::new(&schema, &[]).unwrap();
        let row = OutputRow {
            partition: 0,
            offset: 0,
            kafka_timestamp_ms: 0,
            event_time_ms: 0,
            values: vec![Value::Date(19_000), Value::Bool(true)],
        };
        let batch = layout.record_batch(&[row], 1000).unwrap();
        let d = batch
            .column(0)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(d.value(0), 19_000);
    }

    #[test]
    fn errors_name_the_path_and_what_to_do() {
        let path = Path::new("/out/part-1-2-3.parquet");
        let msg = io_error("write", path, io::Error::from_raw_os_error(28)).to_string();
        assert!(
            msg.contains("no space left") && msg.contains("/out/part-1-2-3.parquet"),
            "{msg}"
        );
        assert!(msg.contains("committed output is intact"), "{msg}");
        let wrapped = ParquetError::External(Box::new(io::Error::from_raw_os_error(28)));
        assert!(matches!(
            parquet_error(path, wrapped),
            SinkError::NoSpace { .. }
        ));
        let msg = io_error(
            "create",
            path,
            io::Error::from(io::ErrorKind::PermissionDenied),
        )
        .to_string();
        assert!(
            msg.contains("cannot create /out/part-1-2-3.parquet") && msg.contains("writable"),
            "{msg}"
        );
        let err = read_row_count(Path::new("/nonexistent/x.parquet"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.parquet"), "{err}");
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(parse_file_name(&file_name(12, 0, 99)), Some((12, 0, 99)));
        assert_eq!(parse_file_name("part-1-2.parquet"), None);
        assert_eq!(parse_file_name("part-1-2-3.parquet.tmp"), None);
        assert!(is_tmp_file(&tmp_name(1, 2)));
        assert!(!is_tmp_file(&file_name(1, 2, 3)));
        // Startup recovery (checkpoint) must recognise both names.
        let part = crate::checkpoint::parse_part_file_name(&file_name(4, 5, 6)).unwrap();
        assert_eq!(
            (part.partition, part.first_offset, part.last_offset),
            (4, 5, 6)
        );
        assert_eq!(part.ext, "parquet");
        let unfinished = tmp_name(4, 5);
        let unfinished = unfinished
            .strip_suffix(crate::checkpoint::TMP_SUFFIX)
            .unwrap();
        let part = crate::checkpoint::parse_part_file_name(unfinished.strip_prefix('.').unwrap());
        assert_eq!(part.map(|p| p.partition), Some(4));
    }

    fn letter_strategy() -> impl Strategy<Value = (Option<Vec<u8>>, Option<Vec<u8>>, String)> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            "\\PC{0,40}",
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn dead_letters_round_trip_losslessly(
            raw in proptest::collection::vec(letter_strategy(), 1..30)
        ) {
            let mut letters: Vec<DeadLetter> = raw
                .into_iter()
                .enumerate()
                .map(|(i, (key, value, error))| DeadLetter {
                    partition: 2,
                    offset: 1000 + 3 * i as i64,
                    kafka_timestamp_ms: 1_700_000_000_000 + i as i64,
                    key,
                    value,
                    error,
                })
                .collect();
            // Always include the awkward cases.
            letters[0].value = Some(vec![0xff, 0xfe, 0x00, b'{']);
            if letters.len() > 1 {
                letters[1].key = Some(Vec::new());
                letters[1].value = Some(Vec::new());
            }
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("_dead_letter");
            let files = sink(SinkConfig::default()).write_dead_letters(&dir, 2, &letters).unwrap();
            prop_assert_eq!(files.len(), 1);
            let batch = read_all(&files[0].path);
            prop_assert_eq!(batch.schema(), dead_letter_schema());
            let binary = |i: usize| batch.column(i).as_any().downcast_ref::<BinaryArray>().unwrap().clone();
            let (keys, values) = (binary(3), binary(4));
            let errors = batch.column(5).as_any().downcast_ref::<StringArray>().unwrap();
            let offsets = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let ts = batch.column(2).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let opt = |a: &BinaryArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_vec());
            for (i, l) in letters.iter().enumerate() {
                prop_assert_eq!(opt(&keys, i), l.key.clone());
                prop_assert_eq!(opt(&values, i), l.value.clone());
                prop_assert_eq!(errors.value(i), l.error.as_str());
                prop_assert_eq!(offsets.value(i), l.offset);
                prop_assert_eq!(ts.value(i), l.kafka_timestamp_ms * 1000);
            }
            prop_assert_eq!(dir_names(&dir), vec![files[0].path.file_name().unwrap().to_string_lossy().into_owned()]);
        }
    }
}
