//! # reclamações: CSV -> Kafka -> event-time windows + MySQL enrichment -> Parquet
//!
//! ## Layout
//! - [`schema`]: the typed record shape shared by both commands (CSV cells, JSON, Arrow types).
//! - [`csv_source`]: input files, encoding/delimiter detection, rows or rejects.
//! - [`encode`]: the producer's hot path: CSV chunk -> keyed JSON records per partition lane.
//! - [`kafka`]: rskafka with bounds: connect, topics, murmur2 partitioner, produce, fetch.
//! - [`produce`]: `app produce`: reader thread -> per-partition batches -> acked sends.
//! - [`enrich`]: the MySQL reference table cache (load, background refresh, Arrow columns).
//! - [`window`]: event-time window arithmetic and the window settings.
//! - [`consume`]: `app consume`: fetch -> decode -> the pure per-partition core -> sink, and the
//!   coordinator (see its module docs for its own layout).
//! - [`checkpoint`]: per-partition checkpoints (marks, generations, recovery at startup).
//! - [`output`]: the output's names ([`output::layout`]), Parquet format, the [`output::Store`]
//!   seam (local disk) and the per-partition sink.
//! - [`inspect`]: `app inspect`: a read-only report of an output.
//! - [`group`]: consumer-group membership (classic protocol over `kafka-protocol`): which
//!   instance reads which partitions, heartbeats, rebalances, display-only offset commits.
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/healthz` (`--metrics-addr`).
//! - [`shutdown`]: the stop signal every command and task takes.
//! - [`retry`]: the one retry policy (exponential backoff with jitter, deadline, stop signal) and
//!   the per-caller classifiers' verdict; its module docs list every caller and its classifier.
//! - [`allocator`]: glibc `malloc` settings per command (produce reuses, consume returns).
//! - [`cli`]: clap definitions, logging, flags -> each stage's config; `main.rs` calls
//!   [`cli::main`].
// The lints this crate holds to (`make lint` runs clippy with `-D warnings`; clippy.toml lets
// tests unwrap). `unsafe` only where a module allows it and says why (allocator, csv_source).
#![deny(unsafe_code)]
#![deny(unused_must_use, rust_2018_idioms)]
// Library code returns errors that say what failed and what to do; it does not panic on them.
#![deny(clippy::unwrap_used)]
// Nothing half-done or left from debugging lands.
#![deny(clippy::dbg_macro, clippy::todo, clippy::unimplemented)]

pub mod allocator;
pub mod checkpoint;
pub mod cli;
pub mod consume;
pub mod csv_source;
pub mod encode;
pub mod enrich;
pub mod group;
pub mod inspect;
pub mod kafka;
pub mod metrics;
pub mod output;
pub mod produce;
pub mod retry;
pub mod schema;
pub mod shutdown;
pub mod window;
