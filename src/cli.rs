//! The command line: clap definitions, logging setup, signals, and the mapping from flags to each
//! stage's config. `main.rs` only calls [`main`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::consume::{
    self, ConsumeConfig, CorruptBatchPolicy, DataLossPolicy, IdleAdvance, LatePolicy, StartAt,
};
use crate::csv_source::{Encoding, SourceConfig};
use crate::kafka::{Compression, KafkaConfig};
use crate::produce::{self, ProduceConfig};
use crate::schema::Schema;

/// Default broker list; also `KAFKA_BROKERS`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default MySQL URL (local development credentials); also `MYSQL_URL`.
pub use crate::enrich::DEFAULT_MYSQL_URL;

#[derive(Debug, Parser)]
#[command(
    name = "app",
    version,
    about = "Complaints (reclamações) CSV -> Kafka -> event-time windows + MySQL enrichment -> Parquet",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format. `RUST_LOG` sets the level (default `info`).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read CSV files of complaints and publish every row to Kafka as typed JSON.
    Produce(ProduceArgs),
    /// Read the topic continuously into event-time windows, enrich from MySQL, write Parquet
    /// exactly once, until stopped (or caught up).
    Consume(ConsumeArgs),
    /// Report what an output directory holds: windows (closed/open), files and rows per window,
    /// schema, sample rows, late rows, dead letters, checkpoint offsets, and the Delta table
    /// (versions, app versions per partition, files not in the table).
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What `app consume` wrote (its --output): a directory, or s3://bucket/prefix (gs://, az://).
    #[arg(default_value = "./output")]
    pub output: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Print one JSON object (the same numbers) instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Sample rows to show (0: none).
    #[arg(long, default_value_t = crate::inspect::DEFAULT_SAMPLE_ROWS, value_name = "N")]
    pub sample: usize,
    /// Delta table: list its newest N versions (`all`: every one). Each costs a read of its
    /// commit file; the totals and checks cover the whole table either way.
    #[arg(long, default_value_t = crate::inspect::VersionLimit::default(), value_name = "N|all")]
    pub versions: crate::inspect::VersionLimit,
}

/// Object storage options shared by `consume` and `inspect`. Credentials only from the
/// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), never a flag.
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// S3 endpoint for an S3-compatible server, e.g. http://127.0.0.1:7070 (default: AWS).
    /// Credentials are read only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
    /// AWS_SESSION_TOKEN); an http:// endpoint (or AWS_ALLOW_HTTP=true) allows plain HTTP.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
}

impl S3Args {
    pub fn options(&self) -> crate::output::ObjectOptions {
        crate::output::ObjectOptions {
            endpoint: self.s3_endpoint.clone().filter(|e| !e.trim().is_empty()),
            region: self.s3_region.clone().filter(|r| !r.trim().is_empty()),
            ..Default::default()
        }
    }
}

/// How long `app inspect` retries an object store that does not answer.
const INSPECT_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// Options shared by every command that talks to Kafka.
#[derive(Debug, Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub brokers: String,
    /// Topic to use.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "reclamacoes")]
    pub topic: String,
    /// Bound on every broker call (connect, metadata, produce, fetch), e.g. `10s`, `500ms`.
    #[arg(long, env = "KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Connect to the brokers with TLS (rustls; trusts the Mozilla roots unless --kafka-ca-file).
    #[arg(long, env = "KAFKA_TLS")]
    pub kafka_tls: bool,
    /// PEM file of the CA that signed the brokers' certificates (implies --kafka-tls).
    #[arg(long, env = "KAFKA_CA_FILE", value_name = "PEM")]
    pub kafka_ca_file: Option<PathBuf>,
    /// Authenticate with SASL. The password is read only from the environment variable
    /// KAFKA_SASL_PASSWORD (never a flag: command lines are visible to other users). Without
    /// --kafka-tls, PLAIN sends the password in clear text.
    /// One of plain, scram-sha-256, scram-sha-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", requires = "kafka_sasl_username")]
    pub kafka_sasl_mechanism: Option<crate::kafka::SaslMechanism>,
    /// SASL user name (with --kafka-sasl-mechanism).
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
}

impl KafkaArgs {
    pub fn config(&self) -> KafkaConfig {
        let tls =
            (self.kafka_tls || self.kafka_ca_file.is_some()).then(|| crate::kafka::TlsOptions {
                ca_file: self.kafka_ca_file.clone(),
            });
        let sasl = self
            .kafka_sasl_mechanism
            .map(|mechanism| crate::kafka::SaslOptions {
                mechanism,
                username: self.kafka_sasl_username.clone().unwrap_or_default(),
                password: std::env::var("KAFKA_SASL_PASSWORD").unwrap_or_default(),
            });
        KafkaConfig {
            brokers: self.brokers.clone(),
            timeout: self.timeout,
            security: crate::kafka::KafkaSecurity { tls, sasl },
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// CSV files, directories (every *.csv inside, in name order) or glob patterns.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Partitions of the topic when it has to be created (an existing topic is used as it is).
    #[arg(long, env = "PRODUCE_PARTITIONS", default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor when the topic has to be created.
    #[arg(long, env = "PRODUCE_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i16,
    /// Batch compression: none, gzip, snappy, lz4, zstd. lz4 is the default: fastest to compress
    /// here at a good ratio for JSON.
    #[arg(long, env = "PRODUCE_COMPRESSION", default_value = "lz4")]
    pub compression: Compression,
    /// How long a partly filled batch waits for more rows before it is sent.
    #[arg(long, env = "PRODUCE_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Uncompressed bytes per batch (per partition); must stay under the broker's message.max.bytes (1 MiB by default).
    #[arg(long, env = "PRODUCE_BATCH_BYTES", default_value_t = 768 * 1024)]
    pub batch_bytes: usize,
    /// Pace the stream like a live source, in rows per second (default: as fast as possible).
    #[arg(long, env = "PRODUCE_RATE")]
    pub rate: Option<f64>,
    /// Input encoding, utf8 or windows1252 (cp1252) (default: detected per file: UTF-8 with or
    /// without BOM, else Windows-1252).
    #[arg(long, env = "PRODUCE_ENCODING")]
    pub encoding: Option<Encoding>,
    /// Field delimiter (default: detected from the header among ; , tab |). Use `tab` for a tab.
    #[arg(long, env = "PRODUCE_DELIMITER", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// TOML schema for CSV files that are not the Banco Central format (see docs/produce.md).
    #[arg(long, env = "PRODUCE_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// Directory for the rejects file (JSON lines: file, line, reason, raw).
    #[arg(long, env = "PRODUCE_REJECTS", default_value = "./rejects")]
    pub rejects: PathBuf,
    /// Fail the run (non-zero exit) on the first rejected row.
    #[arg(long, env = "PRODUCE_STRICT")]
    pub strict: bool,
    /// Resume a failed run: skip every file before FILE and every row of FILE before LINE
    /// (the summary of a failed run prints the exact value).
    #[arg(long, env = "PRODUCE_RESUME_FROM", value_parser = parse_resume, value_name = "FILE:LINE")]
    pub resume_from: Option<(PathBuf, u64)>,
    /// How long a failing batch is retried (with backoff) before the run stops with a resumable error.
    #[arg(long, env = "PRODUCE_RETRY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub retry_timeout: Duration,
    /// Serve Prometheus metrics (/metrics) and health (/healthz) on HOST:PORT, e.g. 127.0.0.1:9464.
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where the output goes: a directory, or object storage s3://bucket/prefix (also gs://,
    /// az://). It holds the table (window=... folders), _late, _dead_letter, _staging and
    /// _checkpoint.
    #[arg(long, env = "CONSUME_OUTPUT", default_value = "./output")]
    pub output: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Object storage: bound on one request (connecting: at most 5 s of it).
    #[arg(long, env = "CONSUME_OUTPUT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub output_timeout: Duration,
    /// Object storage: how long a write, read or commit retries through an outage (no
    /// connection, timeouts, 5xx) before the run stops; /healthz reports the outage meanwhile.
    #[arg(long, env = "CONSUME_OUTPUT_RETRY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub output_retry_timeout: Duration,
    /// MySQL/MariaDB URL of the enrichment table (local development credentials by default).
    #[arg(long, env = "MYSQL_URL", default_value = DEFAULT_MYSQL_URL, hide_default_value = true, hide_env_values = true)]
    pub mysql_url: String,
    /// Partitions to read: `all`, or a list such as `0,2,5` (static assignment, so N instances
    /// can split a topic).
    #[arg(long, env = "CONSUME_PARTITIONS", default_value = "all", value_parser = parse_partitions, conflicts_with = "group")]
    pub partitions: PartitionList,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Where to start a partition that has no checkpoint.
    #[arg(long, env = "CONSUME_START", value_enum, default_value_t = StartArg::Earliest)]
    pub start: StartArg,
    /// Stop once every assigned partition is read to its end and everything is written.
    #[arg(long, env = "CONSUME_UNTIL_CAUGHT_UP", conflicts_with = "group")]
    pub until_caught_up: bool,
    /// With --until-caught-up: the end of the topic is the end of the stream. Every window
    /// closes and gets _SUCCESS; records that arrive later are late. For bounded runs only.
    #[arg(long, env = "CONSUME_CLOSE_WINDOWS", requires = "until_caught_up")]
    pub close_windows: bool,
    /// TOML schema of the records (default: the built-in Banco Central schema).
    #[arg(long, env = "CONSUME_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// Take event time from this record field (timestamp or date) instead of the Kafka timestamp.
    #[arg(long, env = "CONSUME_EVENT_TIME_FIELD")]
    pub event_time_field: Option<String>,
    /// Tumbling window width (epoch-aligned), e.g. `1m`, `30s`, `1h`.
    #[arg(long, env = "CONSUME_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// A partition's watermark = its highest event time minus this.
    #[arg(long, env = "CONSUME_ALLOWED_LATENESS", default_value = "10s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// A partition without records for this long is idle: it follows the other partitions and,
    /// with --idle-advance, the wall clock.
    #[arg(long, env = "CONSUME_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Idle partitions' watermark advances with the wall clock (now - allowed lateness), so the
    /// last window of a quiet stream closes on time. `auto`: on for the Kafka timestamp, off for
    /// --event-time-field (a field's times need not track the clock).
    #[arg(long, env = "CONSUME_IDLE_ADVANCE", value_enum, default_value_t = IdleAdvanceArg::Auto)]
    pub idle_advance: IdleAdvanceArg,
    /// Event times further ahead of the wall clock than this go to _dead_letter (they would
    /// move the watermark and make every later record late); `off` to accept any.
    #[arg(long, env = "CONSUME_MAX_FUTURE", default_value = "5m", value_parser = parse_optional_duration)]
    pub max_future: OptionalDuration,
    /// Records whose window already closed: write them to output/_late, or drop (counted).
    #[arg(long, env = "CONSUME_LATE", value_enum, default_value_t = LateArg::SideOutput)]
    pub late: LateArg,
    /// Enrichment query: the first column is the key, every other column becomes an output column.
    #[arg(long, env = "CONSUME_ENRICH_QUERY", default_value = crate::enrich::DEFAULT_QUERY)]
    pub enrich_query: String,
    /// Prefix of the enrichment output columns.
    #[arg(long, env = "CONSUME_ENRICH_PREFIX", default_value = crate::enrich::DEFAULT_COLUMN_PREFIX)]
    pub enrich_prefix: String,
    /// Record field joined with the enrichment key.
    #[arg(long, env = "CONSUME_JOIN_FIELD", default_value = "cnpj_if")]
    pub join_field: String,
    /// How often the enrichment table is reloaded in the background.
    #[arg(long, env = "CONSUME_REFRESH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub refresh_interval: Duration,
    /// How long the first enrichment load may retry before the consumer exits.
    #[arg(long, env = "CONSUME_MYSQL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub mysql_timeout: Duration,
    /// A record whose key is not in the enrichment table: keep with nulls, drop, or dead-letter.
    #[arg(long, env = "CONSUME_ON_MISS", default_value = "null")]
    pub on_miss: crate::enrich::OnMiss,
    /// How much of the dimension is held: `full` (the whole table, reloaded every
    /// --refresh-interval) or `partial` (a bounded cache of the keys seen, asked for per batch;
    /// for dimensions too large to hold).
    #[arg(long, env = "CONSUME_ENRICH_CACHE", value_enum, default_value_t = EnrichCacheArg::Full)]
    pub enrich_cache: EnrichCacheArg,
    /// Partial cache: memory bound of its entries, in bytes (rows and absent keys).
    #[arg(long, env = "CONSUME_ENRICH_CACHE_BYTES", default_value_t = DEFAULT_ENRICH_CACHE_BYTES)]
    pub enrich_cache_bytes: usize,
    /// Partial cache: an entry (row or absent key) is asked for again this long after it was
    /// written (expire after write); `off` to keep entries until evicted.
    #[arg(long, env = "CONSUME_ENRICH_CACHE_TTL", default_value = "5m", value_parser = parse_optional_duration)]
    pub enrich_cache_ttl: OptionalDuration,
    /// Follow the dimension's changes in the server's binary log (row-based; the user needs
    /// REPLICATION SLAVE and REPLICATION CLIENT): a partial cache forgets changed keys, a full
    /// cache reloads, within a moment of the commit. Without a usable log: one warning, then
    /// periodic reload as without this flag.
    #[arg(long, env = "CONSUME_ENRICH_CDC")]
    pub enrich_cdc: bool,
    /// With --enrich-cdc: the dimension table (`db.table`), when the query's FROM does not name
    /// it plainly.
    #[arg(long, env = "CONSUME_ENRICH_CDC_TABLE", requires = "enrich_cdc")]
    pub enrich_cdc_table: Option<String>,
    /// Partial cache: how long records whose key is not cached wait for an unreachable
    /// database before they follow --on-miss as `dimension unreachable`.
    #[arg(long, env = "CONSUME_ENRICH_MISS_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub enrich_miss_timeout: Duration,
    /// Parquet compression: none, snappy, gzip, lz4, zstd.
    #[arg(long, env = "CONSUME_COMPRESSION", default_value = "zstd")]
    pub compression: crate::output::Compression,
    /// A closed window's rows of one partition go to one file, or several of about this size.
    #[arg(long, env = "CONSUME_MAX_FILE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Memory bound of the open Parquet row groups (all partitions together); past it, the
    /// largest open window's row group is staged, so row groups get smaller, files do not.
    #[arg(long, env = "CONSUME_MAX_BUFFER_BYTES", default_value_t = DEFAULT_MAX_BUFFER_BYTES)]
    pub max_buffer_bytes: usize,
    /// What readers open: a Delta Lake table (every closed window lands through a Delta commit,
    /// exactly once; `_delta_log/` beside the window directories), or `none`: the Parquet files
    /// only, visible as they land.
    #[arg(long, env = "CONSUME_TABLE", value_enum, default_value_t = TableArg::Delta)]
    pub table: TableArg,
    /// Delta table: write a checkpoint of the log every this many commits (0: never), so
    /// opening the table reads one checkpoint and fewer commits.
    #[arg(long, env = "CONSUME_DELTA_CHECKPOINT_EVERY", default_value_t = 100)]
    pub delta_checkpoint_every: u64,
    /// Delta table: after each checkpoint, delete log files older than this (time travel
    /// reaches back this far). Default: the table's delta.logRetentionDuration, else 30 days.
    #[arg(long, env = "CONSUME_DELTA_LOG_RETENTION", value_parser = humantime::parse_duration)]
    pub delta_log_retention: Option<Duration>,
    /// Commit a checkpoint (and write late rows and dead letters) at least this often.
    #[arg(long, env = "CONSUME_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// On SIGINT/SIGTERM, how long writing and committing may take before exiting anyway.
    #[arg(long, env = "CONSUME_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The checkpoint's offset was deleted by retention: fail (default), or continue from earliest.
    #[arg(long, env = "CONSUME_ON_DATA_LOSS", value_enum, default_value_t = DataLossArg::Fail)]
    pub on_data_loss: DataLossArg,
    /// A record batch that cannot be read (CRC mismatch, corrupt compression, unknown format):
    /// stop with its partition, offset and reason (default), or write its raw bytes to
    /// _dead_letter/ as one refused record and go on after it.
    #[arg(long, env = "CONSUME_ON_CORRUPT_BATCH", value_enum, default_value_t = CorruptBatchArg::Fail)]
    pub on_corrupt_batch: CorruptBatchArg,
    /// Bytes per fetch request and partition (compressed; about 5x that once decompressed).
    #[arg(long, env = "CONSUME_FETCH_MAX_BYTES", default_value_t = DEFAULT_FETCH_MAX_BYTES)]
    pub fetch_max_bytes: i32,
    /// How long the broker may wait for new records before answering a fetch.
    #[arg(long, env = "CONSUME_FETCH_MAX_WAIT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub fetch_max_wait: Duration,
    /// How often a progress line is logged (when stderr is not a terminal; a terminal gets a
    /// live status line).
    #[arg(long, env = "CONSUME_STATUS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
    /// Serve Prometheus metrics (/metrics) and health (/healthz) on HOST:PORT, e.g. 127.0.0.1:9464.
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Default `--max-buffer-bytes`: with the fetch buffers, the consumer stays under 128 MB peak
/// RSS with 1 to 3 partitions (measured by `make bench`; 48 MiB peaked at 146 MB with 3).
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 24 * 1024 * 1024;
/// Default `--fetch-max-bytes`.
pub const DEFAULT_FETCH_MAX_BYTES: i32 = 512 * 1024;

/// Default `--enrich-cache-bytes`: 16 MiB.
pub const DEFAULT_ENRICH_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// `--enrich-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnrichCacheArg {
    /// The whole table in memory, reloaded every --refresh-interval.
    Full,
    /// A bounded cache of the keys seen.
    Partial,
}

/// `--table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableArg {
    /// A Delta Lake table in the output directory.
    Delta,
    /// Parquet files only.
    None,
}

/// `--start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartArg {
    Earliest,
    Latest,
}

/// `--late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LateArg {
    /// Write it to `output/_late/`.
    SideOutput,
    /// Count it and drop it.
    Drop,
}

/// `--on-data-loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataLossArg {
    Fail,
    Earliest,
}

/// `--on-corrupt-batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CorruptBatchArg {
    Fail,
    Skip,
}

/// `--idle-advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdleAdvanceArg {
    Auto,
    On,
    Off,
}

/// A duration, or `off`.
pub type OptionalDuration = Option<Duration>;

fn parse_optional_duration(s: &str) -> Result<OptionalDuration, String> {
    if matches!(s.trim().to_ascii_lowercase().as_str(), "off" | "none" | "0") {
        return Ok(None);
    }
    humantime::parse_duration(s)
        .map(Some)
        .map_err(|e| format!("`{s}`: {e}; give a duration such as 5m, or `off`"))
}

/// Consumer-group options: `--group NAME` makes every instance started with the same NAME share
/// the topic, its partitions assigned by Kafka's group coordinator ([`crate::group`]).
#[derive(Debug, Args, Clone)]
pub struct GroupArgs {
    /// Join the consumer group NAME: the instances of one group split the topic's partitions
    /// between them (Kafka's range assignment) and take over each other's partitions when one
    /// stops. Shown by `kafka-consumer-groups --describe --group NAME`.
    #[arg(long, env = "CONSUME_GROUP", value_name = "NAME")]
    pub group: Option<String>,
    /// How long an instance that stopped answering keeps its partitions (the broker accepts 6s
    /// to 30min by default). Lower means faster takeover after a crash, but a rebalance whenever
    /// an instance stalls that long; a clean stop hands its partitions over at once.
    #[arg(long, env = "CONSUME_SESSION_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// How often an instance tells the group coordinator it is alive (at most a third of
    /// --session-timeout).
    #[arg(long, env = "CONSUME_HEARTBEAT_INTERVAL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long an instance has to finish with its partitions in a rebalance (write and commit)
    /// before the group goes on without it.
    #[arg(long, env = "CONSUME_REBALANCE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub rebalance_timeout: Duration,
}

impl GroupArgs {
    /// The group settings, or `None` without `--group` (static `--partitions`).
    pub fn config(&self, kafka: &KafkaArgs) -> Option<crate::group::GroupConfig> {
        let group = self.group.as_ref()?;
        let mut config = crate::group::GroupConfig::new(kafka.config(), group, &kafka.topic);
        config.session_timeout = self.session_timeout;
        config.heartbeat_interval = self.heartbeat_interval;
        config.rebalance_timeout = self.rebalance_timeout;
        Some(config)
    }
}

/// `--partitions`: `None` = all.
pub type PartitionList = Option<Vec<i32>>;

fn parse_partitions(s: &str) -> Result<PartitionList, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut list: Vec<i32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .map_err(|_| format!("`{s}`: expected `all` or a list like 0,2,5"))
        })
        .collect::<Result<_, _>>()?;
    list.sort_unstable();
    list.dedup();
    Ok(Some(list))
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!("`{s}`: give one ASCII character, or `tab`")),
    }
}

fn parse_resume(s: &str) -> Result<(PathBuf, u64), String> {
    let (file, line) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: expected FILE:LINE"))?;
    let line = line
        .parse::<u64>()
        .map_err(|_| format!("`{s}`: LINE must be a number"))?;
    Ok((PathBuf::from(file), line))
}

/// The log filter without `RUST_LOG`: our own info lines; the Kafka client's and the Delta
/// kernel's only from warnings up (the kernel logs every commit and snapshot at info).
pub const DEFAULT_LOG_FILTER: &str =
    "info,rskafka=warn,delta_kernel=warn,delta_kernel_default_engine=warn";

/// Sets up `tracing` (stderr; text or JSON; `RUST_LOG` respected, else [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Entry point of the `app` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::allocator::tune(match cli.command {
        Command::Produce(_) => crate::allocator::Workload::Produce,
        Command::Consume(_) => crate::allocator::Workload::Consume,
        Command::Inspect(_) => crate::allocator::Workload::Inspect,
    });
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A storage call still retrying on the blocking pool (the run gave up on it) must not hold
    // the exit: everything committed is durable already.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Produce(args) => run_produce(args).await,
        Command::Consume(args) => run_consume(args).await,
        Command::Inspect(args) => tokio::task::spawn_blocking(move || run_inspect(args))
            .await
            .context("inspect: the reading task failed")?,
    }
}

fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let object = crate::output::ObjectOptions {
        retry_timeout: INSPECT_RETRY_TIMEOUT,
        ..args.s3.options()
    };
    let output = crate::output::Location::parse(&args.output, &object)
        .map_err(|e| anyhow::anyhow!("inspect: {e}"))?;
    let options = crate::inspect::InspectOptions {
        output,
        sample: args.sample,
        versions: args.versions,
    };
    let report = crate::inspect::inspect(&options).context("inspect failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let schema = match &args.schema {
        Some(path) => Schema::from_toml_file(path)?,
        None => Schema::banco_central(),
    };
    let config = ProduceConfig {
        inputs: args.paths,
        topic: args.kafka.topic.clone(),
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        compression: args.compression,
        linger: args.linger,
        batch_bytes: args.batch_bytes,
        rate: args.rate,
        rejects_dir: args.rejects,
        strict: args.strict,
        resume_from: args.resume_from,
        retry_timeout: args.retry_timeout,
        source: SourceConfig {
            schema: Arc::new(schema),
            encoding: args.encoding,
            delimiter: args.delimiter,
        },
        kafka: args.kafka.config(),
        progress_bar: std::io::stderr().is_terminal(),
        metrics_addr: args.metrics_addr,
    };
    let summary = produce::run(config, crate::shutdown::on_signals())
        .await
        .context("produce failed")?;
    print!("{}", summary.render());
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if summary.failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn run_consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown::on_signals();
    let schema = match &args.schema {
        Some(path) => Schema::from_toml_file(path)?,
        None => Schema::banco_central(),
    };
    let object = crate::output::ObjectOptions {
        request_timeout: args.output_timeout,
        retry_timeout: args.output_retry_timeout,
        ..args.s3.options()
    };
    let location = crate::output::Location::parse(&args.output, &object)
        .map_err(|e| anyhow::anyhow!("--output {e}"))?;
    let config = ConsumeConfig {
        source: consume::SourceConfig {
            kafka: args.kafka.config(),
            topic: args.kafka.topic.clone(),
            partitions: args.partitions,
            start: match args.start {
                StartArg::Earliest => StartAt::Earliest,
                StartArg::Latest => StartAt::Latest,
            },
            until_caught_up: args.until_caught_up,
            on_data_loss: match args.on_data_loss {
                DataLossArg::Fail => DataLossPolicy::Fail,
                DataLossArg::Earliest => DataLossPolicy::Earliest,
            },
            on_corrupt_batch: match args.on_corrupt_batch {
                CorruptBatchArg::Fail => CorruptBatchPolicy::Fail,
                CorruptBatchArg::Skip => CorruptBatchPolicy::Skip,
            },
            fetch_max_bytes: args.fetch_max_bytes,
            fetch_max_wait: args.fetch_max_wait,
            group: args.group.config(&args.kafka),
        },
        records: consume::RecordsConfig {
            schema: Arc::new(schema),
            event_time_field: args.event_time_field,
            join_field: args.join_field,
            on_miss: args.on_miss,
            max_future: args.max_future,
        },
        windows: consume::WindowsConfig {
            window: crate::window::WindowConfig {
                window_ms: millis(args.window),
                allowed_lateness_ms: millis(args.allowed_lateness),
                idle_timeout: args.idle_timeout,
            },
            late: match args.late {
                LateArg::SideOutput => LatePolicy::SideOutput,
                LateArg::Drop => LatePolicy::Drop,
            },
            idle_advance: match args.idle_advance {
                IdleAdvanceArg::Auto => IdleAdvance::Auto,
                IdleAdvanceArg::On => IdleAdvance::On,
                IdleAdvanceArg::Off => IdleAdvance::Off,
            },
            close_at_end: args.close_windows,
        },
        enrich: crate::enrich::EnrichConfig {
            mysql_url: args.mysql_url,
            query: args.enrich_query,
            column_prefix: args.enrich_prefix,
            refresh_interval: args.refresh_interval,
            first_load_timeout: args.mysql_timeout,
            query_timeout: Duration::from_secs(10).min(args.mysql_timeout),
            cache: match args.enrich_cache {
                EnrichCacheArg::Full => crate::enrich::CacheMode::Full,
                EnrichCacheArg::Partial => {
                    crate::enrich::CacheMode::Partial(crate::enrich::PartialConfig {
                        max_bytes: args.enrich_cache_bytes,
                        ttl: args.enrich_cache_ttl,
                        miss_timeout: args.enrich_miss_timeout,
                        ..crate::enrich::PartialConfig::default()
                    })
                }
            },
            cdc: args.enrich_cdc.then_some(crate::enrich::CdcConfig {
                table: args.enrich_cdc_table,
            }),
        },
        sink: consume::SinkConfig {
            location,
            output: crate::output::OutputConfig {
                format: crate::output::FormatConfig {
                    compression: args.compression,
                },
                max_file_bytes: args.max_file_bytes,
            },
            max_buffer_bytes: args.max_buffer_bytes,
            checkpoint_interval: args.checkpoint_interval,
            table: match args.table {
                TableArg::None => consume::TableConfig::None,
                TableArg::Delta => consume::TableConfig::Delta(crate::output::delta::DeltaConfig {
                    checkpoint_every: args.delta_checkpoint_every,
                    retry_timeout: args.output_retry_timeout,
                    log_retention: args.delta_log_retention,
                }),
            },
        },
        run: consume::RunConfig {
            drain_timeout: args.drain_timeout,
            status_interval: args.status_interval,
            progress_bar: std::io::stderr().is_terminal(),
            metrics_addr: args.metrics_addr,
        },
    };
    let summary = consume::run(config, shutdown)
        .await
        .context("consume failed")?;
    print!("{}", summary.render());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct GroupOnly {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        group: GroupArgs,
    }

    #[test]
    fn group_flag_defaults_are_the_library_defaults() {
        let parsed = GroupOnly::try_parse_from(["app", "--group", "g", "--topic", "t"]).unwrap();
        let config = parsed.group.config(&parsed.kafka).expect("--group given");
        assert_eq!(config.group_id, "g");
        assert_eq!(config.topic, "t");
        assert_eq!(
            config.session_timeout,
            crate::group::DEFAULT_SESSION_TIMEOUT
        );
        assert_eq!(
            config.heartbeat_interval,
            crate::group::DEFAULT_HEARTBEAT_INTERVAL
        );
        assert_eq!(
            config.rebalance_timeout,
            crate::group::DEFAULT_REBALANCE_TIMEOUT
        );
        config.validate().unwrap();

        let parsed = GroupOnly::try_parse_from([
            "app",
            "--session-timeout",
            "10s",
            "--heartbeat-interval",
            "1s",
        ])
        .unwrap();
        assert!(parsed.group.config(&parsed.kafka).is_none(), "no --group");
        assert_eq!(parsed.group.session_timeout, Duration::from_secs(10));
    }
}
