//! The three tasks each partition runs, in offset order, joined by one-batch channels
//! (backpressure: at most one fetched batch in each channel and one in each stage):
//! - [`fetch`]: reads committed record batches from Kafka, retries transient errors with the
//!   fetch policy, applies `--on-data-loss`, and at the end of a bounded run says what an open
//!   transaction holds back.
//! - [`decode_partition`]: JSON -> Arrow columns and enrichment, on the blocking pool; with a
//!   partial cache, the keys a batch misses are asked for (one lookup) between two decodes.
//! - [`process`]: the partition's [`PartitionPipeline`] (route, write, checkpoint) on the blocking
//!   pool; it reports commits, completion and failure to the coordinator as [`Event`]s.
//!
//! None of them decides anything the exactly-once argument rests on: that is `core`'s (what a
//! commit covers) and `coordinator`'s (when a run ends); these only move batches in order and
//! never commit anything the pipeline did not write.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::core::{self, Now};
use super::decode::{DecodeError, DecodedBatch, Decoder};
use super::fetched::{CorruptBatchPolicy, FetchError, FetchedRecords};
use super::instance::Board;
use super::pipeline::{PartitionPipeline, PipelineError, Progress};
use super::progress::{ConsumeProbe, Counters, HeldBack, PartitionStatus};
use super::{ConsumeError, DataLossPolicy};
use crate::enrich::partial::Overlay;
use crate::enrich::EnrichmentCache;
use crate::kafka::{
    ControlBatchRecord, FetchedContent, IsolationLevel, KafkaError, PartitionHandle,
};
use crate::metrics::ConsumeMetrics;
use crate::retry::{RetryPolicy, Verdict};
use crate::shutdown::Shutdown;

/// How often idle partitions are checked (and the processor's loop turns without records).
pub(super) const TICK: Duration = Duration::from_millis(200);

/// Wall clock and a monotonic clock from one origin (tokio's, so tests can pause it).
#[derive(Debug, Clone)]
pub(super) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> Now {
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
pub(super) enum Event {
    Committed {
        partition: i32,
        /// The next offset not yet routed, as committed (shown to the group).
        next_offset: i64,
        /// The commit closed windows (their markers may be due).
        closed_windows: bool,
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
pub(super) enum Fetched {
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
pub(super) enum Decoded {
    Batch {
        batch: Box<DecodedBatch>,
        high_watermark: i64,
        next_offset: i64,
    },
    Skipped(i64),
    CaughtUp,
    Failed(ConsumeError),
}

pub(super) struct FetchJob {
    pub(super) handle: PartitionHandle,
    pub(super) offset: i64,
    pub(super) max_bytes: i32,
    pub(super) max_wait: Duration,
    pub(super) until_caught_up: bool,
    pub(super) on_data_loss: DataLossPolicy,
    pub(super) on_corrupt: CorruptBatchPolicy,
    pub(super) tx: mpsc::Sender<Fetched>,
    pub(super) stop: Shutdown,
    pub(super) probe: Arc<ConsumeProbe>,
    pub(super) slot: usize,
    /// Transient fetch errors are retried with this policy (by default for as long as it
    /// takes: a consumer outlives a broker's outage); a permanent one fails the partition.
    pub(super) retry: RetryPolicy,
}

/// Fetches one partition in offset order until stopped (or caught up). A failed fetch is retried
/// from the same offset with the fetch policy when `kafka::fetch_verdict` calls it transient;
/// a permanent error, or `OffsetOutOfRange` under `--on-data-loss fail`, fails the partition.
/// Fetches are read committed: aborted transactions' data and markers are stepped over (the
/// offset moves past them), and `--until-caught-up` ends at the last stable offset, saying what
/// an open transaction holds back. A batch that cannot be read is not a fetch failure: it goes
/// on to the decoder, whose `--on-corrupt-batch` decides (`fetched` module).
pub(super) async fn fetch(mut job: FetchJob) {
    let partition = job.handle.partition;
    let max_wait_ms = i32::try_from(job.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut backoff = job.retry.backoff();
    let mut failing_since = Instant::now();
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
                backoff.reset();
                failing_since = Instant::now();
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
                topic,
                requested,
                earliest,
                latest,
                ..
            }) => match job
                .on_data_loss
                .resume_at(&topic, partition, requested, earliest, latest)
            {
                Ok(offset) if offset > requested => job.offset = offset,
                // Above the end (a truncated log): no policy makes that safe to skip.
                Ok(_) => {
                    let e = KafkaError::OffsetOutOfRange {
                        topic,
                        partition,
                        requested,
                        earliest,
                        latest,
                    };
                    let _ = job.tx.send(Fetched::Failed(e)).await;
                    break;
                }
                Err(e) => {
                    let _ = job.tx.send(Fetched::Failed(e)).await;
                    break;
                }
            },
            Err(e) => {
                let delay = match crate::kafka::fetch_verdict(&e) {
                    Verdict::Transient => backoff.next_delay(failing_since.elapsed()),
                    Verdict::Permanent => None,
                };
                let Some(delay) = delay else {
                    let _ = job.tx.send(Fetched::Failed(e)).await;
                    break;
                };
                tracing::warn!(partition, offset = job.offset, error = %e, retry_in = ?delay, "Fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = job.stop.requested() => break,
                }
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

/// What one partition's decode task needs.
pub(super) struct DecodeJob {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) decoder: Arc<Decoder>,
    pub(super) cache: EnrichmentCache,
    pub(super) rx: mpsc::Receiver<Fetched>,
    pub(super) tx: mpsc::Sender<Decoded>,
    pub(super) clock: Clock,
    pub(super) stop: Shutdown,
}

/// Decodes fetched batches on the blocking pool, one at a time, in order.
pub(super) async fn decode_partition(job: DecodeJob) {
    let DecodeJob {
        topic,
        partition,
        decoder,
        cache,
        mut rx,
        tx,
        clock,
        mut stop,
    } = job;
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
                let now = clock.now().wall_ms;
                let decoded = if cache.is_partial() {
                    tokio::select! {
                        decoded = decode_partial(&decoder, &cache, partition, records, now) => decoded,
                        // A batch waiting for an unreachable dimension does not hold up a stop:
                        // it is left undecoded, so nothing of it is committed, and a restart
                        // reads it again.
                        _ = stop.requested() => return,
                    }
                } else {
                    decode_full(&decoder, &cache, partition, records, now).await
                };
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

type DecodeResult =
    Result<Result<Result<DecodedBatch, DecodeError>, FetchError>, tokio::task::JoinError>;

/// Decodes a batch from the whole table (a snapshot: a refresh meanwhile does not matter).
async fn decode_full(
    decoder: &Arc<Decoder>,
    cache: &EnrichmentCache,
    partition: i32,
    records: FetchedRecords,
    now: i64,
) -> DecodeResult {
    let decoder = Arc::clone(decoder);
    let table = Arc::clone(cache.snapshot().table());
    tokio::task::spawn_blocking(move || {
        records.with_records(|raw| decoder.decode(partition, raw.into_iter(), table.as_ref(), now))
    })
    .await
}

/// Decodes a batch through the partial cache: the keys it does not hold are asked for in one
/// lookup (which waits through an outage for at most `--enrich-miss-timeout`: backpressure, the
/// fetcher stops at its channel), and the batch is decoded again with the answers in front of
/// the cache. Again while keys are missing (an entry found on the first pass may expire or be
/// evicted before the next): each round answers at least one more key, so it ends.
async fn decode_partial(
    decoder: &Arc<Decoder>,
    cache: &EnrichmentCache,
    partition: i32,
    records: FetchedRecords,
    now: i64,
) -> DecodeResult {
    let mut records = records;
    let mut overlay = Overlay::default();
    let mut first = None;
    loop {
        let (d, c) = (Arc::clone(decoder), cache.clone());
        let (back, answers, decoded) = tokio::task::spawn_blocking(move || {
            let decoded = records.with_records(|raw| {
                c.with_view(&overlay, |view| {
                    d.decode(partition, raw.into_iter(), view, now)
                })
            });
            (records, overlay, decoded)
        })
        .await?;
        (records, overlay) = (back, answers);
        let batch = match decoded {
            Ok(Some(Ok(batch))) => batch,
            Ok(Some(Err(e))) => return Ok(Ok(Err(e))),
            Ok(None) => return decode_full(decoder, cache, partition, records, now).await,
            Err(e) => return Ok(Err(e)),
        };
        // The cache's own hit rate is the first pass's.
        let (hits, pending) = *first.get_or_insert((
            batch.enrich_hits + batch.enrich_misses,
            batch.enrich_pending,
        ));
        if batch.pending_keys.is_empty() {
            cache.count_partial(hits, pending, batch.enrich_unreachable);
            return Ok(Ok(Ok(batch)));
        }
        overlay.merge(cache.resolve(&batch.pending_keys).await);
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
pub(super) async fn process(mut processor: Processor) {
    let partition = processor.partition;
    let event = match processor.run().await {
        Ok(()) => Event::Done { partition },
        Err(error) => Event::Failed { partition, error },
    };
    let _ = processor.events.send(event).await;
}

/// One partition's process task: batches, ticks and checkpoints, each on the blocking pool.
pub(super) struct Processor {
    pub(super) partition: i32,
    /// Out only while a step runs on the blocking pool.
    pub(super) pipeline: Option<PartitionPipeline>,
    pub(super) rx: mpsc::Receiver<Decoded>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) stop: Shutdown,
    pub(super) board: Arc<Mutex<Board>>,
    pub(super) status: Arc<PartitionStatus>,
    pub(super) counters: Arc<Counters>,
    pub(super) metrics: ConsumeMetrics,
    pub(super) clock: Clock,
    pub(super) checkpoint_interval: Duration,
    pub(super) close_at_end: bool,
    /// Something changed since the last commit.
    pub(super) dirty: bool,
    pub(super) last_commit: Instant,
    /// Steps running on the blocking pool, across the run's partitions (see [`StepsInFlight`]).
    pub(super) in_flight: StepsInFlight,
}

/// How many processing steps are running on the blocking pool. Aborting a process task does not
/// stop its step: a write stalled by a network cut can land after the run that started it was
/// dropped. The driver waits for this to reach zero after a dropped run and then sweeps, so such
/// a late file (superseded by the new owner's) is removed by the member that wrote it.
#[derive(Debug, Clone, Default)]
pub(super) struct StepsInFlight(Arc<std::sync::atomic::AtomicUsize>);

impl StepsInFlight {
    fn enter(&self) -> StepGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        StepGuard(Arc::clone(&self.0))
    }

    pub(super) fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// Counts one step until it ends (also when it panics).
struct StepGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StepGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
        let guard = self.in_flight.enter();
        let (p, result) = tokio::task::spawn_blocking(move || {
            let _counted = guard;
            let result = run_step(&mut p, step, now);
            (p, result)
        })
        .await
        .map_err(|e| ConsumeError::Internal(format!("a processing task failed: {e}")))?;
        let outcome = result.map(|(progress, commits)| {
            publish(&p, &self.status, &self.board, now);
            (progress, commits, p.core().next_offset())
        });
        self.pipeline = Some(p);
        let (progress, commits, next_offset) = outcome?;
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
            self.counters.checkpoints.add(1);
            self.metrics
                .checkpoint_duration
                .record(duration.as_secs_f64());
            self.dirty = false;
            self.last_commit = Instant::now();
            let _ = self
                .events
                .send(Event::Committed {
                    partition: self.partition,
                    next_offset,
                    closed_windows: !committed.closed.is_empty(),
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
