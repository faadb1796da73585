//! `app consume`: Kafka -> decode -> enrich -> event-time windows -> Parquet, exactly once.
//!
//! ```text
//!  per partition (independent, `tasks`):
//!   fetch task ──(1 batch)──▶ decode task ──(1 batch)──▶ process task ──▶ output store
//!   rskafka, read committed,  JSON -> Arrow columns,       PartitionPipeline: core routes,
//!   retry policy, data loss   enrichment (columnar),       sink writes Parquet row groups,
//!                             dead letters                 checkpoint commits (blocking pool)
//!  per run (a set of partitions):
//!   Coordinator (pure): claims, stop/drain/drop, takeovers, marker sweeps, the end
//!   driver (this file): carries out its actions, feeds it events, effects and time
//! ```
//!
//! Layout:
//! - [`config`]: one config struct per stage, and `--on-data-loss`.
//! - [`coordinator`]: the pure coordinator of one run over a set of partitions.
//! - [`core`]: the pure per-partition decisions (routing, windows, watermark, what to commit).
//! - [`fetched`]: a fetch's record batches as the records decode reads, without an allocation
//!   per record; where the next fetch starts.
//! - [`decode`]: records into Arrow columns, enrichment, dead letters (pure).
//! - [`flat_json`]: decode's fast path for flat JSON objects (serde_json decides the rest).
//! - [`pipeline`]: core + sink for one partition, synchronously; recovery (prepare, then claim).
//! - [`instance`]: cross-partition decisions: the idle boundary and the marker rule (pure).
//! - [`markers`]: the success-marker sweep over the output.
//! - [`tasks`]: the fetch, decode and process task of each partition.
//! - [`progress`]: counters (once), partition status, summary, progress line, metrics, health.
//! - this file: the instance (what lives as long as the process), the group link, and the
//!   driver of each run: one run for static `--partitions`, one per group generation with
//!   `--group` ([`run_group`] says why that stays exactly once across rebalances).
//!
//! Exactly once is argued in [`core`]'s module docs (what a commit covers) and
//! [`coordinator`]'s (when a run claims, ends, drops a partition); the tasks only move batches
//! in order and never commit anything the pipeline did not write. Memory is bounded by
//! configuration: per partition at most one fetched batch in each channel and one in each
//! stage, and the pipeline's open row groups stay under `--max-buffer-bytes` divided among the
//! partitions.

mod config;
pub mod coordinator;
pub mod core;
pub mod decode;
pub mod fetched;
pub mod flat_json;
pub mod instance;
pub mod markers;
pub mod pipeline;
pub mod progress;
mod tasks;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use self::config::{
    ConsumeConfig, DataLossPolicy, IdleAdvance, RecordsConfig, RunConfig, SinkConfig, SourceConfig,
    StartAt, TableConfig, WindowsConfig,
};
use self::coordinator::{
    Action, Coordinator, CoordinatorConfig, DropReason, EndRequest, Failure, Input,
};
use self::core::CoreConfig;
pub use self::core::LatePolicy;
use self::decode::{DecodeConfig, Decoder};
pub use self::fetched::CorruptBatchPolicy;
use self::fetched::FetchError;
use self::instance::Board;
use self::pipeline::{prepare, PartitionPipeline, PipelineConfig, PipelineError, Recovered};
use self::progress::{ConsumeProbe, Counters, PartitionStatus, StatusLine};
pub use self::progress::{ConsumeSummary, HeldBack};
use self::tasks::{Clock, DecodeJob, Event, FetchJob, Processor, StepsInFlight};
use crate::checkpoint::{self, CheckpointError};
use crate::enrich::{EnrichError, EnrichmentCache, MySqlSource};
use crate::group::{GroupConfig, GroupEvent, GroupMember, Revocation, RevokeReason};
use crate::kafka::{Kafka, KafkaError, PartitionHandle};
use crate::metrics::{BusyClocks, ConsumeMetrics, MetricsError, Probe};
use crate::output::delta::DeltaTable;
use crate::output::layout::{SuccessScope, WriterId};
use crate::output::table::TableCommitter;
use crate::output::{OutputSchema, ParquetFormatError, Store, StoreError};
use crate::retry::RetryPolicy;
use crate::schema::FieldType;
use crate::shutdown::{self, Shutdown};

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
    Table(#[from] crate::output::table::TableError),
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

/// With `--group`: how often the success markers are checked against every partition's
/// checkpoint (other instances' commits are seen only this way).
const MARKER_SWEEP: Duration = Duration::from_secs(5);
/// At most one marker sweep per this much time for this instance's own commits.
const MARKER_SPACING: Duration = Duration::from_secs(1);

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
    summary.enrich_unreachable = stats.unreachable;
    if stats.mode == "partial" {
        let asked = stats.cache_hits + stats.cache_misses;
        summary.enrich_detail.push(format!(
            "partial cache: hit rate {:.2}% ({} of {} records), {} lookups asking {} keys ({} \
             failed attempts), {} entries in {:.1} MB, {} evicted",
            if asked == 0 {
                100.0
            } else {
                100.0 * stats.cache_hits as f64 / asked as f64
            },
            stats.cache_hits,
            asked,
            stats.queries,
            stats.keys_queried,
            stats.query_failures,
            stats.rows,
            stats.bytes as f64 / 1e6,
            stats.evictions
        ));
    }
    if let Some(cdc) = &stats.cdc {
        summary.enrich_detail.push(format!(
            "binary log: {cdc}; {} changed keys applied",
            stats.changes
        ));
    }
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
    /// Where closed windows are published (`--table`).
    table: Option<Arc<dyn TableCommitter>>,
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
        let table = match &config.sink.table {
            TableConfig::None => None,
            TableConfig::Delta(delta) => {
                let (store, schema, delta) = (
                    Arc::clone(&store),
                    Arc::clone(output_schema.arrow()),
                    delta.clone(),
                );
                let opened = blocking(move || {
                    let root = store.table_root()?;
                    Ok(DeltaTable::open_or_create(root, &schema, delta)?)
                })
                .await?;
                tracing::info!(table = %opened.describe(), version = opened.version(), "Opened the Delta table");
                Some(Arc::new(opened) as Arc<dyn TableCommitter>)
            }
        };
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
            table,
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
/// the committed files ([`markers`]). Two instances may write the same marker; its content
/// depends only on the committed state, so the second write changes nothing.
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

/// Runs `assigned` until `until` ends it (or, with `until_caught_up`, until every partition is
/// read to its end): the driver of the [`Coordinator`]. It prepares every partition's recovery,
/// then carries out the coordinator's actions (claims, sweeps and takeover checks as effects
/// that answer with an input; the fetch, decode and process tasks of each claimed partition)
/// and feeds it what happens: the end request, the tasks' events, the effects' answers, time.
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

    // Recovery of every assigned partition is prepared before anything is fetched, and applied
    // when the partition is claimed (`PartitionPipeline::claim`).
    let prepared = {
        let (store, topic, assigned) = (Arc::clone(store), topic.clone(), assigned.clone());
        blocking(move || Ok(prepare(store.as_ref(), &topic, window_ms, &assigned)?)).await?
    };
    let resumed = prepared.values().any(|r| r.checkpoint.is_some());
    let mut prepared: BTreeMap<i32, Option<Recovered>> =
        prepared.into_iter().map(|(p, r)| (p, Some(r))).collect();

    // Start offsets: the checkpoint's, else --start. A broker unreachable here (a network cut
    // while the group assigns) is waited out as a fetch is; the run's end (a revocation, a
    // shutdown) ends the wait: nothing was claimed, so there is nothing to drain.
    let mut revocation: Option<Revocation> = None;
    let mut sources = tokio::select! {
        sources = open_sources(instance, assigned) => sources?,
        end = until.next(&mut revocation) => {
            end?;
            let reason = revocation.as_ref().map_or("shutdown", revocation_label);
            tracing::info!(partitions = ?assigned, reason, "The run ended before its partitions were set up");
            drop(revocation);
            let run = PartitionsRun {
                partitions: assigned.clone(),
                windows_open: 0,
                resumed,
            };
            return Ok((run, reason));
        }
    };
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
    let slots: BTreeMap<i32, usize> = assigned.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let board = Arc::new(Mutex::new(Board::new(assigned.iter().copied())));
    let metrics = ConsumeMetrics::new(&instance.registry);
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
        table: instance.table.clone(),
    };
    let scope_partitions: BTreeSet<i32> = match &scope {
        SuccessScope::AllPartitions => (0..instance.partition_count as i32).collect(),
        SuccessScope::Some(list) => list.iter().copied().collect(),
    };
    let markers = MarkerSweep {
        store: Arc::clone(store),
        topic: topic.clone(),
        window_ms,
        scope,
        partitions: scope_partitions,
        counters: Arc::clone(counters),
    };
    let claimer = Claimer {
        instance,
        pipeline_config: pipeline_config.clone(),
        writer,
    };

    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let mut tasks = JoinSet::new();
    let mut effects = FuturesUnordered::new();
    // What the coordinator's inputs refer to: claimed pipelines waiting for `Start`, and the
    // errors behind `ClaimFailed`/`ClaimRefused`/`Failed`/`GroupFailed`.
    let mut claimed: BTreeMap<i32, Box<PartitionPipeline>> = BTreeMap::new();
    let mut errors: BTreeMap<i32, ConsumeError> = BTreeMap::new();
    let mut group_error: Option<ConsumeError> = None;
    let mut end_asked = false;
    let in_flight = StepsInFlight::default();

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
    let mut status_line = StatusLine::default();

    let base = Instant::now();
    let (mut coordinator, first) = Coordinator::new(
        CoordinatorConfig {
            group,
            drain_timeout: config.run.drain_timeout,
            claim_retry: CLAIM_RETRY,
            sweep_every: MARKER_SWEEP,
            sweep_spacing: MARKER_SPACING,
        },
        assigned,
        Duration::ZERO,
    );
    let mut actions: VecDeque<Action> = first.into();
    let finish = 'run: loop {
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Claim { partition, attempt } => {
                    if attempt > 0 {
                        tracing::info!(partition, attempt, "Claiming again on a fresh recovery");
                    }
                    let recovered = prepared.get_mut(&partition).and_then(Option::take);
                    let offsets = sources[&partition].1;
                    effects.push(claimer.claim(partition, recovered, offsets).boxed());
                }
                Action::Start { partition } => {
                    let pipeline = claimed
                        .remove(&partition)
                        .expect("a partition starts once claimed");
                    let (handle, _) = sources.remove(&partition).expect("a partition starts once");
                    let slot = slots[&partition];
                    let (fetch_tx, fetch_rx) = mpsc::channel(1);
                    let (decoded_tx, decoded_rx) = mpsc::channel(1);
                    tasks.spawn(tasks::fetch(FetchJob {
                        handle,
                        offset: pipeline.core().next_offset(),
                        max_bytes: config.source.fetch_max_bytes,
                        max_wait: config.source.fetch_max_wait,
                        until_caught_up: config.source.until_caught_up,
                        on_data_loss: config.source.on_data_loss,
                        on_corrupt: config.source.on_corrupt_batch,
                        tx: fetch_tx,
                        stop: stop_handle.clone(),
                        probe: Arc::clone(&probe),
                        slot,
                        retry: FETCH_RETRY,
                    }));
                    tasks.spawn(tasks::decode_partition(DecodeJob {
                        topic: topic.clone(),
                        partition,
                        decoder: Arc::clone(&instance.decoder),
                        cache: instance.cache.clone(),
                        rx: fetch_rx,
                        tx: decoded_tx,
                        clock: instance.clock.clone(),
                        stop: stop_handle.clone(),
                    }));
                    tasks.spawn(tasks::process(Processor {
                        partition,
                        pipeline: Some(*pipeline),
                        rx: decoded_rx,
                        events: events_tx.clone(),
                        stop: stop_handle.clone(),
                        board: Arc::clone(&board),
                        status: Arc::clone(&statuses[slot]),
                        counters: Arc::clone(counters),
                        metrics: metrics.clone(),
                        clock: instance.clock.clone(),
                        checkpoint_interval: config.sink.checkpoint_interval,
                        close_at_end: config.windows.close_at_end && config.source.until_caught_up,
                        dirty: false,
                        last_commit: Instant::now(),
                        in_flight: in_flight.clone(),
                    }));
                }
                Action::ShowOffset { partition, offset } => until.committed(partition, offset),
                Action::Stop => {
                    probe.stopping.store(true, Ordering::Relaxed);
                    stop.trigger();
                }
                Action::ReportFailure { partition } => {
                    let error = errors.get(&partition).map(ToString::to_string);
                    let error = error.unwrap_or_default();
                    tracing::error!(partition, error = %error, "A partition failed; stopping");
                    probe.fail(format!("partition {partition} failed: {error}"));
                }
                Action::CheckTakeover { partition } => {
                    effects.push(claimer.check_takeover(partition).boxed());
                }
                Action::Dropped { partition, why } => {
                    let error = errors.remove(&partition).map(|e| e.to_string());
                    match why {
                        DropReason::Fenced => tracing::warn!(
                            partition, reason = ?error,
                            "Partition taken over by another instance; dropping it"
                        ),
                        DropReason::TakenOver => tracing::warn!(
                            partition, error = ?error,
                            "Partition taken over by another instance while this one wrote; \
                             dropping it"
                        ),
                        DropReason::ClaimedTooLate => {
                            claimed.remove(&partition);
                            tracing::info!(
                                partition,
                                "Generation revoked while claiming its partitions; claiming \
                                 nothing more"
                            );
                        }
                    }
                }
                Action::Sweep { reconcile } => effects.push(markers.sweep(reconcile).boxed()),
                Action::Finish(finish) => break 'run finish,
            }
        }
        let input = tokio::select! {
            end = until.next(&mut revocation), if !end_asked => {
                end_asked = true;
                match end {
                    Ok(request) => {
                        if !group && request == EndRequest::Drain {
                            tracing::info!("Shutdown requested: writing what is buffered and committing");
                        }
                        Input::End(request)
                    }
                    Err(e) => {
                        group_error = Some(e);
                        Input::GroupFailed
                    }
                }
            }
            Some(event) = events.recv() => match event {
                Event::Committed { partition, next_offset, closed_windows } => Input::Committed {
                    partition,
                    next_offset,
                    closed_windows,
                },
                Event::Done { partition } => Input::Done { partition },
                Event::Failed { partition, error } => {
                    let fenced = is_fenced(&error);
                    errors.insert(partition, error);
                    Input::Failed { partition, fenced }
                }
            },
            Some(done) = effects.next() => match done {
                Effected::Claimed { partition, result } => match result {
                    Ok(pipeline) => {
                        let next_offset = pipeline.core().next_offset();
                        claimed.insert(partition, pipeline);
                        Input::Claimed { partition, next_offset }
                    }
                    Err(e) => {
                        let refused = is_fenced(&e);
                        if refused {
                            tracing::info!(partition, reason = %e, "Claim refused");
                        }
                        errors.insert(partition, e);
                        if refused {
                            Input::ClaimRefused { partition }
                        } else {
                            Input::ClaimFailed { partition }
                        }
                    }
                },
                Effected::TakeoverChecked { partition, taken_over } => Input::TakeoverChecked {
                    partition,
                    taken_over,
                },
                Effected::Swept => Input::SweepDone,
            },
            _ = status_tick.tick() => {
                let line = status_line.render(counters, &statuses);
                match &spinner {
                    Some(bar) => bar.set_message(line),
                    None => tracing::info!("{line}"),
                }
                continue;
            }
            _ = sleep_until(coordinator.deadline().map(|d| base + d)) => Input::Tick,
        };
        actions.extend(coordinator.handle(input, base.elapsed()));
    };
    drop(effects);
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
    if finish.sweep {
        // What this run committed last may complete windows.
        markers.sweep(false).await;
    } else if finish.dropped && !coordinator.started().is_empty() {
        // A dropped run's steps may still be writing (a write stalled by a network cut lands
        // once the link is back). Wait for them, within the drain timeout, then sweep: a file
        // this writer landed after losing the partition is superseded by the new owner's, and
        // is removed here rather than left for whichever sweep comes next.
        let waited = steps_finished(&in_flight, config.run.drain_timeout).await;
        if waited {
            markers.sweep(false).await;
        }
    }
    if let Some(failure) = finish.failure {
        return Err(match failure {
            Failure::Partition(p) | Failure::Claim(p) => errors.remove(&p).unwrap_or_else(|| {
                ConsumeError::Internal(format!("partition {p} failed without an error"))
            }),
            Failure::DrainTimeout => ConsumeError::DrainTimeout(config.run.drain_timeout),
            Failure::Group => group_error.take().unwrap_or_else(|| {
                ConsumeError::Internal("the group failed without an error".into())
            }),
        });
    }
    if finish.await_revocation && revocation.is_none() {
        // Every partition of the generation was taken over: wait for the rebalance.
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

/// Waits until no processing step is running, for at most `bound`; whether it got there.
async fn steps_finished(in_flight: &StepsInFlight, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while !in_flight.is_idle() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Where a partition without a usable checkpoint may start.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// `--start`'s offset.
    fresh: i64,
    earliest: i64,
    latest: i64,
}

/// What an effect of the driver answers.
enum Effected {
    Claimed {
        partition: i32,
        result: Result<Box<PartitionPipeline>, ConsumeError>,
    },
    TakeoverChecked {
        partition: i32,
        taken_over: bool,
    },
    Swept,
}

fn is_fenced(e: &ConsumeError) -> bool {
    matches!(
        e,
        ConsumeError::Pipeline(PipelineError::Checkpoint(CheckpointError::Fenced { .. }))
    )
}

/// Claims partitions for one run, and checks takeovers of them.
struct Claimer<'a> {
    instance: &'a Instance,
    pipeline_config: PipelineConfig,
    writer: WriterId,
}

impl Claimer<'_> {
    /// Claims `partition` from its prepared recovery (a fresh one when `recovered` is `None`: a
    /// refused claim is tried again after the previous owner's last commit), after applying
    /// `--on-data-loss` to a checkpoint whose resume offset retention deleted.
    async fn claim(
        &self,
        partition: i32,
        recovered: Option<Recovered>,
        offsets: Offsets,
    ) -> Effected {
        let instance = self.instance;
        let store = Arc::clone(&instance.store);
        let topic = instance.topic.clone();
        let window_ms = instance.config.windows.window.window_ms;
        let on_data_loss = instance.config.source.on_data_loss;
        let pipeline_config = self.pipeline_config.clone();
        let output_schema = instance.output_schema.clone();
        let writer = self.writer;
        let now = instance.clock.now();
        let result = blocking(move || {
            let mut rec = match recovered {
                Some(rec) => rec,
                None => prepare(
                    store.as_ref(),
                    &topic,
                    window_ms,
                    &BTreeSet::from([partition]),
                )?
                .remove(&partition)
                .expect("prepared the partition asked for"),
            };
            if let Some(cp) = rec.checkpoint.as_mut() {
                let at = on_data_loss.resume_at(
                    &topic,
                    partition,
                    cp.resume_offset,
                    offsets.earliest,
                    offsets.latest,
                )?;
                cp.next_offset = cp.next_offset.max(at);
                cp.resume_offset = at;
            }
            Ok(Box::new(PartitionPipeline::claim(
                store,
                &pipeline_config,
                &output_schema,
                partition,
                writer,
                &rec,
                offsets.fresh,
                now,
            )?))
        })
        .await;
        Effected::Claimed { partition, result }
    }

    /// Whether another writer committed the newest checkpoint of `partition` (so a failure of
    /// ours on it is the consequence of a takeover, not a storage fault).
    async fn check_takeover(&self, partition: i32) -> Effected {
        let store = Arc::clone(&self.instance.store);
        let topic = self.instance.topic.clone();
        let window_ms = self.instance.config.windows.window.window_ms;
        let newest = blocking(move || {
            Ok(checkpoint::load(store.as_ref(), &topic, partition, window_ms)?.checkpoint)
        })
        .await;
        let writer = self.writer.to_string();
        Effected::TakeoverChecked {
            partition,
            taken_over: matches!(newest, Ok(Some(cp)) if cp.writer != writer),
        }
    }
}

/// Sweeps the success markers of one run's scope (`markers`).
struct MarkerSweep {
    store: Arc<dyn Store>,
    topic: String,
    window_ms: i64,
    scope: SuccessScope,
    partitions: BTreeSet<i32>,
    counters: Arc<Counters>,
}

impl MarkerSweep {
    /// One sweep on the blocking pool. A failure is logged and retried by the next sweep:
    /// markers are derived state, never lost.
    async fn sweep(&self, reconcile: bool) -> Effected {
        let store = Arc::clone(&self.store);
        let (topic, scope, partitions) = (
            self.topic.clone(),
            self.scope.clone(),
            self.partitions.clone(),
        );
        let window_ms = self.window_ms;
        let written = blocking(move || {
            let found = markers::sweep(
                store.as_ref(),
                &topic,
                window_ms,
                &scope,
                &partitions,
                reconcile,
            )?;
            markers::apply(store.as_ref(), found)
        })
        .await;
        match written {
            Ok(n) => {
                self.counters.markers_written.add(n);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "Checking the success markers failed; retrying at the next sweep"
            ),
        }
        Effected::Swept
    }
}

/// Each assigned partition's client and offsets (earliest, latest, and where a partition
/// without a checkpoint starts), retried as a fetch is (`FETCH_RETRY`, `kafka::fetch_verdict`).
async fn open_sources(
    instance: &Instance,
    assigned: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, (PartitionHandle, Offsets)>, ConsumeError> {
    let (config, topic) = (&instance.config, &instance.topic);
    let mut sources = BTreeMap::new();
    for &p in assigned {
        let what = format!("setting up {topic}/{p}");
        let (handle, (earliest, latest)) = crate::retry::retry(
            &FETCH_RETRY,
            &what,
            None,
            crate::kafka::fetch_verdict,
            || async {
                let handle = PartitionHandle {
                    config: config.source.kafka.clone(),
                    topic: topic.clone(),
                    partition: p,
                    client: instance.kafka.partition(topic, p).await?,
                };
                let offsets = handle.offsets().await?;
                Ok((handle, offsets))
            },
        )
        .await
        .map_err(|e| match e.into_last() {
            Some(e) => ConsumeError::from(e),
            None => ConsumeError::Internal(format!("{what}: stopped")),
        })?;
        let fresh = match config.source.start {
            StartAt::Earliest => earliest,
            StartAt::Latest => latest,
        };
        sources.insert(
            p,
            (
                handle,
                Offsets {
                    fresh,
                    earliest,
                    latest,
                },
            ),
        );
    }
    Ok(sources)
}

/// How a refused claim is retried: while a previous owner's last commit lands (it was lost or
/// is still draining), for up to 10 s.
const CLAIM_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2))
        .with_deadline(Duration::from_secs(10));

/// How a fetch's transient errors are retried: for as long as it takes (a consumer outlives a
/// broker's outage), at most every 5 s.
const FETCH_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// The `reason` label of [`crate::metrics::C_GROUP_REVOCATIONS`].
fn revocation_label(r: &Revocation) -> &'static str {
    match r.reason {
        RevokeReason::Rebalance => "rebalance",
        RevokeReason::Lost { .. } => "lost",
        RevokeReason::Shutdown => "shutdown",
    }
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
