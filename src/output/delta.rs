//! The output as a Delta Lake table (the [`TableCommitter`] of `--table delta`), written with
//! `delta_kernel`, the Delta project's own Rust kernel, through its default engine on our own
//! object store (local disk or the S3 bucket of `--output`).
//!
//! - The table is created on the first run, with the output schema, unpartitioned: the files
//!   stay in their `window=…/` directories (plain Parquet readers keep reading the directory;
//!   Delta readers read what the log lists), and every add carries exact statistics of
//!   `kafka_partition`, `kafka_offset` and `window_start` and the row count, so readers skip
//!   files by window or offset.
//! - One commit per publish ([`TableCommitter::publish`], `output::table` says why exactly
//!   once): a blind append of the files with a `txn` action (application id per topic partition,
//!   version = checkpoint generation). A commit is `_delta_log/<version>.json` created if absent
//!   (put-if-absent on local disk, `If-None-Match` on S3: no lock service), so of two writers
//!   only one gets a version; the other rebuilds on the new snapshot and decides again.
//! - Every `checkpoint_every` versions the table writes a checkpoint (`_last_checkpoint` and a
//!   checkpoint Parquet file), so opening the table reads one checkpoint and at most that many
//!   commits, however long it has run. Old commits are kept (time travel); the kernel has no
//!   log cleanup or vacuum: docs/consume.md says how to run them with python `deltalake`.
//! - Transaction retention is never set: the `txn` versions must not expire.
//!
//! Writes go through the kernel's engine, not our `Store`: the engine needs an `ObjectStore`,
//! and a commit must be created-if-absent by the engine itself. Transient failures (an S3
//! outage) are retried here with the output's retry deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StructArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow as _;
use delta_kernel::expressions::ColumnName;
use delta_kernel::object_store::{DynObjectStore, ObjectStoreExt as _};
use delta_kernel::schema::StructType;
use delta_kernel::snapshot::{IncrementalReplay, Snapshot, SnapshotRef};
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{Engine as _, FileMeta, KernelError};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::executor::TaskExecutor as _;
use delta_kernel_default_engine::parquet::DataFileMetadata;
use delta_kernel_default_engine::stats::collect_stats;
use delta_kernel_default_engine::{build_add_file_metadata, DefaultEngine, DefaultEngineBuilder};
use url::Url;

use super::layout;
use super::parquet::{COLUMN_OFFSET, COLUMN_PARTITION, COLUMN_WINDOW_START};
use super::table::{self, Decision, Published, TableCommitter, TableError};
use crate::checkpoint::TableFile;
use crate::retry::RetryPolicy;

/// Who wrote a commit (`commitInfo.engineInfo`).
pub const ENGINE_INFO: &str = concat!("reclamacoes/", env!("CARGO_PKG_VERSION"));
/// The log directory, relative to the table root.
pub const LOG_DIR: &str = "_delta_log";

/// Where the table lives: an object store and the table's root URL in it (ends in `/`).
#[derive(Clone)]
pub struct TableRoot {
    pub store: Arc<DynObjectStore>,
    pub url: Url,
}

impl std::fmt::Debug for TableRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRoot")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// How the table is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaConfig {
    /// A checkpoint after every this many commits (0: never).
    pub checkpoint_every: u64,
    /// How long a publish rides out transient failures.
    pub retry_timeout: Duration,
    /// Log retention: commits and checkpoints older than this, and older than a checkpoint that
    /// is itself past it, are deleted after each checkpoint. `None`: the table's
    /// `delta.logRetentionDuration`, else 30 days (Delta's default).
    pub log_retention: Option<Duration>,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            checkpoint_every: 100,
            retry_timeout: Duration::from_secs(300),
            log_retention: None,
        }
    }
}

/// Transient failures: 200 ms doubling to 5 s, with jitter, within the retry timeout.
/// How many commits a snapshot replays to bring an older version checksum up to date; further
/// behind (another writer that writes none), it reads the checkpoint instead.
const CRC_REPLAY: IncrementalReplay = IncrementalReplay::UpToCommits(100);

const PUBLISH_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(5));

/// An open Delta table. Blocking: call from blocking threads.
pub struct DeltaTable {
    engine: DefaultEngine<TokioMultiThreadExecutor>,
    /// The engine's executor, for the log cleanup's deletes.
    executor: Arc<TokioMultiThreadExecutor>,
    root: TableRoot,
    /// The latest snapshot this process knows (updated incrementally).
    latest: Mutex<SnapshotRef>,
    config: DeltaConfig,
}

impl std::fmt::Debug for DeltaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaTable")
            .field("root", &self.root.url.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn kernel_error(action: &'static str, root: &Url, e: KernelError) -> TableError {
    TableError::Delta {
        action,
        location: root.to_string(),
        detail: e.to_string(),
        advice: "check that the output is reachable and writable; a Delta table must only be \
                 written by Delta writers",
    }
}

/// The kernel's engine: its tasks run on the caller's multi-threaded runtime, or on a runtime
/// of its own when there is none (tests, tools). The consumer and `app inspect` both use it.
pub fn engine(
    store: Arc<DynObjectStore>,
) -> Result<DefaultEngine<TokioMultiThreadExecutor>, String> {
    Ok(engine_with(store, executor()?))
}

fn engine_with(
    store: Arc<DynObjectStore>,
    executor: Arc<TokioMultiThreadExecutor>,
) -> DefaultEngine<TokioMultiThreadExecutor> {
    DefaultEngineBuilder::new(store)
        .with_task_executor(executor)
        .build()
}

fn executor() -> Result<Arc<TokioMultiThreadExecutor>, String> {
    let executor = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            TokioMultiThreadExecutor::new(handle)
        }
        _ => TokioMultiThreadExecutor::new_owned_runtime(Some(1), Some(4))
            .map_err(|e| e.to_string())?,
    };
    Ok(Arc::new(executor))
}

impl DeltaTable {
    /// Opens the table at `root`, creating it with `schema` when there is none; refuses a table
    /// with another schema.
    pub fn open_or_create(
        root: TableRoot,
        schema: &ArrowSchema,
        config: DeltaConfig,
    ) -> Result<DeltaTable, TableError> {
        let url = root.url.clone();
        let executor = executor().map_err(|detail| TableError::Delta {
            action: "starting the engine of",
            location: url.to_string(),
            detail,
            advice: "this is a bug, please report it",
        })?;
        let engine = engine_with(Arc::clone(&root.store), Arc::clone(&executor));
        let wanted = StructType::try_from_arrow(schema)
            .map_err(|e| kernel_error("converting the output schema for", &url, e.into()))?;
        // Transient failures (an S3 outage at start) are ridden out as a publish's are.
        let mut backoff = PUBLISH_RETRY.with_deadline(config.retry_timeout).backoff();
        let started = Instant::now();
        let snapshot = loop {
            match Self::latest_or_create(&engine, &url, &wanted) {
                Ok(snapshot) => break snapshot,
                Err(e) => match backoff.next_delay(started.elapsed()) {
                    Some(delay) => {
                        tracing::warn!(table = %url, error = %e, retry_in_ms = delay.as_millis() as u64,
                            "Opening the Delta table failed; retrying");
                        std::thread::sleep(delay);
                    }
                    None => return Err(e),
                },
            }
        };
        let found = snapshot.schema();
        if found.as_ref() != &wanted {
            return Err(TableError::Schema {
                location: url.to_string(),
                detail: schema_difference(&found, &wanted),
            });
        }
        Ok(DeltaTable {
            engine,
            executor,
            root,
            latest: Mutex::new(snapshot),
            config,
        })
    }

    /// The latest snapshot; the table is created first when there is none. Several writers may
    /// create it at once (instances of a group starting together): one commit of version 0
    /// lands, the others find the table there (before or at their commit) and read it.
    fn latest_or_create(
        engine: &DefaultEngine<TokioMultiThreadExecutor>,
        url: &Url,
        wanted: &StructType,
    ) -> Result<SnapshotRef, TableError> {
        if Self::exists(engine, url)? {
            return Self::load(engine, url);
        }
        let built = create_table(url.as_str(), Arc::new(wanted.clone()), ENGINE_INFO, true)
            .build(engine, Box::new(FileSystemCommitter::new()));
        let txn = match built {
            Ok(txn) => txn,
            Err(KernelError::TableAlreadyExistsAtPath(_)) => return Self::load(engine, url),
            Err(e) => return Err(kernel_error("creating", url, e)),
        };
        match txn.commit(engine) {
            Ok(CommitResult::Committed(c)) => match c.post_commit_snapshot() {
                Some(s) => Ok(with_checksum(engine, url, s)),
                None => Self::load(engine, url),
            },
            // Another writer's version 0 landed first.
            Ok(CommitResult::Conflicted(_)) | Err(KernelError::FileAlreadyExists(_)) => {
                Self::load(engine, url)
            }
            Ok(CommitResult::Retryable(r)) => Err(kernel_error("creating", url, r.error)),
            Err(e) => Err(kernel_error("creating", url, e)),
        }
    }

    /// Whether `_delta_log/` holds anything. Asked by name first (version 0, or the pointer to
    /// the last checkpoint once log retention has deleted version 0): listing a log of
    /// thousands of commits costs more than opening the table.
    fn exists(
        engine: &DefaultEngine<TokioMultiThreadExecutor>,
        url: &Url,
    ) -> Result<bool, TableError> {
        let log = url
            .join(&format!("{LOG_DIR}/"))
            .map_err(|e| kernel_error("naming the log of", url, e.into()))?;
        let storage = engine.storage_handler();
        for name in [format!("{:020}.json", 0), "_last_checkpoint".to_string()] {
            let file = log
                .join(&name)
                .map_err(|e| kernel_error("naming the log of", url, e.into()))?;
            match storage.head(&file) {
                Ok(_) => return Ok(true),
                Err(KernelError::FileNotFound(_)) => {}
                Err(e) => return Err(kernel_error("reading the log of", url, e)),
            }
        }
        let mut listing = storage
            .list_from(&log)
            .map_err(|e| kernel_error("listing the log of", url, e))?;
        match listing.next() {
            None | Some(Err(KernelError::FileNotFound(_))) => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(kernel_error("listing the log of", url, e)),
        }
    }

    fn load(
        engine: &DefaultEngine<TokioMultiThreadExecutor>,
        url: &Url,
    ) -> Result<SnapshotRef, TableError> {
        Snapshot::builder_for(url.as_str())
            .with_incremental_crc_replay(CRC_REPLAY)
            .build(engine)
            .map_err(|e| kernel_error("reading", url, e))
    }

    /// The latest snapshot: the cached one brought up to date (reads only newer commits).
    pub fn refresh(&self) -> Result<SnapshotRef, TableError> {
        let cached = Arc::clone(&self.lock());
        // From scratch when the cached version's successors are gone (log retention run by
        // another writer while this one was idle for longer than the retention).
        let fresh = Snapshot::builder_from(cached)
            .with_incremental_crc_replay(CRC_REPLAY)
            .build(&self.engine)
            .or_else(|_| Self::load(&self.engine, &self.root.url))?;
        *self.lock() = Arc::clone(&fresh);
        Ok(fresh)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotRef> {
        // A panic while holding it leaves a valid snapshot behind.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The table version this process last saw.
    pub fn version(&self) -> u64 {
        self.lock().version()
    }

    /// The partition's application version in the latest snapshot.
    pub fn app_version(&self, topic: &str, partition: i32) -> Result<Option<i64>, TableError> {
        let snapshot = self.refresh()?;
        snapshot
            .get_app_id_version(&table::app_id(topic, partition), &self.engine)
            .map_err(|e| kernel_error("reading the transactions of", &self.root.url, e))
    }

    /// One attempt: decide on the latest snapshot and commit. `Ok(None)`: lost a race, decide
    /// again.
    fn try_publish(
        &self,
        app: &str,
        generation: u64,
        files: &[TableFile],
        partition: i32,
    ) -> Result<Option<Published>, KernelError> {
        let snapshot = Arc::clone(&self.lock());
        let current = snapshot.get_app_id_version(app, &self.engine)?;
        let add = match table::decide(files, current, generation) {
            Decision::Skip => {
                return Ok(Some(Published::Already {
                    at: current.unwrap_or(-1),
                }))
            }
            Decision::Commit(add) if add.is_empty() => {
                return Ok(Some(Published::Already {
                    at: current.unwrap_or(-1),
                }))
            }
            Decision::Commit(add) => add,
        };
        let version = i64::try_from(generation)
            .map_err(|_| KernelError::generic(format!("generation {generation} too large")))?;
        let mut txn = Arc::clone(&snapshot)
            .update_table(UpdateTableOperation::StreamingUpdate, ENGINE_INFO, true)
            .with_blind_append()
            .with_transaction_id(app, version)
            .build(&self.engine, Box::new(FileSystemCommitter::new()))?;
        let context = txn.write_state()?.write_context_builder().build()?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        for f in &add {
            let meta = self.add_metadata(f, partition, now_ms)?;
            txn.add_files(build_add_file_metadata(meta, &context)?);
        }
        match txn.commit(&self.engine)? {
            CommitResult::Committed(c) => {
                let version = c.commit_version();
                if let Some(s) = c.post_commit_snapshot() {
                    let s = with_checksum(&self.engine, &self.root.url, s);
                    let mut latest = self.lock();
                    if s.version() > latest.version() {
                        *latest = s;
                    }
                }
                self.maybe_checkpoint(version);
                Ok(Some(Published::Committed {
                    version,
                    files: add.len(),
                }))
            }
            CommitResult::Conflicted(_) => Ok(None),
            CommitResult::Retryable(r) => Err(r.error),
        }
    }

    /// An add action's metadata: the file's URL under the table, its size, and exact statistics
    /// of the columns every file knows without reading it (one partition, one window, an offset
    /// range) with the true row count.
    fn add_metadata(
        &self,
        f: &TableFile,
        partition: i32,
        now_ms: i64,
    ) -> Result<DataFileMetadata, KernelError> {
        let url = self.root.url.join(&relative_path(f))?;
        let micros = f.window.saturating_mul(1000);
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new(COLUMN_PARTITION, DataType::Int32, false),
            Field::new(COLUMN_OFFSET, DataType::Int64, false),
            Field::new(
                COLUMN_WINDOW_START,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let extremes = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![partition, partition])) as ArrayRef,
                Arc::new(Int64Array::from(vec![f.file.first, f.file.last])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![micros, micros]).with_timezone("UTC"),
                ),
            ],
        )?;
        let columns =
            [COLUMN_PARTITION, COLUMN_OFFSET, COLUMN_WINDOW_START].map(|c| ColumnName::new([c]));
        let physical = self.lock().schema();
        let stats = collect_stats(&extremes, &columns, &physical)?;
        let stats = with_num_records(stats, f.file.rows)?;
        Ok(DataFileMetadata::new(
            FileMeta::new(url, now_ms, f.file.bytes),
            stats,
        ))
    }

    /// A checkpoint at every `checkpoint_every`th version. A failed checkpoint loses nothing
    /// (the commits are the truth): it is logged and the next one is tried.
    fn maybe_checkpoint(&self, version: u64) {
        let every = self.config.checkpoint_every;
        if every == 0 || version == 0 || version % every != 0 {
            return;
        }
        let snapshot = Arc::clone(&self.lock());
        if snapshot.version() != version {
            return; // a newer commit; its own writer checkpoints at its turn
        }
        let started = Instant::now();
        match snapshot.checkpoint(&self.engine, None) {
            Ok((_, s)) => {
                tracing::info!(
                    table = %self.root.url,
                    version,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Wrote a Delta checkpoint"
                );
                let retention = self
                    .config
                    .log_retention
                    .or(s.table_properties().log_retention_duration)
                    .unwrap_or(DEFAULT_LOG_RETENTION);
                {
                    let mut latest = self.lock();
                    if s.version() >= latest.version() {
                        *latest = s;
                    }
                }
                if let Err(e) = self.clean_log(retention) {
                    tracing::warn!(table = %self.root.url, error = %e,
                        "Could not delete expired log files (the table is unaffected); the next checkpoint tries again");
                }
            }
            Err(e) => tracing::warn!(
                table = %self.root.url,
                version,
                error = %e,
                "Could not write a Delta checkpoint (readers read the commits instead); the next one is tried at version {}",
                version + every
            ),
        }
    }
}

/// Writes the version checksum (`<version>.crc`) of a snapshot this process just committed:
/// protocol, metadata, file counts and every application's `txn` version in one small JSON
/// file, which the next open reads instead of the checkpoint (whose size grows with the
/// table's files). It is computed in memory from the previous version's checksum and the
/// commit. A failure loses nothing (the commits are the truth; readers then replay from the
/// checkpoint): it is logged.
fn with_checksum(
    engine: &DefaultEngine<TokioMultiThreadExecutor>,
    url: &Url,
    snapshot: &SnapshotRef,
) -> SnapshotRef {
    match snapshot.write_checksum(engine) {
        Ok((_, with_crc)) => with_crc,
        Err(e) => {
            tracing::warn!(table = %url, version = snapshot.version(), error = %e,
                "Could not write the Delta version checksum (the table is unaffected; the next open replays the log from the checkpoint)");
            Arc::clone(snapshot)
        }
    }
}

/// Delta's default `delta.logRetentionDuration`.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A file of `_delta_log/` (not of its subdirectories), by its name: the one parser of log
/// names, for log retention and `app inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogName {
    /// `<version>.json`.
    Commit(u64),
    /// `<version>.crc`.
    Checksum(u64),
    /// `<version>.checkpoint.parquet`, multi-part `<version>.checkpoint.<i>.<n>.parquet`, or
    /// V2 `<version>.checkpoint.<uuid>.{json,parquet}`.
    Checkpoint(u64),
}

impl LogName {
    pub fn version(self) -> u64 {
        match self {
            LogName::Commit(v) | LogName::Checksum(v) | LogName::Checkpoint(v) => v,
        }
    }
}

/// Parses a name in `_delta_log/`; `_last_checkpoint`, compacted logs and anything else are
/// `None`.
pub fn log_name(name: &str) -> Option<LogName> {
    let (digits, rest) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version = digits.parse().ok()?;
    match rest {
        ".json" => Some(LogName::Commit(version)),
        ".crc" => Some(LogName::Checksum(version)),
        _ if rest.starts_with(".checkpoint.")
            && (rest.ends_with(".parquet") || rest.ends_with(".json")) =>
        {
            Some(LogName::Checkpoint(version))
        }
        _ => None,
    }
}

/// What log retention deletes (the Delta protocol's rule, as Spark applies it): among the
/// checkpoints older than the cutoff, the newest one is kept and everything of an older
/// version goes (commits, checkpoints, checksums); nothing newer than that checkpoint, and
/// nothing when no checkpoint is that old. Besides, a version checksum older than the newest
/// checkpoint goes whatever its age: an open reads the newest checksum only, and a reader
/// that finds none for an older version replays its commits as it would without checksums
/// (one file per commit, not two, is what listing the log costs). `files` are (name,
/// modified ms).
pub fn expired_log_files(files: &[(String, i64)], cutoff_ms: i64) -> Vec<String> {
    let newest_checkpoint = |expired_only: bool| {
        files
            .iter()
            .filter(|(_, modified)| !expired_only || *modified < cutoff_ms)
            .filter_map(|(name, _)| match log_name(name) {
                Some(LogName::Checkpoint(v)) => Some(v),
                _ => None,
            })
            .max()
    };
    let keep_from = newest_checkpoint(true);
    let checksums_from = newest_checkpoint(false);
    files
        .iter()
        .filter(|(name, _)| match log_name(name) {
            Some(LogName::Checksum(v)) => checksums_from.is_some_and(|c| v < c),
            Some(n) => keep_from.is_some_and(|k| n.version() < k),
            None => false,
        })
        .map(|(name, _)| name.clone())
        .collect()
}

impl DeltaTable {
    /// Deletes the log files log retention lets go ([`expired_log_files`]): opening the table
    /// never needed them (a newer checkpoint holds their state), only time travel to versions
    /// older than the retention would.
    fn clean_log(&self, retention: Duration) -> Result<usize, KernelError> {
        let log = self.root.url.join(&format!("{LOG_DIR}/"))?;
        let files: Vec<(String, i64)> = self
            .engine
            .storage_handler()
            .list_from(&log)?
            .filter_map(|f| {
                let f = f.ok()?;
                let name = f.location.path_segments()?.next_back()?.to_string();
                Some((name, f.last_modified))
            })
            .collect();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(retention_ms);
        let expired = expired_log_files(&files, cutoff);
        let base = delta_kernel::object_store::path::Path::from_url_path(log.path())
            .map_err(|e| KernelError::generic(e.to_string()))?;
        for name in &expired {
            let (store, path) = (
                Arc::clone(&self.root.store),
                base.clone().join(name.as_str()),
            );
            self.executor
                .block_on(async move { store.delete(&path).await })
                .map_err(|e| KernelError::generic(format!("deleting {name}: {e}")))?;
        }
        if !expired.is_empty() {
            tracing::info!(table = %self.root.url, deleted = expired.len(), "Deleted log files past the log retention");
        }
        Ok(expired.len())
    }
}

impl TableCommitter for DeltaTable {
    fn describe(&self) -> String {
        format!("the Delta table at {}", self.root.url)
    }

    fn publish(
        &self,
        topic: &str,
        partition: i32,
        generation: u64,
        files: &[TableFile],
    ) -> Result<Published, TableError> {
        let app = table::app_id(topic, partition);
        let mut backoff = PUBLISH_RETRY
            .with_deadline(self.config.retry_timeout)
            .backoff();
        let started = Instant::now();
        loop {
            let attempt = self
                .refresh()
                .map_err(|e| KernelError::generic(e.to_string()))
                .and_then(|_| self.try_publish(&app, generation, files, partition));
            match attempt {
                Ok(Some(done)) => return Ok(done),
                // Lost a race for the next version: decide again on the new snapshot.
                Ok(None) => continue,
                Err(e) => match backoff.next_delay(started.elapsed()) {
                    Some(delay) => {
                        tracing::warn!(
                            table = %self.root.url,
                            partition,
                            generation,
                            error = %e,
                            retry_in_ms = delay.as_millis() as u64,
                            "Committing to the Delta table failed; retrying"
                        );
                        std::thread::sleep(delay);
                    }
                    None => return Err(kernel_error("committing to", &self.root.url, e)),
                },
            }
        }
    }
}

/// The add action's path: relative to the table root, URL-encoded (the window directory's `:`
/// as `%3A`, so no reader takes `window=…T14` for a URI scheme).
pub fn relative_path(f: &TableFile) -> String {
    let dir = layout::window_dir(f.window).replace(':', "%3A");
    format!("{dir}/{}", f.file.name)
}

/// `stats` with `numRecords` set to `rows` (the statistics were collected from two rows of
/// extremes).
fn with_num_records(stats: StructArray, rows: u64) -> Result<StructArray, KernelError> {
    let (fields, mut columns, nulls) = stats.into_parts();
    let rows = i64::try_from(rows).map_err(|_| KernelError::generic("row count too large"))?;
    if let Some(i) = fields.iter().position(|f| f.name() == "numRecords") {
        columns[i] = Arc::new(Int64Array::from(vec![rows]));
    }
    StructArray::try_new(fields, columns, nulls).map_err(KernelError::from)
}

/// A short description of how two schemas differ, for the error.
fn schema_difference(found: &StructType, wanted: &StructType) -> String {
    let names = |s: &StructType| -> Vec<String> {
        s.fields()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect()
    };
    let (found, wanted) = (names(found), names(wanted));
    let missing: Vec<_> = wanted.iter().filter(|c| !found.contains(c)).collect();
    let extra: Vec<_> = found.iter().filter(|c| !wanted.contains(c)).collect();
    format!("the table lacks {missing:?} and has {extra:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::FileRef;
    use crate::output::store::{LocalStore, Store as _};
    use std::sync::Barrier;

    fn schema() -> ArrowSchema {
        let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        ArrowSchema::new(vec![
            Field::new("value", DataType::Utf8, true),
            Field::new(COLUMN_PARTITION, DataType::Int32, false),
            Field::new(COLUMN_OFFSET, DataType::Int64, false),
            Field::new(COLUMN_WINDOW_START, utc(), false),
        ])
    }

    fn file(partition: i32, generation: u64) -> TableFile {
        let first = generation as i64 * 10;
        TableFile {
            generation,
            window: 1_796_515_200_000,
            file: FileRef {
                name: format!(
                    "part-{partition}-{first}-{}-0000000{partition}.parquet",
                    first + 9
                ),
                first,
                last: first + 9,
                rows: 10,
                bytes: 1_000,
            },
        }
    }

    /// The adds of every commit on disk, by path, and the commits' count.
    fn adds(dir: &std::path::Path) -> (BTreeMap<String, usize>, usize) {
        let mut adds = BTreeMap::new();
        let mut commits = 0;
        for entry in std::fs::read_dir(dir.join(LOG_DIR)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                commits += 1;
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let action: serde_json::Value = serde_json::from_str(line).unwrap();
                    if let Some(p) = action["add"]["path"].as_str() {
                        *adds.entry(p.to_string()).or_default() += 1;
                    }
                }
            }
        }
        (adds, commits)
    }

    use std::collections::BTreeMap;

    /// Opens (or creates) the table and publishes generations 1..=`generations` of partitions
    /// 0 and 1, one file each.
    fn publish_generations(root: &TableRoot, config: &DeltaConfig, generations: u64) {
        let table = DeltaTable::open_or_create(root.clone(), &schema(), config.clone()).unwrap();
        for g in 1..=generations {
            for p in 0..2 {
                table.publish("t", p, g, &[file(p, g)]).unwrap();
            }
        }
    }

    /// The names in `_delta_log/`.
    fn log_names(log: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Writers that start together on a new output: one creates the table, every one opens it;
    /// then they publish concurrently on the real file system (each lost race for a version is
    /// rebuilt): every file lands once, every partition's version is its last generation.
    #[test]
    fn many_writers_create_and_publish_to_one_table_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalStore::new(dir.path()).table_root().unwrap();
        const WRITERS: usize = 6;
        const PUBLISHES: u64 = 8;
        let barrier = Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (root, barrier) = (root.clone(), &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let table = DeltaTable::open_or_create(root, &schema(), DeltaConfig::default())
                        .unwrap();
                    let partition = w as i32;
                    for g in 1..=PUBLISHES {
                        let done = table
                            .publish("t", partition, g, &[file(partition, g)])
                            .unwrap();
                        assert!(matches!(done, Published::Committed { files: 1, .. }));
                    }
                    // A late publish of an earlier generation adds nothing.
                    let late = table
                        .publish("t", partition, 3, &[file(partition, 3)])
                        .unwrap();
                    assert_eq!(
                        late,
                        Published::Already {
                            at: PUBLISHES as i64
                        }
                    );
                });
            }
        });
        let (adds, commits) = adds(dir.path());
        assert_eq!(
            commits,
            1 + WRITERS * PUBLISHES as usize,
            "one create, one commit per publish"
        );
        assert_eq!(adds.len(), WRITERS * PUBLISHES as usize);
        assert!(adds.values().all(|&n| n == 1), "{adds:?}");
        let table = DeltaTable::open_or_create(root, &schema(), DeltaConfig::default()).unwrap();
        for p in 0..WRITERS as i32 {
            assert_eq!(table.app_version("t", p).unwrap(), Some(PUBLISHES as i64));
        }
        // Checkpoints were written along the way (every 100 versions: not reached) and the
        // add paths encode the window directory's colons.
        assert!(adds
            .keys()
            .all(|p| p.starts_with("window=") && p.contains("%3A")));
    }

    /// Every commit leaves its version checksum, with every partition's `txn` version and the
    /// table's file count (those older than the newest checkpoint are deleted with it); a
    /// restart opens from the newest: with the checkpoint's Parquet made
    /// unreadable, the table still opens and answers every partition's version, which it could
    /// not if it read the checkpoint (whose size grows with the table's files).
    #[test]
    fn commits_write_version_checksums_and_an_open_reads_them_not_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalStore::new(dir.path()).table_root().unwrap();
        let config = DeltaConfig {
            checkpoint_every: 4,
            ..DeltaConfig::default()
        };
        publish_generations(&root, &config, 3);
        let log = dir.path().join(LOG_DIR);
        let names = log_names(&log);
        // Every version's checksum was written; the checkpoint at 4 let those before it go.
        for v in 0..=6u64 {
            assert_eq!(
                names.contains(&format!("{v:020}.crc")),
                v >= 4,
                "checksum of version {v}: {names:?}"
            );
        }
        let crc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(log.join(format!("{:020}.crc", 6))).unwrap(),
        )
        .unwrap();
        assert_eq!(crc["numFiles"], 6, "{crc}");
        let txns = crc["setTransactions"].as_array().expect("setTransactions");
        assert_eq!(txns.len(), 2, "{crc}");
        assert!(txns.iter().all(|t| t["version"] == 3), "{crc}");
        let checkpoint = log.join(format!("{:020}.checkpoint.parquet", 4));
        assert!(checkpoint.exists(), "{names:?}");
        std::fs::write(&checkpoint, b"not parquet").unwrap();
        let reopened = DeltaTable::open_or_create(root, &schema(), config).unwrap();
        assert_eq!(reopened.version(), 6);
        for p in 0..2 {
            assert_eq!(reopened.app_version("t", p).unwrap(), Some(3));
        }
    }

    #[test]
    fn log_retention_keeps_the_newest_expired_checkpoint_and_everything_after_it() {
        let name = |v: u64, suffix: &str| format!("{v:020}{suffix}");
        let files = vec![
            (name(0, ".json"), 10),
            (name(1, ".json"), 20),
            (name(1, ".crc"), 20),
            (name(2, ".json"), 30),
            (name(2, ".checkpoint.parquet"), 31),
            (name(3, ".json"), 40),
            (name(3, ".crc"), 40),
            (name(4, ".json"), 50),
            (name(4, ".checkpoint.parquet"), 51),
            (name(4, ".crc"), 51),
            (name(5, ".json"), 60),
            ("_last_checkpoint".to_string(), 61),
        ];
        // No checkpoint older than the cutoff: only the checksums older than the newest
        // checkpoint go.
        assert_eq!(
            expired_log_files(&files, 31),
            vec![name(1, ".crc"), name(3, ".crc")]
        );
        // Checkpoint 2 is past the retention: what is older than version 2 goes.
        assert_eq!(
            expired_log_files(&files, 45),
            vec![
                name(0, ".json"),
                name(1, ".json"),
                name(1, ".crc"),
                name(3, ".crc")
            ]
        );
        // Both are: checkpoint 4 is the one kept, with version 4 and 5.
        let expired = expired_log_files(&files, 1_000);
        assert_eq!(expired.len(), 7, "{expired:?}");
        assert!(expired.iter().all(|n| n < &name(4, "")), "{expired:?}");
    }

    /// With a retention of zero, every checkpoint deletes the log before it: the table still
    /// opens, from the checkpoint, with every partition's version.
    #[test]
    fn expired_log_files_are_deleted_and_the_table_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalStore::new(dir.path()).table_root().unwrap();
        let config = DeltaConfig {
            checkpoint_every: 3,
            log_retention: Some(Duration::ZERO),
            ..DeltaConfig::default()
        };
        publish_generations(&root, &config, 7);
        let log = dir.path().join(LOG_DIR);
        let names = log_names(&log);
        // 15 versions (0 and 14 publishes), checkpoints at 3, 6, 9, 12: only 12 on remain.
        assert!(
            !names.iter().any(|n| n.starts_with(&format!("{:020}", 11))),
            "{names:?}"
        );
        assert!(names.contains(&format!("{:020}.json", 12)), "{names:?}");
        assert!(names.contains(&format!("{:020}.json", 14)), "{names:?}");
        let reopened = DeltaTable::open_or_create(root, &schema(), config).unwrap();
        assert_eq!(reopened.version(), 14);
        for p in 0..2 {
            assert_eq!(reopened.app_version("t", p).unwrap(), Some(7));
        }
    }

    #[test]
    fn a_table_with_another_schema_is_refused_with_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalStore::new(dir.path()).table_root().unwrap();
        DeltaTable::open_or_create(root.clone(), &schema(), DeltaConfig::default()).unwrap();
        let mut fields: Vec<Field> = schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("extra", DataType::Int64, true));
        let other = ArrowSchema::new(fields);
        let e = DeltaTable::open_or_create(root, &other, DeltaConfig::default()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TableError::Schema { .. }), "{text}");
        assert!(
            text.contains("extra") && text.contains("--table none"),
            "{text}"
        );
    }
}
