//! # reclamações: CSV -> Kafka -> event-time windows + MySQL enrichment -> Parquet
//!
//! ## Layout
//! - [`schema`]: the typed record shape shared by both commands (CSV cell parsing, JSON, Arrow).
//! - [`row`]: the decoded, enriched record that flows to the sinks.
//! - [`window`]: event-time windows, watermarks, idle partitions, per-window row buffers.
//! - [`checkpoint`]: exactly-once marks, atomic checkpoint files, output recovery at startup.
//! - [`csv_source`]: input files, encoding/delimiter detection, chunks of records, rows or rejects.
//! - [`encode`]: the producer's hot path: CSV chunk -> keyed JSON records per partition lane.
//! - [`kafka`]: rskafka with bounds: connect, topics, murmur2 partitioner, produce, fetch.
//! - [`produce`]: `app produce`: reader thread -> per-partition batches -> acked sends.
//! - [`enrich`]: the MySQL reference table cache (load, background refresh, on-miss policy).
//! - [`parquet_sink`]: atomic Parquet output and dead-letter files, rolled by size.
//! - [`inspect`]: `app inspect`: a read-only report of an output directory.
//! - [`consume`]: `app consume`: fetchers -> decode/enrich/route -> windows -> Parquet + checkpoint.
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/healthz` (`--metrics-addr`).
//! - [`cli`]: clap definitions, logging, signals; `main.rs` calls [`cli::main`].
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod cli;
pub mod consume;
pub mod csv_source;
pub mod encode;
pub mod enrich;
pub mod inspect;
pub mod kafka;
pub mod metrics;
pub mod parquet_sink;
pub mod produce;
pub mod row;
pub mod schema;
pub mod window;
