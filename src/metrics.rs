//! Metrics and health for both commands: the metric names (one table, [`METRICS`], that
//! `docs/operations.md` mirrors), where their values come from, and the `--metrics-addr` HTTP
//! endpoint serving `GET /metrics` and `GET /healthz`.
//!
//! Design:
//! - The text is prometheus-client's: its registry, its Prometheus text encoder (format 0.0.4)
//!   and its label escaping and number formatting. What is ours is the table of names and help
//!   texts; the crate appends a counter's `_total` and a registered help text's full stop
//!   itself, so they are handed over without them and the exposed text is the table's.
//! - A fact is counted once, where it happens. A command keeps its counts as atomics
//!   (`consume::progress::Counters`, `produce::ProduceStats`) and its [`Probe`] writes them at
//!   scrape time ([`Probe::render`], through a prometheus-client `Collector`: each value a
//!   `ConstCounter` or `ConstGauge`); the end-of-run summary reads the same atomics. Nothing is
//!   copied on the hot path, and `/metrics` and the summary cannot disagree.
//! - What no command counts elsewhere lives in a [`Registry`] (prometheus-client's, shared): the
//!   histograms (file sizes, checkpoint durations), the consumer group's gauges and
//!   revocations, the build info. Its handles ([`Counter`], [`Gauge`], [`Histogram`]) are
//!   registered once with their labels, so an update is one atomic operation (a short lock for
//!   a histogram); without `--metrics-addr` they count nowhere. No global state: several
//!   registries can exist in one process (tests).
//! - Health is the command's [`Probe`]: `/healthz` answers 200 while it reports healthy and
//!   503 with the reason otherwise (also while the command is still starting).
//! - The endpoint is hyper's HTTP/1.1 server on tokio: one request per connection, a bounded
//!   request head (431 beyond 8 KiB; hyper answers 400 to what does not parse), bounded time
//!   and connections.

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::{self, ConstCounter};
use prometheus_client::metrics::gauge::{self, ConstGauge};
use prometheus_client::metrics::{family, histogram};
use prometheus_client::registry::{self, Metric};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen on --metrics-addr {addr}: {source}. Give a free local HOST:PORT \
         (e.g. 127.0.0.1:9464), or leave --metrics-addr / METRICS_ADDR unset to run without metrics"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Prometheus metric type (prometheus-client's; the table uses `Counter`, `Gauge` and
/// `Histogram`).
pub use prometheus_client::metrics::MetricType as Kind;

/// One metric: name, type, label names and meaning (the `# HELP` line).
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

// ----------------------------------------------------------------------------- names

pub const BUILD_INFO: MetricDef = def(
    "reclamacoes_build_info",
    Kind::Gauge,
    &["command", "version"],
    "Always 1; the labels say which command and version is running.",
);
pub const HEALTHY: MetricDef = def(
    "reclamacoes_healthy",
    Kind::Gauge,
    &[],
    "1 when /healthz answers 200, 0 when it answers 503 (evaluated at scrape time).",
);

pub const C_RECORDS_READ: MetricDef = def(
    "reclamacoes_consume_records_read_total",
    Kind::Counter,
    &[],
    "Kafka records read and routed (each offset once per run).",
);
pub const C_ROWS_WRITTEN: MetricDef = def(
    "reclamacoes_consume_rows_written_total",
    Kind::Counter,
    &["output"],
    "Rows durably written to Parquet: output=window (window_start=... folders) or late (_late).",
);
pub const C_LATE: MetricDef = def(
    "reclamacoes_consume_late_records_total",
    Kind::Counter,
    &["action"],
    "Records whose window had already closed: action=side_output (to _late) or dropped (--late drop).",
);
pub const C_DEAD_LETTERS: MetricDef = def(
    "reclamacoes_consume_dead_letters_total",
    Kind::Counter,
    &[],
    "Records routed to _dead_letter (undecodable, no event time, or --on-miss dead-letter).",
);
pub const C_SKIPPED_BATCHES: MetricDef = def(
    "reclamacoes_consume_skipped_batches_total",
    Kind::Counter,
    &["reason"],
    "Record batches read committed steps over: reason=\"aborted\" (data of an aborted \
     transaction), reason=\"control\" (transaction markers).",
);
pub const C_REPLAY_SKIPPED: MetricDef = def(
    "reclamacoes_consume_replay_skipped_total",
    Kind::Counter,
    &[],
    "Records re-read after a restart and skipped because the checkpoint says they are written.",
);
pub const C_MISS_DROPPED: MetricDef = def(
    "reclamacoes_consume_enrichment_dropped_total",
    Kind::Counter,
    &[],
    "Records dropped because their key is not in the enrichment table (--on-miss drop).",
);
pub const C_BYTES_WRITTEN: MetricDef = def(
    "reclamacoes_consume_bytes_written_total",
    Kind::Counter,
    &["output"],
    "Bytes of Parquet files written: output=window, late or dead_letter.",
);
pub const C_FILES_WRITTEN: MetricDef = def(
    "reclamacoes_consume_files_written_total",
    Kind::Counter,
    &["output"],
    "Parquet files written: output=window, late or dead_letter.",
);
pub const C_FILE_SIZE: MetricDef = def(
    "reclamacoes_consume_file_size_bytes",
    Kind::Histogram,
    &[],
    "Size of each Parquet file written (all outputs).",
);
pub const C_CHECKPOINT_DURATION: MetricDef = def(
    "reclamacoes_consume_checkpoint_duration_seconds",
    Kind::Histogram,
    &[],
    "Time to commit one checkpoint (write, fsync, rename); _count is the number of commits.",
);
pub const C_WINDOWS_CLOSED: MetricDef = def(
    "reclamacoes_consume_windows_closed_total",
    Kind::Counter,
    &[],
    "Windows closed by a partition's watermark (written as their final file); _SUCCESS follows once every partition closed them.",
);
pub const C_ROW_GROUPS_STAGED: MetricDef = def(
    "reclamacoes_consume_row_groups_staged_total",
    Kind::Counter,
    &[],
    "Row groups of open windows written to _staging (memory bound reached, or shutdown); they join the window's file when it closes.",
);
pub const C_ASSIGNED_PARTITIONS: MetricDef = def(
    "reclamacoes_consume_assigned_partitions",
    Kind::Gauge,
    &[],
    "Partitions this instance reads now (with --group: of the current generation; 0 between generations).",
);
pub const C_GROUP_GENERATION: MetricDef = def(
    "reclamacoes_consume_group_generation",
    Kind::Gauge,
    &[],
    "With --group: the group generation whose partitions this instance holds (-1 before the first assignment and between generations).",
);
pub const C_GROUP_REVOCATIONS: MetricDef = def(
    "reclamacoes_consume_group_revocations_total",
    Kind::Counter,
    &["reason"],
    "With --group: assignments that ended, by reason=rebalance (drained and committed), lost (dropped: the session expired or the member was fenced) or shutdown.",
);
pub const C_NEXT_OFFSET: MetricDef = def(
    "reclamacoes_consume_partition_next_offset",
    Kind::Gauge,
    &["partition"],
    "Next offset the consumer will read, per partition.",
);
pub const C_HIGH_WATERMARK: MetricDef = def(
    "reclamacoes_consume_partition_high_watermark",
    Kind::Gauge,
    &["partition"],
    "Partition end offset (high watermark) as of the last fetch that returned records.",
);
pub const C_LAG: MetricDef = def(
    "reclamacoes_consume_partition_lag_records",
    Kind::Gauge,
    &["partition"],
    "Records behind the end of the partition: high watermark - next offset.",
);
pub const C_WATERMARK: MetricDef = def(
    "reclamacoes_consume_watermark_timestamp_seconds",
    Kind::Gauge,
    &[],
    "The lowest partition watermark (Unix seconds): windows ending at or before it are closed in every partition.",
);
pub const C_PARTITION_WATERMARK: MetricDef = def(
    "reclamacoes_consume_partition_watermark_timestamp_seconds",
    Kind::Gauge,
    &["partition"],
    "A partition's watermark (Unix seconds): its windows ending at or before it are closed.",
);
pub const C_WATERMARK_SOURCE: MetricDef = def(
    "reclamacoes_consume_partition_watermark_source",
    Kind::Gauge,
    &["partition", "source"],
    "1 for what moves a partition's watermark now: source=event_time (records), idle_clock (idle, wall clock), following (idle, other partitions) or none.",
);
pub const C_OPEN_WINDOWS: MetricDef = def(
    "reclamacoes_consume_open_windows",
    Kind::Gauge,
    &[],
    "Windows holding rows of some partition (in memory or staged), not yet closed.",
);
pub const C_BUFFERED_BYTES: MetricDef = def(
    "reclamacoes_consume_buffered_bytes",
    Kind::Gauge,
    &["buffer"],
    "Memory of open Parquet row groups: buffer=windows, late or dead_letter (bounded by --max-buffer-bytes).",
);
pub const C_ENRICH_KEYS: MetricDef = def(
    "reclamacoes_consume_enrichment_keys",
    Kind::Gauge,
    &[],
    "Keys in the enrichment map being served.",
);
pub const C_ENRICH_AGE: MetricDef = def(
    "reclamacoes_consume_enrichment_last_refresh_age_seconds",
    Kind::Gauge,
    &[],
    "Seconds since the enrichment map being served was loaded (last successful refresh).",
);
pub const C_ENRICH_REFRESHES: MetricDef = def(
    "reclamacoes_consume_enrichment_refreshes_total",
    Kind::Counter,
    &[],
    "Successful loads of the enrichment table, the first one included.",
);
pub const C_ENRICH_FAILURES: MetricDef = def(
    "reclamacoes_consume_enrichment_refresh_failures_total",
    Kind::Counter,
    &[],
    "Failed background refreshes of the enrichment table (the previous map stays in use).",
);
pub const C_ENRICH_HITS: MetricDef = def(
    "reclamacoes_consume_enrichment_hits_total",
    Kind::Counter,
    &[],
    "Enrichment lookups that found the key.",
);
pub const C_ENRICH_MISSES: MetricDef = def(
    "reclamacoes_consume_enrichment_misses_total",
    Kind::Counter,
    &[],
    "Enrichment lookups that did not find the key (or the record had no key).",
);
pub const C_ENRICH_CACHE_HITS: MetricDef = def(
    "reclamacoes_consume_enrichment_cache_hits_total",
    Kind::Counter,
    &[],
    "Partial cache: records whose key the cache answered (a row, or a key known to be absent).",
);
pub const C_ENRICH_CACHE_MISSES: MetricDef = def(
    "reclamacoes_consume_enrichment_cache_misses_total",
    Kind::Counter,
    &[],
    "Partial cache: records whose key had to be asked from the database.",
);
pub const C_ENRICH_QUERIES: MetricDef = def(
    "reclamacoes_consume_enrichment_queries_total",
    Kind::Counter,
    &[],
    "Partial cache: miss lookups, one per batch that missed (its distinct keys in `IN` lists).",
);
pub const C_ENRICH_KEYS_QUERIED: MetricDef = def(
    "reclamacoes_consume_enrichment_keys_queried_total",
    Kind::Counter,
    &[],
    "Partial cache: keys asked from the database.",
);
pub const C_ENRICH_QUERY_FAILURES: MetricDef = def(
    "reclamacoes_consume_enrichment_query_failures_total",
    Kind::Counter,
    &[],
    "Partial cache: failed lookup attempts (each retry counts).",
);
pub const C_ENRICH_UNREACHABLE: MetricDef = def(
    "reclamacoes_consume_enrichment_unreachable_total",
    Kind::Counter,
    &[],
    "Partial cache: records that followed --on-miss because the dimension was unreachable (reason `dimension unreachable`).",
);
pub const C_ENRICH_CACHE_BYTES: MetricDef = def(
    "reclamacoes_consume_enrichment_cache_bytes",
    Kind::Gauge,
    &[],
    "Partial cache: bytes its entries are counted for (bounded by --enrich-cache-bytes).",
);
pub const C_ENRICH_CHANGES: MetricDef = def(
    "reclamacoes_consume_enrichment_changes_total",
    Kind::Counter,
    &[],
    "With --enrich-cdc: changed dimension keys read from the binary log (applied to the cache).",
);
pub const C_ENRICH_EVICTIONS: MetricDef = def(
    "reclamacoes_consume_enrichment_cache_evictions_total",
    Kind::Counter,
    &[],
    "Partial cache: entries evicted to stay within --enrich-cache-bytes.",
);

pub const P_ROWS_READ: MetricDef = def(
    "reclamacoes_produce_rows_read_total",
    Kind::Counter,
    &[],
    "CSV rows parsed and handed to the batcher.",
);
pub const P_ROWS_SENT: MetricDef = def(
    "reclamacoes_produce_rows_sent_total",
    Kind::Counter,
    &[],
    "Rows acknowledged by Kafka.",
);
pub const P_ROWS_REJECTED: MetricDef = def(
    "reclamacoes_produce_rows_rejected_total",
    Kind::Counter,
    &[],
    "CSV rows rejected (written to the rejects file).",
);
pub const P_ROWS_PENDING: MetricDef = def(
    "reclamacoes_produce_rows_pending",
    Kind::Gauge,
    &[],
    "Rows read but not yet acknowledged (in batches being filled or sent).",
);
pub const P_BATCHES: MetricDef = def(
    "reclamacoes_produce_batches_total",
    Kind::Counter,
    &[],
    "Batches acknowledged by Kafka.",
);
pub const P_RETRIES: MetricDef = def(
    "reclamacoes_produce_retries_total",
    Kind::Counter,
    &[],
    "Failed produce calls that were retried.",
);
pub const P_BYTES_SENT: MetricDef = def(
    "reclamacoes_produce_bytes_sent_total",
    Kind::Counter,
    &[],
    "Uncompressed record bytes acknowledged by Kafka.",
);
pub const P_INPUT_BYTES: MetricDef = def(
    "reclamacoes_produce_input_bytes_read_total",
    Kind::Counter,
    &[],
    "Bytes of CSV input read.",
);

/// Every metric either command exports (the table of `docs/operations.md`).
pub const METRICS: &[MetricDef] = &[
    BUILD_INFO,
    HEALTHY,
    C_RECORDS_READ,
    C_ROWS_WRITTEN,
    C_LATE,
    C_DEAD_LETTERS,
    C_SKIPPED_BATCHES,
    C_REPLAY_SKIPPED,
    C_MISS_DROPPED,
    C_BYTES_WRITTEN,
    C_FILES_WRITTEN,
    C_FILE_SIZE,
    C_CHECKPOINT_DURATION,
    C_WINDOWS_CLOSED,
    C_ROW_GROUPS_STAGED,
    C_ASSIGNED_PARTITIONS,
    C_GROUP_GENERATION,
    C_GROUP_REVOCATIONS,
    C_NEXT_OFFSET,
    C_HIGH_WATERMARK,
    C_LAG,
    C_WATERMARK,
    C_PARTITION_WATERMARK,
    C_WATERMARK_SOURCE,
    C_OPEN_WINDOWS,
    C_BUFFERED_BYTES,
    C_ENRICH_KEYS,
    C_ENRICH_AGE,
    C_ENRICH_REFRESHES,
    C_ENRICH_FAILURES,
    C_ENRICH_HITS,
    C_ENRICH_MISSES,
    C_ENRICH_CACHE_HITS,
    C_ENRICH_CACHE_MISSES,
    C_ENRICH_QUERIES,
    C_ENRICH_KEYS_QUERIED,
    C_ENRICH_QUERY_FAILURES,
    C_ENRICH_UNREACHABLE,
    C_ENRICH_CACHE_BYTES,
    C_ENRICH_EVICTIONS,
    C_ENRICH_CHANGES,
    P_ROWS_READ,
    P_ROWS_SENT,
    P_ROWS_REJECTED,
    P_ROWS_PENDING,
    P_BATCHES,
    P_RETRIES,
    P_BYTES_SENT,
    P_INPUT_BYTES,
];

/// Buckets of [`C_FILE_SIZE`]: 64 KiB .. 1 GiB, ×4.
pub fn file_size_buckets() -> impl Iterator<Item = f64> {
    histogram::exponential_buckets(65_536.0, 4.0, 8)
}
/// Buckets of [`C_CHECKPOINT_DURATION`], seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// ----------------------------------------------------------------------------- scrape time

/// A sample's value, encoded as prometheus-client's `ConstGauge`, or `ConstCounter` for a
/// counter's count (`u64`).
pub trait SampleValue: EncodeGaugeValue + Sized {
    fn encode(self, _kind: Kind, sample: MetricEncoder<'_>) -> fmt::Result {
        ConstGauge::new(self).encode(sample)
    }
}

impl SampleValue for i64 {}
impl SampleValue for f64 {}
impl SampleValue for u64 {
    fn encode(self, kind: Kind, sample: MetricEncoder<'_>) -> fmt::Result {
        match kind {
            Kind::Counter => ConstCounter::new(self).encode(sample),
            _ => ConstGauge::new(self).encode(sample),
        }
    }
}

/// The name prometheus-client is given for `def`: without the `_total` it appends to a
/// counter's name itself, so that the text shows `def.name`.
fn base_name(def: &MetricDef) -> &'static str {
    match def.kind {
        Kind::Counter => def.name.strip_suffix("_total").unwrap_or(def.name),
        _ => def.name,
    }
}

/// What a [`Probe`] writes its families to at scrape time: prometheus-client's encoder, inside
/// the collector the endpoint registers. Each family is started once with
/// [`family`](Self::family), which writes its `# HELP` and `# TYPE` lines from the
/// [`MetricDef`]; its samples follow. The first encoding error ends the scrape.
pub struct Exposition<'a> {
    encoder: DescriptorEncoder<'a>,
    result: fmt::Result,
}

impl Exposition<'_> {
    /// Starts the family `def`; add its samples to what this returns.
    pub fn family<'s>(&'s mut self, def: &'s MetricDef) -> Family<'s> {
        let encoder = self.result.and_then(|()| {
            self.encoder
                .encode_descriptor(base_name(def), def.help, None, def.kind)
        });
        if let Err(e) = &encoder {
            self.result = Err(*e);
        }
        Family {
            def,
            encoder: encoder.ok(),
            result: &mut self.result,
        }
    }
}

/// The samples of one family ([`Exposition::family`]).
pub struct Family<'a> {
    def: &'a MetricDef,
    encoder: Option<MetricEncoder<'a>>,
    result: &'a mut fmt::Result,
}

impl Family<'_> {
    /// One sample, with label values in the order of the family's label names.
    pub fn sample(&mut self, labels: &[&str], value: impl SampleValue) -> &mut Self {
        let def = self.def;
        debug_assert_eq!(def.labels.len(), labels.len(), "labels of {}", def.name);
        if let Some(encoder) = &mut self.encoder {
            let labels: Vec<(&str, &str)> = def
                .labels
                .iter()
                .copied()
                .zip(labels.iter().copied())
                .collect();
            let written = encoder
                .encode_family(&labels)
                .and_then(|sample| value.encode(def.kind, sample));
            if let Err(e) = written {
                *self.result = Err(e);
                self.encoder = None;
            }
        }
        self
    }
}

/// Where the endpoint finds the command's probe (none while it starts).
type ProbeSlot = Arc<RwLock<Option<Arc<dyn Probe>>>>;

/// The families read at scrape time: `reclamacoes_healthy`, then the probe's.
struct Scrape(ProbeSlot);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let probe = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = Exposition {
            encoder,
            result: Ok(()),
        };
        let healthy = health(probe.as_deref()).healthy;
        out.family(&HEALTHY).sample(&[], u64::from(healthy));
        if let Some(probe) = &probe {
            probe.render(&mut out);
        }
        out.result
    }
}

// ----------------------------------------------------------------------------- registry

/// A counter from a [`Registry`] (counting nowhere when metrics are off).
#[derive(Debug, Clone, Default)]
pub struct Counter(counter::Counter);

impl Counter {
    pub fn increment(&self, n: u64) {
        self.0.inc_by(n);
    }
}

/// A gauge from a [`Registry`], an `f64` (kept nowhere when metrics are off).
#[derive(Debug, Clone, Default)]
pub struct Gauge(gauge::Gauge<f64, AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }
}

/// A histogram from a [`Registry`], with fixed buckets; a no-op when metrics are off
/// (`Default`).
#[derive(Debug, Clone, Default)]
pub struct Histogram(Option<histogram::Histogram>);

impl Histogram {
    pub fn record(&self, value: f64) {
        if let Some(histogram) = &self.0 {
            histogram.observe(value);
        }
    }
}

/// A series' labels: (name, value) in the order of its family's label names.
type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Registered {
    registry: registry::Registry,
    /// What is registered in it, by name (a `family::Family` or a `histogram::Histogram`).
    families: HashMap<&'static str, Box<dyn Any + Send>>,
}

/// Where the handles of what no command counts itself come from (see the module docs), and
/// the `/metrics` text. Asking again for the same name returns the same family, and for the
/// same labels the same series, so a series outlives whoever asked for it (a group
/// generation, say).
#[derive(Debug, Clone, Default)]
pub struct Registry(Option<Arc<Mutex<Registered>>>);

impl Registry {
    /// No metrics: every handle is a no-op.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A registry whose handles count.
    pub fn enabled() -> Self {
        Registry(Some(Arc::default()))
    }

    fn lock(&self) -> Option<MutexGuard<'_, Registered>> {
        Some(
            self.0
                .as_ref()?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The family `def`, made by `make` and registered the first time. prometheus-client adds a
    /// counter's `_total` and the help text's full stop itself: they are handed over without.
    fn family<M: Metric + Clone>(&self, def: &MetricDef, make: impl FnOnce() -> M) -> Option<M> {
        let mut registered = self.lock()?;
        let Registered { registry, families } = &mut *registered;
        let family = families.entry(def.name).or_insert_with(|| {
            let family = make();
            let help = def.help.strip_suffix('.').unwrap_or(def.help);
            registry.register(base_name(def), help, family.clone());
            Box::new(family)
        });
        family.downcast_ref::<M>().cloned()
    }

    pub fn counter(&self, def: &MetricDef, labels: &[&str]) -> Counter {
        debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
        let family = self.family(def, family::Family::<Labels, counter::Counter>::default);
        Counter(
            family
                .map(|f| f.get_or_create_owned(&labelled(def, labels)))
                .unwrap_or_default(),
        )
    }

    pub fn gauge(&self, def: &MetricDef, labels: &[&str]) -> Gauge {
        debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
        let family = self.family(
            def,
            family::Family::<Labels, gauge::Gauge<f64, AtomicU64>>::default,
        );
        Gauge(
            family
                .map(|f| f.get_or_create_owned(&labelled(def, labels)))
                .unwrap_or_default(),
        )
    }

    /// The histogram `def` (no labels) with upper bucket bounds `bounds` (ascending; +Inf is
    /// implied).
    pub fn histogram(&self, def: &MetricDef, bounds: impl IntoIterator<Item = f64>) -> Histogram {
        debug_assert_eq!(def.kind, Kind::Histogram, "{}", def.name);
        debug_assert!(def.labels.is_empty(), "labels of {}", def.name);
        Histogram(self.family(def, || histogram::Histogram::new(bounds)))
    }

    /// The build info of `command` (`consume`, `produce`): always 1.
    pub fn set_build_info(&self, command: &str) {
        self.gauge(&BUILD_INFO, &[command, env!("CARGO_PKG_VERSION")])
            .set(1.0);
    }

    /// Adds what is read at scrape time.
    fn register_collector(&self, collector: Box<dyn Collector>) {
        if let Some(mut registered) = self.lock() {
            registered.registry.register_collector(collector);
        }
    }

    /// The `/metrics` text: every registered family, then what the collectors read now.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        if let Some(registered) = self.lock() {
            prometheus_text::encode(&mut text, &registered.registry)?;
        }
        Ok(text)
    }
}

/// `labels` (values in the order of `def.labels`) as a series' label set.
fn labelled(def: &MetricDef, labels: &[&str]) -> Labels {
    debug_assert_eq!(def.labels.len(), labels.len(), "labels of {}", def.name);
    let values = labels.iter().map(|v| v.to_string());
    def.labels.iter().copied().zip(values).collect()
}

// ----------------------------------------------------------------------------- health

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// One line per check, for people and logs.
    pub detail: String,
}

impl Health {
    pub fn ok(detail: impl Into<String>) -> Self {
        Health {
            healthy: true,
            detail: detail.into(),
        }
    }
    pub fn failing(detail: impl Into<String>) -> Self {
        Health {
            healthy: false,
            detail: detail.into(),
        }
    }
}

/// A command's view for the endpoint.
pub trait Probe: Send + Sync {
    /// Writes the command's own metrics for `/metrics`, read now from where it counts them.
    fn render(&self, _out: &mut Exposition<'_>) {}
    /// Whether the pipeline's tasks are alive and making progress.
    fn health(&self) -> Health;
}

/// Per-slot "busy since" clocks (one slot per partition fetcher or sender). A slot is busy from
/// [`begin`](Self::begin) (a broker call starts while the slot was idle) until
/// [`end`](Self::end) (a call succeeded); failed calls and their retries keep it busy, so the age
/// is how long the slot has gone without a success. One atomic operation per call.
#[derive(Debug)]
pub struct BusyClocks {
    origin: Instant,
    /// Milliseconds since `origin` + 1 when the slot became busy; 0 = idle.
    since: Vec<AtomicU64>,
}

impl BusyClocks {
    pub fn new(slots: usize) -> Self {
        BusyClocks {
            origin: Instant::now(),
            since: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// The slot starts waiting for a success (no-op if it already is).
    pub fn begin(&self, slot: usize) {
        if let Some(s) = self.since.get(slot) {
            let _ = s.compare_exchange(0, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The slot succeeded (or stopped): idle again.
    pub fn end(&self, slot: usize) {
        if let Some(s) = self.since.get(slot) {
            s.store(0, Ordering::Relaxed);
        }
    }

    /// The slot busy the longest and for how long, if any is busy.
    pub fn longest_busy(&self) -> Option<(usize, Duration)> {
        let now = self.now_ms();
        self.since
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.load(Ordering::Relaxed) {
                0 => None,
                t => Some((i, Duration::from_millis(now.saturating_sub(t)))),
            })
            .max_by_key(|(_, d)| *d)
    }
}

/// A liveness clock: the owner calls [`beat`](Self::beat) on every turn of its loop.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation if none).
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

// ----------------------------------------------------------------------------- endpoint

/// Longest request head read (hyper's smallest read buffer): a longer one is answered 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A connection must send its request and take the answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

struct EndpointState {
    registry: Registry,
    probe: ProbeSlot,
}

/// The `--metrics-addr` HTTP endpoint. Serves until dropped.
pub struct Endpoint {
    addr: SocketAddr,
    state: Arc<EndpointState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    /// Binds `addr` (HOST:PORT; port 0 picks a free one) and serves `/metrics` from `registry`,
    /// to which it adds `reclamacoes_healthy` and the probe's families, read at scrape time.
    /// `/healthz` answers 503 "starting" until [`set_probe`](Self::set_probe).
    pub async fn bind(addr: &str, registry: Registry) -> Result<Endpoint, MetricsError> {
        let bind_err = |source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let probe = ProbeSlot::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(&probe))));
        let state = Arc::new(EndpointState { registry, probe });
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        tracing::info!(
            metrics = %format!("http://{local}/metrics"),
            health = %format!("http://{local}/healthz"),
            "Metrics endpoint listening"
        );
        Ok(Endpoint {
            addr: local,
            state,
            task,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `/healthz` and `/metrics` ask `probe`.
    pub fn set_probe(&self, probe: Arc<dyn Probe>) {
        *self
            .state
            .probe
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(probe);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the endpoint when `addr` is set; the registry to take handles from either way.
pub async fn start(addr: Option<&str>) -> Result<(Registry, Option<Endpoint>), MetricsError> {
    match addr {
        None => Ok((Registry::disabled(), None)),
        Some(addr) => {
            let registry = Registry::enabled();
            let endpoint = Endpoint::bind(addr, registry.clone()).await?;
            Ok((registry, Some(endpoint)))
        }
    }
}

/// Accepts connections and serves each with hyper, one request per connection.
async fn serve(listener: TcpListener, state: Arc<EndpointState>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "Metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue; // too many at once: dropping the stream closes it
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(state.respond(&request)))
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What `/healthz` says with `probe` (none yet: starting).
fn health(probe: Option<&dyn Probe>) -> Health {
    match probe {
        Some(p) => p.health(),
        None => Health::failing("starting: connecting to the services"),
    }
}

impl EndpointState {
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        self.probe
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The answer to one request (hyper leaves out the body of a HEAD answer).
    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut r = response(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN_TEXT,
                "only GET and HEAD\n".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match request.uri().path() {
            "/metrics" => match self.registry.encode() {
                Ok(text) => response(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
                Err(e) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN_TEXT,
                    format!("cannot encode the metrics: {e}\n"),
                ),
            },
            "/healthz" => {
                let health = health(self.probe().as_deref());
                let (status, verdict) = if health.healthy {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
                };
                let body = format!("{verdict}\n{}\n", health.detail.trim_end());
                response(status, PLAIN_TEXT, body)
            }
            "/" => response(
                StatusCode::OK,
                PLAIN_TEXT,
                "reclamacoes: GET /metrics (Prometheus), GET /healthz\n".into(),
            ),
            _ => response(
                StatusCode::NOT_FOUND,
                PLAIN_TEXT,
                "not found; try /metrics or /healthz\n".into(),
            ),
        }
    }
}

// ----------------------------------------------------------------------------- consume

/// The distributions `app consume` records: handles into the [`Registry`], registered once per
/// process (they outlive a group generation). Its counts are not here: they live in
/// `consume::progress::Counters`, and its positions in each partition's status, both written
/// out at scrape time by the consumer's probe.
#[derive(Debug, Clone, Default)]
pub struct ConsumeMetrics {
    pub file_size: Histogram,
    pub checkpoint_duration: Histogram,
}

impl ConsumeMetrics {
    /// Registers the histograms and the build info.
    pub fn new(registry: &Registry) -> Self {
        registry.set_build_info("consume");
        ConsumeMetrics {
            file_size: registry.histogram(&C_FILE_SIZE, file_size_buckets()),
            checkpoint_duration: registry
                .histogram(&C_CHECKPOINT_DURATION, DURATION_BUCKETS.iter().copied()),
        }
    }
}

/// Label values of [`C_WATERMARK_SOURCE`].
pub const WATERMARK_SOURCES: [&str; 4] = ["none", "event_time", "idle_clock", "following"];

/// The three outputs of the consumer, as label values and array indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Window = 0,
    Late = 1,
    DeadLetter = 2,
}

/// The `output` label values, indexed by [`Output`].
pub const OUTPUT_LABELS: [&str; 3] = ["window", "late", "dead_letter"];
/// The `buffer` label values of [`C_BUFFERED_BYTES`], indexed by [`Output`].
pub const BUFFER_LABELS: [&str; 3] = ["windows", "late", "dead_letter"];

/// A raw HTTP/1.1 client for the tests here and in `consume::progress`.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends `request` as is and reads the answer to the end: (status line and headers, body).
    pub async fn send(addr: SocketAddr, request: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    /// `GET path` as a browser or Prometheus sends it (no `Connection: close`).
    pub fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    }

    /// The `/metrics` text of `registry` with `probe` set, as the endpoint serves it (once per
    /// registry: it adds the probe's collector).
    pub fn render(registry: &super::Registry, probe: Arc<dyn super::Probe>) -> String {
        let slot = Arc::new(std::sync::RwLock::new(Some(probe)));
        registry.register_collector(Box::new(super::Scrape(slot)));
        registry.encode().unwrap()
    }

    /// Fails if a family is written twice (`# TYPE` once per name).
    pub fn assert_families_once(text: &str) {
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(
                seen.insert(line.to_string()),
                "written twice: {line}\n{text}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_families_once, get, send};
    use super::*;

    struct FakeProbe {
        healthy: bool,
        rendered: AtomicU64,
    }

    impl Probe for FakeProbe {
        fn render(&self, out: &mut Exposition<'_>) {
            let n = self.rendered.fetch_add(1, Ordering::Relaxed) + 1;
            out.family(&C_RECORDS_READ).sample(&[], 83u64);
            out.family(&C_ROWS_WRITTEN)
                .sample(&["window"], 80u64)
                .sample(&["late"], 0u64);
            out.family(&C_LAG).sample(&["0"], 0i64).sample(&["2"], 7i64);
            out.family(&C_ENRICH_KEYS).sample(&[], n);
        }
        fn health(&self) -> Health {
            if self.healthy {
                Health::ok("all good")
            } else {
                Health::failing("partition 0: no successful fetch for 9s")
            }
        }
    }

    fn probe(healthy: bool) -> Arc<FakeProbe> {
        Arc::new(FakeProbe {
            healthy,
            rendered: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_health_and_errors() {
        let registry = Registry::enabled();
        let m = ConsumeMetrics::new(&registry);
        m.file_size.record(4096.0);
        m.file_size.record(65_536.0); // on a bound: in that bucket (`le`)
        m.checkpoint_duration.record(0.02);
        registry.gauge(&C_GROUP_GENERATION, &[]).set(-1.0);
        registry
            .counter(&C_GROUP_REVOCATIONS, &["lost"])
            .increment(2);
        let endpoint = Endpoint::bind("127.0.0.1:0", registry.clone())
            .await
            .unwrap();
        let addr = endpoint.local_addr();

        // Before a probe is set: starting.
        let (head, body) = send(addr, &get("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(body.starts_with("unhealthy\nstarting"), "{body}");
        let (_, body) = send(addr, &get("/metrics")).await;
        assert!(body.contains("reclamacoes_healthy 0\n"), "{body}");

        endpoint.set_probe(probe(true));
        let (head, body) = send(addr, &get("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, "ok\nall good\n");

        let (head, body) = send(addr, &get("/metrics?x=1")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(head.contains("no-store"), "{head}");
        assert_families_once(&body);
        for line in [
            "# HELP reclamacoes_consume_records_read_total Kafka records read and routed (each offset once per run).\n",
            "# TYPE reclamacoes_consume_records_read_total counter\n",
            "reclamacoes_consume_records_read_total 83\n",
            "reclamacoes_consume_rows_written_total{output=\"window\"} 80\n",
            "reclamacoes_consume_partition_lag_records{partition=\"2\"} 7\n",
            "# TYPE reclamacoes_consume_file_size_bytes histogram\n",
            "reclamacoes_consume_file_size_bytes_bucket{le=\"65536\"} 2\n",
            // The crate writes `le` as Go's client does: 1 GiB as 1.073741824e+09.
            "reclamacoes_consume_file_size_bytes_bucket{le=\"1.073741824e+09\"} 2\n",
            "reclamacoes_consume_file_size_bytes_bucket{le=\"+Inf\"} 2\n",
            "reclamacoes_consume_file_size_bytes_sum 69632.0\n",
            "reclamacoes_consume_file_size_bytes_count 2\n",
            "reclamacoes_consume_checkpoint_duration_seconds_bucket{le=\"0.01\"} 0\n",
            "reclamacoes_consume_checkpoint_duration_seconds_bucket{le=\"0.025\"} 1\n",
            "reclamacoes_consume_checkpoint_duration_seconds_sum 0.02\n",
            "reclamacoes_consume_group_generation -1.0\n",
            "reclamacoes_consume_group_revocations_total{reason=\"lost\"} 2\n",
            "reclamacoes_consume_enrichment_keys 1\n", // rendered at scrape time
            "reclamacoes_healthy 1\n",
            "# TYPE reclamacoes_build_info gauge\n",
        ] {
            assert!(body.contains(line), "missing {line:?} in\n{body}");
        }
        assert!(body.contains(&format!(
            "reclamacoes_build_info{{command=\"consume\",version=\"{}\"}} 1.0\n",
            env!("CARGO_PKG_VERSION")
        )));
        let (_, body) = send(addr, &get("/metrics")).await;
        assert!(body.contains("reclamacoes_consume_enrichment_keys 2\n"));

        // HEAD: the length of the GET answer, no body.
        let (head, body) = send(addr, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-length: 12"), "{head}");
        assert!(body.is_empty(), "{body}");
        let (head, body) = send(addr, &get("/")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("GET /metrics"), "{body}");
        let (head, _) = send(addr, &get("/nope")).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = send(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert!(head.contains("allow: GET, HEAD"), "{head}");
        // What is not HTTP, and a request head past the bound.
        let (head, _) = send(addr, "hello there\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        let (head, _) = send(addr, &huge).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        // HTTP/1.0 works too.
        let (head, _) = send(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );

        endpoint.set_probe(probe(false));
        let (head, body) = send(addr, &get("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body, "unhealthy\npartition 0: no successful fetch for 9s\n");
        let (_, body) = send(addr, &get("/metrics")).await;
        assert!(body.contains("reclamacoes_healthy 0\n"), "{body}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        use tokio::io::AsyncReadExt;
        tokio::time::pause();
        let endpoint = Endpoint::bind("127.0.0.1:0", Registry::enabled())
            .await
            .unwrap();
        let mut idle = tokio::net::TcpStream::connect(endpoint.local_addr())
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let bound = REQUEST_TIMEOUT + Duration::from_secs(1);
        let read = tokio::time::timeout(bound, idle.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "still open {bound:?} after connecting");
        assert!(
            started.elapsed() >= REQUEST_TIMEOUT,
            "closed before the timeout"
        );
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = Endpoint::bind(&addr, Registry::enabled())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("--metrics-addr {addr}")), "{err}");
        let err = Endpoint::bind("not-an-address", Registry::enabled())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--metrics-addr not-an-address"), "{err}");
    }

    #[test]
    fn disabled_registry_hands_out_noops() {
        let registry = Registry::disabled();
        let m = ConsumeMetrics::new(&registry);
        m.file_size.record(1.0);
        registry
            .counter(&C_GROUP_REVOCATIONS, &["lost"])
            .increment(1);
        assert_eq!(registry.encode().unwrap(), "");
    }

    #[test]
    fn a_series_is_registered_once() {
        let registry = Registry::enabled();
        registry
            .counter(&C_GROUP_REVOCATIONS, &["lost"])
            .increment(1);
        registry
            .counter(&C_GROUP_REVOCATIONS, &["rebalance"])
            .increment(1);
        registry
            .counter(&C_GROUP_REVOCATIONS, &["lost"])
            .increment(2);
        ConsumeMetrics::new(&registry).file_size.record(1.0);
        ConsumeMetrics::new(&registry).file_size.record(2.0);
        let text = registry.encode().unwrap();
        assert_families_once(&text);
        assert!(text.contains("reclamacoes_consume_group_revocations_total{reason=\"lost\"} 3\n"));
        assert!(
            text.contains("reclamacoes_consume_group_revocations_total{reason=\"rebalance\"} 1\n")
        );
        assert!(
            text.contains("reclamacoes_consume_file_size_bytes_count 2\n"),
            "{text}"
        );
    }

    /// A probe that writes what its function writes.
    struct Writes(fn(&mut Exposition<'_>));

    impl Probe for Writes {
        fn render(&self, out: &mut Exposition<'_>) {
            (self.0)(out)
        }
        fn health(&self) -> Health {
            Health::ok("")
        }
    }

    #[test]
    fn names_help_labels_and_values_are_the_tables() {
        let registry = Registry::enabled();
        registry
            .counter(&C_GROUP_REVOCATIONS, &["lost"])
            .increment(1);
        let text = testing::render(
            &registry,
            Arc::new(Writes(|out| {
                out.family(&C_RECORDS_READ).sample(&[], u64::MAX);
                out.family(&C_LAG).sample(&["0"], -1i64);
                out.family(&C_WATERMARK).sample(&[], 1.7e9 + 0.5);
                out.family(&C_ENRICH_AGE).sample(&[], 0.0025);
                out.family(&C_WATERMARK_SOURCE)
                    .sample(&["0", "a\"b\\c\nd"], 1u64);
            })),
        );
        assert_families_once(&text);
        assert!(!text.contains("_total_total"), "{text}");
        for def in [
            &C_GROUP_REVOCATIONS,
            &C_RECORDS_READ,
            &HEALTHY,
            &C_WATERMARK_SOURCE,
        ] {
            let head = format!(
                "# HELP {} {}\n# TYPE {} {}\n",
                def.name,
                def.help,
                def.name,
                def.kind.as_str()
            );
            assert!(text.contains(&head), "missing {head:?} in\n{text}");
        }
        for line in [
            "reclamacoes_consume_group_revocations_total{reason=\"lost\"} 1\n",
            "reclamacoes_healthy 1\n",
            "reclamacoes_consume_records_read_total 18446744073709551615\n",
            "reclamacoes_consume_partition_lag_records{partition=\"0\"} -1\n",
            "reclamacoes_consume_watermark_timestamp_seconds 1700000000.5\n",
            "reclamacoes_consume_enrichment_last_refresh_age_seconds 0.0025\n",
            "reclamacoes_consume_partition_watermark_source{partition=\"0\",source=\"a\\\"b\\\\c\\nd\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn busy_clocks_track_the_oldest_unfinished_call() {
        let clocks = BusyClocks::new(3);
        assert_eq!(clocks.longest_busy(), None);
        clocks.begin(1);
        std::thread::sleep(Duration::from_millis(20));
        clocks.begin(1); // a retry keeps the first start
        clocks.begin(2);
        let (slot, age) = clocks.longest_busy().unwrap();
        assert_eq!(slot, 1);
        assert!(age >= Duration::from_millis(20));
        clocks.end(1);
        assert_eq!(clocks.longest_busy().unwrap().0, 2);
        clocks.end(2);
        assert_eq!(clocks.longest_busy(), None);
        clocks.begin(7); // out of range: ignored
    }

    #[test]
    fn operations_doc_lists_every_metric() {
        let doc = include_str!("../docs/operations.md");
        for m in METRICS {
            let row = format!("| `{}` | {} |", m.name, m.kind.as_str());
            assert!(
                doc.contains(&row),
                "docs/operations.md lacks the row `{row}`"
            );
        }
        let names: std::collections::BTreeSet<_> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), METRICS.len(), "duplicate metric names");
        for m in METRICS {
            assert!(m.name.starts_with("reclamacoes_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            assert!(!m.help.contains('\n'), "{}: one-line help", m.name);
            // prometheus-client ends a registered help text with a full stop.
            assert!(
                m.help.ends_with('.'),
                "{}: help ends with a full stop",
                m.name
            );
        }
    }
}
