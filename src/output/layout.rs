//! Every name in an output location, formatted and parsed in one place: the window directories,
//! data files (table, late, dead letters), staged row groups, temporary files, `_SUCCESS`
//! markers and checkpoint generations. The sink, recovery and `app inspect` all go through this
//! module, so a name is decided once and read back the same way everywhere.
//!
//! ```text
//! <output>/
//!   window=2026-11-25T14:00:00Z/                      the table: only closed windows' files
//!     part-<p>-<first>-<last>-<writer>.parquet        `**/*.parquet` matches exactly these
//!     _SUCCESS                                        every assigned partition closed the window
//!   _late/window=…/part-<p>-<first>-<last>-<writer>.pq      rows whose window had closed
//!   _dead_letter/part-<p>-<first>-<last>-<writer>.pq        undecodable or refused records
//!   _staging/window=…/part-<p>-<first>-<last>-<writer>.staged  row groups of open windows
//!   _checkpoint/partition=<p>/gen-<generation>.json   one immutable file per commit
//! ```
//!
//! Why these names:
//! - The directory key is `window`, not `window_start`: the files carry a typed `window_start`
//!   timestamp column, and a Hive key of the same name makes pyarrow and pandas fail to merge
//!   the string key with the typed column. Hive-aware readers add a `window` string column.
//! - Only table files end in `.parquet`. DuckDB's and polars' `**/*.parquet` globs descend into
//!   `_`-prefixed folders (pyarrow, pandas and Spark skip them), so side outputs use `.pq` and
//!   staged row groups `.staged`: a glob over the output reads the table and nothing else.
//! - `<writer>` is 8 hex digits drawn at random by each consumer process: no other run or
//!   instance can produce the same name, so a data file is never replaced in place (object
//!   stores have no atomic rename; a zombie instance must never overwrite a committed file).
//! - Temporary files (local disk only) are hidden and end in `.tmp`: `.<name>.tmp`.
//! - Layout 1 (before this version) used `window_start=…` directories, `part-<p>-<first>-<last>`
//!   names and one `checkpoint.json` for all partitions; [`LegacyCheckpoint`] recognizes it so
//!   `consume` can refuse it with instructions and `inspect` can still report it.

use std::fmt;

use chrono::{DateTime, NaiveDateTime};

/// The layout written by this version.
pub const LAYOUT_VERSION: u32 = 2;
/// Hive key of the window directories.
pub const WINDOW_KEY: &str = "window";
/// Layout 1's window directory key.
pub const LEGACY_WINDOW_KEY: &str = "window_start";
pub const LATE_DIR: &str = "_late";
pub const DEAD_LETTER_DIR: &str = "_dead_letter";
pub const STAGING_DIR: &str = "_staging";
pub const CHECKPOINT_DIR: &str = "_checkpoint";
/// Marker of a window that every assigned partition closed (when the instance owns all of them).
pub const SUCCESS_MARKER: &str = "_SUCCESS";
const PART_PREFIX: &str = "part-";
const TEMP_SUFFIX: &str = ".tmp";
const GENERATION_PREFIX: &str = "gen-";
const PARTITION_KEY: &str = "partition=";

/// A place rows go to, and whose files the checkpoint tracks per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// The table: rows of the window starting at this UTC millisecond.
    Window(i64),
    /// `_late/window=…`: rows of that window that arrived after it had closed.
    Late(i64),
    /// `_dead_letter`: records that could not be decoded or were refused.
    DeadLetter,
}

impl Destination {
    /// The directory, relative to the output (`window=…`, `_late/window=…`, `_dead_letter`);
    /// also the key of its marks in the checkpoint.
    pub fn dir(&self) -> String {
        match self {
            Destination::Window(start) => window_dir(*start),
            Destination::Late(start) => format!("{LATE_DIR}/{}", window_dir(*start)),
            Destination::DeadLetter => DEAD_LETTER_DIR.to_string(),
        }
    }

    /// Parses [`dir`](Self::dir).
    pub fn parse(dir: &str) -> Option<Destination> {
        if dir == DEAD_LETTER_DIR {
            return Some(Destination::DeadLetter);
        }
        if let Some(window) = dir.strip_prefix(LATE_DIR).and_then(|r| r.strip_prefix('/')) {
            return parse_window_dir(window).map(Destination::Late);
        }
        parse_window_dir(dir).map(Destination::Window)
    }

    /// The extension of this destination's data files.
    pub fn kind(&self) -> FileKind {
        match self {
            Destination::Window(_) => FileKind::Table,
            Destination::Late(_) | Destination::DeadLetter => FileKind::Side,
        }
    }

    /// The window this destination belongs to, if any.
    pub fn window(&self) -> Option<i64> {
        match self {
            Destination::Window(w) | Destination::Late(w) => Some(*w),
            Destination::DeadLetter => None,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir())
    }
}

/// What a data file is, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// `.parquet`: a closed window's file, part of the table.
    Table,
    /// `.pq`: late rows or dead letters.
    Side,
    /// `.staged`: one row group of a window that is still open.
    Staged,
}

impl FileKind {
    fn ext(self) -> &'static str {
        match self {
            FileKind::Table => "parquet",
            FileKind::Side => "pq",
            FileKind::Staged => "staged",
        }
    }

    fn from_ext(ext: &str) -> Option<FileKind> {
        match ext {
            "parquet" => Some(FileKind::Table),
            "pq" => Some(FileKind::Side),
            "staged" => Some(FileKind::Staged),
            _ => None,
        }
    }
}

/// `window=2026-11-25T14:00:00Z`: RFC 3339 UTC, whole seconds (milliseconds only when the start
/// is not a whole second). Starts outside years 0000–9999 are written as raw milliseconds so the
/// name still round-trips.
pub fn window_dir(start_ms: i64) -> String {
    format!("{WINDOW_KEY}={}", window_label(start_ms))
}

/// The value part of [`window_dir`]; also how logs and reports show a window.
pub fn window_label(start_ms: i64) -> String {
    let readable = DateTime::from_timestamp_millis(start_ms)
        .filter(|dt| (0..=9999).contains(&chrono::Datelike::year(dt)));
    match readable {
        Some(dt) if start_ms.rem_euclid(1000) == 0 => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => start_ms.to_string(),
    }
}

/// The window start (UTC ms) named by a `window=` directory.
pub fn parse_window_dir(name: &str) -> Option<i64> {
    parse_window_value(name.strip_prefix(WINDOW_KEY)?.strip_prefix('=')?)
}

/// The window start named by a layout-1 `window_start=` directory.
pub fn parse_legacy_window_dir(name: &str) -> Option<i64> {
    parse_window_value(name.strip_prefix(LEGACY_WINDOW_KEY)?.strip_prefix('=')?)
}

fn parse_window_value(text: &str) -> Option<i64> {
    if let Some(stamp) = text.strip_suffix('Z') {
        let dt = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
        return Some(dt.and_utc().timestamp_millis());
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The random id of one consumer process, carried by every data file it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriterId(pub u32);

impl WriterId {
    pub fn random() -> WriterId {
        WriterId(rand::random())
    }

    fn parse(text: &str) -> Option<WriterId> {
        if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok().map(WriterId)
    }
}

impl fmt::Display for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A data file's name, parsed: which partition, which offsets, who wrote it, what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartName {
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// `None` only for layout-1 names (`part-<p>-<first>-<last>.parquet`).
    pub writer: Option<WriterId>,
    pub kind: FileKind,
}

impl PartName {
    pub fn new(
        partition: i32,
        first_offset: i64,
        last_offset: i64,
        writer: WriterId,
        kind: FileKind,
    ) -> PartName {
        PartName {
            partition,
            first_offset,
            last_offset,
            writer: Some(writer),
            kind,
        }
    }

    /// Parses a file name (no directory). Temporary files and anything else give `None`.
    pub fn parse(name: &str) -> Option<PartName> {
        let rest = name.strip_prefix(PART_PREFIX)?;
        let (stem, ext) = rest.split_once('.')?;
        let kind = FileKind::from_ext(ext)?;
        let fields: Vec<&str> = stem.split('-').collect();
        let number = |s: &str| -> Option<i64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (partition, first, last, writer) = match fields.as_slice() {
            [p, f, l, w] => (
                number(p)?,
                number(f)?,
                number(l)?,
                Some(WriterId::parse(w)?),
            ),
            [p, f, l] if kind == FileKind::Table => (number(p)?, number(f)?, number(l)?, None),
            _ => return None,
        };
        let partition = i32::try_from(partition).ok()?;
        (first <= last).then_some(PartName {
            partition,
            first_offset: first,
            last_offset: last,
            writer,
            kind,
        })
    }
}

impl fmt::Display for PartName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PART_PREFIX}{}-{}-{}",
            self.partition, self.first_offset, self.last_offset
        )?;
        if let Some(w) = self.writer {
            write!(f, "-{w}")?;
        }
        write!(f, ".{}", self.kind.ext())
    }
}

/// A path relative to the output root, with `/` separators (also an object key suffix).
pub type Key = String;

/// Where a data file of `destination` lives.
pub fn data_key(destination: Destination, part: &PartName) -> Key {
    data_key_named(destination, &part.to_string())
}

/// [`data_key`] for a file name (as a checkpoint records it).
pub fn data_key_named(destination: Destination, name: &str) -> Key {
    format!("{}/{name}", destination.dir())
}

/// Where a staged row group of the open window `window` lives.
pub fn staged_key(window: i64, part: &PartName) -> Key {
    staged_key_named(window, &part.to_string())
}

/// [`staged_key`] for a file name (as a checkpoint records it).
pub fn staged_key_named(window: i64, name: &str) -> Key {
    format!("{STAGING_DIR}/{}/{name}", window_dir(window))
}

/// The success marker of a window: `_SUCCESS` when the instance owns every partition of the
/// topic, else `_SUCCESS-p0_1_2` (instances sharing an output each write their own).
pub fn success_key(window: i64, scope: &SuccessScope) -> Key {
    format!("{}/{}", window_dir(window), scope.marker_name())
}

/// Which partitions a success marker speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuccessScope {
    AllPartitions,
    Some(Vec<i32>),
}

impl SuccessScope {
    pub fn marker_name(&self) -> String {
        match self {
            SuccessScope::AllPartitions => SUCCESS_MARKER.to_string(),
            SuccessScope::Some(list) => {
                let list: Vec<String> = list.iter().map(i32::to_string).collect();
                format!("{SUCCESS_MARKER}-p{}", list.join("_"))
            }
        }
    }
}

/// Whether a file name is a success marker (of any scope).
pub fn is_success_marker(name: &str) -> bool {
    name == SUCCESS_MARKER || name.starts_with(&format!("{SUCCESS_MARKER}-p"))
}

/// The directory of one partition's checkpoint generations.
pub fn checkpoint_dir(partition: i32) -> Key {
    format!("{CHECKPOINT_DIR}/{PARTITION_KEY}{partition}")
}

/// One checkpoint generation of a partition: `_checkpoint/partition=3/gen-00000000000000000042.json`.
pub fn checkpoint_key(partition: i32, generation: u64) -> Key {
    format!(
        "{}/{GENERATION_PREFIX}{generation:020}.json",
        checkpoint_dir(partition)
    )
}

/// Parses [`checkpoint_key`]: (partition, generation).
pub fn parse_checkpoint_key(key: &str) -> Option<(i32, u64)> {
    let rest = key.strip_prefix(CHECKPOINT_DIR)?.strip_prefix('/')?;
    let (dir, file) = rest.split_once('/')?;
    let partition = dir.strip_prefix(PARTITION_KEY)?.parse().ok()?;
    let digits = file
        .strip_prefix(GENERATION_PREFIX)?
        .strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((partition, digits.parse().ok()?))
}

/// Layout-1 checkpoint files: `_checkpoint/checkpoint.json`, `checkpoint-p0_1.json` and their
/// `.prev.json` generations.
pub struct LegacyCheckpoint;

impl LegacyCheckpoint {
    pub fn matches(key: &str) -> bool {
        let Some(name) = key
            .strip_prefix(CHECKPOINT_DIR)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        !name.contains('/') && name.starts_with("checkpoint") && name.ends_with(".json")
    }
}

/// The hidden temporary name a local file is written under before it is renamed into place.
pub fn temp_name(final_name: &str) -> String {
    format!(".{final_name}{TEMP_SUFFIX}")
}

/// The final name a temporary file was for, if `name` is one.
pub fn parse_temp_name(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)
}

/// What a key under the output root is, for recovery and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A data file of a destination.
    Data {
        destination: Destination,
        part: PartName,
    },
    /// A staged row group of an open window.
    Staged { window: i64, part: PartName },
    /// A success marker in a window directory.
    Success { window: i64, name: String },
    /// A checkpoint generation.
    Checkpoint { partition: i32, generation: u64 },
    /// A temporary file of an interrupted local write (`for_key` is the key it was for).
    Temp { for_key: Key },
    /// Something of layout 1 (`window_start=…` directories, the single checkpoint file).
    Legacy,
    /// Anything else: never touched.
    Other,
}

/// Classifies a key relative to the output root.
pub fn classify(key: &str) -> Entry {
    let (dir, name) = match key.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", key),
    };
    if let Some(final_name) = parse_temp_name(name) {
        let for_key = if dir.is_empty() {
            final_name.to_string()
        } else {
            format!("{dir}/{final_name}")
        };
        return Entry::Temp { for_key };
    }
    if let Some((partition, generation)) = parse_checkpoint_key(key) {
        return Entry::Checkpoint {
            partition,
            generation,
        };
    }
    if LegacyCheckpoint::matches(key) {
        return Entry::Legacy;
    }
    if dir
        .split('/')
        .next()
        .and_then(parse_legacy_window_dir)
        .is_some()
        || dir
            .strip_prefix(LATE_DIR)
            .and_then(|d| d.strip_prefix('/'))
            .and_then(parse_legacy_window_dir)
            .is_some()
    {
        return Entry::Legacy;
    }
    if let Some(window) = dir
        .strip_prefix(STAGING_DIR)
        .and_then(|d| d.strip_prefix('/'))
        .and_then(parse_window_dir)
    {
        return match PartName::parse(name) {
            Some(part) if part.kind == FileKind::Staged => Entry::Staged { window, part },
            _ => Entry::Other,
        };
    }
    let Some(destination) = Destination::parse(dir) else {
        return Entry::Other;
    };
    if let (Destination::Window(window), true) = (destination, is_success_marker(name)) {
        return Entry::Success {
            window,
            name: name.to_string(),
        };
    }
    match PartName::parse(name) {
        Some(part) if part.kind == destination.kind() && part.writer.is_some() => {
            Entry::Data { destination, part }
        }
        Some(part) if part.writer.is_none() && destination == Destination::DeadLetter => {
            Entry::Legacy
        }
        _ => Entry::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_readable_and_parse_back() {
        assert_eq!(window_dir(1_795_615_200_000), "window=2026-11-25T14:00:00Z");
        assert_eq!(
            window_dir(1_795_615_200_500),
            "window=2026-11-25T14:00:00.500Z"
        );
        assert_eq!(window_dir(i64::MAX), format!("window={}", i64::MAX));
        let w = WriterId(0x0a1b_2c3d);
        let part = PartName::new(3, 10, 42, w, FileKind::Table);
        assert_eq!(part.to_string(), "part-3-10-42-0a1b2c3d.parquet");
        assert_eq!(PartName::parse(&part.to_string()), Some(part));
        let late = PartName::new(0, 1, 1, w, FileKind::Side);
        assert_eq!(
            data_key(Destination::Late(0), &late),
            "_late/window=1970-01-01T00:00:00Z/part-0-1-1-0a1b2c3d.pq"
        );
        let staged = PartName::new(2, 5, 9, w, FileKind::Staged);
        assert_eq!(
            staged_key(60_000, &staged),
            "_staging/window=1970-01-01T00:01:00Z/part-2-5-9-0a1b2c3d.staged"
        );
        assert_eq!(
            checkpoint_key(7, 42),
            "_checkpoint/partition=7/gen-00000000000000000042.json"
        );
        assert_eq!(parse_checkpoint_key(&checkpoint_key(7, 42)), Some((7, 42)));
        assert_eq!(
            success_key(0, &SuccessScope::Some(vec![0, 2])),
            "window=1970-01-01T00:00:00Z/_SUCCESS-p0_2"
        );
        for bad in [
            "part-1-5-3-0a1b2c3d.parquet",
            "part-1-2-0a1b2c3d.parquet",
            "part-a-1-2-0a1b2c3d.parquet",
            "part-1-2-3-xyz.parquet",
            "part-1-2-3-0a1b2c3d.csv",
            "part-1-2-3.pq",
            "_SUCCESS",
        ] {
            assert_eq!(PartName::parse(bad), None, "{bad}");
        }
        // Layout 1 names still parse (for inspect).
        assert_eq!(
            PartName::parse("part-3-10-42.parquet").unwrap().writer,
            None
        );
    }

    #[test]
    fn classify_tells_every_kind_apart() {
        let w = WriterId(1);
        let part = PartName::new(1, 0, 9, w, FileKind::Table);
        assert_eq!(
            classify(&data_key(Destination::Window(0), &part)),
            Entry::Data {
                destination: Destination::Window(0),
                part
            }
        );
        let side = PartName::new(1, 0, 9, w, FileKind::Side);
        assert_eq!(
            classify(&data_key(Destination::DeadLetter, &side)),
            Entry::Data {
                destination: Destination::DeadLetter,
                part: side
            }
        );
        // A table-kind name in a side directory is not ours.
        assert_eq!(
            classify(&data_key(Destination::DeadLetter, &part)),
            Entry::Other
        );
        let staged = PartName::new(1, 0, 9, w, FileKind::Staged);
        assert_eq!(
            classify(&staged_key(0, &staged)),
            Entry::Staged {
                window: 0,
                part: staged
            }
        );
        assert_eq!(
            classify("window=1970-01-01T00:00:00Z/_SUCCESS"),
            Entry::Success {
                window: 0,
                name: "_SUCCESS".into()
            }
        );
        assert_eq!(
            classify("window=1970-01-01T00:00:00Z/.part-1-0-9-00000001.parquet.tmp"),
            Entry::Temp {
                for_key: "window=1970-01-01T00:00:00Z/part-1-0-9-00000001.parquet".into()
            }
        );
        assert_eq!(
            classify("_checkpoint/partition=1/gen-00000000000000000003.json"),
            Entry::Checkpoint {
                partition: 1,
                generation: 3
            }
        );
        assert_eq!(classify("_checkpoint/checkpoint.json"), Entry::Legacy);
        assert_eq!(
            classify("_checkpoint/checkpoint-p0_1.prev.json"),
            Entry::Legacy
        );
        assert_eq!(
            classify("window_start=2026-11-25T14:00:00Z/part-0-0-41.parquet"),
            Entry::Legacy
        );
        assert_eq!(classify("_logs/consume.log"), Entry::Other);
        assert_eq!(classify("notes.txt"), Entry::Other);
    }

    proptest! {
        #[test]
        fn window_dirs_round_trip(start in any::<i64>()) {
            prop_assert_eq!(parse_window_dir(&window_dir(start)), Some(start));
        }

        #[test]
        fn part_names_round_trip(p in 0..i32::MAX, first in 0..i64::MAX / 2, len in 0..1_000_000i64, w in any::<u32>()) {
            for kind in [FileKind::Table, FileKind::Side, FileKind::Staged] {
                let part = PartName::new(p, first, first + len, WriterId(w), kind);
                prop_assert_eq!(PartName::parse(&part.to_string()), Some(part));
            }
        }

        #[test]
        fn destinations_round_trip(start in any::<i64>()) {
            for d in [Destination::Window(start), Destination::Late(start), Destination::DeadLetter] {
                prop_assert_eq!(Destination::parse(&d.dir()), Some(d));
            }
        }
    }
}
