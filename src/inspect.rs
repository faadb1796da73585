//! `app inspect`: a read-only report of an output written by `app consume`.
//!
//! It reads the output through the same [`Store`] and the same names ([`layout::classify`]) as
//! the consumer: the windows (complete when they hold a success marker, whose manifest lists
//! their files), their files, rows (from Parquet footers), bytes and writers; open windows'
//! staged row groups; the schema and a few sample rows of the first file; the late rows, the
//! dead letters (with their first errors) and each partition's checkpoint (generation, writer,
//! offsets, what is closed). [`Report::render`] prints it for people, [`Report`]'s `Serialize`
//! gives the same numbers as JSON for scripts.
//!
//! When the output is a Delta table (`_delta_log/`), the report also says what the table holds
//! and how it got there: `delta` (the submodule) owns that part.
//!
//! Outputs of layout 1 (`window_start=…` folders, one `checkpoint.json`) are read too, so an old
//! output can be looked at before it is moved aside.
//!
//! Nothing is written, locked or deleted: it is safe to run while a consumer writes (the numbers
//! are then a snapshot). Temporary files are counted apart and never read. Blocking I/O: call it
//! from `spawn_blocking` in async code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema as ArrowSchema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use chrono::DateTime;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use serde::Serialize;

use crate::checkpoint::store::read_latest;
use crate::checkpoint::CheckpointError;
use crate::output::layout::{
    self, Destination, Entry, FileKind, PartName, CHECKPOINT_DIR, DEAD_LETTER_DIR, LATE_DIR,
};
use crate::output::store::{LocalStore, ObjectInfo, Store, StoreError};
use crate::output::Location;

mod delta;
pub use delta::{
    DeltaChecks, DeltaReport, Listed, PartitionVersion, PublishState, Txn, VersionInfo,
    VersionLimit, WrongSize, DEFAULT_VERSIONS_SHOWN,
};

/// Sample rows shown by default (`--sample`).
pub const DEFAULT_SAMPLE_ROWS: usize = 5;
/// Dead-letter errors shown.
pub const DEAD_LETTER_ERRORS_SHOWN: usize = 3;
/// Longest cell of the sample table in the text report (longer values are cut with `…`).
const MAX_CELL_CHARS: usize = 24;
/// Windows listed one per line in the text report; beyond this, the first and last half.
const MAX_WINDOWS_LISTED: usize = 40;

/// Errors of `app inspect`. Each names the location and what to do.
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
        "{location} holds no output of `app consume`: no window=… folders, no {LATE_DIR}, \
         {DEAD_LETTER_DIR} or {CHECKPOINT_DIR}; give the location passed to `app consume \
         --output` (has the consumer run yet?)"
    )]
    NoOutput { location: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "{action} the Delta table at {location} failed: {detail}; check that the output is \
         reachable; `_delta_log/` must be written only by Delta writers (`app consume`, \
         deltalake, Spark)"
    )]
    Delta {
        action: &'static str,
        location: String,
        detail: String,
    },
    #[error(
        "cannot read Parquet file {key} in {location}: {source}; the file may be truncated or \
         not Parquet (files appear under their name only when complete, so a damaged one points \
         at a disk or copy problem)"
    )]
    Parquet {
        key: String,
        location: String,
        source: ParquetError,
    },
}

/// What to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    /// The `--output` of `app consume`: a directory or object storage.
    pub output: Location,
    /// Sample rows to show (0: none).
    pub sample: usize,
    /// How many of the Delta table's newest versions to list.
    pub versions: VersionLimit,
}

impl InspectOptions {
    /// A local output directory.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        InspectOptions {
            output: Location::Local(output.into()),
            sample: DEFAULT_SAMPLE_ROWS,
            versions: VersionLimit::default(),
        }
    }
}

/// Everything `app inspect` reports. Serialized as the `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub output: String,
    /// 2 for this version's layout, 1 for outputs of earlier versions.
    pub layout: u32,
    /// Window directories with table files.
    pub window_count: usize,
    /// Windows with a success marker: every assigned partition closed them.
    pub closed_windows: usize,
    /// Windows with files but no marker yet (some partition has not closed them).
    pub open_windows: usize,
    /// Table files in all windows (not counting `_late` and `_dead_letter`).
    pub total_files: usize,
    pub total_rows: u64,
    pub total_bytes: u64,
    /// Temporary files of writes in progress (or interrupted); not read.
    pub unfinished_files: usize,
    /// By window start, oldest first.
    pub windows: Vec<WindowInfo>,
    /// Open windows' staged row groups (not part of the table until the window closes).
    pub staged: StagedInfo,
    /// Columns of the first file (None when there is no data file).
    pub schema: Option<SchemaInfo>,
    pub sample: Option<Sample>,
    pub late: LateInfo,
    pub dead_letters: DeadLetterInfo,
    pub checkpoints: Vec<CheckpointInfo>,
    /// The Delta table (`None`: the output has no `_delta_log/`).
    pub delta: Option<DeltaReport>,
}

/// One window directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowInfo {
    /// The directory name, e.g. `window=2026-05-01T12:34:00Z`.
    pub dir: String,
    /// Window start, RFC 3339 UTC.
    pub start: String,
    pub start_ms: i64,
    /// A success marker is present.
    pub closed: bool,
    /// The marker files present.
    pub markers: Vec<String>,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Partitions with files in it.
    pub partitions: Vec<i32>,
    /// The consumer runs (writer ids) that wrote its files.
    pub writers: Vec<String>,
}

/// `_staging/window=…/part-*.staged`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StagedInfo {
    pub windows: usize,
    pub row_groups: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The columns of one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaInfo {
    /// The file, relative to the output.
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
    /// The files they come from, relative to the output.
    pub files: Vec<String>,
    pub columns: Vec<String>,
    /// One entry per row, one value per column; `None` is null.
    pub rows: Vec<Vec<Option<String>>>,
}

/// `_late/window=…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LateInfo {
    pub windows: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Rows per late window directory name.
    pub rows_by_window: BTreeMap<String, u64>,
}

/// `_dead_letter`.
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

/// One partition's latest checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointInfo {
    pub file: String,
    pub partition: i32,
    pub generation: u64,
    /// The consumer run (writer id) that committed it.
    pub writer: String,
    pub topic: String,
    pub window_ms: i64,
    /// Every window ending at or before this (RFC 3339 UTC) is closed for the partition.
    pub closed_before: Option<String>,
    /// Where a restart fetches from (the lowest offset held only in memory at the commit).
    pub resume_offset: i64,
    /// The next offset not yet read at the commit.
    pub next_offset: i64,
    /// Open windows with staged row groups.
    pub staged_windows: usize,
}

struct Reader<'a> {
    store: &'a dyn Store,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Result<Bytes, InspectError> {
        self.store.get(key)?.ok_or_else(|| InspectError::Parquet {
            key: key.to_string(),
            location: self.store.describe(),
            source: ParquetError::General("vanished while being read".into()),
        })
    }

    fn parquet_err(&self, key: &str) -> impl FnOnce(ParquetError) -> InspectError + '_ {
        let key = key.to_string();
        move |source| InspectError::Parquet {
            key,
            location: self.store.describe(),
            source,
        }
    }

    fn builder(&self, key: &str) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, InspectError> {
        ParquetRecordBatchReaderBuilder::try_new(self.get(key)?).map_err(self.parquet_err(key))
    }

    fn rows(&self, key: &str) -> Result<u64, InspectError> {
        let b = self.builder(key)?;
        Ok(u64::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0))
    }

    /// At most `limit` rows of `key` (only the `columns` named, all when `None`).
    fn read(
        &self,
        key: &str,
        limit: usize,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, InspectError> {
        let mut builder = self
            .builder(key)?
            .with_limit(limit)
            .with_batch_size(limit.clamp(1, 8192));
        if let Some(columns) = columns {
            let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
            builder = builder.with_projection(mask);
        }
        let reader = builder.build().map_err(self.parquet_err(key))?;
        let mut batches = Vec::new();
        for batch in reader {
            batches.push(batch.map_err(|e| InspectError::Parquet {
                key: key.to_string(),
                location: self.store.describe(),
                source: ParquetError::ArrowError(e.to_string()),
            })?);
        }
        Ok(batches)
    }
}

/// Reads an output (a local directory or object storage) and builds the report.
pub fn inspect(options: &InspectOptions) -> Result<Report, InspectError> {
    if let Some(out) = options.output.local_path() {
        match std::fs::metadata(out) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(InspectError::NotADirectory {
                    path: out.to_path_buf(),
                })
            }
            Err(_) => {
                return Err(InspectError::NotFound {
                    path: out.to_path_buf(),
                })
            }
        }
    }
    let store = options.output.open()?;
    inspect_store(store.as_ref(), options.sample, options.versions)
}

/// One data file found in the listing.
struct DataFile {
    key: String,
    size: u64,
    part: PartName,
}

/// Builds the report of any output store.
pub fn inspect_store(
    store: &dyn Store,
    sample_rows: usize,
    versions: VersionLimit,
) -> Result<Report, InspectError> {
    // The table's snapshot before the listing: every file it lists is then in the listing.
    let table = delta::open(store)?;
    let listing = store.list("")?;
    let legacy = listing
        .iter()
        .any(|o| matches!(layout::classify(&o.key), Entry::Legacy));
    let r = Reader { store };
    let mut windows: BTreeMap<i64, (String, Vec<DataFile>, Vec<String>)> = BTreeMap::new();
    let mut late: BTreeMap<i64, Vec<DataFile>> = BTreeMap::new();
    let mut dead = Vec::new();
    let mut staged = StagedInfo::default();
    let mut staged_windows = BTreeSet::new();
    let mut unfinished = 0usize;
    let mut found_any = table.is_some();
    for o in &listing {
        let entry = if legacy {
            classify_legacy(o)
        } else {
            layout::classify(&o.key)
        };
        match entry {
            Entry::Data { destination, part } => {
                found_any = true;
                let file = DataFile {
                    key: o.key.clone(),
                    size: o.size,
                    part,
                };
                match destination {
                    Destination::Window(w) => {
                        let dir = o.key.rsplit_once('/').map_or("", |(d, _)| d).to_string();
                        windows
                            .entry(w)
                            .or_insert_with(|| (dir, vec![], vec![]))
                            .1
                            .push(file)
                    }
                    Destination::Late(w) => late.entry(w).or_default().push(file),
                    Destination::DeadLetter => dead.push(file),
                }
            }
            Entry::Success { window, name } => {
                found_any = true;
                let dir = o.key.rsplit_once('/').map_or("", |(d, _)| d).to_string();
                windows
                    .entry(window)
                    .or_insert_with(|| (dir, vec![], vec![]))
                    .2
                    .push(name);
            }
            Entry::Staged { window, part } => {
                found_any = true;
                staged_windows.insert(window);
                staged.row_groups += 1;
                staged.bytes += o.size;
                let _ = part;
                staged.rows += r.rows(&o.key)?;
            }
            Entry::Temp { .. } => unfinished += 1,
            Entry::Checkpoint { .. } | Entry::Legacy => found_any = true,
            Entry::Other => {}
        }
    }
    staged.windows = staged_windows.len();
    if !found_any {
        return Err(InspectError::NoOutput {
            location: store.describe(),
        });
    }
    let mut infos = Vec::new();
    let mut table_files = Vec::new();
    for (start, (dir, mut files, markers)) in windows {
        files.sort_by_key(|f| (f.part.partition, f.part.first_offset));
        let mut info = WindowInfo {
            dir,
            start: rfc3339(start),
            start_ms: start,
            closed: !markers.is_empty(),
            markers,
            files: files.len(),
            rows: 0,
            bytes: 0,
            partitions: files
                .iter()
                .map(|f| f.part.partition)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            writers: files
                .iter()
                .filter_map(|f| f.part.writer.map(|w| w.to_string()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        for f in &files {
            info.rows += r.rows(&f.key)?;
            info.bytes += f.size;
        }
        table_files.extend(files.into_iter().map(|f| f.key));
        infos.push(info);
    }
    let mut late_info = LateInfo::default();
    let mut late_files = Vec::new();
    for (start, mut files) in late {
        files.sort_by_key(|f| (f.part.partition, f.part.first_offset));
        let mut rows = 0;
        for f in &files {
            rows += r.rows(&f.key)?;
            late_info.bytes += f.size;
        }
        late_info.windows += 1;
        late_info.files += files.len();
        late_info.rows += rows;
        let name = files[0].key.rsplit_once('/').map_or("", |(d, _)| d);
        let name = name.strip_prefix(&format!("{LATE_DIR}/")).unwrap_or(name);
        late_info.rows_by_window.insert(name.to_string(), rows);
        let _ = start;
        late_files.extend(files.into_iter().map(|f| f.key));
    }
    dead.sort_by_key(|f| (f.part.partition, f.part.first_offset));
    let mut dead_info = DeadLetterInfo::default();
    for f in &dead {
        dead_info.files += 1;
        dead_info.rows += r.rows(&f.key)?;
        dead_info.bytes += f.size;
        if dead_info.errors.len() < DEAD_LETTER_ERRORS_SHOWN {
            let wanted = DEAD_LETTER_ERRORS_SHOWN - dead_info.errors.len();
            dead_info
                .errors
                .extend(dead_letter_errors(&r, &f.key, wanted)?);
        }
    }

    // Schema and sample: the first window file, else the first late file.
    let data_files = if table_files.is_empty() {
        late_files
    } else {
        table_files
    };
    let (schema, sample) = match data_files.first() {
        Some(first) => {
            let schema = Arc::clone(r.builder(first)?.schema());
            let info = SchemaInfo {
                file: first.clone(),
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
            let sample = if sample_rows > 0 {
                Some(read_sample(&r, &data_files, &schema, sample_rows)?)
            } else {
                None
            };
            (Some(info), sample)
        }
        None => (None, None),
    };
    let latest = if legacy {
        Vec::new()
    } else {
        read_latest(store)?
    };
    let checkpoints = latest
        .iter()
        .map(|(c, key)| CheckpointInfo {
            file: key.clone(),
            partition: c.partition,
            generation: c.generation,
            writer: c.writer.clone(),
            topic: c.topic.clone(),
            window_ms: c.window_ms,
            closed_before: (c.closed_before != i64::MIN).then(|| {
                if c.closed_before == i64::MAX {
                    "the end of the stream (--close-windows)".to_string()
                } else {
                    rfc3339(c.closed_before)
                }
            }),
            resume_offset: c.resume_offset,
            next_offset: c.next_offset,
            staged_windows: c.staged.len(),
        })
        .collect();
    let delta = match &table {
        Some(table) => {
            let latest: Vec<_> = latest.into_iter().map(|(c, _)| c).collect();
            Some(delta::report(table, store, &listing, &latest, versions)?)
        }
        None => None,
    };
    Ok(Report {
        output: store.describe(),
        layout: if legacy { 1 } else { layout::LAYOUT_VERSION },
        window_count: infos.len(),
        closed_windows: infos.iter().filter(|w| w.closed).count(),
        open_windows: infos.iter().filter(|w| !w.closed).count(),
        total_files: infos.iter().map(|w| w.files).sum(),
        total_rows: infos.iter().map(|w| w.rows).sum(),
        total_bytes: infos.iter().map(|w| w.bytes).sum(),
        unfinished_files: unfinished,
        windows: infos,
        staged,
        schema,
        sample,
        late: late_info,
        dead_letters: dead_info,
        checkpoints,
        delta,
    })
}

/// Layout 1: `window_start=…/part-<p>-<first>-<last>.parquet`, `_late/window_start=…/…`,
/// `_dead_letter/part-….parquet`, `_SUCCESS` markers.
fn classify_legacy(o: &ObjectInfo) -> Entry {
    let (dir, name) = o.key.rsplit_once('/').unwrap_or(("", &o.key));
    if layout::parse_temp_name(name).is_some() {
        return Entry::Temp {
            for_key: o.key.clone(),
        };
    }
    let destination = if dir == DEAD_LETTER_DIR {
        Some(Destination::DeadLetter)
    } else if let Some(w) = dir
        .strip_prefix(LATE_DIR)
        .and_then(|d| d.strip_prefix('/'))
        .and_then(layout::parse_legacy_window_dir)
    {
        Some(Destination::Late(w))
    } else {
        layout::parse_legacy_window_dir(dir).map(Destination::Window)
    };
    let Some(destination) = destination else {
        return if dir == CHECKPOINT_DIR {
            Entry::Legacy
        } else {
            Entry::Other
        };
    };
    if let (Destination::Window(window), true) = (destination, layout::is_success_marker(name)) {
        return Entry::Success {
            window,
            name: name.to_string(),
        };
    }
    match PartName::parse(name) {
        Some(part) if part.kind == FileKind::Table => Entry::Data { destination, part },
        _ => Entry::Other,
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|dt| dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn dead_letter_errors(
    r: &Reader<'_>,
    key: &str,
    limit: usize,
) -> Result<Vec<DeadLetterError>, InspectError> {
    let columns = ["kafka_partition", "kafka_offset", "error"];
    let mut errors = Vec::new();
    for batch in r.read(key, limit, Some(&columns))? {
        let bad = || InspectError::Parquet {
            key: key.to_string(),
            location: r.store.describe(),
            source: ParquetError::General(
                "it does not have the dead-letter columns (kafka_partition, kafka_offset, error)"
                    .into(),
            ),
        };
        let (Some(p), Some(o), Some(e)) = (
            batch.column_by_name("kafka_partition"),
            batch.column_by_name("kafka_offset"),
            batch.column_by_name("error"),
        ) else {
            return Err(bad());
        };
        let (Some(p), Some(o), Some(e)) = (
            p.as_primitive_opt::<Int32Type>(),
            o.as_primitive_opt::<Int64Type>(),
            e.as_string_opt::<i32>(),
        ) else {
            return Err(bad());
        };
        for i in 0..batch.num_rows() {
            errors.push(DeadLetterError {
                kafka_partition: p.value(i),
                kafka_offset: o.value(i),
                error: e.value(i).to_string(),
            });
        }
    }
    errors.truncate(limit);
    Ok(errors)
}

/// The first `limit` rows of `files` (in order), as text; files whose schema differs from
/// `schema` (another enrichment query) are skipped.
fn read_sample(
    r: &Reader<'_>,
    files: &[String],
    schema: &SchemaRef,
    limit: usize,
) -> Result<Sample, InspectError> {
    let mut sample = Sample {
        files: Vec::new(),
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        rows: Vec::new(),
    };
    let options = FormatOptions::default();
    for key in files {
        let wanted = limit - sample.rows.len();
        if wanted == 0 {
            break;
        }
        if r.builder(key)?.schema().fields() != schema.fields() {
            continue;
        }
        let before = sample.rows.len();
        for batch in r.read(key, wanted, None)? {
            let arrow_err = |e: arrow::error::ArrowError| InspectError::Parquet {
                key: key.clone(),
                location: r.store.describe(),
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
            sample.files.push(key.clone());
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
        let _ = writeln!(s, "output: {} (layout {})", self.output, self.layout);
        if self.layout == 1 {
            let _ = writeln!(
                s,
                "  written by an earlier version of app: this version reads it here but does not \
                 consume into it; consume into a new --output"
            );
        }
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
                "  {:<26} {:<7} {:>6} {:>12} {:>10}  partitions",
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
                        let parts: Vec<String> = w.partitions.iter().map(i32::to_string).collect();
                        let _ = writeln!(
                            s,
                            "  {:<26} {:<7} {:>6} {:>12} {:>10}  {}",
                            w.start,
                            if w.closed { "closed" } else { "open" },
                            w.files,
                            w.rows,
                            human_bytes(w.bytes),
                            parts.join(",")
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
                    "  (open: some partition has not closed the window yet, so it has no _SUCCESS; \
                     the files listed are final, more partitions' files may still come)"
                );
            }
        }
        if let Some(delta) = &self.delta {
            delta.render(&mut s);
        }
        if self.staged.row_groups > 0 {
            let _ = writeln!(
                s,
                "staged: {} in {} of {} ({}): open windows' rows, not in the table until their \
                 window closes",
                plural(self.staged.rows, "row", "rows"),
                plural(self.staged.row_groups as u64, "row group", "row groups"),
                plural(self.staged.windows as u64, "window", "windows"),
                human_bytes(self.staged.bytes)
            );
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
            let _ = writeln!(s, "checkpoints: none");
        } else {
            let c0 = &self.checkpoints[0];
            let _ = writeln!(
                s,
                "checkpoints ({CHECKPOINT_DIR}/partition=*): topic `{}`, window {}",
                c0.topic,
                humantime::format_duration(std::time::Duration::from_millis(
                    c0.window_ms.max(0) as u64
                ))
            );
            let _ = writeln!(
                s,
                "  {:>9} {:>10} {:>8} {:>14} {:>14}  closed before",
                "partition", "generation", "writer", "next_offset", "resume_offset"
            );
            for c in &self.checkpoints {
                let _ = writeln!(
                    s,
                    "  {:>9} {:>10} {:>8} {:>14} {:>14}  {}",
                    c.partition,
                    c.generation,
                    c.writer,
                    c.next_offset,
                    c.resume_offset,
                    c.closed_before.as_deref().unwrap_or("(nothing closed yet)")
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

/// The output location `inspect` reads, for messages.
pub fn location(path: &Path) -> String {
    LocalStore::new(path).describe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::core::{CoreConfig, LatePolicy, Now};
    use crate::consume::decode::{DecodeConfig, Decoder, RawRecord};
    use crate::consume::pipeline::{prepare, PartitionPipeline, PipelineConfig, Progress};
    use crate::enrich::{OnMiss, ReferenceTable};
    use crate::output::delta::{DeltaConfig, DeltaTable};
    use crate::output::layout::WriterId;
    use crate::output::table::TableCommitter;
    use crate::output::{OutputConfig, OutputSchema};
    use crate::schema::{Schema, Source, Value};

    const T0: i64 = 1_767_323_040_000; // 2026-01-02T03:04:00Z
    const MINUTE: i64 = 60_000;

    fn json(offset: i64) -> Vec<u8> {
        let schema = Schema::banco_central();
        let mut values = vec![Value::Null; schema.fields.len()];
        values[0] = Value::Int(2025);
        values[1] = Value::Int(1);
        values[2] = Value::Str("C".into());
        values[3] = Value::Str("T".into());
        values[4] = Value::Str("00360305".into());
        values[5] = Value::Str(format!(
            "BANCO MUITO COMPRIDO DE NOME EXTENSO S.A. #{offset}"
        ));
        let mut out = String::new();
        let source = Source {
            file: "f".into(),
            line: 1,
        };
        schema.write_json(&values, Some(&source), &mut out);
        out.into_bytes()
    }

    /// A partition's run: window T0 closed (3 rows), window T0+1m open (2 rows, staged), one
    /// late row, two dead letters.
    fn fixture(out: &Path) {
        fixture_with(out, None)
    }

    /// [`fixture`], publishing to a Delta table when `delta`.
    fn fixture_with(out: &Path, delta: Option<DeltaConfig>) {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(out));
        let schema = Arc::new(Schema::banco_central());
        let table = ReferenceTable::one_bank();
        let output = OutputSchema::new(&schema, &table.columns).unwrap();
        let committer = delta.map(|config| {
            let root = store.table_root().unwrap();
            let t = DeltaTable::open_or_create(root, output.arrow(), config);
            Arc::new(t.unwrap()) as Arc<dyn TableCommitter>
        });
        let decoder = Decoder::new(
            DecodeConfig {
                schema: Arc::clone(&schema),
                event_time_field: None,
                join_field: 4,
                on_miss: OnMiss::Null,
                max_future_ms: None,
                window_ms: MINUTE,
            },
            &output,
            "t",
        );
        let config = PipelineConfig {
            topic: "t".into(),
            core: CoreConfig {
                window_ms: MINUTE,
                allowed_lateness_ms: 0,
                late: LatePolicy::SideOutput,
                idle_timeout_ms: 1 << 40,
                idle_advance: false,
            },
            output: OutputConfig::default(),
            memory_budget: 1 << 30,
            table: committer,
        };
        let recovered = prepare(store.as_ref(), "t", MINUTE, &[0].into())
            .unwrap()
            .remove(&0)
            .unwrap();
        let now = Now {
            wall_ms: T0,
            mono_ms: 0,
        };
        let mut p = PartitionPipeline::claim(
            Arc::clone(&store),
            &config,
            &output,
            0,
            WriterId(0xabcd),
            &recovered,
            0,
            now,
        )
        .unwrap();
        let values: Vec<Vec<u8>> = (0..6).map(json).collect();
        let times = [T0, T0 + 1, T0 + 2, T0 + MINUTE, T0 + 5, T0 + MINUTE + 1];
        let mut records: Vec<RawRecord<'_>> = (0..6)
            .map(|i| RawRecord {
                offset: i as i64,
                timestamp_ms: times[i],
                key: None,
                value: Some(&values[i]),
                refused: None,
            })
            .collect();
        let bad = [b"not json".to_vec(), b"[1]".to_vec()];
        for (i, v) in bad.iter().enumerate() {
            records.push(RawRecord {
                offset: 6 + i as i64,
                timestamp_ms: T0,
                key: None,
                value: Some(v),
                refused: None,
            });
        }
        let batch = decoder.decode(0, records.into_iter(), &table, T0).unwrap();
        p.process(&batch, now).unwrap();
        p.finish(false, &mut Progress::default()).unwrap();
        std::fs::write(out.join("window=2026-01-02T03:04:00Z/_SUCCESS"), b"{}").unwrap();
        std::fs::write(
            out.join("window=2026-01-02T03:04:00Z/.part-0-9-9-0000abcd.parquet.tmp"),
            b"x",
        )
        .unwrap();
    }

    #[test]
    fn reports_windows_staged_late_dead_letters_and_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("output");
        fixture(&out);
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        assert_eq!(report.layout, 2);
        assert_eq!(
            (
                report.window_count,
                report.closed_windows,
                report.open_windows
            ),
            (1, 1, 0)
        );
        assert_eq!((report.total_files, report.total_rows), (1, 3));
        assert_eq!(report.windows[0].dir, "window=2026-01-02T03:04:00Z");
        assert_eq!(report.windows[0].writers, vec!["0000abcd"]);
        assert_eq!(
            (
                report.staged.windows,
                report.staged.row_groups,
                report.staged.rows
            ),
            (1, 1, 2)
        );
        assert_eq!((report.late.rows, report.late.files), (1, 1));
        assert_eq!(
            (report.dead_letters.rows, report.dead_letters.errors.len()),
            (2, 2)
        );
        assert!(report.dead_letters.errors[0]
            .error
            .contains("not valid JSON"));
        assert_eq!(report.unfinished_files, 1);
        assert_eq!(report.checkpoints.len(), 1);
        let c = &report.checkpoints[0];
        assert_eq!(
            (
                c.partition,
                c.resume_offset,
                c.next_offset,
                c.staged_windows
            ),
            (0, 8, 8, 1)
        );
        assert_eq!(c.writer, "0000abcd");
        let schema = report.schema.as_ref().unwrap();
        assert!(schema.columns.iter().any(|col| col.name == "banco_nome"));
        assert_eq!(report.sample.as_ref().unwrap().rows.len(), 3);
        let text = report.render();
        for needle in [
            "windows: 1 (1 closed, 0 open), 1 file, 3 rows",
            "staged: 2 rows in 1 row group of 1 window",
            "late rows (_late): 1 row in 1 file (1 window)",
            "dead letters (_dead_letter): 2 records in 1 file",
            "in progress: 1 file",
        ] {
            assert!(text.contains(needle), "`{needle}` missing:\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["total_rows"], 3);
        assert_eq!(report.delta, None, "no _delta_log");
        assert!(json["delta"].is_null());
    }

    #[test]
    fn reports_the_delta_table_its_versions_and_partitions() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("output");
        fixture_with(&out, Some(DeltaConfig::default()));
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let delta = report.delta.as_ref().expect("a Delta table");
        assert_eq!(
            (delta.version, delta.files, delta.rows, delta.checkpoint),
            (1, 1, 3, None)
        );
        assert_eq!(delta.bytes, report.windows[0].bytes);
        assert_eq!((delta.commits, delta.oldest_commit), (2, Some(0)));
        let generation = report.checkpoints[0].generation;
        let v: Vec<_> = delta
            .versions
            .iter()
            .map(|v| {
                (
                    v.version,
                    v.operation.as_deref().unwrap(),
                    v.files_added,
                    v.rows_added,
                    v.txns.clone(),
                )
            })
            .collect();
        let txn = Txn {
            app_id: "t-0".into(),
            version: generation as i64,
        };
        assert_eq!(
            v,
            vec![
                (0, "CREATE TABLE", 0, 0, vec![]),
                (1, "STREAMING UPDATE", 1, 3, vec![txn]),
            ]
        );
        assert!(delta.versions.iter().all(|v| v.timestamp.is_some()));
        assert_eq!(
            delta.partitions,
            vec![PartitionVersion {
                app_id: "t-0".into(),
                partition: Some(0),
                table_version: Some(generation as i64),
                checkpoint_generation: Some(generation),
                pending_files: 0,
                pending_rows: 0,
                state: PublishState::Published,
            }]
        );
        assert!(delta.checks.consistent);
        assert_eq!(delta.checks.checked, 1);
        assert_eq!(delta.checks.not_in_table.count, 0);
        let text = report.render();
        for needle in [
            "delta table (_delta_log): version 1, 1 file, 3 rows",
            "no checkpoint",
            &format!("t-0={generation}"),
            "published",
            "all 1 file of version 1 in the output with their recorded sizes",
            "version=1)",
        ] {
            assert!(text.contains(needle), "`{needle}` missing:\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["delta"]["versions"][1]["rows_added"], 3);
        assert_eq!(json["delta"]["partitions"][0]["state"], "published");

        // --versions: the newest N, or none.
        let only = |limit| {
            let options = InspectOptions {
                versions: limit,
                ..InspectOptions::new(&out)
            };
            let report = inspect(&options).unwrap();
            let delta = report.delta.unwrap();
            delta.versions.iter().map(|v| v.version).collect::<Vec<_>>()
        };
        assert_eq!(only(VersionLimit::Last(1)), vec![1]);
        assert_eq!(only(VersionLimit::Last(0)), Vec::<u64>::new());
        assert_eq!(only(VersionLimit::All), vec![0, 1]);
    }

    #[test]
    fn delta_checks_find_stray_missing_resized_and_pending_files() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("output");
        fixture_with(&out, Some(DeltaConfig::default()));
        let dir = out.join("window=2026-01-02T03:04:00Z");
        let table_file = walk_files(&dir).remove(0);
        let name = table_file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let key = format!("window=2026-01-02T03:04:00Z/{name}");

        // A file written but never committed, and one of another name: not in the table.
        std::fs::copy(&table_file, dir.join("part-0-100-101-0000beef.parquet")).unwrap();
        std::fs::write(dir.join("stray.parquet"), b"x").unwrap();
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let checks = &report.delta.as_ref().unwrap().checks;
        assert!(checks.consistent, "extra files do not break the table");
        assert_eq!(checks.not_in_table.count, 2);
        assert_eq!(
            checks.not_in_table.first,
            vec![
                "window=2026-01-02T03:04:00Z/part-0-100-101-0000beef.parquet".to_string(),
                "window=2026-01-02T03:04:00Z/stray.parquet".to_string()
            ]
        );
        let text = report.render();
        assert!(
            text.contains("not in the table: 2 .parquet files under window=…/"),
            "{text}"
        );
        assert!(text.contains("stray.parquet"), "{text}");

        // A table file replaced by another (the late file: Parquet too, of another size), then
        // a missing one.
        let original = std::fs::read(&table_file).unwrap();
        let late = walk_files_ending(&out.join("_late/window=2026-01-02T03:04:00Z"), "pq");
        let other = std::fs::read(&late[0]).unwrap();
        assert_ne!(other.len(), original.len());
        std::fs::write(&table_file, &other).unwrap();
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let checks = &report.delta.as_ref().unwrap().checks;
        assert!(!checks.consistent);
        assert_eq!(
            checks.wrong_size.first,
            vec![WrongSize {
                file: key.clone(),
                recorded: original.len() as i64,
                found: other.len() as u64,
            }]
        );
        assert!(report
            .render()
            .contains("INCONSISTENT: 0 missing, 1 with another size"));
        std::fs::remove_file(&table_file).unwrap();
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let checks = &report.delta.as_ref().unwrap().checks;
        assert_eq!(
            (checks.missing.count, checks.wrong_size.count),
            (1, 0),
            "{checks:?}"
        );
        assert_eq!(checks.missing.first, vec![key.clone()]);
        let text = report.render();
        assert!(text.contains("INCONSISTENT: 1 missing"), "{text}");
        assert!(text.contains(&format!("missing: {key}")), "{text}");

        // The run stopped between its checkpoint and its table commit: the commit is not
        // there, the checkpoint carries the file as unpublished. The checkpoint is ahead.
        // (Its version checksum, written only after a commit lands, goes with it.)
        std::fs::write(&table_file, &original).unwrap();
        std::fs::remove_file(out.join("_delta_log/00000000000000000001.json")).unwrap();
        std::fs::remove_file(out.join("_delta_log/00000000000000000001.crc")).unwrap();
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let delta = report.delta.as_ref().unwrap();
        assert_eq!((delta.version, delta.files, delta.rows), (0, 0, 0));
        let p = &delta.partitions[0];
        assert_eq!(
            (p.table_version, p.pending_files, p.pending_rows, p.state),
            (None, 1, 3, PublishState::Pending)
        );
        assert_eq!(delta.checks.pending.first, vec![key]);
        assert_eq!(delta.checks.not_in_table.count, 2, "the two strays");
        let text = report.render();
        assert!(
            text.contains("CHECKPOINT AHEAD: 1 file (3 rows) committed, not in the table yet"),
            "{text}"
        );
        assert!(text.contains("committed, waiting to be published: 1 .parquet file"));
    }

    #[test]
    fn a_damaged_commit_is_a_clear_error_or_an_unreadable_version() {
        let damage = |out: &Path| {
            let commit = out.join("_delta_log/00000000000000000001.json");
            let mut text = std::fs::read_to_string(&commit).unwrap();
            text.push_str("{\"add\": 7}\n");
            std::fs::write(&commit, text).unwrap();
        };
        // The latest snapshot replays it: the kernel refuses the table, and so does inspect.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("output");
        fixture_with(&out, Some(DeltaConfig::default()));
        damage(&out);
        let e = inspect(&InspectOptions::new(&out)).unwrap_err().to_string();
        assert!(
            e.contains("the Delta table at file://") && e.contains("failed"),
            "{e}"
        );

        // A checkpoint at version 1 covers it: the table is readable, version 1 is not.
        let out = tmp.path().join("checkpointed");
        let every = DeltaConfig {
            checkpoint_every: 1,
            ..DeltaConfig::default()
        };
        fixture_with(&out, Some(every));
        damage(&out);
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        let delta = report.delta.as_ref().unwrap();
        assert_eq!(
            (delta.version, delta.rows, delta.checkpoint),
            (1, 3, Some(1))
        );
        let unreadable = delta.versions[1].unreadable.as_deref().unwrap();
        assert!(
            unreadable.contains("_delta_log/00000000000000000001.json line 4"),
            "{unreadable}"
        );
        let text = report.render();
        assert!(text.contains("UNREADABLE: _delta_log/"), "{text}");
    }

    #[test]
    fn layout_1_outputs_are_still_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("old");
        fixture(&tmp.path().join("new"));
        // Layout 1: window_start=… folders, part-<p>-<first>-<last>.parquet, checkpoint.json.
        let new_file = walk_files(&tmp.path().join("new/window=2026-01-02T03:04:00Z"));
        let dir = out.join("window_start=2026-01-02T03:04:00Z");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&new_file[0], dir.join("part-0-0-2.parquet")).unwrap();
        std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
        std::fs::create_dir_all(out.join("_checkpoint")).unwrap();
        std::fs::write(out.join("_checkpoint/checkpoint.json"), b"{}").unwrap();
        let report = inspect(&InspectOptions::new(&out)).unwrap();
        assert_eq!(report.layout, 1);
        assert_eq!(
            (
                report.window_count,
                report.closed_windows,
                report.total_rows
            ),
            (1, 1, 3)
        );
        assert!(
            report.render().contains("earlier version"),
            "{}",
            report.render()
        );
    }

    fn walk_files(dir: &Path) -> Vec<PathBuf> {
        walk_files_ending(dir, "parquet")
    }

    fn walk_files_ending(dir: &Path, extension: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn clear_errors_for_missing_or_empty_output() {
        let tmp = tempfile::tempdir().unwrap();
        let e = inspect(&InspectOptions::new(tmp.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not exist") && e.contains("--output"),
            "{e}"
        );
        let e = inspect(&InspectOptions::new(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no output"), "{e}");
    }
}
