//! The pure processing core of one partition: records go in, effects come out (rows to a
//! destination, a window closed), and what is durable comes back as confirmations. It does no
//! I/O and reads no clock: time is passed in. The exactly-once property test
//! (`consume::pipeline` tests) drives this very code.
//!
//! ## Per-partition event time
//!
//! Each partition keeps its own watermark, `max event time seen − allowed lateness`, and its own
//! `closed_before`: every window whose end is `<=` it is closed for this partition. A record is
//! late iff its window is closed for its partition when it is routed; windows close as soon as
//! the watermark passes their end, record by record. Lateness therefore depends only on the
//! partition's own sequence of records (plus idle advances, below), never on how fetches of
//! different partitions interleave, and a partition's state can move to another instance
//! whole. A window's files appear partition by partition; its `_SUCCESS` says that every
//! assigned partition closed it (`consume::success`).
//!
//! ## Idle partitions
//!
//! A partition that produced nothing for `idle_timeout` (and is not replaying) is idle. An idle
//! partition's `closed_before` is raised to the instance boundary it is given (the lowest
//! `closed_before` of the active partitions, or the highest of all when every one is idle), so
//! a quiet partition never holds `_SUCCESS` back; and with `idle_advance` (the default when the
//! event time is the Kafka timestamp, which tracks the wall clock) to `now − allowed lateness`,
//! so the last window of a stream that went quiet closes about `allowed lateness + idle timeout`
//! after its end.
//!
//! ## Why every record is written exactly once
//!
//! *Marks* ([`Marks`]): per window `W`, the highest offset durably written to `W` (staged or
//! final) and to `_late/W`; for dead letters, the exact offsets written since the resume offset.
//! The *resume offset* is the lowest offset held only in memory (the first in-memory row of an
//! open window), or the next offset to route. A checkpoint is taken only after every late row
//! and dead letter in memory was written, so at a checkpoint everything below `next_offset` is
//! durable, except the in-memory rows of open windows, which all lie at or above the resume
//! offset.
//!
//! On restart the partition is re-read from the resume offset. A replayed record is skipped iff
//! its offset is in the dead-letter set, or it has a window `W` and its offset is `<=` the mark
//! of `W` or of `_late/W`. That is exact:
//! - rows of one partition are routed in offset order; while `W` is open they go to its
//!   in-memory row group, which leaves memory whole and in order (staged, or closed into the
//!   final file), so the durable rows of `W` are all of `W`'s rows up to its mark, except those
//!   routed elsewhere (dead letters: in the exact set; dropped by policy: never written);
//! - once `W` is closed (`closed_before` never decreases), its rows go to `_late/W`, which is
//!   written whole before every checkpoint;
//! - a record's window is a function of the record; its route otherwise may differ between runs
//!   (the enrichment table changes, the wall clock decides "too far in the future"), which is why
//!   dead letters are an exact set and not a mark: a row kept in memory and lost in a crash may
//!   come back as a dead letter below the dead-letter mark of a previous run.
//!
//! Replay barrier: until the partition has re-read up to the `next_offset` of the checkpoint it
//! resumed from, no window closes and it is not idle. It is then in the state the checkpoint
//! captured, so every replayed record takes the route it took before the crash (a window open at
//! the checkpoint is still open), and the marks decide correctly whether it was written.
//! Checkpoints taken during a replay keep that target as their `next_offset`.
//!
//! Recovery (`checkpoint::recovery`) deletes, before anything is fetched, every file the
//! checkpoint does not cover; files are named by their offsets, so "covered" is decidable from
//! the name: see that module.

use std::collections::BTreeMap;

use crate::checkpoint::{FileRef, Marks, PartitionCheckpoint, TableFile, CHECKPOINT_VERSION};
use crate::output::layout::{Destination, WriterId};
use crate::window::{window_end, window_start};

/// What to do with a record whose window already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Write it to `_late/`.
    SideOutput,
    /// Count it and drop it.
    Drop,
}

/// The event-time rules of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    pub late: LatePolicy,
    /// A partition without records for this long is idle.
    pub idle_timeout_ms: i64,
    /// An idle partition's watermark advances with the wall clock.
    pub idle_advance: bool,
}

/// What moves a partition's watermark now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkSource {
    /// No event seen and not idle yet.
    None = 0,
    /// The records' event times.
    EventTime = 1,
    /// Idle: the wall clock (`--idle-advance`).
    IdleClock = 2,
    /// Idle: the other partitions' boundary.
    Following = 3,
}

/// The time a call happens at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, UTC milliseconds (idle advance).
    pub wall_ms: i64,
    /// A monotonic clock in milliseconds (idle detection).
    pub mono_ms: i64,
}

/// One fetched record as the core sees it (decoding already ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub offset: i64,
    pub kind: RecordKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A decoded, enriched row: index `row` of the batch's rows.
    Row { row: u32, event_ms: i64 },
    /// A dead letter: index `letter` of the batch's dead letters; its event time when it has one
    /// (decodable but refused: too far in the future, or not in the enrichment table).
    Dead { letter: u32, event_ms: Option<i64> },
    /// Dropped by policy (`--on-miss drop`): counted, never written.
    Dropped { event_ms: i64 },
}

impl RecordKind {
    fn event_ms(&self) -> Option<i64> {
        match *self {
            RecordKind::Row { event_ms, .. } | RecordKind::Dropped { event_ms } => Some(event_ms),
            RecordKind::Dead { event_ms, .. } => event_ms,
        }
    }
}

/// What the sink must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Append these rows of the batch (indices, in offset order) to a window or a late window.
    Rows { dest: Destination, rows: Vec<u32> },
    /// Append these dead letters of the batch (indices, in offset order).
    DeadLetters { letters: Vec<u32> },
    /// Close the window: write its final file(s) from what was staged and what is in memory,
    /// then confirm with [`PartitionCore::window_closed`]. Rows appended before belong to it.
    Close { window: i64 },
}

/// What one call counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub records_read: u64,
    pub rows_on_time: u64,
    pub rows_late: u64,
    pub late_dropped: u64,
    pub dead_letters: u64,
    pub miss_dropped: u64,
    pub replay_skipped: u64,
    pub windows_closed: u64,
    /// Offsets stepped over without a record to route (transaction markers, data of aborted
    /// transactions): [`PartitionCore::skip_to`].
    pub offsets_skipped: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.offsets_skipped += o.offsets_skipped;
        self.records_read += o.records_read;
        self.rows_on_time += o.rows_on_time;
        self.rows_late += o.rows_late;
        self.late_dropped += o.late_dropped;
        self.dead_letters += o.dead_letters;
        self.miss_dropped += o.miss_dropped;
        self.replay_skipped += o.replay_skipped;
        self.windows_closed += o.windows_closed;
    }
}

/// The effects of one call and what it counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub effects: Vec<Effect>,
    pub tally: Tally,
}

/// Offsets held in memory for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemRange {
    first: i64,
    last: i64,
}

impl MemRange {
    fn extend(slot: &mut Option<MemRange>, offset: i64) {
        match slot {
            Some(r) => r.last = offset,
            None => {
                *slot = Some(MemRange {
                    first: offset,
                    last: offset,
                })
            }
        }
    }
}

/// A window that holds rows of this partition: staged row groups and rows in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OpenWindow {
    staged: Vec<FileRef>,
    mem: Option<MemRange>,
}

/// A window this partition closed since its last checkpoint, with its final files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    pub window: i64,
    pub files: Vec<FileRef>,
}

/// Where a partition starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No checkpoint: start at this offset with nothing closed.
    Fresh { offset: i64 },
    /// Resume from a checkpoint.
    Checkpoint(Box<PartitionCheckpoint>),
}

/// The state of one partition. See the module docs.
#[derive(Debug, Clone)]
pub struct PartitionCore {
    partition: i32,
    topic: String,
    config: CoreConfig,
    next_offset: i64,
    /// Replay barrier: the `next_offset` of the checkpoint resumed from, until reached.
    replay_until: Option<i64>,
    max_event_ms: Option<i64>,
    closed_before: i64,
    open: BTreeMap<i64, OpenWindow>,
    /// Windows whose `Close` effect was emitted and not yet confirmed.
    closing: BTreeMap<i64, OpenWindow>,
    late_mem: BTreeMap<i64, MemRange>,
    dead_mem: Vec<i64>,
    marks: Marks,
    /// See `PartitionCheckpoint::fenced_writers`.
    fenced_writers: Vec<String>,
    /// See `PartitionCheckpoint::claimed_from`.
    claimed_from: Option<String>,
    /// When the partition last routed a record (or started).
    last_activity_ms: i64,
    /// The last idle advance: the watermark it set (UTC ms) and where it came from.
    idle_mark: Option<(i64, WatermarkSource)>,
    /// The generation of the last checkpoint committed or resumed from (0: none).
    generation: u64,
    closed_since_commit: Vec<ClosedWindow>,
    /// Staged files merged into closed windows, with the generation after whose commit they may
    /// be deleted (the previous generation still references them; see `committed`).
    retired: Vec<(u64, i64, FileRef)>,
    /// See `PartitionCheckpoint::unpublished`.
    unpublished: Vec<TableFile>,
}

impl PartitionCore {
    pub fn new(topic: &str, partition: i32, config: CoreConfig, start: Start, now: Now) -> Self {
        let mut core = PartitionCore {
            partition,
            topic: topic.to_string(),
            config,
            next_offset: 0,
            replay_until: None,
            max_event_ms: None,
            closed_before: i64::MIN,
            open: BTreeMap::new(),
            closing: BTreeMap::new(),
            late_mem: BTreeMap::new(),
            dead_mem: Vec::new(),
            marks: Marks::default(),
            last_activity_ms: now.mono_ms,
            idle_mark: None,
            generation: 0,
            closed_since_commit: Vec::new(),
            retired: Vec::new(),
            unpublished: Vec::new(),
            fenced_writers: Vec::new(),
            claimed_from: None,
        };
        match start {
            Start::Fresh { offset } => core.next_offset = offset,
            Start::Checkpoint(cp) => {
                core.next_offset = cp.resume_offset;
                core.replay_until = (cp.next_offset > cp.resume_offset).then_some(cp.next_offset);
                core.max_event_ms = cp.max_event_ms;
                core.closed_before = cp.closed_before;
                core.generation = cp.generation;
                core.marks = cp.marks.clone();
                core.unpublished = cp.unpublished.clone();
                // This run takes the partition from the checkpoint's writer.
                let mut fenced = cp.fenced_writers.clone();
                fenced.retain(|w| w != &cp.writer);
                fenced.push(cp.writer.clone());
                let excess = fenced
                    .len()
                    .saturating_sub(crate::checkpoint::FENCED_WRITERS_KEPT);
                fenced.drain(..excess);
                core.fenced_writers = fenced;
                core.claimed_from = Some(cp.origin());
                for (window, staged) in &cp.staged {
                    core.open.insert(
                        *window,
                        OpenWindow {
                            staged: staged.clone(),
                            mem: None,
                        },
                    );
                }
            }
        }
        core
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The lowest offset not yet routed.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Every window whose end is `<=` this is closed for this partition.
    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// The event-time watermark (`max event − lateness`), if the partition saw an event.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.max_event_ms
            .map(|m| m.saturating_sub(self.config.allowed_lateness_ms))
    }

    /// The watermark in effect (the event-time one, or a later idle advance) and its source.
    pub fn effective_watermark(&self) -> (Option<i64>, WatermarkSource) {
        let event = self.watermark_ms();
        match (event, self.idle_mark) {
            (Some(e), Some((i, src))) if i > e => (Some(i), src),
            (None, Some((i, src))) => (Some(i), src),
            (Some(e), _) => (Some(e), WatermarkSource::EventTime),
            (None, None) => (None, WatermarkSource::None),
        }
    }

    pub fn is_replaying(&self) -> bool {
        self.replay_until.is_some()
    }

    /// Idle: not replaying and no record for the idle timeout.
    pub fn is_idle(&self, now: Now) -> bool {
        !self.is_replaying()
            && now.mono_ms.saturating_sub(self.last_activity_ms) >= self.config.idle_timeout_ms
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The next commit is `generation + 1`: called after loading, with the newest generation
    /// that exists (a damaged newer one included), so the next commit never collides with it.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = self.generation.max(generation);
    }

    /// Windows that hold rows of this partition (staged or in memory).
    pub fn open_windows(&self) -> impl Iterator<Item = i64> + '_ {
        self.open.keys().copied()
    }

    /// Open windows with rows in memory (what staging can write).
    pub fn windows_in_memory(&self) -> Vec<i64> {
        self.open
            .iter()
            .filter(|(_, w)| w.mem.is_some())
            .map(|(s, _)| *s)
            .collect()
    }

    /// The staged files of an open window, in offset order.
    pub fn staged(&self, window: i64) -> &[FileRef] {
        self.open.get(&window).map_or(&[], |w| &w.staged)
    }

    /// Late windows with rows in memory.
    pub fn late_in_memory(&self) -> Vec<i64> {
        self.late_mem.keys().copied().collect()
    }

    pub fn dead_letters_in_memory(&self) -> bool {
        !self.dead_mem.is_empty()
    }

    fn is_closed(&self, window: i64) -> bool {
        window_end(window, self.config.window_ms) <= self.closed_before
    }

    /// Routes one fetched batch (records in offset order; records below `next_offset` are a
    /// re-fetch and ignored).
    pub fn route(&mut self, records: &[RecordMeta], now: Now) -> Routing {
        let mut out = Pending::default();
        for rec in records {
            if rec.offset < self.next_offset {
                continue;
            }
            self.next_offset = rec.offset + 1;
            self.last_activity_ms = self.last_activity_ms.max(now.mono_ms);
            out.tally.records_read += 1;
            let window = rec
                .kind
                .event_ms()
                .map(|t| window_start(t, self.config.window_ms));
            if self.marks.should_skip(rec.offset, window) {
                out.tally.replay_skipped += 1;
                if let RecordKind::Row { event_ms, .. } | RecordKind::Dropped { event_ms } =
                    rec.kind
                {
                    self.observe(event_ms, &mut out);
                }
                continue;
            }
            match rec.kind {
                RecordKind::Dead { letter, .. } => {
                    out.tally.dead_letters += 1;
                    out.letters.push(letter);
                    self.dead_mem.push(rec.offset);
                }
                RecordKind::Dropped { event_ms } => {
                    out.tally.miss_dropped += 1;
                    self.observe(event_ms, &mut out);
                }
                RecordKind::Row { row, event_ms } => {
                    let window = window_start(event_ms, self.config.window_ms);
                    if self.is_closed(window) {
                        match self.config.late {
                            LatePolicy::SideOutput => {
                                out.tally.rows_late += 1;
                                out.rows(Destination::Late(window)).push(row);
                                self.late_mem
                                    .entry(window)
                                    .or_insert(MemRange {
                                        first: rec.offset,
                                        last: rec.offset,
                                    })
                                    .last = rec.offset;
                            }
                            LatePolicy::Drop => out.tally.late_dropped += 1,
                        }
                    } else {
                        out.tally.rows_on_time += 1;
                        out.rows(Destination::Window(window)).push(row);
                        let open = self.open.entry(window).or_default();
                        MemRange::extend(&mut open.mem, rec.offset);
                    }
                    self.observe(event_ms, &mut out);
                }
            }
        }
        self.end_replay_when_reached(&mut out);
        out.finish()
    }

    /// The offsets below `offset` hold nothing to route: the fetch stepped over them
    /// (transaction markers, data of aborted transactions; read committed decides that the
    /// same way on every fetch, so a restart that re-reads them skips them again). `next_offset`
    /// moves to `offset`, so a checkpoint resumes after them and the replay barrier is reached
    /// even when a partition's last offsets are markers. Offsets at or below `next_offset`
    /// change nothing.
    pub fn skip_to(&mut self, offset: i64) -> Routing {
        let mut out = Pending::default();
        if offset > self.next_offset {
            out.tally.offsets_skipped += (offset - self.next_offset) as u64;
            self.next_offset = offset;
        }
        self.end_replay_when_reached(&mut out);
        out.finish()
    }

    /// Lifts the replay barrier once `next_offset` reached it, closing what it held back.
    fn end_replay_when_reached(&mut self, out: &mut Pending) {
        if let Some(until) = self.replay_until {
            if self.next_offset >= until {
                self.replay_until = None;
                self.close_up_to(self.event_boundary(), out);
            }
        }
    }

    fn event_boundary(&self) -> i64 {
        match self.watermark_ms() {
            Some(w) => window_start(w, self.config.window_ms),
            None => i64::MIN,
        }
    }

    fn observe(&mut self, event_ms: i64, out: &mut Pending) {
        self.max_event_ms = Some(self.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        if self.replay_until.is_none() {
            self.close_up_to(self.event_boundary(), out);
        }
    }

    /// Raises `closed_before` to `boundary` (never lowers it) and closes the open windows that
    /// ends at or before it, in start order.
    fn close_up_to(&mut self, boundary: i64, out: &mut Pending) {
        if boundary <= self.closed_before {
            return;
        }
        self.closed_before = boundary;
        while let Some(entry) = self.open.first_entry() {
            let window = *entry.key();
            if window_end(window, self.config.window_ms) > self.closed_before {
                break;
            }
            // Kept aside until `window_closed` confirms the final files.
            self.closing.insert(window, entry.remove());
            out.close(window);
            out.tally.windows_closed += 1;
        }
    }

    /// A tick without records: idle detection and idle advance. `boundary` is the instance's
    /// boundary an idle partition follows (see the module docs).
    pub fn tick(&mut self, now: Now, boundary: Option<i64>) -> Routing {
        let mut out = Pending::default();
        if self.is_idle(now) {
            let mut mark = boundary.map(|b| (b, WatermarkSource::Following));
            if self.config.idle_advance {
                let clock = now.wall_ms.saturating_sub(self.config.allowed_lateness_ms);
                if mark.is_none_or(|(b, _)| clock > b) {
                    mark = Some((clock, WatermarkSource::IdleClock));
                }
            }
            if let Some((watermark, source)) = mark {
                if self.idle_mark.is_none_or(|(m, _)| watermark >= m) {
                    self.idle_mark = Some((watermark, source));
                }
                self.close_up_to(window_start(watermark, self.config.window_ms), &mut out);
            }
        }
        out.finish()
    }

    /// End of input as end of stream (`--close-windows`): every window closes.
    pub fn close_all(&mut self) -> Routing {
        let mut out = Pending::default();
        self.replay_until = None;
        self.close_up_to(i64::MAX, &mut out);
        out.finish()
    }

    /// Confirms that rows of an open window up to `file.last` were staged durably.
    pub fn window_staged(&mut self, window: i64, file: FileRef) {
        let open = self.open.get_mut(&window).expect("a staged window is open");
        debug_assert!(
            open.mem.is_some_and(|m| m.last == file.last),
            "staged what was in memory"
        );
        self.marks.record(Destination::Window(window), file.last);
        open.mem = None;
        open.staged.push(file);
    }

    /// Confirms that a closing window's final files are durable.
    pub fn window_closed(&mut self, window: i64, files: Vec<FileRef>) {
        let w = self.closing.remove(&window).unwrap_or_default();
        if let Some(last) = files.iter().map(|f| f.last).max() {
            self.marks.record(Destination::Window(window), last);
        }
        let retire_after = self.generation + 2;
        for staged in w.staged {
            self.retired.push((retire_after, window, staged));
        }
        // The next commit is the first to cover these files.
        self.unpublished.extend(files.iter().map(|file| TableFile {
            generation: self.generation + 1,
            window,
            file: file.clone(),
        }));
        if !files.is_empty() {
            self.closed_since_commit
                .push(ClosedWindow { window, files });
        }
    }

    /// The staged files of a window being closed (what the final file is made of, before the
    /// rows in memory).
    pub fn closing_staged(&self, window: i64) -> &[FileRef] {
        self.closing.get(&window).map_or(&[], |w| &w.staged)
    }

    /// Whether a window being closed has rows in memory.
    pub fn closing_in_memory(&self, window: i64) -> bool {
        self.closing.get(&window).is_some_and(|w| w.mem.is_some())
    }

    /// Confirms that the late rows of `window` in memory were written (`file`).
    pub fn late_written(&mut self, window: i64, file: FileRef) {
        let mem = self.late_mem.remove(&window);
        debug_assert!(mem.is_some_and(|m| m.last == file.last));
        self.marks.record(Destination::Late(window), file.last);
    }

    /// Confirms that the dead letters in memory were written (`file`).
    pub fn dead_letters_written(&mut self, file: FileRef) {
        let offsets = std::mem::take(&mut self.dead_mem);
        self.marks.record_dead_letters(&offsets, file);
    }

    /// Staged files wait to be deleted after a later commit.
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// The checkpoint of this partition. Precondition: no late rows or dead letters in memory
    /// (write them first) and no window closing.
    pub fn capture(&mut self, writer: WriterId) -> PartitionCheckpoint {
        debug_assert!(self.late_mem.is_empty() && self.dead_mem.is_empty());
        debug_assert!(self.closing.is_empty());
        let resume = self
            .open
            .values()
            .filter_map(|w| w.mem.map(|m| m.first))
            .min()
            .map_or(self.next_offset, |m| m.min(self.next_offset));
        self.marks.prune(resume);
        let next = match self.replay_until {
            Some(until) => until.max(self.next_offset),
            None => self.next_offset,
        };
        PartitionCheckpoint {
            version: CHECKPOINT_VERSION,
            generation: self.generation + 1,
            topic: self.topic.clone(),
            partition: self.partition,
            window_ms: self.config.window_ms,
            writer: writer.to_string(),
            resume_offset: resume,
            next_offset: next,
            max_event_ms: self.max_event_ms,
            closed_before: self.closed_before,
            staged: self
                .open
                .iter()
                .filter(|(_, w)| !w.staged.is_empty())
                .map(|(s, w)| (*s, w.staged.clone()))
                .collect(),
            marks: self.marks.clone(),
            fenced_writers: self.fenced_writers.clone(),
            claimed_from: self.claimed_from.clone(),
            unpublished: self.unpublished.clone(),
        }
    }

    /// Closed windows' files the table may not hold yet (see `PartitionCheckpoint::unpublished`).
    pub fn unpublished(&self) -> &[TableFile] {
        &self.unpublished
    }

    /// The table holds every file committed up to `generation` (its application version for
    /// this partition reached it): they need no publishing any more.
    pub fn published(&mut self, generation: u64) {
        self.unpublished.retain(|f| f.generation > generation);
    }

    /// The checkpoint of generation `generation` is committed. Returns the windows closed since
    /// the previous one (for `_SUCCESS`) and the staged files that no retained generation
    /// references any more (to delete).
    pub fn committed(&mut self, generation: u64) -> Committed {
        self.generation = generation;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(after, _, _)| *after <= generation);
        self.retired = kept;
        Committed {
            closed: std::mem::take(&mut self.closed_since_commit),
            retired_staged: expired.into_iter().map(|(_, w, f)| (w, f)).collect(),
        }
    }
}

/// What a commit made final.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub closed: Vec<ClosedWindow>,
    /// (window, staged file) to delete.
    pub retired_staged: Vec<(i64, FileRef)>,
}

/// Effects being built for one call: rows are grouped per destination until that destination's
/// window closes (the close must see them) or the call ends.
#[derive(Default)]
struct Pending {
    effects: Vec<Effect>,
    rows: BTreeMap<Destination, Vec<u32>>,
    letters: Vec<u32>,
    tally: Tally,
}

impl Pending {
    fn rows(&mut self, dest: Destination) -> &mut Vec<u32> {
        self.rows.entry(dest).or_default()
    }

    fn close(&mut self, window: i64) {
        if let Some(rows) = self.rows.remove(&Destination::Window(window)) {
            self.effects.push(Effect::Rows {
                dest: Destination::Window(window),
                rows,
            });
        }
        self.effects.push(Effect::Close { window });
    }

    fn finish(mut self) -> Routing {
        for (dest, rows) in std::mem::take(&mut self.rows) {
            self.effects.push(Effect::Rows { dest, rows });
        }
        if !self.letters.is_empty() {
            self.effects.push(Effect::DeadLetters {
                letters: std::mem::take(&mut self.letters),
            });
        }
        Routing {
            effects: self.effects,
            tally: self.tally,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 100;

    fn config(idle_advance: bool) -> CoreConfig {
        CoreConfig {
            window_ms: W,
            allowed_lateness_ms: 20,
            late: LatePolicy::SideOutput,
            idle_timeout_ms: 1_000,
            idle_advance,
        }
    }

    fn now(mono_ms: i64, wall_ms: i64) -> Now {
        Now { wall_ms, mono_ms }
    }

    fn rows(times: &[(i64, i64)]) -> Vec<RecordMeta> {
        times
            .iter()
            .enumerate()
            .map(|(i, &(offset, event_ms))| RecordMeta {
                offset,
                kind: RecordKind::Row {
                    row: i as u32,
                    event_ms,
                },
            })
            .collect()
    }

    fn core(idle_advance: bool) -> PartitionCore {
        PartitionCore::new(
            "t",
            0,
            config(idle_advance),
            Start::Fresh { offset: 0 },
            now(0, 0),
        )
    }

    #[test]
    fn windows_close_record_by_record_and_later_rows_go_late() {
        let mut c = core(false);
        // 130 makes the watermark 110: window [0, 100) closes before the row at 50 comes.
        let r = c.route(&rows(&[(0, 10), (1, 130), (2, 50), (3, 140)]), now(1, 0));
        assert_eq!(
            r.effects,
            vec![
                Effect::Rows {
                    dest: Destination::Window(0),
                    rows: vec![0]
                },
                Effect::Close { window: 0 },
                Effect::Rows {
                    dest: Destination::Window(100),
                    rows: vec![1, 3]
                },
                Effect::Rows {
                    dest: Destination::Late(0),
                    rows: vec![2]
                },
            ]
        );
        assert_eq!(
            (
                r.tally.rows_on_time,
                r.tally.rows_late,
                r.tally.windows_closed
            ),
            (3, 1, 1)
        );
        assert_eq!(c.closed_before(), 100);
        // A re-fetch of the same offsets is ignored.
        assert_eq!(c.route(&rows(&[(2, 50)]), now(2, 0)).tally.records_read, 0);
    }

    #[test]
    fn an_idle_partition_follows_the_clock_or_the_others() {
        let mut c = core(true);
        c.route(&rows(&[(0, 10)]), now(0, 0));
        // Not idle yet: nothing moves.
        assert!(c.tick(now(999, 500), None).effects.is_empty());
        // Idle: the wall clock (500 - 20 lateness) closes window [0, 100) and more.
        let r = c.tick(now(1_000, 500), None);
        assert_eq!(r.effects, vec![Effect::Close { window: 0 }]);
        assert_eq!(
            c.effective_watermark(),
            (Some(480), WatermarkSource::IdleClock)
        );
        assert_eq!(c.closed_before(), 400);

        let mut c = core(false);
        c.route(&rows(&[(0, 10)]), now(0, 0));
        assert!(
            c.tick(now(1_000, 10_000), None).effects.is_empty(),
            "no clock"
        );
        let r = c.tick(now(1_001, 10_000), Some(300));
        assert_eq!(r.effects, vec![Effect::Close { window: 0 }]);
        assert_eq!(
            c.effective_watermark(),
            (Some(300), WatermarkSource::Following)
        );
        // A record wakes it up: the event time is the source again once it passes.
        c.route(&rows(&[(1, 900)]), now(1_002, 10_000));
        assert_eq!(
            c.effective_watermark(),
            (Some(880), WatermarkSource::EventTime)
        );
    }

    #[test]
    fn after_a_restart_no_window_closes_before_the_replay_reached_next_offset() {
        let mut c = core(false);
        c.route(&rows(&[(0, 10), (1, 20)]), now(0, 0));
        let cp = c.capture(WriterId(1));
        assert_eq!((cp.resume_offset, cp.next_offset), (0, 2));
        let mut restored = PartitionCore::new(
            "t",
            0,
            config(false),
            Start::Checkpoint(Box::new(cp)),
            now(5, 0),
        );
        assert!(restored.is_replaying());
        assert!(
            !restored.is_idle(now(100_000, 0)),
            "a replaying partition is not idle"
        );
        // Replayed rows close nothing until offset 2 is reached.
        let r = restored.route(&rows(&[(0, 10)]), now(6, 0));
        assert!(r.effects.iter().all(|e| !matches!(e, Effect::Close { .. })));
        assert!(restored.is_replaying());
        let r = restored.route(&rows(&[(1, 20), (2, 200)]), now(7, 0));
        assert!(!restored.is_replaying());
        assert!(r.effects.contains(&Effect::Close { window: 0 }));
    }

    #[test]
    fn close_all_ends_the_stream() {
        let mut c = core(false);
        c.route(&rows(&[(0, 10), (1, 150), (2, 250)]), now(0, 0));
        assert_eq!(c.open_windows().collect::<Vec<_>>(), [200]);
        let r = c.close_all();
        assert_eq!(r.effects, vec![Effect::Close { window: 200 }]);
        assert_eq!(c.closed_before(), i64::MAX);
        // Anything after the end of the stream is late.
        let r = c.route(&rows(&[(3, 10_000)]), now(1, 0));
        assert_eq!(r.tally.rows_late, 1);
    }

    #[test]
    fn offsets_stepped_over_move_the_checkpoint_and_end_the_replay() {
        // Offsets 2..5 are transaction markers and aborted data: nothing to route.
        let mut c = core(false);
        c.route(&rows(&[(0, 10), (1, 20)]), now(0, 0));
        let r = c.skip_to(5);
        assert_eq!(r.tally.offsets_skipped, 3);
        assert_eq!(c.next_offset(), 5);
        // Behind next_offset: nothing moves.
        assert_eq!(c.skip_to(4).tally.offsets_skipped, 0);
        assert_eq!(c.next_offset(), 5);
        let cp = c.capture(WriterId(1));
        assert_eq!(cp.next_offset, 5);
        // A restart replays 0..5; the replay ends where the skipped offsets end, even though no
        // record reaches offset 5.
        let mut restored = PartitionCore::new(
            "t",
            0,
            config(false),
            Start::Checkpoint(Box::new(cp)),
            now(5, 0),
        );
        restored.route(&rows(&[(0, 10), (1, 20)]), now(6, 0));
        assert!(restored.is_replaying());
        restored.skip_to(5);
        assert!(!restored.is_replaying());
        assert_eq!(restored.next_offset(), 5);
    }
}
