//! The CSV source: finds input files, detects each file's encoding and delimiter, splits a file
//! into chunks of whole records, and turns rows into typed values with the [`Schema`], or into
//! [`Reject`]s with their location.
//!
//! ```text
//!  file ──▶ encoding (BOM / valid UTF-8 / Windows-1252) ──▶ ChunkReader: raw bytes cut after a
//!       record-ending LF ──▶ parse_chunk (csv::ByteRecord, cells decoded to UTF-8 once)
//!       ──▶ header check against the schema ──▶ per row: DecodedRecord | Reject{file,line,reason,raw}
//! ```
//!
//! Why chunks are parsed right: structural CSV bytes are ASCII, and neither Windows-1252 nor
//! UTF-8 uses an ASCII byte inside another character, so the raw bytes split into the same
//! records and fields as the decoded text (files that need whole-stream decoding first — UTF-16,
//! BOM overrides — are decoded first, see [`TextEncoding`]). A chunk starts in the state "start
//! of a record", exactly the state a single reader would be in there, so parsing chunks one by
//! one or in parallel gives the rows of one reader over the file. Line numbers are the physical
//! line a row starts on (newlines inside quoted fields and blank lines counted).
//!
//! Reading is blocking; the producer parses chunks on worker threads ([`crate::produce`]);
//! [`CsvFile::for_each_row`] is the same parsing, sequential, with owned [`Value`]s.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Windows1252,
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "utf8" | "utf-8" => Ok(Encoding::Utf8),
            "windows1252" | "windows-1252" | "cp1252" | "latin1" => Ok(Encoding::Windows1252),
            other => Err(format!(
                "`{other}` is not an encoding we read; use utf8 or windows1252 (cp1252)"
            )),
        }
    }
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
    /// The encoding was detected, so the whole file is known to be valid UTF-8 when it is UTF-8.
    detected: bool,
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
            detected: config.encoding.is_none(),
        })
    }

    /// The file as chunks of whole records (see [`ChunkReader`]), counting the bytes read from
    /// disk into `bytes_read`.
    pub fn chunks(&self, bytes_read: Arc<AtomicU64>) -> Result<ChunkReader, SourceError> {
        let io = |source| SourceError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut head = [0u8; 3];
        let n = read_up_to(&mut open_file(&self.path)?, &mut head).map_err(io)?;
        let text = TextEncoding::of(self.encoding, self.detected, self.delimiter, &head[..n]);
        let skip = match text {
            Some(_) if head[..n].starts_with(UTF8_BOM) => UTF8_BOM.len(),
            _ => 0,
        };
        let counted = CountingReader {
            inner: open_file(&self.path)?,
            counter: bytes_read,
        };
        let mut reader = ChunkReader::new(
            match text {
                Some(_) => Box::new(counted),
                None => decoded_reader(counted, self.encoding, Arc::default()),
            },
            text.unwrap_or(TextEncoding::Utf8),
            self.delimiter,
        );
        reader.skip_bytes(skip).map_err(io)?;
        Ok(reader)
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
        let chunks = self.chunks(bytes_read)?;
        read_rows(chunks, &shown, schema, stop, skip_through_line, on_row)
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// How the bytes a [`ChunkReader`] yields become text: each byte is one Windows-1252 character,
/// or the bytes are UTF-8 (validated per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Cp1252,
    Utf8,
}

impl TextEncoding {
    /// The encoding in which a file starting with `head` can be split and parsed as raw bytes
    /// with the same result as decoding it whole first (`decoded_reader`), or `None` when it
    /// must be decoded first: a UTF-16 BOM, a UTF-8 BOM that overrides Windows-1252 or that
    /// starts a file forced to UTF-8 (both decode invalid bytes to U+FFFD), a non-ASCII
    /// delimiter. Every structural CSV byte (delimiter, quote, CR, LF) is ASCII, and neither
    /// Windows-1252 nor UTF-8 ever encodes another character with an ASCII byte, so records and
    /// fields split the same on raw bytes as on decoded text.
    fn of(encoding: Encoding, detected: bool, delimiter: u8, head: &[u8]) -> Option<TextEncoding> {
        if !delimiter.is_ascii() || head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
            return None;
        }
        let utf8_bom = head.starts_with(UTF8_BOM);
        match encoding {
            Encoding::Windows1252 if !utf8_bom => Some(TextEncoding::Cp1252),
            // Detected UTF-8 is valid throughout: stripping the BOM is all decoding would do.
            Encoding::Utf8 if !utf8_bom || detected => Some(TextEncoding::Utf8),
            _ => None,
        }
    }
}

/// UTF-8 of every Windows-1252 byte, taken from `encoding_rs` (the WHATWG mapping the whole-file
/// decoder uses, so both agree on the five undefined bytes too).
fn cp1252_table() -> &'static [([u8; 3], u8); 256] {
    static TABLE: std::sync::OnceLock<[([u8; 3], u8); 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [([0u8; 3], 0u8); 256];
        for (b, entry) in table.iter_mut().enumerate() {
            let byte = [b as u8];
            let (text, _) = WINDOWS_1252.decode_without_bom_handling(&byte);
            let bytes = text.as_bytes();
            entry.0[..bytes.len()].copy_from_slice(bytes);
            entry.1 = bytes.len() as u8;
        }
        table
    })
}

/// Reads a file as chunks of whole CSV records, so that chunks can be parsed independently (in
/// parallel) with the same result as one reader over the whole file.
///
/// A chunk ends right after an LF that ends a record: outside a quoted field, found by the same
/// state machine as the `csv` crate's (quote only at the start of a field, `""` inside quotes),
/// and skipped entirely when the bytes hold no quote at all (the common case: one `memchr`). A
/// record longer than the target size makes a longer chunk. The first chunk of a file always
/// holds at least one record (the header).
pub struct ChunkReader {
    src: Box<dyn Read + Send>,
    text: TextEncoding,
    delimiter: u8,
    buf: Vec<u8>,
    eof: bool,
    /// Physical line (1-based) of `buf[0]`.
    next_line: u64,
    /// Whether a chunk was already returned (it held the header).
    started: bool,
    /// Chunk size used by [`CsvFile::for_each_row`].
    chunk_target: usize,
}

/// Whole records of one file, and the physical line of its first byte.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub first_line: u64,
}

const READ_BYTES: usize = 64 * 1024;

impl ChunkReader {
    fn new(src: Box<dyn Read + Send>, text: TextEncoding, delimiter: u8) -> ChunkReader {
        ChunkReader {
            src,
            text,
            delimiter,
            buf: Vec::new(),
            eof: false,
            next_line: 1,
            started: false,
            chunk_target: ROWS_CHUNK_BYTES,
        }
    }

    /// A reader over bytes held in memory that are already raw `text` (no BOM), for tests.
    pub fn from_bytes(bytes: Vec<u8>, text: TextEncoding, delimiter: u8) -> ChunkReader {
        ChunkReader::new(Box::new(std::io::Cursor::new(bytes)), text, delimiter)
    }

    pub fn text(&self) -> TextEncoding {
        self.text
    }

    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    fn skip_bytes(&mut self, n: usize) -> std::io::Result<()> {
        let mut skipped = vec![0u8; n];
        read_up_to(&mut self.src, &mut skipped)?;
        Ok(())
    }

    /// The next chunk of at least `target` bytes (unless the file ends first), or `None` at
    /// the end of the file.
    pub fn next_chunk(&mut self, target: usize) -> std::io::Result<Option<Chunk>> {
        let target = target.max(1);
        loop {
            if self.buf.len() >= target || self.eof {
                let cut = find_cut(&self.buf, target, self.delimiter, !self.started);
                let cut = match cut {
                    Some(cut) => Some(cut),
                    None if self.eof && !self.buf.is_empty() => Some(self.buf.len()),
                    None if self.eof => return Ok(None),
                    None => None,
                };
                if let Some(cut) = cut {
                    let rest = self.buf.split_off(cut);
                    let bytes = std::mem::replace(&mut self.buf, rest);
                    let first_line = self.next_line;
                    self.next_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                    self.started = true;
                    return Ok(Some(Chunk { bytes, first_line }));
                }
            }
            let old = self.buf.len();
            let want = READ_BYTES.max(target.saturating_sub(old));
            self.buf.resize(old + want, 0);
            let n = loop {
                match self.src.read(&mut self.buf[old..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + n);
            self.eof = n == 0;
        }
    }
}

/// Where to end a chunk of `buf`: just after the first record-ending LF at index
/// `>= target - 1`, after at least one record when `need_record`. `None`: no such LF yet.
fn find_cut(buf: &[u8], target: usize, delimiter: u8, need_record: bool) -> Option<usize> {
    let from = (target - 1).min(buf.len());
    let lf = from + memchr::memchr(b'\n', &buf[from..])?;
    let has_record = |end: usize| buf[..end].iter().any(|&b| b != b'\n' && b != b'\r');
    if memchr::memchr(b'"', &buf[..lf]).is_none() && (!need_record || has_record(lf)) {
        return Some(lf + 1);
    }
    find_cut_quoted(buf, from, delimiter, need_record)
}

/// [`find_cut`] through the CSV state machine, for bytes that hold quotes.
fn find_cut_quoted(buf: &[u8], from: usize, delimiter: u8, need_record: bool) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        InField,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut seen_record = false;
    for (i, &b) in buf.iter().enumerate() {
        if state == State::Quoted {
            if b == b'"' {
                state = State::QuoteInQuoted;
            }
            continue;
        }
        if b == b'\n' || b == b'\r' {
            if b == b'\n' && i >= from && (seen_record || !need_record) {
                return Some(i + 1);
            }
            state = State::FieldStart;
            continue;
        }
        seen_record = true;
        state = match (state, b) {
            (State::FieldStart, b'"') | (State::QuoteInQuoted, b'"') => State::Quoted,
            (_, d) if d == delimiter => State::FieldStart,
            _ => State::InField,
        };
    }
    None
}

/// A file's header, read from its first chunk: where each schema field is, how many columns a
/// row has.
#[derive(Debug, Clone)]
pub struct FileLayout {
    /// The file as shown in rejects and `_source` (its path as given).
    pub shown: String,
    pub text: TextEncoding,
    pub delimiter: u8,
    /// Per schema field, its CSV column.
    pub positions: Vec<usize>,
    /// Columns of a data row (a trailing empty column from a trailing delimiter not counted).
    pub columns: usize,
}

impl FileLayout {
    /// Reads the header (the first record of `first`, the file's first chunk) and matches it
    /// against the schema. `Ok(None)`: the chunk holds no record (the file is empty).
    pub fn from_header(
        first: &Chunk,
        shown: &str,
        text: TextEncoding,
        delimiter: u8,
        schema: &Schema,
    ) -> Result<Option<FileLayout>, SourceError> {
        let mut csv = csv_reader(&first.bytes, delimiter);
        let mut record = csv::ByteRecord::new();
        if !csv.read_byte_record(&mut record).unwrap_or(false) {
            return Ok(None);
        }
        let header: Vec<String> = record
            .iter()
            .map(|f| match text {
                TextEncoding::Utf8 => String::from_utf8_lossy(f).into_owned(),
                TextEncoding::Cp1252 => WINDOWS_1252.decode_without_bom_handling(f).0.into_owned(),
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let positions = schema.match_header(shown, &header)?;
        let mut columns = header.len();
        if header.last().is_some_and(|h| h.trim().is_empty()) {
            columns -= 1;
        }
        Ok(Some(FileLayout {
            shown: shown.to_string(),
            text,
            delimiter,
            positions,
            columns,
        }))
    }
}

fn csv_reader(bytes: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(64 * 1024)
        .from_reader(bytes)
}

/// One data row's fields as UTF-8 text, with the physical line it starts on.
pub struct DecodedRecord<'a> {
    pub line: u64,
    text: &'a str,
    /// Byte range of each field in `text`.
    spans: &'a [(usize, usize)],
    delimiter: u8,
}

impl<'a> DecodedRecord<'a> {
    /// The text of column `col` (as read, untrimmed).
    pub fn cell(&self, col: usize) -> &'a str {
        let (start, end) = self.spans[col];
        &self.text[start..end]
    }

    /// The row re-joined with its delimiter, at most [`MAX_REJECT_RAW_BYTES`] (for rejects).
    pub fn raw(&self) -> String {
        let delimiter = char::from(self.delimiter).to_string();
        bounded_raw(
            (0..self.spans.len())
                .map(|c| self.cell(c))
                .collect::<Vec<_>>()
                .join(&delimiter),
        )
    }
}

/// Reusable buffers for [`parse_chunk`].
#[derive(Default)]
pub struct RecordScratch {
    record: csv::ByteRecord,
    text: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

/// Parses the records of `chunk` (skipping the header when `has_header`, and rows starting at
/// or before `skip_through_line`), calling `on_record` with each data row whose column count
/// is right, or a [`Reject`] (wrong column count, invalid UTF-8). Stops when `on_record`
/// returns false.
///
/// A line without a quote or a lone CR is one record whose fields are the pieces between
/// delimiters: exactly what the `csv` crate makes of it, without its state machine or copies.
/// From the first line that has either, the rest of the chunk goes through `csv`'s reader (a
/// line start is a record start, so it starts in the right state).
pub fn parse_chunk(
    chunk: &Chunk,
    layout: &FileLayout,
    has_header: bool,
    skip_through_line: u64,
    scratch: &mut RecordScratch,
    mut on_record: impl FnMut(Result<DecodedRecord<'_>, Reject>) -> bool,
) {
    let bytes = &chunk.bytes[..];
    let (mut pos, mut line) = (0usize, chunk.first_line);
    let mut skip_header = has_header;
    loop {
        // Blank lines are no records (as in `csv`).
        while pos < bytes.len() && matches!(bytes[pos], b'\n' | b'\r') {
            line += u64::from(bytes[pos] == b'\n');
            pos += 1;
        }
        if pos >= bytes.len() {
            return;
        }
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        let body_end = if bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let body = &bytes[pos..body_end];
        if memchr::memchr2(b'"', b'\r', body).is_some() {
            let rest = Chunk {
                bytes: Vec::new(),
                first_line: line,
            };
            parse_with_csv(
                &bytes[pos..],
                &rest,
                layout,
                skip_header,
                skip_through_line,
                scratch,
                on_record,
            );
            return;
        }
        let record_line = line;
        pos = end + 1;
        line += 1;
        if std::mem::take(&mut skip_header) || record_line <= skip_through_line {
            continue;
        }
        let RecordScratch { text, spans, .. } = &mut *scratch;
        let decoded = match layout.text {
            TextEncoding::Cp1252 => Ok(decode_cp1252_str(body, text)),
            TextEncoding::Utf8 => std::str::from_utf8(body),
        };
        let outcome = match decoded {
            Ok(decoded) => {
                split_fields(decoded.as_bytes(), layout.delimiter, spans);
                checked_record(record_line, decoded, spans, layout)
            }
            Err(e) => {
                split_fields(body, layout.delimiter, spans);
                Err(utf8_reject(record_line, body, spans, e, layout))
            }
        };
        if !on_record(outcome) {
            return;
        }
    }
}

/// Windows-1252 `bytes` as text: borrowed when they are all ASCII, else decoded into `scratch`.
/// Never validated again: ASCII is UTF-8, and every byte `decode_cp1252` writes is ASCII or a
/// whole UTF-8 sequence from the table (validating it again was 2–3 % of produce's CPU).
#[allow(unsafe_code)]
fn decode_cp1252_str<'a>(bytes: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a str {
    let text: &[u8] = if bytes.is_ascii() {
        bytes
    } else {
        scratch.clear();
        decode_cp1252(bytes, scratch);
        scratch
    };
    debug_assert!(std::str::from_utf8(text).is_ok());
    // SAFETY: `text` is all ASCII, or ASCII runs and whole UTF-8 sequences of `cp1252_table`
    // (each the UTF-8 of one `char`, from encoding_rs), so it is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(text) }
}

/// How many leading bytes are ASCII, eight at a time (text of the real data has an accented
/// letter every few words, so the runs are short and a byte loop was 3–4 % of produce's CPU).
/// `encoding_rs::Encoding::ascii_valid_up_to` answers the same, but its alignment prologue
/// costs more on runs this short: 1M rows took 1.75 against 1.66 user CPU s (mean of 6
/// alternated runs, 2026-12-02).
fn ascii_prefix_len(bytes: &[u8]) -> usize {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let high = u64::from_le_bytes(word.try_into().expect("8 bytes")) & HIGH_BITS;
        if high != 0 {
            return at + high.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + words
        .remainder()
        .iter()
        .position(|&b| b >= 0x80)
        .unwrap_or(words.remainder().len())
}

fn decode_cp1252(bytes: &[u8], out: &mut Vec<u8>) {
    let table = cp1252_table();
    let mut rest = bytes;
    while !rest.is_empty() {
        let ascii = ascii_prefix_len(rest);
        out.extend_from_slice(&rest[..ascii]);
        if let Some(&b) = rest.get(ascii) {
            let (utf8, len) = &table[usize::from(b)];
            out.extend_from_slice(&utf8[..usize::from(*len)]);
            rest = &rest[ascii + 1..];
        } else {
            rest = &[];
        }
    }
}

fn split_fields(text: &[u8], delimiter: u8, spans: &mut Vec<(usize, usize)>) {
    spans.clear();
    let mut start = 0;
    for at in memchr::memchr_iter(delimiter, text) {
        spans.push((start, at));
        start = at + 1;
    }
    spans.push((start, text.len()));
}

/// The record, or a reject when its column count is wrong.
fn checked_record<'a>(
    line: u64,
    text: &'a str,
    spans: &'a [(usize, usize)],
    layout: &FileLayout,
) -> Result<DecodedRecord<'a>, Reject> {
    let record = DecodedRecord {
        line,
        text,
        spans,
        delimiter: layout.delimiter,
    };
    let mut fields = spans.len();
    // The empty column left by a trailing delimiter is not data.
    if fields > layout.columns && record.cell(fields - 1).is_empty() {
        fields -= 1;
    }
    if fields != layout.columns {
        return Err(Reject {
            file: layout.shown.clone(),
            line,
            reason: format!("expected {} columns, found {fields}", layout.columns),
            raw: record.raw(),
        });
    }
    Ok(record)
}

/// The reject of a row that is not valid UTF-8 (`spans` of the fields in `bytes`).
fn utf8_reject(
    line: u64,
    bytes: &[u8],
    spans: &[(usize, usize)],
    e: std::str::Utf8Error,
    layout: &FileLayout,
) -> Reject {
    let at = e.valid_up_to();
    let field = spans.iter().position(|&(_, end)| end > at).unwrap_or(0);
    let field_start = spans.get(field).map_or(0, |s| s.0);
    Reject {
        file: layout.shown.clone(),
        line,
        reason: format!(
            "unreadable row: invalid UTF-8 in column {} near byte index {}; the file is read as \
             UTF-8: pass --encoding windows1252 if it is not",
            field + 1,
            at.saturating_sub(field_start)
        ),
        raw: bounded_raw(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// [`parse_chunk`] through the `csv` crate's reader, for `bytes` (starting at a record start on
/// physical line `at.first_line`) that hold quotes or lone CRs.
fn parse_with_csv(
    bytes: &[u8],
    at: &Chunk,
    layout: &FileLayout,
    has_header: bool,
    skip_through_line: u64,
    scratch: &mut RecordScratch,
    mut on_record: impl FnMut(Result<DecodedRecord<'_>, Reject>) -> bool,
) {
    let mut csv = csv_reader(bytes, layout.delimiter);
    let (mut cursor, mut cursor_line) = (0usize, at.first_line);
    let mut skip_header = has_header;
    while csv.read_byte_record(&mut scratch.record).unwrap_or(false) {
        if std::mem::take(&mut skip_header) {
            continue;
        }
        let RecordScratch {
            record,
            text,
            spans,
        } = &mut *scratch;
        // The reader's position is where the previous record ended; the row starts at the
        // first byte after the line ends and blank lines in between.
        let from = record
            .position()
            .map_or(0, |p| p.byte() as usize)
            .min(bytes.len());
        let start = from
            + bytes[from..]
                .iter()
                .position(|&b| b != b'\n' && b != b'\r')
                .unwrap_or(bytes.len() - from);
        let start = start.max(cursor);
        cursor_line += memchr::memchr_iter(b'\n', &bytes[cursor..start]).count() as u64;
        cursor = start;
        let line = cursor_line;
        if line <= skip_through_line {
            continue;
        }
        text.clear();
        spans.clear();
        for field in record.iter() {
            let start = text.len();
            match layout.text {
                TextEncoding::Utf8 => text.extend_from_slice(field),
                TextEncoding::Cp1252 => decode_cp1252(field, text),
            }
            spans.push((start, text.len()));
        }
        let outcome = match std::str::from_utf8(text) {
            Ok(decoded) => checked_record(line, decoded, spans, layout),
            Err(e) => Err(utf8_reject(line, text, spans, e, layout)),
        };
        if !on_record(outcome) {
            return;
        }
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
    let head = &bytes[..bytes.len().min(3)];
    let text = TextEncoding::of(encoding, config.encoding.is_none(), delimiter, head);
    let mut chunks = match text {
        Some(text) => {
            let skip = if head.starts_with(UTF8_BOM) { 3 } else { 0 };
            let body: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes[skip..].to_vec()));
            ChunkReader::new(body, text, delimiter)
        }
        None => ChunkReader::new(
            decoded_reader(
                std::io::Cursor::new(bytes.to_vec()),
                encoding,
                Arc::default(),
            ),
            TextEncoding::Utf8,
            delimiter,
        ),
    };
    // Small chunks here, so that the tests and the fuzzer cross chunk boundaries often.
    chunks.chunk_target = 4096;
    read_rows(
        chunks,
        shown,
        &config.schema,
        &AtomicBool::new(false),
        0,
        on_row,
    )
}

/// Chunk size of the sequential reader ([`CsvFile::for_each_row`]).
const ROWS_CHUNK_BYTES: usize = 256 * 1024;

/// The row loop shared by [`CsvFile::for_each_row`] and [`for_each_row_in_bytes`]: chunks in
/// order, typed with [`Schema::parse_cell`].
fn read_rows(
    mut chunks: ChunkReader,
    shown: &str,
    schema: &Schema,
    stop: &AtomicBool,
    skip_through_line: u64,
    mut on_row: impl FnMut(Result<Row, Reject>) -> bool,
) -> Result<FileStats, SourceError> {
    let io = |source| SourceError::Io {
        path: shown.to_string(),
        source,
    };
    let mut stats = FileStats::default();
    let target = chunks.chunk_target;
    let Some(first) = chunks.next_chunk(target).map_err(io)? else {
        stats.empty = true;
        return Ok(stats);
    };
    let Some(layout) =
        FileLayout::from_header(&first, shown, chunks.text, chunks.delimiter, schema)?
    else {
        stats.empty = true;
        return Ok(stats);
    };
    let mut scratch = RecordScratch::default();
    let mut chunk = Some(first);
    let mut has_header = true;
    let mut keep_going = true;
    while let Some(current) = chunk.take() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        parse_chunk(
            &current,
            &layout,
            std::mem::take(&mut has_header),
            skip_through_line,
            &mut scratch,
            |record| {
                let outcome = record.and_then(|record| {
                    let mut values = Vec::with_capacity(layout.positions.len());
                    for (i, &col) in layout.positions.iter().enumerate() {
                        match schema.parse_cell(i, record.cell(col)) {
                            Ok(v) => values.push(v),
                            Err(e) => {
                                return Err(Reject {
                                    file: layout.shown.clone(),
                                    line: record.line,
                                    reason: format!("column {}: {e}", col + 1),
                                    raw: record.raw(),
                                })
                            }
                        }
                    }
                    Ok(Row {
                        line: record.line,
                        values,
                    })
                });
                match &outcome {
                    Ok(_) => stats.rows += 1,
                    Err(_) => stats.rejected += 1,
                }
                keep_going = on_row(outcome) && !stop.load(Ordering::Relaxed);
                keep_going
            },
        );
        if !keep_going {
            break;
        }
        chunk = chunks.next_chunk(target).map_err(io)?;
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

    /// The chunked parser against one `csv` reader over the whole decoded text: the same records
    /// (fields, or the re-joined row of a wrong column count), whatever the chunk size.
    fn chunked_records(bytes: &[u8], target: usize) -> Vec<(u64, Result<Vec<String>, String>)> {
        let layout = FileLayout {
            shown: "t.csv".into(),
            text: TextEncoding::Cp1252,
            delimiter: b';',
            positions: vec![0, 1, 2],
            columns: 3,
        };
        let mut reader = ChunkReader::from_bytes(bytes.to_vec(), TextEncoding::Cp1252, b';');
        let mut scratch = RecordScratch::default();
        let mut out = Vec::new();
        let mut first = true;
        while let Some(chunk) = reader.next_chunk(target).unwrap() {
            parse_chunk(
                &chunk,
                &layout,
                std::mem::take(&mut first),
                0,
                &mut scratch,
                |r| {
                    out.push(match r {
                        Ok(r) => (r.line, Ok((0..3).map(|c| r.cell(c).to_string()).collect())),
                        Err(e) => (e.line, Err(e.raw)),
                    });
                    true
                },
            );
        }
        out
    }

    fn one_reader_records(bytes: &[u8]) -> Vec<Result<Vec<String>, String>> {
        let (text, _) = WINDOWS_1252.decode_without_bom_handling(bytes);
        let mut csv = csv::ReaderBuilder::new()
            .delimiter(b';')
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut records: Vec<Vec<String>> = csv
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        if !records.is_empty() {
            records.remove(0);
        }
        records
            .into_iter()
            .map(|mut fields| {
                let raw = fields.join(";");
                if fields.len() > 3 && fields.last().is_some_and(String::is_empty) {
                    fields.pop();
                }
                if fields.len() == 3 {
                    Ok(fields)
                } else {
                    Err(raw)
                }
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn cp1252_fast_path_equals_encoding_rs(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![3 => 0x20u8..0x7f, 1 => proptest::num::u8::ANY], 0..64),
        ) {
            let mut scratch = Vec::new();
            let got = decode_cp1252_str(&bytes, &mut scratch).to_string();
            let (want, _) = WINDOWS_1252.decode_without_bom_handling(&bytes);
            proptest::prop_assert_eq!(got, want.into_owned());
            let naive = bytes.iter().position(|&b| b >= 0x80).unwrap_or(bytes.len());
            proptest::prop_assert_eq!(ascii_prefix_len(&bytes), naive);
        }

        #[test]
        fn chunked_parsing_equals_one_reader(
            picks in proptest::collection::vec(0usize..9, 0..300),
            target in 1usize..80,
        ) {
            let alphabet = [b'a', b';', b';', b'"', b'\n', b'\n', b'\r', b' ', 0xBA];
            let bytes: Vec<u8> = picks.iter().map(|&i| alphabet[i]).collect();
            let got = chunked_records(&bytes, target);
            let fields: Vec<_> = got.iter().map(|(_, r)| r.clone()).collect();
            proptest::prop_assert_eq!(fields, one_reader_records(&bytes));
            // Physical lines: never decreasing (records split by a lone CR share a line), and
            // never past the number of lines in the input.
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            for pair in got.windows(2) {
                proptest::prop_assert!(pair[0].0 <= pair[1].0, "{:?}", got);
            }
            proptest::prop_assert!(got.iter().all(|(l, _)| *l <= lines));
        }
    }

    #[test]
    fn lines_are_physical_start_lines() {
        let text = b"h;h;h\r\na;b;c\r\n\r\n\nd;\"x\ny\";e\nf;g;h\n";
        let lines: Vec<u64> = chunked_records(text, 1).iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![2, 5, 7]);
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
