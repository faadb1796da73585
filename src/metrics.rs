//! Metrics and health for both commands: the metric names (one table, [`METRICS`], that
//! `docs/operations.md` mirrors), the handles each command updates, and the `--metrics-addr`
//! HTTP endpoint serving `GET /metrics` (Prometheus text format) and `GET /healthz`.
//!
//! Design:
//! - Handles ([`metrics::Counter`], [`metrics::Gauge`], [`metrics::Histogram`]) are registered
//!   once at startup, labels included, so the hot path is one atomic operation per update and no
//!   per-record lookup or string formatting. Without `--metrics-addr` they are no-ops.
//! - No global recorder: a [`Registry`] owns its recorder, so several can exist in one process
//!   (tests) and nothing else can write into it.
//! - Counters that a command already keeps as atomics (produce) are copied into the registry by
//!   [`Probe::refresh`] just before each scrape instead of being counted twice.
//! - Health is the command's [`Probe`]: `/healthz` answers 200 while it reports healthy and
//!   503 with the reason otherwise (also while the command is still starting).
//! - The HTTP server is a deliberately tiny HTTP/1.1 responder on tokio (one request per
//!   connection, bounded request size, time and concurrency): `metrics-exporter-prometheus`'s
//!   own listener answers every path with the metrics and so cannot serve `/healthz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

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
const FILE_SIZE_BUCKETS: &[f64] = &[
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];
/// Buckets of [`C_CHECKPOINT_DURATION`], seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// ----------------------------------------------------------------------------- registry

/// Where handles come from: a Prometheus recorder, or nothing (no-op handles).
#[derive(Clone, Default)]
pub struct Registry {
    recorder: Option<Arc<PrometheusRecorder>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Registry {
    /// No metrics: every handle is a no-op.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A Prometheus registry with the histogram buckets of this module.
    pub fn prometheus() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(C_FILE_SIZE.name.into()), FILE_SIZE_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(C_CHECKPOINT_DURATION.name.into()),
                    DURATION_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        Registry {
            recorder: Some(Arc::new(recorder)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.recorder.is_some()
    }

    fn key(&self, def: &MetricDef, labels: &[&str]) -> Option<(Arc<PrometheusRecorder>, Key)> {
        let recorder = self.recorder.as_ref()?;
        debug_assert_eq!(def.labels.len(), labels.len(), "labels of {}", def.name);
        let name = KeyName::from_const_str(def.name);
        let help = SharedString::const_str(def.help);
        match def.kind {
            Kind::Counter => recorder.describe_counter(name, None, help),
            Kind::Gauge => recorder.describe_gauge(name, None, help),
            Kind::Histogram => recorder.describe_histogram(name, None, help),
        }
        let labels: Vec<Label> = def
            .labels
            .iter()
            .zip(labels)
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Some((Arc::clone(recorder), Key::from_parts(def.name, labels)))
    }

    /// The counter `def` with label values `labels` (in the order of `def.labels`).
    pub fn counter(&self, def: &MetricDef, labels: &[&str]) -> Counter {
        match self.key(def, labels) {
            Some((r, key)) => r.register_counter(&key, &metadata()),
            None => Counter::noop(),
        }
    }

    pub fn gauge(&self, def: &MetricDef, labels: &[&str]) -> Gauge {
        match self.key(def, labels) {
            Some((r, key)) => r.register_gauge(&key, &metadata()),
            None => Gauge::noop(),
        }
    }

    pub fn histogram(&self, def: &MetricDef, labels: &[&str]) -> Histogram {
        match self.key(def, labels) {
            Some((r, key)) => r.register_histogram(&key, &metadata()),
            None => Histogram::noop(),
        }
    }

    /// The Prometheus text exposition of everything registered (empty when disabled).
    pub fn render(&self) -> String {
        self.recorder
            .as_ref()
            .map(|r| r.handle().render())
            .unwrap_or_default()
    }

    /// Drains histogram samples into their buckets (bounded memory between scrapes).
    pub fn run_upkeep(&self) {
        if let Some(r) = &self.recorder {
            r.handle().run_upkeep();
        }
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
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
    /// Called just before `/metrics` renders: copy values kept elsewhere into gauges/counters.
    fn refresh(&self) {}
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

/// Longest request head read before answering 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A connection must send its request and take the answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How often histogram samples are drained into buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

struct EndpointState {
    registry: Registry,
    probe: RwLock<Option<Arc<dyn Probe>>>,
    healthy: Gauge,
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
    /// Binds `addr` (HOST:PORT; port 0 picks a free one) and serves `/metrics` from `registry`.
    /// `/healthz` answers 503 "starting" until [`set_probe`](Self::set_probe) is called.
    pub async fn bind(addr: &str, registry: Registry) -> Result<Endpoint, MetricsError> {
        let bind_err = |source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let state = Arc::new(EndpointState {
            healthy: registry.gauge(&HEALTHY, &[]),
            registry,
            probe: RwLock::new(None),
        });
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
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(probe);
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
            let registry = Registry::prometheus();
            let endpoint = Endpoint::bind(addr, registry.clone()).await?;
            Ok((registry, Some(endpoint)))
        }
    }
}

impl EndpointState {
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        self.probe
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn health(&self) -> Health {
        let health = match self.probe() {
            Some(p) => p.health(),
            None => Health::failing("starting: connecting to the services"),
        };
        self.healthy.set(if health.healthy { 1.0 } else { 0.0 });
        health
    }
}

async fn serve(listener: TcpListener, state: Arc<EndpointState>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        continue; // too many at once: dropping closes the connection
                    };
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &state)).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = upkeep.tick() => state.registry.run_upkeep(),
        }
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

fn text(status: &'static str, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

fn route(method: &str, path: &str, state: &EndpointState) -> Response {
    if method != "GET" && method != "HEAD" {
        return text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    match path {
        "/metrics" => {
            if let Some(p) = state.probe() {
                p.refresh();
            }
            state.health();
            Response {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: state.registry.render(),
            }
        }
        "/healthz" => {
            let health = state.health();
            let status = if health.healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let verdict = if health.healthy { "ok" } else { "unhealthy" };
            text(status, format!("{verdict}\n{}\n", health.detail.trim_end()))
        }
        "/" => text(
            "200 OK",
            "reclamacoes: GET /metrics (Prometheus), GET /healthz\n",
        ),
        _ => text("404 Not Found", "not found; try /metrics or /healthz\n"),
    }
}

async fn handle(mut stream: TcpStream, state: &EndpointState) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // closed before a complete request
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            let line = String::from_utf8_lossy(&head[..end]);
            let line = line.lines().next().unwrap_or_default();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default();
            let mut r = route(method, path, state);
            if method == "HEAD" {
                r.body.clear();
            }
            break r;
        }
        if head.len() > MAX_REQUEST_BYTES {
            break text("431 Request Header Fields Too Large", "request too large\n");
        }
    };
    let header = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

// ----------------------------------------------------------------------------- handles

/// Counters and gauges of `app consume`, registered once and set at scrape time from the
/// consumer's own counters (`consume::progress`), so nothing is counted twice.
#[derive(Debug, Clone)]
pub struct ConsumeMetrics {
    pub records_read: Counter,
    pub rows_written_window: Counter,
    pub rows_written_late: Counter,
    pub late_side_output: Counter,
    pub late_dropped: Counter,
    pub dead_letters: Counter,
    pub aborted_batches: Counter,
    pub control_batches: Counter,
    pub replay_skipped: Counter,
    pub miss_dropped: Counter,
    /// Indexed by [`Output`].
    pub bytes_written: [Counter; 3],
    pub files_written: [Counter; 3],
    pub file_size: Histogram,
    pub checkpoint_duration: Histogram,
    pub windows_closed: Counter,
    pub row_groups_staged: Counter,
    pub watermark: Gauge,
    pub open_windows: Gauge,
    /// Indexed by [`Output`] (windows, late, dead letters).
    pub buffered_bytes: [Gauge; 3],
    pub enrichment_keys: Gauge,
    pub enrichment_age: Gauge,
    pub enrichment_refreshes: Counter,
    pub enrichment_failures: Counter,
    pub enrichment_hits: Counter,
    pub enrichment_misses: Counter,
    /// Per assigned partition: (partition, gauges).
    pub partitions: Vec<(i32, PartitionGauges)>,
}

/// Per-partition gauges.
#[derive(Debug, Clone)]
pub struct PartitionGauges {
    pub next_offset: Gauge,
    pub high_watermark: Gauge,
    pub lag: Gauge,
    pub watermark: Gauge,
    /// Indexed like [`WATERMARK_SOURCES`].
    pub source: [Gauge; 4],
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

const OUTPUT_LABELS: [&str; 3] = ["window", "late", "dead_letter"];
const BUFFER_LABELS: [&str; 3] = ["windows", "late", "dead_letter"];

impl ConsumeMetrics {
    pub fn new(registry: &Registry, partitions: impl IntoIterator<Item = i32>) -> Self {
        registry
            .gauge(&BUILD_INFO, &["consume", env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let by_output = |def: &MetricDef| OUTPUT_LABELS.map(|o| registry.counter(def, &[o]));
        ConsumeMetrics {
            records_read: registry.counter(&C_RECORDS_READ, &[]),
            rows_written_window: registry.counter(&C_ROWS_WRITTEN, &["window"]),
            rows_written_late: registry.counter(&C_ROWS_WRITTEN, &["late"]),
            late_side_output: registry.counter(&C_LATE, &["side_output"]),
            late_dropped: registry.counter(&C_LATE, &["dropped"]),
            dead_letters: registry.counter(&C_DEAD_LETTERS, &[]),
            aborted_batches: registry.counter(&C_SKIPPED_BATCHES, &["aborted"]),
            control_batches: registry.counter(&C_SKIPPED_BATCHES, &["control"]),
            replay_skipped: registry.counter(&C_REPLAY_SKIPPED, &[]),
            miss_dropped: registry.counter(&C_MISS_DROPPED, &[]),
            bytes_written: by_output(&C_BYTES_WRITTEN),
            files_written: by_output(&C_FILES_WRITTEN),
            file_size: registry.histogram(&C_FILE_SIZE, &[]),
            checkpoint_duration: registry.histogram(&C_CHECKPOINT_DURATION, &[]),
            windows_closed: registry.counter(&C_WINDOWS_CLOSED, &[]),
            row_groups_staged: registry.counter(&C_ROW_GROUPS_STAGED, &[]),
            watermark: registry.gauge(&C_WATERMARK, &[]),
            open_windows: registry.gauge(&C_OPEN_WINDOWS, &[]),
            buffered_bytes: BUFFER_LABELS.map(|b| registry.gauge(&C_BUFFERED_BYTES, &[b])),
            enrichment_keys: registry.gauge(&C_ENRICH_KEYS, &[]),
            enrichment_age: registry.gauge(&C_ENRICH_AGE, &[]),
            enrichment_refreshes: registry.counter(&C_ENRICH_REFRESHES, &[]),
            enrichment_failures: registry.counter(&C_ENRICH_FAILURES, &[]),
            enrichment_hits: registry.counter(&C_ENRICH_HITS, &[]),
            enrichment_misses: registry.counter(&C_ENRICH_MISSES, &[]),
            partitions: partitions
                .into_iter()
                .map(|p| {
                    let label = p.to_string();
                    let gauges = PartitionGauges {
                        next_offset: registry.gauge(&C_NEXT_OFFSET, &[&label]),
                        high_watermark: registry.gauge(&C_HIGH_WATERMARK, &[&label]),
                        lag: registry.gauge(&C_LAG, &[&label]),
                        watermark: registry.gauge(&C_PARTITION_WATERMARK, &[&label]),
                        source: WATERMARK_SOURCES
                            .map(|s| registry.gauge(&C_WATERMARK_SOURCE, &[&label, s])),
                    };
                    (p, gauges)
                })
                .collect(),
        }
    }
}

/// Counters of `app produce`, copied from its atomics at scrape time.
#[derive(Debug, Clone)]
pub struct ProduceMetrics {
    pub rows_read: Counter,
    pub rows_sent: Counter,
    pub rows_rejected: Counter,
    pub rows_pending: Gauge,
    pub batches: Counter,
    pub retries: Counter,
    pub bytes_sent: Counter,
    pub input_bytes: Counter,
}

impl ProduceMetrics {
    pub fn new(registry: &Registry) -> Self {
        registry
            .gauge(&BUILD_INFO, &["produce", env!("CARGO_PKG_VERSION")])
            .set(1.0);
        ProduceMetrics {
            rows_read: registry.counter(&P_ROWS_READ, &[]),
            rows_sent: registry.counter(&P_ROWS_SENT, &[]),
            rows_rejected: registry.counter(&P_ROWS_REJECTED, &[]),
            rows_pending: registry.gauge(&P_ROWS_PENDING, &[]),
            batches: registry.counter(&P_BATCHES, &[]),
            retries: registry.counter(&P_RETRIES, &[]),
            bytes_sent: registry.counter(&P_BYTES_SENT, &[]),
            input_bytes: registry.counter(&P_INPUT_BYTES, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeProbe {
        healthy: bool,
        refreshed: AtomicU64,
        gauge: Gauge,
    }

    impl Probe for FakeProbe {
        fn refresh(&self) {
            let n = self.refreshed.fetch_add(1, Ordering::Relaxed) + 1;
            self.gauge.set(n as f64);
        }
        fn health(&self) -> Health {
            if self.healthy {
                Health::ok("all good")
            } else {
                Health::failing("partition 0: no successful fetch for 9s")
            }
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    fn req(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_health_and_404() {
        let registry = Registry::prometheus();
        let m = ConsumeMetrics::new(&registry, [0, 2]);
        m.records_read.increment(83);
        m.rows_written_window.increment(80);
        m.files_written[Output::Window as usize].increment(1);
        m.bytes_written[Output::Window as usize].increment(4096);
        m.files_written[Output::DeadLetter as usize].increment(1);
        m.bytes_written[Output::DeadLetter as usize].increment(1000);
        m.partitions[1].1.lag.set(7.0);
        m.file_size.record(4096.0);
        m.file_size.record(1000.0);
        m.checkpoint_duration.record(0.02);
        let endpoint = Endpoint::bind("127.0.0.1:0", registry.clone())
            .await
            .unwrap();
        let addr = endpoint.local_addr();

        // Before a probe is set: starting.
        let (head, body) = get(addr, &req("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(body.contains("starting"), "{body}");

        let probe = Arc::new(FakeProbe {
            healthy: true,
            refreshed: AtomicU64::new(0),
            gauge: registry.gauge(&C_ENRICH_KEYS, &[]),
        });
        endpoint.set_probe(probe.clone());
        let (head, body) = get(addr, &req("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(body.starts_with("ok\nall good"), "{body}");

        let (head, body) = get(addr, &req("/metrics?x=1")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(
            body.contains("# TYPE reclamacoes_consume_records_read_total counter"),
            "{body}"
        );
        assert!(body.contains("# HELP reclamacoes_consume_records_read_total Kafka records"));
        assert!(
            body.contains("reclamacoes_consume_records_read_total 83\n"),
            "{body}"
        );
        assert!(body.contains("reclamacoes_consume_rows_written_total{output=\"window\"} 80\n"));
        assert!(
            body.contains("reclamacoes_consume_files_written_total{output=\"dead_letter\"} 1\n")
        );
        assert!(body.contains("reclamacoes_consume_partition_lag_records{partition=\"2\"} 7\n"));
        assert!(
            body.contains("reclamacoes_consume_file_size_bytes_count 2\n"),
            "{body}"
        );
        assert!(body.contains("reclamacoes_consume_file_size_bytes_bucket{le=\"65536\"} 2\n"));
        assert!(body.contains("# TYPE reclamacoes_consume_checkpoint_duration_seconds histogram"));
        assert!(
            body.contains("reclamacoes_consume_enrichment_keys 1\n"),
            "refresh ran: {body}"
        );
        assert!(body.contains("reclamacoes_healthy 1\n"), "{body}");
        assert!(body.contains("reclamacoes_build_info{command=\"consume\",version="));

        let (head, body) = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.is_empty());
        let (head, _) = get(addr, &req("/nope")).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");

        endpoint.set_probe(Arc::new(FakeProbe {
            healthy: false,
            refreshed: AtomicU64::new(0),
            gauge: Gauge::noop(),
        }));
        let (head, body) = get(addr, &req("/healthz")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(body.starts_with("unhealthy\npartition 0"), "{body}");
        let (_, body) = get(addr, &req("/metrics")).await;
        assert!(body.contains("reclamacoes_healthy 0\n"), "{body}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = Endpoint::bind(&addr, Registry::prometheus())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("--metrics-addr {addr}")), "{err}");
        let err = Endpoint::bind("not-an-address", Registry::prometheus())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--metrics-addr not-an-address"), "{err}");
    }

    #[test]
    fn disabled_registry_hands_out_noops() {
        let registry = Registry::disabled();
        let m = ConsumeMetrics::new(&registry, [0]);
        m.records_read.increment(1);
        m.files_written[Output::Late as usize].increment(1);
        assert_eq!(registry.render(), "");
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
        }
    }
}
