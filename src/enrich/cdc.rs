//! Following the dimension's changes in the server's binary log (`--enrich-cdc`), so a change
//! committed in MySQL/MariaDB reaches the records consumed a moment later, not a refresh later.
//!
//! The consumer registers as a replica (a random server id) and reads the row-based binary log
//! from where it stood when the cache was loaded ([`prepare`], before the first load, so no
//! change falls between the load and the log). Row events (insert, update, delete) of the
//! dimension table give the keys they touch (before and after images, so a key that changed is
//! both removed and added), and the cache is told ([`EnrichmentCache::changed`](super::EnrichmentCache::changed)):
//! - a **partial** cache forgets those keys; the next record that needs one asks the database
//!   again, through the same query (so the query's own logic, casts and filters, still holds).
//!   A lookup in flight that read the old row is not kept ([`super::partial::PartialCache`]'s
//!   change epochs);
//! - a **full** cache reloads the table at once (the whole table: for dimensions small enough to
//!   hold whole, that takes milliseconds).
//!
//! The position kept is that of the last complete transaction (an `XID` or `COMMIT`), so after
//! a lost connection the stream resumes there: a transaction is applied again rather than lost
//! (applying it twice does no harm: it only forgets keys or reloads).
//!
//! When the log cannot be followed — binary log off, not `ROW` format, row images not `FULL`,
//! no `REPLICATION SLAVE` / `REPLICATION CLIENT` privilege, the dimension table not found in the
//! query, or the log purged past the position while disconnected — one warning line says which
//! and what to do, and enrichment falls back to what it does without the log: the full cache's
//! periodic reload (`--refresh-interval`), the partial cache's expiry (`--enrich-cache-ttl`).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::consts::ColumnFlags;
use mysql_async::prelude::Queryable;
use mysql_async::BinlogStreamRequest;

use super::{convert_value, field_type_of, redact_url, EnrichConfig, EnrichmentCache};
use crate::retry::RetryPolicy;
use crate::schema::FieldType;
use crate::shutdown::Shutdown;

/// Reconnecting after the stream is lost: 200 ms doubling to 2 s, for as long as it takes
/// (a connection attempt is cheap; the changes wait meanwhile).
const RECONNECT: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2));
/// Bound on each setup call (connect, checks, position).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals in a row (a privilege, a position not in the log) before the log is given up.
const REFUSALS_BELIEVED: u32 = 5;

/// A place in the binary log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub pos: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// `@@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_checksum`.
type ServerLog = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Why the log cannot be followed (said in one line, then the fall-back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// What following the log needs, found before the first load.
#[derive(Debug, Clone)]
pub struct Follow {
    opts: mysql_async::Opts,
    target: String,
    database: String,
    table: String,
    /// 0-based position of the key column in the table's rows.
    key_index: usize,
    key_type: FieldType,
    key_unsigned: bool,
    start: Position,
    /// Events carry a CRC32 checksum (`binlog_checksum`).
    checksum: bool,
}

impl Follow {
    pub fn describe(&self) -> String {
        format!("{}.{} from {}", self.database, self.table, self.start)
    }
}

/// The dimension table of a query: the first table after `FROM` (`db.table`, backticks
/// allowed), or `None` when there is none. `--enrich-cdc-table` names it instead.
pub fn dimension_table(query: &str) -> Option<(Option<String>, String)> {
    let lower = query.to_ascii_lowercase();
    let mut from = None;
    let bytes = lower.as_bytes();
    let mut i = 0;
    while let Some(at) = lower[i..].find("from") {
        let start = i + at;
        let end = start + 4;
        let before_ok = start == 0 || !is_ident(bytes[start - 1]);
        let after_ok = end < bytes.len() && bytes[end].is_ascii_whitespace();
        if before_ok && after_ok {
            from = Some(end);
            break;
        }
        i = end;
    }
    let rest = query[from?..].trim_start();
    let mut parts = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut current = String::new();
    while let Some((_, c)) = chars.next() {
        match c {
            '`' => {
                for (_, c) in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                    current.push(c);
                }
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c if c.is_alphanumeric() || c == '_' || c == '$' => current.push(c),
            _ => break,
        }
    }
    parts.push(current);
    if parts.iter().any(String::is_empty) || parts.len() > 2 {
        return None;
    }
    let table = parts.pop()?;
    Some((parts.pop(), table))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'`'
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// Access denied (1227: needs a privilege; 1045, 1044, 1142), no binary log (1381), a
/// position no longer in the log (1236): no retry changes these.
fn unavailable_code(code: u16) -> bool {
    matches!(code, 1044 | 1045 | 1142 | 1227 | 1236 | 1381)
}

/// Checks that the log can be followed and finds where it ends now. `Ok(Err(..))`: it cannot
/// (say so, fall back); `Err(..)`: the database could not be asked (the caller goes on without
/// the log too, saying so).
pub async fn prepare(
    config: &EnrichConfig,
    table_flag: Option<&str>,
) -> Result<Follow, Unavailable> {
    let target = redact_url(&config.mysql_url);
    let opts = mysql_async::Opts::from_url(&config.mysql_url).map_err(|e| {
        Unavailable(format!(
            "invalid URL {target}: {}",
            redact_url(&e.to_string())
        ))
    })?;
    let (db_flag, table) = match table_flag {
        Some(t) => dimension_table(&format!("FROM {t}")),
        None => dimension_table(&config.query),
    }
    .ok_or_else(|| {
        Unavailable(
            "no table after FROM in --enrich-query; name it with --enrich-cdc-table db.table"
                .into(),
        )
    })?;
    let database = db_flag
        .or_else(|| opts.db_name().map(str::to_string))
        .ok_or_else(|| Unavailable("no database in MYSQL_URL nor in the table's name".into()))?;
    let talk = async {
        let mut conn = mysql_async::Conn::new(opts.clone()).await?;
        let vars: Option<ServerLog> = conn
            .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_checksum")
            .await?;
        let probe = format!(
            "SELECT * FROM ({}) AS enrich_dim WHERE 1 = 0",
            config.query.trim().trim_end_matches(';')
        );
        let result = conn.query_iter(probe).await?;
        let columns = result.columns().unwrap_or_else(|| Vec::new().into());
        result.drop_result().await?;
        let key = columns.first().map(|c| {
            (
                c.name_str().into_owned(),
                field_type_of(c.column_type()),
                c.flags(),
            )
        });
        let ordinal: Option<u64> = match &key {
            Some((name, ..)) => {
                conn.exec_first(
                    "SELECT ORDINAL_POSITION FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                    (database.as_str(), table.as_str(), name.as_str()),
                )
                .await?
            }
            None => None,
        };
        // MySQL 8.4 renamed SHOW MASTER STATUS; MariaDB keeps it.
        let status: Result<Option<mysql_async::Row>, _> =
            conn.query_first("SHOW MASTER STATUS").await;
        let status = match status {
            Err(e) if server_code(&e) == Some(1064) => {
                conn.query_first("SHOW BINARY LOG STATUS").await
            }
            other => other,
        }?;
        let _ = conn.disconnect().await;
        Ok::<_, mysql_async::Error>((vars, key, ordinal, status))
    };
    let (vars, key, ordinal, status) = match tokio::time::timeout(CALL_TIMEOUT, talk).await {
        Err(_) => {
            return Err(Unavailable(format!(
                "{target} did not answer within {CALL_TIMEOUT:?}"
            )))
        }
        Ok(Err(e)) => {
            let message = redact_url(&e.to_string());
            return Err(Unavailable(match server_code(&e) {
                Some(1227) => format!(
                    "the user lacks a privilege to read the binary log ({message}); GRANT \
                     REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO it"
                ),
                _ => format!("asking {target} failed: {message}"),
            }));
        }
        Ok(Ok(found)) => found,
    };
    let (log_bin, format, image, checksum) = vars.unwrap_or_default();
    if log_bin.as_deref() != Some("1") {
        return Err(Unavailable(
            "the server's binary log is off (log_bin=OFF); start it with log-bin, \
             binlog_format=ROW and a server_id (`make up` does)"
                .into(),
        ));
    }
    if !format
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("ROW"))
    {
        return Err(Unavailable(format!(
            "binlog_format is {}, not ROW; set binlog_format=ROW",
            format.unwrap_or_default()
        )));
    }
    if !image
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("FULL"))
    {
        return Err(Unavailable(format!(
            "binlog_row_image is {}, not FULL; set binlog_row_image=FULL",
            image.unwrap_or_default()
        )));
    }
    let Some((key_name, key_type, flags)) = key else {
        return Err(Unavailable(
            "the enrichment query returns no columns".into(),
        ));
    };
    let Some(ordinal) = ordinal.filter(|o| *o >= 1) else {
        return Err(Unavailable(format!(
            "the key column `{key_name}` is not a column of {database}.{table}; name the \
             dimension table with --enrich-cdc-table, its key first in the query"
        )));
    };
    let Some(status) = status else {
        return Err(Unavailable(
            "SHOW MASTER STATUS is empty: the binary log is off".into(),
        ));
    };
    let file: Option<String> = status.get(0);
    let pos: Option<u64> = status.get(1);
    let (Some(file), Some(pos)) = (file, pos) else {
        return Err(Unavailable(
            "SHOW MASTER STATUS gave no file and position".into(),
        ));
    };
    Ok(Follow {
        opts,
        target,
        database,
        table,
        key_index: (ordinal - 1) as usize,
        key_type,
        key_unsigned: flags.contains(ColumnFlags::UNSIGNED_FLAG),
        start: Position { file, pos },
        checksum: !checksum
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("NONE")),
    })
}

/// How one connection's stream ended.
enum Ended {
    Stopped,
    Lost(String),
    Unavailable(String),
}

/// Follows the log until `shutdown`, telling `cache` which keys changed; reconnects from the
/// last complete transaction. Returns when stopped, or when the log became unavailable (said).
pub async fn follow(cache: EnrichmentCache, follow: Follow, mut shutdown: Shutdown) {
    let mut at = follow.start.clone();
    let mut backoff = RECONNECT.backoff();
    let server_id = 0x5EED_0000 | (rand::random::<u32>() & 0xFFFF);
    tracing::info!(source = %follow.target, table = %format!("{}.{}", follow.database, follow.table),
        from = %at, "enrichment: following the binary log");
    cache.set_cdc_state(Some(format!("following the binary log at {at}")));
    // A server that is restarting may refuse for a moment what it will accept (the log's
    // index, the user's grants are read as it starts): a refusal is believed only after a few
    // attempts in a row.
    let mut refusals = 0;
    loop {
        let ended = tokio::select! {
            ended = stream_once(&cache, &follow, server_id, &mut at, &mut backoff) => ended,
            () = shutdown.requested() => Ended::Stopped,
        };
        if backoff.attempts() == 0 {
            refusals = 0;
        }
        let ended = match ended {
            Ended::Unavailable(reason) if refusals < REFUSALS_BELIEVED => {
                refusals += 1;
                Ended::Lost(reason)
            }
            other => other,
        };
        match ended {
            Ended::Stopped => break,
            Ended::Unavailable(reason) => {
                tracing::warn!(source = %follow.target, "enrichment: not following the binary \
                    log any more: {reason}; falling back to periodic reload (--refresh-interval, \
                    --enrich-cache-ttl)");
                cache.set_cdc_state(Some(format!("not following the binary log: {reason}")));
                break;
            }
            Ended::Lost(reason) => {
                let delay = backoff
                    .next_delay(Duration::ZERO)
                    .unwrap_or(Duration::from_secs(5));
                tracing::warn!(source = %follow.target, resume_at = %at, retry_in = ?delay,
                    error = %reason, "enrichment: binary log stream lost; reconnecting");
                cache.set_cdc_state(Some(format!(
                    "reconnecting to the binary log at {at}: {reason}"
                )));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.requested() => break,
                }
            }
        }
    }
}

async fn stream_once(
    cache: &EnrichmentCache,
    follow: &Follow,
    server_id: u32,
    at: &mut Position,
    backoff: &mut crate::retry::Backoff,
) -> Ended {
    let lost = |e: mysql_async::Error| match server_code(&e) {
        Some(code) if unavailable_code(code) => Ended::Unavailable(redact_url(&e.to_string())),
        _ => Ended::Lost(redact_url(&e.to_string())),
    };
    let conn = match tokio::time::timeout(CALL_TIMEOUT, mysql_async::Conn::new(follow.opts.clone()))
        .await
    {
        Err(_) => return Ended::Lost(format!("connecting did not finish within {CALL_TIMEOUT:?}")),
        Ok(Err(e)) => return lost(e),
        Ok(Ok(conn)) => conn,
    };
    let file = at.file.clone();
    let request = BinlogStreamRequest::new(server_id)
        .with_filename(file.as_bytes())
        .with_pos(at.pos);
    let mut stream = match conn.get_binlog_stream(request).await {
        Ok(stream) => stream,
        Err(e) => return lost(e),
    };
    let mut current_file = at.file.clone();
    let mut first = true;
    // Until the format description arrives, the reader cannot take checksums off.
    let mut described = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => return lost(e),
        };
        if first {
            first = false;
            backoff.reset();
            cache.set_cdc_state(Some(format!("following the binary log at {at}")));
        }
        let log_pos = u64::from(event.header().log_pos());
        let data = match event.read_data() {
            Ok(Some(data)) => data,
            Ok(None) => continue,
            Err(e) => {
                return Ended::Lost(format!("an event of the binary log could not be read: {e}"))
            }
        };
        match data {
            EventData::FormatDescriptionEvent(_) => described = true,
            EventData::RotateEvent(rotate) => {
                let raw = rotate.name_raw();
                let raw = if follow.checksum && !described && raw.len() > 4 {
                    &raw[..raw.len() - 4]
                } else {
                    raw
                };
                current_file = log_file_name(&String::from_utf8_lossy(raw));
                *at = Position {
                    file: current_file.clone(),
                    pos: rotate.position(),
                };
            }
            EventData::XidEvent(_) => {
                *at = Position {
                    file: current_file.clone(),
                    pos: log_pos,
                };
            }
            EventData::QueryEvent(query) => {
                let text = query.query();
                let t = text.trim();
                // End of a transaction (COMMIT) or a statement outside one (DDL).
                if log_pos > 0 && !t.eq_ignore_ascii_case("BEGIN") {
                    *at = Position {
                        file: current_file.clone(),
                        pos: log_pos,
                    };
                }
            }
            EventData::RowsEvent(rows) => {
                let Some(tme) = stream.get_tme(rows.table_id()) else {
                    continue;
                };
                if tme.database_name() != follow.database.as_str()
                    || tme.table_name() != follow.table.as_str()
                {
                    continue;
                }
                let keys = changed_keys(&rows, tme, follow);
                match keys {
                    Ok(keys) => cache.changed(keys),
                    Err(reason) => return Ended::Lost(reason),
                }
            }
            _ => {}
        }
    }
    Ended::Lost("the server closed the binary log stream".into())
}

/// A log file's name as a rotate event gives it (its checksum taken off before, see
/// `stream_once`): plain ASCII, so anything else ends it.
fn log_file_name(raw: &str) -> String {
    raw.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

/// The keys a rows event touches: of the row before (update, delete) and after (insert,
/// update).
fn changed_keys(
    rows: &RowsEventData<'_>,
    tme: &mysql_async::binlog::events::TableMapEvent<'_>,
    follow: &Follow,
) -> Result<Vec<String>, String> {
    let mut keys = BTreeSet::new();
    for row in rows.rows(tme) {
        let (before, after) = row.map_err(|e| format!("a row event could not be read: {e}"))?;
        for mut image in [before, after].into_iter().flatten() {
            let Some(value) = image.take(follow.key_index) else {
                continue;
            };
            let value = match mysql_async::Value::try_from(value) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Ok(v) = convert_value(&follow.key_type, follow.key_unsigned, value) {
                if let Some(key) = v.as_key() {
                    keys.insert(key);
                }
            }
        }
    }
    Ok(keys.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dimension_table_is_read_from_the_query() {
        let t = |q: &str| dimension_table(q);
        assert_eq!(
            t("SELECT cnpj, segmento, nome FROM bancos"),
            Some((None, "bancos".into()))
        );
        assert_eq!(
            t("select k, v from `reclamacoes_db`.`dim x` where v > 0"),
            Some((Some("reclamacoes_db".into()), "dim x".into()))
        );
        assert_eq!(
            t("SELECT id, fromage FROM\n  db.queijos AS q"),
            Some((Some("db".into()), "queijos".into()))
        );
        assert_eq!(t("SELECT 1"), None);
        assert_eq!(t("SELECT x FROM (SELECT 1) AS y"), None);
    }

    #[test]
    fn a_rotate_name_ends_with_its_ascii() {
        assert_eq!(
            log_file_name("mariadb-bin.000004\u{fffd}\u{fffd},8"),
            "mariadb-bin.000004"
        );
        assert_eq!(log_file_name("binlog.000123"), "binlog.000123");
    }

    #[test]
    fn codes_no_retry_fixes() {
        assert!(unavailable_code(1227) && unavailable_code(1236));
        assert!(!unavailable_code(2013) && !unavailable_code(1040));
    }
}
