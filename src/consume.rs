//! `app consume`: Kafka -> decode -> enrich -> event-time windows -> Parquet, exactly once.
//!
//! ```text
//!  fetcher task per partition ──(bounded mpsc: Fetched)──▶ processor (one task, owns all state)
//!    retries with backoff,                                   decode (schema) ─▶ dead letters
//!    OffsetOutOfRange policy                                 enrich (cached map snapshot)
//!                                                            route ─▶ WindowBuffer | late buffer
//!                                                            close on watermark ─▶ ParquetSink
//!                                                            (spawn_blocking) ─▶ checkpoint commit
//! ```
//!
//! Exactly once rests on the marks and resume offsets of [`crate::checkpoint`] (its module docs
//! hold the argument). One extra rule lives here: after a restart, no window closes until every
//! partition has re-read up to the `next_offset` it had at the checkpoint ("replay"). During
//! replay the consumer is in exactly the state the checkpoint captured, so every replayed record
//! takes the same route it took before the crash, and the marks decide correctly whether it
//! was already written.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::checkpoint::{
    self, Checkpoint, CheckpointConfig, CheckpointError, CheckpointStore, Destination, Marks,
    OutputScope,
};
use crate::enrich::{
    EnrichConfig, EnrichError, EnrichOutcome, EnrichmentCache, MySqlSource, OnMiss,
};
use crate::kafka::{Kafka, KafkaConfig, KafkaError, PartitionHandle};
use crate::metrics::{BusyClocks, ConsumeMetrics, Health, Heartbeat, MetricsError, Output, Probe};
use crate::parquet_sink::{OutputLayout, ParquetSink, SinkConfig, SinkError, WrittenFile};
use crate::row::{DeadLetter, OutputRow};
use crate::schema::{FieldType, Schema, Value};
use crate::window::{self, Routed, Watermarks, WindowBuffer, WindowConfig};

/// Errors that stop the consumer. Committed output stays valid; a restart resumes.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Enrich(#[from] EnrichError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{0}")]
    Config(String),
    #[error(
        "draining did not finish within --drain-timeout {0:?}; nothing committed is lost, a restart \
         resumes from the last checkpoint"
    )]
    DrainTimeout(Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where to start a partition that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    Earliest,
    Latest,
}

/// What to do with a record whose window already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatePolicy {
    /// Write it to `output/_late/`.
    SideOutput,
    /// Count it and drop it.
    Drop,
}

/// What to do when the checkpoint's offset was deleted by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataLossPolicy {
    Fail,
    Earliest,
}

/// Everything `app consume` needs.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub output: PathBuf,
    /// Default: `<output>/_checkpoint`.
    pub checkpoint_dir: Option<PathBuf>,
    /// `None` = every partition of the topic.
    pub partitions: Option<Vec<i32>>,
    pub start: StartAt,
    pub until_caught_up: bool,
    pub schema: Arc<Schema>,
    /// Take event time from this field instead of the Kafka timestamp.
    pub event_time_field: Option<String>,
    pub window: WindowConfig,
    pub late: LatePolicy,
    pub enrich: EnrichConfig,
    pub join_field: String,
    pub on_miss: OnMiss,
    pub sink: SinkConfig,
    pub max_buffer_bytes: usize,
    pub checkpoint_interval: Duration,
    pub drain_timeout: Duration,
    pub on_data_loss: DataLossPolicy,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    /// How often a progress line is logged (without `progress_bar`).
    pub status_interval: Duration,
    /// A live status line on the terminal instead of periodic progress log lines.
    pub progress_bar: bool,
    /// Serve `/metrics` and `/healthz` on this HOST:PORT.
    pub metrics_addr: Option<String>,
}

/// What a consume run did.
#[derive(Debug, Clone, Default)]
pub struct ConsumeSummary {
    pub records_read: u64,
    pub rows_written: u64,
    pub windows_closed: u64,
    pub windows_flushed_open: u64,
    pub late_rows: u64,
    pub late_dropped: u64,
    pub dead_letters: u64,
    pub enrich_hits: u64,
    pub enrich_misses: u64,
    pub miss_dropped: u64,
    pub replay_skipped: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub checkpoints: u64,
    pub refresh_failures: u64,
    pub elapsed: Duration,
    pub output: PathBuf,
    pub partitions: Vec<i32>,
    pub resumed_from_checkpoint: bool,
}

impl ConsumeSummary {
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "consume summary: partitions {:?}{}\n  records read: {}\n  rows written: {} in {} files ({:.1} MB)\n  windows closed (_SUCCESS): {}, windows written while still open: {}\n  enrichment: {} hits, {} misses{}, {} refresh failures\n  late rows: {} to _late{}\n  dead letters: {} to _dead_letter\n  replayed and skipped (already written): {}\n  checkpoints committed: {}\n  time: {:.2} s, {:.0} records/s\n  output: {}\n",
            self.partitions,
            if self.resumed_from_checkpoint { " (resumed from checkpoint)" } else { "" },
            self.records_read,
            self.rows_written,
            self.files_written,
            self.bytes_written as f64 / 1e6,
            self.windows_closed,
            self.windows_flushed_open,
            self.enrich_hits,
            self.enrich_misses,
            if self.miss_dropped > 0 { format!(" ({} dropped)", self.miss_dropped) } else { String::new() },
            self.refresh_failures,
            self.late_rows,
            if self.late_dropped > 0 { format!(", {} dropped", self.late_dropped) } else { String::new() },
            self.dead_letters,
            self.replay_skipped,
            self.checkpoints,
            secs,
            self.records_read as f64 / secs.max(1e-9),
            self.output.display()
        )
    }
}

/// One fetch result handed from a fetcher to the processor.
enum Fetched {
    Records {
        partition: i32,
        records: Vec<rskafka::record::RecordAndOffset>,
        high_watermark: i64,
    },
    /// The partition was read to its end (`--until-caught-up`): no more messages from it.
    CaughtUp {
        partition: i32,
    },
    Failed(KafkaError),
}

/// Runs the consumer until `shutdown` resolves or, with `until_caught_up`, every partition is
/// read to its end. Both paths write everything buffered and commit.
pub async fn run(
    config: ConsumeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeSummary, ConsumeError> {
    let started = StdInstant::now();
    config
        .window
        .validate()
        .map_err(|e| ConsumeError::Config(e.to_string()))?;
    // Bound first: a taken address fails before anything else happens.
    let (registry, endpoint) = crate::metrics::start(config.metrics_addr.as_deref()).await?;
    let schema = Arc::clone(&config.schema);
    let join_index = schema
        .fields
        .iter()
        .position(|f| f.name == config.join_field)
        .ok_or_else(|| {
            ConsumeError::Config(format!(
                "--join-field `{}` is not a field of the schema `{}` (fields: {})",
                config.join_field,
                schema.name,
                field_names(&schema)
            ))
        })?;
    let event_time_index = match &config.event_time_field {
        None => None,
        Some(name) => {
            let i = schema
                .fields
                .iter()
                .position(|f| &f.name == name)
                .ok_or_else(|| {
                    ConsumeError::Config(format!(
                        "--event-time-field `{name}` is not a field of the schema (fields: {})",
                        field_names(&schema)
                    ))
                })?;
            if !matches!(
                schema.fields[i].ty,
                FieldType::Timestamp { .. } | FieldType::Date { .. }
            ) {
                return Err(ConsumeError::Config(format!(
                    "--event-time-field `{name}` must be a timestamp or date field"
                )));
            }
            Some(i)
        }
    };

    // Kafka first (cheap to check), then the enrichment table (may retry for --mysql-timeout).
    let kafka = Kafka::connect(config.kafka.clone()).await?;
    let partition_count =
        kafka
            .partition_count(&config.topic)
            .await?
            .ok_or_else(|| KafkaError::NoSuchTopic {
                topic: config.topic.clone(),
                brokers: config.kafka.brokers.clone(),
            })?;
    let assigned: BTreeSet<i32> = match &config.partitions {
        None => (0..partition_count as i32).collect(),
        Some(list) => {
            for p in list {
                if *p < 0 || *p as usize >= partition_count {
                    return Err(ConsumeError::Config(format!(
                        "--partitions: topic `{}` has partitions 0..{} but {p} was asked for",
                        config.topic,
                        partition_count - 1
                    )));
                }
            }
            list.iter().copied().collect()
        }
    };
    let all_partitions = config.partitions.is_none();

    let (stop_tx, stop_rx) = watch::channel(false);
    let source = MySqlSource::new(&config.enrich)?;
    let (cache, refresh_task) =
        EnrichmentCache::start(source, config.enrich.clone(), stop_rx.clone()).await?;
    let enrichment_columns = cache.snapshot().table().columns.clone();
    let metrics = ConsumeMetrics::new(&registry, assigned.iter().copied());
    let probe = Arc::new(ConsumeProbe::new(
        &config,
        &assigned,
        cache.clone(),
        &metrics,
    ));
    let layout = OutputLayout::new(&schema, &enrichment_columns)?;
    let sink = Arc::new(ParquetSink::new(layout, config.sink.clone()));

    // Checkpoint and recovery of the output directory.
    let checkpoint_config = match &config.checkpoint_dir {
        Some(dir) => CheckpointConfig { dir: dir.clone() },
        None => CheckpointConfig::under_output(&config.output),
    };
    let store_name = if all_partitions {
        checkpoint::DEFAULT_CHECKPOINT_NAME.to_string()
    } else {
        CheckpointStore::name_for_partitions(&assigned)
    };
    checkpoint::refuse_orphaned_output(
        &OutputScope::new(&config.output, assigned.clone()),
        &checkpoint_config.dir,
    )?;
    let (store, loaded) = CheckpointStore::open(
        &checkpoint_config,
        &store_name,
        &config.topic,
        config.window.window_ms,
    )?;
    let mut scope = OutputScope::new(&config.output, assigned.clone());
    if !all_partitions {
        scope.success_marker = format!("{}-{}", checkpoint::SUCCESS_MARKER, store_name);
    }
    let recovery = checkpoint::recover_output(&scope, loaded.as_ref())?;
    if !recovery.is_clean() {
        tracing::warn!(
            temp_removed = recovery.temp_files_removed.len(),
            uncommitted_removed = recovery.uncommitted_files_removed.len(),
            markers_removed = recovery.success_markers_removed.len(),
            markers_created = recovery.success_markers_created.len(),
            "Recovered the output directory to the last checkpoint"
        );
    }

    // Start offsets: the checkpoint's, else --start.
    let mut handles = BTreeMap::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut replay_until: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &assigned {
        let handle = PartitionHandle {
            config: config.kafka.clone(),
            topic: config.topic.clone(),
            partition: p,
            client: kafka.partition(&config.topic, p).await?,
        };
        let (earliest, latest) = handle.offsets().await?;
        let start = match loaded.as_ref().and_then(|c| c.partitions.get(&p)) {
            Some(state) => {
                if state.resume_offset < earliest {
                    match config.on_data_loss {
                        DataLossPolicy::Fail => {
                            return Err(KafkaError::OffsetOutOfRange {
                                topic: config.topic.clone(),
                                partition: p,
                                requested: state.resume_offset,
                                earliest,
                                latest,
                            }
                            .into())
                        }
                        DataLossPolicy::Earliest => {
                            tracing::error!(
                                partition = p,
                                resume = state.resume_offset,
                                earliest,
                                lost = earliest - state.resume_offset,
                                "Data deleted by retention; continuing from earliest (--on-data-loss earliest)"
                            );
                            earliest
                        }
                    }
                } else {
                    state.resume_offset
                }
            }
            None => match config.start {
                StartAt::Earliest => earliest,
                StartAt::Latest => latest,
            },
        };
        if let Some(state) = loaded.as_ref().and_then(|c| c.partitions.get(&p)) {
            replay_until.insert(p, state.next_offset.max(start));
        }
        next_offsets.insert(p, start);
        handles.insert(p, handle);
    }
    tracing::info!(
        topic = %config.topic,
        partitions = ?assigned,
        start = ?next_offsets,
        checkpoint = loaded.is_some(),
        output = %config.output.display(),
        "Consuming"
    );

    let now = Instant::now();
    let (buffer, watermarks, marks) = match &loaded {
        Some(cp) => (
            WindowBuffer::restore(
                &config.window,
                cp.closed_before,
                cp.open_windows.iter().copied(),
            ),
            Watermarks::restore(&config.window, cp.watermark_maxima(), now),
            cp.parsed_marks(&checkpoint_config.dir)?,
        ),
        None => (
            WindowBuffer::new(&config.window, i64::MIN),
            Watermarks::new(&config.window, assigned.iter().copied(), now),
            Marks::new(),
        ),
    };

    // Fetchers.
    // Two fetches in hand per partition keep the processor busy; more only holds decompressed
    // records outside --max-buffer-bytes (measured: 32 slots cost ~600 MB on a backlog).
    let (fetch_tx, fetch_rx) = mpsc::channel::<Fetched>((2 * handles.len()).max(4));
    let mut fetchers = JoinSet::new();
    if let Some(endpoint) = &endpoint {
        endpoint.set_probe(Arc::clone(&probe) as Arc<dyn Probe>);
    }
    for (slot, (&p, handle)) in handles.iter().enumerate() {
        fetchers.spawn(fetch_partition(FetchJob {
            probe: Arc::clone(&probe),
            slot,
            handle: handle.clone(),
            offset: next_offsets[&p],
            max_bytes: config.fetch_max_bytes,
            max_wait: config.fetch_max_wait,
            until_caught_up: config.until_caught_up,
            on_data_loss: config.on_data_loss,
            tx: fetch_tx.clone(),
            stop: stop_rx.clone(),
        }));
    }
    drop(fetch_tx);

    let mut processor = Processor {
        config: &config,
        schema: Arc::clone(&schema),
        join_index,
        event_time_index,
        cache: cache.clone(),
        sink,
        store,
        scope,
        buffer,
        watermarks,
        marks,
        next_offsets,
        replay_until,
        high_watermarks: BTreeMap::new(),
        late: BTreeMap::new(),
        late_bytes: 0,
        dead: BTreeMap::new(),
        dead_bytes: 0,
        pending_success: Vec::new(),
        dirty: false,
        summary: ConsumeSummary {
            output: config.output.clone(),
            partitions: assigned.iter().copied().collect(),
            resumed_from_checkpoint: loaded.is_some(),
            ..Default::default()
        },
        last_commit: Instant::now(),
        last_status: Instant::now(),
        status_rows: 0,
        metrics,
        published: Counts::default(),
        probe: Arc::clone(&probe),
        spinner: config.progress_bar.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }),
    };
    let outcome = processor
        .run(fetch_rx, assigned.len(), shutdown, &stop_tx)
        .await;
    if let Some(bar) = processor.spinner.take() {
        bar.finish_and_clear();
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = fetchers.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "A fetcher task failed");
        }
    }
    let _ = refresh_task.await;
    outcome?;
    let stats = cache.stats();
    let mut summary = processor.summary;
    summary.enrich_hits = stats.hits;
    summary.enrich_misses = stats.misses;
    summary.refresh_failures = stats.refresh_failures;
    summary.elapsed = started.elapsed();
    drop(endpoint);
    Ok(summary)
}

fn field_names(schema: &Schema) -> String {
    schema
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

struct FetchJob {
    probe: Arc<ConsumeProbe>,
    /// This fetcher's slot in `probe.fetch`.
    slot: usize,
    handle: PartitionHandle,
    offset: i64,
    max_bytes: i32,
    max_wait: Duration,
    until_caught_up: bool,
    on_data_loss: DataLossPolicy,
    tx: mpsc::Sender<Fetched>,
    stop: watch::Receiver<bool>,
}

/// Fetches one partition in offset order until stopped (or caught up). A failed fetch is retried
/// from the same offset with backoff; only `OffsetOutOfRange` under `--on-data-loss fail` ends it.
/// `/healthz` watches how long a fetch has gone without success (see [`ConsumeProbe`]).
async fn fetch_partition(job: FetchJob) {
    let (probe, slot) = (Arc::clone(&job.probe), job.slot);
    fetch_loop(job).await;
    probe.fetch.end(slot);
}

async fn fetch_loop(mut job: FetchJob) {
    let partition = job.handle.partition;
    let max_wait_ms = i32::try_from(job.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *job.stop.borrow() {
            return;
        }
        job.probe.fetch.begin(job.slot);
        let result = tokio::select! {
            r = job.handle.fetch(job.offset, job.max_bytes, max_wait_ms) => r,
            _ = job.stop.changed() => return,
        };
        match result {
            Ok((records, high_watermark)) => {
                // Waiting on a full channel below is backpressure, not a stuck broker.
                job.probe.fetch.end(job.slot);
                backoff = Duration::from_millis(100);
                if let Some(last) = records.last() {
                    job.offset = last.offset + 1;
                    let msg = Fetched::Records {
                        partition,
                        records,
                        high_watermark,
                    };
                    // Awaiting a full channel is the backpressure on fetching.
                    tokio::select! {
                        sent = job.tx.send(msg) => if sent.is_err() { return },
                        _ = job.stop.changed() => return,
                    }
                }
                if job.until_caught_up && job.offset >= high_watermark {
                    let _ = job.tx.send(Fetched::CaughtUp { partition }).await;
                    return;
                }
            }
            Err(KafkaError::OffsetOutOfRange {
                earliest,
                requested,
                ..
            }) if job.on_data_loss == DataLossPolicy::Earliest && requested < earliest => {
                tracing::error!(
                    partition,
                    requested,
                    earliest,
                    lost = earliest - requested,
                    "Data deleted by retention; continuing from earliest (--on-data-loss earliest)"
                );
                job.offset = earliest;
            }
            Err(e @ KafkaError::OffsetOutOfRange { .. }) => {
                let _ = job.tx.send(Fetched::Failed(e)).await;
                return;
            }
            Err(e) => {
                tracing::warn!(partition, offset = job.offset, error = %e, retry_in = ?backoff, "Fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = job.stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The single owner of windows, buffers, marks and the checkpoint.
struct Processor<'a> {
    config: &'a ConsumeConfig,
    schema: Arc<Schema>,
    join_index: usize,
    event_time_index: Option<usize>,
    cache: EnrichmentCache,
    sink: Arc<ParquetSink>,
    store: CheckpointStore,
    scope: OutputScope,
    buffer: WindowBuffer,
    watermarks: Watermarks,
    marks: Marks,
    /// Per partition, the lowest offset not yet routed.
    next_offsets: BTreeMap<i32, i64>,
    /// Per partition, the `next_offset` of the checkpoint we resumed from; no window closes
    /// before every partition reached it (see module docs). Entries are removed when reached.
    replay_until: BTreeMap<i32, i64>,
    high_watermarks: BTreeMap<i32, i64>,
    /// Late rows by (their window start, partition): each late window has its own marks.
    late: BTreeMap<(i64, i32), Vec<OutputRow>>,
    late_bytes: usize,
    dead: BTreeMap<i32, Vec<DeadLetter>>,
    dead_bytes: usize,
    /// Window directories that get their success marker after the next commit.
    pending_success: Vec<PathBuf>,
    /// Something changed since the last commit.
    dirty: bool,
    summary: ConsumeSummary,
    last_commit: Instant,
    last_status: Instant,
    status_rows: u64,
    metrics: ConsumeMetrics,
    /// The summary counts already added to the metrics counters.
    published: Counts,
    probe: Arc<ConsumeProbe>,
    /// The live status line (stderr is a terminal).
    spinner: Option<indicatif::ProgressBar>,
}

/// Summary counters mirrored into metrics counters (by difference, once per batch or tick).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    records_read: u64,
    late_rows: u64,
    late_dropped: u64,
    dead_letters: u64,
    replay_skipped: u64,
    miss_dropped: u64,
    windows_closed: u64,
    windows_flushed_open: u64,
}

impl Counts {
    fn of(s: &ConsumeSummary) -> Self {
        Counts {
            records_read: s.records_read,
            late_rows: s.late_rows,
            late_dropped: s.late_dropped,
            dead_letters: s.dead_letters,
            replay_skipped: s.replay_skipped,
            miss_dropped: s.miss_dropped,
            windows_closed: s.windows_closed,
            windows_flushed_open: s.windows_flushed_open,
        }
    }
}

/// What `/healthz` and the scrape-time metrics of `app consume` look at.
///
/// Unhealthy (503) when:
/// - a partition's fetch has gone without success for longer than `fetch_bound`
///   (3 × `--timeout` + `--fetch-max-wait`): the broker is down or unreachable. A fetcher waiting
///   on the processor (backpressure) is not counted;
/// - the processor loop has not turned for longer than `processor_bound` (3 × `--timeout`, at
///   least 60 s): a write or commit is stuck;
/// - the consumer is shutting down (draining).
struct ConsumeProbe {
    partitions: Vec<i32>,
    brokers: String,
    fetch: BusyClocks,
    processor: Heartbeat,
    fetch_bound: Duration,
    processor_bound: Duration,
    stopping: std::sync::atomic::AtomicBool,
    cache: EnrichmentCache,
    metrics: ConsumeMetrics,
}

impl ConsumeProbe {
    fn new(
        config: &ConsumeConfig,
        assigned: &BTreeSet<i32>,
        cache: EnrichmentCache,
        metrics: &ConsumeMetrics,
    ) -> Self {
        let timeout = config.kafka.timeout;
        ConsumeProbe {
            partitions: assigned.iter().copied().collect(),
            brokers: config.kafka.brokers.clone(),
            fetch: BusyClocks::new(assigned.len()),
            processor: Heartbeat::default(),
            fetch_bound: timeout * 3 + config.fetch_max_wait,
            processor_bound: (timeout * 3).max(Duration::from_secs(60)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            cache,
            metrics: metrics.clone(),
        }
    }
}

impl Probe for ConsumeProbe {
    fn refresh(&self) {
        let stats = self.cache.stats();
        let m = &self.metrics;
        m.enrichment_keys.set(stats.rows as f64);
        let age = stats.last_refresh.elapsed().unwrap_or_default();
        m.enrichment_age.set(age.as_secs_f64());
        m.enrichment_refreshes.absolute(stats.refresh_ok);
        m.enrichment_failures.absolute(stats.refresh_failures);
        m.enrichment_hits.absolute(stats.hits);
        m.enrichment_misses.absolute(stats.misses);
    }

    fn health(&self) -> Health {
        use std::sync::atomic::Ordering;
        if self.stopping.load(Ordering::Relaxed) {
            return Health::failing("shutting down: writing what is buffered and committing");
        }
        let turned = self.processor.age();
        if turned > self.processor_bound {
            return Health::failing(format!(
                "the processor has not run for {:.1} s (bound {:?}): a Parquet write or checkpoint \
                 commit is stuck; check the output disk",
                turned.as_secs_f64(),
                self.processor_bound
            ));
        }
        if let Some((slot, age)) = self.fetch.longest_busy() {
            if age > self.fetch_bound {
                return Health::failing(format!(
                    "partition {}: no successful fetch from Kafka at {} for {:.1} s (bound 3 × \
                     --timeout + --fetch-max-wait = {:?}); is the broker up?",
                    self.partitions.get(slot).copied().unwrap_or(-1),
                    self.brokers,
                    age.as_secs_f64(),
                    self.fetch_bound
                ));
            }
        }
        let stats = self.cache.stats();
        Health::ok(format!(
            "processor ran {:.1} s ago; {} partition(s) fetching; enrichment map: {} keys, \
             loaded {:.0} s ago, {} refresh failures",
            turned.as_secs_f64(),
            self.partitions.len(),
            stats.rows,
            stats
                .last_refresh
                .elapsed()
                .unwrap_or_default()
                .as_secs_f64(),
            stats.refresh_failures
        ))
    }
}

/// Files to write in one step (moved into a blocking task).
#[derive(Default)]
struct WriteJob {
    /// (destination, partition, rows)
    rows: Vec<(Destination, i32, Vec<OutputRow>)>,
    dead: Vec<(i32, Vec<DeadLetter>)>,
}

impl WriteJob {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.dead.is_empty()
    }
}

impl Processor<'_> {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Fetched>,
        partitions: usize,
        shutdown: impl Future<Output = ()>,
        stop_tx: &watch::Sender<bool>,
    ) -> Result<(), ConsumeError> {
        tokio::pin!(shutdown);
        let mut caught_up: BTreeSet<i32> = BTreeSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut interrupted = false;
        loop {
            self.probe.processor.beat();
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Fetched::Records { partition, records, high_watermark }) => {
                        self.high_watermarks.insert(partition, high_watermark);
                        self.process(partition, records)?;
                        self.after_progress().await?;
                        self.publish_metrics();
                    }
                    Some(Fetched::CaughtUp { partition }) => {
                        caught_up.insert(partition);
                        self.replay_until.remove(&partition);
                        if caught_up.len() == partitions { break; }
                    }
                    Some(Fetched::Failed(e)) => return Err(e.into()),
                },
                _ = tick.tick() => {
                    self.after_progress().await?;
                    self.publish_metrics();
                    self.status();
                }
                _ = &mut shutdown => {
                    interrupted = true;
                    tracing::info!("Shutdown requested: writing what is buffered and committing");
                    break;
                }
            }
        }
        let _ = stop_tx.send(true);
        self.probe
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let drain_timeout = self.config.drain_timeout;
        let drain = async {
            if interrupted {
                // Records already fetched are processed, so the commit covers them too.
                while let Ok(msg) = rx.try_recv() {
                    if let Fetched::Records {
                        partition, records, ..
                    } = msg
                    {
                        self.process(partition, records)?;
                    }
                }
            }
            self.finish().await
        };
        match tokio::time::timeout(drain_timeout, drain).await {
            Ok(r) => r,
            Err(_) => Err(ConsumeError::DrainTimeout(drain_timeout)),
        }
    }

    /// Decodes, enriches and routes one fetched batch of a partition.
    fn process(
        &mut self,
        partition: i32,
        records: Vec<rskafka::record::RecordAndOffset>,
    ) -> Result<(), ConsumeError> {
        let snapshot = self.cache.snapshot();
        let now = Instant::now();
        let window_ms = self.config.window.window_ms;
        for rec in records {
            let offset = rec.offset;
            let next = self.next_offsets.entry(partition).or_insert(offset);
            if offset < *next {
                continue; // a re-fetched record (fetch restarted mid-batch)
            }
            *next = offset + 1;
            self.summary.records_read += 1;
            self.status_rows += 1;
            self.dirty = true;
            let kafka_timestamp_ms = rec.record.timestamp.timestamp_millis();
            let value = rec.record.value.as_deref().unwrap_or(&[]);
            let decoded = if rec.record.value.is_none() {
                Err("the message has no value (null)".to_string())
            } else {
                self.schema
                    .decode_json_reserving(value, snapshot.table().columns.len())
                    .map_err(|e| e.to_string())
                    .and_then(|(values, _)| {
                        let event_time_ms = match self.event_time_index {
                            None => Some(kafka_timestamp_ms),
                            Some(_) => self.schema.event_time_ms_at(self.event_time_index, &values),
                        };
                        match event_time_ms {
                            Some(t) => Ok((values, t)),
                            None => Err(format!(
                                "event-time field `{}` is null",
                                self.config.event_time_field.as_deref().unwrap_or("")
                            )),
                        }
                    })
            };
            let (mut values, event_time_ms) = match decoded {
                Ok(v) => v,
                Err(error) => {
                    self.dead_letter(partition, offset, kafka_timestamp_ms, &rec.record, error);
                    continue;
                }
            };
            let start = window::window_start(event_time_ms, window_ms);
            if self.marks.should_skip_row(start, partition, offset) {
                self.summary.replay_skipped += 1;
                self.watermarks.observe(partition, event_time_ms, now);
                continue;
            }
            let key = values[self.join_index].as_key();
            match snapshot.enrich(key.as_deref(), &mut values, self.config.on_miss) {
                EnrichOutcome::Hit | EnrichOutcome::MissNull => {}
                EnrichOutcome::MissDrop => {
                    self.summary.miss_dropped += 1;
                    self.watermarks.observe(partition, event_time_ms, now);
                    continue;
                }
                EnrichOutcome::MissDeadLetter(reason) => {
                    self.dead_letter(partition, offset, kafka_timestamp_ms, &rec.record, reason);
                    continue;
                }
            }
            self.watermarks.observe(partition, event_time_ms, now);
            let row = OutputRow {
                partition,
                offset,
                kafka_timestamp_ms,
                event_time_ms,
                values,
            };
            if let Routed::Late(row) = self.buffer.route(row) {
                match self.config.late {
                    LatePolicy::SideOutput => {
                        self.summary.late_rows += 1;
                        self.late_bytes += row.size_bytes();
                        self.late.entry((start, partition)).or_default().push(row);
                    }
                    LatePolicy::Drop => self.summary.late_dropped += 1,
                }
            }
        }
        if let Some(&until) = self.replay_until.get(&partition) {
            if self.next_offsets.get(&partition).copied().unwrap_or(0) >= until {
                self.replay_until.remove(&partition);
                if self.replay_until.is_empty() {
                    tracing::info!("Replay after restart finished; windows close again");
                }
            }
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        partition: i32,
        offset: i64,
        kafka_timestamp_ms: i64,
        record: &rskafka::record::Record,
        error: String,
    ) {
        if self.marks.should_skip_dead_letter(partition, offset) {
            self.summary.replay_skipped += 1;
            return;
        }
        tracing::debug!(partition, offset, %error, "Dead letter");
        let letter = DeadLetter {
            partition,
            offset,
            kafka_timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
            error,
        };
        self.summary.dead_letters += 1;
        self.dead_bytes += letter.size_bytes();
        self.dead.entry(partition).or_default().push(letter);
    }

    /// Closes windows the watermark passed, relieves memory pressure, and commits on schedule.
    async fn after_progress(&mut self) -> Result<(), ConsumeError> {
        let mut job = WriteJob::default();
        let mut closed_dirs = Vec::new();
        if self.replay_until.is_empty() {
            if let Some(watermark) = self.watermarks.current(Instant::now()) {
                for closed in self.buffer.close_ready(watermark) {
                    self.summary.windows_closed += 1;
                    let destination = Destination::Window(closed.start);
                    closed_dirs.push(self.config.output.join(destination.dir_name()));
                    for (p, rows) in closed.rows_by_partition {
                        job.rows.push((destination, p, rows));
                    }
                    self.dirty = true;
                }
            }
        }
        while self.buffer.buffered_bytes() > self.config.max_buffer_bytes {
            let Some(flushed) = self.buffer.take_largest() else {
                break;
            };
            tracing::info!(
                window_start = flushed.start,
                "Buffer full: writing the largest open window early"
            );
            self.summary.windows_flushed_open += 1;
            for (p, rows) in flushed.rows_by_partition {
                job.rows.push((Destination::Window(flushed.start), p, rows));
            }
        }
        let side_buffers_full =
            self.late_bytes + self.dead_bytes > self.config.max_buffer_bytes / 4;
        let due = self.last_commit.elapsed() >= self.config.checkpoint_interval && self.dirty;
        if job.is_empty() && !due && !side_buffers_full {
            return Ok(());
        }
        self.take_side_buffers(&mut job);
        self.write(job).await?;
        self.commit()?;
        self.mark_success(closed_dirs)?;
        Ok(())
    }

    fn take_side_buffers(&mut self, job: &mut WriteJob) {
        for ((start, p), rows) in std::mem::take(&mut self.late) {
            job.rows.push((Destination::Late(start), p, rows));
        }
        for (p, letters) in std::mem::take(&mut self.dead) {
            job.dead.push((p, letters));
        }
        self.late_bytes = 0;
        self.dead_bytes = 0;
    }

    /// Writes every file of `job` durably (off the async threads) and records the marks.
    async fn write(&mut self, job: WriteJob) -> Result<(), ConsumeError> {
        if job.is_empty() {
            return Ok(());
        }
        let sink = Arc::clone(&self.sink);
        let output = self.config.output.clone();
        let window_ms = self.config.window.window_ms;
        let written = tokio::task::spawn_blocking(
            move || -> Result<Vec<(Destination, WrittenFile)>, SinkError> {
                let mut written = Vec::new();
                for (destination, partition, rows) in &job.rows {
                    let dir = destination.path_under(&output);
                    for f in sink.write_rows(&dir, *partition, rows, window_ms)? {
                        written.push((*destination, f));
                    }
                }
                for (partition, letters) in &job.dead {
                    let dir = Destination::DeadLetter.path_under(&output);
                    for f in sink.write_dead_letters(&dir, *partition, letters)? {
                        written.push((Destination::DeadLetter, f));
                    }
                }
                Ok(written)
            },
        )
        .await
        .map_err(|e| ConsumeError::Internal(format!("writer task failed: {e}")))??;
        for (destination, file) in written {
            let output = match destination {
                Destination::Window(_) => Output::Window,
                Destination::Late(_) => Output::Late,
                Destination::DeadLetter => Output::DeadLetter,
            };
            self.metrics.file_written(output, file.rows, file.bytes);
            self.marks
                .record_written(destination, file.partition, file.last_offset);
            if destination != Destination::DeadLetter {
                self.summary.rows_written += file.rows;
            }
            self.summary.files_written += 1;
            self.summary.bytes_written += file.bytes;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), ConsumeError> {
        let mut cp = Checkpoint::capture(
            &self.config.topic,
            &self.buffer,
            &self.watermarks,
            &self.next_offsets,
            &mut self.marks,
        );
        cp.keep_replay_targets(&self.replay_until);
        let started = StdInstant::now();
        self.store.commit(&mut cp)?;
        self.metrics
            .checkpoint_duration
            .record(started.elapsed().as_secs_f64());
        self.summary.checkpoints += 1;
        self.last_commit = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Success markers go in only after the checkpoint that closed the windows is committed.
    fn mark_success(&mut self, dirs: Vec<PathBuf>) -> Result<(), ConsumeError> {
        self.pending_success.extend(dirs);
        for dir in self.pending_success.drain(..) {
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::File::create(dir.join(&self.scope.success_marker)))
                .map_err(|e| {
                    ConsumeError::Internal(format!(
                        "cannot write {} in {}: {e}",
                        self.scope.success_marker,
                        dir.display()
                    ))
                })?;
        }
        Ok(())
    }

    /// End of input or shutdown: close what really closed, write every open window (no
    /// `_SUCCESS`), write late rows and dead letters, commit.
    async fn finish(&mut self) -> Result<(), ConsumeError> {
        let mut job = WriteJob::default();
        let mut closed_dirs = Vec::new();
        if self.replay_until.is_empty() {
            if let Some(watermark) = self.watermarks.current(Instant::now()) {
                for closed in self.buffer.close_ready(watermark) {
                    self.summary.windows_closed += 1;
                    let destination = Destination::Window(closed.start);
                    closed_dirs.push(self.config.output.join(destination.dir_name()));
                    for (p, rows) in closed.rows_by_partition {
                        job.rows.push((destination, p, rows));
                    }
                }
            }
        }
        for flushed in self.buffer.drain_all() {
            self.summary.windows_flushed_open += 1;
            for (p, rows) in flushed.rows_by_partition {
                job.rows.push((Destination::Window(flushed.start), p, rows));
            }
        }
        self.take_side_buffers(&mut job);
        self.write(job).await?;
        self.commit()?;
        self.mark_success(closed_dirs)?;
        self.publish_metrics();
        self.status();
        Ok(())
    }

    /// Adds what the summary counted since the last call to the metrics counters and sets the
    /// gauges. Called once per fetched batch and per tick, never per record.
    fn publish_metrics(&mut self) {
        let now = Counts::of(&self.summary);
        let was = std::mem::replace(&mut self.published, now);
        let m = &self.metrics;
        m.records_read
            .increment(now.records_read - was.records_read);
        m.late_side_output.increment(now.late_rows - was.late_rows);
        m.late_dropped
            .increment(now.late_dropped - was.late_dropped);
        m.dead_letters
            .increment(now.dead_letters - was.dead_letters);
        m.replay_skipped
            .increment(now.replay_skipped - was.replay_skipped);
        m.miss_dropped
            .increment(now.miss_dropped - was.miss_dropped);
        m.windows_closed
            .increment(now.windows_closed - was.windows_closed);
        m.windows_flushed_open
            .increment(now.windows_flushed_open - was.windows_flushed_open);
        for (p, gauges) in &m.partitions {
            let next = self.next_offsets.get(p).copied();
            if let Some(next) = next {
                gauges.next_offset.set(next as f64);
            }
            if let Some(&high) = self.high_watermarks.get(p) {
                gauges.high_watermark.set(high as f64);
                gauges.lag.set((high - next.unwrap_or(high)).max(0) as f64);
            }
        }
        if let Some(w) = self.watermarks.current(Instant::now()) {
            m.watermark.set(w as f64 / 1000.0);
        }
        m.open_windows.set(self.buffer.open_windows() as f64);
        m.buffered_bytes[Output::Window as usize].set(self.buffer.buffered_bytes() as f64);
        m.buffered_bytes[Output::Late as usize].set(self.late_bytes as f64);
        m.buffered_bytes[Output::DeadLetter as usize].set(self.dead_bytes as f64);
    }

    /// Progress: the live status line on a terminal (every second), else a log line every
    /// `--status-interval`.
    fn status(&mut self) {
        let every = if self.spinner.is_some() {
            Duration::from_secs(1)
        } else {
            self.config.status_interval
        };
        if self.last_status.elapsed() < every {
            return;
        }
        let secs = self.last_status.elapsed().as_secs_f64();
        let lag: i64 = self
            .high_watermarks
            .iter()
            .map(|(p, high)| high - self.next_offsets.get(p).copied().unwrap_or(*high))
            .sum();
        let watermark = self
            .watermarks
            .current(Instant::now())
            .map(|w| crate::schema::timestamp_to_string(w.saturating_mul(1000)));
        let rate = (self.status_rows as f64 / secs.max(1e-9)) as u64;
        if let Some(bar) = &self.spinner {
            // Seconds are enough on a status line: 2025-01-01T00:00:00Z.
            let watermark = watermark.as_deref().map_or("none".to_string(), |w| {
                format!("{}Z", w.get(..19).unwrap_or(w))
            });
            bar.set_message(format!(
                "{rate} records/s | lag {lag} | watermark {watermark} | {} windows open ({:.1} MB) | {} rows written | {} late | {} dead letters",
                self.buffer.open_windows(),
                self.buffer.buffered_bytes() as f64 / 1e6,
                self.summary.rows_written,
                self.summary.late_rows,
                self.summary.dead_letters
            ));
            self.status_rows = 0;
            self.last_status = Instant::now();
            return;
        }
        tracing::info!(
            records_per_sec = rate,
            lag,
            watermark = watermark.as_deref().unwrap_or("none"),
            open_windows = self.buffer.open_windows(),
            buffered_mb = self.buffer.buffered_bytes() as f64 / 1e6,
            rows_written = self.summary.rows_written,
            late = self.summary.late_rows,
            dead_letters = self.summary.dead_letters,
            "Progress"
        );
        self.status_rows = 0;
        self.last_status = Instant::now();
    }
}

/// Reads a `Value` list's event time at `index` (milliseconds), if present.
impl Schema {
    pub fn event_time_ms_at(&self, index: Option<usize>, values: &[Value]) -> Option<i64> {
        match values.get(index?)? {
            Value::Timestamp(us) => Some(us.div_euclid(1000)),
            Value::Date(d) => Some(i64::from(*d) * 86_400_000),
            _ => None,
        }
    }
}

/// The output directory of a window, for tools and tests.
pub fn window_dir(output: &Path, window_start_ms: i64) -> PathBuf {
    output.join(checkpoint::window_dir_name(window_start_ms))
}
