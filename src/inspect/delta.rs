//! The Delta table of an output (`_delta_log/`, written by `app consume --table delta`), as
//! `app inspect` reports it: the latest snapshot, the newest versions, each partition's
//! application version beside its checkpoint, and whether the table and the files agree.
//!
//! Where the numbers come from:
//! - the latest snapshot (its version, files, sizes and `numRecords`) and each partition's
//!   application version (its `txn`): `delta_kernel`, through its default engine on the store's
//!   [`TableRoot`], as the consumer reads them;
//! - what one version did (operation, time, files and rows added, the `txn` it set): its commit
//!   file `_delta_log/<version>.json`, read through our [`Store`] and parsed by [`parse_commit`]
//!   (the kernel has no API for one commit's actions). Only the versions shown are read, one
//!   object each: `--versions` bounds the cost on object storage. A commit that does not parse
//!   is reported as unreadable, not as a failure of the whole report: when a checkpoint covers
//!   it, the table itself is still readable (when none does, the kernel refuses the snapshot
//!   first, and that is the error);
//! - checkpoints: the names in `_delta_log/`;
//! - what is committed but not yet published: the partitions' checkpoints (`unpublished`,
//!   `output::table` says why a file waits there).
//!
//! The snapshot is taken before the output is listed, so every file it lists is in the listing
//! unless it was deleted; a file published after the snapshot shows as not in the table (the
//! report is a snapshot while a consumer runs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use delta_kernel::scan::state::ScanFile;
use delta_kernel::snapshot::{Snapshot, SnapshotRef};
use delta_kernel::KernelError;
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::DefaultEngine;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{plural, rfc3339, InspectError};
use crate::checkpoint::PartitionCheckpoint;
use crate::output::delta::{log_name, LogName, TableRoot, LOG_DIR};
use crate::output::layout;
use crate::output::store::{ObjectInfo, Store};
use crate::output::table::app_id;

/// Versions listed by default (`--versions`).
pub const DEFAULT_VERSIONS_SHOWN: usize = 20;
/// File names listed per check (the counts are complete).
const NAMES_SHOWN: usize = 10;

/// How many of the newest versions to list (`--versions N|all`). Each one listed is one read of
/// its commit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionLimit {
    Last(usize),
    All,
}

impl Default for VersionLimit {
    fn default() -> Self {
        VersionLimit::Last(DEFAULT_VERSIONS_SHOWN)
    }
}

impl FromStr for VersionLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(VersionLimit::All);
        }
        s.parse().map(VersionLimit::Last).map_err(|_| {
            format!("`{s}` is not a number of versions; give a count such as 20, or `all`")
        })
    }
}

impl fmt::Display for VersionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionLimit::Last(n) => write!(f, "{n}"),
            VersionLimit::All => f.write_str("all"),
        }
    }
}

/// The Delta table. Serialized as `delta` in `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaReport {
    /// What Delta readers open: the output's path, or its object storage URL.
    pub path: String,
    /// The latest version.
    pub version: u64,
    /// Data files of the latest snapshot, their rows (the sum of their `numRecords`) and bytes.
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Files of the snapshot without `numRecords` (not counted in `rows`).
    pub files_without_row_count: usize,
    /// The newest Delta checkpoint at or before `version` (`None`: readers replay every commit).
    pub checkpoint: Option<u64>,
    /// Commit files in `_delta_log/` up to `version`, and the oldest of them (older ones were
    /// removed by a log cleanup; the checkpoint holds their result).
    pub commits: usize,
    pub oldest_commit: Option<u64>,
    /// The newest versions (`--versions`), oldest first.
    pub versions: Vec<VersionInfo>,
    /// Each partition's application version in the table beside its newest checkpoint.
    pub partitions: Vec<PartitionVersion>,
    pub checks: DeltaChecks,
}

/// What one version did, from its commit file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    /// Commit time, RFC 3339 UTC (`inCommitTimestamp` when set, else `commitInfo.timestamp`).
    pub timestamp: Option<String>,
    pub timestamp_ms: Option<i64>,
    /// `commitInfo.operation`: `CREATE TABLE`, `STREAMING UPDATE`, ...
    pub operation: Option<String>,
    pub files_added: usize,
    /// Sum of the added files' `numRecords`.
    pub rows_added: u64,
    /// Added files without `numRecords` (not counted in `rows_added`).
    pub files_without_row_count: usize,
    pub files_removed: usize,
    /// The `txn` actions: the application versions this commit set.
    pub txns: Vec<Txn>,
    /// Why the commit file could not be parsed (the counts above are then empty). Readers of
    /// this version fail; later versions read on when a checkpoint covers it.
    pub unreadable: Option<String>,
}

/// A `txn` action: `app_id` (`<topic>-<partition>`) is at `version` (a checkpoint generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Txn {
    pub app_id: String,
    pub version: i64,
}

/// One partition's publishing state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionVersion {
    /// `<topic>-<partition>`.
    pub app_id: String,
    pub partition: Option<i32>,
    /// The highest checkpoint generation published to the table (`None`: none yet).
    pub table_version: Option<i64>,
    /// The partition's newest checkpoint generation (`None`: no checkpoint found).
    pub checkpoint_generation: Option<u64>,
    /// Files the checkpoint committed that the table does not hold yet, and their rows.
    pub pending_files: usize,
    pub pending_rows: u64,
    pub state: PublishState,
}

/// How a partition's checkpoint and the table compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishState {
    /// The table holds every file the checkpoint committed. Its version may be below the
    /// generation: generations that closed no file are not published.
    Published,
    /// The checkpoint is ahead: it committed files the table does not hold yet (a run stopped
    /// between its checkpoint and its table commit). The partition's next run publishes them
    /// first.
    Pending,
    /// The table's version is past the newest checkpoint: the checkpoints were removed or
    /// replaced (a new `--output` copied over an old table?). The next run starts from the
    /// checkpoint and publishes nothing it already holds.
    TableAhead,
    /// A version in the table, no checkpoint for the partition here (another topic, or the
    /// checkpoints were removed).
    NoCheckpoint,
}

/// Whether the table and the files agree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaChecks {
    /// Every file of the latest snapshot is in the output with the size recorded in the log.
    pub consistent: bool,
    /// Files of the snapshot checked (those under the output).
    pub checked: usize,
    /// Files the snapshot lists that are not in the output: readers fail on them.
    pub missing: Listed<String>,
    /// Files whose size differs from the log's: readers fail or read garbage.
    pub wrong_size: Listed<WrongSize>,
    /// Snapshot paths outside the output (absolute URIs elsewhere): not checked.
    pub outside: Listed<String>,
    /// `.parquet` files under `window=…/` that a checkpoint committed and the table does not
    /// hold yet: the partition's next run publishes them.
    pub pending: Listed<String>,
    /// Other `.parquet` files under `window=…/` that the table does not list: written but not
    /// committed (the next run's recovery removes them; a running consumer may be about to
    /// commit them), or written by a `--table none` run.
    pub not_in_table: Listed<String>,
}

/// A count and the first few items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed<T> {
    pub count: usize,
    /// The first 10, in key order.
    pub first: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<T> Listed<T> {
    fn push(&mut self, item: T) {
        self.count += 1;
        if self.first.len() < NAMES_SHOWN {
            self.first.push(item);
        }
    }
}

/// A file whose size is not the one its add action recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrongSize {
    pub file: String,
    pub recorded: i64,
    pub found: u64,
}

// ---------------------------------------------------------------------------------------------
// The log's names and commit files

/// A file of `_delta_log/` that the report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFile {
    /// `<version>.json`.
    Commit(u64),
    /// A checkpoint (any of its forms: [`LogName::Checkpoint`]).
    Checkpoint(u64),
}

/// A name in `_delta_log/` ([`log_name`]); CRC files, compacted logs and `_last_checkpoint` are
/// `None`.
fn parse_log_name(name: &str) -> Option<LogFile> {
    match log_name(name)? {
        LogName::Commit(v) => Some(LogFile::Commit(v)),
        LogName::Checkpoint(v) => Some(LogFile::Checkpoint(v)),
        LogName::Checksum(_) => None,
    }
}

fn commit_key(version: u64) -> String {
    format!("{LOG_DIR}/{version:020}.json")
}

/// What a commit file says, in the terms of [`VersionInfo`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Commit {
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    pub files_added: usize,
    pub rows_added: u64,
    pub files_without_row_count: usize,
    pub files_removed: usize,
    pub txns: Vec<Txn>,
}

/// One line of a commit file: one action. Other actions (`protocol`, `metaData`, `cdc`,
/// `domainMetadata`, ...) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Action {
    commit_info: Option<CommitInfoAction>,
    add: Option<AddAction>,
    remove: Option<serde::de::IgnoredAny>,
    txn: Option<TxnAction>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitInfoAction {
    timestamp: Option<i64>,
    in_commit_timestamp: Option<i64>,
    operation: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddAction {
    /// The statistics, a JSON document in a string.
    stats: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddStats {
    num_records: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxnAction {
    app_id: String,
    version: i64,
}

/// Parses a commit file (newline-delimited JSON actions). `Err((line, detail))` names the first
/// line that is not a JSON action. Statistics that do not parse count as missing (as the
/// kernel treats them).
pub(super) fn parse_commit(bytes: &[u8]) -> Result<Commit, (usize, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| (0, format!("not UTF-8: {e}")))?;
    let mut commit = Commit::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let action: Action = serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?;
        if let Some(info) = action.commit_info {
            commit.timestamp_ms = info.in_commit_timestamp.or(info.timestamp);
            commit.operation = info.operation;
        }
        if let Some(add) = action.add {
            commit.files_added += 1;
            let rows = add
                .stats
                .and_then(|s| serde_json::from_str::<AddStats>(&s).ok())
                .and_then(|s| s.num_records);
            match rows {
                Some(rows) => commit.rows_added += rows,
                None => commit.files_without_row_count += 1,
            }
        }
        if action.remove.is_some() {
            commit.files_removed += 1;
        }
        if let Some(txn) = action.txn {
            commit.txns.push(Txn {
                app_id: txn.app_id,
                version: txn.version,
            });
        }
    }
    Ok(commit)
}

/// The output key of an add action's path: relative paths are URL-encoded relative to the table
/// root (`window=2026-05-01T12%3A34%3A00Z/part-….parquet`); absolute ones are URIs, kept only
/// when under `root`. `None`: outside the output, or not a valid encoding.
fn output_key(path: &str, root: &Url) -> Option<String> {
    let relative = if path.contains("://") || path.starts_with("file:") {
        path.strip_prefix(root.as_str())?
    } else {
        path
    };
    percent_decode(relative)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Reading the table

/// The table, opened before the output is listed (see the module docs).
pub(super) struct Opened {
    root: TableRoot,
    engine: DefaultEngine<TokioMultiThreadExecutor>,
    snapshot: SnapshotRef,
    /// `_delta_log/`, listed before the snapshot was read.
    log: Vec<ObjectInfo>,
}

fn kernel_error(action: &'static str, location: &str) -> impl FnOnce(KernelError) -> InspectError {
    let location = location.to_string();
    move |e| InspectError::Delta {
        action,
        location,
        detail: e.to_string(),
    }
}

fn engine(root: &TableRoot) -> Result<DefaultEngine<TokioMultiThreadExecutor>, InspectError> {
    crate::output::delta::engine(Arc::clone(&root.store)).map_err(|detail| InspectError::Delta {
        action: "starting a runtime to read",
        location: root.url.to_string(),
        detail,
    })
}

/// Opens the latest snapshot when the output has a `_delta_log/`; `None` when it has none.
pub(super) fn open(store: &dyn Store) -> Result<Option<Opened>, InspectError> {
    let log = store.list(&format!("{LOG_DIR}/"))?;
    if log.is_empty() {
        return Ok(None);
    }
    let root = store.table_root()?;
    let engine = engine(&root)?;
    let snapshot = Snapshot::builder_for(root.url.as_str())
        .build(&engine)
        .map_err(kernel_error(
            "reading the latest snapshot of",
            root.url.as_str(),
        ))?;
    Ok(Some(Opened {
        root,
        engine,
        snapshot,
        log,
    }))
}

/// One data file of the snapshot.
struct SnapshotFile {
    path: String,
    size: i64,
    rows: Option<u64>,
}

fn snapshot_files(opened: &Opened) -> Result<Vec<SnapshotFile>, KernelError> {
    let scan = Arc::clone(&opened.snapshot).scan_builder().build()?;
    let mut files = Vec::new();
    for metadata in scan.scan_metadata(&opened.engine)? {
        files =
            metadata?.visit_scan_files(files, |files: &mut Vec<SnapshotFile>, f: ScanFile| {
                files.push(SnapshotFile {
                    path: f.path,
                    size: f.size,
                    rows: f.stats.map(|s| s.num_records),
                })
            })?;
    }
    Ok(files)
}

/// The `.parquet` files under `window=…/` (the table's directories), by key, with their sizes.
fn window_files(listing: &[ObjectInfo]) -> BTreeMap<&str, u64> {
    listing
        .iter()
        .filter(|o| {
            o.key.rsplit_once('/').is_some_and(|(dir, name)| {
                layout::parse_window_dir(dir).is_some()
                    && name.ends_with(".parquet")
                    && layout::parse_temp_name(name).is_none()
            })
        })
        .map(|o| (o.key.as_str(), o.size))
        .collect()
}

/// Builds the report. `listing` is the output's, taken after [`open`]; `checkpoints` are the
/// partitions' newest.
pub(super) fn report(
    opened: &Opened,
    store: &dyn Store,
    listing: &[ObjectInfo],
    checkpoints: &[PartitionCheckpoint],
    limit: VersionLimit,
) -> Result<DeltaReport, InspectError> {
    let location = opened.root.url.to_string();
    let version = opened.snapshot.version();
    let files = snapshot_files(opened).map_err(kernel_error(
        "listing the files of the latest snapshot of",
        &location,
    ))?;

    // Commits and checkpoints named in the log, up to the snapshot's version.
    let mut commits = BTreeSet::new();
    let mut checkpoint = None;
    for o in &opened.log {
        let name = o.key.strip_prefix(&format!("{LOG_DIR}/")).unwrap_or(&o.key);
        match parse_log_name(name) {
            Some(LogFile::Commit(v)) if v <= version => {
                commits.insert(v);
            }
            Some(LogFile::Checkpoint(v)) if v <= version => {
                checkpoint = checkpoint.max(Some(v));
            }
            _ => {}
        }
    }
    let first_shown = match limit {
        VersionLimit::All => 0,
        VersionLimit::Last(0) => version + 1,
        VersionLimit::Last(n) => (version + 1).saturating_sub(n as u64),
    };
    let mut versions = Vec::new();
    for v in first_shown..=version {
        let key = commit_key(v);
        // Read even when the listing (taken before the snapshot) missed it.
        let Some(bytes) = store.get(&key)? else {
            continue; // removed by a log cleanup
        };
        let (c, unreadable) = match parse_commit(&bytes) {
            Ok(c) => (c, None),
            Err((line, detail)) => (
                Commit::default(),
                Some(format!(
                    "{key} line {line}: {detail}; the commit is damaged or was not written by a \
                     Delta writer: readers of version {v} fail on it"
                )),
            ),
        };
        commits.insert(v);
        versions.push(VersionInfo {
            version: v,
            timestamp: c.timestamp_ms.map(rfc3339),
            timestamp_ms: c.timestamp_ms,
            operation: c.operation,
            files_added: c.files_added,
            rows_added: c.rows_added,
            files_without_row_count: c.files_without_row_count,
            files_removed: c.files_removed,
            txns: c.txns,
            unreadable,
        });
    }

    // The partitions: every checkpoint's, then the app ids the versions shown set.
    let mut partitions = Vec::new();
    let mut pending_keys = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for c in checkpoints {
        let app = app_id(&c.topic, c.partition);
        let table_version = opened
            .snapshot
            .get_app_id_version(&app, &opened.engine)
            .map_err(kernel_error("reading the transactions of", &location))?;
        let current = table_version.unwrap_or(-1);
        let pending: Vec<_> = c
            .unpublished
            .iter()
            .filter(|f| i64::try_from(f.generation).map_or(true, |g| g > current))
            .collect();
        pending_keys.extend(
            pending.iter().map(|f| {
                layout::data_key_named(layout::Destination::Window(f.window), &f.file.name)
            }),
        );
        let state = if !pending.is_empty() {
            PublishState::Pending
        } else if i64::try_from(c.generation).is_ok_and(|g| current > g) {
            PublishState::TableAhead
        } else {
            PublishState::Published
        };
        seen.insert(app.clone());
        partitions.push(PartitionVersion {
            app_id: app,
            partition: Some(c.partition),
            table_version,
            checkpoint_generation: Some(c.generation),
            pending_files: pending.len(),
            pending_rows: pending.iter().map(|f| f.file.rows).sum(),
            state,
        });
    }
    let others: BTreeSet<&str> = versions
        .iter()
        .flat_map(|v| &v.txns)
        .map(|t| t.app_id.as_str())
        .filter(|app| !seen.contains(*app))
        .collect();
    for app in others {
        let table_version = opened
            .snapshot
            .get_app_id_version(app, &opened.engine)
            .map_err(kernel_error("reading the transactions of", &location))?;
        partitions.push(PartitionVersion {
            app_id: app.to_string(),
            partition: app.rsplit_once('-').and_then(|(_, p)| p.parse().ok()),
            table_version,
            checkpoint_generation: None,
            pending_files: 0,
            pending_rows: 0,
            state: PublishState::NoCheckpoint,
        });
    }

    // The files against the listing.
    let on_disk = window_files(listing);
    let sizes: HashMap<&str, u64> = listing.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut checks = DeltaChecks {
        consistent: true,
        checked: 0,
        missing: Listed::default(),
        wrong_size: Listed::default(),
        outside: Listed::default(),
        pending: Listed::default(),
        not_in_table: Listed::default(),
    };
    let mut in_table = BTreeSet::new();
    let mut sorted: Vec<&SnapshotFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        let Some(key) = output_key(&f.path, &opened.root.url) else {
            checks.outside.push(f.path.clone());
            continue;
        };
        checks.checked += 1;
        match sizes.get(key.as_str()) {
            None => checks.missing.push(key.clone()),
            Some(&found) if i64::try_from(found).ok() != Some(f.size) => {
                checks.wrong_size.push(WrongSize {
                    file: key.clone(),
                    recorded: f.size,
                    found,
                })
            }
            Some(_) => {}
        }
        in_table.insert(key);
    }
    for key in on_disk.keys().filter(|k| !in_table.contains(**k)) {
        if pending_keys.contains(*key) {
            checks.pending.push(key.to_string());
        } else {
            checks.not_in_table.push(key.to_string());
        }
    }
    checks.consistent = checks.missing.count == 0 && checks.wrong_size.count == 0;

    Ok(DeltaReport {
        path: reader_path(&opened.root.url),
        version,
        files: files.len(),
        rows: files.iter().filter_map(|f| f.rows).sum(),
        bytes: files
            .iter()
            .map(|f| u64::try_from(f.size).unwrap_or(0))
            .sum(),
        files_without_row_count: files.iter().filter(|f| f.rows.is_none()).count(),
        checkpoint,
        commits: commits.len(),
        oldest_commit: commits.first().copied(),
        versions,
        partitions,
        checks,
    })
}

/// What a reader is given: a local path, or the object storage URL.
fn reader_path(url: &Url) -> String {
    if url.scheme() == "file" {
        if let Ok(path) = url.to_file_path() {
            let path = path.display().to_string();
            return match path.trim_end_matches('/') {
                "" => path,
                trimmed => trimmed.to_string(),
            };
        }
    }
    url.as_str().trim_end_matches('/').to_string()
}

// ---------------------------------------------------------------------------------------------
// Text report

impl DeltaReport {
    /// The Delta section of the text report.
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "delta table (_delta_log): version {}, {}, {}, {}; {}",
            self.version,
            plural(self.files as u64, "file", "files"),
            plural(self.rows, "row", "rows"),
            super::human_bytes(self.bytes),
            match self.checkpoint {
                Some(v) => format!("checkpoint at version {v}"),
                None => "no checkpoint (readers replay every commit)".to_string(),
            }
        );
        if self.files_without_row_count > 0 {
            let _ = writeln!(
                s,
                "  {} no row count in the log (not counted)",
                plural(
                    self.files_without_row_count as u64,
                    "file has",
                    "files have"
                )
            );
        }
        let shown = self.versions.len();
        let _ = writeln!(
            s,
            "  versions ({shown} of {} commit{} kept{}{}):",
            self.commits,
            if self.commits == 1 { "" } else { "s" },
            match self.oldest_commit {
                Some(v) if v > 0 => format!(", from version {v}: older ones were cleaned up"),
                _ => String::new(),
            },
            if shown < self.commits {
                "; --versions N or --versions all for more"
            } else {
                ""
            }
        );
        if shown > 0 {
            let _ = writeln!(
                s,
                "  {:>8}  {:<24}  {:<17} {:>6} {:>10}  txn (app id=version)",
                "version", "timestamp (UTC)", "operation", "files", "rows"
            );
        }
        for v in &self.versions {
            let txns: Vec<String> = v
                .txns
                .iter()
                .map(|t| format!("{}={}", t.app_id, t.version))
                .collect();
            let mut extra = String::new();
            if v.files_removed > 0 {
                extra = format!(" ({} removed)", v.files_removed);
            }
            if let Some(why) = &v.unreadable {
                extra = format!(" UNREADABLE: {why}");
            }
            let _ = writeln!(
                s,
                "  {:>8}  {:<24}  {:<17} {:>6} {:>10}  {}{extra}",
                v.version,
                v.timestamp.as_deref().unwrap_or("-"),
                v.operation.as_deref().unwrap_or("-"),
                v.files_added,
                v.rows_added,
                if txns.is_empty() {
                    "-".to_string()
                } else {
                    txns.join(" ")
                },
            );
        }
        if !self.partitions.is_empty() {
            let width = self
                .partitions
                .iter()
                .map(|p| p.app_id.chars().count())
                .max()
                .unwrap_or(0)
                .max("app id".len());
            let _ = writeln!(
                s,
                "  partitions (the table's app version = the checkpoint generation it last \
                 published):"
            );
            let _ = writeln!(
                s,
                "  {:<width$}  {:>13}  {:>10}  state",
                "app id", "table version", "checkpoint"
            );
            for p in &self.partitions {
                let state = match p.state {
                    PublishState::Published
                        if p.table_version.unwrap_or(-1)
                            < p.checkpoint_generation.map_or(-1, |g| g as i64) =>
                    {
                        "published (the later generations closed no window)".to_string()
                    }
                    PublishState::Published => "published".to_string(),
                    PublishState::Pending => format!(
                        "CHECKPOINT AHEAD: {} ({}) committed, not in the table yet; the \
                         partition's next run publishes them",
                        plural(p.pending_files as u64, "file", "files"),
                        plural(p.pending_rows, "row", "rows")
                    ),
                    PublishState::TableAhead => "TABLE AHEAD of the newest checkpoint: were \
                                                 checkpoints removed?"
                        .to_string(),
                    PublishState::NoCheckpoint => "no checkpoint for this partition here".into(),
                };
                let _ = writeln!(
                    s,
                    "  {:<width$}  {:>13}  {:>10}  {state}",
                    p.app_id,
                    p.table_version.map_or("-".to_string(), |v| v.to_string()),
                    p.checkpoint_generation
                        .map_or("-".to_string(), |g| g.to_string()),
                );
            }
        }
        let c = &self.checks;
        if c.consistent {
            let _ = writeln!(
                s,
                "  files: all {} of version {} in the output with their recorded sizes",
                plural(c.checked as u64, "file", "files"),
                self.version
            );
        } else {
            let _ = writeln!(
                s,
                "  files: INCONSISTENT: {} missing, {} with another size than the log's, of {} \
                 checked; readers of the table fail on them (restore them from a backup, or \
                 remove them from the table with a Delta tool)",
                c.missing.count, c.wrong_size.count, c.checked
            );
            list(s, "missing", &c.missing.first, c.missing.count);
            let wrong: Vec<String> = c
                .wrong_size
                .first
                .iter()
                .map(|w| format!("{} ({} B, log says {} B)", w.file, w.found, w.recorded))
                .collect();
            list(s, "wrong size", &wrong, c.wrong_size.count);
        }
        if c.outside.count > 0 {
            let _ = writeln!(
                s,
                "  {} outside the output (not checked)",
                plural(c.outside.count as u64, "file is", "files are")
            );
        }
        if c.pending.count > 0 {
            let _ = writeln!(
                s,
                "  committed, waiting to be published: {} under window=…/ (the partitions' next \
                 run adds them to the table)",
                plural(c.pending.count as u64, ".parquet file", ".parquet files")
            );
            list(s, "waiting", &c.pending.first, c.pending.count);
        }
        if c.not_in_table.count > 0 {
            let _ =
                writeln!(
                s,
                "  not in the table: {} under window=…/: written but never committed (the next \
                 run's recovery removes them; a running consumer may be about to commit them), \
                 or from a --table none run; Delta readers skip them, directory readers do not",
                plural(c.not_in_table.count as u64, ".parquet file", ".parquet files")
            );
            list(
                s,
                "not in the table",
                &c.not_in_table.first,
                c.not_in_table.count,
            );
        }
        let path = self.path.replace('\'', "''");
        let _ = writeln!(
            s,
            "  read a version: python deltalake.DeltaTable(\"{}\", version={v}); DuckDB: ATTACH \
             '{path}' AS t (TYPE delta); SELECT * FROM t AT (VERSION => {v}) (latest: \
             delta_scan('{path}'))",
            self.path.replace('"', "\\\""),
            v = self.version
        );
    }
}

fn list(s: &mut String, what: &str, first: &[String], count: usize) {
    use std::fmt::Write as _;
    for name in first {
        let _ = writeln!(s, "    {what}: {name}");
    }
    if count > first.len() {
        let _ = writeln!(
            s,
            "    … {} more (the first {NAMES_SHOWN} are in --json too)",
            count - first.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two commits as `app consume` writes them (copied from a real table), and a third with
    /// what other Delta writers add: a remove, an in-commit timestamp, an add without stats and
    /// one with unparseable stats, a protocol change, a blank line.
    const CREATE: &str = r#"{"commitInfo":{"timestamp":1796549623675,"operation":"CREATE TABLE","operationParameters":{},"kernelVersion":"v0.30.1","engineInfo":"reclamacoes/0.1.0","txnId":"d0113a88-408e-4a15-955c-2db4d3495e9e"}}
{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":[],"writerFeatures":["invariants"]}}
{"metaData":{"id":"5e1b5426-ad6f-42cb-85ea-811b17353f60","format":{"provider":"parquet","options":{}},"schemaString":"{\"type\":\"struct\",\"fields\":[]}","partitionColumns":[],"createdTime":1796549623675,"configuration":{}}}
"#;
    const APPEND: &str = r#"{"commitInfo":{"timestamp":1796549623773,"operation":"STREAMING UPDATE","operationParameters":{},"kernelVersion":"v0.30.1","isBlindAppend":true,"engineInfo":"reclamacoes/0.1.0","txnId":"f7562b05-142a-4fce-aa0b-c827050049c9"}}
{"add":{"path":"window=2026-12-06T09%3A33%3A00Z/part-0-0-13-82287fe3.parquet","partitionValues":{},"size":9012,"modificationTime":1796549623774,"dataChange":true,"stats":"{\"numRecords\":14,\"nullCount\":{\"kafka_partition\":0,\"kafka_offset\":0,\"window_start\":0},\"minValues\":{\"kafka_partition\":0,\"kafka_offset\":0,\"window_start\":\"2026-12-06T09:33:00.000Z\"},\"maxValues\":{\"kafka_partition\":0,\"kafka_offset\":13,\"window_start\":\"2026-12-06T09:33:00.000Z\"},\"tightBounds\":true}"}}
{"add":{"path":"window=2026-12-06T09%3A34%3A00Z/part-0-14-15-82287fe3.parquet","partitionValues":{},"size":8000,"modificationTime":1796549623774,"dataChange":true,"stats":"{\"numRecords\":2}"}}
{"txn":{"appId":"orders-0","version":2,"lastUpdated":1796549623773}}
"#;
    const OTHER_WRITER: &str = "{\"commitInfo\":{\"timestamp\":1,\"inCommitTimestamp\":1796549700000,\"operation\":\"OPTIMIZE\"}}\n\
        \n\
        {\"remove\":{\"path\":\"a.parquet\",\"deletionTimestamp\":5,\"dataChange\":false}}\n\
        {\"add\":{\"path\":\"b.parquet\",\"size\":1,\"modificationTime\":1,\"dataChange\":false}}\n\
        {\"add\":{\"path\":\"c.parquet\",\"size\":1,\"modificationTime\":1,\"dataChange\":false,\"stats\":\"not json\"}}\n\
        {\"protocol\":{\"minReaderVersion\":1,\"minWriterVersion\":2}}\n";

    #[test]
    fn a_commit_says_what_it_did() {
        let create = parse_commit(CREATE.as_bytes()).unwrap();
        assert_eq!(
            create,
            Commit {
                timestamp_ms: Some(1_796_549_623_675),
                operation: Some("CREATE TABLE".into()),
                ..Commit::default()
            }
        );
        let append = parse_commit(APPEND.as_bytes()).unwrap();
        assert_eq!(
            append,
            Commit {
                timestamp_ms: Some(1_796_549_623_773),
                operation: Some("STREAMING UPDATE".into()),
                files_added: 2,
                rows_added: 16,
                files_without_row_count: 0,
                files_removed: 0,
                txns: vec![Txn {
                    app_id: "orders-0".into(),
                    version: 2
                }],
            }
        );
        let other = parse_commit(OTHER_WRITER.as_bytes()).unwrap();
        assert_eq!(
            other.timestamp_ms,
            Some(1_796_549_700_000),
            "in-commit time"
        );
        assert_eq!(other.operation.as_deref(), Some("OPTIMIZE"));
        assert_eq!(
            (
                other.files_added,
                other.rows_added,
                other.files_without_row_count
            ),
            (2, 0, 2)
        );
        assert_eq!(other.files_removed, 1);
        assert!(other.txns.is_empty());
    }

    #[test]
    fn a_damaged_commit_names_its_line() {
        let damaged = format!("{APPEND}{{\"add\":{{\"path\":");
        let (line, detail) = parse_commit(damaged.as_bytes()).unwrap_err();
        assert_eq!(line, 5, "{detail}");
        let (line, _) = parse_commit(b"{\"txn\":{\"appId\":\"t-0\"}}\n").unwrap_err();
        assert_eq!(line, 1, "a txn without a version");
        assert_eq!(parse_commit(b"\xff").unwrap_err().0, 0);
    }

    #[test]
    fn log_names() {
        let v = "00000000000000000012";
        assert_eq!(
            parse_log_name(&format!("{v}.json")),
            Some(LogFile::Commit(12))
        );
        for checkpoint in [
            format!("{v}.checkpoint.parquet"),
            format!("{v}.checkpoint.0000000001.0000000002.parquet"),
            format!("{v}.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.json"),
        ] {
            assert_eq!(
                parse_log_name(&checkpoint),
                Some(LogFile::Checkpoint(12)),
                "{checkpoint}"
            );
        }
        for other in [
            "_last_checkpoint".to_string(),
            format!("{v}.crc"),
            format!("{v}.00000000000000000015.compacted.json"),
            format!(".{v}.json.tmp"),
            "0000000000000000001x.json".to_string(),
            "12.json".to_string(),
        ] {
            assert_eq!(parse_log_name(&other), None, "{other}");
        }
        assert_eq!(commit_key(7), "_delta_log/00000000000000000007.json");
    }

    #[test]
    fn add_paths_are_output_keys() {
        let root = Url::parse("file:///data/out/").unwrap();
        assert_eq!(
            output_key(
                "window=2026-12-06T09%3A33%3A00Z/part-0-0-13-82287fe3.parquet",
                &root
            )
            .as_deref(),
            Some("window=2026-12-06T09:33:00Z/part-0-0-13-82287fe3.parquet")
        );
        assert_eq!(
            output_key("file:///data/out/window=x/a%20b.parquet", &root).as_deref(),
            Some("window=x/a b.parquet")
        );
        assert_eq!(output_key("s3://elsewhere/a.parquet", &root), None);
        assert_eq!(output_key("bad%2", &root), None);
        assert_eq!(output_key("bad%+1", &root), None);
        let s3 = Url::parse("s3://bucket/prefix/").unwrap();
        assert_eq!(
            output_key("s3://bucket/prefix/w/a.parquet", &s3).as_deref(),
            Some("w/a.parquet")
        );
        assert_eq!(reader_path(&s3), "s3://bucket/prefix");
        assert_eq!(reader_path(&root), "/data/out");
    }

    #[test]
    fn version_limits() {
        assert_eq!("all".parse(), Ok(VersionLimit::All));
        assert_eq!("5".parse(), Ok(VersionLimit::Last(5)));
        assert!("-1".parse::<VersionLimit>().unwrap_err().contains("`all`"));
        assert_eq!(VersionLimit::default().to_string(), "20");
    }
}
