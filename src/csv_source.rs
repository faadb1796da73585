//! The CSV source: finds input files, detects each file's encoding and delimiter, and turns rows
//! into typed values with the [`Schema`], or into [`Reject`]s with their location.
//!
//! ```text
//!  file ──▶ encoding (BOM / valid UTF-8 / Windows-1252) ──▶ UTF-8 text ──▶ csv::Reader
//!       ──▶ header check against the schema ──▶ per row: typed values | Reject{file,line,reason,raw}
//! ```
//!
//! Reading is blocking (the `csv` crate measured ~4x faster than `csv-async` here); the producer
//! runs [`CsvFile::for_each_row`] in `spawn_blocking` and hands rows over a bounded channel.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use encoding_rs::{UTF_8, WINDOWS_1252};
use encoding_rs_io::DecodeReaderBytesBuilder;

use crate::schema::{Schema, SchemaError, Value};

/// Errors that stop a whole file (a bad row is a [`Reject`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}. Check that the file exists and is readable")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid glob pattern: {reason}")]
    Glob { path: String, reason: String },
    #[error("{path}: no such file, directory or matching glob; check the path")]
    NotFound { path: String },
    #[error(transparent)]
    Header(#[from] SchemaError),
    #[error("{path}: CSV error at line {line}: {reason}")]
    Csv {
        path: String,
        line: u64,
        reason: String,
    },
}

/// Text encodings we read (`--encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    Utf8,
    #[value(alias = "cp1252", alias = "windows-1252", alias = "latin1")]
    Windows1252,
}

/// How to read the CSV files.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub schema: Arc<Schema>,
    /// Overrides encoding detection.
    pub encoding: Option<Encoding>,
    /// Overrides delimiter detection.
    pub delimiter: Option<u8>,
}

/// A row that was not sent, with where it was and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reject {
    pub file: String,
    pub line: u64,
    pub reason: String,
    /// The row's text as read (fields re-joined with the delimiter), at most
    /// [`MAX_REJECT_RAW_BYTES`] bytes.
    pub raw: String,
}

/// One decoded row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub values: Vec<Value>,
}

/// Expands the command-line paths: files as given, directories to their `*.csv` in name order,
/// anything else as a glob (matches in name order). Duplicates are removed, first one wins.
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SourceError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let mut found: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .map_err(|source| SourceError::Io {
                    path: shown.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                })
                .collect()
        } else if path.is_file() {
            vec![path.clone()]
        } else {
            glob::glob(&shown)
                .map_err(|e| SourceError::Glob {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect()
        };
        if found.is_empty() && !path.is_dir() {
            return Err(SourceError::NotFound { path: shown });
        }
        found.sort();
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Detects a file's encoding: a UTF-8 BOM or fully valid UTF-8 means UTF-8, anything else is
/// read as Windows-1252 (every byte decodes, so nothing is lost).
pub fn detect_encoding(path: &Path) -> Result<Encoding, SourceError> {
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    detect_encoding_from(file).map_err(io)
}

/// [`detect_encoding`] over any reader (read to its end unless invalid UTF-8 shows up first).
pub fn detect_encoding_from(mut reader: impl Read) -> std::io::Result<Encoding> {
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(if carry.is_empty() {
                Encoding::Utf8
            } else {
                Encoding::Windows1252
            });
        }
        carry.extend_from_slice(&buf[..n]);
        match std::str::from_utf8(&carry) {
            Ok(_) => carry.clear(),
            Err(e) if e.error_len().is_none() => {
                // A multi-byte sequence cut by the chunk boundary: keep its start.
                let keep = carry.split_off(e.valid_up_to());
                carry = keep;
            }
            Err(_) => return Ok(Encoding::Windows1252),
        }
    }
}

/// Picks the delimiter that appears most often in the header line, outside quotes.
pub fn detect_delimiter(header_line: &str) -> u8 {
    let mut counts = [0usize; 4];
    let candidates = [b';', b',', b'\t', b'|'];
    let mut in_quotes = false;
    for b in header_line.bytes() {
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            if let Some(i) = candidates.iter().position(|&c| c == b) {
                counts[i] += 1;
            }
        }
    }
    let best = (0..4).max_by_key(|&i| (counts[i], 4 - i)).unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        candidates[best]
    }
}

/// Counts bytes read from the underlying file, for progress reporting.
struct CountingReader<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One input file, opened with its detected encoding and delimiter.
pub struct CsvFile {
    pub path: PathBuf,
    pub encoding: Encoding,
    pub delimiter: u8,
}

/// What reading a file produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileStats {
    pub rows: u64,
    pub rejected: u64,
    /// The file had no header line at all (0 bytes or only blank lines).
    pub empty: bool,
}

impl CsvFile {
    /// Detects encoding and delimiter (unless overridden).
    pub fn open(path: &Path, config: &SourceConfig) -> Result<CsvFile, SourceError> {
        let encoding = match config.encoding {
            Some(e) => e,
            None => detect_encoding(path)?,
        };
        let delimiter = match config.delimiter {
            Some(d) => d,
            None => {
                let reader = decoded_reader(open_file(path)?, encoding, Arc::default());
                detect_delimiter_from(reader).map_err(|source| SourceError::Io {
                    path: path.display().to_string(),
                    source,
                })?
            }
        };
        Ok(CsvFile {
            path: path.to_path_buf(),
            encoding,
            delimiter,
        })
    }

    /// Reads every row, calling `on_row` with typed values or a reject. Stops early (returning
    /// the stats so far) when `stop` is set or `on_row` returns false. `skip_through_line` skips
    /// rows that start at or before that line (resume).
    pub fn for_each_row(
        &self,
        schema: &Schema,
        bytes_read: Arc<AtomicU64>,
        stop: &AtomicBool,
        skip_through_line: u64,
        on_row: impl FnMut(Result<Row, Reject>) -> bool,
    ) -> Result<FileStats, SourceError> {
        let shown = self.path.display().to_string();
        let reader = decoded_reader(open_file(&self.path)?, self.encoding, bytes_read);
        read_rows(
            reader,
            &shown,
            self.delimiter,
            schema,
            stop,
            skip_through_line,
            on_row,
        )
    }
}

/// Reads CSV `bytes` held in memory exactly as [`CsvFile::open`] + [`CsvFile::for_each_row`]
/// read a file with those bytes (encoding and delimiter detected unless `config` overrides
/// them); `shown` names it in rejects and errors. Used by the fuzz targets and tests.
pub fn for_each_row_in_bytes(
    bytes: &[u8],
    shown: &str,
    config: &SourceConfig,
    on_row: impl FnMut(Result<Row, Reject>) -> bool,
) -> Result<FileStats, SourceError> {
    let io = |source| SourceError::Io {
        path: shown.to_string(),
        source,
    };
    let encoding = match config.encoding {
        Some(e) => e,
        None => detect_encoding_from(bytes).map_err(io)?,
    };
    let delimiter = match config.delimiter {
        Some(d) => d,
        None => detect_delimiter_from(decoded_reader(
            std::io::Cursor::new(bytes.to_vec()),
            encoding,
            Arc::default(),
        ))
        .map_err(io)?,
    };
    let reader = decoded_reader(
        std::io::Cursor::new(bytes.to_vec()),
        encoding,
        Arc::default(),
    );
    read_rows(
        reader,
        shown,
        delimiter,
        &config.schema,
        &AtomicBool::new(false),
        0,
        on_row,
    )
}

/// The row loop shared by [`CsvFile::for_each_row`] and [`for_each_row_in_bytes`]: `reader`
/// yields UTF-8 text (see [`decoded_reader`]).
fn read_rows(
    reader: impl Read,
    shown: &str,
    delimiter: u8,
    schema: &Schema,
    stop: &AtomicBool,
    skip_through_line: u64,
    mut on_row: impl FnMut(Result<Row, Reject>) -> bool,
) -> Result<FileStats, SourceError> {
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(reader);
    let mut record = csv::StringRecord::new();
    let mut stats = FileStats::default();
    let read = |csv: &mut csv::Reader<_>, record: &mut csv::StringRecord| {
        csv.read_record(record).map_err(|e| SourceError::Csv {
            path: shown.to_string(),
            line: e.position().map_or(0, |p| p.line()),
            reason: e.to_string(),
        })
    };
    if !read(&mut csv, &mut record)? {
        stats.empty = true;
        return Ok(stats);
    }
    let header: Vec<&str> = record.iter().collect();
    let positions = schema.match_header(shown, &header)?;
    let mut columns = header.len();
    if header.last().is_some_and(|h| h.trim().is_empty()) {
        columns -= 1;
    }
    let delimiter_char = char::from(delimiter);
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ok = match csv.read_record(&mut record) {
            Ok(true) => true,
            Ok(false) => break,
            Err(e) => {
                // A broken record (e.g. invalid UTF-8 in a file forced to UTF-8): reject it
                // and go on with the next one.
                let line = e.position().map_or(0, |p| p.line());
                stats.rejected += 1;
                let keep_going = on_row(Err(Reject {
                    file: shown.to_string(),
                    line,
                    reason: format!("unreadable row: {e}"),
                    raw: String::new(),
                }));
                if !keep_going {
                    break;
                }
                continue;
            }
        };
        debug_assert!(ok);
        let line = record.position().map_or(0, |p| p.line());
        if line <= skip_through_line {
            continue;
        }
        let mut fields = record.len();
        // The empty column left by a trailing delimiter is not data.
        if fields > columns && record.get(fields - 1).is_some_and(str::is_empty) {
            fields -= 1;
        }
        let outcome = if fields != columns {
            Err(format!("expected {columns} columns, found {fields}"))
        } else {
            let mut values = Vec::with_capacity(positions.len());
            let mut failure = None;
            for (i, &col) in positions.iter().enumerate() {
                match schema.parse_cell(i, &record[col]) {
                    Ok(v) => values.push(v),
                    Err(e) => {
                        failure = Some(format!("column {}: {e}", col + 1));
                        break;
                    }
                }
            }
            match failure {
                None => Ok(values),
                Some(reason) => Err(reason),
            }
        };
        let keep_going = match outcome {
            Ok(values) => {
                stats.rows += 1;
                on_row(Ok(Row { line, values }))
            }
            Err(reason) => {
                stats.rejected += 1;
                let raw = bounded_raw(
                    record
                        .iter()
                        .collect::<Vec<_>>()
                        .join(&delimiter_char.to_string()),
                );
                on_row(Err(Reject {
                    file: shown.to_string(),
                    line,
                    reason,
                    raw,
                }))
            }
        };
        if !keep_going {
            break;
        }
    }
    Ok(stats)
}

/// Longest `raw` text kept in a [`Reject`] (a 10 MB broken line must not become a 10 MB line
/// in the rejects file); longer text is cut at a character boundary and ends with `…`.
pub const MAX_REJECT_RAW_BYTES: usize = 4096;

fn bounded_raw(mut raw: String) -> String {
    if raw.len() > MAX_REJECT_RAW_BYTES {
        let mut cut = MAX_REJECT_RAW_BYTES;
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        raw.truncate(cut);
        raw.push('…');
    }
    raw
}

fn open_file(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// UTF-8 text of `input` read in `encoding`, counting the raw bytes read into `counter`.
fn decoded_reader(
    input: impl Read + Send + 'static,
    encoding: Encoding,
    counter: Arc<AtomicU64>,
) -> Box<dyn Read + Send> {
    let counted = CountingReader {
        inner: BufReader::with_capacity(256 * 1024, input),
        counter,
    };
    match encoding {
        // BOM sniffing strips a UTF-8 BOM; without one the bytes pass through.
        Encoding::Utf8 => Box::new(
            DecodeReaderBytesBuilder::new()
                .encoding(None)
                .bom_sniffing(true)
                .strip_bom(true)
                .utf8_passthru(true)
                .build(counted),
        ),
        Encoding::Windows1252 => Box::new(
            DecodeReaderBytesBuilder::new()
                .encoding(Some(WINDOWS_1252))
                .bom_override(true)
                .build(counted),
        ),
    }
}

/// The delimiter of the decoded text: [`detect_delimiter`] on its first line (read up to 64 KiB).
fn detect_delimiter_from(mut reader: impl Read) -> std::io::Result<u8> {
    let mut first = String::new();
    let mut buf = [0u8; 8192];
    // The header is the first line; 64 KiB is plenty to see it.
    while !first.contains('\n') && first.len() < 65_536 {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(detect_delimiter(first.lines().next().unwrap_or("")))
}

/// For tests and tools: the `encoding_rs` encoding of an [`Encoding`].
pub fn encoding_rs_of(e: Encoding) -> &'static encoding_rs::Encoding {
    match e {
        Encoding::Utf8 => UTF_8,
        Encoding::Windows1252 => WINDOWS_1252,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const HEADER: &str = "Ano;Trimestre;Categoria;Tipo;CNPJ IF;Instituição financeira;Índice;Quantidade de reclamações reguladas procedentes;Quantidade de reclamações reguladas - outras;Quantidade de reclamações não reguladas;Quantidade total de reclamações;Quantidade total de clientes – CCS e SCR;Quantidade de clientes – CCS;Quantidade de clientes – SCR;";

    fn write(dir: &Path, name: &str, text: &str, enc: Encoding) -> PathBuf {
        let path = dir.join(name);
        let (bytes, _, unmappable) = encoding_rs_of(enc).encode(text);
        assert!(!unmappable);
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        path
    }

    fn read_all(path: &Path) -> (Vec<Row>, Vec<Reject>, FileStats) {
        let config = SourceConfig {
            schema: Arc::new(Schema::banco_central()),
            encoding: None,
            delimiter: None,
        };
        let file = CsvFile::open(path, &config).unwrap();
        let (mut rows, mut rejects) = (vec![], vec![]);
        let stats = file
            .for_each_row(
                &config.schema,
                Arc::default(),
                &AtomicBool::new(false),
                0,
                |r| {
                    match r {
                        Ok(row) => rows.push(row),
                        Err(rej) => rejects.push(rej),
                    }
                    true
                },
            )
            .unwrap();
        (rows, rejects, stats)
    }

    #[test]
    fn reads_cp1252_with_trailing_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{HEADER}\n2021;4º;Demais bancos, financeiras;Banco/financeira;00360305;CAIXA ECONÔMICA;54,79;1;2;3;6;100;90;10;\n2021;4º;Grupo;Conglomerado; ;AGIBANK (conglomerado); ; ; ; ; ; ; ; ;\n"
        );
        let path = write(dir.path(), "a.csv", &text, Encoding::Windows1252);
        assert_eq!(detect_encoding(&path).unwrap(), Encoding::Windows1252);
        let (rows, rejects, stats) = read_all(&path);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(stats.rows, 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].values[5], Value::Str("CAIXA ECONÔMICA".into()));
        assert_eq!(
            rows[0].values[2],
            Value::Str("Demais bancos, financeiras".into())
        );
        assert_eq!(rows[1].values[4], Value::Null);
    }

    #[test]
    fn reads_utf8_bom_crlf_comma_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let header = HEADER.trim_end_matches(';').replace(';', ",");
        let text = format!(
            "\u{feff}{header}\r\n2022,1º,\"Cat; with \"\"quotes\"\"\nand newline\",Banco/financeira,12345678,\"Banco, S.A.\",\"1,5\",1,2,3,4,5,6,7\r\n"
        );
        let path = write(dir.path(), "b.csv", &text, Encoding::Utf8);
        assert_eq!(detect_encoding(&path).unwrap(), Encoding::Utf8);
        let (rows, rejects, stats) = read_all(&path);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(stats.rows, 1, "{stats:?}");
        assert_eq!(
            rows[0].values[2],
            Value::Str("Cat; with \"quotes\"\nand newline".into())
        );
        assert_eq!(rows[0].values[6], Value::Float(1.5));
    }

    #[test]
    fn bad_rows_become_rejects_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{HEADER}\n2021;1º;C;T; ;X;1,0;1;1;1;1;1;1;1;\nabc;1º;C;T; ;X;1,0;1;1;1;1;1;1;1;\n2021;1º;C;T\n2021;1º;C;T; ; ;1,0;1;1;1;1;1;1;1;\n2021;2º;C;T; ;Y; ;1;1;1;1;1;1;1;\n"
        );
        let path = write(dir.path(), "c.csv", &text, Encoding::Windows1252);
        let (rows, rejects, stats) = read_all(&path);
        assert_eq!(stats.rows, 2);
        assert_eq!(stats.rejected, 3);
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 6]);
        assert_eq!(rejects[0].line, 3);
        assert!(rejects[0].reason.contains("ano"), "{}", rejects[0].reason);
        assert!(rejects[0].raw.starts_with("abc;1º"));
        assert_eq!(rejects[1].line, 4);
        assert!(rejects[1].reason.contains("expected 14 columns, found 4"));
        assert!(rejects[2].reason.contains("instituicao_financeira"));
    }

    #[test]
    fn empty_and_header_only_files_give_zero_rows() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "e.csv", "", Encoding::Utf8);
        let (_, _, stats) = read_all(&empty);
        assert!(stats.empty);
        let header_only = write(
            dir.path(),
            "h.csv",
            &format!("{HEADER}\n"),
            Encoding::Windows1252,
        );
        let (rows, _, stats) = read_all(&header_only);
        assert!(rows.is_empty() && !stats.empty);
    }

    #[test]
    fn delimiter_detection() {
        assert_eq!(detect_delimiter("a;b;c;"), b';');
        assert_eq!(detect_delimiter("a,b,\"c;d;e\""), b',');
        assert_eq!(detect_delimiter("a\tb\tc"), b'\t');
        assert_eq!(detect_delimiter("a|b|c"), b'|');
        assert_eq!(detect_delimiter("single"), b',');
    }

    #[test]
    fn expand_inputs_orders_directory_and_rejects_missing() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.csv", "a.csv", "c.txt"] {
            File::create(dir.path().join(name)).unwrap();
        }
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec!["a.csv", "b.csv"]);
        let pattern = dir.path().join("*.csv");
        assert_eq!(expand_inputs(&[pattern]).unwrap().len(), 2);
        let err = expand_inputs(&[dir.path().join("nope.csv")]).unwrap_err();
        assert!(err.to_string().contains("nope.csv"));
    }
}
