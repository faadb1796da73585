//! `app produce`: CSV files to the Kafka topic, typed, paced, and nothing lost.
//!
//! ```text
//!  reader thread: files in order ─▶ chunks of whole records (CsvFile::chunks), dealt in turn
//!      │ bounded mpsc per worker
//!      ▼
//!  N worker threads: ChunkEncoder (parse, type, JSON, key, murmur2 partition, lane) ─▶ Segments
//!      │ bounded mpsc per worker, read back in the same turn: input order
//!      ▼
//!  collector (async): rejects ─▶ rejects/*.jsonl; per lane one open batch, grown while the
//!      │ lane's previous batch is in flight; full or lingered ─▶ the lane's sender
//!      ▼
//!  one sender task per lane: produce (acks=all), retried with backoff ─▶ ResumeTracker
//! ```
//!
//! Ordering: a lane is a fixed slice of one partition's keys ([`Lanes`]), and each lane has one
//! batch in flight, retried until acknowledged before the lane's next batch is sent. So a retried
//! batch can never overtake a later batch holding the same key, and one institution's rows stay
//! in order within their partition; only rows of *different* keys may interleave differently
//! (several lanes of one partition are in flight together, which keeps the encoder and LZ4 busy
//! while the broker answers). Rows without a key all use lane 0 of their partition.
//!
//! Idempotence: each lane is an idempotent producer of its own. Before its first batch it asks
//! the broker for a producer id (`InitProducerId`), and every batch carries that id and a
//! sequence number: 0 for the first, then the previous batch's plus its record count (wrapping
//! at `i32::MAX`, [`ProducerSequence::next`]); a retry resends the same batch with the same
//! sequence. A broker appends a producer's batches to a partition only in sequence order and
//! recognises a resent batch it already holds, acknowledging it without writing it again. So a
//! batch whose acknowledgement was lost (a timeout, a broken connection, a broker restart) is
//! retried without being written twice. Kafka keeps one sequence per (producer id, partition),
//! and the lanes of a partition are in flight together: sharing one id, their batches would
//! have to reach the broker in sequence order, which concurrent lanes cannot promise. One id per
//! lane, whose one batch in flight is always the next of its sequence, needs no coordination;
//! it costs one `InitProducerId` round trip per lane and run, nothing per record.
//!
//! The broker's refusals ([`SequenceError`]): `DUPLICATE_SEQUENCE_NUMBER` says the partition
//! holds the batch, so it counts as acknowledged. `UNKNOWN_PRODUCER_ID`,
//! `INVALID_PRODUCER_EPOCH`, `PRODUCER_FENCED` and `OUT_OF_ORDER_SEQUENCE_NUMBER` say the broker
//! can no longer place the batch in the lane's sequence: it expired or lost the producer's
//! state, or lost batches it had acknowledged. Resent with the same id, the batch would be
//! refused until the retry timeout. The lane asks for a new id, starts its sequence again at 0
//! and resends the batch, and warns (partition, lane, old and new id, the reason) that this one
//! batch may now be in the topic twice: if an earlier attempt of it was written before the
//! broker lost the state, the broker cannot tell the resend from a new batch. Failing the run
//! instead would not avoid that duplicate: the resume point is the first row not acknowledged,
//! so `--resume-from` would resend this batch too, and with it every batch other lanes had
//! acknowledged after it. A new id bounds the possible duplicate to one batch and keeps the
//! run going; the time it takes counts against `--retry-timeout` like any other retry.
//!
//! Idempotence holds within a run. A resumed run has new producer ids: rows the failed run had
//! sent after its resume point are sent again (at least once; `_source` identifies them).
//!
//! Retries ([`crate::retry`]): a failed attempt is retried with jittered exponential backoff
//! (100 ms doubling to 5 s) until `--retry-timeout` after the batch's first attempt, unless
//! [`produce_verdict`] calls the error permanent (authorization refused, a batch or record the
//! broker will never take, `InitProducerId` refused for good, e.g. without `IDEMPOTENT_WRITE`):
//! then the run stops at once, keeping the resume point, instead of retrying for nothing.
//!
//! A row counts as sent only once Kafka acknowledged its batch. The [`ResumeTracker`] knows the
//! first row not yet acknowledged, which is what a failed or interrupted run prints as
//! `--resume-from FILE:LINE`. Memory is bounded: chunks queued per worker, one open and one
//! in-flight batch (of `--batch-bytes`) per lane, and the collector stops taking chunks while a
//! full batch waits for its lane.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::csv_source::{self, CsvFile, FileLayout, FileStats, Reject, SourceConfig, SourceError};
use crate::encode::{ChunkEncoder, ChunkJob, EncodedChunk, Lanes, Position, Segment};
use crate::kafka::{
    produce_verdict, Compression, Kafka, KafkaConfig, KafkaError, PartitionHandle,
    ProducerSequence, RawRecords, SequenceError,
};
use crate::metrics::{
    BusyClocks, Exposition, Health, MetricsError, Probe, P_BATCHES, P_BYTES_SENT, P_INPUT_BYTES,
    P_RETRIES, P_ROWS_PENDING, P_ROWS_READ, P_ROWS_REJECTED, P_ROWS_SENT,
};
use crate::retry::{self, RetryError, RetryPolicy, Verdict};
use crate::schema::{json_source_prefix, Schema};
use crate::shutdown::Shutdown;

/// Errors that end a produce run.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot write rejects file {path}: {source}. Check --rejects points to a writable directory")]
    Rejects {
        path: String,
        source: std::io::Error,
    },
    #[error("--resume-from {0}: that file is not among the inputs; pass the same paths as the failed run")]
    ResumeFileNotInInputs(String),
    #[error("{0}")]
    Failed(String),
}

/// Everything `app produce` needs.
#[derive(Debug, Clone)]
pub struct ProduceConfig {
    pub inputs: Vec<PathBuf>,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub compression: Compression,
    pub linger: Duration,
    pub batch_bytes: usize,
    /// Rows per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub rejects_dir: PathBuf,
    pub strict: bool,
    /// Start at this file and line (inclusive), skipping everything before it.
    pub resume_from: Option<(PathBuf, u64)>,
    /// How long a failing batch is retried before the run gives up.
    pub retry_timeout: Duration,
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    /// Show a progress bar (a terminal) instead of periodic log lines.
    pub progress_bar: bool,
    /// Serve `/metrics` and `/healthz` on this HOST:PORT.
    pub metrics_addr: Option<String>,
}

/// What one produce run did; printed at the end.
#[derive(Debug, Clone, Default)]
pub struct ProduceSummary {
    pub files: Vec<(PathBuf, FileStats)>,
    pub rows_sent: u64,
    pub rows_rejected: u64,
    pub rejects_file: Option<PathBuf>,
    pub bytes_sent: u64,
    pub batches: u64,
    pub retries: u64,
    pub elapsed: Duration,
    pub topic: String,
    pub partitions: usize,
    pub topic_created: bool,
    /// Where to resume when the run did not finish: first row not acknowledged.
    pub resume_from: Option<(PathBuf, u64)>,
    /// Why the run did not finish (interrupted, broker failure, strict reject).
    pub failure: Option<String>,
    pub interrupted: bool,
}

impl ProduceSummary {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows_sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Human-readable summary lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let empty = self.files.iter().filter(|(_, st)| st.empty).count();
        let secs = self.elapsed.as_secs_f64();
        s.push_str(&format!(
            "produce summary: topic `{}` ({} partition{}{})\n",
            self.topic,
            self.partitions,
            if self.partitions == 1 { "" } else { "s" },
            if self.topic_created { ", created" } else { "" }
        ));
        for (path, st) in &self.files {
            s.push_str(&format!(
                "  {}: {} rows{}{}\n",
                path.display(),
                st.rows,
                if st.rejected > 0 {
                    format!(", {} rejected", st.rejected)
                } else {
                    String::new()
                },
                if st.empty { " (empty file)" } else { "" }
            ));
        }
        s.push_str(&format!(
            "  files: {} ({} empty)\n  rows sent (acknowledged): {}\n  rows rejected: {}{}\n",
            self.files.len(),
            empty,
            self.rows_sent,
            self.rows_rejected,
            match &self.rejects_file {
                Some(p) => format!(" -> {}", p.display()),
                None => String::new(),
            }
        ));
        s.push_str(&format!(
            "  bytes: {:.1} MB in {} batches ({} retries)\n  time: {:.2} s, {:.0} rows/s, {:.1} MB/s\n",
            self.bytes_sent as f64 / 1e6,
            self.batches,
            self.retries,
            secs,
            self.rows_per_sec(),
            self.bytes_sent as f64 / 1e6 / secs.max(1e-9)
        ));
        if let Some(why) = &self.failure {
            s.push_str(&format!("  NOT FINISHED: {why}\n"));
        }
        if let Some((file, line)) = &self.resume_from {
            s.push_str(&format!(
                "  every row before {}:{} was acknowledged; to continue run the same command with \
                 --resume-from '{}:{}'\n",
                file.display(),
                line,
                file.display(),
                line
            ));
        }
        s
    }
}

/// Counters shared by the reader, the batcher and the senders.
#[derive(Debug, Default)]
pub struct ProduceStats {
    pub rows_read: AtomicU64,
    pub rows_sent: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub input_bytes_read: Arc<AtomicU64>,
}

/// Tracks which rows are acknowledged: per lane, the positions of its unacknowledged batches'
/// first rows, in order (a lane's batches are sent and acknowledged in order). The first row not
/// yet acknowledged is the minimum of the fronts.
#[derive(Debug, Default)]
struct ResumeTracker {
    pending: BTreeMap<usize, VecDeque<Position>>,
    /// The next row the reader would hand over (end of what was read).
    read_up_to: Option<Position>,
}

impl ResumeTracker {
    fn batch_created(&mut self, lane: usize, first: Position) {
        self.pending.entry(lane).or_default().push_back(first);
    }
    fn batch_acked(&mut self, lane: usize) {
        if let Some(q) = self.pending.get_mut(&lane) {
            q.pop_front();
        }
    }
    fn first_unacked(&self) -> Option<Position> {
        self.pending
            .values()
            .filter_map(|q| q.front().copied())
            .min()
            .or(self.read_up_to)
    }
}

/// Rows of one lane sent in one produce request.
struct Batch {
    segments: Vec<Segment>,
    bytes: usize,
    rows: u64,
    opened: tokio::time::Instant,
}

thread_local! {
    /// A sender thread's buffer for a batch's records before compression, reused: a fresh one
    /// per batch (about 1 MB) would be page faults each time.
    static PLAIN_RECORDS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Batch {
    /// The batch as one Kafka record batch's records, written out and compressed once, with its
    /// first and largest timestamps (ms). Rows go in segment order, so a key's rows keep their order.
    fn encode(&self, compression: Compression) -> Result<(RawRecords, i64, i64), String> {
        let mut timestamps = self.segments.iter().filter_map(Segment::timestamp_range);
        let Some((first, mut max)) = timestamps.next() else {
            return Err("an empty batch".to_string());
        };
        max = timestamps.fold(max, |m, (_, seg_max)| m.max(seg_max));
        PLAIN_RECORDS.with_borrow_mut(|plain| {
            plain.clear();
            let mut offset_delta = 0;
            for segment in &self.segments {
                segment.write_kafka_records(first, &mut offset_delta, plain);
            }
            let raw = RawRecords::compress(plain, offset_delta as usize, compression.into())
                .map_err(|e| format!("could not compress a batch ({compression:?}): {e}"));
            if plain.capacity() > 16 << 20 {
                *plain = Vec::new();
            }
            Ok((raw?, first, max))
        })
    }
}

/// Bytes of CSV per chunk handed to a worker: big enough that per-chunk costs vanish, small
/// enough that the chunks in flight stay a few MB (measured: 64–256 KiB perform the same).
const CHUNK_BYTES: usize = 128 * 1024;
/// Chunks queued per worker, each way.
const CHUNKS_QUEUED: usize = 2;
/// Lanes (produce requests in flight) per partition, and in all: a partition gets
/// `clamp(MAX_LANES / partitions, 1, LANES_PER_PARTITION)` lanes. Chosen by measurement
/// (BENCHMARKS.md, "Issue 15"): with one request per partition, the encoding and LZ4 of the next
/// batch wait for the broker's answer to the previous one (1 partition: 2.2–2.5 s for 1M rows
/// with one lane, 1.5–1.9 s with four). With 3 and 6 partitions, 6 lanes in all were as fast as
/// 12 and held 6–9 MB less. The lanes of a partition share its connection.
const LANES_PER_PARTITION: usize = 4;
const MAX_LANES: usize = 8;

/// Threads that parse and encode chunks: one per core, at most 8.
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

/// Per lane, what the collector holds: full batches waiting for the lane, the batch being
/// filled, and whether a batch is in flight.
#[derive(Default)]
struct LaneState {
    full: VecDeque<Batch>,
    open: Option<Batch>,
    busy: bool,
}

/// Runs `app produce` until the input ends, `shutdown` fires, or a failure; the summary says
/// which. Rows read before a shutdown are still sent (in-flight batches are awaited).
pub async fn run(
    config: ProduceConfig,
    shutdown: Shutdown,
) -> Result<ProduceSummary, ProduceError> {
    let started = Instant::now();
    // Bound first: a taken address fails before anything else happens.
    let (registry, endpoint) = crate::metrics::start(config.metrics_addr.as_deref()).await?;
    let files = csv_source::expand_inputs(&config.inputs)?;
    let start_at: Position = match &config.resume_from {
        None => (0, 0),
        Some((file, line)) => {
            let idx = files
                .iter()
                .position(|f| same_file(f, file))
                .ok_or_else(|| ProduceError::ResumeFileNotInInputs(file.display().to_string()))?;
            (idx, *line)
        }
    };
    // Every header is checked before anything is sent.
    let mut opened = Vec::with_capacity(files.len());
    for path in &files {
        let file = CsvFile::open(path, &config.source)?;
        check_header(&file, &config.source)?;
        opened.push(file);
    }
    let total_input_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();

    let kafka = Kafka::connect(config.kafka.clone()).await?;
    let (partition_count, topic_created) = kafka
        .ensure_topic(&config.topic, config.partitions, config.replication_factor)
        .await?;
    let lanes = Lanes::new(
        partition_count,
        (MAX_LANES / partition_count.max(1)).clamp(1, LANES_PER_PARTITION),
    );
    tracing::info!(
        topic = %config.topic,
        partitions = partition_count,
        lanes = lanes.total(),
        created = topic_created,
        files = files.len(),
        "Producing"
    );
    let mut handles = Vec::with_capacity(partition_count);
    for p in 0..partition_count as i32 {
        handles.push(PartitionHandle {
            config: config.kafka.clone(),
            topic: config.topic.clone(),
            partition: p,
            client: kafka.partition(&config.topic, p).await?,
        });
    }

    let stats = Arc::new(ProduceStats::default());
    registry.set_build_info("produce");
    let probe = Arc::new(ProduceProbe {
        stats: Arc::clone(&stats),
        senders: BusyClocks::new(lanes.total()),
        lanes,
        bound: config.kafka.timeout * 3,
        brokers: config.kafka.brokers.clone(),
    });
    if let Some(endpoint) = &endpoint {
        endpoint.set_probe(Arc::clone(&probe) as Arc<dyn Probe>);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = Arc::new(Mutex::new(ResumeTracker::default()));
    let mut rejects = RejectsWriter::new(&config.rejects_dir);
    let failure: Arc<Mutex<Option<String>>> = Arc::default();

    // Splitter -> workers -> collector, each hand-over a bounded channel. Chunk `seq` goes to
    // worker `seq % workers` and comes back from it, so the collector sees chunks in input order.
    // With --rate, one worker and one record per chunk: pacing is per row.
    let workers = if config.rate.is_some() {
        1
    } else {
        worker_count()
    };
    let chunk_bytes = if config.rate.is_some() {
        1
    } else {
        CHUNK_BYTES
    };
    let mut job_txs = Vec::with_capacity(workers);
    let mut result_rxs = Vec::with_capacity(workers);
    let mut worker_threads = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (job_tx, job_rx) = mpsc::channel::<ChunkJob>(CHUNKS_QUEUED);
        let (result_tx, result_rx) = mpsc::channel::<EncodedChunk>(CHUNKS_QUEUED);
        job_txs.push(job_tx);
        result_rxs.push(result_rx);
        let encoder = ChunkEncoder::new(
            Arc::clone(&config.source.schema),
            lanes,
            config.batch_bytes,
            config.strict,
        );
        let stop = Arc::clone(&stop);
        worker_threads.push(tokio::task::spawn_blocking(move || {
            encode_chunks(encoder, job_rx, result_tx, &stop)
        }));
    }
    let splitter = {
        let stop = Arc::clone(&stop);
        let counter = Arc::clone(&stats.input_bytes_read);
        let schema = Arc::clone(&config.source.schema);
        tokio::task::spawn_blocking(move || {
            split_files(SplitJob {
                files: opened,
                start_at,
                schema,
                chunk_bytes,
                counter,
                stop,
                txs: job_txs,
            })
        })
    };

    // Senders: one task per lane, one batch in flight each; `done` says which lane is free.
    let mut senders = JoinSet::new();
    let mut batch_txs = Vec::with_capacity(lanes.total());
    let (done_tx, mut done_rx) = mpsc::channel::<usize>(lanes.total());
    for lane in 0..lanes.total() {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        // The lanes of a partition share its client, hence one connection: requests pipelined
        // on one connection measured faster than one connection per lane.
        let handle = handles[lanes.partition_of(lane) as usize].clone();
        batch_txs.push(tx);
        senders.spawn(send_batches(SendJob {
            probe: Arc::clone(&probe),
            handle,
            lane,
            rx,
            done: done_tx.clone(),
            compression: config.compression,
            retry_timeout: config.retry_timeout,
            stats: Arc::clone(&stats),
            tracker: Arc::clone(&tracker),
            stop: Arc::clone(&stop),
            failure: Arc::clone(&failure),
        }));
    }
    drop(done_tx);

    let progress = Progress::new(config.progress_bar, total_input_bytes, Arc::clone(&stats));
    let mut file_stats: Vec<Option<FileStats>> = vec![None; files.len()];
    let mut collector = Collector {
        lanes: (0..lanes.total()).map(|_| LaneState::default()).collect(),
        batch_txs,
        tracker: Arc::clone(&tracker),
        batch_bytes: config.batch_bytes,
        linger: config.linger,
    };
    let mut linger_tick = tokio::time::interval(config.linger.max(Duration::from_millis(1)));
    linger_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_tick = tokio::time::interval(Duration::from_millis(500));
    let mut shutdown = shutdown;
    let mut interrupted = false;
    let mut next_worker = 0;
    let mut input_done = false;
    // After a strict reject or a rejects-file error, later chunks are read but not sent.
    let mut discard = false;
    let mut rejects_error: Option<ProduceError> = None;
    let paced_from = Instant::now();
    let mut paced_rows: u64 = 0;

    loop {
        if input_done && collector.drained() {
            break;
        }
        let blocked = collector.blocked();
        tokio::select! {
            biased;
            lane = done_rx.recv() => {
                let Some(lane) = lane else { break };
                collector.lanes[lane].busy = false;
                collector.dispatch(lane, input_done);
            }
            chunk = result_rxs[next_worker].recv(), if !input_done && !blocked => {
                let Some(chunk) = chunk else {
                    input_done = true;
                    collector.dispatch_all(true);
                    continue;
                };
                next_worker = (next_worker + 1) % workers;
                if discard {
                    continue;
                }
                for reject in &chunk.rejects {
                    stats.rows_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %reject.file, line = reject.line, reason = %reject.reason, "Row rejected");
                    if let Err(e) = rejects.write(reject) {
                        rejects_error = Some(e);
                        break;
                    }
                }
                if rejects_error.is_some() {
                    stop.store(true, Ordering::Relaxed);
                    discard = true;
                    continue;
                }
                let entry = file_stats[chunk.file_idx].get_or_insert_with(FileStats::default);
                entry.rows += chunk.rows;
                entry.rejected += chunk.rejects.len() as u64;
                entry.empty |= chunk.empty_file;
                if chunk.empty_file {
                    tracing::info!(file = %files[chunk.file_idx].display(), "Empty file: 0 rows");
                }
                if chunk.strict_stop {
                    if let Some(reject) = chunk.rejects.last() {
                        failure.lock().expect("failure lock").get_or_insert(format!(
                            "--strict: {}:{} rejected: {}",
                            reject.file, reject.line, reject.reason
                        ));
                    }
                    stop.store(true, Ordering::Relaxed);
                    discard = true;
                }
                if let Some(rate) = config.rate {
                    paced_rows += chunk.rows;
                    let due = Duration::from_secs_f64(paced_rows as f64 / rate);
                    let elapsed = paced_from.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
                stats.rows_read.fetch_add(chunk.rows, Ordering::Relaxed);
                if let Some(at) = chunk.read_up_to {
                    tracker.lock().expect("tracker lock").read_up_to = Some(at);
                }
                let now = tokio::time::Instant::now();
                for segment in chunk.segments {
                    collector.add(segment, now);
                }
                collector.dispatch_all(false);
            }
            _ = linger_tick.tick() => collector.dispatch_all(input_done),
            _ = progress_tick.tick() => progress.update(),
            _ = shutdown.requested(), if !interrupted => {
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
                tracing::warn!("Interrupted: stopping the reader, sending what was read");
            }
        }
    }
    // Every batch was handed over (or a sender is gone): close the lanes, wait for the senders.
    drop(collector);
    while let Some(joined) = senders.join_next().await {
        if let Err(e) = joined {
            failure
                .lock()
                .expect("failure lock")
                .get_or_insert(format!("a sender task failed: {e}"));
        }
    }
    // Unblock and join the reader threads (they stop at the next chunk).
    stop.store(true, Ordering::Relaxed);
    drop(result_rxs);
    let split_result = splitter
        .await
        .map_err(|e| ProduceError::Failed(format!("the CSV reader thread failed: {e}")))?;
    for worker in worker_threads {
        worker
            .await
            .map_err(|e| ProduceError::Failed(format!("a CSV worker thread failed: {e}")))?;
    }
    progress.finish();
    let rejects_file = rejects.finish()?;
    if let Some(e) = rejects_error {
        return Err(e);
    }
    split_result?;

    let failure = failure.lock().expect("failure lock").clone();
    let failure = failure.or(interrupted.then(|| "interrupted (Ctrl-C / SIGTERM)".to_string()));
    let resume_from = if failure.is_some() {
        tracker
            .lock()
            .expect("tracker lock")
            .first_unacked()
            .and_then(|(idx, line)| files.get(idx).map(|f| (f.clone(), line)))
    } else {
        None
    };
    Ok(ProduceSummary {
        files: files
            .iter()
            .cloned()
            .zip(file_stats.into_iter().map(Option::unwrap_or_default))
            .collect(),
        rows_sent: stats.rows_sent.load(Ordering::Relaxed),
        rows_rejected: stats.rows_rejected.load(Ordering::Relaxed),
        rejects_file,
        bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        topic: config.topic.clone(),
        partitions: partition_count,
        topic_created,
        resume_from,
        failure,
        interrupted,
    })
}

/// The batcher: fills one batch per lane from the encoded chunks (in input order) and hands it
/// to the lane's sender when the lane is free — immediately when the batch is full, after
/// `linger` otherwise — so a batch grows while the previous one is in flight.
struct Collector {
    lanes: Vec<LaneState>,
    batch_txs: Vec<mpsc::Sender<Batch>>,
    tracker: Arc<Mutex<ResumeTracker>>,
    batch_bytes: usize,
    linger: Duration,
}

impl Collector {
    /// Adds a lane's rows, closing batches at `batch_bytes`.
    fn add(&mut self, mut segment: Segment, now: tokio::time::Instant) {
        let lane = segment.lane;
        while segment.rows() > 0 {
            let state = &mut self.lanes[lane];
            let open = state.open.get_or_insert_with(|| {
                let first = segment.first_position().expect("segment has rows");
                self.tracker
                    .lock()
                    .expect("tracker lock")
                    .batch_created(lane, first);
                Batch {
                    segments: Vec::new(),
                    bytes: 0,
                    rows: 0,
                    opened: now,
                }
            });
            let room = self.batch_bytes.saturating_sub(open.bytes);
            let mut fit = segment.rows_fitting(room);
            if fit == 0 && open.rows == 0 {
                fit = 1; // a row bigger than the batch limit was rejected before; never loop
            }
            let rest = if fit < segment.rows() {
                Some(segment.split_off(fit))
            } else {
                None
            };
            if segment.rows() > 0 {
                open.bytes += segment.bytes();
                open.rows += segment.rows() as u64;
                open.segments.push(segment);
            }
            if rest.is_some() || open.bytes >= self.batch_bytes {
                let full = state.open.take().expect("open batch");
                state.full.push_back(full);
            }
            match rest {
                Some(rest) => segment = rest,
                None => break,
            }
        }
    }

    /// Hands lane `lane` its next batch if it is free: a full one, else the open one once it
    /// has waited `linger` (or at once at the end of the input).
    fn dispatch(&mut self, lane: usize, flush: bool) {
        let state = &mut self.lanes[lane];
        if state.busy {
            return;
        }
        let due = state.open.as_ref().is_some_and(|b| {
            flush || b.opened.elapsed() >= self.linger || b.bytes >= self.batch_bytes
        });
        let next = match state.full.pop_front() {
            Some(batch) => Some(batch),
            None if due => state.open.take(),
            None => None,
        };
        if let Some(batch) = next {
            // The lane is free, so its channel (capacity 1) is empty; a closed channel means its
            // sender ended, and the batch stays unacknowledged (the resume point says so).
            if self.batch_txs[lane].try_send(batch).is_ok() {
                state.busy = true;
            }
        }
    }

    fn dispatch_all(&mut self, flush: bool) {
        for lane in 0..self.lanes.len() {
            self.dispatch(lane, flush);
        }
    }

    /// A full batch waits for its lane: read no more chunks until it is handed over.
    fn blocked(&self) -> bool {
        self.lanes.iter().any(|l| !l.full.is_empty())
    }

    /// Nothing left to hand over and nothing in flight.
    fn drained(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| !l.busy && l.full.is_empty() && l.open.is_none())
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn check_header(file: &CsvFile, source: &SourceConfig) -> Result<(), SourceError> {
    // Read just the header by stopping at the first row.
    let stop = AtomicBool::new(false);
    file.for_each_row(&source.schema, Arc::default(), &stop, u64::MAX, |_| false)
        .map(|_| ())
}

struct SplitJob {
    files: Vec<CsvFile>,
    start_at: Position,
    schema: Arc<Schema>,
    chunk_bytes: usize,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    txs: Vec<mpsc::Sender<ChunkJob>>,
}

/// The reader thread: reads the files in order and deals their chunks to the workers in turn.
/// Reading ahead one chunk tells which chunk is a file's last.
fn split_files(job: SplitJob) -> Result<(), ProduceError> {
    let mut seq: u64 = 0;
    let send = |seq: &mut u64, chunk_job: ChunkJob| -> bool {
        let tx = &job.txs[(*seq % job.txs.len() as u64) as usize];
        *seq += 1;
        tx.blocking_send(chunk_job).is_ok()
    };
    for (idx, file) in job.files.iter().enumerate() {
        if job.stop.load(Ordering::Relaxed) {
            break;
        }
        if idx < job.start_at.0 {
            continue;
        }
        let skip_through_line = if idx == job.start_at.0 {
            job.start_at.1.saturating_sub(1)
        } else {
            0
        };
        let shown = file.path.display().to_string();
        let io = |source| SourceError::Io {
            path: shown.clone(),
            source,
        };
        let mut chunks = file.chunks(Arc::clone(&job.counter))?;
        let first = chunks.next_chunk(job.chunk_bytes).map_err(io)?;
        let layout = match &first {
            Some(first) => FileLayout::from_header(
                first,
                &shown,
                chunks.text(),
                chunks.delimiter(),
                &job.schema,
            )?,
            None => None,
        };
        let (Some(first), Some(layout)) = (first, layout) else {
            let empty = ChunkJob {
                seq,
                file_idx: idx,
                chunk: None,
                layout: None,
                source_prefix: Arc::default(),
                has_header: false,
                skip_through_line,
                last_of_file: true,
            };
            if !send(&mut seq, empty) {
                return Ok(());
            }
            continue;
        };
        let layout = Arc::new(layout);
        let source_prefix = Arc::new(json_source_prefix(&shown));
        let mut current = first;
        let mut has_header = true;
        loop {
            if job.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = chunks.next_chunk(job.chunk_bytes).map_err(io)?;
            let chunk_job = ChunkJob {
                seq,
                file_idx: idx,
                chunk: Some(current),
                layout: Some(Arc::clone(&layout)),
                source_prefix: Arc::clone(&source_prefix),
                has_header: std::mem::take(&mut has_header),
                skip_through_line,
                last_of_file: next.is_none(),
            };
            if !send(&mut seq, chunk_job) {
                return Ok(());
            }
            match next {
                Some(next) => current = next,
                None => break,
            }
        }
    }
    Ok(())
}

/// A worker thread: encodes chunks until the splitter is done or the run stops.
fn encode_chunks(
    mut encoder: ChunkEncoder,
    mut jobs: mpsc::Receiver<ChunkJob>,
    results: mpsc::Sender<EncodedChunk>,
    stop: &AtomicBool,
) {
    while let Some(job) = jobs.blocking_recv() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if results.blocking_send(encoder.encode(&job)).is_err() {
            break;
        }
    }
}

struct SendJob {
    probe: Arc<ProduceProbe>,
    handle: PartitionHandle,
    lane: usize,
    rx: mpsc::Receiver<Batch>,
    done: mpsc::Sender<usize>,
    compression: Compression,
    retry_timeout: Duration,
    stats: Arc<ProduceStats>,
    tracker: Arc<Mutex<ResumeTracker>>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
}

/// How a lane retries a batch: 100 ms doubling to 5 s, with jitter; the deadline is
/// `--retry-timeout`, counted from the batch's first attempt.
const SEND_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// Why one attempt at a lane's batch failed.
#[derive(Debug)]
enum SendFailure {
    /// The broker call failed; [`produce_verdict`] says whether to try again.
    Kafka(KafkaError),
    /// The batch could not be encoded: no retry can help.
    Encode(String),
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::Kafka(e) => e.fmt(f),
            SendFailure::Encode(reason) => f.write_str(reason),
        }
    }
}

impl SendFailure {
    /// The produce classifier: the broker's errors as [`produce_verdict`] says; an idempotence
    /// refusal is transient (the next attempt takes a new producer id).
    fn verdict(&self) -> Verdict {
        match self {
            SendFailure::Kafka(e) => produce_verdict(e),
            SendFailure::Encode(_) => Verdict::Permanent,
        }
    }
}

/// A lane's producer id and the sequence of its next batch (module docs, Idempotence).
#[derive(Debug, Default)]
struct LaneIds {
    /// `None` before the first batch and after a refusal that needs a new id.
    sequence: Option<ProducerSequence>,
    /// The id the broker refused and why, for the warning once the lane has a new one.
    refused: Option<(ProducerSequence, SequenceError)>,
}

/// One lane's sender: each batch is produced (acks=all, idempotent: see the module docs) and
/// retried ([`crate::retry`], [`SEND_RETRY`]) until acknowledged, refused for good or the retry
/// timeout, before the next batch of the lane is taken.
async fn send_batches(mut job: SendJob) {
    let lane = job.lane;
    let partition = job.handle.partition;
    let policy = SEND_RETRY.with_deadline(job.retry_timeout);
    // Only ever locked between awaits (by `send_once`).
    let ids = Mutex::new(LaneIds::default());
    while let Some(batch) = job.rx.recv().await {
        if job.failure.lock().expect("failure lock").is_some() {
            // A batch of another lane failed for good: stop sending, keep the resume point.
            job.stop.store(true, Ordering::Relaxed);
            let _ = job.done.send(lane).await;
            continue;
        }
        // No stop signal: a batch read before a shutdown is still sent (module docs).
        let sent = retry::retry_notify(
            &policy,
            "Produce",
            None,
            SendFailure::verdict,
            |r| {
                job.stats.retries.fetch_add(1, Ordering::Relaxed);
                // A refused producer id is reported once the lane has its new one.
                if !matches!(r.error, SendFailure::Kafka(KafkaError::Sequence { .. })) {
                    tracing::warn!(partition, lane, attempt = r.attempt, error = %r.error,
                        retry_in = ?r.delay, "Produce failed; retrying");
                }
            },
            || send_once(&job, &batch, &ids),
        )
        .await;
        match sent {
            Ok(()) => {
                job.probe.senders.end(lane);
                job.stats.rows_sent.fetch_add(batch.rows, Ordering::Relaxed);
                job.stats
                    .bytes_sent
                    .fetch_add(batch.bytes as u64, Ordering::Relaxed);
                job.stats.batches.fetch_add(1, Ordering::Relaxed);
                job.tracker.lock().expect("tracker lock").batch_acked(lane);
            }
            Err(RetryError::Permanent(SendFailure::Encode(reason))) => {
                give_up(&job, &batch, reason)
            }
            Err(RetryError::Permanent(SendFailure::Kafka(e))) => give_up(
                &job,
                &batch,
                format!("refused for good (retrying cannot help, so it was not retried): {e}"),
            ),
            Err(RetryError::GaveUp { last, attempts, .. }) => give_up(
                &job,
                &batch,
                format!(
                    "gave up after {:?} of retries ({attempts} attempts): {last}",
                    job.retry_timeout
                ),
            ),
            Err(RetryError::Stopped { .. }) => {
                give_up(&job, &batch, "stopped while retrying".to_string())
            }
        }
        let _ = job.done.send(lane).await;
    }
}

/// One attempt at a lane's batch: a producer id when the lane has none (warning that the batch
/// may now be in the topic twice when an earlier id was refused), then the batch with the
/// lane's next sequence. `DUPLICATE_SEQUENCE_NUMBER` counts as acknowledged; any other
/// idempotence refusal drops the lane's id, so the next attempt asks for a new one.
async fn send_once(job: &SendJob, batch: &Batch, ids: &Mutex<LaneIds>) -> Result<(), SendFailure> {
    let (lane, partition) = (job.lane, job.handle.partition);
    job.probe.senders.begin(lane);
    let known = ids.lock().expect("lane ids lock").sequence;
    let current = match known {
        Some(current) => current,
        None => {
            let current = job
                .handle
                .init_producer_id()
                .await
                .map(ProducerSequence::first)
                .map_err(SendFailure::Kafka)?;
            let mut ids = ids.lock().expect("lane ids lock");
            ids.sequence = Some(current);
            if let Some((old, why)) = ids.refused.take() {
                tracing::warn!(
                    partition,
                    lane,
                    old_producer_id = old.producer.id,
                    old_epoch = old.producer.epoch,
                    sequence = old.base_sequence,
                    new_producer_id = current.producer.id,
                    new_epoch = current.producer.epoch,
                    reason = %why,
                    first_row = ?batch.segments.first().and_then(Segment::first_position),
                    "The broker refused this lane's producer id; resending the batch \
                     with a new one. If an earlier attempt of this batch was written, \
                     its rows are in the topic twice (same _source)"
                );
            }
            current
        }
    };
    // The records are encoded for each attempt: rskafka takes them by value (a retry is rare,
    // and keeping a copy for it would cost every batch).
    let (records, first, max) = batch.encode(job.compression).map_err(SendFailure::Encode)?;
    let count = records.len() as i32;
    let written = job
        .handle
        .produce_raw(records, first, max, Some(current))
        .await;
    let mut ids = ids.lock().expect("lane ids lock");
    match written {
        Ok(_) => {}
        // Written already by an attempt whose answer was lost.
        Err(KafkaError::Sequence {
            error: SequenceError::Duplicate,
            ..
        }) => {
            tracing::info!(
                partition,
                lane,
                producer_id = current.producer.id,
                sequence = current.base_sequence,
                "The broker already holds this batch (DUPLICATE_SEQUENCE_NUMBER): acknowledged"
            );
        }
        // The broker cannot place the batch in this id's sequence any more: the next attempt
        // asks for a new id (module docs).
        Err(e @ KafkaError::Sequence { error, .. }) => {
            ids.refused = ids.sequence.take().map(|old| (old, error));
            return Err(SendFailure::Kafka(e));
        }
        Err(e) => return Err(SendFailure::Kafka(e)),
    }
    ids.sequence = Some(current.next(count));
    Ok(())
}

/// A batch of the lane cannot be sent: every lane stops, and the run fails with `reason` (the
/// resume point stays at the first unacknowledged row).
fn give_up(job: &SendJob, batch: &Batch, reason: String) {
    let partition = job.handle.partition;
    let first = batch.segments.first().and_then(Segment::first_position);
    tracing::error!(partition, error = %reason, ?first, "Produce failed for good");
    job.failure
        .lock()
        .expect("failure lock")
        .get_or_insert(format!("partition {partition}: {reason}"));
    job.stop.store(true, Ordering::Relaxed);
}

/// What `/healthz` and the scrape-time metrics of `app produce` look at: unhealthy (503) when a
/// partition's batch has waited for Kafka's acknowledgement (retries included) for longer than
/// `bound` (3 × `--timeout`). `/metrics` reads the counters of [`ProduceStats`] at scrape time,
/// the same ones the summary reads, so nothing is counted twice.
struct ProduceProbe {
    stats: Arc<ProduceStats>,
    /// One clock per lane.
    senders: BusyClocks,
    lanes: Lanes,
    bound: Duration,
    brokers: String,
}

impl Probe for ProduceProbe {
    fn render(&self, out: &mut Exposition<'_>) {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (read, sent) = (get(&s.rows_read), get(&s.rows_sent));
        out.family(&P_ROWS_READ).sample(&[], read);
        out.family(&P_ROWS_SENT).sample(&[], sent);
        out.family(&P_ROWS_REJECTED)
            .sample(&[], get(&s.rows_rejected));
        out.family(&P_ROWS_PENDING)
            .sample(&[], read.saturating_sub(sent));
        out.family(&P_BATCHES).sample(&[], get(&s.batches));
        out.family(&P_RETRIES).sample(&[], get(&s.retries));
        out.family(&P_BYTES_SENT).sample(&[], get(&s.bytes_sent));
        out.family(&P_INPUT_BYTES)
            .sample(&[], get(&s.input_bytes_read));
    }

    fn health(&self) -> Health {
        let sent = self.stats.rows_sent.load(Ordering::Relaxed);
        match self.senders.longest_busy() {
            Some((lane, age)) if age > self.bound => Health::failing(format!(
                "partition {}: a batch has waited {:.1} s for Kafka at {} to acknowledge \
                 it (bound 3 × --timeout = {:?}); is the broker up?",
                self.lanes.partition_of(lane),
                age.as_secs_f64(),
                self.brokers,
                self.bound
            )),
            _ => Health::ok(format!("{sent} rows acknowledged")),
        }
    }
}

/// Appends rejects as JSON lines to a file created on the first reject.
struct RejectsWriter {
    dir: PathBuf,
    path: Option<PathBuf>,
    out: Option<BufWriter<File>>,
}

impl RejectsWriter {
    fn new(dir: &Path) -> Self {
        RejectsWriter {
            dir: dir.to_path_buf(),
            path: None,
            out: None,
        }
    }

    fn write(&mut self, reject: &Reject) -> Result<(), ProduceError> {
        if self.out.is_none() {
            let name = format!(
                "rejects-{}-{}.jsonl",
                Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
                std::process::id()
            );
            let path = self.dir.join(name);
            let err = |source| ProduceError::Rejects {
                path: path.display().to_string(),
                source,
            };
            std::fs::create_dir_all(&self.dir).map_err(err)?;
            let file = File::create(&path).map_err(err)?;
            self.out = Some(BufWriter::new(file));
            self.path = Some(path);
        }
        let path = self.path.clone().unwrap_or_default();
        let out = self.out.as_mut().expect("rejects writer open");
        let line = serde_json::to_string(reject).expect("reject serializes");
        writeln!(out, "{line}").map_err(|source| ProduceError::Rejects {
            path: path.display().to_string(),
            source,
        })
    }

    fn finish(&mut self) -> Result<Option<PathBuf>, ProduceError> {
        if let Some(mut out) = self.out.take() {
            let path = self.path.clone().unwrap_or_default();
            out.flush()
                .and_then(|_| out.get_ref().sync_all())
                .map_err(|source| ProduceError::Rejects {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        Ok(self.path.clone())
    }
}

/// A progress bar on a terminal, else a log line every 10 seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    stats: Arc<ProduceStats>,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    fn new(terminal: bool, total_bytes: u64, stats: Arc<ProduceStats>) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            stats,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn update(&self) {
        let read = self.stats.input_bytes_read.load(Ordering::Relaxed);
        let sent = self.stats.rows_sent.load(Ordering::Relaxed);
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(read);
            bar.set_message(format!("{sent} rows sent, {rate:.0} rows/s"));
        } else {
            let mut last = self.last_log.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(10) {
                *last = Instant::now();
                tracing::info!(
                    rows_sent = sent,
                    rows_rejected = self.stats.rows_rejected.load(Ordering::Relaxed),
                    mb_read = read as f64 / 1e6,
                    rows_per_sec = rate as u64,
                    "Progress"
                );
            }
        }
    }

    fn finish(&self) {
        self.update();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tracker_reports_first_unacked_across_partitions() {
        let mut t = ResumeTracker::default();
        t.batch_created(0, (0, 2));
        t.batch_created(1, (0, 5));
        t.batch_created(0, (0, 9));
        t.read_up_to = Some((0, 12));
        assert_eq!(t.first_unacked(), Some((0, 2)));
        t.batch_acked(0);
        assert_eq!(t.first_unacked(), Some((0, 5)));
        t.batch_acked(1);
        assert_eq!(t.first_unacked(), Some((0, 9)));
        t.batch_acked(0);
        assert_eq!(t.first_unacked(), Some((0, 12)));
    }

    /// A lane's sequence numbers: from 0, by each batch's record count, wrapping after
    /// `i32::MAX` to 0 as Kafka's `DefaultRecordBatch.incrementSequence` does.
    #[test]
    fn lane_sequence_advances_by_record_count_and_wraps_as_kafka() {
        let producer = crate::kafka::ProducerId { id: 7, epoch: 0 };
        let s = ProducerSequence::first(producer);
        assert_eq!(s.base_sequence, 0);
        assert_eq!(s.next(500).base_sequence, 500);
        assert_eq!(s.next(500).next(3).base_sequence, 503);
        assert_eq!(s.next(500).producer, producer);
        let near_end = ProducerSequence {
            producer,
            base_sequence: i32::MAX - 9,
        };
        // Records i32::MAX-9 ..= i32::MAX, then 0: the next batch starts at 0.
        assert_eq!(near_end.next(10).base_sequence, 0);
        assert_eq!(near_end.next(9).base_sequence, i32::MAX);
        assert_eq!(near_end.next(15).base_sequence, 5);
        // Kafka's formula, for a few more points.
        let kafka = |seq: i32, inc: i32| {
            if seq > i32::MAX - inc {
                inc - (i32::MAX - seq) - 1
            } else {
                seq + inc
            }
        };
        for (seq, inc) in [(0, 1), (i32::MAX, 1), (i32::MAX - 1, 2), (1 << 30, 1 << 30)] {
            let s = ProducerSequence {
                producer,
                base_sequence: seq,
            };
            assert_eq!(s.next(inc).base_sequence, kafka(seq, inc), "{seq} + {inc}");
        }
    }
}
