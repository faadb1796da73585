//! What the consumer counts and reports, kept once: [`Counters`] (atomics every task adds to),
//! [`PartitionStatus`] (what each partition publishes after each step), and everything read from
//! them: the end-of-run [`ConsumeSummary`] (the counters as they stood at the end), the progress
//! line, and the `/metrics` and `/healthz` answers ([`ConsumeProbe`], which writes the counters,
//! the statuses and the enrichment cache's own counts as Prometheus text at scrape time).
//!
//! ```text
//!  written by                    kept in             read by
//!  fetch and process tasks  ──▶  Counters        ──▶ ConsumeSummary, StatusLine, ConsumeProbe
//!  process tasks (publish)  ──▶  PartitionStatus ──▶ StatusLine, ConsumeProbe (+ /healthz)
//!  decode tasks             ──▶  EnrichmentCache ──▶ ConsumeSummary, ConsumeProbe
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::core::Tally;
use super::pipeline::{FileKindWritten, Progress};
use crate::enrich::EnrichmentCache;
use crate::metrics::{
    BusyClocks, Exposition, Health, Heartbeat, Output, Probe, BUFFER_LABELS, C_BUFFERED_BYTES,
    C_BYTES_WRITTEN, C_DEAD_LETTERS, C_ENRICH_AGE, C_ENRICH_CACHE_BYTES, C_ENRICH_CACHE_HITS,
    C_ENRICH_CACHE_MISSES, C_ENRICH_CHANGES, C_ENRICH_EVICTIONS, C_ENRICH_FAILURES, C_ENRICH_HITS,
    C_ENRICH_KEYS, C_ENRICH_KEYS_QUERIED, C_ENRICH_MISSES, C_ENRICH_QUERIES,
    C_ENRICH_QUERY_FAILURES, C_ENRICH_REFRESHES, C_ENRICH_UNREACHABLE, C_FILES_WRITTEN,
    C_HIGH_WATERMARK, C_LAG, C_LATE, C_MISS_DROPPED, C_NEXT_OFFSET, C_OPEN_WINDOWS,
    C_PARTITION_WATERMARK, C_RECORDS_READ, C_REPLAY_SKIPPED, C_ROWS_WRITTEN, C_ROW_GROUPS_STAGED,
    C_SKIPPED_BATCHES, C_WATERMARK, C_WATERMARK_SOURCE, C_WINDOWS_CLOSED, OUTPUT_LABELS,
    WATERMARK_SOURCES,
};

/// One count: an atomic that tasks add to. Cloning reads it (a snapshot), so a copy of the
/// [`Counters`] is one `clone()`, not a list of fields.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clone for Count {
    fn clone(&self) -> Self {
        Count(AtomicU64::new(self.get()))
    }
}

/// Totals of one run. Every count of the consumer lives here and only here: the summary, the
/// progress line and `/metrics` ([`Counters::render`]) read these. (The enrichment cache
/// counts its own lookups and refreshes; the registry holds the histograms.)
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub records_read: Count,
    pub rows_on_time: Count,
    pub rows_late: Count,
    pub late_dropped: Count,
    pub dead_letters: Count,
    pub miss_dropped: Count,
    pub replay_skipped: Count,
    pub windows_closed: Count,
    /// Rows, files and bytes written, indexed by [`Output`].
    pub rows_written: [Count; 3],
    pub files_written: [Count; 3],
    pub bytes_written: [Count; 3],
    pub row_groups_staged: Count,
    pub checkpoints: Count,
    pub markers_written: Count,
    /// Read committed: data batches of aborted transactions stepped over, and control batches
    /// (transaction markers).
    pub aborted_batches: Count,
    pub control_batches: Count,
    /// `--until-caught-up`: what open transactions held back at the end, per partition.
    pub held_back: HeldBackList,
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

/// The [`HeldBack`] of each partition that has one, in partition order. Cloning reads it.
#[derive(Debug, Default)]
pub struct HeldBackList(std::sync::Mutex<Vec<HeldBack>>);

impl HeldBackList {
    pub fn list(&self) -> Vec<HeldBack> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Clone for HeldBackList {
    fn clone(&self) -> Self {
        HeldBackList(std::sync::Mutex::new(self.list()))
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Counters {
    pub fn add_skipped(&self, aborted_batches: u64, control_batches: u64) {
        self.aborted_batches.add(aborted_batches);
        self.control_batches.add(control_batches);
    }

    pub fn hold_back(&self, held: HeldBack) {
        let mut all = self.held_back.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.partition != held.partition);
        all.push(held);
        all.sort_by_key(|h| h.partition);
    }

    pub fn add_tally(&self, t: &Tally) {
        self.records_read.add(t.records_read);
        self.rows_on_time.add(t.rows_on_time);
        self.rows_late.add(t.rows_late);
        self.late_dropped.add(t.late_dropped);
        self.dead_letters.add(t.dead_letters);
        self.miss_dropped.add(t.miss_dropped);
        self.replay_skipped.add(t.replay_skipped);
        self.windows_closed.add(t.windows_closed);
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
                    self.row_groups_staged.add(1);
                    continue;
                }
            };
            let i = output as usize;
            self.rows_written[i].add(file.rows);
            self.files_written[i].add(1);
            self.bytes_written[i].add(file.bytes);
            sizes.push(file.bytes);
        }
        sizes
    }

    /// Rows durably written to the table and to `_late` (dead letters are counted apart).
    pub fn rows_written_total(&self) -> u64 {
        self.rows_written[Output::Window as usize].get()
            + self.rows_written[Output::Late as usize].get()
    }

    /// Writes every count that `/metrics` shows.
    pub fn render(&self, out: &mut Exposition<'_>) {
        out.family(&C_RECORDS_READ)
            .sample(&[], self.records_read.get());
        out.family(&C_ROWS_WRITTEN)
            .sample(
                &["window"],
                self.rows_written[Output::Window as usize].get(),
            )
            .sample(&["late"], self.rows_written[Output::Late as usize].get());
        out.family(&C_LATE)
            .sample(&["side_output"], self.rows_late.get())
            .sample(&["dropped"], self.late_dropped.get());
        out.family(&C_DEAD_LETTERS)
            .sample(&[], self.dead_letters.get());
        out.family(&C_SKIPPED_BATCHES)
            .sample(&["aborted"], self.aborted_batches.get())
            .sample(&["control"], self.control_batches.get());
        out.family(&C_REPLAY_SKIPPED)
            .sample(&[], self.replay_skipped.get());
        out.family(&C_MISS_DROPPED)
            .sample(&[], self.miss_dropped.get());
        for (def, counts) in [
            (&C_BYTES_WRITTEN, &self.bytes_written),
            (&C_FILES_WRITTEN, &self.files_written),
        ] {
            let mut family = out.family(def);
            for (label, count) in OUTPUT_LABELS.iter().zip(counts) {
                family.sample(&[label], count.get());
            }
        }
        out.family(&C_WINDOWS_CLOSED)
            .sample(&[], self.windows_closed.get());
        out.family(&C_ROW_GROUPS_STAGED)
            .sample(&[], self.row_groups_staged.get());
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

    /// The partition's end as of the last fetch that returned records (`None` before one).
    pub fn high_watermark(&self) -> Option<i64> {
        let high = self.high_watermark.load(Ordering::Relaxed);
        (high >= 0).then_some(high)
    }

    /// Records behind the end of the partition (0 before its end is known).
    pub fn lag(&self) -> i64 {
        self.high_watermark().map_or(0, |high| {
            (high - self.next_offset.load(Ordering::Relaxed)).max(0)
        })
    }
}

/// What a consume run did: the [`Counters`] as they stood at the end, and the run around them.
#[derive(Debug, Clone, Default)]
pub struct ConsumeSummary {
    /// Read from the same counters as `/metrics` and the progress line.
    pub counts: Counters,
    /// From the enrichment cache's own counts.
    pub enrich_hits: u64,
    pub enrich_misses: u64,
    /// Partial cache: misses because the dimension could not be asked.
    pub enrich_unreachable: u64,
    /// More lines on the enrichment: the partial cache's hit rate and lookups, the binary log.
    pub enrich_detail: Vec<String>,
    pub refresh_failures: u64,
    pub windows_open: u64,
    pub elapsed: Duration,
    pub output: String,
    pub partitions: Vec<i32>,
    pub resumed_from_checkpoint: bool,
}

impl ConsumeSummary {
    /// A summary of what `counters` counted so far; the caller fills in the rest.
    pub fn from_counters(counters: &Counters) -> Self {
        ConsumeSummary {
            counts: counters.clone(),
            ..ConsumeSummary::default()
        }
    }

    pub fn render(&self) -> String {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64();
        let optional = |n: u64, what: &str| {
            if n > 0 {
                format!(" ({n} {what})")
            } else {
                String::new()
            }
        };
        let held_back = c.held_back.list();
        let (aborted, control) = (c.aborted_batches.get(), c.control_batches.get());
        let mut transactions = String::new();
        if aborted + control > 0 || !held_back.is_empty() {
            transactions = format!(
                "  transactions: {aborted} aborted batches skipped, {control} markers stepped over\n"
            );
        }
        for held in &held_back {
            transactions.push_str(&format!("  held back: {}\n", held.describe()));
        }
        let late_dropped = c.late_dropped.get();
        format!(
            "consume summary: partitions {:?}{}\n  records read: {}\n{transactions}  rows written: {} in {} files ({:.1} MB)\n  windows closed: {} (partition closes), with _SUCCESS: {}, still open: {}{}\n  enrichment: {} hits, {} misses{}, {} refresh failures\n{}  late rows: {} to _late{}\n  dead letters: {} to _dead_letter\n  replayed and skipped (already written): {}\n  checkpoints committed: {}\n  time: {:.2} s, {:.0} records/s\n  output: {}\n",
            self.partitions,
            if self.resumed_from_checkpoint { " (resumed from checkpoint)" } else { "" },
            c.records_read.get(),
            c.rows_written_total(),
            c.files_written.iter().map(Count::get).sum::<u64>(),
            c.bytes_written.iter().map(Count::get).sum::<u64>() as f64 / 1e6,
            c.windows_closed.get(),
            c.markers_written.get(),
            self.windows_open,
            optional(c.row_groups_staged.get(), "row groups staged"),
            self.enrich_hits,
            self.enrich_misses,
            optional(c.miss_dropped.get(), "dropped")
                + &optional(self.enrich_unreachable, "with the dimension unreachable"),
            self.refresh_failures,
            self.enrich_detail
                .iter()
                .map(|d| format!("  enrichment {d}\n"))
                .collect::<String>(),
            c.rows_late.get(),
            if late_dropped > 0 { format!(", {late_dropped} dropped") } else { String::new() },
            c.dead_letters.get(),
            c.replay_skipped.get(),
            c.checkpoints.get(),
            secs,
            c.records_read.get() as f64 / secs.max(1e-9),
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
        let records = counters.records_read.get();
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
            counters.rows_written_total(),
            counters.rows_late.get(),
            counters.dead_letters.get()
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
    fn render(&self, out: &mut Exposition<'_>) {
        self.counters.render(out);
        let partitions: Vec<(String, &PartitionStatus)> = self
            .statuses
            .iter()
            .map(|s| (s.partition.to_string(), s.as_ref()))
            .collect();
        let mut family = out.family(&C_NEXT_OFFSET);
        for (p, s) in &partitions {
            family.sample(&[p], s.next_offset.load(Ordering::Relaxed));
        }
        let mut family = out.family(&C_HIGH_WATERMARK);
        for (p, s) in &partitions {
            if let Some(high) = s.high_watermark() {
                family.sample(&[p], high);
            }
        }
        let mut family = out.family(&C_LAG);
        for (p, s) in &partitions {
            family.sample(&[p], s.lag());
        }
        let mut family = out.family(&C_WATERMARK);
        if let (Some(w), _) = instance_watermark(&self.statuses) {
            family.sample(&[], w as f64 / 1000.0);
        }
        let mut family = out.family(&C_PARTITION_WATERMARK);
        for (p, s) in &partitions {
            if let Some(w) = s.watermark() {
                family.sample(&[p], w as f64 / 1000.0);
            }
        }
        let mut family = out.family(&C_WATERMARK_SOURCE);
        for (p, s) in &partitions {
            let now = s.source() as usize;
            for (i, source) in WATERMARK_SOURCES.iter().enumerate() {
                family.sample(&[p, source], u64::from(i == now));
            }
        }
        let open: u64 = self
            .statuses
            .iter()
            .map(|s| s.open_windows.load(Ordering::Relaxed))
            .sum();
        out.family(&C_OPEN_WINDOWS).sample(&[], open);
        let mut family = out.family(&C_BUFFERED_BYTES);
        for (i, buffer) in BUFFER_LABELS.iter().enumerate() {
            let bytes: u64 = self.statuses.iter().map(|s| get(&s.buffered[i])).sum();
            family.sample(&[buffer], bytes);
        }
        let stats = self.cache.stats();
        let age = stats.last_refresh.elapsed().unwrap_or_default();
        out.family(&C_ENRICH_KEYS).sample(&[], stats.rows as u64);
        out.family(&C_ENRICH_AGE).sample(&[], age.as_secs_f64());
        out.family(&C_ENRICH_REFRESHES)
            .sample(&[], stats.refresh_ok);
        out.family(&C_ENRICH_FAILURES)
            .sample(&[], stats.refresh_failures);
        out.family(&C_ENRICH_HITS).sample(&[], stats.hits);
        out.family(&C_ENRICH_MISSES).sample(&[], stats.misses);
        if stats.cdc.is_some() {
            out.family(&C_ENRICH_CHANGES).sample(&[], stats.changes);
        }
        if stats.mode == "partial" {
            out.family(&C_ENRICH_CACHE_HITS)
                .sample(&[], stats.cache_hits);
            out.family(&C_ENRICH_CACHE_MISSES)
                .sample(&[], stats.cache_misses);
            out.family(&C_ENRICH_QUERIES).sample(&[], stats.queries);
            out.family(&C_ENRICH_KEYS_QUERIED)
                .sample(&[], stats.keys_queried);
            out.family(&C_ENRICH_QUERY_FAILURES)
                .sample(&[], stats.query_failures);
            out.family(&C_ENRICH_UNREACHABLE)
                .sample(&[], stats.unreachable);
            out.family(&C_ENRICH_CACHE_BYTES)
                .sample(&[], stats.bytes as u64);
            out.family(&C_ENRICH_EVICTIONS).sample(&[], stats.evictions);
        }
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
        if let Some((since, error)) = &stats.down_since {
            return Health::failing(format!(
                "enrichment: dimension unreachable at {} for {:.0} s ({error}); records whose key \
                 is not cached wait up to --enrich-miss-timeout, then follow --on-miss as \
                 `dimension unreachable` ({} so far)",
                self.cache.describe(),
                since.elapsed().unwrap_or_default().as_secs_f64(),
                stats.unreachable
            ));
        }
        let cdc = stats
            .cdc
            .as_deref()
            .map_or(String::new(), |c| format!("; {c}"));
        if stats.mode == "partial" {
            let asked = stats.cache_hits + stats.cache_misses;
            return Health::ok(format!(
                "{} partition(s) fetching; output {}; enrichment: partial cache, {} keys ({:.1} \
                 MB), hit rate {:.1}%, {} records with the dimension unreachable{cdc}",
                self.statuses.len(),
                self.output,
                stats.rows,
                stats.bytes as f64 / 1e6,
                if asked == 0 {
                    100.0
                } else {
                    100.0 * stats.cache_hits as f64 / asked as f64
                },
                stats.unreachable
            ));
        }
        Health::ok(format!(
            "{} partition(s) fetching; output {}; enrichment map: {} keys, loaded {:.0} s ago, {} \
             refresh failures{cdc}",
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::checkpoint::FileRef;
    use crate::enrich::{EnrichConfig, EnrichError, ReferenceSource, ReferenceTable};
    use crate::metrics::testing::{assert_families_once, get as request, render, send};
    use crate::metrics::{ConsumeMetrics, Endpoint, Registry};
    use crate::output::MemStore;

    struct OneBank;

    impl ReferenceSource for OneBank {
        #[allow(clippy::manual_async_fn)]
        fn load(
            &self,
        ) -> impl std::future::Future<Output = Result<ReferenceTable, EnrichError>> + Send {
            async { Ok(ReferenceTable::one_bank()) }
        }
        fn describe(&self) -> String {
            "one bank".into()
        }
    }

    async fn probe(counters: Arc<Counters>, partitions: &[i32]) -> ConsumeProbe {
        let (cache, _refresh) = EnrichmentCache::start(
            OneBank,
            EnrichConfig::default(),
            crate::shutdown::Shutdown::never(),
        )
        .await
        .unwrap();
        cache.count_lookups(5, 2);
        ConsumeProbe {
            brokers: "127.0.0.1:9".into(),
            output: "memory".into(),
            store: Arc::new(MemStore::new()),
            fetch: BusyClocks::new(partitions.len()),
            fetch_bound: Duration::from_secs(30),
            processor_bound: Duration::from_secs(60),
            stopping: AtomicBool::new(false),
            failed: Default::default(),
            cache,
            counters,
            statuses: partitions
                .iter()
                .map(|p| Arc::new(PartitionStatus::new(*p)))
                .collect(),
        }
    }

    fn file(rows: u64, bytes: u64) -> FileRef {
        FileRef {
            name: "part".into(),
            first: 0,
            last: 0,
            rows,
            bytes,
        }
    }

    /// A run's worth of counting: two steps, skipped batches and a held-back transaction.
    fn counted() -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        let step = Progress {
            tally: Tally {
                records_read: 12,
                rows_on_time: 7,
                rows_late: 2,
                late_dropped: 1,
                dead_letters: 1,
                miss_dropped: 1,
                windows_closed: 1,
                ..Tally::default()
            },
            written: vec![
                (FileKindWritten::Window, file(7, 4000)),
                (FileKindWritten::Late, file(2, 900)),
                (FileKindWritten::DeadLetter, file(1, 300)),
                (FileKindWritten::Staged, file(3, 700)),
            ],
        };
        assert_eq!(counters.add_progress(&step), vec![4000, 900, 300]);
        let replay = Progress {
            tally: Tally {
                records_read: 3,
                replay_skipped: 3,
                ..Tally::default()
            },
            written: vec![],
        };
        assert!(counters.add_progress(&replay).is_empty());
        counters.add_skipped(2, 4);
        counters.checkpoints.add(2);
        counters.markers_written.add(1);
        counters.hold_back(HeldBack {
            partition: 1,
            from: 140,
            to: 148,
            producer: Some((208, 4)),
        });
        counters
    }

    fn parse(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (key, value) = l.rsplit_once(' ').unwrap();
                (key.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn the_summary_and_metrics_read_the_same_counters() {
        let counters = counted();
        let probe = probe(Arc::clone(&counters), &[0, 1]).await;
        probe.statuses[1].next_offset.store(15, Ordering::Relaxed);
        probe.statuses[1]
            .high_watermark
            .store(20, Ordering::Relaxed);
        probe.statuses[1]
            .watermark_ms
            .store(1_700_000_000_500, Ordering::Relaxed);
        probe.statuses[1]
            .source
            .store(WatermarkSource::IdleClock as u64, Ordering::Relaxed);

        let text = render(&Registry::enabled(), Arc::new(probe));
        assert_families_once(&text);
        let m = parse(&text);
        let mut summary = ConsumeSummary::from_counters(&counters);
        summary.enrich_hits = 5;
        summary.enrich_misses = 2;
        let shown = summary.render();

        let both = |metric: &str, line: &str| {
            let value = *m
                .get(metric)
                .unwrap_or_else(|| panic!("{metric} missing:\n{text}"));
            let line = line.replace("{}", &value.to_string());
            assert!(shown.contains(&line), "summary lacks {line:?}:\n{shown}");
        };
        both(
            "reclamacoes_consume_records_read_total",
            "records read: {}\n",
        );
        both(
            "reclamacoes_consume_late_records_total{action=\"side_output\"}",
            "late rows: {} to _late",
        );
        both(
            "reclamacoes_consume_late_records_total{action=\"dropped\"}",
            ", {} dropped",
        );
        both(
            "reclamacoes_consume_dead_letters_total",
            "dead letters: {} to _dead_letter",
        );
        both(
            "reclamacoes_consume_replay_skipped_total",
            "(already written): {}\n",
        );
        both(
            "reclamacoes_consume_enrichment_dropped_total",
            "misses ({} dropped)",
        );
        both(
            "reclamacoes_consume_windows_closed_total",
            "windows closed: {} (partition closes)",
        );
        both(
            "reclamacoes_consume_row_groups_staged_total",
            "({} row groups staged)",
        );
        both(
            "reclamacoes_consume_skipped_batches_total{reason=\"aborted\"}",
            "transactions: {} aborted",
        );
        both(
            "reclamacoes_consume_skipped_batches_total{reason=\"control\"}",
            ", {} markers stepped over",
        );
        both(
            "reclamacoes_consume_enrichment_hits_total",
            "enrichment: {} hits",
        );
        both("reclamacoes_consume_enrichment_misses_total", ", {} misses");
        let rows = m["reclamacoes_consume_rows_written_total{output=\"window\"}"]
            + m["reclamacoes_consume_rows_written_total{output=\"late\"}"];
        let files: f64 = OUTPUT_LABELS
            .iter()
            .map(|o| m[&format!("reclamacoes_consume_files_written_total{{output=\"{o}\"}}")])
            .sum();
        assert!(
            shown.contains(&format!("rows written: {rows} in {files} files (0.0 MB)")),
            "{shown}"
        );
        assert_eq!((rows, files), (9.0, 3.0));
        assert_eq!(
            m["reclamacoes_consume_bytes_written_total{output=\"dead_letter\"}"],
            300.0
        );
        assert!(shown.contains("with _SUCCESS: 1"), "{shown}");
        assert!(shown.contains("checkpoints committed: 2"), "{shown}");
        assert!(
            shown.contains("held back: partition 1: 8 offsets held back (140..148)"),
            "{shown}"
        );

        // Positions: only what is known is shown.
        assert_eq!(
            m["reclamacoes_consume_partition_next_offset{partition=\"1\"}"],
            15.0
        );
        assert_eq!(
            m["reclamacoes_consume_partition_lag_records{partition=\"1\"}"],
            5.0
        );
        assert_eq!(
            m["reclamacoes_consume_partition_lag_records{partition=\"0\"}"],
            0.0
        );
        assert_eq!(
            m["reclamacoes_consume_partition_high_watermark{partition=\"1\"}"],
            20.0
        );
        assert!(!m.contains_key("reclamacoes_consume_partition_high_watermark{partition=\"0\"}"));
        assert_eq!(
            m["reclamacoes_consume_partition_watermark_timestamp_seconds{partition=\"1\"}"],
            1_700_000_000.5
        );
        assert!(
            !m.contains_key("reclamacoes_consume_watermark_timestamp_seconds"),
            "partition 0 has none"
        );
        assert_eq!(
            m["reclamacoes_consume_partition_watermark_source{partition=\"1\",source=\"idle_clock\"}"],
            1.0
        );
        assert_eq!(
            m["reclamacoes_consume_partition_watermark_source{partition=\"0\",source=\"none\"}"],
            1.0
        );
        assert_eq!(m["reclamacoes_consume_enrichment_keys"], 1.0);

        // A copy taken at the end does not move with the counters.
        counters.records_read.add(1);
        assert!(summary.render().contains("records read: 15\n"));
        assert_eq!(counters.records_read.get(), 16);
    }

    #[tokio::test]
    async fn healthz_says_why_a_partition_failed() {
        let registry = Registry::enabled();
        ConsumeMetrics::new(&registry);
        let endpoint = Endpoint::bind("127.0.0.1:0", registry).await.unwrap();
        let addr = endpoint.local_addr();
        let probe = Arc::new(probe(counted(), &[0, 1]).await);
        endpoint.set_probe(Arc::clone(&probe) as Arc<dyn Probe>);

        let (head, body) = send(addr, &request("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            body.starts_with("ok\n2 partition(s) fetching; output memory; enrichment map: 1 keys"),
            "{body}"
        );

        let reason = "partition 1 failed: topic `t` partition 1: cannot read the record batch at \
                      offset 50: corrupt record batch";
        probe.fail(reason.to_string());
        probe.fail("partition 0 failed: later".to_string()); // the first reason stays
        probe.stopping.store(true, Ordering::Relaxed); // and comes before "shutting down"
        let (head, body) = send(addr, &request("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body, format!("unhealthy\n{reason}\n"));

        let (head, text) = send(addr, &request("/metrics")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_families_once(&text);
        let m = parse(&text);
        assert_eq!(m["reclamacoes_healthy"], 0.0);
        assert_eq!(m["reclamacoes_consume_records_read_total"], 15.0);
        assert_eq!(m["reclamacoes_consume_file_size_bytes_count"], 0.0);
    }
}
