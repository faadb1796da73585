//! `app consume`: Kafka -> decode -> enrich -> event-time windows -> Parquet, exactly once.
//!
//! ```text
//!  per partition (independent):
//!   fetch task ──(1 batch)──▶ decode task ──(1 batch)──▶ process task ──▶ output store
//!   rskafka, retries,         JSON -> Arrow columns,       PartitionPipeline: core routes,
//!   OffsetOutOfRange policy   enrichment (columnar),       sink writes Parquet row groups,
//!                             dead letters                 checkpoint commits (blocking pool)
//!  instance:
//!   coordinator: shutdown, end of input, _SUCCESS markers (instance::SuccessTracker),
//!   progress line; Board: the boundary idle partitions follow; counters and /metrics
//! ```
//!
//! Layout:
//! - [`core`]: the pure per-partition decisions (routing, windows, watermark, what to commit).
//! - [`fetched`]: a fetch's record batches as the records decode reads, without an allocation
//!   per record; where the next fetch starts.
//! - [`decode`]: records into Arrow columns, enrichment, dead letters (pure).
//! - [`flat_json`]: decode's fast path for flat JSON objects (serde_json decides the rest).
//! - [`pipeline`]: core + sink for one partition, synchronously; recovery at startup.
//! - [`instance`]: cross-partition decisions: the idle boundary and the success markers (pure).
//! - [`progress`]: counters (once), partition status, summary, progress line, metrics, health.
//! - this file: configuration of each stage, the async tasks and the coordinator; the instance
//!   (what lives as long as the process) and the runs over a set of partitions: one run for
//!   static `--partitions`, one per group generation with `--group` ([`run_group`] says why
//!   that stays exactly once across rebalances and how windows get markers across instances).
//!
//! Exactly once is argued in [`core`]'s module docs; the tasks here only move batches in order
//! and never commit anything the pipeline did not write. Memory is bounded by configuration:
//! per partition at most one fetched batch in each channel and one in each stage, and the
//! pipeline's open row groups stay under `--max-buffer-bytes` divided among the partitions.

pub mod core;
pub mod decode;
pub mod fetched;
pub mod flat_json;
pub mod instance;
pub mod pipeline;
pub mod progress;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use self::core::LatePolicy;
use self::core::{CoreConfig, Now};
use self::decode::{DecodeConfig, DecodedBatch, Decoder};
pub use self::fetched::CorruptBatchPolicy;
use self::fetched::{FetchError, FetchedRecords};
use self::instance::{Board, SuccessTracker};
use self::pipeline::{PartitionPipeline, PipelineConfig, PipelineError, Progress, Recovered};
use self::progress::{ConsumeProbe, Counters, PartitionStatus, StatusLine};
pub use self::progress::{ConsumeSummary, HeldBack};
use crate::checkpoint::{self, recovery, CheckpointError, PartitionCheckpoint};
use crate::enrich::{EnrichConfig, EnrichError, EnrichmentCache, MySqlSource, OnMiss};
use crate::group::{GroupConfig, GroupEvent, GroupMember, Revocation, RevokeReason};
use crate::kafka::{
    ControlBatchRecord, FetchedContent, IsolationLevel, Kafka, KafkaConfig, KafkaError,
    PartitionHandle,
};
use crate::metrics::{BusyClocks, ConsumeMetrics, MetricsError, Probe};
use crate::output::layout::{self, Destination, Entry, SuccessScope, WriterId};
use crate::output::store::ObjectInfo;
use crate::output::{Location, OutputConfig, OutputSchema, ParquetFormatError, Store, StoreError};
use crate::schema::{FieldType, Schema};
use crate::shutdown::{self, Shutdown};
use crate::window::WindowConfig;

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
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] ParquetFormatError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    #[error("{0}")]
    Config(String),
    #[error(
        "draining did not finish within --drain-timeout {0:?}; nothing committed is lost, a restart \
         resumes from the last checkpoint"
    )]
    DrainTimeout(Duration),
    #[error("topic `{topic}` partition {partition}: {source}")]
    CorruptBatch {
        topic: String,
        partition: i32,
        source: FetchError,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where to start a partition that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
}

/// What to do when the checkpoint's offset was deleted by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLossPolicy {
    Fail,
    Earliest,
}

/// Whether an idle partition's watermark follows the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAdvance {
    /// On when the event time is the Kafka timestamp (it tracks the clock), off for a field.
    Auto,
    On,
    Off,
}

/// The Kafka side: what to read and how.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    /// `None` = every partition of the topic.
    pub partitions: Option<Vec<i32>>,
    pub start: StartAt,
    /// Stop once every partition is read to its end and written.
    pub until_caught_up: bool,
    pub on_data_loss: DataLossPolicy,
    /// What becomes of a record batch that cannot be read (`--on-corrupt-batch`).
    pub on_corrupt_batch: CorruptBatchPolicy,
    /// Bytes per fetch request and partition.
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    /// `--group`: partitions come from the group's coordinator instead of `partitions`.
    pub group: Option<GroupConfig>,
}

/// The records: their shape, event time, enrichment join and refusals.
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    pub schema: Arc<Schema>,
    /// Take event time from this field instead of the Kafka timestamp.
    pub event_time_field: Option<String>,
    pub join_field: String,
    pub on_miss: OnMiss,
    /// Event times further ahead of the wall clock go to `_dead_letter` (`None`: no limit).
    pub max_future: Option<Duration>,
}

/// The event-time windows.
#[derive(Debug, Clone)]
pub struct WindowsConfig {
    pub window: WindowConfig,
    pub late: LatePolicy,
    pub idle_advance: IdleAdvance,
    /// With `until_caught_up`: the end of the topic is the end of the stream, every window
    /// closes and gets `_SUCCESS`.
    pub close_at_end: bool,
}

/// The output.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// A local directory or object storage (`output::Location`).
    pub location: Location,
    pub output: OutputConfig,
    /// Bound on the open Parquet row groups of all partitions together.
    pub max_buffer_bytes: usize,
    pub checkpoint_interval: Duration,
}

/// How the run behaves and reports.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub drain_timeout: Duration,
    pub status_interval: Duration,
    /// A live status line on the terminal instead of periodic progress log lines.
    pub progress_bar: bool,
    pub metrics_addr: Option<String>,
}

/// Everything `app consume` needs, one part per stage.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub source: SourceConfig,
    pub records: RecordsConfig,
    pub windows: WindowsConfig,
    pub enrich: EnrichConfig,
    pub sink: SinkConfig,
    pub run: RunConfig,
}

/// How often idle partitions are checked (and the processor's loop turns without records).
const TICK: Duration = Duration::from_millis(200);
/// With `--group`: how often the success markers are checked against every partition's
/// checkpoint (other instances' commits are seen only this way).
const MARKER_SWEEP: Duration = Duration::from_secs(5);
/// With `--group`: how long a claim keeps retrying while a previous owner's last commit lands.
const CLAIM_RETRIES: u32 = 20;
const CLAIM_BACKOFF: Duration = Duration::from_millis(500);

/// Runs the consumer until `shutdown` fires or, with `until_caught_up`, every partition is read
/// to its end. Both paths write what is in memory and commit. With `source.group`, partitions
/// come and go with the group's generations (see [`run_group`]).
pub async fn run(
    config: ConsumeConfig,
    shutdown: Shutdown,
) -> Result<ConsumeSummary, ConsumeError> {
    let started = std::time::Instant::now();
    let (instance, refresh_task) = Instance::start(config).await?;
    let result = match instance.config.source.group.clone() {
        None => {
            let assigned = assignment(
                &instance.config.source,
                &instance.topic,
                instance.partition_count,
            )?;
            let scope = if assigned.len() == instance.partition_count {
                SuccessScope::AllPartitions
            } else {
                SuccessScope::Some(assigned.iter().copied().collect())
            };
            let mut shutdown = shutdown;
            run_partitions(&instance, &assigned, Until::Shutdown(&mut shutdown), scope)
                .await
                .map(|(run, _)| vec![run])
        }
        Some(group) => run_group(&instance, group, shutdown).await,
    };
    instance.refresh_stop.trigger();
    let _ = refresh_task.await;
    let runs = result?;
    let stats = instance.cache.stats();
    let mut summary = ConsumeSummary::from_counters(&instance.counters);
    summary.enrich_hits = stats.hits;
    summary.enrich_misses = stats.misses;
    summary.refresh_failures = stats.refresh_failures;
    summary.windows_open = runs.last().map_or(0, |r| r.windows_open);
    summary.elapsed = started.elapsed();
    summary.output = instance.location.clone();
    summary.partitions = runs
        .iter()
        .flat_map(|r| r.partitions.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    summary.resumed_from_checkpoint = runs.iter().any(|r| r.resumed);
    Ok(summary)
}

/// What lives as long as the process: connections, the enrichment cache, the output store,
/// counters and the metrics endpoint. Partitions come and go ([`run_partitions`]).
struct Instance {
    config: ConsumeConfig,
    registry: crate::metrics::Registry,
    endpoint: Option<crate::metrics::Endpoint>,
    kafka: Kafka,
    topic: String,
    partition_count: usize,
    refresh_stop: shutdown::ShutdownTrigger,
    cache: EnrichmentCache,
    output_schema: OutputSchema,
    store: Arc<dyn Store>,
    location: String,
    counters: Arc<Counters>,
    decoder: Arc<Decoder>,
    core: CoreConfig,
    clock: Clock,
}

impl Instance {
    async fn start(
        config: ConsumeConfig,
    ) -> Result<(Instance, tokio::task::JoinHandle<()>), ConsumeError> {
        config
            .windows
            .window
            .validate()
            .map_err(|e| ConsumeError::Config(e.to_string()))?;
        if config.source.group.is_some() && config.source.until_caught_up {
            return Err(ConsumeError::Config(
                "--group and --until-caught-up do not go together: a group member's partitions \
                 move between instances, so no instance knows when the topic is done. Use \
                 --partitions for a bounded run, or stop the group members with SIGTERM"
                    .into(),
            ));
        }
        let (registry, endpoint) =
            crate::metrics::start(config.run.metrics_addr.as_deref()).await?;
        let schema = Arc::clone(&config.records.schema);
        let (join_field, event_time_field) = resolve_fields(&config.records)?;

        // Kafka first (cheap to check), then the enrichment table (may retry for --mysql-timeout).
        let kafka = Kafka::connect(config.source.kafka.clone()).await?;
        let topic = config.source.topic.clone();
        let partition_count =
            kafka
                .partition_count(&topic)
                .await?
                .ok_or_else(|| KafkaError::NoSuchTopic {
                    topic: topic.clone(),
                    brokers: config.source.kafka.brokers.clone(),
                })?;
        // Checked before anything is loaded: a bad list fails fast.
        if config.source.group.is_none() {
            assignment(&config.source, &topic, partition_count)?;
        }
        let (refresh_stop, refresh_handle) = shutdown::channel();
        let source = MySqlSource::new(&config.enrich)?;
        let (cache, refresh_task) =
            EnrichmentCache::start(source, config.enrich.clone(), refresh_handle).await?;
        let table = Arc::clone(cache.snapshot().table());
        let output_schema = OutputSchema::new(&schema, &table.columns)?;
        let window_ms = config.windows.window.window_ms;
        let location_config = config.sink.location.clone();
        let store: Arc<dyn Store> = blocking(move || Ok(location_config.open()?)).await?;
        let location = store.describe();
        let idle_advance = match config.windows.idle_advance {
            IdleAdvance::On => true,
            IdleAdvance::Off => false,
            IdleAdvance::Auto => event_time_field.is_none(),
        };
        let core = CoreConfig {
            window_ms,
            allowed_lateness_ms: config.windows.window.allowed_lateness_ms,
            late: config.windows.late,
            idle_timeout_ms: millis(config.windows.window.idle_timeout),
            idle_advance,
        };
        let decoder = Arc::new(Decoder::new(
            DecodeConfig {
                schema: Arc::clone(&schema),
                event_time_field,
                join_field,
                on_miss: config.records.on_miss,
                max_future_ms: config.records.max_future.map(millis),
                window_ms,
            },
            &output_schema,
            cache.describe(),
        ));
        let instance = Instance {
            config,
            registry,
            endpoint,
            kafka,
            topic,
            partition_count,
            refresh_stop,
            cache,
            output_schema,
            store,
            location,
            counters: Arc::new(Counters::default()),
            decoder,
            core,
            clock: Clock::new(),
        };
        Ok((instance, refresh_task))
    }
}

/// What ends a run over a set of partitions.
enum Until<'a> {
    /// Static partitions: the process's shutdown (or the end of input).
    Shutdown(&'a mut Shutdown),
    /// A group generation: its revocation (which also carries a shutdown).
    Revoked {
        link: &'a mut GroupLink,
        generation_id: i32,
    },
}

/// How the end of a run was asked for.
enum EndRequest {
    /// Write what is buffered, commit, stop.
    Drain,
    /// The partitions may be someone else's already: stop at once, commit nothing more.
    Drop,
}

impl Until<'_> {
    /// Resolves when the run must end; a revocation is kept in `held` until the run is over.
    async fn next(&mut self, held: &mut Option<Revocation>) -> Result<EndRequest, ConsumeError> {
        match self {
            Until::Shutdown(s) => {
                s.requested().await;
                Ok(EndRequest::Drain)
            }
            Until::Revoked { link, .. } => match link.events.recv().await {
                Some(Ok(GroupEvent::Revoked(r))) => {
                    let lost = r.is_lost();
                    tracing::info!(
                        generation = r.assignment.generation_id,
                        partitions = ?r.assignment.partitions,
                        reason = ?r.reason,
                        "Partitions revoked: {}",
                        if lost {
                            "dropping what is not committed (the new owner replays it)"
                        } else {
                            "writing what is buffered and committing"
                        }
                    );
                    *held = Some(r);
                    Ok(if lost {
                        EndRequest::Drop
                    } else {
                        EndRequest::Drain
                    })
                }
                Some(Ok(GroupEvent::Assigned(a))) => Err(ConsumeError::Internal(format!(
                    "the group assigned generation {} before revoking the current one",
                    a.generation_id
                ))),
                Some(Err(e)) => Err(e.into()),
                None => Ok(EndRequest::Drop),
            },
        }
    }

    fn is_group(&self) -> bool {
        matches!(self, Until::Revoked { .. })
    }

    /// Whether the group already revoked this generation (without waiting); the revocation is
    /// kept in `held`. Static partitions: whether shutdown was requested.
    fn revoked_now(&mut self, held: &mut Option<Revocation>) -> Result<bool, ConsumeError> {
        match self {
            Until::Shutdown(s) => Ok(s.is_requested()),
            Until::Revoked { link, .. } => match link.events.try_recv() {
                Ok(Ok(GroupEvent::Revoked(r))) => {
                    *held = Some(r);
                    Ok(true)
                }
                Ok(Ok(GroupEvent::Assigned(a))) => Err(ConsumeError::Internal(format!(
                    "the group assigned generation {} before revoking the current one",
                    a.generation_id
                ))),
                Ok(Err(e)) => Err(e.into()),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(true),
                Err(mpsc::error::TryRecvError::Empty) => Ok(false),
            },
        }
    }

    fn generation(&self) -> Option<i32> {
        match self {
            Until::Shutdown(_) => None,
            Until::Revoked { generation_id, .. } => Some(*generation_id),
        }
    }

    /// Tells the group how far a partition is committed (display only; best effort).
    fn committed(&self, partition: i32, offset: i64) {
        if let Until::Revoked {
            link,
            generation_id,
        } = self
        {
            link.commit(*generation_id, partition, offset);
        }
    }
}

/// What one run over a set of partitions reports.
struct PartitionsRun {
    partitions: BTreeSet<i32>,
    windows_open: u64,
    resumed: bool,
}

/// `--group`: joins the group and runs each generation's partitions until revoked, until the
/// member leaves (shutdown) or fails.
///
/// Exactly once across rebalances rests on the checkpoint, not on the group: a new owner claims
/// each partition by committing the next checkpoint generation (a conditional create), which
/// fences any previous owner still running; it resumes from that checkpoint. A revoked owner
/// drains and commits before it releases the revocation (the group waits for that); a *lost*
/// one (fenced by the coordinator, or its lease ran out) drops its buffers at once, and whatever
/// it might still commit is refused by the checkpoint's generation.
///
/// Success markers cover all partitions, which live in different instances: after its own
/// commits and every [`MARKER_SWEEP`], an instance reads every partition's checkpoint from the
/// shared output and writes the marker of each window that all of them have closed, listing
/// the committed files ([`sweep_markers`]). Two instances may write the same marker; its
/// content depends only on the committed state, so the second write changes nothing.
async fn run_group(
    instance: &Instance,
    mut group: GroupConfig,
    shutdown: Shutdown,
) -> Result<Vec<PartitionsRun>, ConsumeError> {
    group.topic = instance.topic.clone();
    let member = GroupMember::join(group.clone(), shutdown.clone().wait()).await?;
    tracing::info!(
        group = %group.group_id,
        topic = %instance.topic,
        session_timeout = ?group.session_timeout,
        "Joined the consumer group; waiting for partitions"
    );
    let mut link = GroupLink::spawn(member);
    let registry = &instance.registry;
    let generation = registry.gauge(&crate::metrics::C_GROUP_GENERATION, &[]);
    let assigned = registry.gauge(&crate::metrics::C_ASSIGNED_PARTITIONS, &[]);
    let revoked = |reason: &str| {
        registry
            .counter(&crate::metrics::C_GROUP_REVOCATIONS, &[reason])
            .increment(1)
    };
    generation.set(-1.0);
    let mut runs = Vec::new();
    loop {
        match link.events.recv().await {
            None => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(GroupEvent::Revoked(r))) => {
                revoked(revocation_label(&r));
                r.release()
            }
            Some(Ok(GroupEvent::Assigned(a))) => {
                generation.set(f64::from(a.generation_id));
                tracing::info!(
                    generation = a.generation_id,
                    partitions = ?a.partitions,
                    leader = a.leader,
                    "Partitions assigned"
                );
                if a.partitions.is_empty() {
                    // More members than partitions: stand by for the next generation.
                    continue;
                }
                let until = Until::Revoked {
                    link: &mut link,
                    generation_id: a.generation_id,
                };
                let (run, reason) =
                    run_partitions(instance, &a.partitions, until, SuccessScope::AllPartitions)
                        .await?;
                revoked(reason);
                generation.set(-1.0);
                assigned.set(0.0);
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// The consumer's side of a [`GroupMember`]: its events, and display offsets sent to it without
/// waiting (a full queue drops a commit; the next one carries newer offsets anyway).
struct GroupLink {
    events: mpsc::Receiver<Result<GroupEvent, crate::group::GroupError>>,
    commits: mpsc::Sender<(i32, BTreeMap<i32, i64>)>,
}

impl GroupLink {
    /// Moves the member into a task that forwards its events, and commits offsets from another
    /// (see [`GroupMember::committer`]: a commit waiting for its answer must never hold up an
    /// event). When the link is dropped the member leaves the group (the others take over at
    /// once).
    fn spawn(mut member: GroupMember) -> GroupLink {
        let (event_tx, events) = mpsc::channel(4);
        let (commits, mut commit_rx) = mpsc::channel::<(i32, BTreeMap<i32, i64>)>(16);
        let committer = member.committer();
        tokio::spawn(async move {
            while let Some((generation, offsets)) = commit_rx.recv().await {
                if let Err(e) = committer.commit_offsets(generation, &offsets).await {
                    tracing::debug!(error = %e, "Offsets for display not committed to the group");
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = member.next_event() => event,
                    // The consumer is gone (it stopped, or failed): leave below.
                    _ = event_tx.closed() => break,
                };
                let (end, event) = match event {
                    Ok(Some(e)) => (false, Ok(e)),
                    Ok(None) => break,
                    Err(e) => (true, Err(e)),
                };
                if event_tx.send(event).await.is_err() || end {
                    break;
                }
            }
            // `Ok` too when the member already left (shutdown) or failed.
            let _ = member.leave().await;
        });
        GroupLink { events, commits }
    }

    fn commit(&self, generation_id: i32, partition: i32, offset: i64) {
        let _ = self
            .commits
            .try_send((generation_id, BTreeMap::from([(partition, offset)])));
    }
}

/// How success markers are decided in a run.
enum Markers {
    /// This instance holds every partition the markers wait for.
    Tracked(SuccessTracker),
    /// Partitions live in several instances: read every partition's checkpoint.
    Swept { due: bool, last: Instant },
}

/// Runs `assigned` until `until` ends it (or, with `until_caught_up`, until every partition is
/// read to its end): recovery and claim of each partition, then the fetch, decode and process
/// tasks, and the coordinator loop below.
async fn run_partitions(
    instance: &Instance,
    assigned: &BTreeSet<i32>,
    mut until: Until<'_>,
    scope: SuccessScope,
) -> Result<(PartitionsRun, &'static str), ConsumeError> {
    let config = &instance.config;
    let topic = &instance.topic;
    let store = &instance.store;
    let counters = &instance.counters;
    let window_ms = config.windows.window.window_ms;
    let group = until.is_group();
    let (stop, stop_handle) = shutdown::channel();

    // The output: recovery of every assigned partition is planned before anything is fetched,
    // and applied once the partition is claimed (below).
    let mut recovered = recover_all(store, topic, window_ms, assigned).await?;

    // Start offsets: the checkpoint's, else --start.
    let mut starts = BTreeMap::new();
    for &p in assigned {
        let handle = PartitionHandle {
            config: config.source.kafka.clone(),
            topic: topic.clone(),
            partition: p,
            client: instance.kafka.partition(topic, p).await?,
        };
        let (earliest, latest) = handle.offsets().await?;
        let fresh = match config.source.start {
            StartAt::Earliest => earliest,
            StartAt::Latest => latest,
        };
        starts.insert(p, (handle, fresh, earliest, latest));
    }
    let resumed = recovered.values().any(|r| r.checkpoint.is_some());
    // A writer id per run: files of an earlier run of this process can never be mistaken for
    // this one's. `app inspect` shows it per window and checkpoint; this line ties it to the
    // instance (and, with --group, the generation).
    let writer = WriterId::random();
    tracing::info!(
        topic = %topic,
        partitions = ?assigned,
        resumed,
        output = %instance.location,
        writer = %writer,
        generation = ?until.generation(),
        "Consuming"
    );

    // Shared state of the run.
    let statuses: Vec<Arc<PartitionStatus>> = assigned
        .iter()
        .map(|p| Arc::new(PartitionStatus::new(*p)))
        .collect();
    let board = Arc::new(Mutex::new(Board::new(assigned.iter().copied())));
    let metrics = ConsumeMetrics::new(&instance.registry, assigned.iter().copied());
    instance
        .registry
        .gauge(&crate::metrics::C_ASSIGNED_PARTITIONS, &[])
        .set(assigned.len() as f64);
    let timeout = config.source.kafka.timeout;
    let probe = Arc::new(ConsumeProbe {
        brokers: config.source.kafka.brokers.clone(),
        output: instance.location.clone(),
        store: Arc::clone(store),
        fetch: BusyClocks::new(assigned.len()),
        fetch_bound: timeout * 3 + config.source.fetch_max_wait,
        processor_bound: (timeout * 3).max(Duration::from_secs(60)),
        stopping: Default::default(),
        failed: Default::default(),
        cache: instance.cache.clone(),
        metrics: metrics.clone(),
        counters: Arc::clone(counters),
        statuses: statuses.clone(),
    });
    if let Some(endpoint) = &instance.endpoint {
        endpoint.set_probe(Arc::clone(&probe) as Arc<dyn Probe>);
    }

    let pipeline_config = PipelineConfig {
        topic: topic.clone(),
        core: instance.core.clone(),
        output: config.sink.output.clone(),
        memory_budget: config.sink.max_buffer_bytes / assigned.len().max(1),
    };
    let clock = instance.clock.clone();
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let mut claimed = Vec::new();
    let mut started_from = BTreeMap::new();
    let mut revocation: Option<Revocation> = None;
    for (p, (handle, fresh, earliest, latest)) in starts {
        let mut attempt = 0;
        let pipeline = loop {
            // Never claim for a generation that is over: a member that lost its partitions
            // (cut off, frozen) while claiming would otherwise take a partition back from its
            // new owner once its stalled claim is refused and retried.
            if until.revoked_now(&mut revocation)? {
                tracing::info!(
                    partition = p,
                    "Generation revoked while claiming its partitions; claiming nothing more"
                );
                let reason = revocation.as_ref().map_or("shutdown", revocation_label);
                drop(revocation);
                let run = PartitionsRun {
                    partitions: assigned.clone(),
                    windows_open: 0,
                    resumed,
                };
                return Ok((run, reason));
            }
            let mut rec = recovered
                .remove(&p)
                .expect("recovered every assigned partition");
            if let Some(cp) = &rec.checkpoint {
                started_from.insert(p, cp.clone());
            }
            apply_data_loss_policy(config, topic, p, &mut rec, earliest, latest)?;
            match claim(instance, &pipeline_config, p, writer, rec, fresh).await {
                Ok(pipeline) => break pipeline,
                // A previous owner's last commit is landing (it was lost or is still draining):
                // read the partition again and claim the generation after it.
                Err(ConsumeError::Pipeline(PipelineError::Checkpoint(
                    e @ CheckpointError::Fenced { .. },
                ))) if group && attempt < CLAIM_RETRIES => {
                    attempt += 1;
                    tracing::info!(partition = p, attempt, reason = %e, "Claim refused; retrying");
                    tokio::time::sleep(CLAIM_BACKOFF).await;
                    let one = BTreeSet::from([p]);
                    recovered.extend(recover_all(store, topic, window_ms, &one).await?);
                }
                Err(e) => return Err(e),
            }
        };
        // The group shows where the claim resumes (display only).
        until.committed(p, pipeline.core().next_offset());
        claimed.push((p, handle, pipeline));
    }
    // Markers once recovery removed what no checkpoint covers.
    let mut markers = if group {
        Markers::Swept {
            due: true,
            last: Instant::now(),
        }
    } else {
        // Every table file left is committed (`SuccessTracker::start`).
        let tracker = SuccessTracker::new(scope, window_ms, assigned);
        Markers::Tracked(reconcile_markers(store, tracker, started_from, counters).await?)
    };
    let mut tasks = JoinSet::new();
    for (slot, (p, handle, pipeline)) in claimed.into_iter().enumerate() {
        let from = pipeline.core().next_offset();
        let (fetch_tx, fetch_rx) = mpsc::channel(1);
        let (decoded_tx, decoded_rx) = mpsc::channel(1);
        tasks.spawn(fetch(FetchJob {
            handle,
            offset: from,
            max_bytes: config.source.fetch_max_bytes,
            max_wait: config.source.fetch_max_wait,
            until_caught_up: config.source.until_caught_up,
            on_data_loss: config.source.on_data_loss,
            on_corrupt: config.source.on_corrupt_batch,
            tx: fetch_tx,
            stop: stop_handle.clone(),
            probe: Arc::clone(&probe),
            slot,
        }));
        tasks.spawn(decode_partition(
            instance.topic.clone(),
            p,
            Arc::clone(&instance.decoder),
            instance.cache.clone(),
            fetch_rx,
            decoded_tx,
            clock.clone(),
        ));
        tasks.spawn(process(Processor {
            partition: p,
            pipeline: Some(pipeline),
            rx: decoded_rx,
            events: events_tx.clone(),
            stop: stop_handle.clone(),
            board: Arc::clone(&board),
            status: Arc::clone(&statuses[slot]),
            counters: Arc::clone(counters),
            metrics: metrics.clone(),
            clock: clock.clone(),
            checkpoint_interval: config.sink.checkpoint_interval,
            close_at_end: config.windows.close_at_end && config.source.until_caught_up,
            dirty: false,
            last_commit: Instant::now(),
        }));
    }
    drop(events_tx);

    // The coordinator.
    let spinner = config.run.progress_bar.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let status_every = if spinner.is_some() {
        Duration::from_secs(1)
    } else {
        config.run.status_interval
    };
    let mut status_tick = tokio::time::interval_at(Instant::now() + status_every, status_every);
    let mut sweep_tick = tokio::time::interval(TICK * 5);
    let mut status_line = StatusLine::default();
    let mut done = BTreeSet::new();
    let mut failure: Option<ConsumeError> = None;
    let mut draining_since: Option<Instant> = None;
    let mut dropped = false;
    let drain_timeout = config.run.drain_timeout;
    loop {
        let drain_deadline = draining_since.map(|t| t + drain_timeout);
        tokio::select! {
            end = until.next(&mut revocation), if draining_since.is_none() => {
                draining_since = Some(Instant::now());
                probe.stopping.store(true, Ordering::Relaxed);
                stop.trigger();
                match end {
                    Ok(EndRequest::Drain) => {
                        if !group {
                            tracing::info!("Shutdown requested: writing what is buffered and committing");
                        }
                    }
                    Ok(EndRequest::Drop) => {
                        dropped = true;
                        break;
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                        dropped = true;
                        break;
                    }
                }
            }
            event = events.recv() => match event {
                None => break,
                Some(Event::Committed { partition, closed_before, closed, offset }) => {
                    until.committed(partition, offset);
                    match &mut markers {
                        Markers::Tracked(tracker) => {
                            let ready = tracker.committed(partition, closed_before, &closed);
                            write_markers(store, ready, counters).await?;
                        }
                        Markers::Swept { due, .. } => *due |= !closed.is_empty(),
                    }
                }
                Some(Event::Done { partition }) => {
                    done.insert(partition);
                    if done.len() == assigned.len() {
                        break;
                    }
                }
                Some(Event::Failed { partition, error: ConsumeError::Pipeline(PipelineError::Checkpoint(e @ CheckpointError::Fenced { .. })) }) if group => {
                    // Another member owns it now (this one was too slow to hear): leave it to
                    // them; the next rebalance sorts out the rest.
                    tracing::warn!(partition, reason = %e, "Partition taken over by another instance; dropping it");
                    done.insert(partition);
                }
                Some(Event::Failed { partition, error }) if group && taken_over(instance, partition, writer).await => {
                    // A write failed because the new owner's recovery removed it (this member
                    // was frozen or cut off past its session): not a storage fault, a takeover.
                    tracing::warn!(partition, error = %error, "Partition taken over by another instance while this one wrote; dropping it");
                    done.insert(partition);
                    if done.len() == assigned.len() {
                        break;
                    }
                }
                Some(Event::Failed { partition, error }) => {
                    tracing::error!(partition, error = %error, "A partition failed; stopping");
                    probe.fail(format!("partition {partition} failed: {error}"));
                    failure.get_or_insert(error);
                    if draining_since.is_none() {
                        draining_since = Some(Instant::now());
                        probe.stopping.store(true, Ordering::Relaxed);
                        stop.trigger();
                    }
                    done.insert(partition);
                    if done.len() == assigned.len() {
                        break;
                    }
                }
            },
            _ = status_tick.tick() => {
                let line = status_line.render(counters, &statuses);
                match &spinner {
                    Some(bar) => bar.set_message(line),
                    None => tracing::info!("{line}"),
                }
            }
            _ = sweep_tick.tick(), if matches!(markers, Markers::Swept { .. }) => {
                if let Markers::Swept { due, last } = &mut markers {
                    if *due || last.elapsed() >= MARKER_SWEEP {
                        *due = false;
                        *last = Instant::now();
                        sweep_and_write(instance).await;
                    }
                }
            }
            _ = sleep_until(drain_deadline) => {
                failure.get_or_insert(ConsumeError::DrainTimeout(drain_timeout));
                break;
            }
        }
    }
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    probe.stopping.store(true, Ordering::Relaxed);
    stop.trigger();
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "A consumer task failed");
            }
        }
    }
    if group && !dropped {
        // What this run committed last may complete windows.
        sweep_and_write(instance).await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if group && revocation.is_none() && !dropped {
        // Every partition of the generation was dropped (taken over): wait for the rebalance.
        let _ = until.next(&mut revocation).await;
    }
    let reason = revocation.as_ref().map_or("shutdown", revocation_label);
    // Released only now, once the partitions are written and committed (or dropped): the
    // group's next generation may hand them to someone else.
    drop(revocation);
    let run = PartitionsRun {
        partitions: assigned.clone(),
        windows_open: statuses
            .iter()
            .map(|s| s.open_windows.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        resumed,
    };
    Ok((run, reason))
}

/// The `reason` label of [`crate::metrics::C_GROUP_REVOCATIONS`].
fn revocation_label(r: &Revocation) -> &'static str {
    match r.reason {
        RevokeReason::Rebalance => "rebalance",
        RevokeReason::Lost { .. } => "lost",
        RevokeReason::Shutdown => "shutdown",
    }
}

/// Claims partition `p` (commits a first generation), then deletes what its checkpoint does
/// not cover: a writer still running on it is fenced before its files are touched, so it can
/// never commit a file deleted here.
async fn claim(
    instance: &Instance,
    pipeline_config: &PipelineConfig,
    p: i32,
    writer: WriterId,
    rec: Recovered,
    fresh: i64,
) -> Result<PartitionPipeline, ConsumeError> {
    let store = Arc::clone(&instance.store);
    let pipeline_config = pipeline_config.clone();
    let output_schema = instance.output_schema.clone();
    let now = instance.clock.now();
    blocking(move || {
        let pipeline = PartitionPipeline::start(
            Arc::clone(&store),
            &pipeline_config,
            &output_schema,
            p,
            writer,
            &rec,
            fresh,
            now,
        )?;
        apply_recovery(store.as_ref(), p, &rec)?;
        Ok(pipeline)
    })
    .await
}

/// Whether another writer committed the newest checkpoint of `partition` (so a failure of ours
/// on it is the consequence of a takeover, not a storage fault).
async fn taken_over(instance: &Instance, partition: i32, writer: WriterId) -> bool {
    let store = Arc::clone(&instance.store);
    let topic = instance.topic.clone();
    let window_ms = instance.config.windows.window.window_ms;
    let newest = blocking(move || {
        Ok(checkpoint::load(store.as_ref(), &topic, partition, window_ms)?.checkpoint)
    })
    .await;
    matches!(newest, Ok(Some(cp)) if cp.writer != writer.to_string())
}

/// `--on-data-loss` for a checkpoint whose resume offset retention deleted.
fn apply_data_loss_policy(
    config: &ConsumeConfig,
    topic: &str,
    p: i32,
    rec: &mut Recovered,
    earliest: i64,
    latest: i64,
) -> Result<(), ConsumeError> {
    let Some(cp) = rec.checkpoint.as_mut() else {
        return Ok(());
    };
    if cp.resume_offset >= earliest {
        return Ok(());
    }
    match config.source.on_data_loss {
        DataLossPolicy::Fail => Err(KafkaError::OffsetOutOfRange {
            topic: topic.to_string(),
            partition: p,
            requested: cp.resume_offset,
            earliest,
            latest,
        }
        .into()),
        DataLossPolicy::Earliest => {
            tracing::error!(
                partition = p,
                resume = cp.resume_offset,
                earliest,
                lost = earliest - cp.resume_offset,
                "Data deleted by retention; continuing from earliest (--on-data-loss earliest)"
            );
            cp.resume_offset = earliest;
            cp.next_offset = cp.next_offset.max(earliest);
            Ok(())
        }
    }
}

/// [`sweep_markers`] on the blocking pool, then writes what it found. A failure is logged and
/// retried at the next sweep: markers are derived state, never lost.
async fn sweep_and_write(instance: &Instance) {
    let store = Arc::clone(&instance.store);
    let topic = instance.topic.clone();
    let window_ms = instance.config.windows.window.window_ms;
    let partitions = instance.partition_count;
    let found = blocking(move || {
        let (markers, superseded) = sweep_markers(store.as_ref(), &topic, window_ms, partitions)?;
        for key in &superseded {
            tracing::warn!(
                file = %key,
                "Removing a file written by a writer after it had lost the partition (its \
                 rows are in the new owner's file)"
            );
            store.delete(key)?;
        }
        Ok(markers)
    })
    .await;
    let result = match found {
        Ok(markers) => write_markers(&instance.store, markers, &instance.counters).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "Checking the success markers failed; retrying at the next sweep");
    }
}

/// The success markers every partition's committed checkpoint now supports and that do not
/// exist yet (see [`run_group`]), and the files to delete because a writer wrote them after it
/// had lost the partition (`recovery::Plan::superseded`). Files no checkpoint covers (being
/// written, or left by a crash for the next owner's recovery) are in no manifest.
fn sweep_markers(
    store: &dyn Store,
    topic: &str,
    window_ms: i64,
    partition_count: usize,
) -> Result<(Vec<instance::Marker>, Vec<layout::Key>), ConsumeError> {
    // Checkpoints before the listing: every file a loaded checkpoint covers was written before
    // it was committed, so it is listed; files written after are judged against it (skipped).
    let mut checkpoints = BTreeMap::new();
    for p in 0..partition_count as i32 {
        match checkpoint::load(store, topic, p, window_ms)?.checkpoint {
            Some(cp) => checkpoints.insert(p, cp),
            // A partition nobody has claimed yet: no window is complete.
            None => return Ok((Vec::new(), Vec::new())),
        };
    }
    let listing = store.list("")?;
    let closed_everywhere = checkpoints
        .values()
        .map(|cp| cp.closed_before)
        .min()
        .unwrap_or(i64::MIN);
    let mut skip = BTreeSet::new();
    let mut superseded = Vec::new();
    for (p, cp) in &checkpoints {
        let plan = recovery::plan(store, *p, Some(cp), &listing)?;
        skip.extend(plan.temp);
        skip.extend(plan.uncommitted);
        skip.extend(plan.superseded.iter().cloned());
        superseded.extend(plan.superseded);
    }
    let scope = SuccessScope::AllPartitions;
    let with_marker: BTreeSet<i64> = listing
        .iter()
        .filter_map(|o| match layout::classify(&o.key) {
            Entry::Success { window, name } if name == scope.marker_name() => Some(window),
            _ => None,
        })
        .collect();
    // Only the table files of complete windows without a marker: footers are read for those.
    let candidates: Vec<ObjectInfo> = listing
        .into_iter()
        .filter(|o| !skip.contains(&o.key))
        .filter(|o| match layout::classify(&o.key) {
            Entry::Data {
                destination: Destination::Window(window),
                ..
            } => {
                !with_marker.contains(&window)
                    && crate::window::window_end(window, window_ms) <= closed_everywhere
            }
            _ => false,
        })
        .collect();
    if candidates.is_empty() {
        return Ok((Vec::new(), superseded));
    }
    let all: BTreeSet<i32> = checkpoints.keys().copied().collect();
    let mut tracker = SuccessTracker::new(scope, window_ms, &all);
    let (_, create) = tracker.start(&checkpoints, &candidates, |key| footer_rows(store, key));
    Ok((create, superseded))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The join field and the event-time field, by index.
fn resolve_fields(records: &RecordsConfig) -> Result<(usize, Option<usize>), ConsumeError> {
    let schema = &records.schema;
    let names = || {
        schema
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let join = schema
        .fields
        .iter()
        .position(|f| f.name == records.join_field)
        .ok_or_else(|| {
            ConsumeError::Config(format!(
                "--join-field `{}` is not a field of the schema `{}` (fields: {})",
                records.join_field,
                schema.name,
                names()
            ))
        })?;
    let event_time = match &records.event_time_field {
        None => None,
        Some(name) => {
            let i = schema
                .fields
                .iter()
                .position(|f| &f.name == name)
                .ok_or_else(|| {
                    ConsumeError::Config(format!(
                        "--event-time-field `{name}` is not a field of the schema (fields: {})",
                        names()
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
    Ok((join, event_time))
}

fn assignment(
    source: &SourceConfig,
    topic: &str,
    partition_count: usize,
) -> Result<BTreeSet<i32>, ConsumeError> {
    match &source.partitions {
        None => Ok((0..partition_count as i32).collect()),
        Some(list) => {
            for p in list {
                if *p < 0 || *p as usize >= partition_count {
                    return Err(ConsumeError::Config(format!(
                        "--partitions: topic `{topic}` has partitions 0..{} but {p} was asked for",
                        partition_count - 1
                    )));
                }
            }
            Ok(list.iter().copied().collect())
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsumeError> + Send + 'static,
) -> Result<T, ConsumeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConsumeError::Internal(format!("a storage task failed: {e}")))?
}

async fn recover_all(
    store: &Arc<dyn Store>,
    topic: &str,
    window_ms: i64,
    assigned: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, Recovered>, ConsumeError> {
    let store = Arc::clone(store);
    let topic = topic.to_string();
    let assigned = assigned.clone();
    blocking(move || {
        let listing = store.list("")?;
        recovery::refuse_legacy(store.as_ref(), &listing)?;
        // Load and plan every partition before deleting anything: a refused start changes
        // nothing.
        let mut loaded = BTreeMap::new();
        for &p in &assigned {
            loaded.insert(p, checkpoint::load(store.as_ref(), &topic, p, window_ms)?);
        }
        let mut plans = BTreeMap::new();
        for (p, l) in &loaded {
            plans.insert(
                *p,
                recovery::plan(store.as_ref(), *p, l.checkpoint.as_ref(), &listing)?,
            );
        }
        let mut out = BTreeMap::new();
        for (p, l) in loaded {
            let plan = plans.remove(&p).expect("planned every partition");
            out.insert(
                p,
                Recovered {
                    checkpoint: l.checkpoint,
                    newest_generation: l.newest_generation,
                    plan,
                    fell_back: l.fell_back,
                },
            );
        }
        Ok(out)
    })
    .await
}

/// Deletes what the partition's checkpoint does not cover (after the partition is claimed).
fn apply_recovery(store: &dyn Store, partition: i32, rec: &Recovered) -> Result<(), ConsumeError> {
    let plan = &rec.plan;
    plan.apply(store)?;
    if !plan.is_clean() {
        tracing::warn!(
            partition,
            temp_removed = plan.temp.len(),
            uncommitted_removed = plan.uncommitted.len(),
            superseded_removed = plan.superseded.len(),
            kept = plan.kept,
            "Recovered the output to the last checkpoint"
        );
    }
    Ok(())
}

async fn reconcile_markers(
    store: &Arc<dyn Store>,
    mut tracker: SuccessTracker,
    checkpoints: BTreeMap<i32, PartitionCheckpoint>,
    counters: &Arc<Counters>,
) -> Result<SuccessTracker, ConsumeError> {
    // Reading footers is storage I/O too: the tracker visits the blocking pool and comes back.
    let store2 = Arc::clone(store);
    let (tracker, remove, create) = blocking(move || {
        let listing = store2.list("")?;
        let (remove, create) = tracker.start(&checkpoints, &listing, |key| {
            footer_rows(store2.as_ref(), key)
        });
        Ok((tracker, remove, create))
    })
    .await?;
    let store2 = Arc::clone(store);
    blocking(move || {
        for key in remove {
            tracing::info!(marker = %key, "Removing a success marker the checkpoint does not support");
            store2.delete(&key)?;
        }
        Ok(())
    })
    .await?;
    write_markers(store, create, counters).await?;
    Ok(tracker)
}

/// The row count in a table file's footer, for a manifest (0 when it cannot be read: the
/// manifest still lists the file).
fn footer_rows(store: &dyn Store, key: &str) -> u64 {
    store
        .get(key)
        .ok()
        .flatten()
        .and_then(|b| crate::output::parquet::row_count(&b, key).ok())
        .unwrap_or(0)
}

async fn write_markers(
    store: &Arc<dyn Store>,
    markers: Vec<instance::Marker>,
    counters: &Arc<Counters>,
) -> Result<(), ConsumeError> {
    if markers.is_empty() {
        return Ok(());
    }
    let n = markers.len() as u64;
    let store = Arc::clone(store);
    blocking(move || {
        for m in markers {
            store.put(&m.key, &m.to_json())?;
        }
        Ok(())
    })
    .await?;
    counters.markers_written.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Wall clock and a monotonic clock from one origin (tokio's, so tests can pause it).
#[derive(Debug, Clone)]
struct Clock {
    origin: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    fn now(&self) -> Now {
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Now {
            wall_ms,
            mono_ms: self.origin.elapsed().as_millis() as i64,
        }
    }
}

/// What a partition's process task tells the coordinator.
enum Event {
    Committed {
        partition: i32,
        closed_before: i64,
        closed: Vec<core::ClosedWindow>,
        /// The next offset not yet routed, as committed (shown to the group).
        offset: i64,
    },
    Done {
        partition: i32,
    },
    Failed {
        partition: i32,
        error: ConsumeError,
    },
}

/// One fetch result.
enum Fetched {
    Records {
        records: FetchedRecords,
        high_watermark: i64,
        /// Where the next fetch starts: every offset below it is read or stepped over.
        next_offset: i64,
    },
    /// A fetch that held nothing to decode (only transaction markers or aborted data): every
    /// offset below this one is stepped over.
    Skipped(i64),
    /// Read to its end (`--until-caught-up`): nothing more comes.
    CaughtUp,
    Failed(KafkaError),
}

/// One decoded batch.
enum Decoded {
    Batch {
        batch: Box<DecodedBatch>,
        high_watermark: i64,
        next_offset: i64,
    },
    Skipped(i64),
    CaughtUp,
    Failed(ConsumeError),
}

struct FetchJob {
    handle: PartitionHandle,
    offset: i64,
    max_bytes: i32,
    max_wait: Duration,
    until_caught_up: bool,
    on_data_loss: DataLossPolicy,
    on_corrupt: CorruptBatchPolicy,
    tx: mpsc::Sender<Fetched>,
    stop: Shutdown,
    probe: Arc<ConsumeProbe>,
    slot: usize,
}

/// Fetches one partition in offset order until stopped (or caught up). A failed fetch is retried
/// from the same offset with backoff; only `OffsetOutOfRange` under `--on-data-loss fail` ends it.
/// Fetches are read committed: aborted transactions' data and markers are stepped over (the
/// offset moves past them), and `--until-caught-up` ends at the last stable offset, saying what
/// an open transaction holds back. A batch that cannot be read is not a fetch failure: it goes
/// on to the decoder, whose `--on-corrupt-batch` decides (`fetched` module).
async fn fetch(mut job: FetchJob) {
    let partition = job.handle.partition;
    let max_wait_ms = i32::try_from(job.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut backoff = Duration::from_millis(100);
    loop {
        if job.stop.is_requested() {
            break;
        }
        job.probe.fetch.begin(job.slot);
        let result = tokio::select! {
            r = job.handle.fetch_batches(job.offset, job.max_bytes, max_wait_ms, IsolationLevel::ReadCommitted) => r,
            _ = job.stop.requested() => break,
        };
        match result {
            Ok(fetched) => {
                // Waiting on a full channel below is backpressure, not a stuck broker.
                job.probe.fetch.end(job.slot);
                backoff = Duration::from_millis(100);
                let high_watermark = fetched.high_watermark;
                let stable = fetched.last_stable_offset;
                for batch in &fetched.batches {
                    if let FetchedContent::Control(ControlBatchRecord::Other(kind)) = batch.content
                    {
                        tracing::debug!(
                            partition,
                            offset = batch.base_offset,
                            control_type = kind,
                            "Control record of a type this consumer does not act on; stepped over"
                        );
                    }
                }
                let records =
                    FetchedRecords::new(fetched.batches, job.offset, stable, job.on_corrupt);
                let (aborted, control) = records.skipped();
                job.probe.counters.add_skipped(aborted, control);
                let next = records.next_offset();
                let msg = match next {
                    // Only control batches (transaction markers) or aborted data: nothing to
                    // decode, but the processor's offset moves past them.
                    Some(next) if records.len_upper_bound() == 0 => Some(Fetched::Skipped(next)),
                    Some(next_offset) => Some(Fetched::Records {
                        records,
                        high_watermark,
                        next_offset,
                    }),
                    None => None,
                };
                if let Some(next) = next {
                    job.offset = next;
                }
                if let Some(msg) = msg {
                    tokio::select! {
                        sent = job.tx.send(msg) => if sent.is_err() { break },
                        _ = job.stop.requested() => break,
                    }
                }
                if job.until_caught_up && job.offset >= stable {
                    if stable < high_watermark {
                        let held = held_back(&job.handle, stable, high_watermark).await;
                        tracing::warn!(
                            partition,
                            last_stable_offset = stable,
                            high_watermark,
                            "{}",
                            held.describe()
                        );
                        job.probe.counters.hold_back(held);
                    }
                    let _ = job.tx.send(Fetched::CaughtUp).await;
                    break;
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
                break;
            }
            Err(e) => {
                tracing::warn!(partition, offset = job.offset, error = %e, retry_in = ?backoff, "Fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = job.stop.requested() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    job.probe.fetch.end(job.slot);
}

/// What an open transaction holds back from a read committed consumer at the end of a bounded
/// run: the offsets from the last stable offset to the high watermark, and the producer whose
/// transaction starts there (one read uncommitted fetch at the last stable offset shows it).
async fn held_back(handle: &PartitionHandle, stable: i64, high_watermark: i64) -> HeldBack {
    let first = handle
        .fetch_batches(stable, 64 << 10, 0, IsolationLevel::ReadUncommitted)
        .await
        .ok()
        .and_then(|f| f.batches.into_iter().find(|b| b.last_offset() >= stable));
    HeldBack {
        partition: handle.partition,
        from: stable,
        to: high_watermark,
        producer: first.map(|b| (b.producer_id, b.producer_epoch)),
    }
}

/// Decodes fetched batches on the blocking pool, one at a time, in order.
async fn decode_partition(
    topic: String,
    partition: i32,
    decoder: Arc<Decoder>,
    cache: EnrichmentCache,
    mut rx: mpsc::Receiver<Fetched>,
    tx: mpsc::Sender<Decoded>,
    clock: Clock,
) {
    while let Some(msg) = rx.recv().await {
        let out = match msg {
            Fetched::CaughtUp => Decoded::CaughtUp,
            Fetched::Skipped(next_offset) => Decoded::Skipped(next_offset),
            Fetched::Failed(e) => Decoded::Failed(e.into()),
            Fetched::Records {
                records,
                high_watermark,
                next_offset,
            } => {
                let decoder = Arc::clone(&decoder);
                let table = Arc::clone(cache.snapshot().table());
                let now = clock.now().wall_ms;
                let decoded = tokio::task::spawn_blocking(move || {
                    records
                        .with_records(|raw| decoder.decode(partition, raw.into_iter(), &table, now))
                })
                .await;
                match decoded {
                    Ok(Ok(Ok(batch))) => {
                        cache.count_lookups(batch.enrich_hits, batch.enrich_misses);
                        Decoded::Batch {
                            batch: Box::new(batch),
                            high_watermark,
                            next_offset,
                        }
                    }
                    Ok(Ok(Err(e))) => Decoded::Failed(ConsumeError::Internal(e.to_string())),
                    Ok(Err(source)) => Decoded::Failed(ConsumeError::CorruptBatch {
                        topic: topic.clone(),
                        partition,
                        source,
                    }),
                    Err(e) => Decoded::Failed(ConsumeError::Internal(format!(
                        "the decoding task of partition {partition} failed: {e}"
                    ))),
                }
            }
        };
        let last = !matches!(out, Decoded::Batch { .. } | Decoded::Skipped(_));
        if tx.send(out).await.is_err() || last {
            return;
        }
    }
}

/// What the processor does next.
enum Step {
    /// A decoded batch, and where its fetch ended (the offsets stepped over after its records).
    Batch(Box<DecodedBatch>, i64),
    /// A fetch with nothing to decode ended here.
    Skip(i64),
    Tick(Option<i64>),
    Checkpoint,
    Finish {
        close_windows: bool,
    },
}

/// Runs one partition's pipeline until it is done or fails, and says which to the coordinator.
async fn process(mut processor: Processor) {
    let partition = processor.partition;
    let event = match processor.run().await {
        Ok(()) => Event::Done { partition },
        Err(error) => Event::Failed { partition, error },
    };
    let _ = processor.events.send(event).await;
}

/// One partition's process task: batches, ticks and checkpoints, each on the blocking pool.
struct Processor {
    partition: i32,
    /// Out only while a step runs on the blocking pool.
    pipeline: Option<PartitionPipeline>,
    rx: mpsc::Receiver<Decoded>,
    events: mpsc::Sender<Event>,
    stop: Shutdown,
    board: Arc<Mutex<Board>>,
    status: Arc<PartitionStatus>,
    counters: Arc<Counters>,
    metrics: ConsumeMetrics,
    clock: Clock,
    checkpoint_interval: Duration,
    close_at_end: bool,
    /// Something changed since the last commit.
    dirty: bool,
    last_commit: Instant,
}

impl Processor {
    async fn run(&mut self) -> Result<(), ConsumeError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.status.processor.beat();
            let step = tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Decoded::Batch { batch, high_watermark, next_offset }) => {
                        self.status.high_watermark.store(high_watermark, Ordering::Relaxed);
                        Step::Batch(batch, next_offset)
                    }
                    Some(Decoded::Skipped(next_offset)) => Step::Skip(next_offset),
                    Some(Decoded::CaughtUp) => Step::Finish { close_windows: self.close_at_end },
                    Some(Decoded::Failed(e)) => return Err(e),
                    None => Step::Finish { close_windows: false },
                },
                _ = tick.tick() => {
                    if self.dirty && self.last_commit.elapsed() >= self.checkpoint_interval {
                        Step::Checkpoint
                    } else {
                        let boundary = self.board.lock().unwrap_or_else(|p| p.into_inner()).boundary();
                        Step::Tick(boundary)
                    }
                }
                _ = self.stop.requested() => Step::Finish { close_windows: false },
            };
            let finishing = matches!(step, Step::Finish { .. });
            let progress = self.step(step).await?;
            if finishing {
                return Ok(());
            }
            // A close becomes final, and counts for _SUCCESS, only once committed.
            if progress.tally.windows_closed > 0 {
                self.step(Step::Checkpoint).await?;
            }
        }
    }

    /// Runs one step on the blocking pool, then counts, publishes and reports its commits.
    async fn step(&mut self, step: Step) -> Result<Progress, ConsumeError> {
        let now = self.clock.now();
        let mut p = self
            .pipeline
            .take()
            .expect("the pipeline is back after every step");
        let (p, result) = tokio::task::spawn_blocking(move || {
            let result = run_step(&mut p, step, now);
            (p, result)
        })
        .await
        .map_err(|e| ConsumeError::Internal(format!("a processing task failed: {e}")))?;
        let outcome = result.map(|(progress, commits)| {
            publish(&p, &self.status, &self.board, now);
            (
                progress,
                commits,
                p.core().closed_before(),
                p.core().next_offset(),
            )
        });
        self.pipeline = Some(p);
        let (progress, commits, closed_before, offset) = outcome?;
        for size in self.counters.add_progress(&progress) {
            self.metrics.file_size.record(size as f64);
        }
        if progress.tally.records_read > 0
            || progress.tally.offsets_skipped > 0
            || !progress.written.is_empty()
        {
            self.dirty = true;
        }
        for (committed, duration) in commits {
            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .checkpoint_duration
                .record(duration.as_secs_f64());
            self.dirty = false;
            self.last_commit = Instant::now();
            let _ = self
                .events
                .send(Event::Committed {
                    partition: self.partition,
                    closed_before,
                    closed: committed.closed,
                    offset,
                })
                .await;
        }
        Ok(progress)
    }
}

type StepResult = Result<(Progress, Vec<(core::Committed, Duration)>), PipelineError>;

fn run_step(p: &mut PartitionPipeline, step: Step, now: Now) -> StepResult {
    let mut commits = Vec::new();
    let progress = match step {
        Step::Batch(batch, next_offset) => {
            let mut progress = p.process(&batch, now)?;
            let skipped = p.skip_to(next_offset)?;
            progress.tally.add(&skipped.tally);
            progress.written.extend(skipped.written);
            progress
        }
        Step::Skip(next_offset) => p.skip_to(next_offset)?,
        Step::Tick(boundary) => p.tick(now, boundary)?,
        Step::Checkpoint => {
            let mut progress = Progress::default();
            let started = std::time::Instant::now();
            let committed = p.checkpoint(&mut progress)?;
            commits.push((committed, started.elapsed()));
            progress
        }
        Step::Finish { close_windows } => {
            let mut progress = Progress::default();
            let started = std::time::Instant::now();
            for committed in p.finish(close_windows, &mut progress)? {
                commits.push((committed, started.elapsed()));
            }
            progress
        }
    };
    Ok((progress, commits))
}

/// Publishes a partition's position for the progress line, metrics and idle partitions.
fn publish(p: &PartitionPipeline, status: &PartitionStatus, board: &Mutex<Board>, now: Now) {
    let core = p.core();
    status
        .next_offset
        .store(core.next_offset(), Ordering::Relaxed);
    let (watermark, source) = core.effective_watermark();
    status
        .watermark_ms
        .store(watermark.unwrap_or(i64::MIN), Ordering::Relaxed);
    status.source.store(source as u64, Ordering::Relaxed);
    status
        .open_windows
        .store(core.open_windows().count() as u64, Ordering::Relaxed);
    let buffered = p.memory_by_output();
    for (i, b) in buffered.iter().enumerate() {
        status.buffered[i].store(*b as u64, Ordering::Relaxed);
    }
    board.lock().unwrap_or_else(|p| p.into_inner()).update(
        core.partition(),
        core.closed_before(),
        !core.is_idle(now),
    );
}
