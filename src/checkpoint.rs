//! Exactly-once bookkeeping for the consumer: destination and file names, per-destination
//! *marks*, the checkpoint file (atomic commit, checksum, fallback to the previous generation) and
//! the startup clean-up of the output directory.
//!
//! ## Vocabulary
//!
//! - A **destination** is an output directory whose files this module tracks ([`Destination`]):
//!   one per window (`window_start=2026-11-25T14:00:00Z`), one per window for its late rows
//!   (`_late/window_start=2026-11-25T14:00:00Z`), and `_dead_letter`. Files inside are named
//!   `part-<partition>-<first_offset>-<last_offset>.<ext>` and are written under a temporary name
//!   (`<name>.tmp`), fsynced, then renamed.
//! - A **mark** is the highest offset of a partition durably written to a destination.
//! - The **resume offset** of a partition is the lowest offset held only in memory (in an open
//!   window's buffer), or, when nothing is held, the next offset not yet routed.
//!
//! A [`Checkpoint`] holds, per partition, the resume offset and the maximum event time seen; the
//! marks; `closed_before`; and the starts of the open windows. The consumer commits one only after
//! (1) the rows of every window returned by `close_ready` have been written, (2) the late and
//! dead-letter buffers have been written (so they hold nothing at commit), and (3) every file the
//! marks cover has been fsynced and renamed. [`Checkpoint::capture`] builds it from the window
//! state.
//!
//! ## Why every offset ends up written exactly once
//!
//! On restart the consumer fetches each partition from its resume offset: everything below it
//! was written before the commit. Each replayed record is re-decided with the committed marks
//! ([`Marks`]):
//!
//! - undecodable: skip iff `mark[_dead_letter][p] >= offset`;
//! - a row of window `W`: skip iff `mark[W][p] >= offset` or `mark[_late/W][p] >= offset`,
//!   whether `W` is open or closed now.
//!
//! The invariant behind it: *for each window `W` and partition `p`, the committed rows of `W`
//! from `p` (in `W` or in `_late/W`) are exactly those up to some offset*, so the larger of the
//! two marks is that offset. It holds because a partition's rows are routed in offset order:
//! while `W` is open they go to its buffer, which leaves memory whole (closing, memory pressure,
//! shutdown), so held rows always follow written ones; once `W` is closed (`closed_before` never
//! goes down within a run) they go late, after `W`'s buffered rows were written at its close, and
//! the late buffer is written whole before every commit. A restart re-routes the rows above the
//! marks, in order, so the invariant carries over. Dead letters are the same argument with one
//! destination. A record first seen after the commit has an offset above every mark of its
//! partition.
//!
//! Files written after the last commit are not covered by any mark, and their rows will be
//! replayed: [`recover_output`] deletes them at startup, before anything is fetched. By the
//! invariant, such a file holds only offsets above its destination's mark, and also `>= resume`.
//! Conversely a committed file has `last_offset <= mark`, or `last_offset < resume` (because
//! [`Marks::prune`] drops marks below the resume offset; no replayed offset can reach them). So a
//! file is committed iff `last_offset <= mark || last_offset < resume`; all others, and every
//! `*.tmp`, are deleted.
//!
//! Why late rows are kept per window, in `_late/<window>/`, and not in one `_late/` per
//! partition: after a restart the restored watermark and a different interleaving of partitions
//! can close a window that was open at the checkpoint before its held rows are replayed. Those
//! rows then go late (so a row can be on time in one run and late after a crash; it is still
//! written exactly once), with offsets *below* late rows of other windows committed earlier. A
//! single late mark per partition would then wrongly skip them on replay, and a post-commit
//! `_late` file could not be told from a committed one by its name. The end-to-end property test
//! at the bottom of this file finds both if the late marks are merged.
//!
//! Falling back to the previous checkpoint generation is safe for the same reason: files the
//! newer generation committed are simply "written after the last commit" from the older one's
//! point of view; they are deleted and their rows replayed.
//!
//! `_SUCCESS` in a window directory is written only after the checkpoint that closes the window
//! has committed; at startup it is removed from windows the checkpoint does not consider closed and
//! re-created for closed windows that hold committed files of this instance.
//!
//! ## Several instances, one output directory
//!
//! Each instance owns a set of partitions, names its checkpoint after them
//! ([`CheckpointStore::name_for_partitions`]) and only touches part files of its partitions
//! ([`OutputScope`]). `_SUCCESS` is per window, not per partition: instances sharing a directory
//! should use distinct marker names ([`OutputScope::success_marker`]).
//!
//! Everything here is blocking `std::fs` I/O on small files; call it from `spawn_blocking` (or
//! accept a short block) in async code.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::window::{window_end, Watermarks, WindowBuffer};

/// Checkpoint format written by this version.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Default checkpoint directory, under the output directory.
pub const CHECKPOINT_DIR: &str = "_checkpoint";
/// Parent of the per-window late destinations (`_late/window_start=…`).
pub const LATE_DIR: &str = "_late";
/// Destination of records that could not be decoded.
pub const DEAD_LETTER_DIR: &str = "_dead_letter";
/// Marker written in a window directory once the window is closed and committed.
pub const SUCCESS_MARKER: &str = "_SUCCESS";
/// Suffix of files being written; they are renamed when complete.
pub const TMP_SUFFIX: &str = ".tmp";
/// Default checkpoint name (`checkpoint.json`, `checkpoint.prev.json`).
pub const DEFAULT_CHECKPOINT_NAME: &str = "checkpoint";

const WINDOW_DIR_PREFIX: &str = "window_start=";
const PART_PREFIX: &str = "part-";

/// Errors of this module. Each names the file involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {action} {}: {source}. Check that the path exists and is writable", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "no usable checkpoint: {} is {current_problem}, and {} is {previous_problem}. \
         Resuming from the beginning could duplicate rows already in the output, so this run stops. \
         To start over, move the output directory (with its checkpoint directory) aside and rerun; \
         keep the damaged files if you want to investigate"
        , current.display(), previous.display()
    )]
    Unusable {
        current: PathBuf,
        current_problem: String,
        previous: PathBuf,
        previous_problem: String,
    },
    #[error(
        "checkpoint {} was written for {field} `{found}`, but this run uses `{expected}`. \
         Rerun with the original setting, or write to a new output directory (or move the \
         checkpoint aside to start over)", path.display()
    )]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "checkpoint {} has format version {found}, this program understands version {CHECKPOINT_VERSION}. \
         Run the version of the program that wrote it", path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: u64 },
    #[error(
        "checkpoint {} names an unknown destination `{name}` in its marks; it was not written by \
         this program. Move it aside to start over", path.display()
    )]
    UnknownDestination { path: PathBuf, name: String },
    #[error(
        "checkpoint name `{0}` is not valid: use letters, digits, `_`, `-` and `.` only \
         (it becomes a file name)"
    )]
    InvalidName(String),
    #[error(
        "the output directory {} holds {files} part file(s) of partitions {partitions:?} (e.g. {}) \
         but there is no checkpoint directory {}: the checkpoint was deleted or --checkpoint \
         points somewhere new. Starting over would delete those files and rewrite them from \
         --start (losing whatever retention has removed since), so this run stops. Restore the \
         checkpoint directory, or move the output directory aside to start over",
        output.display(), example.display(), checkpoint_dir.display()
    )]
    OrphanedOutput {
        output: PathBuf,
        checkpoint_dir: PathBuf,
        files: usize,
        partitions: BTreeSet<i32>,
        example: PathBuf,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// An output directory that keeps marks: files in it are written, per partition, in offset
/// order (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// `window_start=…`: the rows of the window starting at this UTC millisecond.
    Window(i64),
    /// `_late/window_start=…`: rows of that window that arrived after it had closed.
    Late(i64),
    /// `_dead_letter`: records that could not be decoded.
    DeadLetter,
}

impl Destination {
    /// The directory, relative to the output directory (`window_start=…`,
    /// `_late/window_start=…`, `_dead_letter`); also the key of its marks in the checkpoint.
    pub fn dir_name(&self) -> String {
        match self {
            Destination::Window(start) => window_dir_name(*start),
            Destination::Late(start) => format!("{LATE_DIR}/{}", window_dir_name(*start)),
            Destination::DeadLetter => DEAD_LETTER_DIR.to_string(),
        }
    }

    /// The directory of this destination under `output_dir`.
    pub fn path_under(&self, output_dir: &Path) -> PathBuf {
        match self {
            Destination::Late(start) => output_dir.join(LATE_DIR).join(window_dir_name(*start)),
            other => output_dir.join(other.dir_name()),
        }
    }

    /// Parses [`dir_name`](Self::dir_name)'s output.
    pub fn parse(dir_name: &str) -> Option<Destination> {
        if dir_name == DEAD_LETTER_DIR {
            return Some(Destination::DeadLetter);
        }
        if let Some(window) = dir_name
            .strip_prefix(LATE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return parse_window_dir_name(window).map(Destination::Late);
        }
        parse_window_dir_name(dir_name).map(Destination::Window)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir_name())
    }
}

/// `window_start=2026-11-25T14:00:00Z`: RFC 3339 UTC, whole seconds (milliseconds are added
/// only when the start is not a whole second). Starts outside years 0000–9999 are written as raw
/// milliseconds (`window_start=-62198755200001`) so the name still round-trips.
pub fn window_dir_name(start_ms: i64) -> String {
    let readable = DateTime::from_timestamp_millis(start_ms)
        .filter(|dt| (0..=9999).contains(&chrono::Datelike::year(dt)));
    match readable {
        Some(dt) if start_ms.rem_euclid(1000) == 0 => {
            format!("{WINDOW_DIR_PREFIX}{}", dt.format("%Y-%m-%dT%H:%M:%SZ"))
        }
        Some(dt) => format!("{WINDOW_DIR_PREFIX}{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        None => format!("{WINDOW_DIR_PREFIX}{start_ms}"),
    }
}

/// The window start (UTC ms) named by a `window_start=` directory, if it is one.
pub fn parse_window_dir_name(name: &str) -> Option<i64> {
    let text = name.strip_prefix(WINDOW_DIR_PREFIX)?;
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

/// A part file's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFile {
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Everything after the first `.` (`parquet`, `jsonl.gz`).
    pub ext: String,
}

/// `part-<partition>-<first>-<last>.<ext>`.
pub fn part_file_name(partition: i32, first_offset: i64, last_offset: i64, ext: &str) -> String {
    format!("{PART_PREFIX}{partition}-{first_offset}-{last_offset}.{ext}")
}

/// The temporary name a file is written under before it is renamed to `final_name`.
pub fn temp_file_name(final_name: &str) -> String {
    format!("{final_name}{TMP_SUFFIX}")
}

/// Parses [`part_file_name`]'s output; `None` for anything else (including `*.tmp`).
pub fn parse_part_file_name(name: &str) -> Option<PartFile> {
    if name.ends_with(TMP_SUFFIX) {
        return None;
    }
    let rest = name.strip_prefix(PART_PREFIX)?;
    let (numbers, ext) = rest.split_once('.')?;
    let mut it = numbers.split('-');
    let (p, first, last) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ext.is_empty() {
        return None;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(p) && digits(first) && digits(last)) {
        return None;
    }
    let part = PartFile {
        partition: p.parse().ok()?,
        first_offset: first.parse().ok()?,
        last_offset: last.parse().ok()?,
        ext: ext.to_string(),
    };
    (part.first_offset <= part.last_offset).then_some(part)
}

// ---------------------------------------------------------------------------------------------
// Marks
// ---------------------------------------------------------------------------------------------

/// Per destination and partition, the highest offset durably written there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    by_destination: BTreeMap<Destination, BTreeMap<i32, i64>>,
}

impl Marks {
    /// No marks (fresh start).
    pub fn new() -> Self {
        Self::default()
    }

    /// The mark of `destination` for `partition`, if any.
    pub fn get(&self, destination: Destination, partition: i32) -> Option<i64> {
        self.by_destination
            .get(&destination)?
            .get(&partition)
            .copied()
    }

    fn covers(&self, destination: Destination, partition: i32, offset: i64) -> bool {
        self.get(destination, partition)
            .is_some_and(|mark| mark >= offset)
    }

    /// A replayed undecodable record was already written to `_dead_letter`.
    pub fn should_skip_dead_letter(&self, partition: i32, offset: i64) -> bool {
        self.covers(Destination::DeadLetter, partition, offset)
    }

    /// A replayed row of the window starting at `window_start` was already written, to that
    /// window or to its `_late` directory. Whether the window is open or closed now does not
    /// matter (see the module docs for why this is exact).
    pub fn should_skip_row(&self, window_start: i64, partition: i32, offset: i64) -> bool {
        self.covers(Destination::Window(window_start), partition, offset)
            || self.covers(Destination::Late(window_start), partition, offset)
    }

    /// Records that a file holding offsets up to `last_offset` of `partition` is durably in
    /// `destination` (fsynced and renamed). Marks never go down.
    pub fn record_written(&mut self, destination: Destination, partition: i32, last_offset: i64) {
        let mark = self
            .by_destination
            .entry(destination)
            .or_default()
            .entry(partition)
            .or_insert(last_offset);
        *mark = (*mark).max(last_offset);
    }

    /// Drops marks below their partition's resume offset: no replayed offset can reach them.
    /// Partitions without a resume offset keep their marks.
    pub fn prune(&mut self, resume_offsets: &BTreeMap<i32, i64>) {
        for marks in self.by_destination.values_mut() {
            marks.retain(|p, mark| resume_offsets.get(p).is_none_or(|resume| *mark >= *resume));
        }
        self.by_destination.retain(|_, marks| !marks.is_empty());
    }

    /// The marks as the checkpoint stores them (destination directory -> partition -> mark).
    pub fn to_names(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        self.by_destination
            .iter()
            .map(|(d, m)| (d.dir_name(), m.clone()))
            .collect()
    }

    /// Parses [`to_names`](Self::to_names)'s output; `path` is only used in the error.
    pub fn from_names(
        names: &BTreeMap<String, BTreeMap<i32, i64>>,
        path: &Path,
    ) -> Result<Marks, CheckpointError> {
        let mut by_destination = BTreeMap::new();
        for (name, marks) in names {
            let destination =
                Destination::parse(name).ok_or_else(|| CheckpointError::UnknownDestination {
                    path: path.to_path_buf(),
                    name: name.clone(),
                })?;
            by_destination.insert(destination, marks.clone());
        }
        Ok(Marks { by_destination })
    }

    /// Destinations holding at least one mark.
    pub fn destinations(&self) -> impl Iterator<Item = Destination> + '_ {
        self.by_destination.keys().copied()
    }
}
// ---------------------------------------------------------------------------------------------
// The checkpoint
// ---------------------------------------------------------------------------------------------

/// Where checkpoints are kept (`--checkpoint-dir`, default `<output>/_checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
}

impl CheckpointConfig {
    /// `<output_dir>/_checkpoint`.
    pub fn under_output(output_dir: &Path) -> Self {
        CheckpointConfig {
            dir: output_dir.join(CHECKPOINT_DIR),
        }
    }
}

/// What the checkpoint knows about one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionState {
    /// Fetch from here on restart: the lowest offset held only in memory, or the next offset to
    /// route when nothing is held.
    pub resume_offset: i64,
    /// The next offset not yet routed at commit (`>= resume_offset`). Offsets from
    /// `resume_offset` up to here are a replay. A consumer may keep windows from closing until
    /// every partition has replayed up to here, so that a crash does not turn on-time rows into
    /// late ones; exactness does not depend on it.
    pub next_offset: i64,
    /// Maximum event time seen on the partition (its watermark before lateness).
    pub watermark_max_event_ms: Option<i64>,
}

/// Everything needed to resume exactly once. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_VERSION`] when written by this program.
    pub version: u32,
    /// Incremented by every commit ([`CheckpointStore::commit`] sets it).
    pub generation: u64,
    pub topic: String,
    pub window_ms: i64,
    /// Every window whose end is `<=` this is closed.
    pub closed_before: i64,
    pub partitions: BTreeMap<i32, PartitionState>,
    /// Starts of the windows open at commit (some may hold no rows after early flushes), so they
    /// are still reported, and get `_SUCCESS`, when they close after a restart.
    pub open_windows: BTreeSet<i64>,
    /// Destination directory name -> partition -> highest offset written there.
    pub marks: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Checkpoint {
    /// The state of a fresh start: nothing closed, no partitions, no marks.
    pub fn empty(topic: &str, window_ms: i64) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            generation: 0,
            topic: topic.to_string(),
            window_ms,
            closed_before: i64::MIN,
            partitions: BTreeMap::new(),
            open_windows: BTreeSet::new(),
            marks: BTreeMap::new(),
        }
    }

    /// Captures the consumer's state, pruning `marks` below the new resume offsets first.
    ///
    /// Preconditions (the exactness argument relies on them): the rows of every window returned
    /// by `close_ready` have been written; the late and dead-letter buffers have been written and
    /// are empty; every written file is fsynced, renamed and recorded in `marks`. `next_offsets`
    /// holds, for every assigned partition, the lowest offset not yet routed (fetched records
    /// still being decoded count as not routed).
    pub fn capture(
        topic: &str,
        buffer: &WindowBuffer,
        watermarks: &Watermarks,
        next_offsets: &BTreeMap<i32, i64>,
        marks: &mut Marks,
    ) -> Checkpoint {
        let maxima = watermarks.snapshot();
        let held = buffer.min_buffered_offsets();
        let partitions: BTreeMap<i32, PartitionState> = next_offsets
            .iter()
            .map(|(&p, &next)| {
                let resume = held.get(&p).map_or(next, |&h| h.min(next));
                let state = PartitionState {
                    resume_offset: resume,
                    next_offset: next,
                    watermark_max_event_ms: maxima.get(&p).copied().flatten(),
                };
                (p, state)
            })
            .collect();
        debug_assert!(
            held.keys().all(|p| partitions.contains_key(p)),
            "rows buffered for a partition without a next offset"
        );
        let resume: BTreeMap<i32, i64> = partitions
            .iter()
            .map(|(p, s)| (*p, s.resume_offset))
            .collect();
        marks.prune(&resume);
        Checkpoint {
            version: CHECKPOINT_VERSION,
            generation: 0,
            topic: topic.to_string(),
            window_ms: buffer.window_ms(),
            closed_before: buffer.closed_before(),
            partitions,
            open_windows: buffer.open_window_starts().into_iter().collect(),
            marks: marks.to_names(),
        }
    }

    /// Whether the window starting at `start_ms` is closed per this checkpoint.
    pub fn is_window_closed(&self, start_ms: i64) -> bool {
        window_end(start_ms, self.window_ms) <= self.closed_before
    }

    /// The resume offset of `partition`, if the checkpoint knows it.
    pub fn resume_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).map(|s| s.resume_offset)
    }

    /// Per-partition maximum event times, for [`Watermarks::restore`].
    /// A checkpoint committed while partitions are still replaying (after a restart) keeps, for
    /// each of them, the replay target it resumed with as `next_offset` (the resume offset is
    /// left as captured). Without this, a crash during replay would leave a checkpoint whose
    /// `next_offset` is below rows its restored watermark maxima already account for; the next
    /// restart would then lift its replay barrier too early and close windows whose rows had not
    /// been re-read yet, turning on-time rows into late ones (exactly once still held; found by
    /// `tests/faults.rs`, where a partition's on-time rows ended up in `_late` after repeated
    /// SIGKILLs).
    pub fn keep_replay_targets(&mut self, replay_until: &BTreeMap<i32, i64>) {
        for (partition, &target) in replay_until {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.next_offset = state.next_offset.max(target);
            }
        }
    }

    pub fn watermark_maxima(&self) -> BTreeMap<i32, Option<i64>> {
        self.partitions
            .iter()
            .map(|(p, s)| (*p, s.watermark_max_event_ms))
            .collect()
    }

    /// The marks, parsed; `path` names the checkpoint in errors.
    pub fn parsed_marks(&self, path: &Path) -> Result<Marks, CheckpointError> {
        Marks::from_names(&self.marks, path)
    }

    /// FNV-1a (64-bit) of the canonical (compact, field-ordered, sorted-map) JSON of `self`.
    fn checksum(&self) -> String {
        let body = serde_json::to_vec(self).expect("a checkpoint always serializes");
        format!("fnv1a64:{:016x}", fnv1a64(&body))
    }
}

/// 64-bit FNV-1a: small, dependency-free, and good enough to detect torn or edited files (it is
/// not a defence against deliberate tampering).
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// The file format: the checkpoint and a checksum over its canonical JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    checksum: String,
    checkpoint: Checkpoint,
}

/// Which step of a commit to stop after (tests simulate crashes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum CommitStep {
    TempWritten,
    CurrentRotated,
}

/// Outcome of reading one checkpoint file.
enum ReadOutcome {
    Valid(Box<Checkpoint>),
    Missing,
    Damaged(String),
}

/// A checkpoint as [`CheckpointStore::load`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCheckpoint {
    pub checkpoint: Checkpoint,
    /// Read from the previous generation because the current one is missing or damaged.
    pub from_previous: bool,
}

/// The checkpoint files of one consumer instance: `<dir>/<name>.json` (current),
/// `<name>.prev.json` (the generation before) and `<name>.json.tmp` (a commit in progress).
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    name: String,
    topic: String,
    window_ms: i64,
    last_generation: u64,
    /// The current file holds a valid checkpoint, so a commit may rotate it to `.prev.json`.
    current_is_valid: bool,
}

impl CheckpointStore {
    /// `checkpoint-p0_1_2` for partitions {0, 1, 2}: one checkpoint per partition set, so
    /// instances with different `--partitions` can share a checkpoint directory.
    pub fn name_for_partitions(partitions: &BTreeSet<i32>) -> String {
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        format!("{DEFAULT_CHECKPOINT_NAME}-p{}", list.join("_"))
    }

    /// Opens (creating the directory) the store named `name` for `topic` and `window_ms`, and loads
    /// its latest usable checkpoint (see [`load`](Self::load)); removes a leftover temporary file.
    pub fn open(
        config: &CheckpointConfig,
        name: &str,
        topic: &str,
        window_ms: i64,
    ) -> Result<(CheckpointStore, Option<Checkpoint>), CheckpointError> {
        let valid_name = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_name {
            return Err(CheckpointError::InvalidName(name.to_string()));
        }
        fs::create_dir_all(&config.dir)
            .map_err(io_err("create checkpoint directory", &config.dir))?;
        let mut store = CheckpointStore {
            dir: config.dir.clone(),
            name: name.to_string(),
            topic: topic.to_string(),
            window_ms,
            last_generation: 0,
            current_is_valid: false,
        };
        let loaded = store.load()?;
        let temp = store.temp_path();
        match fs::remove_file(&temp) {
            Ok(()) => {
                tracing::info!(path = %temp.display(), "removed an unfinished checkpoint commit")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &temp)(e)),
        }
        Ok(match loaded {
            Some(l) => {
                store.last_generation = l.checkpoint.generation;
                store.current_is_valid = !l.from_previous;
                (store, Some(l.checkpoint))
            }
            None => (store, None),
        })
    }

    /// `<dir>/<name>.json`.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    /// `<dir>/<name>.prev.json`.
    pub fn previous_path(&self) -> PathBuf {
        self.dir.join(format!("{}.prev.json", self.name))
    }

    fn temp_path(&self) -> PathBuf {
        self.dir
            .join(temp_file_name(&format!("{}.json", self.name)))
    }

    fn damaged_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json.damaged", self.name))
    }

    /// Generation of the last checkpoint loaded or committed (0: none).
    pub fn generation(&self) -> u64 {
        self.last_generation
    }

    /// Reads the latest usable checkpoint without changing anything.
    ///
    /// - current valid: it.
    /// - current missing, previous valid: the previous (a commit was interrupted between its two
    ///   renames), with a warning.
    /// - current damaged (unparseable, truncated, checksum mismatch), previous valid: the previous,
    ///   with a warning. Resuming from an older generation is safe: see the module docs.
    /// - neither exists: `None` (fresh start).
    /// - otherwise: [`CheckpointError::Unusable`]; never a silent restart from the beginning.
    ///
    /// A checkpoint for another topic or window width, or of another format version, is an error
    /// (not a reason to fall back).
    pub fn load(&self) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let (current, previous) = (self.current_path(), self.previous_path());
        // `None`: the current file is missing.
        let current_problem = match self.read(&current)? {
            ReadOutcome::Valid(c) => {
                return Ok(Some(LoadedCheckpoint {
                    checkpoint: *c,
                    from_previous: false,
                }))
            }
            ReadOutcome::Missing => None,
            ReadOutcome::Damaged(problem) => Some(problem),
        };
        match self.read(&previous)? {
            ReadOutcome::Valid(c) => {
                tracing::warn!(
                    current = %current.display(),
                    problem = current_problem.as_deref().unwrap_or("missing (a commit was interrupted)"),
                    previous = %previous.display(),
                    generation = c.generation,
                    "resuming from the previous checkpoint generation; output written after it is \
                     removed and its records replayed"
                );
                Ok(Some(LoadedCheckpoint {
                    checkpoint: *c,
                    from_previous: true,
                }))
            }
            ReadOutcome::Missing => match current_problem {
                None => Ok(None),
                Some(current_problem) => Err(CheckpointError::Unusable {
                    current,
                    current_problem,
                    previous,
                    previous_problem: "missing".into(),
                }),
            },
            ReadOutcome::Damaged(previous_problem) => Err(CheckpointError::Unusable {
                current,
                current_problem: current_problem.unwrap_or_else(|| "missing".into()),
                previous,
                previous_problem,
            }),
        }
    }

    fn read(&self, path: &Path) -> Result<ReadOutcome, CheckpointError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
            Err(e) => return Err(io_err("read checkpoint", path)(e)),
        };
        let json: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Ok(ReadOutcome::Damaged(format!("not valid JSON ({e})"))),
        };
        if let Some(version) = json.pointer("/checkpoint/version").and_then(|v| v.as_u64()) {
            if version != u64::from(CHECKPOINT_VERSION) {
                return Err(CheckpointError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found: version,
                });
            }
        }
        let envelope: Envelope = match serde_json::from_value(json) {
            Ok(e) => e,
            Err(e) => return Ok(ReadOutcome::Damaged(format!("not a checkpoint ({e})"))),
        };
        let actual = envelope.checkpoint.checksum();
        if envelope.checksum != actual {
            return Ok(ReadOutcome::Damaged(format!(
                "damaged (checksum {} recorded, {actual} computed)",
                envelope.checksum
            )));
        }
        let checkpoint = envelope.checkpoint;
        self.check_identity(path, &checkpoint)?;
        if let Err(CheckpointError::UnknownDestination { name, .. }) = checkpoint.parsed_marks(path)
        {
            return Ok(ReadOutcome::Damaged(format!(
                "damaged (unknown destination `{name}`)"
            )));
        }
        Ok(ReadOutcome::Valid(Box::new(checkpoint)))
    }

    fn check_identity(&self, path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        if checkpoint.topic != self.topic {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                field: "topic",
                found: checkpoint.topic.clone(),
                expected: self.topic.clone(),
            });
        }
        if checkpoint.window_ms != self.window_ms {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                field: "window width (ms)",
                found: checkpoint.window_ms.to_string(),
                expected: self.window_ms.to_string(),
            });
        }
        Ok(())
    }

    /// Commits `checkpoint` atomically as the next generation (setting its `version` and
    /// `generation`): write `<name>.json.tmp`, fsync it, rename the current file to
    /// `<name>.prev.json`, rename the temporary file to `<name>.json`, fsync the directory.
    /// A crash at any point leaves a state [`load`](Self::load) resumes from correctly.
    pub fn commit(&mut self, checkpoint: &mut Checkpoint) -> Result<(), CheckpointError> {
        self.commit_until(checkpoint, None)
    }

    fn commit_until(
        &mut self,
        checkpoint: &mut Checkpoint,
        stop_after: Option<CommitStep>,
    ) -> Result<(), CheckpointError> {
        let current = self.current_path();
        self.check_identity(&current, checkpoint)?;
        checkpoint.version = CHECKPOINT_VERSION;
        checkpoint.generation = self.last_generation + 1;
        let envelope = Envelope {
            checksum: checkpoint.checksum(),
            checkpoint: checkpoint.clone(),
        };
        let mut text = serde_json::to_string_pretty(&envelope).expect("a checkpoint serializes");
        text.push('\n');

        let temp = self.temp_path();
        let mut file = fs::File::create(&temp).map_err(io_err("create", &temp))?;
        file.write_all(text.as_bytes())
            .map_err(io_err("write", &temp))?;
        file.sync_all().map_err(io_err("fsync", &temp))?;
        drop(file);
        if stop_after == Some(CommitStep::TempWritten) {
            return Ok(());
        }

        if current.exists() {
            // A damaged current file (we resumed from .prev) must not replace the good previous
            // generation; keep it aside for investigation instead.
            let aside = if self.current_is_valid {
                self.previous_path()
            } else {
                self.damaged_path()
            };
            fs::rename(&current, &aside).map_err(io_err("rename checkpoint", &current))?;
        }
        if stop_after == Some(CommitStep::CurrentRotated) {
            return Ok(());
        }
        fs::rename(&temp, &current).map_err(io_err("rename checkpoint", &temp))?;
        sync_dir(&self.dir)?;
        self.last_generation = checkpoint.generation;
        self.current_is_valid = true;
        Ok(())
    }
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Startup recovery of the output directory
// ---------------------------------------------------------------------------------------------

/// The part of an output directory one consumer instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputScope {
    pub output_dir: PathBuf,
    /// Only part files (and their temporary files) of these partitions are touched.
    pub partitions: BTreeSet<i32>,
    /// Name of the marker written in closed windows (default `_SUCCESS`).
    pub success_marker: String,
}

impl OutputScope {
    /// `output_dir` for `partitions`, with the `_SUCCESS` marker.
    pub fn new(output_dir: impl Into<PathBuf>, partitions: BTreeSet<i32>) -> Self {
        OutputScope {
            output_dir: output_dir.into(),
            partitions,
            success_marker: SUCCESS_MARKER.to_string(),
        }
    }
}

/// What startup recovery removes and creates (planned by [`plan_recovery`], done by
/// [`RecoveryReport::apply`]); every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// `*.tmp` files of owned partitions (writes that never completed).
    pub temp_files_removed: Vec<PathBuf>,
    /// Part files of owned partitions written after the last committed checkpoint.
    pub uncommitted_files_removed: Vec<PathBuf>,
    /// Success markers in windows the checkpoint does not consider closed.
    pub success_markers_removed: Vec<PathBuf>,
    /// Success markers missing from closed windows holding committed files of this instance.
    pub success_markers_created: Vec<PathBuf>,
    /// Committed part files of owned partitions, left alone.
    pub committed_files_kept: usize,
}

impl RecoveryReport {
    /// Nothing to remove or create.
    pub fn is_clean(&self) -> bool {
        self.temp_files_removed.is_empty()
            && self.uncommitted_files_removed.is_empty()
            && self.success_markers_removed.is_empty()
            && self.success_markers_created.is_empty()
    }

    /// Performs the plan. Files already gone are fine (recovery is idempotent).
    pub fn apply(&self) -> Result<(), CheckpointError> {
        for path in self
            .temp_files_removed
            .iter()
            .chain(&self.uncommitted_files_removed)
            .chain(&self.success_markers_removed)
        {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", path)(e)),
            }
        }
        for path in &self.success_markers_created {
            fs::File::create(path).map_err(io_err("create", path))?;
        }
        Ok(())
    }
}

/// Call before [`CheckpointStore::open`] creates `checkpoint_dir`: when that directory does not
/// exist yet but the output already holds part files of the owned partitions, those files were
/// committed by a checkpoint that is gone (deleted, or `--checkpoint` now points elsewhere), and
/// [`recover_output`] would delete them all as uncommitted: that is refused
/// ([`CheckpointError::OrphanedOutput`]) instead of a silent restart. Files written before the
/// first commit of a crashed run are not affected: `open` creates the directory before anything
/// is written, so it exists then.
pub fn refuse_orphaned_output(
    scope: &OutputScope,
    checkpoint_dir: &Path,
) -> Result<(), CheckpointError> {
    if checkpoint_dir.exists() {
        return Ok(());
    }
    let plan = plan_recovery(scope, None)?;
    match plan.uncommitted_files_removed.first() {
        None => Ok(()),
        Some(example) => Err(CheckpointError::OrphanedOutput {
            output: scope.output_dir.clone(),
            checkpoint_dir: checkpoint_dir.to_path_buf(),
            files: plan.uncommitted_files_removed.len(),
            partitions: scope.partitions.clone(),
            example: example.clone(),
        }),
    }
}

/// Plans and applies startup recovery: see [`plan_recovery`].
pub fn recover_output(
    scope: &OutputScope,
    checkpoint: Option<&Checkpoint>,
) -> Result<RecoveryReport, CheckpointError> {
    let report = plan_recovery(scope, checkpoint)?;
    report.apply()?;
    Ok(report)
}

/// Decides, without changing anything, what startup recovery must do so that the output holds
/// exactly what `checkpoint` (or, when `None`, nothing) committed for the owned partitions:
///
/// - remove `*.tmp` part files of owned partitions, anywhere under a destination directory;
/// - remove part files of owned partitions that are not committed (`last_offset` above the mark
///   of their destination and partition, and not below the partition's resume offset);
/// - remove the success marker from window directories that are not closed per the checkpoint,
///   and create it in closed ones that hold committed files of owned partitions.
///
/// The checkpoint directory and directories that are not destinations are never touched.
/// With `checkpoint == None` every part file of an owned partition counts as uncommitted:
/// a consumer that finds such files without a checkpoint may prefer to stop and ask.
pub fn plan_recovery(
    scope: &OutputScope,
    checkpoint: Option<&Checkpoint>,
) -> Result<RecoveryReport, CheckpointError> {
    let marks = match checkpoint {
        Some(c) => c.parsed_marks(&scope.output_dir.join(CHECKPOINT_DIR))?,
        None => Marks::new(),
    };
    let is_committed = |destination: Destination, part: &PartFile| {
        marks
            .get(destination, part.partition)
            .is_some_and(|mark| part.last_offset <= mark)
            || checkpoint
                .and_then(|c| c.resume_offset(part.partition))
                .is_some_and(|resume| part.last_offset < resume)
    };

    let mut report = RecoveryReport::default();
    let top = match fs::read_dir(&scope.output_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io_err("list output directory", &scope.output_dir)(e)),
    };
    let mut destinations = Vec::new();
    for entry in top {
        let entry = entry.map_err(io_err("list output directory", &scope.output_dir))?;
        let path = entry.path();
        if !entry
            .file_type()
            .map_err(io_err("inspect", &path))?
            .is_dir()
        {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name == LATE_DIR {
            for late in fs::read_dir(&path).map_err(io_err("list", &path))? {
                let late = late.map_err(io_err("list", &path))?;
                let late_path = late.path();
                let is_dir = late
                    .file_type()
                    .map_err(io_err("inspect", &late_path))?
                    .is_dir();
                let start = late.file_name().to_str().and_then(parse_window_dir_name);
                if let (true, Some(start)) = (is_dir, start) {
                    destinations.push((Destination::Late(start), late_path));
                }
            }
        } else if let Some(destination) = Destination::parse(name) {
            destinations.push((destination, path));
        }
    }
    for (destination, path) in destinations {
        let mut committed_here = 0usize;
        let mut files = Vec::new();
        list_files(&path, &mut files)?;
        for file in files {
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(unfinished) = name.strip_suffix(TMP_SUFFIX) {
                let unfinished = unfinished.strip_prefix('.').unwrap_or(unfinished);
                if parse_part_file_name(unfinished)
                    .is_some_and(|p| scope.partitions.contains(&p.partition))
                {
                    report.temp_files_removed.push(file);
                }
                continue;
            }
            let Some(part) = parse_part_file_name(name) else {
                continue;
            };
            if !scope.partitions.contains(&part.partition) {
                continue;
            }
            if is_committed(destination, &part) {
                committed_here += 1;
            } else {
                report.uncommitted_files_removed.push(file);
            }
        }
        report.committed_files_kept += committed_here;

        if let Destination::Window(start) = destination {
            let marker = path.join(&scope.success_marker);
            let closed = checkpoint.is_some_and(|c| c.is_window_closed(start));
            let ours = committed_here > 0
                || scope
                    .partitions
                    .iter()
                    .any(|p| marks.get(destination, *p).is_some());
            match (closed, marker.exists()) {
                (false, true) => report.success_markers_removed.push(marker),
                (true, false) if ours => report.success_markers_created.push(marker),
                _ => {}
            }
        }
    }
    report.temp_files_removed.sort();
    report.uncommitted_files_removed.sort();
    report.success_markers_removed.sort();
    report.success_markers_created.sort();
    Ok(report)
}

/// Every file under `dir`, recursively.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(io_err("inspect", &path))?
            .is_dir()
        {
            list_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOPIC: &str = "reclamacoes";

    // ----- names -----

    #[test]
    fn window_dir_names_are_rfc3339_utc() {
        assert_eq!(
            window_dir_name(1_795_615_200_000),
            "window_start=2026-11-25T14:00:00Z"
        );
        assert_eq!(
            window_dir_name(1_795_615_200_500),
            "window_start=2026-11-25T14:00:00.500Z"
        );
        assert_eq!(
            window_dir_name(-60_000),
            "window_start=1969-12-31T23:59:00Z"
        );
        assert_eq!(
            parse_window_dir_name("window_start=2026-11-25T14:00:00Z"),
            Some(1_795_615_200_000)
        );
        assert_eq!(
            window_dir_name(i64::MAX),
            format!("window_start={}", i64::MAX)
        );
        for bad in [
            "window_start=",
            "window_start=x",
            "window_start=2026-13-01T00:00:00Z",
            "_late2",
        ] {
            assert_eq!(parse_window_dir_name(bad), None, "{bad}");
        }
        assert_eq!(Destination::parse("_late"), None);
        assert_eq!(
            Destination::parse("_late/window_start=1970-01-01T00:00:00Z"),
            Some(Destination::Late(0))
        );
        assert_eq!(
            Destination::Late(60_000).path_under(Path::new("/o")),
            Path::new("/o/_late/window_start=1970-01-01T00:01:00Z")
        );
        assert_eq!(
            Destination::parse("_dead_letter"),
            Some(Destination::DeadLetter)
        );
        assert_eq!(Destination::parse("_checkpoint"), None);
        assert_eq!(
            Destination::Window(0).to_string(),
            "window_start=1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn part_file_names_parse_back_and_junk_is_rejected() {
        let name = part_file_name(3, 10, 42, "parquet");
        assert_eq!(name, "part-3-10-42.parquet");
        assert_eq!(
            parse_part_file_name(&name),
            Some(PartFile {
                partition: 3,
                first_offset: 10,
                last_offset: 42,
                ext: "parquet".into()
            })
        );
        assert_eq!(
            parse_part_file_name("part-0-1-2.jsonl.gz").unwrap().ext,
            "jsonl.gz"
        );
        for bad in [
            "part-1-5-3.parquet",
            "part-1-2.parquet",
            "part-a-1-2.parquet",
            "part-1-2-3",
            "part-1-2-3.",
            "part-1-2-3.parquet.tmp",
            "part--1-2-3.parquet",
            "part-+1-2-3.parquet",
            "part-1-2-3-4.parquet",
            "_SUCCESS",
        ] {
            assert_eq!(parse_part_file_name(bad), None, "{bad}");
        }
        assert_eq!(temp_file_name(&name), "part-3-10-42.parquet.tmp");
    }

    proptest! {
        #[test]
        fn window_dir_names_round_trip(start in any::<i64>()) {
            let name = window_dir_name(start);
            prop_assert_eq!(parse_window_dir_name(&name), Some(start), "{}", name);
        }

        #[test]
        fn readable_window_names_round_trip(start in -62_167_219_200_000i64..253_402_300_799_999) {
            let name = window_dir_name(start);
            prop_assert!(name.ends_with('Z'), "{}", name);
            prop_assert_eq!(parse_window_dir_name(&name), Some(start));
        }

        #[test]
        fn part_file_names_round_trip(p in 0..i32::MAX, first in 0..i64::MAX, len in 0..1_000i64) {
            let last = first.saturating_add(len);
            let parsed = parse_part_file_name(&part_file_name(p, first, last, "parquet")).unwrap();
            prop_assert_eq!((parsed.partition, parsed.first_offset, parsed.last_offset), (p, first, last));
        }
    }

    // ----- marks -----

    #[test]
    fn skip_rules_table() {
        let w = Destination::Window(1_000);
        let mut m = Marks::new();
        m.record_written(w, 0, 10);
        m.record_written(w, 0, 7); // never goes down
        m.record_written(Destination::Late(1_000), 0, 20);
        m.record_written(Destination::Late(2_000), 0, 25);
        m.record_written(Destination::DeadLetter, 1, 5);
        assert_eq!(m.get(w, 0), Some(10));
        assert_eq!(m.get(Destination::Late(1_000), 0), Some(20));
        assert_eq!(m.get(Destination::Late(2_000), 0), Some(25));

        // (window_start, partition, offset, skip?)
        let table = [
            (1_000, 0, 10, true),  // written to the window (closed, or flushed early)
            (1_000, 0, 15, true),  // between: went to _late
            (1_000, 0, 20, true),  // the window's last late row
            (1_000, 0, 21, false), // beyond both of the window's marks
            (2_000, 0, 21, true),  // another window's late row with a higher offset
            (2_000, 0, 26, false),
            (3_000, 0, 3, false), // no mark for this window: a late mark of another one
            (1_000, 1, 3, false), // marks are per partition
        ];
        for (start, p, off, skip) in table {
            assert_eq!(
                m.should_skip_row(start, p, off),
                skip,
                "{start} p{p} @{off}"
            );
        }
        assert!(m.should_skip_dead_letter(1, 5));
        assert!(!m.should_skip_dead_letter(1, 6));
        assert!(!m.should_skip_dead_letter(0, 0));
    }

    #[test]
    fn prune_drops_marks_below_resume_only() {
        let mut m = Marks::new();
        m.record_written(Destination::Window(0), 0, 4);
        m.record_written(Destination::Window(0), 1, 9);
        m.record_written(Destination::Late(0), 0, 5);
        m.record_written(Destination::DeadLetter, 2, 1);
        m.prune(&BTreeMap::from([(0, 5), (1, 5)]));
        assert_eq!(m.get(Destination::Window(0), 0), None);
        assert_eq!(m.get(Destination::Window(0), 1), Some(9));
        assert_eq!(
            m.get(Destination::Late(0), 0),
            Some(5),
            "equal to resume: kept"
        );
        assert_eq!(
            m.get(Destination::DeadLetter, 2),
            Some(1),
            "p2 has no resume offset"
        );
        m.prune(&BTreeMap::from([(1, 10), (2, 2), (0, 6)]));
        assert_eq!(m.destinations().count(), 0);
        assert!(m.to_names().is_empty());
    }

    #[test]
    fn marks_round_trip_through_names_and_reject_unknown() {
        let mut m = Marks::new();
        m.record_written(Destination::Window(1_795_615_200_000), 0, 4);
        m.record_written(Destination::Late(1_795_615_200_000), 1, 9);
        m.record_written(Destination::DeadLetter, 1, 2);
        let names = m.to_names();
        let keys: Vec<&str> = names.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_dead_letter",
                "_late/window_start=2026-11-25T14:00:00Z",
                "window_start=2026-11-25T14:00:00Z"
            ]
        );
        assert_eq!(Marks::from_names(&names, Path::new("c.json")).unwrap(), m);
        for bad in ["oops", "_late", "_late/x", "_late/_late"] {
            let names = BTreeMap::from([(bad.to_string(), BTreeMap::new())]);
            let e = Marks::from_names(&names, Path::new("c.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("c.json") && e.contains(&format!("`{bad}`")),
                "{e}"
            );
        }
    }

    // ----- store -----

    fn sample(generation_hint: i64) -> Checkpoint {
        let mut c = Checkpoint::empty(TOPIC, 60_000);
        c.closed_before = 120_000 + generation_hint;
        c.partitions.insert(
            0,
            PartitionState {
                resume_offset: 42,
                next_offset: 45,
                watermark_max_event_ms: Some(130_000),
            },
        );
        c.open_windows.insert(120_000);
        c.marks.insert(
            "_late/window_start=1970-01-01T00:00:00Z".into(),
            BTreeMap::from([(0, 41 + generation_hint)]),
        );
        c
    }

    fn open(dir: &Path) -> Result<(CheckpointStore, Option<Checkpoint>), CheckpointError> {
        CheckpointStore::open(
            &CheckpointConfig {
                dir: dir.to_path_buf(),
            },
            DEFAULT_CHECKPOINT_NAME,
            TOPIC,
            60_000,
        )
    }

    #[test]
    fn commit_then_load_round_trips_and_rotates_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, loaded) = open(tmp.path()).unwrap();
        assert_eq!(loaded, None);
        let mut first = sample(0);
        store.commit(&mut first).unwrap();
        assert_eq!(first.generation, 1);
        let mut second = sample(1);
        store.commit(&mut second).unwrap();
        assert_eq!(second.generation, 2);
        assert!(store.current_path().ends_with("checkpoint.json"));
        assert!(store.previous_path().ends_with("checkpoint.prev.json"));
        assert!(!tmp.path().join("checkpoint.json.tmp").exists());

        let (store, loaded) = open(tmp.path()).unwrap();
        assert_eq!(loaded, Some(second));
        assert_eq!(store.generation(), 2);
        let text = fs::read_to_string(store.previous_path()).unwrap();
        let previous: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(previous.checkpoint, first);
        assert!(text.contains("\"checksum\": \"fnv1a64:"), "{text}");
    }

    #[test]
    fn truncated_current_falls_back_to_previous_and_is_kept_aside_on_next_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        let mut first = sample(0);
        store.commit(&mut first).unwrap();
        store.commit(&mut sample(1)).unwrap();
        let current = store.current_path();
        let text = fs::read(&current).unwrap();
        fs::write(&current, &text[..text.len() / 2]).unwrap();

        let loaded = store.load().unwrap().unwrap();
        assert!(loaded.from_previous);
        assert_eq!(loaded.checkpoint, first);

        let (mut store, resumed) = open(tmp.path()).unwrap();
        assert_eq!(resumed, Some(first.clone()));
        let mut next = sample(2);
        store.commit(&mut next).unwrap();
        assert_eq!(next.generation, 2, "the damaged generation is not counted");
        // The good previous generation was not overwritten by the damaged file.
        let previous: Envelope =
            serde_json::from_slice(&fs::read(store.previous_path()).unwrap()).unwrap();
        assert_eq!(previous.checkpoint, first);
        assert!(tmp.path().join("checkpoint.json.damaged").exists());
        assert_eq!(open(tmp.path()).unwrap().1, Some(next));
    }

    #[test]
    fn checksum_mismatch_is_detected_even_when_json_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        store.commit(&mut sample(0)).unwrap();
        let mut newest = sample(1);
        store.commit(&mut newest).unwrap();
        let current = store.current_path();
        let text = fs::read_to_string(&current).unwrap();
        let edited = text.replace("\"resume_offset\": 42", "\"resume_offset\": 43");
        assert_ne!(text, edited);
        fs::write(&current, edited).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert!(loaded.from_previous);
        assert_eq!(loaded.checkpoint.generation, 1);
    }

    #[test]
    fn both_generations_damaged_is_an_error_naming_both_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        store.commit(&mut sample(0)).unwrap();
        store.commit(&mut sample(1)).unwrap();
        fs::write(store.current_path(), "{\"checksum\": ").unwrap();
        fs::write(store.previous_path(), "").unwrap();
        let e = open(tmp.path()).unwrap_err();
        assert!(matches!(e, CheckpointError::Unusable { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("checkpoint.json") && msg.contains("checkpoint.prev.json"),
            "{msg}"
        );
        assert!(msg.contains("move the output directory"), "{msg}");

        // Damaged current and no previous: also an error, never a fresh start.
        fs::remove_file(store.previous_path()).unwrap();
        let msg = open(tmp.path()).unwrap_err().to_string();
        assert!(msg.contains("is missing"), "{msg}");
    }

    #[test]
    fn interrupted_commits_resume_from_a_complete_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        let mut first = sample(0);
        store.commit(&mut first).unwrap();

        // Crash after the temporary file was written: the current generation stands.
        store
            .commit_until(&mut sample(1), Some(CommitStep::TempWritten))
            .unwrap();
        assert!(tmp.path().join("checkpoint.json.tmp").exists());
        let (mut store, loaded) = open(tmp.path()).unwrap();
        assert_eq!(loaded, Some(first.clone()));
        assert!(
            !tmp.path().join("checkpoint.json.tmp").exists(),
            "leftover removed"
        );

        // Crash between the two renames: only .prev exists; it is used.
        store
            .commit_until(&mut sample(1), Some(CommitStep::CurrentRotated))
            .unwrap();
        assert!(!store.current_path().exists());
        let (mut store, loaded) = open(tmp.path()).unwrap();
        assert_eq!(loaded, Some(first));
        let mut next = sample(2);
        store.commit(&mut next).unwrap();
        assert_eq!(open(tmp.path()).unwrap().1, Some(next));
    }

    #[test]
    fn a_checkpoint_for_another_topic_window_or_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        store.commit(&mut sample(0)).unwrap();
        let config = CheckpointConfig {
            dir: tmp.path().to_path_buf(),
        };
        let e = CheckpointStore::open(&config, DEFAULT_CHECKPOINT_NAME, "other", 60_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("topic `reclamacoes`") && e.contains("`other`"),
            "{e}"
        );
        let e = CheckpointStore::open(&config, DEFAULT_CHECKPOINT_NAME, TOPIC, 30_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("60000") && e.contains("30000"), "{e}");

        let text = fs::read_to_string(store.current_path()).unwrap();
        fs::write(
            store.current_path(),
            text.replace("\"version\": 1", "\"version\": 2"),
        )
        .unwrap();
        let e = open(tmp.path()).unwrap_err();
        assert!(
            matches!(e, CheckpointError::UnsupportedVersion { found: 2, .. }),
            "{e}"
        );

        assert!(matches!(
            CheckpointStore::open(&config, "../x", TOPIC, 60_000),
            Err(CheckpointError::InvalidName(_))
        ));
        assert_eq!(
            CheckpointStore::name_for_partitions(&BTreeSet::from([2, 0, 1])),
            "checkpoint-p0_1_2"
        );
    }

    // ----- recovery -----

    #[test]
    fn replay_targets_survive_a_commit_during_replay() {
        let mut cp = sample(1);
        let before = cp.partitions.clone();
        let (&p, state) = before.iter().next().unwrap();
        let replay_until = BTreeMap::from([(p, state.next_offset + 100), (999, 5)]);
        cp.keep_replay_targets(&replay_until);
        assert_eq!(cp.partitions[&p].next_offset, state.next_offset + 100);
        assert_eq!(cp.partitions[&p].resume_offset, state.resume_offset);
        for (q, s) in &before {
            if *q != p {
                assert_eq!(&cp.partitions[q], s);
            }
        }
        assert!(!cp.partitions.contains_key(&999));
        // A target already passed changes nothing.
        let mut again = cp.clone();
        again.keep_replay_targets(&BTreeMap::from([(p, 0)]));
        assert_eq!(again, cp);
    }

    #[test]
    fn output_without_its_checkpoint_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        let checkpoint_dir = out.join(CHECKPOINT_DIR);
        let scope = OutputScope::new(&out, BTreeSet::from([0, 1]));
        // Nothing written yet: a fresh start.
        refuse_orphaned_output(&scope, &checkpoint_dir).unwrap();
        let window = out.join(window_dir_name(0));
        fs::create_dir_all(&window).unwrap();
        touch(&window.join(part_file_name(1, 0, 9, "parquet")));
        // Another instance's partition does not count; ours does.
        let other = OutputScope::new(&out, BTreeSet::from([2]));
        refuse_orphaned_output(&other, &checkpoint_dir).unwrap();
        let e = refuse_orphaned_output(&scope, &checkpoint_dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 part file(s)")
                && e.contains("no checkpoint directory")
                && e.contains("part-1-0-9"),
            "{e}"
        );
        // Once the directory exists (a run that crashed before its first commit), recovery decides.
        fs::create_dir_all(&checkpoint_dir).unwrap();
        refuse_orphaned_output(&scope, &checkpoint_dir).unwrap();
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn recovery_removes_exactly_the_uncommitted_files_and_fixes_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let w0 = window_dir_name(0);
        let w1 = window_dir_name(60_000);
        let w2 = window_dir_name(120_000);
        let mut c = Checkpoint::empty(TOPIC, 60_000);
        c.closed_before = 120_000; // w0 and w1 closed, w2 open
        for p in [0, 1] {
            c.partitions.insert(
                p,
                PartitionState {
                    resume_offset: 50,
                    next_offset: 80,
                    watermark_max_event_ms: None,
                },
            );
        }
        let mut marks = Marks::new();
        marks.record_written(Destination::Window(60_000), 0, 60);
        marks.record_written(Destination::Window(120_000), 0, 70);
        marks.record_written(Destination::Late(0), 1, 53);
        marks.record_written(Destination::Late(60_000), 1, 55);
        c.marks = marks.to_names();

        let keep = [
            format!("{w0}/part-0-1-10.parquet"),  // below resume, mark pruned
            format!("{w1}/part-0-55-60.parquet"), // covered by the mark
            format!("{w2}/part-0-61-70.parquet"), // early flush of an open window
            format!("_late/{w1}/part-1-51-55.parquet"),
            format!("{w0}/part-7-0-99.parquet"), // partition 7 is not ours
            format!("{w2}/part-7-0-99.parquet.tmp"), // nor its temporary files
            format!("{w2}/notes.txt.tmp"),       // not a part file
            "other/part-0-900-901.parquet".to_string(), // not a destination
            "_checkpoint/part-0-900-901.json".to_string(),
            "_late/part-1-56-57.parquet".to_string(), // not in a window: not a destination
        ];
        let removed = [
            format!("{w1}/part-0-61-61.parquet"),          // after the mark
            format!("{w2}/part-0-71-80.parquet"),          // after the mark
            format!("_late/{w1}/part-1-56-57.parquet"),    // after the mark
            format!("_late/{w0}/part-1-54-54.parquet"),    // above its window's mark (53)
            "_dead_letter/part-0-50-50.jsonl".to_string(), // no mark, not below resume
            format!("{w2}/sub/part-1-50-50.parquet"),      // nested, no mark
        ];
        let temps = [
            format!("{w2}/part-0-81-90.parquet.tmp"),
            format!("_late/{w1}/.part-1-58-58.parquet.tmp"),
        ];
        for f in keep.iter().chain(&removed).chain(&temps) {
            touch(&out.join(f));
        }
        touch(&out.join(&w2).join(SUCCESS_MARKER)); // open window: must go

        let scope = OutputScope::new(out, BTreeSet::from([0, 1]));
        let plan = plan_recovery(&scope, Some(&c)).unwrap();
        assert!(!plan.is_clean());
        let mut expect_removed: Vec<PathBuf> = removed.iter().map(|f| out.join(f)).collect();
        expect_removed.sort();
        assert_eq!(plan.uncommitted_files_removed, expect_removed);
        let mut expect_temps: Vec<PathBuf> = temps.iter().map(|f| out.join(f)).collect();
        expect_temps.sort();
        assert_eq!(plan.temp_files_removed, expect_temps);
        assert_eq!(
            plan.success_markers_removed,
            vec![out.join(&w2).join(SUCCESS_MARKER)]
        );
        // w0 holds a committed file of ours (its mark was pruned), w1 a marked one.
        assert_eq!(
            plan.success_markers_created,
            vec![
                out.join(&w0).join(SUCCESS_MARKER),
                out.join(&w1).join(SUCCESS_MARKER)
            ]
        );
        assert_eq!(plan.committed_files_kept, 4);
        assert!(out.join(&removed[0]).exists(), "planning changes nothing");

        let report = recover_output(&scope, Some(&c)).unwrap();
        assert_eq!(report, plan);
        for f in &keep {
            assert!(out.join(f).exists(), "{f} must be kept");
        }
        for f in removed.iter().chain(&temps) {
            assert!(!out.join(f).exists(), "{f} must be removed");
        }
        assert!(out.join(&w0).join(SUCCESS_MARKER).exists());
        assert!(!out.join(&w2).join(SUCCESS_MARKER).exists());
        assert!(
            recover_output(&scope, Some(&c)).unwrap().is_clean(),
            "idempotent"
        );

        // Without a checkpoint nothing of ours is committed and no window is closed.
        let report = recover_output(&scope, None).unwrap();
        assert_eq!(report.uncommitted_files_removed.len(), 4);
        assert_eq!(report.success_markers_removed.len(), 2);
        assert!(out.join(&keep[4]).exists() && out.join(&keep[7]).exists());
        // A missing output directory is simply clean.
        let missing = OutputScope::new(out.join("nope"), BTreeSet::from([0]));
        assert!(recover_output(&missing, None).unwrap().is_clean());
    }

    // ----- the whole design, end to end -----

    /// A consumer over a simulated topic that uses `WindowBuffer`, `Watermarks`, `Marks`, the real
    /// checkpoint store and real files, and can crash at any point.
    mod simulation {
        use super::*;
        use crate::row::OutputRow;
        use crate::window::{window_start, Routed, WindowConfig};
        use std::time::Duration;
        use tokio::time::Instant;

        const WIDTH: i64 = 100;
        const EXT: &str = "txt";

        fn config() -> WindowConfig {
            WindowConfig {
                window_ms: WIDTH,
                allowed_lateness_ms: 20,
                idle_timeout: Duration::from_secs(30),
            }
        }

        /// Per partition, the records by offset; `None` is an undecodable record.
        pub type Stream = BTreeMap<i32, Vec<Option<i64>>>;

        pub struct Consumer<'a> {
            stream: &'a Stream,
            scope: OutputScope,
            store: CheckpointStore,
            buffer: WindowBuffer,
            watermarks: Watermarks,
            marks: Marks,
            late: BTreeMap<i32, Vec<OutputRow>>,
            dead: BTreeMap<i32, Vec<i64>>,
            next: BTreeMap<i32, i64>,
            closed_since_commit: Vec<i64>,
        }

        impl<'a> Consumer<'a> {
            pub fn start(stream: &'a Stream, output: &Path, now: Instant) -> Consumer<'a> {
                let scope = OutputScope::new(output, stream.keys().copied().collect());
                let name = CheckpointStore::name_for_partitions(&scope.partitions);
                let (store, checkpoint) = CheckpointStore::open(
                    &CheckpointConfig::under_output(output),
                    &name,
                    "t",
                    WIDTH,
                )
                .unwrap();
                recover_output(&scope, checkpoint.as_ref()).unwrap();
                let (buffer, watermarks, marks, next) = match &checkpoint {
                    Some(c) => (
                        WindowBuffer::restore(
                            &config(),
                            c.closed_before,
                            c.open_windows.iter().copied(),
                        ),
                        Watermarks::restore(&config(), c.watermark_maxima(), now),
                        c.parsed_marks(&store.current_path()).unwrap(),
                        scope
                            .partitions
                            .iter()
                            .map(|&p| (p, c.resume_offset(p).unwrap_or(0)))
                            .collect(),
                    ),
                    None => (
                        WindowBuffer::new(&config(), i64::MIN),
                        Watermarks::new(&config(), scope.partitions.iter().copied(), now),
                        Marks::new(),
                        scope.partitions.iter().map(|&p| (p, 0)).collect(),
                    ),
                };
                Consumer {
                    stream,
                    scope,
                    store,
                    buffer,
                    watermarks,
                    marks,
                    late: BTreeMap::new(),
                    dead: BTreeMap::new(),
                    next,
                    closed_since_commit: Vec::new(),
                }
            }

            /// Writes a part file (temporary name, then rename); the caller records the mark.
            fn write(&self, destination: Destination, partition: i32, offsets: &[i64]) {
                let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
                    return;
                };
                let dir = destination.path_under(&self.scope.output_dir);
                fs::create_dir_all(&dir).unwrap();
                let name = part_file_name(partition, first, last, EXT);
                let temp = dir.join(temp_file_name(&name));
                let text: Vec<String> = offsets.iter().map(i64::to_string).collect();
                fs::write(&temp, text.join("\n")).unwrap();
                assert!(
                    !dir.join(&name).exists(),
                    "{name} written twice in {destination}"
                );
                fs::rename(&temp, dir.join(&name)).unwrap();
            }

            fn write_rows(&mut self, start: i64, rows: BTreeMap<i32, Vec<OutputRow>>) {
                for (p, rows) in rows {
                    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
                    self.write(Destination::Window(start), p, &offsets);
                    self.marks.record_written(
                        Destination::Window(start),
                        p,
                        *offsets.last().unwrap(),
                    );
                }
            }

            pub fn fetch(&mut self, partition: i32, count: usize, now: Instant) {
                let Some(records) = self.stream.get(&partition) else {
                    return;
                };
                for _ in 0..count {
                    let offset = self.next[&partition];
                    let Some(record) = records.get(offset as usize) else {
                        break;
                    };
                    *self.next.get_mut(&partition).unwrap() += 1;
                    let Some(event_time_ms) = *record else {
                        if !self.marks.should_skip_dead_letter(partition, offset) {
                            self.dead.entry(partition).or_default().push(offset);
                        }
                        continue;
                    };
                    self.watermarks.observe(partition, event_time_ms, now);
                    let start = window_start(event_time_ms, WIDTH);
                    if self.marks.should_skip_row(start, partition, offset) {
                        continue;
                    }
                    let row = OutputRow {
                        partition,
                        offset,
                        kafka_timestamp_ms: 0,
                        event_time_ms,
                        values: Vec::new(),
                    };
                    if let Routed::Late(row) = self.buffer.route(row) {
                        self.late.entry(partition).or_default().push(row);
                    }
                }
                self.close_ready(now);
            }

            pub fn close_ready(&mut self, now: Instant) {
                let Some(watermark) = self.watermarks.current(now) else {
                    return;
                };
                for closed in self.buffer.close_ready(watermark) {
                    self.write_rows(closed.start, closed.rows_by_partition);
                    self.closed_since_commit.push(closed.start);
                }
            }

            pub fn relieve_pressure(&mut self) {
                if let Some(flushed) = self.buffer.take_largest() {
                    self.write_rows(flushed.start, flushed.rows_by_partition);
                }
            }

            fn prepare_checkpoint(&mut self) -> Checkpoint {
                for (p, rows) in std::mem::take(&mut self.late) {
                    let mut by_window = BTreeMap::<i64, Vec<i64>>::new();
                    for row in rows {
                        let start = window_start(row.event_time_ms, WIDTH);
                        by_window.entry(start).or_default().push(row.offset);
                    }
                    for (start, offsets) in by_window {
                        self.write(Destination::Late(start), p, &offsets);
                        let last = *offsets.last().unwrap();
                        self.marks.record_written(Destination::Late(start), p, last);
                    }
                }
                for (p, offsets) in std::mem::take(&mut self.dead) {
                    self.write(Destination::DeadLetter, p, &offsets);
                    self.marks
                        .record_written(Destination::DeadLetter, p, *offsets.last().unwrap());
                }
                Checkpoint::capture(
                    "t",
                    &self.buffer,
                    &self.watermarks,
                    &self.next,
                    &mut self.marks,
                )
            }

            /// Commits; writes `_SUCCESS` for windows closed since the last commit unless told to
            /// crash before doing so.
            pub fn checkpoint(&mut self, write_success: bool) {
                let mut checkpoint = self.prepare_checkpoint();
                self.store.commit(&mut checkpoint).unwrap();
                for start in std::mem::take(&mut self.closed_since_commit) {
                    let dir = self.scope.output_dir.join(window_dir_name(start));
                    if write_success && dir.exists() {
                        fs::write(dir.join(SUCCESS_MARKER), b"").unwrap();
                    }
                }
            }

            /// Starts a commit and crashes in the middle of it.
            pub fn crash_during_commit(mut self, step: CommitStep) {
                let mut checkpoint = self.prepare_checkpoint();
                self.store
                    .commit_until(&mut checkpoint, Some(step))
                    .unwrap();
            }

            /// Crashes while a file is being written: leaves its temporary file behind.
            pub fn crash_during_write(self) {
                let p = *self.scope.partitions.first().unwrap();
                let dir = Destination::Late(0).path_under(&self.scope.output_dir);
                fs::create_dir_all(&dir).unwrap();
                let first = self.next[&p];
                fs::write(
                    dir.join(temp_file_name(&part_file_name(p, first, first + 3, EXT))),
                    b"torn",
                )
                .unwrap();
            }

            /// End of input: fetch everything, let the stream go idle, drain, commit.
            pub fn finish(&mut self, now: Instant) -> Instant {
                let partitions: Vec<i32> = self.scope.partitions.iter().copied().collect();
                for p in partitions {
                    self.fetch(p, usize::MAX, now);
                }
                let later = now + Duration::from_secs(60);
                self.close_ready(later);
                for flushed in self.buffer.drain_all() {
                    self.write_rows(flushed.start, flushed.rows_by_partition);
                }
                self.checkpoint(true);
                later
            }

            pub fn closed_before(&self) -> i64 {
                self.buffer.closed_before()
            }
        }

        #[derive(Debug, Clone)]
        pub enum Step {
            Fetch { partition: i32, count: usize },
            Tick,
            Pressure,
            Checkpoint,
            CommitThenCrash,
            Crash,
            CrashDuringWrite,
            CrashDuringCommit(bool),
        }

        pub fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                8 => (0..3i32, 1..8usize).prop_map(|(partition, count)| Step::Fetch { partition, count }),
                1 => Just(Step::Tick),
                2 => Just(Step::Pressure),
                2 => Just(Step::Checkpoint),
                1 => Just(Step::CommitThenCrash),
                1 => Just(Step::Crash),
                1 => Just(Step::CrashDuringWrite),
                1 => any::<bool>().prop_map(Step::CrashDuringCommit),
            ]
        }

        pub fn stream() -> impl Strategy<Value = Stream> {
            let record = (-150..150i64, 0..8u8);
            proptest::collection::vec(proptest::collection::vec(record, 0..30), 3).prop_map(
                |parts| {
                    parts
                        .into_iter()
                        .enumerate()
                        .map(|(p, records)| {
                            let skew = p as i64 * 37;
                            let records = records
                                .into_iter()
                                .enumerate()
                                .map(|(i, (jitter, kind))| {
                                    (kind != 0).then_some(i as i64 * 25 + skew + jitter)
                                })
                                .collect();
                            (p as i32, records)
                        })
                        .collect()
                },
            )
        }

        /// Every part file of the output: (destination, partition, offsets).
        pub fn read_output(output: &Path) -> Vec<(Destination, i32, Vec<i64>)> {
            let mut files = Vec::new();
            list_files(output, &mut files).unwrap();
            let mut found = Vec::new();
            for file in files {
                let relative = file.parent().unwrap().strip_prefix(output).unwrap();
                let Some(destination) = relative.to_str().and_then(Destination::parse) else {
                    continue;
                };
                let name = file.file_name().unwrap().to_str().unwrap();
                assert!(
                    !name.ends_with(TMP_SUFFIX),
                    "temporary file left: {}",
                    file.display()
                );
                let Some(part) = parse_part_file_name(name) else {
                    continue;
                };
                let offsets: Vec<i64> = fs::read_to_string(&file)
                    .unwrap()
                    .lines()
                    .map(|l| l.parse().unwrap())
                    .collect();
                assert_eq!(offsets.first(), Some(&part.first_offset), "{name}");
                assert_eq!(offsets.last(), Some(&part.last_offset), "{name}");
                found.push((destination, part.partition, offsets));
            }
            found
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn every_offset_is_written_exactly_once_across_crashes(
            stream in simulation::stream(),
            steps in proptest::collection::vec(simulation::step(), 0..60),
        ) {
            use simulation::{Consumer, Step};
            let tmp = tempfile::tempdir().unwrap();
            let output = tmp.path();
            let mut now = tokio::time::Instant::now();
            let mut consumer = Consumer::start(&stream, output, now);
            for step in steps {
                match step {
                    Step::Fetch { partition, count } => consumer.fetch(partition, count, now),
                    Step::Tick => {
                        now += std::time::Duration::from_secs(40);
                        consumer.close_ready(now);
                    }
                    Step::Pressure => consumer.relieve_pressure(),
                    Step::Checkpoint => consumer.checkpoint(true),
                    Step::CommitThenCrash => {
                        consumer.checkpoint(false);
                        consumer = Consumer::start(&stream, output, now);
                    }
                    Step::Crash => consumer = Consumer::start(&stream, output, now),
                    Step::CrashDuringWrite => {
                        consumer.crash_during_write();
                        consumer = Consumer::start(&stream, output, now);
                    }
                    Step::CrashDuringCommit(after_rotate) => {
                        consumer.crash_during_commit(if after_rotate {
                            CommitStep::CurrentRotated
                        } else {
                            CommitStep::TempWritten
                        });
                        consumer = Consumer::start(&stream, output, now);
                    }
                }
            }
            now = consumer.finish(now);
            let closed_before = consumer.closed_before();
            drop(consumer);

            // Every record exactly once, in the right destination.
            let mut seen = BTreeMap::<(i32, i64), Destination>::new();
            for (destination, p, offsets) in simulation::read_output(output) {
                for offset in offsets {
                    let previous = seen.insert((p, offset), destination);
                    prop_assert!(previous.is_none(), "p{} @{} in {:?} and {}", p, offset, previous, destination);
                    match (stream[&p][offset as usize], destination) {
                        (None, Destination::DeadLetter) => {}
                        (Some(t), Destination::Window(start)) => {
                            prop_assert_eq!(crate::window::window_start(t, 100), start)
                        }
                        (Some(t), Destination::Late(start)) => {
                            prop_assert_eq!(crate::window::window_start(t, 100), start);
                            prop_assert!(start + 100 <= closed_before);
                        }
                        (record, destination) => {
                            prop_assert!(false, "p{} @{} ({:?}) in {}", p, offset, record, destination)
                        }
                    }
                }
            }
            let missing: Vec<(i32, i64)> = stream
                .iter()
                .flat_map(|(p, records)| (0..records.len() as i64).map(move |o| (*p, o)))
                .filter(|key| !seen.contains_key(key))
                .collect();
            prop_assert!(missing.is_empty(), "records lost (partition, offset): {:?}", missing);

            // Markers: present exactly in closed windows holding our files.
            let windows: BTreeSet<i64> = seen
                .values()
                .filter_map(|d| match d {
                    Destination::Window(s) => Some(*s),
                    _ => None,
                })
                .collect();
            for start in windows {
                let marker = output.join(window_dir_name(start)).join(SUCCESS_MARKER);
                prop_assert_eq!(marker.exists(), start + 100 <= closed_before, "{}", marker.display());
            }

            // A restart after a clean finish has nothing to clean up, and resumes at the end.
            let restarted = Consumer::start(&stream, output, now);
            let scope = OutputScope::new(output, stream.keys().copied().collect());
            let name = CheckpointStore::name_for_partitions(&scope.partitions);
            let (_, checkpoint) =
                CheckpointStore::open(&CheckpointConfig::under_output(output), &name, "t", 100).unwrap();
            let checkpoint = checkpoint.unwrap();
            prop_assert!(plan_recovery(&scope, Some(&checkpoint)).unwrap().is_clean());
            for (p, records) in &stream {
                prop_assert_eq!(checkpoint.resume_offset(*p), Some(records.len() as i64));
            }
            drop(restarted);
        }
    }
}
