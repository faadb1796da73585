//! `app produce`: CSV files to the Kafka topic, typed, paced, and nothing lost.
//!
//! ```text
//!  spawn_blocking: CsvFile::for_each_row ──(bounded mpsc: Item)──▶ batcher (per partition)
//!      │ rejects ─▶ rejects/*.jsonl                              │ bounded mpsc per partition
//!      └ JSON + key + murmur2 partition                          ▼
//!                                         one sender task per partition: produce (acks=all),
//!                                         retried with backoff ──▶ ResumeTracker (what is acked)
//! ```
//!
//! Ordering: one batch in flight per partition, so a retried batch can never overtake the next
//! one and one institution's rows stay in order. A row counts as sent only once Kafka
//! acknowledged its batch. The [`ResumeTracker`] knows the first row not yet acknowledged, which
//! is what a failed or interrupted run prints as `--resume-from FILE:LINE`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::csv_source::{self, CsvFile, FileStats, Reject, SourceConfig, SourceError};
use crate::kafka::{
    partition_for_key, Compression, Kafka, KafkaConfig, KafkaError, PartitionHandle,
};
use crate::metrics::{BusyClocks, Health, MetricsError, Probe, ProduceMetrics};
use crate::schema::Source;

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

/// Position of a row in the input: (index of the file in input order, line).
type Position = (usize, u64);

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

/// Tracks which rows are acknowledged: per partition, the positions of its unacknowledged
/// batches' first rows, in order. The first row not yet acknowledged is the minimum of the fronts.
#[derive(Debug, Default)]
struct ResumeTracker {
    pending: BTreeMap<i32, VecDeque<Position>>,
    /// The next row the reader would hand over (end of what was read).
    read_up_to: Option<Position>,
}

impl ResumeTracker {
    fn batch_created(&mut self, partition: i32, first: Position) {
        self.pending.entry(partition).or_default().push_back(first);
    }
    fn batch_acked(&mut self, partition: i32) {
        if let Some(q) = self.pending.get_mut(&partition) {
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

/// One row ready to send.
struct OutRecord {
    position: Position,
    partition: i32,
    record: Record,
    size: usize,
}

enum Item {
    Row(OutRecord),
    FileDone(usize, FileStats),
}

struct Batch {
    first: Position,
    records: Vec<Record>,
    bytes: usize,
    rows: u64,
    opened: tokio::time::Instant,
}

/// Runs `app produce` until the input ends, `shutdown` resolves, or a failure; the summary says
/// which. Rows read before a shutdown are still sent (in-flight batches are awaited).
pub async fn run(
    config: ProduceConfig,
    shutdown: impl Future<Output = ()>,
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
    tracing::info!(
        topic = %config.topic,
        partitions = partition_count,
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
    let probe = Arc::new(ProduceProbe {
        metrics: ProduceMetrics::new(&registry),
        stats: Arc::clone(&stats),
        senders: BusyClocks::new(partition_count),
        bound: config.kafka.timeout * 3,
        brokers: config.kafka.brokers.clone(),
    });
    if let Some(endpoint) = &endpoint {
        endpoint.set_probe(Arc::clone(&probe) as Arc<dyn Probe>);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = Arc::new(Mutex::new(ResumeTracker::default()));
    let rejects = Arc::new(Mutex::new(RejectsWriter::new(&config.rejects_dir)));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();

    // Reader: blocking CSV parsing on its own thread, bounded hand-over.
    let (item_tx, mut item_rx) = mpsc::channel::<Item>(4096);
    let reader = {
        let stats = Arc::clone(&stats);
        let stop = Arc::clone(&stop);
        let rejects = Arc::clone(&rejects);
        let failure = Arc::clone(&failure);
        let source = config.source.clone();
        let rate = config.rate;
        let strict = config.strict;
        let batch_limit = config.batch_bytes;
        tokio::task::spawn_blocking(move || {
            read_files(ReadJob {
                files: opened,
                start_at,
                source,
                partitions: partition_count,
                rate,
                strict,
                batch_limit,
                stats,
                stop,
                rejects,
                failure,
                tx: item_tx,
            })
        })
    };

    // Senders: one task per partition, one batch in flight each.
    let mut senders = JoinSet::new();
    let mut batch_txs = Vec::with_capacity(partition_count);
    for handle in handles {
        let (tx, rx) = mpsc::channel::<Batch>(2);
        batch_txs.push(tx);
        senders.spawn(send_batches(SendJob {
            probe: Arc::clone(&probe),
            handle,
            rx,
            compression: config.compression,
            retry_timeout: config.retry_timeout,
            stats: Arc::clone(&stats),
            tracker: Arc::clone(&tracker),
            stop: Arc::clone(&stop),
            failure: Arc::clone(&failure),
        }));
    }

    let progress = Progress::new(config.progress_bar, total_input_bytes, Arc::clone(&stats));
    let mut file_stats: Vec<Option<FileStats>> = vec![None; files.len()];
    let mut open: Vec<Option<Batch>> = (0..partition_count).map(|_| None).collect();
    let mut linger_tick = tokio::time::interval(config.linger.max(Duration::from_millis(1)));
    linger_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    let mut interrupted = false;

    loop {
        tokio::select! {
            item = item_rx.recv() => {
                let Some(item) = item else { break };
                match item {
                    Item::FileDone(idx, st) => file_stats[idx] = Some(st),
                    Item::Row(out) => {
                        let p = out.partition as usize;
                        tracker.lock().expect("tracker lock").read_up_to =
                            Some((out.position.0, out.position.1 + 1));
                        let batch = open[p].get_or_insert_with(|| {
                            tracker.lock().expect("tracker lock").batch_created(out.partition, out.position);
                            Batch { first: out.position, records: Vec::new(), bytes: 0, rows: 0, opened: tokio::time::Instant::now() }
                        });
                        batch.records.push(out.record);
                        batch.bytes += out.size;
                        batch.rows += 1;
                        if batch.bytes >= config.batch_bytes {
                            let full = open[p].take().expect("batch present");
                            // Awaiting here is the backpressure: the reader waits on its channel.
                            if batch_txs[p].send(full).await.is_err() { break; }
                        }
                    }
                }
            }
            _ = linger_tick.tick() => {
                let now = tokio::time::Instant::now();
                for p in 0..open.len() {
                    if open[p].as_ref().is_some_and(|b| now - b.opened >= config.linger) {
                        let due = open[p].take().expect("batch present");
                        if batch_txs[p].send(due).await.is_err() { break; }
                    }
                }
            }
            _ = progress_tick.tick() => progress.update(),
            _ = &mut shutdown, if !interrupted => {
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
                tracing::warn!("Interrupted: stopping the reader, sending what was read");
            }
        }
    }
    // End of input (or stop): send the partial batches, then wait for every sender.
    for (p, batch) in open.into_iter().enumerate() {
        if let Some(b) = batch {
            let _ = batch_txs[p].send(b).await;
        }
    }
    drop(batch_txs);
    while let Some(joined) = senders.join_next().await {
        if let Err(e) = joined {
            failure
                .lock()
                .expect("failure lock")
                .get_or_insert(format!("a sender task failed: {e}"));
        }
    }
    let read_result = reader
        .await
        .map_err(|e| ProduceError::Failed(format!("the CSV reader thread failed: {e}")))?;
    progress.finish();
    let rejects_file = rejects.lock().expect("rejects lock").finish()?;
    read_result?;

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

struct ReadJob {
    files: Vec<CsvFile>,
    start_at: Position,
    source: SourceConfig,
    partitions: usize,
    rate: Option<f64>,
    strict: bool,
    batch_limit: usize,
    stats: Arc<ProduceStats>,
    stop: Arc<AtomicBool>,
    rejects: Arc<Mutex<RejectsWriter>>,
    failure: Arc<Mutex<Option<String>>>,
    tx: mpsc::Sender<Item>,
}

fn read_files(job: ReadJob) -> Result<(), ProduceError> {
    let schema = Arc::clone(&job.source.schema);
    let paced_from = Instant::now();
    let mut sent: u64 = 0;
    let mut round_robin: u64 = 0;
    for (idx, file) in job.files.iter().enumerate() {
        if job.stop.load(Ordering::Relaxed) {
            break;
        }
        if idx < job.start_at.0 {
            continue;
        }
        let skip_through = if idx == job.start_at.0 {
            job.start_at.1.saturating_sub(1)
        } else {
            0
        };
        let shown = file.path.display().to_string();
        let mut json = String::with_capacity(1024);
        let mut io_error: Option<ProduceError> = None;
        let stats = file.for_each_row(
            &schema,
            Arc::clone(&job.stats.input_bytes_read),
            &job.stop,
            skip_through,
            |row| {
                let row = match row {
                    Ok(row) => row,
                    Err(reject) => {
                        job.stats.rows_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(file = %reject.file, line = reject.line, reason = %reject.reason, "Row rejected");
                        if let Err(e) = job.rejects.lock().expect("rejects lock").write(&reject) {
                            io_error = Some(e);
                            return false;
                        }
                        if job.strict {
                            job.failure.lock().expect("failure lock").get_or_insert(format!(
                                "--strict: {}:{} rejected: {}",
                                reject.file, reject.line, reject.reason
                            ));
                            job.stop.store(true, Ordering::Relaxed);
                            return false;
                        }
                        return true;
                    }
                };
                json.clear();
                let source = Source {
                    file: shown.clone(),
                    line: row.line,
                };
                schema.write_json(&row.values, Some(&source), &mut json);
                let key = schema.key_of(&row.values);
                let size = json.len() + key.as_ref().map_or(0, String::len) + 32;
                if size > job.batch_limit {
                    let reject = Reject {
                        file: shown.clone(),
                        line: row.line,
                        reason: format!(
                            "row is {size} bytes as JSON, more than --batch-bytes {}",
                            job.batch_limit
                        ),
                        raw: json.chars().take(1000).collect(),
                    };
                    job.stats.rows_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = job.rejects.lock().expect("rejects lock").write(&reject) {
                        io_error = Some(e);
                        return false;
                    }
                    return !job.strict;
                }
                let partition = match &key {
                    Some(k) => partition_for_key(k.as_bytes(), job.partitions),
                    None => {
                        // No key: spread rows in runs of 1,000 (sticky, like the Java client).
                        round_robin += 1;
                        ((round_robin / 1000) % job.partitions as u64) as i32
                    }
                };
                let timestamp = schema
                    .event_time_ms(&row.values)
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .unwrap_or_else(Utc::now);
                let record = Record {
                    key: key.map(String::into_bytes),
                    value: Some(json.as_bytes().to_vec()),
                    headers: BTreeMap::new(),
                    timestamp,
                };
                job.stats.rows_read.fetch_add(1, Ordering::Relaxed);
                if let Some(rate) = job.rate {
                    sent += 1;
                    let due = Duration::from_secs_f64(sent as f64 / rate);
                    let elapsed = paced_from.elapsed();
                    if due > elapsed {
                        std::thread::sleep(due - elapsed);
                    }
                }
                job.tx
                    .blocking_send(Item::Row(OutRecord {
                        position: (idx, row.line),
                        partition,
                        record,
                        size,
                    }))
                    .is_ok()
            },
        )?;
        if let Some(e) = io_error {
            job.stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        if stats.empty {
            tracing::info!(file = %shown, "Empty file: 0 rows");
        }
        if job.tx.blocking_send(Item::FileDone(idx, stats)).is_err() {
            break;
        }
    }
    Ok(())
}

struct SendJob {
    probe: Arc<ProduceProbe>,
    handle: PartitionHandle,
    rx: mpsc::Receiver<Batch>,
    compression: Compression,
    retry_timeout: Duration,
    stats: Arc<ProduceStats>,
    tracker: Arc<Mutex<ResumeTracker>>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
}

async fn send_batches(mut job: SendJob) {
    while let Some(batch) = job.rx.recv().await {
        if job.failure.lock().expect("failure lock").is_some() {
            // A batch of another partition failed for good: stop sending, keep the resume point.
            job.stop.store(true, Ordering::Relaxed);
            continue;
        }
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let slot = job.handle.partition as usize;
        loop {
            job.probe.senders.begin(slot);
            match job
                .handle
                .produce(batch.records.clone(), job.compression)
                .await
            {
                Ok(_) => {
                    job.probe.senders.end(slot);
                    job.stats.rows_sent.fetch_add(batch.rows, Ordering::Relaxed);
                    job.stats
                        .bytes_sent
                        .fetch_add(batch.bytes as u64, Ordering::Relaxed);
                    job.stats.batches.fetch_add(1, Ordering::Relaxed);
                    job.tracker
                        .lock()
                        .expect("tracker lock")
                        .batch_acked(job.handle.partition);
                    break;
                }
                Err(e) if started.elapsed() < job.retry_timeout => {
                    job.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(partition = job.handle.partition, error = %e, retry_in = ?backoff, "Produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    let (file_idx, line) = batch.first;
                    tracing::error!(partition = job.handle.partition, error = %e, file_idx, line, "Produce failed for good");
                    job.failure
                        .lock()
                        .expect("failure lock")
                        .get_or_insert(format!(
                            "partition {}: gave up after {:?} of retries: {e}",
                            job.handle.partition, job.retry_timeout
                        ));
                    job.stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// What `/healthz` and the scrape-time metrics of `app produce` look at: unhealthy (503) when a
/// partition's batch has waited for Kafka's acknowledgement (retries included) for longer than
/// `bound` (3 × `--timeout`). Counters are copied from [`ProduceStats`] at scrape time, so
/// the hot path does not count twice.
struct ProduceProbe {
    metrics: ProduceMetrics,
    stats: Arc<ProduceStats>,
    senders: BusyClocks,
    bound: Duration,
    brokers: String,
}

impl Probe for ProduceProbe {
    fn refresh(&self) {
        let (s, m) = (&self.stats, &self.metrics);
        let read = s.rows_read.load(Ordering::Relaxed);
        let sent = s.rows_sent.load(Ordering::Relaxed);
        m.rows_read.absolute(read);
        m.rows_sent.absolute(sent);
        m.rows_pending.set(read.saturating_sub(sent) as f64);
        m.rows_rejected
            .absolute(s.rows_rejected.load(Ordering::Relaxed));
        m.batches.absolute(s.batches.load(Ordering::Relaxed));
        m.retries.absolute(s.retries.load(Ordering::Relaxed));
        m.bytes_sent.absolute(s.bytes_sent.load(Ordering::Relaxed));
        m.input_bytes
            .absolute(s.input_bytes_read.load(Ordering::Relaxed));
    }

    fn health(&self) -> Health {
        let sent = self.stats.rows_sent.load(Ordering::Relaxed);
        match self.senders.longest_busy() {
            Some((partition, age)) if age > self.bound => Health::failing(format!(
                "partition {partition}: a batch has waited {:.1} s for Kafka at {} to acknowledge \
                 it (bound 3 × --timeout = {:?}); is the broker up?",
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
}
