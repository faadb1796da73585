//! Event-time windowing: which window a row belongs to, when a window may close, and the rows
//! held in memory until it does.
//!
//! This module owns three things and nothing else (no I/O, no clocks of its own):
//!
//! - [`window_start`]: tumbling, epoch-aligned windows of width `window_ms`;
//!   `start = floor(t / width) * width` (Euclidean, so negative times work), `end = start + width`.
//! - [`Watermarks`]: per partition the maximum event time seen; the consumer's watermark is the
//!   minimum over *active* partitions, minus `allowed_lateness_ms`. Time is passed in by the
//!   caller (`now: tokio::time::Instant`) so tests control it exactly.
//! - [`WindowBuffer`]: the rows of every open window, per partition, in offset order, and
//!   `closed_before`, the monotonic boundary below which every window is closed.
//!
//! ## Closing and lateness
//!
//! Window ends are multiples of the width, so "every window whose end is `<=` the watermark is
//! closed" is the same as `closed_before = window_start(watermark)`. [`WindowBuffer::close_ready`]
//! raises `closed_before` to that value (never lowers it: a watermark that goes backwards closes
//! nothing) and returns the windows that held rows or had been flushed early, in start order.
//! Windows the watermark passed while empty are closed too, so a row that arrives for one of them
//! later is late, exactly as if the window had held rows. A row is [`Routed::Late`] iff
//! `window_end <= closed_before` at the time it is routed.
//!
//! ## Why nothing is lost or duplicated here
//!
//! Every routed row goes to exactly one place: back to the caller as `Late`, or into one open
//! window's per-partition vector. Rows leave a window only by being moved out whole
//! ([`close_ready`](WindowBuffer::close_ready), [`take_largest`](WindowBuffer::take_largest),
//! [`drain_all`](WindowBuffer::drain_all)), so each buffered row is handed out exactly once.
//! Per window and partition, rows are handed out in offset order and every batch holds higher
//! offsets than the previous one: this is what lets `checkpoint` keep a single "highest offset
//! written" mark per destination and partition (see `checkpoint`'s module docs).
//!
//! ## Idle partitions and startup
//!
//! A partition is idle when it has produced no row for `idle_timeout`; idle partitions do not hold
//! the watermark back, so one quiet partition does not stall the rest. When every partition is
//! idle, the watermark is the maximum over them, so time still advances at the end of a stream.
//! A partition that is assigned but has not produced a row yet has *no* watermark; while it is
//! active (for `idle_timeout` after the consumer started) the consumer's watermark is `None` and
//! no window closes. Otherwise the first partition to speak would close windows that a slower
//! partition is still about to fill, turning its on-time rows into late ones. A restored partition
//! (from a checkpoint) starts active with its restored maximum.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::row::OutputRow;

/// Window width, allowed lateness and idle timeout (`--window`, `--allowed-lateness`,
/// `--idle-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// Width of the tumbling windows in milliseconds; must be positive.
    pub window_ms: i64,
    /// How far behind its maximum event time a partition's watermark trails; must be `>= 0`.
    pub allowed_lateness_ms: i64,
    /// A partition with no row for this long stops holding the watermark back.
    pub idle_timeout: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: 60_000,
            allowed_lateness_ms: 10_000,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Errors of this module: only configuration can be wrong here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window width must be a positive number of milliseconds, got {0} ms; pass e.g. `--window 60s`")]
    Width(i64),
    #[error(
        "allowed lateness must not be negative, got {0} ms; pass e.g. `--allowed-lateness 10s`"
    )]
    Lateness(i64),
}

impl WindowConfig {
    /// Checks the invariants the rest of this module relies on.
    pub fn validate(&self) -> Result<(), WindowError> {
        if self.window_ms <= 0 {
            return Err(WindowError::Width(self.window_ms));
        }
        if self.allowed_lateness_ms < 0 {
            return Err(WindowError::Lateness(self.allowed_lateness_ms));
        }
        Ok(())
    }
}

/// Start of the tumbling window holding `event_time_ms`: the largest multiple of `window_ms`
/// that is `<= event_time_ms`. `window_ms` must be positive.
pub fn window_start(event_time_ms: i64, window_ms: i64) -> i64 {
    event_time_ms.div_euclid(window_ms) * window_ms
}

/// End (exclusive) of the window starting at `start_ms`. Saturates at `i64::MAX`.
pub fn window_end(start_ms: i64, window_ms: i64) -> i64 {
    start_ms.saturating_add(window_ms)
}

// ---------------------------------------------------------------------------------------------
// Watermarks
// ---------------------------------------------------------------------------------------------

/// What is known about one partition's progress in event time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionClock {
    /// Maximum event time of any row seen on this partition (`None`: no row yet).
    max_event_ms: Option<i64>,
    /// When the partition last produced a row (or was assigned / restored).
    last_activity: Instant,
}

/// Per-partition event-time progress and the consumer's watermark derived from it.
///
/// The watermark is not monotonic by itself (an idle partition that wakes up can pull it back);
/// [`WindowBuffer::close_ready`] keeps `closed_before` monotonic, so that is harmless.
#[derive(Debug, Clone)]
pub struct Watermarks {
    allowed_lateness_ms: i64,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, PartitionClock>,
}

impl Watermarks {
    /// A fresh start: every assigned partition is active, with no event time, until it produces a
    /// row or `idle_timeout` passes (see the module docs for why).
    pub fn new(
        config: &WindowConfig,
        assigned: impl IntoIterator<Item = i32>,
        now: Instant,
    ) -> Self {
        Self::restore(config, assigned.into_iter().map(|p| (p, None)), now)
    }

    /// Restores per-partition maxima from a checkpoint ([`snapshot`](Self::snapshot)); every
    /// restored partition starts active at `now`.
    pub fn restore(
        config: &WindowConfig,
        maxima: impl IntoIterator<Item = (i32, Option<i64>)>,
        now: Instant,
    ) -> Self {
        let partitions = maxima
            .into_iter()
            .map(|(p, max_event_ms)| {
                (
                    p,
                    PartitionClock {
                        max_event_ms,
                        last_activity: now,
                    },
                )
            })
            .collect();
        Watermarks {
            allowed_lateness_ms: config.allowed_lateness_ms,
            idle_timeout: config.idle_timeout,
            partitions,
        }
    }

    /// Records a row with event time `event_time_ms` on `partition` at `now`. The partition
    /// becomes (or stays) active; a partition never seen before is added.
    pub fn observe(&mut self, partition: i32, event_time_ms: i64, now: Instant) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_ms: None,
            last_activity: now,
        });
        clock.max_event_ms = Some(
            clock
                .max_event_ms
                .map_or(event_time_ms, |m| m.max(event_time_ms)),
        );
        clock.last_activity = clock.last_activity.max(now);
    }

    fn is_idle(&self, clock: &PartitionClock, now: Instant) -> bool {
        now.saturating_duration_since(clock.last_activity) >= self.idle_timeout
    }

    /// The consumer's watermark at `now`: the minimum over active partitions of
    /// `max_event - allowed_lateness`; if every partition is idle, the maximum over them.
    /// `None` while an active partition has not produced a row yet, or when no partition has.
    pub fn current(&self, now: Instant) -> Option<i64> {
        let mut any_active = false;
        let mut min_active: Option<i64> = None;
        for clock in self.partitions.values() {
            if self.is_idle(clock, now) {
                continue;
            }
            any_active = true;
            let mark = clock.max_event_ms?.saturating_sub(self.allowed_lateness_ms);
            min_active = Some(min_active.map_or(mark, |m| m.min(mark)));
        }
        if any_active {
            return min_active;
        }
        self.partitions
            .values()
            .filter_map(|c| c.max_event_ms)
            .max()
            .map(|m| m.saturating_sub(self.allowed_lateness_ms))
    }

    /// Partitions idle at `now`, for logging.
    pub fn idle_partitions(&self, now: Instant) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, c)| self.is_idle(c, now))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The next instant at which an active partition turns idle (and the watermark may move
    /// without any new row): sleep until then when the topic is quiet. `None` if all are idle.
    pub fn next_idle_transition(&self, now: Instant) -> Option<Instant> {
        self.partitions
            .values()
            .filter(|c| !self.is_idle(c, now))
            .map(|c| c.last_activity + self.idle_timeout)
            .min()
    }

    /// Per-partition maximum event time, for the checkpoint.
    pub fn snapshot(&self) -> BTreeMap<i32, Option<i64>> {
        self.partitions
            .iter()
            .map(|(p, c)| (*p, c.max_event_ms))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Window buffer
// ---------------------------------------------------------------------------------------------

/// Where [`WindowBuffer::route`] put a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Held in its open window.
    Buffered,
    /// Its window is already closed (`window_end <= closed_before`); the row is handed back.
    Late(OutputRow),
}

/// The rows of one partition in one open window, in offset order.
#[derive(Debug, Clone, Default, PartialEq)]
struct PartitionRows {
    rows: Vec<OutputRow>,
    bytes: usize,
}

/// One open window: its rows per partition. It may hold no rows (all flushed early, or restored
/// from a checkpoint) and still be open: it is reported by `close_ready` when it closes.
#[derive(Debug, Clone, Default, PartialEq)]
struct OpenWindow {
    partitions: BTreeMap<i32, PartitionRows>,
    bytes: usize,
}

impl OpenWindow {
    fn has_rows(&self) -> bool {
        self.partitions.values().any(|r| !r.rows.is_empty())
    }

    fn take_rows(&mut self) -> BTreeMap<i32, Vec<OutputRow>> {
        self.bytes = 0;
        std::mem::take(&mut self.partitions)
            .into_iter()
            .filter(|(_, r)| !r.rows.is_empty())
            .map(|(p, r)| (p, r.rows))
            .collect()
    }
}

/// A window the watermark has passed: write its rows, then (after the checkpoint recording the
/// new `closed_before` commits) its `_SUCCESS`. `rows_by_partition` may be empty when every row
/// had been flushed early.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    pub start: i64,
    pub end: i64,
    /// Per partition, rows in offset order; partitions without rows are absent.
    pub rows_by_partition: BTreeMap<i32, Vec<OutputRow>>,
}

/// Rows taken out of a window that stays open (memory pressure or shutdown): write them, but no
/// `_SUCCESS`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlushedWindow {
    pub start: i64,
    pub end: i64,
    /// Per partition, rows in offset order; partitions without rows are absent. Never empty.
    pub rows_by_partition: BTreeMap<i32, Vec<OutputRow>>,
}

/// The rows of every open window, and the boundary below which every window is closed.
#[derive(Debug, Clone)]
pub struct WindowBuffer {
    window_ms: i64,
    closed_before: i64,
    windows: BTreeMap<i64, OpenWindow>,
    buffered_bytes: usize,
}

impl WindowBuffer {
    /// An empty buffer. `closed_before` is `i64::MIN` on a fresh start, or the checkpoint's value.
    pub fn new(config: &WindowConfig, closed_before: i64) -> Self {
        WindowBuffer {
            window_ms: config.window_ms,
            closed_before,
            windows: BTreeMap::new(),
            buffered_bytes: 0,
        }
    }

    /// Like [`new`](Self::new), re-registering windows that were open (with or without rows) at
    /// the checkpoint, so they are reported by `close_ready` even if replay adds no row to them.
    /// Starts that are already closed are ignored.
    pub fn restore(
        config: &WindowConfig,
        closed_before: i64,
        open_windows: impl IntoIterator<Item = i64>,
    ) -> Self {
        let mut buffer = Self::new(config, closed_before);
        for start in open_windows {
            let start = window_start(start, buffer.window_ms);
            if !buffer.is_closed(start) {
                buffer.windows.entry(start).or_default();
            }
        }
        buffer
    }

    /// Width of the windows, in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Every window whose end is `<=` this is closed. Never decreases.
    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// Whether the window starting at `start_ms` is closed.
    pub fn is_closed(&self, start_ms: i64) -> bool {
        window_end(start_ms, self.window_ms) <= self.closed_before
    }

    /// Puts `row` in its window, or hands it back as late when that window is closed. Rows of one
    /// partition must be routed in increasing offset order.
    pub fn route(&mut self, row: OutputRow) -> Routed {
        let start = window_start(row.event_time_ms, self.window_ms);
        if self.is_closed(start) {
            return Routed::Late(row);
        }
        let bytes = row.size_bytes();
        let window = self.windows.entry(start).or_default();
        let slot = window.partitions.entry(row.partition).or_default();
        debug_assert!(
            slot.rows.last().is_none_or(|last| last.offset < row.offset),
            "rows of partition {} routed out of offset order",
            row.partition
        );
        slot.rows.push(row);
        slot.bytes += bytes;
        window.bytes += bytes;
        self.buffered_bytes += bytes;
        Routed::Buffered
    }

    /// Closes every window whose end is `<= watermark`, in start order, and raises
    /// `closed_before` to `window_start(watermark)` (if that is higher). Returns the closed
    /// windows that were open (held rows now or earlier); empty windows the watermark passed are
    /// closed without being reported.
    pub fn close_ready(&mut self, watermark: i64) -> Vec<ClosedWindow> {
        let boundary = window_start(watermark, self.window_ms);
        if boundary > self.closed_before {
            self.closed_before = boundary;
        }
        let mut closed = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            if window_end(start, self.window_ms) > self.closed_before {
                break;
            }
            let mut window = entry.remove();
            self.buffered_bytes -= window.bytes;
            closed.push(ClosedWindow {
                start,
                end: window_end(start, self.window_ms),
                rows_by_partition: window.take_rows(),
            });
        }
        closed
    }

    /// Memory pressure: takes every row of the open window holding the most bytes. The window
    /// stays open and may receive more rows. `None` when no row is buffered.
    pub fn take_largest(&mut self) -> Option<FlushedWindow> {
        let (&start, _) = self
            .windows
            .iter()
            .filter(|(_, w)| w.has_rows())
            .max_by_key(|(start, w)| (w.bytes, std::cmp::Reverse(**start)))?;
        Some(self.flush_window(start))
    }

    /// End of input / shutdown: takes every buffered row, window by window in start order. The
    /// windows stay open (they are not closed and get no `_SUCCESS`).
    pub fn drain_all(&mut self) -> Vec<FlushedWindow> {
        let starts: Vec<i64> = self
            .windows
            .iter()
            .filter(|(_, w)| w.has_rows())
            .map(|(s, _)| *s)
            .collect();
        starts.into_iter().map(|s| self.flush_window(s)).collect()
    }

    fn flush_window(&mut self, start: i64) -> FlushedWindow {
        let window = self
            .windows
            .get_mut(&start)
            .expect("flushed window is open");
        self.buffered_bytes -= window.bytes;
        FlushedWindow {
            start,
            end: window_end(start, self.window_ms),
            rows_by_partition: window.take_rows(),
        }
    }

    /// Approximate bytes of all buffered rows (sum of [`OutputRow::size_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Number of buffered rows.
    pub fn buffered_rows(&self) -> usize {
        self.windows
            .values()
            .flat_map(|w| w.partitions.values())
            .map(|r| r.rows.len())
            .sum()
    }

    /// Number of open windows (including ones whose rows were all flushed early).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Starts of the open windows, in order, for the checkpoint (see [`restore`](Self::restore)).
    pub fn open_window_starts(&self) -> Vec<i64> {
        self.windows.keys().copied().collect()
    }

    /// Lowest offset of `partition` held only in memory, if any: the checkpoint's resume offset
    /// is this, or the next offset to fetch when nothing is held.
    pub fn min_buffered_offset(&self, partition: i32) -> Option<i64> {
        self.windows
            .values()
            .filter_map(|w| w.partitions.get(&partition))
            .filter_map(|r| r.rows.first())
            .map(|row| row.offset)
            .min()
    }

    /// [`min_buffered_offset`](Self::min_buffered_offset) for every partition holding rows.
    pub fn min_buffered_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for window in self.windows.values() {
            for (p, r) in &window.partitions {
                if let Some(first) = r.rows.first() {
                    let slot = out.entry(*p).or_insert(first.offset);
                    *slot = (*slot).min(first.offset);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn row(partition: i32, offset: i64, event_time_ms: i64) -> OutputRow {
        OutputRow {
            partition,
            offset,
            kafka_timestamp_ms: event_time_ms,
            event_time_ms,
            values: Vec::new(),
        }
    }

    fn config(window_ms: i64) -> WindowConfig {
        WindowConfig {
            window_ms,
            ..WindowConfig::default()
        }
    }

    #[test]
    fn window_start_is_floor_aligned_including_negative_times() {
        assert_eq!(window_start(0, 60_000), 0);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
        assert_eq!(window_start(-60_000, 60_000), -60_000);
        assert_eq!(window_end(i64::MAX - 5, 60_000), i64::MAX);
    }

    #[test]
    fn config_validation_names_the_bad_value() {
        assert!(WindowConfig::default().validate().is_ok());
        let e = config(0).validate().unwrap_err().to_string();
        assert!(e.contains("0 ms") && e.contains("--window"), "{e}");
        let e = WindowConfig {
            allowed_lateness_ms: -1,
            ..WindowConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("-1 ms"), "{e}");
    }

    #[test]
    fn route_close_and_late() {
        let mut b = WindowBuffer::new(&config(100), i64::MIN);
        assert_eq!(b.route(row(0, 0, 50)), Routed::Buffered);
        assert_eq!(b.route(row(0, 1, 150)), Routed::Buffered);
        assert_eq!(b.route(row(1, 0, 120)), Routed::Buffered);
        assert_eq!(b.open_windows(), 2);
        assert_eq!(b.min_buffered_offset(0), Some(0));

        // Watermark 199: only [0,100) ends at or before it.
        let closed = b.close_ready(199);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (0, 100));
        assert_eq!(closed[0].rows_by_partition[&0].len(), 1);
        assert_eq!(b.closed_before(), 100);
        assert_eq!(b.min_buffered_offset(0), Some(1));

        // A row for the closed window is late; the open one still buffers.
        assert_eq!(b.route(row(0, 2, 99)), Routed::Late(row(0, 2, 99)));
        assert_eq!(b.route(row(0, 3, 100)), Routed::Buffered);

        // A watermark that goes backwards closes nothing and does not lower closed_before.
        assert!(b.close_ready(0).is_empty());
        assert_eq!(b.closed_before(), 100);

        // Watermark far ahead also closes the empty windows in between: a row there is late.
        let closed = b.close_ready(1_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].rows_by_partition[&1], vec![row(1, 0, 120)]);
        assert_eq!(b.closed_before(), 1_000);
        assert!(matches!(b.route(row(1, 1, 500)), Routed::Late(_)));
        assert_eq!(b.buffered_bytes(), 0);
    }

    #[test]
    fn take_largest_keeps_the_window_open_and_reports_it_when_it_closes() {
        let mut b = WindowBuffer::new(&config(100), i64::MIN);
        b.route(row(0, 0, 10));
        b.route(row(0, 1, 110));
        b.route(row(0, 2, 120));
        let flushed = b.take_largest().unwrap();
        assert_eq!(flushed.start, 100);
        assert_eq!(flushed.rows_by_partition[&0].len(), 2);
        assert_eq!(b.open_windows(), 2);
        assert_eq!(b.route(row(0, 3, 130)), Routed::Buffered);
        let flushed = b.take_largest().unwrap();
        assert_eq!(flushed.start, 0, "window 0 now holds more than window 100");
        b.take_largest().unwrap();
        assert!(b.take_largest().is_none());
        assert_eq!(b.buffered_bytes(), 0);
        // Both windows are still open and are reported, without rows, when they close.
        let closed = b.close_ready(200);
        assert_eq!(
            closed.iter().map(|c| c.start).collect::<Vec<_>>(),
            vec![0, 100]
        );
        assert!(closed.iter().all(|c| c.rows_by_partition.is_empty()));
    }

    #[test]
    fn drain_all_empties_but_does_not_close() {
        let mut b = WindowBuffer::new(&config(100), i64::MIN);
        b.route(row(0, 0, 10));
        b.route(row(1, 0, 210));
        let drained = b.drain_all();
        assert_eq!(
            drained.iter().map(|d| d.start).collect::<Vec<_>>(),
            vec![0, 200]
        );
        assert_eq!(b.closed_before(), i64::MIN);
        assert_eq!(b.route(row(0, 1, 20)), Routed::Buffered);
        assert!(b.drain_all().len() == 1 && b.drain_all().is_empty());
    }

    #[test]
    fn restore_reregisters_open_windows_only() {
        let b = WindowBuffer::restore(&config(100), 200, [100, 200, 300]);
        assert_eq!(b.open_window_starts(), vec![200, 300]);
        let mut b = b;
        let closed = b.close_ready(300);
        assert_eq!(closed.len(), 1);
        assert!(closed[0].rows_by_partition.is_empty());
    }

    // ----- watermarks -----

    fn wm_config() -> WindowConfig {
        WindowConfig {
            window_ms: 100,
            allowed_lateness_ms: 10,
            idle_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn watermark_is_min_over_active_partitions() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(&wm_config(), [0, 1], t0);
        w.observe(0, 1_000, t0);
        assert_eq!(w.current(t0), None, "partition 1 has not spoken yet");
        w.observe(1, 500, t0);
        assert_eq!(w.current(t0), Some(490));
        w.observe(1, 400, t0);
        assert_eq!(w.current(t0), Some(490), "maximum, not latest");
    }

    #[test]
    fn a_quiet_partition_stops_holding_the_watermark_after_idle_timeout() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(&wm_config(), [0, 1], t0);
        w.observe(0, 1_000, t0);
        w.observe(1, 100, t0);
        let t1 = t0 + Duration::from_secs(20);
        w.observe(0, 2_000, t1);
        assert_eq!(w.current(t1), Some(90));
        assert_eq!(
            w.next_idle_transition(t1),
            Some(t0 + Duration::from_secs(30))
        );
        let t2 = t0 + Duration::from_secs(30);
        assert_eq!(w.idle_partitions(t2), vec![1]);
        assert_eq!(w.current(t2), Some(1_990));
        // Partition 1 speaks again: active, and holds the watermark back again.
        w.observe(1, 150, t2);
        assert_eq!(w.current(t2), Some(140));
    }

    #[test]
    fn a_partition_that_never_speaks_is_idle_after_timeout_from_start() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(&wm_config(), [0, 1], t0);
        let t1 = t0 + Duration::from_secs(29);
        w.observe(0, 1_000, t1);
        assert_eq!(w.current(t1), None);
        let t2 = t0 + Duration::from_secs(30);
        assert_eq!(w.current(t2), Some(990));
    }

    #[test]
    fn all_idle_uses_the_maximum_and_restore_is_active() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(&wm_config(), [0, 1, 2], t0);
        w.observe(0, 1_000, t0);
        w.observe(1, 3_000, t0);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(w.current(late), Some(2_990));
        assert_eq!(w.next_idle_transition(late), None);

        let snap = w.snapshot();
        assert_eq!(
            snap,
            BTreeMap::from([(0, Some(1_000)), (1, Some(3_000)), (2, None)])
        );
        let r = Watermarks::restore(&wm_config(), snap, late);
        assert_eq!(
            r.current(late),
            None,
            "restored partition 2 has no time yet"
        );
        assert_eq!(r.current(late + Duration::from_secs(30)), Some(2_990));
        let r = Watermarks::restore(&wm_config(), [(0, Some(1_000)), (1, Some(3_000))], late);
        assert_eq!(r.current(late), Some(990), "restored partitions are active");
        assert_eq!(Watermarks::new(&wm_config(), [], t0).current(t0), None);
    }

    // ----- properties -----

    #[derive(Debug, Clone)]
    enum Op {
        Route { partition: i32, event_time_ms: i64 },
        Close(i64),
        TakeLargest,
        DrainAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3i32, -500..2_000i64)
                .prop_map(|(partition, event_time_ms)| Op::Route { partition, event_time_ms }),
            2 => (-600..2_200i64).prop_map(Op::Close),
            1 => Just(Op::TakeLargest),
            1 => Just(Op::DrainAll),
        ]
    }

    proptest! {
        #[test]
        fn window_start_contains_and_is_aligned(t in any::<i64>(), width in 1..10_000_000i64) {
            let start = window_start(t, width);
            prop_assert!(start <= t);
            prop_assert!(t - start < width);
            prop_assert_eq!(start.rem_euclid(width), 0);
        }

        #[test]
        fn every_routed_row_ends_up_in_exactly_one_place(
            ops in proptest::collection::vec(op(), 0..200),
            width in 1..300i64,
        ) {
            let mut b = WindowBuffer::new(&config(width), i64::MIN);
            let mut next_offset = BTreeMap::<i32, i64>::new();
            let mut routed = BTreeSet::new();
            let mut out = Vec::<(i32, i64)>::new();
            let mut ever_closed = BTreeSet::<i64>::new();
            let mut expected_bytes = 0usize;
            for op in ops {
                let before = b.closed_before();
                match op {
                    Op::Route { partition, event_time_ms } => {
                        let offset = next_offset.entry(partition).or_insert(0);
                        let r = row(partition, *offset, event_time_ms);
                        *offset += 1;
                        routed.insert((r.partition, r.offset));
                        let is_late = window_end(window_start(event_time_ms, width), width) <= before;
                        match b.route(r.clone()) {
                            Routed::Late(back) => {
                                prop_assert!(is_late);
                                prop_assert_eq!(&back, &r);
                                out.push((back.partition, back.offset));
                            }
                            Routed::Buffered => {
                                prop_assert!(!is_late);
                                expected_bytes += r.size_bytes();
                            }
                        }
                    }
                    Op::Close(watermark) => {
                        let closed = b.close_ready(watermark);
                        let starts: Vec<i64> = closed.iter().map(|c| c.start).collect();
                        prop_assert!(starts.windows(2).all(|s| s[0] < s[1]));
                        for c in closed {
                            prop_assert!(c.end <= watermark);
                            prop_assert!(ever_closed.insert(c.start), "window closed twice");
                            for (p, rows) in c.rows_by_partition {
                                prop_assert!(rows.windows(2).all(|r| r[0].offset < r[1].offset));
                                for r in rows {
                                    prop_assert_eq!(r.partition, p);
                                    prop_assert_eq!(window_start(r.event_time_ms, width), c.start);
                                    expected_bytes -= r.size_bytes();
                                    out.push((r.partition, r.offset));
                                }
                            }
                        }
                    }
                    Op::TakeLargest | Op::DrainAll => {
                        let flushed = if matches!(op, Op::TakeLargest) {
                            b.take_largest().into_iter().collect()
                        } else {
                            b.drain_all()
                        };
                        for f in flushed {
                            prop_assert!(!b.is_closed(f.start));
                            prop_assert!(!f.rows_by_partition.is_empty());
                            for rows in f.rows_by_partition.into_values() {
                                for r in rows {
                                    prop_assert_eq!(window_start(r.event_time_ms, width), f.start);
                                    expected_bytes -= r.size_bytes();
                                    out.push((r.partition, r.offset));
                                }
                            }
                        }
                    }
                }
                prop_assert!(b.closed_before() >= before, "closed_before went backwards");
                prop_assert_eq!(b.buffered_bytes(), expected_bytes);
                for p in 0..3 {
                    let brute = b.windows.values()
                        .filter_map(|w| w.partitions.get(&p))
                        .flat_map(|r| r.rows.iter().map(|row| row.offset))
                        .min();
                    prop_assert_eq!(b.min_buffered_offset(p), brute);
                    prop_assert_eq!(b.min_buffered_offsets().get(&p).copied(), brute);
                }
            }
            for f in b.drain_all() {
                for rows in f.rows_by_partition.into_values() {
                    out.extend(rows.into_iter().map(|r| (r.partition, r.offset)));
                }
            }
            prop_assert_eq!(b.buffered_rows(), 0);
            let unique: BTreeSet<_> = out.iter().copied().collect();
            prop_assert_eq!(unique.len(), out.len(), "a row was handed out twice");
            prop_assert_eq!(unique, routed, "a row was lost");
        }
    }
}
