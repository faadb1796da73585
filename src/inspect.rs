//! `app inspect`: a read-only report of an output directory written by `app consume`.
//!
//! This module owns reading an output directory back: the windows (`window_start=…`, closed when
//! they hold a `_SUCCESS` marker — or an instance's `_SUCCESS-<checkpoint name>` — open
//! otherwise), files, rows (from Parquet footers, see [`read_row_count`]) and bytes per window,
//! the schema and a few sample rows of the first file, the late rows (`_late/window_start=…`), the
//! dead letters (`_dead_letter`, with their first errors) and the checkpoints
//! (`_checkpoint/checkpoint*.json`: generation and per-partition offsets). [`Report::render`]
//! prints it for people, [`Report`]'s `Serialize` gives the same numbers as JSON for scripts.
//!
//! Nothing is written, locked or deleted: it is safe to run while a consumer writes, although
//! the numbers are then a snapshot that may already be out of date. Part files being written
//! (hidden `.part-….tmp`) are counted apart and never read. Checkpoints are read as they are;
//! their checksum is not verified (the consumer does that when it loads them).
//!
//! Blocking I/O: call it from `spawn_blocking` in async code.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::DateTime;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    parse_window_dir_name, Checkpoint, CHECKPOINT_DIR, DEAD_LETTER_DIR, LATE_DIR, SUCCESS_MARKER,
    TMP_SUFFIX,
};
use crate::parquet_sink::{parse_file_name, read_row_count, SinkError};

/// Sample rows shown by default (`--sample`).
pub const DEFAULT_SAMPLE_ROWS: usize = 5;
/// Dead-letter errors shown.
pub const DEAD_LETTER_ERRORS_SHOWN: usize = 3;
/// Longest cell of the sample table in the text report (longer values are cut with `…`).
const MAX_CELL_CHARS: usize = 24;
/// Windows listed one per line in the text report; beyond this, the first and last half.
const MAX_WINDOWS_LISTED: usize = 40;

/// Errors of `app inspect`. Each names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "output directory {} does not exist; give the directory that `app consume --output` \
         wrote (default ./output)", path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "{} is not a directory; give the directory that `app consume --output` wrote",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "{} holds no output of `app consume`: no window_start=… directories, no {LATE_DIR}, \
         {DEAD_LETTER_DIR} or {CHECKPOINT_DIR}; give the directory passed to `app consume \
         --output` (has the consumer run yet?)", path.display()
    )]
    NoOutput { path: PathBuf },
    #[error("cannot {action} {}: {source}; check that it exists and is readable", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "cannot read Parquet file {}: {source}; the file may be truncated or not Parquet (files \
         are written under a temporary name and renamed when complete, so a damaged final file \
         points at a disk or copy problem)", path.display()
    )]
    Parquet { path: PathBuf, source: ParquetError },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InspectError + 'a {
    move |source| InspectError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    /// The `--output` directory of `app consume`.
    pub output: PathBuf,
    /// The checkpoint directory, when `app consume` was given `--checkpoint`
    /// (default `<output>/_checkpoint`).
    pub checkpoint_dir: Option<PathBuf>,
    /// Sample rows to show (0: none).
    pub sample: usize,
}

impl InspectOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        InspectOptions {
            output: output.into(),
            checkpoint_dir: None,
            sample: DEFAULT_SAMPLE_ROWS,
        }
    }
}

/// Everything `app inspect` reports. Serialized as the `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub output: PathBuf,
    /// Number of `window_start=…` directories.
    pub window_count: usize,
    /// Windows with a `_SUCCESS` marker.
    pub closed_windows: usize,
    pub open_windows: usize,
    /// Part files in all windows (not counting `_late` and `_dead_letter`).
    pub total_files: usize,
    /// Rows in all windows (not counting `_late` and `_dead_letter`).
    pub total_rows: u64,
    pub total_bytes: u64,
    /// Files still being written (`.part-….tmp`) anywhere in the output; not read.
    pub unfinished_files: usize,
    /// By window start, oldest first.
    pub windows: Vec<WindowInfo>,
    /// Columns of the first file (None when there is no data file).
    pub schema: Option<SchemaInfo>,
    pub sample: Option<Sample>,
    pub late: LateInfo,
    pub dead_letters: DeadLetterInfo,
    pub checkpoints: Vec<CheckpointInfo>,
}

/// One `window_start=…` directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowInfo {
    /// The directory name, e.g. `window_start=2026-05-01T12:34:00Z`.
    pub dir: String,
    /// Window start, RFC 3339 UTC.
    pub start: String,
    pub start_ms: i64,
    /// A `_SUCCESS` (or per-instance `_SUCCESS-…`) marker is present.
    pub closed: bool,
    /// The marker files present.
    pub markers: Vec<String>,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The columns of one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaInfo {
    /// Path of the file, relative to the output directory.
    pub file: String,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The Arrow type, e.g. `Int64`, `Utf8`, `Timestamp(µs, "UTC")`.
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// The first rows of the output, as text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The files they come from, relative to the output directory.
    pub files: Vec<String>,
    pub columns: Vec<String>,
    /// One entry per row, one value per column; `None` is null.
    pub rows: Vec<Vec<Option<String>>>,
}

/// `_late/window_start=…/part-*.parquet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LateInfo {
    pub windows: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Rows per late window directory name.
    pub rows_by_window: BTreeMap<String, u64>,
}

/// `_dead_letter/part-*.parquet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeadLetterInfo {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// The first few, in file order.
    pub errors: Vec<DeadLetterError>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterError {
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub error: String,
}

/// One checkpoint file (`checkpoint.json`, or `checkpoint-p0_1.json` per instance).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointInfo {
    pub file: PathBuf,
    /// Set when the file could not be read as a checkpoint; the other fields are then empty.
    pub problem: Option<String>,
    pub generation: Option<u64>,
    pub topic: Option<String>,
    pub window_ms: Option<i64>,
    /// Every window ending at or before this (RFC 3339 UTC) is closed; None before any close.
    pub closed_before: Option<String>,
    pub open_windows: usize,
    pub partitions: BTreeMap<i32, PartitionOffsets>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    /// The next offset the consumer had not yet read when it committed.
    pub next_offset: i64,
    /// Where a restart fetches from (lowest offset still held only in memory).
    pub resume_offset: i64,
}

/// The checkpoint file layout (see `checkpoint`): the checkpoint and its checksum.
#[derive(Deserialize)]
struct CheckpointFile {
    #[allow(dead_code)]
    checksum: String,
    checkpoint: Checkpoint,
}

/// Reads `options.output` and builds the report.
pub fn inspect(options: &InspectOptions) -> Result<Report, InspectError> {
    let out = &options.output;
    match fs::metadata(out) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(InspectError::NotADirectory { path: out.clone() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InspectError::NotFound { path: out.clone() })
        }
        Err(e) => return Err(io_err("read", out)(e)),
    }
    let checkpoint_dir = options
        .checkpoint_dir
        .clone()
        .unwrap_or_else(|| out.join(CHECKPOINT_DIR));

    let mut windows = Vec::new();
    let mut unfinished = 0usize;
    let mut found_any = checkpoint_dir.is_dir();
    let mut window_files: Vec<PathBuf> = Vec::new();
    for (name, path) in list_dir(out)? {
        if name == LATE_DIR || name == DEAD_LETTER_DIR {
            found_any = true;
            continue;
        }
        let Some(start_ms) = parse_window_dir_name(&name) else {
            continue;
        };
        if !path.is_dir() {
            continue;
        }
        found_any = true;
        let listing = list_parts(&path)?;
        unfinished += listing.unfinished;
        let mut info = WindowInfo {
            dir: name,
            start: rfc3339(start_ms),
            start_ms,
            closed: !listing.markers.is_empty(),
            markers: listing.markers,
            files: listing.parts.len(),
            rows: 0,
            bytes: 0,
        };
        for part in &listing.parts {
            info.rows += read_row_count(part)?;
            info.bytes += file_len(part)?;
        }
        window_files.extend(listing.parts);
        windows.push(info);
    }
    if !found_any {
        return Err(InspectError::NoOutput { path: out.clone() });
    }
    windows.sort_by_key(|w| w.start_ms);
    window_files.sort_by_key(|p| {
        let start = p
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(parse_window_dir_name);
        (start, part_order(p))
    });

    let (late, late_files, late_unfinished) = late_info(&out.join(LATE_DIR))?;
    unfinished += late_unfinished;
    let (dead_letters, dead_unfinished) = dead_letter_info(&out.join(DEAD_LETTER_DIR))?;
    unfinished += dead_unfinished;

    // Schema and sample: the first window file, else the first late file.
    let data_files: Vec<PathBuf> = if window_files.is_empty() {
        late_files
    } else {
        window_files
    };
    let (schema, sample) = match data_files.first() {
        Some(first) => {
            let schema = read_schema(first)?;
            let info = SchemaInfo {
                file: relative(out, first),
                columns: schema
                    .fields()
                    .iter()
                    .map(|f| ColumnInfo {
                        name: f.name().clone(),
                        data_type: f.data_type().to_string(),
                        nullable: f.is_nullable(),
                    })
                    .collect(),
            };
            let sample = if options.sample > 0 {
                Some(read_sample(out, &data_files, &schema, options.sample)?)
            } else {
                None
            };
            (Some(info), sample)
        }
        None => (None, None),
    };

    let checkpoints = checkpoint_infos(&checkpoint_dir)?;
    Ok(Report {
        output: out.clone(),
        window_count: windows.len(),
        closed_windows: windows.iter().filter(|w| w.closed).count(),
        open_windows: windows.iter().filter(|w| !w.closed).count(),
        total_files: windows.iter().map(|w| w.files).sum(),
        total_rows: windows.iter().map(|w| w.rows).sum(),
        total_bytes: windows.iter().map(|w| w.bytes).sum(),
        unfinished_files: unfinished,
        windows,
        schema,
        sample,
        late,
        dead_letters,
        checkpoints,
    })
}

/// (name, path) of the entries of `dir`, sorted by name; names that are not UTF-8 are skipped
/// (the consumer never writes them).
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, InspectError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// The files of one destination directory.
struct PartListing {
    /// Finished `part-<p>-<first>-<last>.parquet` files, by partition then first offset.
    parts: Vec<PathBuf>,
    /// `_SUCCESS` and `_SUCCESS-<instance>` files.
    markers: Vec<String>,
    /// In-progress (`*.tmp`) files.
    unfinished: usize,
}

fn list_parts(dir: &Path) -> Result<PartListing, InspectError> {
    let mut listing = PartListing {
        parts: Vec::new(),
        markers: Vec::new(),
        unfinished: 0,
    };
    for (name, path) in list_dir(dir)? {
        if name.ends_with(TMP_SUFFIX) {
            listing.unfinished += 1;
        } else if name == SUCCESS_MARKER || name.starts_with(&format!("{SUCCESS_MARKER}-")) {
            listing.markers.push(name);
        } else if parse_file_name(&name).is_some() && path.is_file() {
            listing.parts.push(path);
        }
    }
    listing.parts.sort_by_key(|p| part_order(p));
    Ok(listing)
}

/// (partition, first offset) of a part file, for a stable reading order.
fn part_order(path: &Path) -> Option<(i32, i64)> {
    let name = path.file_name()?.to_str()?;
    parse_file_name(name).map(|(p, first, _)| (p, first))
}

fn file_len(path: &Path) -> Result<u64, InspectError> {
    Ok(fs::metadata(path).map_err(io_err("read", path))?.len())
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|dt| dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn late_info(dir: &Path) -> Result<(LateInfo, Vec<PathBuf>, usize), InspectError> {
    let mut info = LateInfo::default();
    let mut files = Vec::new();
    let mut unfinished = 0;
    if !dir.is_dir() {
        return Ok((info, files, unfinished));
    }
    let mut dirs: Vec<(i64, String, PathBuf)> = list_dir(dir)?
        .into_iter()
        .filter(|(_, path)| path.is_dir())
        .filter_map(|(name, path)| parse_window_dir_name(&name).map(|s| (s, name, path)))
        .collect();
    dirs.sort();
    for (_, name, path) in dirs {
        let listing = list_parts(&path)?;
        unfinished += listing.unfinished;
        let mut rows = 0;
        for part in &listing.parts {
            rows += read_row_count(part)?;
            info.bytes += file_len(part)?;
        }
        info.windows += 1;
        info.files += listing.parts.len();
        info.rows += rows;
        info.rows_by_window.insert(name, rows);
        files.extend(listing.parts);
    }
    Ok((info, files, unfinished))
}

fn dead_letter_info(dir: &Path) -> Result<(DeadLetterInfo, usize), InspectError> {
    let mut info = DeadLetterInfo::default();
    if !dir.is_dir() {
        return Ok((info, 0));
    }
    let listing = list_parts(dir)?;
    for part in &listing.parts {
        info.files += 1;
        info.rows += read_row_count(part)?;
        info.bytes += file_len(part)?;
        if info.errors.len() < DEAD_LETTER_ERRORS_SHOWN {
            let wanted = DEAD_LETTER_ERRORS_SHOWN - info.errors.len();
            info.errors.extend(read_dead_letter_errors(part, wanted)?);
        }
    }
    Ok((info, listing.unfinished))
}

fn parquet_err(path: &Path) -> impl FnOnce(ParquetError) -> InspectError + '_ {
    move |source| InspectError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

fn reader_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, InspectError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))
}

fn read_schema(path: &Path) -> Result<SchemaRef, InspectError> {
    Ok(Arc::clone(reader_builder(path)?.schema()))
}

/// Reads at most `limit` rows of `path` (only the `columns` named, all when `None`).
fn read_rows(
    path: &Path,
    limit: usize,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, InspectError> {
    let mut builder = reader_builder(path)?
        .with_limit(limit)
        .with_batch_size(limit.clamp(1, 8192));
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(parquet_err(path))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| InspectError::Parquet {
            path: path.to_path_buf(),
            source: ParquetError::ArrowError(e.to_string()),
        })?;
        batches.push(batch);
    }
    Ok(batches)
}

fn read_dead_letter_errors(
    path: &Path,
    limit: usize,
) -> Result<Vec<DeadLetterError>, InspectError> {
    let columns = ["kafka_partition", "kafka_offset", "error"];
    let mut errors = Vec::new();
    for batch in read_rows(path, limit, Some(&columns))? {
        let column = |name: &str| -> Result<ArrayRef, InspectError> {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| InspectError::Parquet {
                    path: path.to_path_buf(),
                    source: ParquetError::General(format!(
                        "it has no column `{name}`, so it is not a dead-letter file"
                    )),
                })
        };
        let wrong_type = |name: &str| InspectError::Parquet {
            path: path.to_path_buf(),
            source: ParquetError::General(format!(
                "column `{name}` does not have the dead-letter type"
            )),
        };
        let partitions = column("kafka_partition")?;
        let partitions = partitions
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| wrong_type("kafka_partition"))?;
        let offsets = column("kafka_offset")?;
        let offsets = offsets
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| wrong_type("kafka_offset"))?;
        let messages = column("error")?;
        let messages = messages
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| wrong_type("error"))?;
        for i in 0..batch.num_rows() {
            errors.push(DeadLetterError {
                kafka_partition: partitions.value(i),
                kafka_offset: offsets.value(i),
                error: messages.value(i).to_string(),
            });
        }
    }
    errors.truncate(limit);
    Ok(errors)
}

/// The first `limit` rows of `files` (in order), as text; files whose schema differs from
/// `schema` (another enrichment query) are skipped.
fn read_sample(
    out: &Path,
    files: &[PathBuf],
    schema: &SchemaRef,
    limit: usize,
) -> Result<Sample, InspectError> {
    let mut sample = Sample {
        files: Vec::new(),
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        rows: Vec::new(),
    };
    let options = FormatOptions::default();
    for path in files {
        let wanted = limit - sample.rows.len();
        if wanted == 0 {
            break;
        }
        if read_schema(path)?.fields() != schema.fields() {
            continue;
        }
        let before = sample.rows.len();
        for batch in read_rows(path, wanted, None)? {
            let arrow_err = |e: arrow::error::ArrowError| InspectError::Parquet {
                path: path.clone(),
                source: ParquetError::ArrowError(e.to_string()),
            };
            let columns = batch
                .columns()
                .iter()
                .map(utc_offset_timestamps)
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_err)?;
            let formatters = columns
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_err)?;
            for row in 0..batch.num_rows() {
                let values = columns
                    .iter()
                    .zip(&formatters)
                    .map(|(column, f)| (!column.is_null(row)).then(|| f.value(row).to_string()))
                    .collect();
                sample.rows.push(values);
            }
        }
        if sample.rows.len() > before {
            sample.files.push(relative(out, path));
        }
    }
    sample.rows.truncate(limit);
    Ok(sample)
}

/// Timestamps with a named time zone (the output's are `UTC`) as the same instants with the
/// `+00:00` offset: without the chrono-tz feature, Arrow formats only offset time zones.
fn utc_offset_timestamps(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    match column.data_type() {
        DataType::Timestamp(unit, Some(tz)) if tz.as_ref() != "+00:00" => {
            arrow::compute::cast(column, &DataType::Timestamp(*unit, Some("+00:00".into())))
        }
        _ => Ok(Arc::clone(column)),
    }
}

fn checkpoint_infos(dir: &Path) -> Result<Vec<CheckpointInfo>, InspectError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut infos = Vec::new();
    for (name, path) in list_dir(dir)? {
        // Current generations only: `checkpoint.json`, `checkpoint-p0_1.json`.
        let is_current = name.starts_with("checkpoint")
            && name.ends_with(".json")
            && !name.ends_with(".prev.json");
        if !is_current || !path.is_file() {
            continue;
        }
        let mut info = CheckpointInfo {
            file: path.clone(),
            problem: None,
            generation: None,
            topic: None,
            window_ms: None,
            closed_before: None,
            open_windows: 0,
            partitions: BTreeMap::new(),
        };
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        match serde_json::from_slice::<CheckpointFile>(&bytes) {
            Ok(CheckpointFile { checkpoint: c, .. }) => {
                info.generation = Some(c.generation);
                info.topic = Some(c.topic);
                info.window_ms = Some(c.window_ms);
                info.closed_before =
                    (c.closed_before != i64::MIN).then(|| rfc3339(c.closed_before));
                info.open_windows = c.open_windows.len();
                info.partitions = c
                    .partitions
                    .into_iter()
                    .map(|(p, s)| {
                        (
                            p,
                            PartitionOffsets {
                                next_offset: s.next_offset,
                                resume_offset: s.resume_offset,
                            },
                        )
                    })
                    .collect();
            }
            Err(e) => {
                info.problem = Some(format!(
                    "not a readable checkpoint ({e}); the consumer falls back to the .prev.json \
                     generation when it starts"
                ))
            }
        }
        infos.push(info);
    }
    Ok(infos)
}

// ---------------------------------------------------------------------------------------------
// Text report

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

fn truncate_cell(s: &str) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= MAX_CELL_CHARS {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(MAX_CELL_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

impl Sample {
    /// The sample as an Arrow pretty-printed table, one line per column and one column per row
    /// (output files have about twenty columns, too many side by side), cells cut to a readable
    /// width.
    pub fn table(&self) -> String {
        let mut fields = vec![Field::new("column", DataType::Utf8, false)];
        fields.extend(
            (1..=self.rows.len()).map(|i| Field::new(format!("row {i}"), DataType::Utf8, true)),
        );
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from_iter_values(self.columns.iter()))];
        for row in &self.rows {
            columns.push(Arc::new(StringArray::from_iter(
                (0..self.columns.len())
                    .map(|i| row.get(i).cloned().flatten().map(|v| truncate_cell(&v))),
            )));
        }
        let batch = RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns);
        match batch.and_then(|b| arrow::util::pretty::pretty_format_batches(&[b])) {
            Ok(table) => table.to_string(),
            Err(e) => format!("(cannot format the sample: {e})"),
        }
    }
}

impl Report {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "output: {}", self.output.display());
        let _ = writeln!(
            s,
            "windows: {} ({} closed, {} open), {}, {}, {}",
            self.window_count,
            self.closed_windows,
            self.open_windows,
            plural(self.total_files as u64, "file", "files"),
            plural(self.total_rows, "row", "rows"),
            human_bytes(self.total_bytes)
        );
        if !self.windows.is_empty() {
            let _ = writeln!(
                s,
                "  {:<26} {:<7} {:>6} {:>12} {:>10}",
                "window_start", "state", "files", "rows", "size"
            );
            let listed: Vec<Option<&WindowInfo>> = if self.windows.len() > MAX_WINDOWS_LISTED {
                let half = MAX_WINDOWS_LISTED / 2;
                let mut v: Vec<Option<&WindowInfo>> =
                    self.windows[..half].iter().map(Some).collect();
                v.push(None);
                v.extend(self.windows[self.windows.len() - half..].iter().map(Some));
                v
            } else {
                self.windows.iter().map(Some).collect()
            };
            for w in listed {
                match w {
                    Some(w) => {
                        let _ = writeln!(
                            s,
                            "  {:<26} {:<7} {:>6} {:>12} {:>10}",
                            w.start,
                            if w.closed { "closed" } else { "open" },
                            w.files,
                            w.rows,
                            human_bytes(w.bytes)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "  … {} more windows (all of them are in --json) …",
                            self.windows.len() - MAX_WINDOWS_LISTED
                        );
                    }
                }
            }
            if self.open_windows > 0 {
                let _ = writeln!(
                    s,
                    "  (open: no _SUCCESS yet — the window had not passed the watermark when the \
                     consumer stopped; its rows so far are committed, more may still arrive)"
                );
            }
        }
        if self.unfinished_files > 0 {
            let _ = writeln!(
                s,
                "in progress: {} (hidden .tmp; a running consumer is writing them, or a stopped \
                 one will remove them at its next start)",
                plural(self.unfinished_files as u64, "file", "files")
            );
        }
        match &self.schema {
            Some(schema) => {
                let _ = writeln!(
                    s,
                    "schema ({} columns, from {}):",
                    schema.columns.len(),
                    schema.file
                );
                let width = schema
                    .columns
                    .iter()
                    .map(|c| c.name.chars().count())
                    .max()
                    .unwrap_or(0);
                for c in &schema.columns {
                    let _ = writeln!(
                        s,
                        "  {:<width$}  {}{}",
                        c.name,
                        c.data_type,
                        if c.nullable { "" } else { " not null" }
                    );
                }
            }
            None => {
                let _ = writeln!(s, "schema: (no data files yet)");
            }
        }
        if let Some(sample) = &self.sample {
            let _ = writeln!(
                s,
                "sample ({} from {}; long values cut at {MAX_CELL_CHARS} characters, full values \
                 in --json):",
                plural(sample.rows.len() as u64, "row", "rows"),
                sample.files.join(", ")
            );
            let _ = writeln!(s, "{}", sample.table());
        }
        let _ = writeln!(
            s,
            "late rows ({LATE_DIR}): {} in {} ({})",
            plural(self.late.rows, "row", "rows"),
            plural(self.late.files as u64, "file", "files"),
            plural(self.late.windows as u64, "window", "windows")
        );
        for (window, rows) in self.late.rows_by_window.iter().take(10) {
            let _ = writeln!(s, "  {window}: {rows}");
        }
        let _ = writeln!(
            s,
            "dead letters ({DEAD_LETTER_DIR}): {} in {}",
            plural(self.dead_letters.rows, "record", "records"),
            plural(self.dead_letters.files as u64, "file", "files")
        );
        for e in &self.dead_letters.errors {
            let _ = writeln!(
                s,
                "  partition {} offset {}: {}",
                e.kafka_partition,
                e.kafka_offset,
                truncate_text(&e.error, 200)
            );
        }
        if self.checkpoints.is_empty() {
            let _ = writeln!(s, "checkpoint: none");
        }
        for c in &self.checkpoints {
            let file = relative(&self.output, &c.file);
            if let Some(problem) = &c.problem {
                let _ = writeln!(s, "checkpoint {file}: {problem}");
                continue;
            }
            let _ = writeln!(
                s,
                "checkpoint {file}: generation {}, topic `{}`, window {}, closed before {}, open windows: {}",
                c.generation.unwrap_or(0),
                c.topic.as_deref().unwrap_or("?"),
                c.window_ms
                    .map(|ms| humantime::format_duration(std::time::Duration::from_millis(
                        ms.max(0) as u64
                    ))
                    .to_string())
                    .unwrap_or_else(|| "?".into()),
                c.closed_before.as_deref().unwrap_or("(nothing closed yet)"),
                c.open_windows,
            );
            let _ = writeln!(
                s,
                "  {:>9} {:>14} {:>14}",
                "partition", "next_offset", "resume_offset"
            );
            for (p, o) in &c.partitions {
                let _ = writeln!(
                    s,
                    "  {:>9} {:>14} {:>14}",
                    p, o.next_offset, o.resume_offset
                );
            }
        }
        s
    }
}

fn truncate_text(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::window_dir_name;
    use crate::parquet_sink::{OutputLayout, ParquetSink, SinkConfig};
    use crate::row::{DeadLetter, OutputRow};
    use crate::schema::{FieldType, Schema, Value};

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_767_323_040_000; // 2026-01-02T03:04:00Z

    fn sink() -> ParquetSink {
        let layout = OutputLayout::new(
            &Schema::banco_central(),
            &[("banco_nome".into(), FieldType::String)],
        )
        .unwrap();
        ParquetSink::new(layout, SinkConfig::default())
    }

    fn row(partition: i32, offset: i64, event_time_ms: i64) -> OutputRow {
        let schema = Schema::banco_central();
        let mut values = vec![Value::Null; schema.fields.len()];
        values[0] = Value::Int(2025);
        values[5] = Value::Str(format!(
            "BANCO MUITO COMPRIDO DE NOME EXTENSO S.A. #{offset}"
        ));
        values.push(Value::Str("BANCO AURORA S.A.".into()));
        OutputRow {
            partition,
            offset,
            kafka_timestamp_ms: event_time_ms,
            event_time_ms,
            values,
        }
    }

    /// Two windows (the first closed, 3 + 2 rows over two partitions; the second open, 4 rows),
    /// 2 late rows, 2 dead letters, a checkpoint, and a leftover temporary file.
    fn fixture(out: &Path) {
        let s = sink();
        let w0 = out.join(window_dir_name(T0));
        let w1 = out.join(window_dir_name(T0 + MINUTE));
        let rows = |p: i32, offsets: std::ops::Range<i64>, t: i64| -> Vec<OutputRow> {
            offsets.map(|o| row(p, o, t + o)).collect()
        };
        s.write_rows(&w0, 0, &rows(0, 0..3, T0), MINUTE).unwrap();
        s.write_rows(&w0, 1, &rows(1, 0..2, T0), MINUTE).unwrap();
        fs::write(w0.join(SUCCESS_MARKER), b"").unwrap();
        s.write_rows(&w1, 0, &rows(0, 3..7, T0 + MINUTE), MINUTE)
            .unwrap();
        fs::write(w1.join(".part-1-9-9.parquet.tmp"), b"partial").unwrap();
        let late = out.join(LATE_DIR).join(window_dir_name(T0));
        s.write_rows(&late, 1, &rows(1, 10..12, T0), MINUTE)
            .unwrap();
        let letters: Vec<DeadLetter> = (0..2)
            .map(|i| DeadLetter {
                partition: 1,
                offset: 20 + i,
                kafka_timestamp_ms: T0,
                key: None,
                value: Some(b"not json".to_vec()),
                error: format!("value is not valid JSON #{i}"),
            })
            .collect();
        s.write_dead_letters(&out.join(DEAD_LETTER_DIR), 1, &letters)
            .unwrap();
        let checkpoint = serde_json::json!({
            "checksum": "fnv1a64:0000000000000000",
            "checkpoint": {
                "version": 1,
                "generation": 7,
                "topic": "t",
                "window_ms": MINUTE,
                "closed_before": T0 + MINUTE,
                "partitions": {
                    "0": {"resume_offset": 7, "next_offset": 7, "watermark_max_event_ms": T0 + MINUTE + 6},
                    "1": {"resume_offset": 22, "next_offset": 22, "watermark_max_event_ms": T0 + 11}
                },
                "open_windows": [T0 + MINUTE],
                "marks": {}
            }
        });
        let dir = out.join(CHECKPOINT_DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("checkpoint.json"), checkpoint.to_string()).unwrap();
        fs::write(dir.join("checkpoint.prev.json"), b"{}").unwrap();
    }

    #[test]
    fn reports_windows_rows_late_dead_letters_and_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("output");
        fixture(&out);
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        assert_eq!(report.window_count, 2);
        assert_eq!((report.closed_windows, report.open_windows), (1, 1));
        assert_eq!((report.total_files, report.total_rows), (3, 9));
        assert_eq!(report.unfinished_files, 1);
        let w = &report.windows;
        assert_eq!(w[0].dir, "window_start=2026-01-02T03:04:00Z");
        assert_eq!(w[0].start, "2026-01-02T03:04:00Z");
        assert_eq!((w[0].closed, w[0].files, w[0].rows), (true, 2, 5));
        assert_eq!(w[0].markers, vec!["_SUCCESS"]);
        assert_eq!((w[1].closed, w[1].files, w[1].rows), (false, 1, 4));
        assert!(w[0].bytes > 0);
        assert_eq!(report.total_bytes, w[0].bytes + w[1].bytes);

        assert_eq!(
            (report.late.windows, report.late.files, report.late.rows),
            (1, 1, 2)
        );
        assert_eq!(
            report.late.rows_by_window["window_start=2026-01-02T03:04:00Z"],
            2
        );
        assert_eq!(
            (report.dead_letters.files, report.dead_letters.rows),
            (1, 2)
        );
        assert_eq!(
            report.dead_letters.errors[1],
            DeadLetterError {
                kafka_partition: 1,
                kafka_offset: 21,
                error: "value is not valid JSON #1".into()
            }
        );

        let schema = report.schema.as_ref().unwrap();
        assert_eq!(
            schema.file,
            "window_start=2026-01-02T03:04:00Z/part-0-0-2.parquet"
        );
        let ty = |name: &str| {
            schema
                .columns
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .data_type
                .clone()
        };
        assert_eq!(ty("ano"), "Int64");
        assert_eq!(ty("banco_nome"), "Utf8");
        assert_eq!(ty("kafka_offset"), "Int64");
        assert!(
            ty("window_start").starts_with("Timestamp("),
            "{}",
            ty("window_start")
        );

        // Five rows: three from the first file, two from the second, in offset order.
        let sample = report.sample.as_ref().unwrap();
        assert_eq!(sample.rows.len(), 5);
        assert_eq!(sample.files.len(), 2);
        let offset_col = sample
            .columns
            .iter()
            .position(|c| c == "kafka_offset")
            .unwrap();
        let partition_col = sample
            .columns
            .iter()
            .position(|c| c == "kafka_partition")
            .unwrap();
        let keys: Vec<(String, String)> = sample
            .rows
            .iter()
            .map(|r| {
                (
                    r[partition_col].clone().unwrap(),
                    r[offset_col].clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [("0", "0"), ("0", "1"), ("0", "2"), ("1", "0"), ("1", "1")]
                .map(|(p, o)| (p.to_string(), o.to_string()))
        );
        // Nulls stay nulls in the sample.
        let indice = sample.columns.iter().position(|c| c == "indice").unwrap();
        assert_eq!(sample.rows[0][indice], None);

        assert_eq!(report.checkpoints.len(), 1, "{:?}", report.checkpoints);
        let c = &report.checkpoints[0];
        assert_eq!(c.problem, None);
        assert_eq!(c.generation, Some(7));
        assert_eq!(c.topic.as_deref(), Some("t"));
        assert_eq!(c.closed_before.as_deref(), Some("2026-01-02T03:05:00Z"));
        assert_eq!(c.open_windows, 1);
        assert_eq!(
            c.partitions[&1],
            PartitionOffsets {
                next_offset: 22,
                resume_offset: 22
            }
        );
    }

    #[test]
    fn json_has_the_same_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        let mut options = InspectOptions::new(tmp.path());
        options.sample = 2;
        let report = inspect(&options).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["total_rows"], 9);
        assert_eq!(json["window_count"], 2);
        assert_eq!(json["closed_windows"], 1);
        assert_eq!(json["windows"][1]["rows"], 4);
        assert_eq!(json["windows"][0]["closed"], true);
        assert_eq!(json["late"]["rows"], 2);
        assert_eq!(json["dead_letters"]["rows"], 2);
        assert_eq!(json["checkpoints"][0]["generation"], 7);
        assert_eq!(json["checkpoints"][0]["partitions"]["0"]["next_offset"], 7);
        assert_eq!(json["sample"]["rows"].as_array().unwrap().len(), 2);
        assert_eq!(json["schema"]["columns"][0]["name"], "ano");
        assert_eq!(json["schema"]["columns"][0]["type"], "Int64");
    }

    #[test]
    fn renders_a_readable_report() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        let text = inspect(&InspectOptions::new(tmp.path())).unwrap().render();
        for expected in [
            "windows: 2 (1 closed, 1 open), 3 files, 9 rows",
            "2026-01-02T03:04:00Z       closed       2            5",
            "2026-01-02T03:05:00Z       open         1            4",
            "in progress: 1 file",
            "schema (20 columns, from window_start=2026-01-02T03:04:00Z/part-0-0-2.parquet):",
            "  banco_nome ",
            "sample (5 rows from window_start=2026-01-02T03:04:00Z/part-0-0-2.parquet, \
             window_start=2026-01-02T03:04:00Z/part-1-0-1.parquet",
            "| instituicao_financeira                          | BANCO MUITO COMPRIDO DE… | BANCO MUITO COMPRIDO DE… |",
            "| indice                                          |                          |                          |",
            "late rows (_late): 2 rows in 1 file (1 window)",
            "dead letters (_dead_letter): 2 records in 1 file",
            "  partition 1 offset 20: value is not valid JSON #0",
            "checkpoint _checkpoint/checkpoint.json: generation 7, topic `t`, window 1m, \
             closed before 2026-01-02T03:05:00Z, open windows: 1",
            "          1             22             22",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn no_sample_when_asked_for_none_and_empty_output_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        let mut options = InspectOptions::new(tmp.path());
        options.sample = 0;
        let report = inspect(&options).unwrap();
        assert!(report.sample.is_none());
        assert!(report.schema.is_some());

        // Only a checkpoint (nothing written yet): zeros, not an error.
        let only_checkpoint = tempfile::tempdir().unwrap();
        fs::create_dir_all(only_checkpoint.path().join(CHECKPOINT_DIR)).unwrap();
        let report = inspect(&InspectOptions::new(only_checkpoint.path())).unwrap();
        assert_eq!((report.window_count, report.total_rows), (0, 0));
        assert!(report.schema.is_none() && report.sample.is_none());
        assert!(report.render().contains("schema: (no data files yet)"));
    }

    #[test]
    fn clear_errors_for_missing_empty_or_damaged_output() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = inspect(&InspectOptions::new(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("nope") && err.contains("--output"),
            "{err}"
        );

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        fs::write(empty.join("notes.txt"), b"x").unwrap();
        let err = inspect(&InspectOptions::new(&empty))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no output"), "{err}");

        let file = empty.join("notes.txt");
        let err = inspect(&InspectOptions::new(&file))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");

        let damaged = tmp.path().join("damaged");
        let w = damaged.join(window_dir_name(T0));
        fs::create_dir_all(&w).unwrap();
        fs::write(w.join("part-0-0-0.parquet"), b"not parquet").unwrap();
        let err = inspect(&InspectOptions::new(&damaged))
            .unwrap_err()
            .to_string();
        assert!(err.contains("part-0-0-0.parquet"), "{err}");

        // A damaged checkpoint is reported, not fatal.
        let tmp2 = tempfile::tempdir().unwrap();
        fixture(tmp2.path());
        fs::write(
            tmp2.path().join(CHECKPOINT_DIR).join("checkpoint.json"),
            b"{tor",
        )
        .unwrap();
        let report = inspect(&InspectOptions::new(tmp2.path())).unwrap();
        let problem = report.checkpoints[0].problem.as_deref().unwrap();
        assert!(problem.contains("not a readable checkpoint"), "{problem}");
        assert!(report.render().contains("not a readable checkpoint"));
    }

    #[test]
    fn per_instance_markers_and_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let w = out.join(window_dir_name(T0));
        sink().write_rows(&w, 2, &[row(2, 5, T0)], MINUTE).unwrap();
        fs::write(w.join("_SUCCESS-checkpoint-p2"), b"").unwrap();
        let report = inspect(&InspectOptions::new(out)).unwrap();
        assert!(report.windows[0].closed);
        assert_eq!(report.windows[0].markers, vec!["_SUCCESS-checkpoint-p2"]);
    }
}
