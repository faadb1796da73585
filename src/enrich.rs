//! The enrichment cache: a reference table loaded from MySQL/MariaDB, kept in memory and
//! refreshed in the background, so that every decoded record can be joined with it by key.
//!
//! This module owns:
//! - [`EnrichConfig`]: where the table comes from (URL, query) and how often it is reloaded;
//! - [`ReferenceTable`]: one immutable load — output column names and types (from the MySQL
//!   column types), the rows as Arrow columns, and each key's row (the key is the first column
//!   of the query, as text);
//! - [`ReferenceSource`]: the boundary to the database, implemented by [`MySqlSource`] (and by
//!   fakes in tests);
//! - [`EnrichmentCache`]: the current table behind an `Arc` that is swapped atomically by a
//!   background refresh task; the consumer takes a per-batch [`EnrichSnapshot`] and never waits
//!   for a refresh. A failed refresh keeps serving the previous table;
//! - the join, one lookup and one miss policy: [`ReferenceTable::join`] looks a record's key up
//!   and applies [`OnMiss`] to a miss, answering a [`Join`] (the row, or null columns, drop, or
//!   dead letter with its reason). The consumer's decoder calls it per record and then takes
//!   each enrichment column for the whole batch at once from [`ReferenceTable::arrow`];
//! - [`redact_url`]: hides passwords in URLs before they reach logs or error messages.
//!
//! ```text
//!   MySQL ──load (timeout)──▶ ReferenceTable ──Arc swap──▶ EnrichmentCache
//!                                                             │ snapshot() per batch
//!        consumer's decoder ◀── ReferenceTable::join(key, OnMiss) per record, one `take` per column
//! ```
//!
//! Retries ([`crate::retry`]): the first load retries with jittered backoff (200 ms doubling to
//! 5 s) until `--mysql-timeout`, unless [`first_load_verdict`] calls the error permanent (a
//! query MySQL refuses, a wrong password or database, a value that cannot be converted): that
//! fails at once. A failed refresh is retried (500 ms doubling, capped at the refresh interval)
//! until it succeeds; it is never fatal, since the previous table keeps being served.
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
use arrow::array::ArrayRef;
use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::schema::{FieldType, Value};

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

/// What the join does with one record ([`ReferenceTable::join`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// The key's row in [`ReferenceTable::arrow`].
    Hit(u32),
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
        if let Some(&row) = key.and_then(|k| self.index.get(k)) {
            return Join::Hit(row);
        }
        match on_miss {
            OnMiss::Null => Join::Null,
            OnMiss::Drop => Join::Drop,
            OnMiss::DeadLetter => Join::DeadLetter(match key {
                Some(k) => {
                    format!("enrichment: key `{k}` not found in the reference table from {source}")
                }
                None => "enrichment: the record has no key to look up".to_string(),
            }),
        }
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

/// Something the reference table can be loaded from.
pub trait ReferenceSource: Send + Sync {
    /// Loads the whole table once. Implementations bound their own calls with timeouts.
    fn load(&self) -> impl Future<Output = Result<ReferenceTable, EnrichError>> + Send;
    /// Where the table comes from, safe for logs (no passwords).
    fn describe(&self) -> String;
}

/// Loads the reference table from MySQL/MariaDB with a fresh connection per load (one load per
/// refresh interval does not need a pool). The session time zone is set to UTC so `TIMESTAMP`
/// columns come back in UTC; `DATETIME` values are taken as UTC.
#[derive(Debug, Clone)]
pub struct MySqlSource {
    opts: mysql_async::Opts,
    target: String,
    query: String,
    prefix: String,
    query_timeout: Duration,
}

impl MySqlSource {
    /// Parses the URL (no connection is made yet).
    pub fn new(config: &EnrichConfig) -> Result<Self, EnrichError> {
        let target = redact_url(&config.mysql_url);
        let opts =
            mysql_async::Opts::from_url(&config.mysql_url).map_err(|e| EnrichError::BadUrl {
                url: target.clone(),
                reason: redact_url(&e.to_string()),
            })?;
        let opts = mysql_async::OptsBuilder::from_opts(opts).init(vec!["SET time_zone = '+00:00'"]);
        Ok(MySqlSource {
            opts: opts.into(),
            target,
            query: config.query.clone(),
            prefix: config.column_prefix.clone(),
            query_timeout: config.query_timeout,
        })
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
    pub hits: u64,
    pub misses: u64,
    /// Successful loads, including the first one.
    pub refresh_ok: u64,
    /// Failed refreshes (after the first load succeeded).
    pub refresh_failures: u64,
    /// When the table being served was loaded.
    pub last_refresh: SystemTime,
    /// Rows in the table being served.
    pub rows: usize,
    /// The last refresh error, cleared by the next successful refresh.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    current: RwLock<Arc<ReferenceTable>>,
    hits: AtomicU64,
    misses: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    target: String,
}

/// The in-memory enrichment table, refreshed in the background. Cheap to clone (shared state).
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
    /// Loads the table once (retrying transient errors with backoff, 200 ms doubling to 5 s,
    /// for at most `config.first_load_timeout`; a permanent one, [`first_load_verdict`], fails
    /// at once), then spawns the refresh task, which reloads every `config.refresh_interval`. A
    /// failed refresh keeps the previous table, is logged and counted, and is retried with
    /// backoff (500 ms doubling, capped at the interval). A refresh whose columns differ from
    /// the first load is rejected the same way.
    ///
    /// The task stops when `shutdown` becomes `true` or its sender is dropped; await the
    /// returned handle to wait for it.
    pub async fn start<S: ReferenceSource + 'static>(
        source: S,
        config: EnrichConfig,
        shutdown: Shutdown,
    ) -> Result<(EnrichmentCache, JoinHandle<()>), EnrichError> {
        let target = source.describe();
        let table = first_load(&source, config.first_load_timeout, &shutdown).await?;
        tracing::info!(
            source = %target,
            rows = table.len(),
            columns = %table.column_list(),
            "enrichment table loaded"
        );
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(table)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refresh_ok: AtomicU64::new(1),
            refresh_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            target,
        });
        let task = tokio::spawn(refresh_loop(
            source,
            Arc::clone(&shared),
            config.refresh_interval,
            shutdown,
        ));
        Ok((EnrichmentCache { shared }, task))
    }

    /// A consistent view of the current table; take one per batch.
    pub fn snapshot(&self) -> EnrichSnapshot {
        EnrichSnapshot {
            table: self.current(),
        }
    }

    /// Counts lookups done elsewhere (the consumer's columnar enrichment).
    pub fn count_lookups(&self, hits: u64, misses: u64) {
        self.shared.hits.fetch_add(hits, Ordering::Relaxed);
        self.shared.misses.fetch_add(misses, Ordering::Relaxed);
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
        CacheStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            refresh_ok: self.shared.refresh_ok.load(Ordering::Relaxed),
            refresh_failures: self.shared.refresh_failures.load(Ordering::Relaxed),
            last_refresh: table.loaded_at,
            rows: table.len(),
            last_error: lock(&self.shared.last_error).clone(),
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

async fn first_load<S: ReferenceSource>(
    source: &S,
    timeout: Duration,
    shutdown: &Shutdown,
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
            match tokio::time::timeout(remaining, source.load()).await {
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
        fn describe(&self) -> String {
            redact_url("mysql://app:s3cr3t@db.example:3306/refdb")
        }
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
