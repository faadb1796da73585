//! What `app consume` is told, one config struct per stage (`cli` builds them from flags), and
//! the policies those stages share.

use std::sync::Arc;
use std::time::Duration;

use super::core::LatePolicy;
use super::fetched::CorruptBatchPolicy;
use crate::enrich::{EnrichConfig, OnMiss};
use crate::group::GroupConfig;
use crate::kafka::{KafkaConfig, KafkaError};
use crate::output::{Location, OutputConfig};
use crate::schema::Schema;
use crate::window::WindowConfig;

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
    pub table: TableConfig,
}

/// The table closed windows are published to (`output::table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableConfig {
    /// Parquet files only: a file is visible as soon as it lands.
    None,
    /// A Delta Lake table at the output.
    Delta(crate::output::delta::DeltaConfig),
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

impl DataLossPolicy {
    /// Where to read `partition` when `requested` is below the earliest offset retention kept
    /// (a checkpoint's resume offset at startup, or a fetch's offset later): the one place the
    /// `--on-data-loss` policy is applied and logged.
    pub fn resume_at(
        self,
        topic: &str,
        partition: i32,
        requested: i64,
        earliest: i64,
        latest: i64,
    ) -> Result<i64, KafkaError> {
        if requested >= earliest {
            return Ok(requested);
        }
        match self {
            DataLossPolicy::Fail => Err(KafkaError::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                requested,
                earliest,
                latest,
            }),
            DataLossPolicy::Earliest => {
                tracing::error!(
                    partition,
                    requested,
                    earliest,
                    lost = earliest - requested,
                    "Data deleted by retention; continuing from earliest (--on-data-loss earliest)"
                );
                Ok(earliest)
            }
        }
    }
}
