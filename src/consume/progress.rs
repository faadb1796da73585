//! What the consumer counts and reports, kept once: [`Counters`] (atomics every task adds to),
//! [`PartitionStatus`] (what each partition publishes after each step), and everything read from
//! them: the end-of-run [`ConsumeSummary`], the progress line, and the `/metrics` and `/healthz`
//! answers ([`ConsumeProbe`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::core::Tally;
use super::pipeline::{FileKindWritten, Progress};
use crate::enrich::EnrichmentCache;
use crate::metrics::{BusyClocks, ConsumeMetrics, Health, Heartbeat, Output, Probe};

/// Totals of one run. Every counter lives here and only here.
#[derive(Debug, Default)]
pub struct Counters {
    pub records_read: AtomicU64,
    pub rows_on_time: AtomicU64,
    pub rows_late: AtomicU64,
    pub late_dropped: AtomicU64,
    pub dead_letters: AtomicU64,
    pub miss_dropped: AtomicU64,
    pub replay_skipped: AtomicU64,
    pub windows_closed: AtomicU64,
    /// Rows, files and bytes written, indexed by [`Output`].
    pub rows_written: [AtomicU64; 3],
    pub files_written: [AtomicU64; 3],
    pub bytes_written: [AtomicU64; 3],
    pub row_groups_staged: AtomicU64,
    pub checkpoints: AtomicU64,
    pub markers_written: AtomicU64,
    /// Read committed: data batches of aborted transactions stepped over, and control batches
    /// (transaction markers).
    pub aborted_batches: AtomicU64,
    pub control_batches: AtomicU64,
    /// `--until-caught-up`: what open transactions held back at the end, per partition.
    pub held_back: std::sync::Mutex<Vec<HeldBack>>,
}

/// What an open transaction held back from a bounded (`--until-caught-up`) run on a partition:
/// offsets `from..to` (the last stable offset to the high watermark; records and markers), the
/// first of them written by `producer` (id, epoch) when a fetch could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub producer: Option<(i64, i16)>,
}

impl HeldBack {
    pub fn describe(&self) -> String {
        let producer = match self.producer {
            Some((id, epoch)) => format!("producer id {id} (epoch {epoch})"),
            None => "a producer the broker did not show".to_string(),
        };
        format!(
            "partition {}: {} offsets held back ({}..{}) by an open transaction of {producer}; \
             a later run reads them once it commits or aborts",
            self.partition,
            self.to - self.from,
            self.from,
            self.to
        )
    }
}

fn add(a: &AtomicU64, n: u64) {
    if n > 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Counters {
    pub fn add_skipped(&self, aborted_batches: u64, control_batches: u64) {
        add(&self.aborted_batches, aborted_batches);
        add(&self.control_batches, control_batches);
    }

    pub fn hold_back(&self, held: HeldBack) {
        let mut all = self.held_back.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.partition != held.partition);
        all.push(held);
        all.sort_by_key(|h| h.partition);
    }

    pub fn add_tally(&self, t: &Tally) {
        add(&self.records_read, t.records_read);
        add(&self.rows_on_time, t.rows_on_time);
        add(&self.rows_late, t.rows_late);
        add(&self.late_dropped, t.late_dropped);
        add(&self.dead_letters, t.dead_letters);
        add(&self.miss_dropped, t.miss_dropped);
        add(&self.replay_skipped, t.replay_skipped);
        add(&self.windows_closed, t.windows_closed);
    }

    /// Adds what one pipeline call did; returns the sizes of the files it wrote (for the
    /// histogram).
    pub fn add_progress(&self, p: &Progress) -> Vec<u64> {
        self.add_tally(&p.tally);
        let mut sizes = Vec::new();
        for (kind, file) in &p.written {
            let output = match kind {
                FileKindWritten::Window => Output::Window,
                FileKindWritten::Late => Output::Late,
                FileKindWritten::DeadLetter => Output::DeadLetter,
                FileKindWritten::Staged => {
                    add(&self.row_groups_staged, 1);
                    continue;
                }
            };
            let i = output as usize;
            add(&self.rows_written[i], file.rows);
            add(&self.files_written[i], 1);
            add(&self.bytes_written[i], file.bytes);
            sizes.push(file.bytes);
        }
        sizes
    }
}

pub use super::core::WatermarkSource;

fn source_label(source: WatermarkSource) -> &'static str {
    crate::metrics::WATERMARK_SOURCES[source as usize]
}

fn source_from_u64(v: u64) -> WatermarkSource {
    match v {
        1 => WatermarkSource::EventTime,
        2 => WatermarkSource::IdleClock,
        3 => WatermarkSource::Following,
        _ => WatermarkSource::None,
    }
}

/// One partition's position, published by its processor after each step.
#[derive(Debug)]
pub struct PartitionStatus {
    pub partition: i32,
    pub next_offset: AtomicI64,
    pub high_watermark: AtomicI64,
    /// Effective watermark, UTC ms (`i64::MIN`: none yet).
    pub watermark_ms: AtomicI64,
    pub source: AtomicU64,
    pub open_windows: AtomicU64,
    /// Bytes of open row groups: windows, late, dead letters.
    pub buffered: [AtomicU64; 3],
    pub processor: Heartbeat,
}

impl PartitionStatus {
    pub fn new(partition: i32) -> Self {
        PartitionStatus {
            partition,
            next_offset: AtomicI64::new(0),
            high_watermark: AtomicI64::new(-1),
            watermark_ms: AtomicI64::new(i64::MIN),
            source: AtomicU64::new(0),
            open_windows: AtomicU64::new(0),
            buffered: Default::default(),
            processor: Heartbeat::default(),
        }
    }

    pub fn source(&self) -> WatermarkSource {
        source_from_u64(self.source.load(Ordering::Relaxed))
    }

    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark_ms.load(Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    pub fn lag(&self) -> i64 {
        let high = self.high_watermark.load(Ordering::Relaxed);
        if high < 0 {
            return 0;
        }
        (high - self.next_offset.load(Ordering::Relaxed)).max(0)
    }
}

/// What a consume run did.
#[derive(Debug, Clone, Default)]
pub struct ConsumeSummary {
    pub records_read: u64,
    pub rows_written: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub windows_closed: u64,
    pub windows_complete: u64,
    pub windows_open: u64,
    pub row_groups_staged: u64,
    pub late_rows: u64,
    pub late_dropped: u64,
    pub dead_letters: u64,
    pub enrich_hits: u64,
    pub enrich_misses: u64,
    pub miss_dropped: u64,
    pub replay_skipped: u64,
    pub checkpoints: u64,
    pub refresh_failures: u64,
    pub aborted_batches: u64,
    pub control_batches: u64,
    pub held_back: Vec<HeldBack>,
    pub elapsed: Duration,
    pub output: String,
    pub partitions: Vec<i32>,
    pub resumed_from_checkpoint: bool,
}

impl ConsumeSummary {
    pub fn from_counters(c: &Counters) -> Self {
        ConsumeSummary {
            records_read: get(&c.records_read),
            rows_written: get(&c.rows_written[Output::Window as usize])
                + get(&c.rows_written[Output::Late as usize]),
            files_written: c.files_written.iter().map(get).sum(),
            bytes_written: c.bytes_written.iter().map(get).sum(),
            windows_closed: get(&c.windows_closed),
            windows_complete: get(&c.markers_written),
            row_groups_staged: get(&c.row_groups_staged),
            late_rows: get(&c.rows_late),
            late_dropped: get(&c.late_dropped),
            dead_letters: get(&c.dead_letters),
            miss_dropped: get(&c.miss_dropped),
            replay_skipped: get(&c.replay_skipped),
            checkpoints: get(&c.checkpoints),
            aborted_batches: get(&c.aborted_batches),
            control_batches: get(&c.control_batches),
            held_back: c
                .held_back
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..ConsumeSummary::default()
        }
    }

    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let optional = |n: u64, what: &str| {
            if n > 0 {
                format!(" ({n} {what})")
            } else {
                String::new()
            }
        };
        let mut transactions = String::new();
        if self.aborted_batches + self.control_batches > 0 || !self.held_back.is_empty() {
            transactions = format!(
                "  transactions: {} aborted batches skipped, {} markers stepped over\n",
                self.aborted_batches, self.control_batches
            );
        }
        for held in &self.held_back {
            transactions.push_str(&format!("  held back: {}\n", held.describe()));
        }
        format!(
            "consume summary: partitions {:?}{}\n  records read: {}\n{transactions}  rows written: {} in {} files ({:.1} MB)\n  windows closed: {} (partition closes), with _SUCCESS: {}, still open: {}{}\n  enrichment: {} hits, {} misses{}, {} refresh failures\n  late rows: {} to _late{}\n  dead letters: {} to _dead_letter\n  replayed and skipped (already written): {}\n  checkpoints committed: {}\n  time: {:.2} s, {:.0} records/s\n  output: {}\n",
            self.partitions,
            if self.resumed_from_checkpoint { " (resumed from checkpoint)" } else { "" },
            self.records_read,
            self.rows_written,
            self.files_written,
            self.bytes_written as f64 / 1e6,
            self.windows_closed,
            self.windows_complete,
            self.windows_open,
            optional(self.row_groups_staged, "row groups staged"),
            self.enrich_hits,
            self.enrich_misses,
            optional(self.miss_dropped, "dropped"),
            self.refresh_failures,
            self.late_rows,
            if self.late_dropped > 0 { format!(", {} dropped", self.late_dropped) } else { String::new() },
            self.dead_letters,
            self.replay_skipped,
            self.checkpoints,
            secs,
            self.records_read as f64 / secs.max(1e-9),
            self.output
        )
    }
}

/// The lowest watermark over partitions and what moves it, for the progress line and metrics.
pub fn instance_watermark(statuses: &[Arc<PartitionStatus>]) -> (Option<i64>, WatermarkSource) {
    let mut lowest: Option<(i64, WatermarkSource)> = None;
    for s in statuses {
        let Some(w) = s.watermark() else {
            return (None, WatermarkSource::None);
        };
        if lowest.is_none_or(|(l, _)| w < l) {
            lowest = Some((w, s.source()));
        }
    }
    match lowest {
        Some((w, src)) => (Some(w), src),
        None => (None, WatermarkSource::None),
    }
}

/// The progress line (a log line every `--status-interval`, or the live status line).
#[derive(Debug)]
pub struct StatusLine {
    last_records: u64,
    last_at: tokio::time::Instant,
}

impl Default for StatusLine {
    fn default() -> Self {
        StatusLine {
            last_records: 0,
            last_at: tokio::time::Instant::now(),
        }
    }
}

impl StatusLine {
    /// Renders the line, and takes the rate since the previous call.
    pub fn render(&mut self, counters: &Counters, statuses: &[Arc<PartitionStatus>]) -> String {
        let records = get(&counters.records_read);
        let secs = self.last_at.elapsed().as_secs_f64();
        let rate = ((records - self.last_records) as f64 / secs.max(1e-9)) as u64;
        self.last_records = records;
        self.last_at = tokio::time::Instant::now();
        let lag: i64 = statuses.iter().map(|s| s.lag()).sum();
        let (watermark, source) = instance_watermark(statuses);
        let watermark = watermark.map_or("none".to_string(), |w| {
            let text = crate::schema::timestamp_to_string(w.saturating_mul(1000));
            format!("{}Z", text.get(..19).unwrap_or(&text))
        });
        let open: u64 = statuses
            .iter()
            .map(|s| s.open_windows.load(Ordering::Relaxed))
            .sum();
        let buffered: u64 = statuses
            .iter()
            .flat_map(|s| s.buffered.iter().map(get))
            .sum();
        format!(
            "{rate} records/s | lag {lag} | watermark {watermark} ({}) | {open} windows open ({:.1} MB) | {} rows written | {} late | {} dead letters",
            source_label(source),
            buffered as f64 / 1e6,
            get(&counters.rows_written[0]) + get(&counters.rows_written[1]),
            get(&counters.rows_late),
            get(&counters.dead_letters)
        )
    }
}

/// What `/healthz` and the scrape-time metrics of `app consume` look at.
///
/// Unhealthy (503) when a partition's fetch has gone without success for longer than
/// `fetch_bound` (3 × `--timeout` + `--fetch-max-wait`; a fetcher waiting on its processor is
/// backpressure and does not count), when a partition's processor has not turned for longer
/// than `processor_bound` (3 × `--timeout`, at least 60 s: a write or commit is stuck), while the
/// output store is retrying through an outage (`Store::failing`: object storage unreachable or
/// answering 5xx), or while shutting down.
pub struct ConsumeProbe {
    pub brokers: String,
    pub output: String,
    /// Asked whether it is riding out an outage (object storage retries; `Store::failing`).
    pub store: Arc<dyn crate::output::Store>,
    pub fetch: BusyClocks,
    pub fetch_bound: Duration,
    pub processor_bound: Duration,
    pub stopping: AtomicBool,
    /// Why a partition failed (the run is stopping because of it): what `/healthz` says first.
    pub failed: std::sync::Mutex<Option<String>>,
    pub cache: EnrichmentCache,
    pub metrics: ConsumeMetrics,
    pub counters: Arc<Counters>,
    pub statuses: Vec<Arc<PartitionStatus>>,
}

impl ConsumeProbe {
    /// A partition failed for `reason`: `/healthz` says so from now on (the first reason stays).
    pub fn fail(&self, reason: String) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
    }
}

impl Probe for ConsumeProbe {
    fn refresh(&self) {
        let m = &self.metrics;
        let c = &self.counters;
        m.records_read.absolute(get(&c.records_read));
        m.rows_written_window
            .absolute(get(&c.rows_written[Output::Window as usize]));
        m.rows_written_late
            .absolute(get(&c.rows_written[Output::Late as usize]));
        m.late_side_output.absolute(get(&c.rows_late));
        m.late_dropped.absolute(get(&c.late_dropped));
        m.dead_letters.absolute(get(&c.dead_letters));
        m.aborted_batches.absolute(get(&c.aborted_batches));
        m.control_batches.absolute(get(&c.control_batches));
        m.replay_skipped.absolute(get(&c.replay_skipped));
        m.miss_dropped.absolute(get(&c.miss_dropped));
        for i in 0..3 {
            m.bytes_written[i].absolute(get(&c.bytes_written[i]));
            m.files_written[i].absolute(get(&c.files_written[i]));
        }
        m.windows_closed.absolute(get(&c.windows_closed));
        m.row_groups_staged.absolute(get(&c.row_groups_staged));
        let (watermark, _) = instance_watermark(&self.statuses);
        if let Some(w) = watermark {
            m.watermark.set(w as f64 / 1000.0);
        }
        let mut open = 0u64;
        let mut buffered = [0u64; 3];
        for s in &self.statuses {
            open += s.open_windows.load(Ordering::Relaxed);
            for (i, b) in buffered.iter_mut().enumerate() {
                *b += get(&s.buffered[i]);
            }
            let Some((_, g)) = m.partitions.iter().find(|(p, _)| *p == s.partition) else {
                continue;
            };
            g.next_offset
                .set(s.next_offset.load(Ordering::Relaxed) as f64);
            let high = s.high_watermark.load(Ordering::Relaxed);
            if high >= 0 {
                g.high_watermark.set(high as f64);
            }
            g.lag.set(s.lag() as f64);
            if let Some(w) = s.watermark() {
                g.watermark.set(w as f64 / 1000.0);
            }
            let source = s.source() as usize;
            for (i, gauge) in g.source.iter().enumerate() {
                gauge.set(if i == source { 1.0 } else { 0.0 });
            }
        }
        m.open_windows.set(open as f64);
        for (i, b) in buffered.iter().enumerate() {
            m.buffered_bytes[i].set(*b as f64);
        }
        let stats = self.cache.stats();
        m.enrichment_keys.set(stats.rows as f64);
        let age = stats.last_refresh.elapsed().unwrap_or_default();
        m.enrichment_age.set(age.as_secs_f64());
        m.enrichment_refreshes.absolute(stats.refresh_ok);
        m.enrichment_failures.absolute(stats.refresh_failures);
        m.enrichment_hits.absolute(stats.hits);
        m.enrichment_misses.absolute(stats.misses);
    }

    fn health(&self) -> Health {
        if let Some(reason) = &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Health::failing(reason.clone());
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Health::failing("shutting down: writing what is buffered and committing");
        }
        if let Some(problem) = self.store.failing() {
            return Health::failing(problem);
        }
        for s in &self.statuses {
            let turned = s.processor.age();
            if turned > self.processor_bound {
                return Health::failing(format!(
                    "partition {}: its processor has not run for {:.1} s (bound {:?}): a Parquet \
                     write or checkpoint commit to {} is stuck; check the output storage",
                    s.partition,
                    turned.as_secs_f64(),
                    self.processor_bound,
                    self.output
                ));
            }
        }
        if let Some((slot, age)) = self.fetch.longest_busy() {
            if age > self.fetch_bound {
                return Health::failing(format!(
                    "partition {}: no successful fetch from Kafka at {} for {:.1} s (bound 3 × \
                     --timeout + --fetch-max-wait = {:?}); is the broker up?",
                    self.statuses.get(slot).map_or(-1, |s| s.partition),
                    self.brokers,
                    age.as_secs_f64(),
                    self.fetch_bound
                ));
            }
        }
        let stats = self.cache.stats();
        Health::ok(format!(
            "{} partition(s) fetching; output {}; enrichment map: {} keys, loaded {:.0} s ago, {} \
             refresh failures",
            self.statuses.len(),
            self.output,
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

/// Where the summary says the output is.
pub fn describe_output(path: &std::path::Path) -> String {
    PathBuf::from(path).display().to_string()
}
