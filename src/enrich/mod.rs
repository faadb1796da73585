//! The enrichment cache: a reference table (the dimension) from MySQL/MariaDB, joined by key
//! with every decoded record. Two modes (`--enrich-cache`):
//! - **full** (the default, Flink's `FULL` cache): the whole table in memory, reloaded every
//!   `--refresh-interval`; for dimensions that fit in memory comfortably;
//! - **partial** ([`partial`], Flink's `PARTIAL`): a cache of the keys seen, bounded in bytes
//!   (`--enrich-cache-bytes`), entries expiring `--enrich-cache-ttl` after they were written;
//!   each batch asks the database once for the distinct keys it misses (`WHERE key IN (…)`,
//!   chunked), and remembers absent keys too. For dimensions of any size.
//!
//! This module owns:
//! - [`EnrichConfig`]: where the table comes from (URL, query) and how often it is reloaded;
//! - [`ReferenceTable`]: one immutable load — output column names and types (from the MySQL
//!   column types), the rows as Arrow columns, and each key's row (the key is the first column
//!   of the query, as text);
//! - [`ReferenceSource`]: the boundary to the database, implemented by [`MySqlSource`] (and by
//!   fakes in tests): [`load`](ReferenceSource::load) the whole table, or
//!   [`lookup`](ReferenceSource::lookup) some keys;
//! - [`Lookup`]: what the decoder reads through, one key at a time (allocation-free on a hit)
//!   and then one enrichment column at a time: a [`ReferenceTable`] in full mode, a
//!   [`partial::PartialView`] in partial mode;
//! - [`EnrichmentCache`]: the current table behind an `Arc` that is swapped atomically by a
//!   background refresh task; the consumer takes a per-batch [`EnrichSnapshot`] and never waits
//!   for a refresh. A failed refresh keeps serving the previous table;
//! - the join, one lookup and one miss policy: [`join`] applies [`OnMiss`] to what a lookup
//!   [`Found`], answering a [`Join`] (the row, or null columns, drop, or dead letter with its
//!   reason: not found, no key, or the dimension unreachable). The consumer's decoder calls it
//!   per record and then takes each enrichment column for the whole batch at once
//!   ([`Lookup::column`]);
//! - [`redact_url`]: hides passwords in URLs before they reach logs or error messages.
//!
//! ```text
//!   MySQL ──load (timeout)──▶ ReferenceTable ──Arc swap──▶ EnrichmentCache
//!                                                             │ snapshot() per batch
//!        consumer's decoder ◀── join(find(key), OnMiss) per record, one column per enrichment column
//!
//!   partial: decoder ── distinct unknown keys ──▶ resolve: one IN query ──▶ Overlay ──▶ PartialCache
//! ```
//!
//! Retries ([`crate::retry`]): the first load retries with jittered backoff (200 ms doubling to
//! 5 s) until `--mysql-timeout`, unless [`first_load_verdict`] calls the error permanent (a
//! query MySQL refuses, a wrong password or database, a value that cannot be converted): that
//! fails at once. A failed refresh is retried (500 ms doubling, capped at the refresh interval)
//! until it succeeds; it is never fatal, since the previous table keeps being served.
//!
//! Partial mode ([`EnrichmentCache::resolve`]): a miss query is retried with the same backoff
//! for at most `--enrich-miss-timeout`, counted from when the dimension became unreachable, so
//! an outage stalls the stream (backpressure: the decoder waits, the fetcher stops at its
//! channel) for that long at most; then the records whose key is not held follow `--on-miss`
//! with the reason "dimension unreachable" (counted; `/healthz` says so while it lasts), and
//! each later batch tries once more before doing the same. What the cache holds keeps serving.
//!
//! Shutdown is a [`Shutdown`] handle: the refresh task (and a first load still retrying) stops
//! as soon as it fires (or its trigger is dropped).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::retry::{self, RetryError, RetryPolicy, Verdict};
use crate::shutdown::Shutdown;
use arrow::array::{ArrayRef, UInt32Array};
use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::schema::{FieldType, Value};

pub mod cdc;
pub mod partial;

use partial::{Limits, Overlay, PartialCache, PartialView};

/// The URL used when neither `--mysql-url` nor `MYSQL_URL` is given.
pub const DEFAULT_MYSQL_URL: &str = "mysql://reclamacoes:reclamacoes@127.0.0.1:3306/reclamacoes_db";
/// The default reference query: the first column is the join key.
pub const DEFAULT_QUERY: &str = "SELECT cnpj, segmento, nome FROM bancos";
/// The default prefix of the enrichment output columns (`segmento` -> `banco_segmento`).
pub const DEFAULT_COLUMN_PREFIX: &str = "banco_";

/// How the first load is retried: 200 ms doubling to 5 s, with jitter; the deadline is
/// `--mysql-timeout` ([`EnrichConfig::first_load_timeout`]).
const FIRST_LOAD_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(5));
/// First delay before retrying a failed refresh; doubles (with jitter) up to the refresh
/// interval.
const REFRESH_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// How long a `disconnect` after a successful load may take before we give up on it.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const WHAT_TO_DO: &str = "is MariaDB running? `make up`; check MYSQL_URL / --mysql-url";

/// Errors of this module. Every message names what failed, where (with the password redacted)
/// and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnrichError {
    #[error(
        "invalid MySQL URL {url}: {reason}. Expected mysql://user:password@host:3306/database"
    )]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to MySQL at {target}: {message}; {WHAT_TO_DO}")]
    Connect {
        target: String,
        message: String,
        /// The server's error code, when the server refused (e.g. 1045: access denied).
        code: Option<u16>,
    },
    #[error(
        "enrichment query `{query}` failed on {target}: {message}; check the query \
         (--enrich-query) and that its tables exist (`make up` creates `bancos`)"
    )]
    Query {
        target: String,
        query: String,
        message: String,
        /// The server's error code, when the server refused (e.g. 1146: no such table).
        code: Option<u16>,
    },
    #[error(
        "{what} on {target} did not finish within {after:?}; {WHAT_TO_DO}, or raise the timeout"
    )]
    Timeout {
        target: String,
        what: &'static str,
        after: Duration,
    },
    #[error(
        "enrichment table from {target}: column `{column}` value {value} cannot be read as \
         {expected}: {reason}; CAST the column in the query to a supported type"
    )]
    Convert {
        target: String,
        column: String,
        value: String,
        expected: &'static str,
        reason: String,
    },
    #[error(
        "enrichment query `{query}` on {target} returned no columns; it must return the key first"
    )]
    NoColumns { target: String, query: String },
    #[error(
        "the enrichment table from {target} changed its columns from [{before}] to [{after}]; \
         still serving the previous table — restart the consumer to pick up the new columns"
    )]
    ColumnsChanged {
        target: String,
        before: String,
        after: String,
    },
    #[error("loading the enrichment table from {target} failed: {message}; {WHAT_TO_DO}")]
    Source { target: String, message: String },
    #[error(
        "could not load the enrichment table from {target} within {after:?} ({attempts} attempts); \
         last error: {last}. If the database only needs longer to start, raise --mysql-timeout"
    )]
    FirstLoad {
        target: String,
        after: Duration,
        attempts: u32,
        last: Box<EnrichError>,
    },
    #[error("shutdown requested before the first enrichment load from {target} finished")]
    Cancelled { target: String },
}

/// The server's error code of a MySQL error, when the server refused.
fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// MySQL server errors that no retry fixes: access denied (1044, 1045, 1142, 1143, 1227), an
/// unknown database (1049), a query the server refuses (1052 ambiguous column, 1054 unknown
/// column, 1064 syntax, 1109 unknown table, 1146 no such table, 1305 no such function).
fn refused_for_good(code: u16) -> bool {
    matches!(
        code,
        1044 | 1045 | 1049 | 1052 | 1054 | 1064 | 1109 | 1142 | 1143 | 1146 | 1227 | 1305
    )
}

/// The first load's classifier ([`crate::retry`]): permanent when MySQL refused for good
/// ([`EnrichError::Connect`] or [`EnrichError::Query`] with such a code: a wrong password or
/// database, a query it cannot run), or the table cannot be used (a value that does not
/// convert, no columns, a bad URL); transient when the database could not be reached, did not
/// answer in time, or failed otherwise (it may be starting, or busy).
pub fn first_load_verdict(e: &EnrichError) -> Verdict {
    match e {
        EnrichError::Connect { code, .. } | EnrichError::Query { code, .. } => {
            Verdict::transient_if(!code.is_some_and(refused_for_good))
        }
        EnrichError::Timeout { .. } | EnrichError::Source { .. } => Verdict::Transient,
        EnrichError::BadUrl { .. }
        | EnrichError::Convert { .. }
        | EnrichError::NoColumns { .. }
        | EnrichError::ColumnsChanged { .. }
        | EnrichError::FirstLoad { .. }
        | EnrichError::Cancelled { .. } => Verdict::Permanent,
    }
}

/// Where the enrichment table comes from and how it is refreshed.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichConfig {
    /// `mysql://user:password@host:port/database` (may carry mysql_async URL parameters).
    pub mysql_url: String,
    /// The reference query; its first column is the join key, the others become output columns.
    pub query: String,
    /// Prepended to each non-key column name to form the output column name.
    pub column_prefix: String,
    /// How often the table is reloaded after a successful load.
    pub refresh_interval: Duration,
    /// How long the first load may keep retrying before the consumer gives up (`--mysql-timeout`).
    pub first_load_timeout: Duration,
    /// Bound on each database call (connect, query + fetch).
    pub query_timeout: Duration,
    /// Full table in memory, or a partial cache of the keys seen (`--enrich-cache`).
    pub cache: CacheMode,
    /// Follow the dimension's changes in the binary log (`--enrich-cdc`); `None`: do not.
    pub cdc: Option<CdcConfig>,
}

/// Following the binary log ([`cdc`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdcConfig {
    /// The dimension table (`db.table` or `table`), when the query's `FROM` does not say it
    /// (`--enrich-cdc-table`).
    pub table: Option<String>,
}

/// How much of the dimension is held (`--enrich-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The whole table, reloaded every refresh interval.
    #[default]
    Full,
    /// The keys seen, asked for in batches.
    Partial(PartialConfig),
}

/// The bounds of the partial cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialConfig {
    /// Bound on the cache's entries, in bytes (`--enrich-cache-bytes`).
    pub max_bytes: usize,
    /// An entry is asked again this long after it was written (`--enrich-cache-ttl`; `None`:
    /// never).
    pub ttl: Option<Duration>,
    /// How long records whose key is not held wait for an unreachable dimension before they
    /// follow `--on-miss` as "dimension unreachable" (`--enrich-miss-timeout`).
    pub miss_timeout: Duration,
    /// Most keys in one `IN (…)` list; more are asked in several statements.
    pub max_keys_per_query: usize,
}

impl Default for PartialConfig {
    fn default() -> Self {
        PartialConfig {
            max_bytes: 16 << 20,
            ttl: Some(Duration::from_secs(300)),
            miss_timeout: Duration::from_secs(30),
            max_keys_per_query: 512,
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::Full => "full",
            CacheMode::Partial(_) => "partial",
        })
    }
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            mysql_url: DEFAULT_MYSQL_URL.into(),
            query: DEFAULT_QUERY.into(),
            column_prefix: DEFAULT_COLUMN_PREFIX.into(),
            refresh_interval: Duration::from_secs(60),
            first_load_timeout: Duration::from_secs(30),
            query_timeout: Duration::from_secs(10),
            cache: CacheMode::Full,
            cdc: None,
        }
    }
}

/// One immutable load of the reference table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceTable {
    /// Output columns (prefix + column name) and types, in query order, **without** the key.
    pub columns: Vec<(String, FieldType)>,
    /// When this table was loaded.
    pub loaded_at: SystemTime,
    /// Rows skipped because their key was NULL.
    pub null_keys: u64,
    /// Rows whose key was already seen (the last one wins).
    pub duplicate_keys: u64,
    /// Row number of each key (the first query column, as text) in [`arrow`](Self::arrow):
    /// read only through [`join`](Self::join).
    index: HashMap<String, u32>,
    /// The table as Arrow columns aligned with [`columns`](Self::columns): the consumer enriches
    /// a whole batch with one `take` per column, at the rows [`join`](Self::join) found.
    pub arrow: Vec<ArrayRef>,
}

/// What a lookup of one key found ([`Lookup::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The key's row (a row number of the [`Lookup`] that found it).
    Row(u32),
    /// The dimension does not have the key.
    Absent,
    /// Partial mode: not held; the batch must ask the database.
    Unknown,
    /// Partial mode: not held, and the database could not be asked.
    Unreachable,
}

/// What the decoder reads the dimension through: a key at a time, then each enrichment column
/// for the rows found, at once.
pub trait Lookup {
    /// Looks `key` up. Allocation-free on a hit.
    fn find(&self, key: &str) -> Found;
    /// The enrichment columns (prefixed names, types).
    fn columns(&self) -> &[(String, FieldType)];
    /// Enrichment column `c` for `rows` (row numbers of [`Found::Row`]; null where none).
    fn column(&self, c: usize, rows: &UInt32Array) -> Result<ArrayRef, String>;
}

/// The join of one record, the one miss policy: `found` is what the lookup of its key found
/// (`None`: the record has no key, a null join field). `source` names the table in a dead
/// letter's reason (no secret). A hit allocates nothing.
pub fn join(found: Option<Found>, key: Option<&str>, on_miss: OnMiss, source: &str) -> Join {
    let unreachable = match found {
        Some(Found::Row(row)) => return Join::Hit(row),
        Some(Found::Unknown) => return Join::Pending,
        Some(Found::Unreachable) => true,
        Some(Found::Absent) | None => false,
    };
    match on_miss {
        OnMiss::Null => Join::Null,
        OnMiss::Drop => Join::Drop,
        OnMiss::DeadLetter => Join::DeadLetter(match key {
            Some(k) if unreachable => format!(
                "enrichment: dimension unreachable: key `{k}` is not cached and {source} could                  not be asked within --enrich-miss-timeout"
            ),
            Some(k) => {
                format!("enrichment: key `{k}` not found in the reference table from {source}")
            }
            None => "enrichment: the record has no key to look up".to_string(),
        }),
    }
}

/// What the join does with one record ([`join`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// The key's row ([`Found::Row`]).
    Hit(u32),
    /// Partial mode: the key must be asked for first; the batch is decoded again after.
    Pending,
    /// A miss under [`OnMiss::Null`]: keep the record, its enrichment columns null.
    Null,
    /// A miss under [`OnMiss::Drop`]: skip the record (it is still committed).
    Drop,
    /// A miss under [`OnMiss::DeadLetter`]: send the record to the dead letters with this reason.
    DeadLetter(String),
}

impl ReferenceTable {
    /// A one-row table (`00360305` → `CAIXA`, prefix `banco_`) for unit tests.
    #[cfg(test)]
    pub(crate) fn one_bank() -> Self {
        ReferenceTable::build(
            "banco_",
            vec![
                ("cnpj".into(), FieldType::String),
                ("nome".into(), FieldType::String),
            ],
            vec![vec![
                Value::Str("00360305".into()),
                Value::Str("CAIXA".into()),
            ]],
        )
    }

    /// Builds a table from query columns (key first, unprefixed names) and rows in the same order.
    /// Rows with a NULL key are skipped; for duplicate keys the last row wins (both are counted).
    pub fn build(prefix: &str, columns: Vec<(String, FieldType)>, rows: Vec<Vec<Value>>) -> Self {
        let mut map = HashMap::with_capacity(rows.len());
        let (mut null_keys, mut duplicate_keys) = (0, 0);
        for mut row in rows {
            if row.is_empty() {
                null_keys += 1;
                continue;
            }
            let rest = row.split_off(1);
            match row[0].as_key() {
                None => null_keys += 1,
                Some(key) => {
                    if map.insert(key, rest).is_some() {
                        duplicate_keys += 1;
                    }
                }
            }
        }
        let columns: Vec<(String, FieldType)> = columns
            .into_iter()
            .skip(1)
            .map(|(name, ty)| (format!("{prefix}{name}"), ty))
            .collect();
        let keys: Vec<&String> = map.keys().collect();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((*k).clone(), i as u32))
            .collect();
        let arrow = columns
            .iter()
            .enumerate()
            .map(|(c, (_, ty))| {
                crate::schema::values_to_array(ty, keys.iter().map(|k| map[*k].get(c)))
            })
            .collect();
        ReferenceTable {
            columns,
            loaded_at: SystemTime::now(),
            null_keys,
            duplicate_keys,
            index,
            arrow,
        }
    }

    /// The join of one record with the table, the one lookup and miss policy: looks `key` up
    /// (a `None` key, a null join field, is a miss) and applies `on_miss` to a miss. `source`
    /// names the table in a dead letter's reason (no secret). A hit allocates nothing.
    pub fn join(&self, key: Option<&str>, on_miss: OnMiss, source: &str) -> Join {
        join(key.map(|k| self.find(k)), key, on_miss, source)
    }

    /// The values of row `row` (of a [`Join::Hit`]), aligned with [`columns`](Self::columns):
    /// for reports and tests; the consumer takes whole columns.
    pub fn row(&self, row: u32) -> Vec<Value> {
        self.columns
            .iter()
            .zip(&self.arrow)
            .map(|((_, ty), array)| crate::schema::array_value(ty, array.as_ref(), row as usize))
            .collect()
    }

    /// Rows (keys) in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, ty)| format!("{name}: {}", type_name(ty)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Lookup for ReferenceTable {
    fn find(&self, key: &str) -> Found {
        match self.index.get(key) {
            Some(&row) => Found::Row(row),
            None => Found::Absent,
        }
    }

    fn columns(&self) -> &[(String, FieldType)] {
        &self.columns
    }

    fn column(&self, c: usize, rows: &UInt32Array) -> Result<ArrayRef, String> {
        let ty = &self
            .columns
            .get(c)
            .ok_or_else(|| format!("no enrichment column {c}"))?
            .1;
        match self.arrow.get(c) {
            Some(values) if !self.is_empty() => {
                arrow::compute::take(values.as_ref(), rows, None).map_err(|e| e.to_string())
            }
            _ => Ok(arrow::array::new_null_array(&ty.arrow_type(), rows.len())),
        }
    }
}

/// Something the reference table can be loaded from.
pub trait ReferenceSource: Send + Sync {
    /// Loads the whole table once. Implementations bound their own calls with timeouts.
    fn load(&self) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send;
    /// The rows of `keys` (distinct) only, as a table with the same columns as
    /// [`load`](Self::load)'s; keys the dimension does not have are simply not in it. With no
    /// keys, the columns alone. Partial mode asks this once per batch that misses.
    fn lookup(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send {
        let _ = keys;
        let error = EnrichError::Source {
            target: self.describe(),
            message: "this source cannot look keys up (--enrich-cache partial)".into(),
        };
        async move { Err(error) }
    }
    /// Where the table comes from, safe for logs (no passwords).
    fn describe(&self) -> String;
}

/// Loads the reference table from MySQL/MariaDB with a fresh connection per load (one load per
/// refresh interval does not need a pool). The session time zone is set to UTC so `TIMESTAMP`
/// columns come back in UTC; `DATETIME` values are taken as UTC.
///
/// Key lookups (partial mode) go through a small pool of connections, kept open between
/// batches: `SELECT * FROM (<query>) AS enrich_dim WHERE enrich_dim.<key> IN (?, …)`, prepared,
/// with the key column's name from the query's own columns (asked once, `WHERE 1 = 0`). The
/// server merges such a derived table into the outer query, so an index on the key serves it.
#[derive(Debug, Clone)]
pub struct MySqlSource {
    opts: mysql_async::Opts,
    target: String,
    query: String,
    prefix: String,
    query_timeout: Duration,
    max_keys_per_query: usize,
    pool: mysql_async::Pool,
    /// The key column's name, as the query returns it.
    key_column: Arc<std::sync::OnceLock<String>>,
}

/// Connections the key lookups of one consumer keep open at most.
const LOOKUP_CONNECTIONS: usize = 4;

impl MySqlSource {
    /// Parses the URL (no connection is made yet).
    pub fn new(config: &EnrichConfig) -> Result<Self, EnrichError> {
        let target = redact_url(&config.mysql_url);
        let opts =
            mysql_async::Opts::from_url(&config.mysql_url).map_err(|e| EnrichError::BadUrl {
                url: target.clone(),
                reason: redact_url(&e.to_string()),
            })?;
        let constraints =
            mysql_async::PoolConstraints::new(0, LOOKUP_CONNECTIONS).unwrap_or_default();
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .init(vec!["SET time_zone = '+00:00'"])
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints));
        let opts: mysql_async::Opts = opts.into();
        let max_keys_per_query = match config.cache {
            CacheMode::Partial(p) => p.max_keys_per_query.max(1),
            CacheMode::Full => PartialConfig::default().max_keys_per_query,
        };
        Ok(MySqlSource {
            pool: mysql_async::Pool::new(opts.clone()),
            opts,
            target,
            query: config.query.clone(),
            prefix: config.column_prefix.clone(),
            query_timeout: config.query_timeout,
            max_keys_per_query,
            key_column: Arc::default(),
        })
    }

    fn derived(&self) -> String {
        format!(
            "SELECT * FROM ({}) AS enrich_dim",
            self.query.trim().trim_end_matches(';')
        )
    }

    /// A pooled connection that answers a ping: connections idle in the pool across a restart
    /// of the server are broken, and are dropped here rather than failing the lookup.
    async fn live_connection(&self) -> Result<mysql_async::Conn, mysql_async::Error> {
        let mut last = None;
        for _ in 0..=LOOKUP_CONNECTIONS {
            let mut conn = self.pool.get_conn().await?;
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => self.pool.get_conn().await,
        }
    }

    /// The rows of `keys` (see [`ReferenceSource::lookup`]).
    async fn lookup_keys(&self, keys: &[String]) -> Result<ReferenceTable, EnrichError> {
        let timeout = self.query_timeout;
        let mut conn = tokio::time::timeout(timeout, self.live_connection())
            .await
            .map_err(|_| self.timed_out("connecting", timeout))?
            .map_err(|e| EnrichError::Connect {
                target: self.target.clone(),
                message: redact_url(&e.to_string()),
                code: server_code(&e),
            })?;
        let query_error = |query: String, e: mysql_async::Error| EnrichError::Query {
            target: self.target.clone(),
            query,
            message: redact_url(&e.to_string()),
            code: server_code(&e),
        };
        let key_column = match self.key_column.get() {
            Some(name) => name.clone(),
            None => {
                let probe = format!("{} WHERE 1 = 0", self.derived());
                let columns = tokio::time::timeout(timeout, async {
                    let result = conn.query_iter(probe.as_str()).await?;
                    let columns = result.columns();
                    result.drop_result().await?;
                    Ok::<_, mysql_async::Error>(columns)
                })
                .await
                .map_err(|_| self.timed_out("the enrichment query", timeout))?
                .map_err(|e| query_error(probe.clone(), e))?
                .unwrap_or_else(|| Vec::new().into());
                let Some(first) = columns.first() else {
                    return Err(EnrichError::NoColumns {
                        target: self.target.clone(),
                        query: self.query.clone(),
                    });
                };
                let name = first.name_str().into_owned();
                if keys.is_empty() {
                    let table = self.table_from(&columns, Vec::new())?;
                    let _ = self.key_column.set(name);
                    return Ok(table);
                }
                let _ = self.key_column.set(name.clone());
                name
            }
        };
        // The first statement on this connection; the others, at most LOOKUP_CONNECTIONS at
        // once, each on a pooled connection of its own (a large dimension's lookups wait on
        // its disk: they overlap).
        // Owned: the futures below must not hold borrows of a higher-ranked lifetime.
        let chunks: Vec<Vec<String>> = partial::in_list_chunks(keys, self.max_keys_per_query)
            .into_iter()
            .map(|c| c.into_iter().map(str::to_string).collect())
            .collect();
        let mut chunks = chunks.into_iter();
        let first = chunks.next().unwrap_or_default();
        let (columns, mut rows) = self.lookup_chunk(&mut conn, &key_column, &first).await?;
        drop(conn);
        use futures::StreamExt as _;
        let rest: Vec<_> = futures::stream::iter(chunks)
            .map(|chunk| {
                let key_column = &key_column;
                async move {
                    let mut conn = tokio::time::timeout(timeout, self.live_connection())
                        .await
                        .map_err(|_| self.timed_out("connecting", timeout))?
                        .map_err(|e| EnrichError::Connect {
                            target: self.target.clone(),
                            message: redact_url(&e.to_string()),
                            code: server_code(&e),
                        })?;
                    self.lookup_chunk(&mut conn, key_column, &chunk).await
                }
            })
            .buffer_unordered(LOOKUP_CONNECTIONS)
            .collect()
            .await;
        for chunk in rest {
            rows.extend(chunk?.1);
        }
        let columns = columns.unwrap_or_else(|| Vec::new().into());
        self.table_from(&columns, rows)
    }

    /// One `IN` list (none: the columns only) on `conn`.
    async fn lookup_chunk(
        &self,
        conn: &mut mysql_async::Conn,
        key_column: &str,
        chunk: &[String],
    ) -> Result<(Option<Arc<[mysql_async::Column]>>, Vec<mysql_async::Row>), EnrichError> {
        let timeout = self.query_timeout;
        let statement = if chunk.is_empty() {
            format!("{} WHERE 1 = 0", self.derived())
        } else {
            format!(
                "{} WHERE enrich_dim.`{}` IN ({})",
                self.derived(),
                key_column.replace('`', "``"),
                vec!["?"; chunk.len()].join(", ")
            )
        };
        let params: Vec<mysql_async::Value> = chunk
            .iter()
            .map(|k| mysql_async::Value::Bytes(k.as_bytes().to_vec()))
            .collect();
        let fetched = tokio::time::timeout(timeout, async {
            let mut result = if params.is_empty() {
                conn.exec_iter(statement.as_str(), ()).await?
            } else {
                conn.exec_iter(statement.as_str(), params).await?
            };
            let cols = result.columns();
            let got: Vec<mysql_async::Row> = result.collect().await?;
            result.drop_result().await?;
            Ok::<_, mysql_async::Error>((cols, got))
        })
        .await;
        match fetched {
            Err(_) => Err(self.timed_out("the enrichment key lookup", timeout)),
            Ok(Err(e)) => Err(EnrichError::Query {
                target: self.target.clone(),
                query: statement,
                message: redact_url(&e.to_string()),
                code: server_code(&e),
            }),
            Ok(Ok(fetched)) => Ok(fetched),
        }
    }

    async fn load_once(&self) -> Result<ReferenceTable, EnrichError> {
        let timeout = self.query_timeout;
        let mut conn = tokio::time::timeout(timeout, mysql_async::Conn::new(self.opts.clone()))
            .await
            .map_err(|_| self.timed_out("connecting", timeout))?
            .map_err(|e| EnrichError::Connect {
                target: self.target.clone(),
                message: redact_url(&e.to_string()),
                code: server_code(&e),
            })?;
        let fetched = tokio::time::timeout(timeout, async {
            let mut result = conn.query_iter(self.query.as_str()).await?;
            let columns = result.columns();
            let rows: Vec<mysql_async::Row> = result.collect().await?;
            result.drop_result().await?;
            Ok::<_, mysql_async::Error>((columns, rows))
        })
        .await;
        let (columns, rows) = match fetched {
            Err(_) => return Err(self.timed_out("the enrichment query", timeout)),
            Ok(Err(e)) => {
                return Err(EnrichError::Query {
                    target: self.target.clone(),
                    query: self.query.clone(),
                    message: redact_url(&e.to_string()),
                    code: server_code(&e),
                })
            }
            Ok(Ok(fetched)) => fetched,
        };
        // Best effort: the data is already here.
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, conn.disconnect()).await;
        let columns = columns.unwrap_or_else(|| Vec::new().into());
        self.table_from(&columns, rows)
    }

    /// Converts what a query returned (key first) into a table.
    fn table_from(
        &self,
        columns: &[mysql_async::Column],
        rows: Vec<mysql_async::Row>,
    ) -> Result<ReferenceTable, EnrichError> {
        if columns.is_empty() {
            return Err(EnrichError::NoColumns {
                target: self.target.clone(),
                query: self.query.clone(),
            });
        }
        let types: Vec<(String, FieldType)> = columns
            .iter()
            .map(|c| (c.name_str().into_owned(), field_type_of(c.column_type())))
            .collect();
        let mut converted = Vec::with_capacity(rows.len());
        for row in rows {
            let raw = row.unwrap();
            let mut values = Vec::with_capacity(raw.len());
            for ((value, column), (name, ty)) in raw.into_iter().zip(columns.iter()).zip(&types) {
                let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
                let v = convert_value(ty, unsigned, value).map_err(|(value, reason)| {
                    EnrichError::Convert {
                        target: self.target.clone(),
                        column: name.clone(),
                        value,
                        expected: type_name(ty),
                        reason,
                    }
                })?;
                values.push(v);
            }
            converted.push(values);
        }
        let table = ReferenceTable::build(&self.prefix, types, converted);
        if table.null_keys > 0 || table.duplicate_keys > 0 {
            tracing::warn!(
                target_db = %self.target,
                null_keys = table.null_keys,
                duplicate_keys = table.duplicate_keys,
                "enrichment query returned rows with NULL keys (skipped) or duplicate keys (last wins)"
            );
        }
        Ok(table)
    }

    fn timed_out(&self, what: &'static str, after: Duration) -> EnrichError {
        EnrichError::Timeout {
            target: self.target.clone(),
            what,
            after,
        }
    }
}

impl ReferenceSource for MySqlSource {
    fn load(&self) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send {
        self.load_once()
    }

    fn lookup(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send {
        self.lookup_keys(keys)
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// The output type of a MySQL column: integers -> Int, float/double/decimal -> Float, date ->
/// Date, datetime/timestamp -> Timestamp (UTC micros), everything else -> String.
pub fn field_type_of(column_type: ColumnType) -> FieldType {
    use ColumnType::*;
    match column_type {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR => FieldType::Int { ordinal: false },
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE | MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            FieldType::Float
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => FieldType::Date {
            format: "%Y-%m-%d".into(),
        },
        MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => FieldType::Timestamp {
            format: "%Y-%m-%d %H:%M:%S%.f".into(),
        },
        _ => FieldType::String,
    }
}

fn type_name(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::Int { .. } => "an integer",
        FieldType::Float | FieldType::DecimalComma => "a float",
        FieldType::Date { .. } => "a date",
        FieldType::Timestamp { .. } => "a timestamp",
        FieldType::Bool => "a boolean",
        FieldType::String | FieldType::Digits { .. } => "UTF-8 text",
    }
}

/// Converts one MySQL value (text protocol: mostly `Bytes`; binary protocol: typed) to the
/// column's [`FieldType`]. On failure returns (the value shown for the error, the reason).
fn convert_value(
    ty: &FieldType,
    unsigned: bool,
    value: mysql_async::Value,
) -> Result<Value, (String, String)> {
    use mysql_async::Value as M;
    let shown = |v: &M| match v {
        M::Bytes(b) => format!("`{}`", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    };
    let fail = |v: &M, reason: &str| Err((shown(v), reason.to_string()));
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::trim)
            .ok()
            .map(str::to_string)
    };
    Ok(match (ty, &value) {
        (_, M::NULL) => Value::Null,
        (FieldType::Int { .. }, M::Int(i)) => Value::Int(*i),
        (FieldType::Int { .. }, M::UInt(u)) => match i64::try_from(*u) {
            Ok(i) => Value::Int(i),
            Err(_) => return fail(&value, "it does not fit a signed 64-bit integer"),
        },
        (FieldType::Int { .. }, M::Bytes(b)) => {
            let parsed = text(b).and_then(|t| {
                if unsigned {
                    t.parse::<u64>().ok().and_then(|u| i64::try_from(u).ok())
                } else {
                    t.parse::<i64>().ok()
                }
            });
            match parsed {
                Some(i) => Value::Int(i),
                None => return fail(&value, "not a signed 64-bit integer"),
            }
        }
        (FieldType::Float, M::Float(f)) => Value::Float(f64::from(*f)),
        (FieldType::Float, M::Double(f)) => Value::Float(*f),
        (FieldType::Float, M::Int(i)) => Value::Float(*i as f64),
        (FieldType::Float, M::UInt(u)) => Value::Float(*u as f64),
        (FieldType::Float, M::Bytes(b)) => match text(b).and_then(|t| t.parse::<f64>().ok()) {
            Some(f) => Value::Float(f),
            None => return fail(&value, "not a number"),
        },
        (FieldType::Date { .. }, M::Date(y, m, d, ..)) => {
            match NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*m), u32::from(*d)) {
                Some(date) => Value::Date(days_since_epoch(date)),
                None if *y == 0 => Value::Null,
                None => return fail(&value, "not a valid calendar date"),
            }
        }
        (FieldType::Date { .. }, M::Bytes(b)) => {
            let t = text(b).unwrap_or_default();
            match NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
                Ok(date) => Value::Date(days_since_epoch(date)),
                Err(_) if t.starts_with("0000-00-00") => Value::Null,
                Err(_) => return fail(&value, "not a YYYY-MM-DD date"),
            }
        }
        (FieldType::Timestamp { .. }, M::Date(y, mo, d, h, mi, s, us)) => {
            let dt = NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*mo), u32::from(*d))
                .and_then(|date| {
                    date.and_hms_micro_opt(u32::from(*h), u32::from(*mi), u32::from(*s), *us)
                });
            match dt {
                Some(dt) => Value::Timestamp(dt.and_utc().timestamp_micros()),
                None if *y == 0 => Value::Null,
                None => return fail(&value, "not a valid date and time"),
            }
        }
        (FieldType::Timestamp { .. }, M::Bytes(b)) => {
            let t = text(b).unwrap_or_default();
            let parsed = NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f").or_else(|_| {
                NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            });
            match parsed {
                Ok(dt) => Value::Timestamp(dt.and_utc().timestamp_micros()),
                Err(_) if t.starts_with("0000-00-00") => Value::Null,
                Err(_) => return fail(&value, "not a YYYY-MM-DD HH:MM:SS[.ffffff] timestamp"),
            }
        }
        (_, M::Bytes(b)) => match std::str::from_utf8(b) {
            // Text is kept exactly as stored (CHAR keys like `00360305` keep their zeros).
            Ok(s) => Value::Str(s.to_string()),
            Err(_) => return fail(&value, "it is not valid UTF-8 (binary column? use HEX())"),
        },
        (_, M::Int(i)) => Value::Str(i.to_string()),
        (_, M::UInt(u)) => Value::Str(u.to_string()),
        (_, M::Float(f)) => Value::Str(f.to_string()),
        (_, M::Double(f)) => Value::Str(f.to_string()),
        (_, M::Time(neg, d, h, m, s, us)) => {
            let hours = u64::from(*d) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let frac = if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            Value::Str(format!("{sign}{hours:02}:{m:02}:{s:02}{frac}"))
        }
        (_, M::Date(y, mo, d, h, mi, s, _)) => {
            Value::Str(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
        }
    })
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid epoch")).num_days() as i32
}

/// What the consumer does with a record whose key is not in the enrichment table (or is null).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMiss {
    /// Keep the record with null enrichment columns.
    #[default]
    Null,
    /// Skip the record (it is still committed, i.e. never retried).
    Drop,
    /// Send the record to `_dead_letter/` with the reason.
    DeadLetter,
}

impl FromStr for OnMiss {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "null" => Ok(OnMiss::Null),
            "drop" => Ok(OnMiss::Drop),
            "dead-letter" | "deadletter" => Ok(OnMiss::DeadLetter),
            other => Err(format!(
                "`{other}` is not an on-miss policy; use one of null, drop, dead-letter"
            )),
        }
    }
}

impl fmt::Display for OnMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnMiss::Null => "null",
            OnMiss::Drop => "drop",
            OnMiss::DeadLetter => "dead-letter",
        })
    }
}

/// Counters of an [`EnrichmentCache`], for logs and `--stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats {
    /// `full` or `partial`.
    pub mode: &'static str,
    /// Records joined with a row.
    pub hits: u64,
    /// Records without a row (not found, no key, or the dimension unreachable).
    pub misses: u64,
    /// Successful loads, including the first one (full mode).
    pub refresh_ok: u64,
    /// Failed refreshes (after the first load succeeded).
    pub refresh_failures: u64,
    /// When the table being served was loaded (partial mode: when the columns were read).
    pub last_refresh: SystemTime,
    /// Rows in the table being served (partial mode: entries held, absent keys included).
    pub rows: usize,
    /// The last refresh (or lookup) error, cleared by the next success.
    pub last_error: Option<String>,
    /// Partial mode: records whose key the cache answered (a row or a known absence).
    pub cache_hits: u64,
    /// Partial mode: records whose key had to be asked for.
    pub cache_misses: u64,
    /// Partial mode: miss lookups (one per batch that missed; `IN` lists of at most
    /// [`PartialConfig::max_keys_per_query`] keys each) and the keys they asked for.
    pub queries: u64,
    pub keys_queried: u64,
    /// Partial mode: lookups that failed (each attempt).
    pub query_failures: u64,
    /// Partial mode: records that followed `--on-miss` because the dimension was unreachable.
    pub unreachable: u64,
    /// Partial mode: bytes the entries are counted for, and entries evicted to stay in bound.
    pub bytes: usize,
    pub evictions: u64,
    /// Partial mode: since when the dimension has been unreachable, and the last error.
    pub down_since: Option<(SystemTime, String)>,
    /// Changed keys the binary log reported (`--enrich-cdc`).
    pub changes: u64,
    /// What following the binary log does now (`None`: not asked to).
    pub cdc: Option<String>,
}

/// A key lookup behind a pointer (the partial cache holds its source without its type).
trait KeyLookup: Send + Sync {
    fn lookup_boxed<'a>(
        &'a self,
        keys: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<ReferenceTable, EnrichError>>;
}

impl<S: ReferenceSource> KeyLookup for S {
    fn lookup_boxed<'a>(
        &'a self,
        keys: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<ReferenceTable, EnrichError>> {
        Box::pin(self.lookup(keys))
    }
}

/// The dimension could not be asked since `since`.
#[derive(Debug, Clone)]
struct Down {
    since: Instant,
    since_wall: SystemTime,
    error: String,
}

struct PartialState {
    cache: RwLock<PartialCache>,
    source: Box<dyn KeyLookup>,
    config: PartialConfig,
    down: Mutex<Option<Down>>,
    /// Entry ages are measured from here (tokio's clock, so tests can pause it).
    origin: Instant,
}

impl fmt::Debug for PartialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PartialState {
    fn now_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PartialCache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PartialCache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Shared {
    /// Full mode: the table served. Partial mode: an empty table with the columns.
    current: RwLock<Arc<ReferenceTable>>,
    partial: Option<PartialState>,
    hits: AtomicU64,
    misses: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    target: String,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    queries: AtomicU64,
    keys_queried: AtomicU64,
    query_failures: AtomicU64,
    unreachable: AtomicU64,
    /// Keys the binary log said changed ([`cdc`]).
    changes: AtomicU64,
    /// What following the binary log does now (`None`: not asked to).
    cdc_state: Mutex<Option<String>>,
    /// Full mode: reload now (the binary log saw a change).
    reload: tokio::sync::Notify,
}

impl Shared {
    fn new(table: ReferenceTable, partial: Option<PartialState>, target: String) -> Self {
        Shared {
            current: RwLock::new(Arc::new(table)),
            partial,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refresh_ok: AtomicU64::new(1),
            refresh_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            target,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            keys_queried: AtomicU64::new(0),
            query_failures: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            cdc_state: Mutex::new(None),
            reload: tokio::sync::Notify::new(),
        }
    }
}

/// The enrichment cache: the whole table refreshed in the background (full mode), or the keys
/// seen (partial mode). Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct EnrichmentCache {
    shared: Arc<Shared>,
}

/// One consistent view of the table, taken once per batch: all records of the batch are enriched
/// from the same load even if a refresh swaps the table meanwhile.
#[derive(Debug, Clone)]
pub struct EnrichSnapshot {
    table: Arc<ReferenceTable>,
}

impl EnrichSnapshot {
    /// The underlying table (columns, rows, load time).
    pub fn table(&self) -> &Arc<ReferenceTable> {
        &self.table
    }
}

impl EnrichmentCache {
    /// Full mode: loads the table once (retrying transient errors with backoff, 200 ms doubling
    /// to 5 s, for at most `config.first_load_timeout`; a permanent one, [`first_load_verdict`],
    /// fails at once), then spawns the refresh task, which reloads every
    /// `config.refresh_interval`. A failed refresh keeps the previous table, is logged and
    /// counted, and is retried with backoff (500 ms doubling, capped at the interval). A refresh
    /// whose columns differ from the first load is rejected the same way.
    ///
    /// Partial mode: reads the query's columns the same way (no rows), and starts empty; the
    /// returned task only waits for the stop.
    ///
    /// The task stops when `shutdown` becomes `true` or its sender is dropped; await the
    /// returned handle to wait for it.
    pub async fn start<S: ReferenceSource + 'static>(
        source: S,
        config: EnrichConfig,
        shutdown: Shutdown,
    ) -> Result<(EnrichmentCache, JoinHandle<()>), EnrichError> {
        let target = source.describe();
        // Where the binary log stands, before the load: no change falls in between. If the
        // database cannot be asked yet (it may be starting: the load retries), asked again after
        // the load, and a full cache then reloads once to cover the gap.
        let cdc_config = config.cdc.clone();
        let early = match &cdc_config {
            None => None,
            Some(cdc) => Some(cdc::prepare(&config, cdc.table.as_deref()).await),
        };
        let prepare_again = config.clone();
        let (cache, task) = Self::start_cache(source, config, shutdown.clone()).await?;
        let follow = match (early, &cdc_config) {
            (Some(Ok(follow)), _) => Some(follow),
            (Some(Err(_)), Some(cdc)) => {
                match cdc::prepare(&prepare_again, cdc.table.as_deref()).await {
                    Ok(follow) => {
                        cache.shared.reload.notify_one();
                        Some(follow)
                    }
                    Err(cdc::Unavailable(reason)) => {
                        tracing::warn!(source = %target, "enrichment: cannot follow the binary \
                            log (--enrich-cdc): {reason}; falling back to periodic reload \
                            (--refresh-interval, --enrich-cache-ttl)");
                        cache.set_cdc_state(Some(format!(
                            "not following the binary log ({reason}); periodic reload"
                        )));
                        None
                    }
                }
            }
            _ => None,
        };
        let Some(follow) = follow else {
            return Ok((cache, task));
        };
        cache.set_cdc_state(Some(format!(
            "following the binary log: {}",
            follow.describe()
        )));
        let follower = tokio::spawn(cdc::follow(cache.clone(), follow, shutdown));
        let both = tokio::spawn(async move {
            let _ = task.await;
            let _ = follower.await;
        });
        Ok((cache, both))
    }

    async fn start_cache<S: ReferenceSource + 'static>(
        source: S,
        config: EnrichConfig,
        shutdown: Shutdown,
    ) -> Result<(EnrichmentCache, JoinHandle<()>), EnrichError> {
        let target = source.describe();
        if let CacheMode::Partial(partial) = config.cache {
            let columns = first_load(&source, config.first_load_timeout, &shutdown, true).await?;
            tracing::info!(
                source = %target,
                columns = %columns.column_list(),
                max_bytes = partial.max_bytes,
                ttl = ?partial.ttl,
                "enrichment: partial cache (rows are asked for as records need them)"
            );
            let state = PartialState {
                cache: RwLock::new(PartialCache::new(Limits {
                    max_bytes: partial.max_bytes,
                    ttl_ms: partial.ttl.map(|t| t.as_millis() as i64),
                })),
                source: Box::new(source),
                config: partial,
                down: Mutex::new(None),
                origin: Instant::now(),
            };
            let shared = Arc::new(Shared::new(columns, Some(state), target));
            let cache = EnrichmentCache { shared };
            let task = tokio::spawn(watch_recovery(cache.clone(), shutdown));
            return Ok((cache, task));
        }
        let table = first_load(&source, config.first_load_timeout, &shutdown, false).await?;
        tracing::info!(
            source = %target,
            rows = table.len(),
            columns = %table.column_list(),
            "enrichment table loaded"
        );
        let shared = Arc::new(Shared::new(table, None, target));
        let task = tokio::spawn(refresh_loop(
            source,
            Arc::clone(&shared),
            config.refresh_interval,
            shutdown,
        ));
        Ok((EnrichmentCache { shared }, task))
    }

    /// A consistent view of the current table; take one per batch (full mode; in partial mode
    /// an empty table with the columns).
    pub fn snapshot(&self) -> EnrichSnapshot {
        EnrichSnapshot {
            table: self.current(),
        }
    }

    /// Whether this is a partial cache ([`with_view`](Self::with_view),
    /// [`resolve`](Self::resolve)).
    pub fn is_partial(&self) -> bool {
        self.shared.partial.is_some()
    }

    /// Partial mode: keeps what `overlay` answered, then runs `f` over a view of the cache
    /// behind `overlay` (under a read lock: call it off the async threads). `None` in full
    /// mode.
    pub fn with_view<T>(
        &self,
        overlay: &Overlay,
        f: impl FnOnce(&PartialView<'_>) -> T,
    ) -> Option<T> {
        let p = self.shared.partial.as_ref()?;
        let now_ms = p.now_ms();
        if !overlay.is_empty() {
            p.write().absorb(overlay, now_ms);
        }
        let table = self.current();
        let cache = p.read();
        let view = PartialView {
            cache: &cache,
            overlay,
            columns: &table.columns,
            now_ms,
        };
        Some(f(&view))
    }

    /// Partial mode: asks the dimension for `keys` (distinct; one lookup, chunked into `IN`
    /// lists), retrying for at most `--enrich-miss-timeout` counted from when the dimension
    /// became unreachable (once it has been unreachable that long, one attempt). Answers every
    /// key: its row, absent, or unreachable.
    pub async fn resolve(&self, keys: &[String]) -> Overlay {
        let mut overlay = Overlay::default();
        let Some(p) = self.shared.partial.as_ref() else {
            keys.iter().for_each(|k| overlay.unreachable(k.clone()));
            return overlay;
        };
        overlay.epoch = p.read().epoch();
        let shared = &self.shared;
        shared.queries.fetch_add(1, Ordering::Relaxed);
        shared
            .keys_queried
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let down_for = lock(&p.down).as_ref().map(|d| d.since.elapsed());
        let budget = p
            .config
            .miss_timeout
            .saturating_sub(down_for.unwrap_or_default());
        let deadline = Instant::now() + budget;
        // Past the bound, one more attempt (and a quick second one: the first may meet a
        // connection that went stale in the outage).
        let policy = if budget.is_zero() {
            FIRST_LOAD_RETRY.with_max_attempts(2)
        } else {
            FIRST_LOAD_RETRY.with_deadline(budget)
        };
        let columns = self.current();
        let found = retry::retry(
            &policy,
            "Looking enrichment keys up",
            None,
            first_load_verdict,
            || async {
                // At least a second per attempt, so one attempt is made even past the budget.
                let bound = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                let result = match tokio::time::timeout(bound, p.source.lookup_boxed(keys)).await {
                    Ok(Ok(table)) if table.columns != columns.columns => {
                        Err(EnrichError::ColumnsChanged {
                            target: shared.target.clone(),
                            before: columns.column_list(),
                            after: table.column_list(),
                        })
                    }
                    Ok(result) => result,
                    Err(_) => Err(EnrichError::Timeout {
                        target: shared.target.clone(),
                        what: "the enrichment key lookup",
                        after: bound,
                    }),
                };
                if let Err(e) = &result {
                    shared.query_failures.fetch_add(1, Ordering::Relaxed);
                    let message = redact_url(&e.to_string());
                    let mut down = lock(&p.down);
                    if down.is_none() {
                        tracing::warn!(source = %shared.target, error = %message,
                            "enrichment dimension unreachable: records whose key is not cached wait \
                             (--enrich-miss-timeout), then follow --on-miss as `dimension unreachable`");
                    }
                    let since = down.as_ref().map_or_else(
                        || (Instant::now(), SystemTime::now()),
                        |d| (d.since, d.since_wall),
                    );
                    *down = Some(Down {
                        since: since.0,
                        since_wall: since.1,
                        error: message.clone(),
                    });
                    *lock(&shared.last_error) = Some(message);
                }
                result
            },
        )
        .await;
        match found {
            Ok(table) => {
                if let Some(down) = lock(&p.down).take() {
                    tracing::info!(source = %shared.target, after = ?down.since.elapsed(),
                        "enrichment dimension reachable again");
                    *lock(&shared.last_error) = None;
                }
                for key in keys {
                    let row = match table.find(key) {
                        Found::Row(r) => Some(table.row(r)),
                        _ => None,
                    };
                    overlay.answer(key.clone(), row);
                }
            }
            Err(_) => keys.iter().for_each(|k| overlay.unreachable(k.clone())),
        }
        overlay
    }

    /// The binary log says `keys` changed: a partial cache forgets them (and keeps no answer
    /// read before), a full cache reloads now.
    pub fn changed(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        self.shared
            .changes
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        match &self.shared.partial {
            Some(p) => p.write().invalidate(&keys),
            None => self.shared.reload.notify_one(),
        }
    }

    /// What following the binary log does now (for `/healthz` and the summary).
    pub fn set_cdc_state(&self, state: Option<String>) {
        *lock(&self.shared.cdc_state) = state;
    }

    /// Counts lookups done elsewhere (the consumer's columnar enrichment).
    pub fn count_lookups(&self, hits: u64, misses: u64) {
        self.shared.hits.fetch_add(hits, Ordering::Relaxed);
        self.shared.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Partial mode: counts records answered by the cache, records whose key was asked for,
    /// and records that followed `--on-miss` because the dimension was unreachable.
    pub fn count_partial(&self, cache_hits: u64, cache_misses: u64, unreachable: u64) {
        let s = &self.shared;
        s.cache_hits.fetch_add(cache_hits, Ordering::Relaxed);
        s.cache_misses.fetch_add(cache_misses, Ordering::Relaxed);
        s.unreachable.fetch_add(unreachable, Ordering::Relaxed);
    }

    /// The output columns (prefixed names and types) of the table being served.
    pub fn columns(&self) -> Vec<(String, FieldType)> {
        self.current().columns.clone()
    }

    /// Where the table comes from (redacted).
    pub fn describe(&self) -> &str {
        &self.shared.target
    }

    pub fn stats(&self) -> CacheStats {
        let table = self.current();
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (rows, bytes, evictions, down_since) = match &s.partial {
            None => (table.len(), 0, 0, None),
            Some(p) => {
                let cache = p.read();
                let down = lock(&p.down)
                    .as_ref()
                    .map(|d| (d.since_wall, d.error.clone()));
                (cache.len(), cache.bytes(), cache.evictions(), down)
            }
        };
        CacheStats {
            mode: if s.partial.is_some() {
                "partial"
            } else {
                "full"
            },
            hits: get(&s.hits),
            misses: get(&s.misses),
            refresh_ok: get(&s.refresh_ok),
            refresh_failures: get(&s.refresh_failures),
            last_refresh: table.loaded_at,
            rows,
            last_error: lock(&s.last_error).clone(),
            cache_hits: get(&s.cache_hits),
            cache_misses: get(&s.cache_misses),
            queries: get(&s.queries),
            keys_queried: get(&s.keys_queried),
            query_failures: get(&s.query_failures),
            unreachable: get(&s.unreachable),
            bytes,
            evictions,
            down_since,
            changes: get(&s.changes),
            cdc: lock(&s.cdc_state).clone(),
        }
    }

    fn current(&self) -> Arc<ReferenceTable> {
        // A poisoned lock still holds a valid Arc (the writer only swaps it).
        match self.shared.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first load (`columns_only`: the columns, no rows, for partial mode), retried until
/// `timeout` unless the error is permanent.
async fn first_load<S: ReferenceSource>(
    source: &S,
    timeout: Duration,
    shutdown: &Shutdown,
    columns_only: bool,
) -> Result<ReferenceTable, EnrichError> {
    let target = source.describe();
    let deadline = Instant::now() + timeout;
    let policy = FIRST_LOAD_RETRY.with_deadline(timeout);
    let target_ref = &target;
    let loaded = retry::retry(
        &policy,
        "Loading the enrichment table",
        Some(shutdown),
        first_load_verdict,
        || async move {
            // Each attempt gets the time left, so the load ends by the deadline.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let load = async {
                if columns_only {
                    source.lookup(&[]).await
                } else {
                    source.load().await
                }
            };
            match tokio::time::timeout(remaining, load).await {
                Ok(loaded) => loaded,
                Err(_) => Err(EnrichError::Timeout {
                    target: target_ref.clone(),
                    what: "the first enrichment load",
                    after: remaining,
                }),
            }
        },
    )
    .await;
    loaded.map_err(|e| match e {
        RetryError::Permanent(e) => e,
        RetryError::GaveUp { last, attempts, .. } => EnrichError::FirstLoad {
            target: target.clone(),
            after: timeout,
            attempts,
            last: Box::new(last),
        },
        RetryError::Stopped { .. } => EnrichError::Cancelled {
            target: target.clone(),
        },
    })
}

/// How often a partial cache whose database is unreachable checks whether it is back.
const RECOVERY_PROBE: Duration = Duration::from_secs(1);

/// Partial mode: while the database is unreachable, asks it (for no key, a `WHERE 1 = 0`) every
/// [`RECOVERY_PROBE`], so `/healthz` says it is back even when no record needs a lookup.
async fn watch_recovery(cache: EnrichmentCache, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tokio::time::sleep(RECOVERY_PROBE) => {}
        }
        let Some(p) = cache.shared.partial.as_ref() else {
            break;
        };
        if lock(&p.down).is_none() {
            continue;
        }
        let probe = tokio::time::timeout(RECOVERY_PROBE, p.source.lookup_boxed(&[])).await;
        if let Ok(Ok(_)) = probe {
            if let Some(down) = lock(&p.down).take() {
                tracing::info!(source = %cache.shared.target, after = ?down.since.elapsed(),
                    "enrichment dimension reachable again");
                *lock(&cache.shared.last_error) = None;
            }
        }
    }
}

async fn refresh_loop<S: ReferenceSource>(
    source: S,
    shared: Arc<Shared>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    // No deadline and nothing permanent: a refresh is retried until it succeeds (or the stop),
    // the previous table served meanwhile.
    let policy = RetryPolicy::exponential(REFRESH_INITIAL_BACKOFF, interval);
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tokio::time::sleep(interval) => {}
            // The binary log saw the table change (`cdc`).
            _ = shared.reload.notified() => {}
        }
        let refreshed = retry::retry_notify(
            &policy,
            "Refreshing the enrichment table",
            Some(&shutdown),
            |_: &EnrichError| Verdict::Transient,
            |r| {
                shared.refresh_failures.fetch_add(1, Ordering::Relaxed);
                let message = redact_url(&r.error.to_string());
                tracing::warn!(source = %shared.target, attempt = r.attempt, retry_in = ?r.delay,
                    error = %message, "enrichment refresh failed; still serving the previous table");
                *lock(&shared.last_error) = Some(message);
            },
            || async {
                let table = source.load().await?;
                let current = read_current(&shared);
                if table.columns == current.columns {
                    Ok(table)
                } else {
                    Err(EnrichError::ColumnsChanged {
                        target: shared.target.clone(),
                        before: current.column_list(),
                        after: table.column_list(),
                    })
                }
            },
        )
        .await;
        // Only a stop ends the retries.
        let Ok(table) = refreshed else { break };
        let rows = table.len();
        let new = Arc::new(table);
        match shared.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        shared.refresh_ok.fetch_add(1, Ordering::Relaxed);
        *lock(&shared.last_error) = None;
        tracing::debug!(source = %shared.target, rows, "enrichment table refreshed");
    }
    tracing::debug!(source = %shared.target, "enrichment refresh task stopped");
}

fn read_current(shared: &Shared) -> Arc<ReferenceTable> {
    match shared.current.read() {
        Ok(guard) => Arc::clone(&guard),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

/// Replaces the password of every `scheme://user:password@host...` URL in `text` with `***`.
/// Text without such URLs is returned unchanged. When in doubt (a password containing `@` or
/// `/`), more is hidden rather than less: the user info is taken to end at the last `@` of the
/// URL (URLs end at whitespace).
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (before, after_scheme) = rest.split_at(pos + 3);
        out.push_str(before);
        let end = after_scheme
            .find(char::is_whitespace)
            .unwrap_or(after_scheme.len());
        let (url_rest, tail) = after_scheme.split_at(end);
        match url_rest.rfind('@') {
            Some(at) => {
                let userinfo = &url_rest[..at];
                match userinfo.find(':') {
                    Some(colon) if colon + 1 < userinfo.len() => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str("***");
                        out.push_str(&url_rest[at..]);
                    }
                    _ => out.push_str(url_rest),
                }
            }
            None => out.push_str(url_rest),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banco(rows: &[(&str, &str, &str)]) -> ReferenceTable {
        ReferenceTable::build(
            "banco_",
            vec![
                ("cnpj".into(), FieldType::String),
                ("segmento".into(), FieldType::String),
                ("nome".into(), FieldType::String),
            ],
            rows.iter()
                .map(|(c, s, n)| {
                    vec![
                        Value::Str(c.to_string()),
                        Value::Str(s.to_string()),
                        Value::Str(n.to_string()),
                    ]
                })
                .collect(),
        )
    }

    /// A source whose next result the test controls; counts loads.
    #[derive(Clone, Default)]
    struct Fake {
        state: Arc<Mutex<FakeState>>,
    }

    #[derive(Default)]
    struct FakeState {
        next: Option<Result<ReferenceTable, String>>,
        /// Returned instead of `next` when set.
        error: Option<EnrichError>,
        loads: u32,
        /// The keys of each lookup.
        asked: Vec<Vec<String>>,
    }

    impl Fake {
        fn serving(table: ReferenceTable) -> Self {
            let fake = Fake::default();
            fake.set(Ok(table));
            fake
        }
        fn set(&self, next: Result<ReferenceTable, String>) {
            lock(&self.state).next = Some(next);
        }
        fn fail_with(&self, error: EnrichError) {
            lock(&self.state).error = Some(error);
        }
        fn loads(&self) -> u32 {
            lock(&self.state).loads
        }
    }

    impl ReferenceSource for Fake {
        fn load(&self) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send {
            let mut state = lock(&self.state);
            state.loads += 1;
            let result = match &state.next {
                _ if state.error.is_some() => Err(state.error.clone().expect("set")),
                Some(Ok(table)) => Ok(ReferenceTable {
                    loaded_at: SystemTime::now(),
                    ..table.clone()
                }),
                Some(Err(message)) => Err(EnrichError::Source {
                    target: self.describe(),
                    message: message.clone(),
                }),
                None => Err(EnrichError::Source {
                    target: self.describe(),
                    message: "nothing configured".into(),
                }),
            };
            async move { result }
        }
        /// The rows of `keys` in the table `load` would answer (same errors).
        fn lookup(
            &self,
            keys: &[String],
        ) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send {
            let loaded = self.load();
            let keys = keys.to_vec();
            lock(&self.state).asked.push(keys.clone());
            async move {
                let table = loaded.await?;
                let mut columns = vec![("cnpj".to_string(), FieldType::String)];
                columns.extend(table.columns.iter().cloned());
                let rows = keys
                    .iter()
                    .filter_map(|k| match table.find(k) {
                        Found::Row(r) => {
                            let mut row = vec![Value::Str(k.clone())];
                            row.extend(table.row(r));
                            Some(row)
                        }
                        _ => None,
                    })
                    .collect();
                Ok(ReferenceTable::build("", columns, rows))
            }
        }
        fn describe(&self) -> String {
            redact_url("mysql://app:s3cr3t@db.example:3306/refdb")
        }
    }

    fn partial_config(miss_timeout_ms: u64, ttl_ms: Option<u64>) -> EnrichConfig {
        EnrichConfig {
            cache: CacheMode::Partial(PartialConfig {
                max_bytes: 1 << 20,
                ttl: ttl_ms.map(Duration::from_millis),
                miss_timeout: Duration::from_millis(miss_timeout_ms),
                max_keys_per_query: 512,
            }),
            ..config(1000, 5000)
        }
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    /// What the partial cache answers for `key` now, behind `overlay`.
    fn partial_find(cache: &EnrichmentCache, overlay: &Overlay, key: &str) -> Option<Vec<Value>> {
        cache
            .with_view(overlay, |view| match view.find(key) {
                Found::Row(r) => {
                    let rows = UInt32Array::from(vec![r]);
                    let values = (0..view.columns().len())
                        .map(|c| {
                            let col = view.column(c, &rows).unwrap();
                            crate::schema::array_value(&view.columns()[c].1, col.as_ref(), 0)
                        })
                        .collect();
                    Some(values)
                }
                _ => None,
            })
            .expect("a partial cache")
    }

    #[tokio::test(start_paused = true)]
    async fn partial_cache_asks_once_per_batch_and_remembers_rows_and_absent_keys() {
        let fake = Fake::serving(banco(&[("1", "S1", "A"), ("2", "S2", "B")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), partial_config(1000, None), rx)
            .await
            .unwrap();
        assert!(cache.is_partial());
        assert_eq!(
            cache.columns(),
            vec![
                ("banco_segmento".to_string(), FieldType::String),
                ("banco_nome".to_string(), FieldType::String)
            ]
        );
        assert_eq!(fake.loads(), 1, "only the columns were read");
        let empty = Overlay::default();
        let found = cache.with_view(&empty, |view| view.find("1")).unwrap();
        assert_eq!(found, Found::Unknown);
        // One lookup for the batch's distinct missing keys.
        let overlay = cache.resolve(&keys(&["1", "9"])).await;
        assert_eq!(lock(&fake.state).asked.last().unwrap(), &keys(&["1", "9"]));
        assert_eq!(
            partial_find(&cache, &overlay, "1"),
            Some(vec![Value::Str("S1".into()), Value::Str("A".into())])
        );
        // Absorbed by the view above: later batches find both, the absent one as absent.
        let empty = Overlay::default();
        assert!(matches!(
            cache.with_view(&empty, |v| v.find("1")).unwrap(),
            Found::Row(_)
        ));
        assert_eq!(
            cache.with_view(&empty, |v| v.find("9")).unwrap(),
            Found::Absent
        );
        let stats = cache.stats();
        assert_eq!((stats.queries, stats.keys_queried, stats.rows), (1, 2, 2));
        assert!(stats.bytes > 0);
        assert_eq!(stats.mode, "partial");
    }

    #[tokio::test(start_paused = true)]
    async fn partial_entries_expire_after_write() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) =
            EnrichmentCache::start(fake.clone(), partial_config(1000, Some(2000)), rx)
                .await
                .unwrap();
        let overlay = cache.resolve(&keys(&["1"])).await;
        let empty = Overlay::default();
        cache.with_view(&overlay, |_| ()).unwrap();
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert!(matches!(
            cache.with_view(&empty, |v| v.find("1")).unwrap(),
            Found::Row(_)
        ));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            cache.with_view(&empty, |v| v.find("1")).unwrap(),
            Found::Unknown
        );
        // Asked again, it sees the dimension's new value.
        fake.set(Ok(banco(&[("1", "S1", "NEW")])));
        let overlay = cache.resolve(&keys(&["1"])).await;
        assert_eq!(
            partial_find(&cache, &overlay, "1").unwrap()[1],
            Value::Str("NEW".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_dimension_is_waited_for_up_to_the_bound_then_said() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), partial_config(3000, None), rx)
            .await
            .unwrap();
        let overlay = cache.resolve(&keys(&["1"])).await;
        cache.with_view(&overlay, |_| ()).unwrap();
        fake.set(Err("Connection refused (os error 111)".into()));
        let started = Instant::now();
        let overlay = cache.resolve(&keys(&["2"])).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(4000),
            "{waited:?}"
        );
        // What the cache holds keeps serving; the key it does not hold is unreachable, not absent.
        assert!(partial_find(&cache, &overlay, "1").is_some());
        assert_eq!(
            cache.with_view(&overlay, |v| v.find("2")).unwrap(),
            Found::Unreachable
        );
        let stats = cache.stats();
        let (_, error) = stats.down_since.clone().expect("down");
        assert!(
            error.contains("os error 111") && !error.contains("s3cr3t"),
            "{error}"
        );
        assert!(stats.query_failures >= 2, "{}", stats.query_failures);
        // Past the bound (counted from the first failure), a later batch tries twice (the
        // first attempt may meet a stale connection) and does not wait again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        let failures = stats.query_failures;
        let _ = cache.resolve(&keys(&["3"])).await;
        assert!(started.elapsed() <= Duration::from_millis(200));
        assert_eq!(cache.stats().query_failures, failures + 2);
        // Back: the watcher sees it within a second, with no record asking; then answered.
        fake.set(Ok(banco(&[("1", "S1", "A"), ("2", "S2", "B")])));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(cache.stats().down_since.is_none());
        let overlay = cache.resolve(&keys(&["2"])).await;
        assert!(partial_find(&cache, &overlay, "2").is_some());
        let stats = cache.stats();
        assert!(stats.down_since.is_none() && stats.last_error.is_none());
    }

    #[test]
    fn join_says_when_the_dimension_was_unreachable() {
        let source = "mysql://app:***@db/refdb";
        let Join::DeadLetter(reason) = join(
            Some(Found::Unreachable),
            Some("7"),
            OnMiss::DeadLetter,
            source,
        ) else {
            panic!("a dead letter");
        };
        assert!(
            reason.starts_with("enrichment: dimension unreachable: key `7`")
                && reason.contains(source),
            "{reason}"
        );
        assert_eq!(
            join(Some(Found::Unreachable), Some("7"), OnMiss::Null, source),
            Join::Null
        );
        assert_eq!(
            join(Some(Found::Unknown), Some("7"), OnMiss::Drop, source),
            Join::Pending
        );
        assert_eq!(
            join(Some(Found::Row(3)), Some("7"), OnMiss::Drop, source),
            Join::Hit(3)
        );
    }

    fn config(interval_ms: u64, first_timeout_ms: u64) -> EnrichConfig {
        EnrichConfig {
            refresh_interval: Duration::from_millis(interval_ms),
            first_load_timeout: Duration::from_millis(first_timeout_ms),
            ..EnrichConfig::default()
        }
    }

    /// The values of `key`'s row, through the one join.
    fn values(table: &ReferenceTable, key: &str) -> Option<Vec<Value>> {
        match table.join(Some(key), OnMiss::Null, "test") {
            Join::Hit(row) => Some(table.row(row)),
            _ => None,
        }
    }

    fn nome(cache: &EnrichmentCache, key: &str) -> Option<Value> {
        values(cache.snapshot().table(), key).map(|v| v[1].clone())
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_replaces_the_table_atomically() {
        let fake = Fake::serving(banco(&[("00360305", "S1", "CAIXA ECONÔMICA FEDERAL")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), config(1000, 5000), rx)
            .await
            .unwrap();
        assert_eq!(
            cache.columns(),
            vec![
                ("banco_segmento".to_string(), FieldType::String),
                ("banco_nome".to_string(), FieldType::String)
            ]
        );
        let before = cache.snapshot();
        fake.set(Ok(banco(&[
            ("00360305", "S1", "CAIXA"),
            ("60746948", "S1", "BRADESCO"),
        ])));
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(fake.loads(), 1, "no refresh before the interval");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(fake.loads(), 2);
        // The old snapshot is untouched; new snapshots see the whole new table.
        assert_eq!(values(before.table(), "60746948"), None);
        assert_eq!(before.table().len(), 1);
        assert_eq!(nome(&cache, "00360305"), Some(Value::Str("CAIXA".into())));
        assert_eq!(
            nome(&cache, "60746948"),
            Some(Value::Str("BRADESCO".into()))
        );
        cache.count_lookups(2, 1);
        let stats = cache.stats();
        assert_eq!(
            (stats.refresh_ok, stats.refresh_failures, stats.rows),
            (2, 0, 2)
        );
        assert_eq!((stats.hits, stats.misses), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_serving_then_recovers() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), config(10_000, 5000), rx)
            .await
            .unwrap();
        fake.set(Err("connection refused".into()));
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        let stats = cache.stats();
        assert_eq!((stats.refresh_ok, stats.refresh_failures), (1, 1));
        assert!(stats.last_error.unwrap().contains("connection refused"));
        assert_eq!(
            nome(&cache, "1"),
            Some(Value::Str("A".into())),
            "stale table still served"
        );
        // Retries with backoff (250-500 ms, then 500 ms-1 s: equal jitter) rather than waiting
        // a whole interval.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(cache.stats().refresh_failures, 2);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(cache.stats().refresh_failures, 3);
        // The next attempt, 1-2 s after the third failure (at most 11.5 s), succeeds.
        fake.set(Ok(banco(&[("1", "S1", "B")])));
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let stats = cache.stats();
        assert_eq!((stats.refresh_ok, stats.refresh_failures), (2, 3));
        assert_eq!(stats.last_error, None);
        assert_eq!(nome(&cache, "1"), Some(Value::Str("B".into())));
        // Back to the normal interval after recovering (the success came at 11.75 s at the
        // earliest, so the next load is not before 21.75 s).
        let loads = fake.loads();
        tokio::time::sleep(Duration::from_millis(8_000)).await;
        assert_eq!(fake.loads(), loads);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_at_the_interval() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), config(1000, 5000), rx)
            .await
            .unwrap();
        fake.set(Err("down".into()));
        // The first failure at 1 s; then a retry every 250-500 ms, then every 500 ms-1 s (the
        // 1 s interval caps the doubling): 10 s hold at least 10 more, at most 20.
        tokio::time::sleep(Duration::from_millis(11_001)).await;
        let failures = cache.stats().refresh_failures;
        assert!((11..=21).contains(&failures), "{failures}");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_with_different_columns_is_rejected() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (_tx, rx) = crate::shutdown::channel();
        let (cache, _task) = EnrichmentCache::start(fake.clone(), config(1000, 5000), rx)
            .await
            .unwrap();
        fake.set(Ok(ReferenceTable::build(
            "banco_",
            vec![
                ("cnpj".into(), FieldType::String),
                ("n".into(), FieldType::Int { ordinal: false }),
            ],
            vec![vec![Value::Str("1".into()), Value::Int(3)]],
        )));
        tokio::time::sleep(Duration::from_millis(1001)).await;
        let stats = cache.stats();
        assert_eq!(stats.refresh_failures, 1);
        let err = stats.last_error.unwrap();
        assert!(err.contains("restart") && err.contains("banco_n"), "{err}");
        assert_eq!(cache.columns().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn first_load_retries_then_fails_with_a_redacted_actionable_error() {
        let fake = Fake::default();
        fake.set(Err("Connection refused (os error 111)".into()));
        let (_tx, rx) = crate::shutdown::channel();
        let started = Instant::now();
        let err = EnrichmentCache::start(fake.clone(), config(1000, 3000), rx)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(3000));
        // Delays of 100-200, 200-400, 400-800, 800-1600 ms (equal jitter): the fourth attempt
        // starts by 1.4 s, the fifth by 3 s unless every delay was its longest, the sixth
        // never (at least 1.5 + 1.6 s).
        let loads = fake.loads();
        assert!((4..=5).contains(&loads), "{loads}");
        let msg = err.to_string();
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let attempts = format!("{loads} attempts");
        for needle in [
            "app:***@db.example:3306/refdb",
            "make up",
            "MYSQL_URL",
            &attempts,
            "os error 111",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in {msg}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_load_succeeds_after_retries() {
        let fake = Fake::default();
        fake.set(Err("not yet".into()));
        let (_tx, rx) = crate::shutdown::channel();
        let starting = tokio::spawn({
            let fake = fake.clone();
            async move { EnrichmentCache::start(fake, config(1000, 30_000), rx).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        fake.set(Ok(banco(&[("1", "S1", "A")])));
        let (cache, _task) = starting.await.unwrap().unwrap();
        // Attempts at 0, 0.1-0.2 s, 0.3-0.6 s, then 0.7-1.4 s: the first after 0.5 s loads.
        assert!((3..=4).contains(&fake.loads()), "{}", fake.loads());
        assert_eq!(cache.snapshot().table().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_refresh_and_first_load() {
        let fake = Fake::serving(banco(&[("1", "S1", "A")]));
        let (tx, rx) = crate::shutdown::channel();
        let (_cache, task) = EnrichmentCache::start(fake.clone(), config(1000, 5000), rx)
            .await
            .unwrap();
        tx.trigger();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.loads(), 1);

        let down = Fake::default();
        let (tx, rx) = crate::shutdown::channel();
        drop(tx);
        let err = EnrichmentCache::start(down, config(1000, 60_000), rx)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrichError::Cancelled { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_first_load_error_fails_at_once() {
        let fake = Fake::default();
        fake.fail_with(EnrichError::Query {
            target: fake.describe(),
            query: "SELECT cnpj FROM nao_existe".into(),
            message: "Table 'db.nao_existe' doesn't exist".into(),
            code: Some(1146),
        });
        let (_tx, rx) = crate::shutdown::channel();
        let started = Instant::now();
        let err = EnrichmentCache::start(fake.clone(), config(1000, 30_000), rx)
            .await
            .unwrap_err();
        assert_eq!(fake.loads(), 1, "not retried");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(matches!(err, EnrichError::Query { .. }), "{err}");
        assert!(err.to_string().contains("nao_existe"), "{err}");
    }

    #[test]
    fn first_load_verdicts() {
        let target = || "mysql://u:***@h/d".to_string();
        let connect = |code| EnrichError::Connect {
            target: target(),
            message: "x".into(),
            code,
        };
        let query = |code| EnrichError::Query {
            target: target(),
            query: "q".into(),
            message: "x".into(),
            code,
        };
        assert_eq!(first_load_verdict(&connect(None)), Verdict::Transient);
        assert_eq!(first_load_verdict(&connect(Some(1045))), Verdict::Permanent);
        assert_eq!(first_load_verdict(&connect(Some(1040))), Verdict::Transient);
        assert_eq!(first_load_verdict(&query(Some(1064))), Verdict::Permanent);
        assert_eq!(first_load_verdict(&query(Some(1146))), Verdict::Permanent);
        assert_eq!(first_load_verdict(&query(Some(1205))), Verdict::Transient);
        assert_eq!(first_load_verdict(&query(None)), Verdict::Transient);
        let timeout = EnrichError::Timeout {
            target: target(),
            what: "connecting",
            after: Duration::from_secs(1),
        };
        assert_eq!(first_load_verdict(&timeout), Verdict::Transient);
        let empty = EnrichError::NoColumns {
            target: target(),
            query: "q".into(),
        };
        assert_eq!(first_load_verdict(&empty), Verdict::Permanent);
    }

    #[test]
    fn join_applies_the_miss_policy() {
        let table = banco(&[("00360305", "S1", "CAIXA")]);
        let source = "mysql://app:***@db.example:3306/refdb";
        for policy in [OnMiss::Null, OnMiss::Drop, OnMiss::DeadLetter] {
            let Join::Hit(row) = table.join(Some("00360305"), policy, source) else {
                panic!("a hit under {policy}");
            };
            assert_eq!(
                table.row(row),
                vec![Value::Str("S1".into()), Value::Str("CAIXA".into())]
            );
        }
        assert_eq!(table.join(Some("x"), OnMiss::Null, source), Join::Null);
        assert_eq!(table.join(None, OnMiss::Null, source), Join::Null);
        assert_eq!(table.join(Some("x"), OnMiss::Drop, source), Join::Drop);
        assert_eq!(table.join(None, OnMiss::Drop, source), Join::Drop);
        // The dead-letter reasons, word for word (the consumer's dead letters carry them).
        assert_eq!(
            table.join(Some("x"), OnMiss::DeadLetter, source),
            Join::DeadLetter(
                "enrichment: key `x` not found in the reference table from \
                 mysql://app:***@db.example:3306/refdb"
                    .into()
            )
        );
        assert_eq!(
            table.join(None, OnMiss::DeadLetter, source),
            Join::DeadLetter("enrichment: the record has no key to look up".into())
        );
        // Keys are text, compared exactly: no trimming, no padding.
        assert_eq!(table.join(Some("360305"), OnMiss::Null, source), Join::Null);
        assert_eq!(
            table.join(Some("00360305 "), OnMiss::Null, source),
            Join::Null
        );
        // An empty table misses every key.
        let empty = banco(&[]);
        assert!(empty.is_empty());
        assert_eq!(
            empty.join(Some("00360305"), OnMiss::Drop, source),
            Join::Drop
        );
    }

    #[test]
    fn on_miss_parses() {
        assert_eq!("null".parse::<OnMiss>(), Ok(OnMiss::Null));
        assert_eq!("DROP".parse::<OnMiss>(), Ok(OnMiss::Drop));
        assert_eq!("dead_letter".parse::<OnMiss>(), Ok(OnMiss::DeadLetter));
        assert_eq!(
            OnMiss::DeadLetter.to_string().parse::<OnMiss>(),
            Ok(OnMiss::DeadLetter)
        );
        assert!("skip"
            .parse::<OnMiss>()
            .unwrap_err()
            .contains("dead-letter"));
    }

    #[test]
    fn build_skips_null_keys_and_counts_duplicates() {
        let t = ReferenceTable::build(
            "p_",
            vec![
                ("k".into(), FieldType::Int { ordinal: false }),
                ("v".into(), FieldType::String),
            ],
            vec![
                vec![Value::Int(7), Value::Str("a".into())],
                vec![Value::Null, Value::Str("b".into())],
                vec![Value::Int(7), Value::Str("c".into())],
            ],
        );
        assert_eq!(t.columns, vec![("p_v".to_string(), FieldType::String)]);
        assert_eq!(values(&t, "7"), Some(vec![Value::Str("c".into())]));
        assert_eq!((t.null_keys, t.duplicate_keys, t.len()), (1, 1, 1));
    }

    #[test]
    fn mysql_types_map_to_field_types() {
        use ColumnType::*;
        assert_eq!(
            field_type_of(MYSQL_TYPE_LONGLONG),
            FieldType::Int { ordinal: false }
        );
        assert_eq!(field_type_of(MYSQL_TYPE_NEWDECIMAL), FieldType::Float);
        assert!(matches!(
            field_type_of(MYSQL_TYPE_DATE),
            FieldType::Date { .. }
        ));
        assert!(matches!(
            field_type_of(MYSQL_TYPE_TIMESTAMP),
            FieldType::Timestamp { .. }
        ));
        assert!(matches!(
            field_type_of(MYSQL_TYPE_DATETIME),
            FieldType::Timestamp { .. }
        ));
        assert_eq!(field_type_of(MYSQL_TYPE_STRING), FieldType::String);
        assert_eq!(field_type_of(MYSQL_TYPE_VAR_STRING), FieldType::String);
        assert_eq!(field_type_of(MYSQL_TYPE_JSON), FieldType::String);
    }

    #[test]
    fn converts_text_and_binary_protocol_values() {
        use mysql_async::Value as M;
        let b = |s: &str| M::Bytes(s.as_bytes().to_vec());
        let int = FieldType::Int { ordinal: false };
        let ts = field_type_of(ColumnType::MYSQL_TYPE_DATETIME);
        let date = field_type_of(ColumnType::MYSQL_TYPE_DATE);
        assert_eq!(convert_value(&int, false, b("-42")), Ok(Value::Int(-42)));
        assert_eq!(convert_value(&int, false, M::UInt(7)), Ok(Value::Int(7)));
        assert!(convert_value(&int, true, b("18446744073709551615")).is_err());
        assert!(convert_value(&int, false, b("x"))
            .unwrap_err()
            .1
            .contains("integer"));
        assert_eq!(
            convert_value(&FieldType::Float, false, b("54.79")),
            Ok(Value::Float(54.79))
        );
        assert_eq!(
            convert_value(&FieldType::Float, false, M::Double(1.5)),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            convert_value(&ts, false, b("2026-01-02 03:04:05")),
            Ok(Value::Timestamp(1_767_323_045_000_000))
        );
        assert_eq!(
            convert_value(&ts, false, b("2026-01-02 03:04:05.250000")),
            Ok(Value::Timestamp(1_767_323_045_250_000))
        );
        assert_eq!(
            convert_value(&ts, false, M::Date(2026, 1, 2, 3, 4, 5, 0)),
            Ok(Value::Timestamp(1_767_323_045_000_000))
        );
        assert_eq!(
            convert_value(&ts, false, b("0000-00-00 00:00:00")),
            Ok(Value::Null)
        );
        assert_eq!(
            convert_value(&date, false, b("1970-01-11")),
            Ok(Value::Date(10))
        );
        assert_eq!(
            convert_value(&date, false, M::Date(1970, 1, 2, 0, 0, 0, 0)),
            Ok(Value::Date(1))
        );
        assert_eq!(
            convert_value(&FieldType::String, false, b("00360305")),
            Ok(Value::Str("00360305".into()))
        );
        assert_eq!(
            convert_value(&FieldType::String, false, b("CAIXA ECONÔMICA ")),
            Ok(Value::Str("CAIXA ECONÔMICA ".into()))
        );
        assert!(convert_value(&FieldType::String, false, M::Bytes(vec![0xff])).is_err());
        assert_eq!(
            convert_value(&FieldType::String, false, M::NULL),
            Ok(Value::Null)
        );
        assert_eq!(
            convert_value(&FieldType::String, false, M::Time(true, 1, 2, 3, 4, 0)),
            Ok(Value::Str("-26:03:04".into()))
        );
    }

    #[test]
    fn mysql_source_describes_itself_without_the_password() {
        let cfg = EnrichConfig {
            mysql_url: "mysql://reclamacoes:p%40ss@127.0.0.1:3306/reclamacoes_db".into(),
            ..EnrichConfig::default()
        };
        let source = MySqlSource::new(&cfg).unwrap();
        assert_eq!(
            source.describe(),
            "mysql://reclamacoes:***@127.0.0.1:3306/reclamacoes_db"
        );
        let bad = EnrichConfig {
            mysql_url: "postgres://u:topsecret@h/db".into(),
            ..EnrichConfig::default()
        };
        let err = MySqlSource::new(&bad).unwrap_err().to_string();
        assert!(
            !err.contains("topsecret") && err.contains("u:***@h/db"),
            "{err}"
        );
    }

    #[test]
    fn redact_url_cases() {
        assert_eq!(
            redact_url("mysql://reclamacoes:reclamacoes@127.0.0.1:3306/reclamacoes_db"),
            "mysql://reclamacoes:***@127.0.0.1:3306/reclamacoes_db"
        );
        // No password, no user info, not a URL: unchanged.
        for same in [
            "mysql://reclamacoes@127.0.0.1/db",
            "mysql://127.0.0.1:3306/db",
            "kafka://localhost:9092",
            "localhost:9092",
            "user:pass@host but no scheme",
            "",
            "ação: não é URL",
        ] {
            assert_eq!(redact_url(same), same);
        }
        // Special characters, raw or percent-encoded; `@` and `/` inside the password.
        assert_eq!(
            redact_url("mysql://u:p%40ss%2Fw0rd@h:1/d"),
            "mysql://u:***@h:1/d"
        );
        assert_eq!(
            redact_url("mysql://u:p@ss/w:rd#?@h:1/d?x=1"),
            "mysql://u:***@h:1/d?x=1"
        );
        assert_eq!(
            redact_url("mysql://u:çã€!$&'()*+,;=@h/d"),
            "mysql://u:***@h/d"
        );
        // Empty password: nothing to hide.
        assert_eq!(redact_url("mysql://u:@h/d"), "mysql://u:@h/d");
        // Inside a message, several URLs, whitespace-delimited.
        assert_eq!(
            redact_url("cannot reach `mysql://a:b@h/d` nor sasl_ssl://k:secret@broker:9093 now"),
            "cannot reach `mysql://a:***@h/d` nor sasl_ssl://k:***@broker:9093 now"
        );
    }
}
