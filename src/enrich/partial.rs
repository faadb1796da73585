//! The partial cache's decisions, without I/O: which keys a batch must ask the database for,
//! what is kept, what is evicted, when an entry expires, and what a change of the dimension
//! does to what is held (`--enrich-cache partial`).
//!
//! - [`PartialCache`]: the keys seen, each with its row or the fact that the dimension does not
//!   have it (a negative entry), bounded in **bytes** (an estimate of what each entry holds on
//!   the heap, [`entry_bytes`]). Eviction is CLOCK (second chance, an approximation of LRU): a
//!   hit sets the entry's `referenced` bit through a shared reference (an atomic, so the many
//!   decoders that read under one read lock never write the map), and the hand clears bits
//!   until it finds an entry not used since its last pass, and evicts it. An entry expires
//!   `ttl` after it was written (Flink's `expire-after-write`): it then reads as unknown and is
//!   asked again.
//! - [`Overlay`]: what one batch's miss query answered (rows, absent keys, or "unreachable"),
//!   consulted before the cache by the batch's second decode, so the batch never depends on
//!   its own answers surviving eviction.
//! - [`PartialView`]: the [`Lookup`] the decoder reads through: overlay, then cache.
//! - [`Change`]: an insert, update or delete of a dimension row (from the binary log), applied
//!   to the keys held ([`PartialCache::apply`]); keys not held are ignored, so following the log
//!   costs no memory.
//!
//! ```text
//!   decode (read lock) ── find(key) ──▶ Row(slot) | Absent | Unknown ─┐
//!   distinct Unknown keys ──▶ one `WHERE key IN (…)` ──▶ Overlay ──────┘ second decode
//!   Overlay ──absorb (write lock)──▶ PartialCache ──evict (CLOCK) until bytes ≤ bound
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Array,
};

use super::{Found, Lookup};
use crate::schema::{FieldType, Value};

/// Bytes counted per entry besides its key and values: the map's slot (key pointer, slot
/// number, control byte, load factor), the slab entry and the allocator's headers.
pub const ENTRY_OVERHEAD: usize = 128;

/// Marks a row number of a [`PartialView`] as the overlay's, not the cache's.
const OVERLAY_ROW: u32 = 1 << 31;

/// The bounds of a [`PartialCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bound on [`PartialCache::bytes`].
    pub max_bytes: usize,
    /// An entry reads as unknown this long after it was written (`None`: never).
    pub ttl_ms: Option<i64>,
}

/// What the cache holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// The key's row, at this slot ([`PartialCache::row`]).
    Row(u32),
    /// The dimension does not have the key (a negative entry).
    Absent,
    /// Not held, or expired: ask the database.
    Unknown,
}

/// A change of one dimension row, keyed as the join keys are (text).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An insert, or the new image of an update: the row's enrichment values.
    Upsert { key: String, row: Vec<Value> },
    /// A delete, or the old image of an update that changed the key.
    Delete { key: String },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Upsert { key, .. } | Change::Delete { key } => key,
        }
    }
}

#[derive(Debug)]
struct Slot {
    key: Box<str>,
    /// `None`: a negative entry.
    row: Option<Box<[Value]>>,
    written_ms: i64,
    referenced: AtomicBool,
    bytes: usize,
    live: bool,
}

/// The bounded cache of the keys seen. Pure: the time is an argument.
#[derive(Debug)]
pub struct PartialCache {
    index: HashMap<Box<str>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
    bytes: usize,
    limits: Limits,
    evictions: u64,
    /// Changes seen ([`invalidate`](Self::invalidate)): a counter, and the last
    /// [`RECENT_CHANGES`] changed keys with the change that touched them last, so that a lookup
    /// that started before a change does not keep what it read ([`absorb`](Self::absorb)).
    epoch: u64,
    recent: HashMap<Box<str>, u64>,
    recent_order: std::collections::VecDeque<(u64, Box<str>)>,
}

/// Changed keys remembered for lookups in flight.
pub const RECENT_CHANGES: usize = 4096;

/// The bytes an entry of `key` holding `row` is counted for.
pub fn entry_bytes(key: &str, row: Option<&[Value]>) -> usize {
    let values = row.map_or(0, |r| {
        r.iter()
            .map(|v| {
                std::mem::size_of::<Value>()
                    + match v {
                        Value::Str(s) => s.capacity(),
                        _ => 0,
                    }
            })
            .sum()
    });
    ENTRY_OVERHEAD + 2 * key.len() + values
}

impl PartialCache {
    pub fn new(limits: Limits) -> Self {
        PartialCache {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            limits,
            evictions: 0,
            epoch: 0,
            recent: HashMap::new(),
            recent_order: std::collections::VecDeque::new(),
        }
    }

    /// The dimension changed these keys (its binary log said so): forget them, and remember
    /// that they changed now, so an answer read before is not kept.
    pub fn invalidate(&mut self, keys: &[String]) {
        self.epoch += 1;
        for key in keys {
            self.remove(key);
            self.recent.insert(key.as_str().into(), self.epoch);
            self.recent_order
                .push_back((self.epoch, key.as_str().into()));
        }
        while self.recent_order.len() > RECENT_CHANGES {
            if let Some((epoch, key)) = self.recent_order.pop_front() {
                if self.recent.get(&key) == Some(&epoch) {
                    self.recent.remove(&key);
                }
            }
        }
    }

    /// The changes seen so far: an [`Overlay`] records it when its lookup starts.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether an answer for `key` read at change `epoch` may be kept: no change of the key
    /// since (or too many changes since to tell: then not).
    fn still_valid(&self, key: &str, epoch: u64) -> bool {
        if self.epoch == epoch {
            return true;
        }
        let oldest = self.recent_order.front().map_or(self.epoch, |(e, _)| *e);
        if epoch + 1 < oldest {
            return false;
        }
        self.recent.get(key).is_none_or(|&changed| changed <= epoch)
    }

    /// What the cache holds for `key` at `now_ms`; a hit marks the entry as used (an atomic
    /// store, so lookups share the cache).
    pub fn get(&self, key: &str, now_ms: i64) -> Cached {
        let Some(&slot) = self.index.get(key) else {
            return Cached::Unknown;
        };
        let entry = &self.slots[slot as usize];
        if self.expired(entry, now_ms) {
            return Cached::Unknown;
        }
        if !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        match entry.row {
            Some(_) => Cached::Row(slot),
            None => Cached::Absent,
        }
    }

    /// The values of the row at `slot` (of a [`Cached::Row`] from this cache, not modified
    /// since).
    pub fn row(&self, slot: u32) -> &[Value] {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.row.as_deref())
            .unwrap_or(&[])
    }

    /// Keeps `row` (`None`: the dimension does not have `key`) for `key`, written at `now_ms`,
    /// then evicts until the cache is within its bound (possibly this very entry, when it alone
    /// is larger than the bound).
    pub fn insert(&mut self, key: &str, row: Option<Vec<Value>>, now_ms: i64) {
        let row = row.map(Vec::into_boxed_slice);
        let bytes = entry_bytes(key, row.as_deref());
        match self.index.get(key) {
            Some(&slot) => {
                let entry = &mut self.slots[slot as usize];
                self.bytes = self.bytes - entry.bytes + bytes;
                entry.row = row;
                entry.bytes = bytes;
                entry.written_ms = now_ms;
                *entry.referenced.get_mut() = true;
            }
            None => {
                let entry = Slot {
                    key: key.into(),
                    row,
                    written_ms: now_ms,
                    referenced: AtomicBool::new(false),
                    bytes,
                    live: true,
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = entry;
                        slot
                    }
                    None => {
                        self.slots.push(entry);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(key.into(), slot);
                self.bytes += bytes;
            }
        }
        self.evict_to_fit();
    }

    /// Applies a change of the dimension to the keys held: an upsert replaces a held key's row
    /// (or negative entry), a delete makes a held key absent; a key not held is left alone
    /// (it is asked when a record needs it). Either resets the entry's age.
    pub fn apply(&mut self, change: Change, now_ms: i64) {
        if !self.index.contains_key(change.key()) {
            return;
        }
        match change {
            Change::Upsert { key, row } => self.insert(&key, Some(row), now_ms),
            Change::Delete { key } => self.insert(&key, None, now_ms),
        }
    }

    /// Forgets `key` (e.g. a change whose new values are not known).
    pub fn remove(&mut self, key: &str) {
        if let Some(slot) = self.index.remove(key) {
            self.vacate(slot);
        }
    }

    /// Entries held (rows and negative entries).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The bytes the entries are counted for ([`entry_bytes`]); at most the bound after every
    /// call.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries evicted to stay within the bound, so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn expired(&self, entry: &Slot, now_ms: i64) -> bool {
        self.limits
            .ttl_ms
            .is_some_and(|ttl| now_ms.saturating_sub(entry.written_ms) >= ttl)
    }

    fn evict_to_fit(&mut self) {
        // Every live entry is passed at most twice (once to clear its bit, once to evict it).
        while self.bytes > self.limits.max_bytes && !self.index.is_empty() {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let entry = &mut self.slots[slot];
            if !entry.live {
                continue;
            }
            if std::mem::replace(entry.referenced.get_mut(), false) {
                continue;
            }
            let key = std::mem::take(&mut entry.key);
            self.index.remove(&key);
            self.vacate(slot as u32);
            self.evictions += 1;
        }
    }

    fn vacate(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        self.bytes -= entry.bytes;
        entry.live = false;
        entry.row = None;
        entry.key = Box::default();
        entry.bytes = 0;
        self.free.push(slot);
    }
}

/// What one batch's miss query answered.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Overlay {
    entries: HashMap<String, OverlayEntry>,
    rows: Vec<Vec<Value>>,
    /// The cache's change epoch when the (first) lookup started.
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverlayEntry {
    Row(u32),
    Absent,
    Unreachable,
}

impl Overlay {
    /// The dimension's answer for `key`: its row, or `None` when it does not have it.
    pub fn answer(&mut self, key: String, row: Option<Vec<Value>>) {
        let entry = match row {
            Some(row) => {
                self.rows.push(row);
                OverlayEntry::Row((self.rows.len() - 1) as u32)
            }
            None => OverlayEntry::Absent,
        };
        self.entries.insert(key, entry);
    }

    /// The dimension could not be asked for `key`.
    pub fn unreachable(&mut self, key: String) {
        self.entries.insert(key, OverlayEntry::Unreachable);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the answers of `other` (a later lookup of other keys).
    pub fn merge(&mut self, other: Overlay) {
        self.epoch = if self.entries.is_empty() {
            other.epoch
        } else {
            self.epoch.min(other.epoch)
        };
        let base = self.rows.len() as u32;
        self.rows.extend(other.rows);
        for (key, entry) in other.entries {
            let entry = match entry {
                OverlayEntry::Row(r) => OverlayEntry::Row(base + r),
                other => other,
            };
            self.entries.insert(key, entry);
        }
    }

    /// Keys answered (found or absent), for the cache ([`PartialCache::insert`]); unreachable
    /// keys are not kept.
    pub fn answered(&self) -> impl Iterator<Item = (&str, Option<&[Value]>)> {
        self.entries.iter().filter_map(|(k, e)| match e {
            OverlayEntry::Row(r) => Some((k.as_str(), Some(self.rows[*r as usize].as_slice()))),
            OverlayEntry::Absent => Some((k.as_str(), None)),
            OverlayEntry::Unreachable => None,
        })
    }

    fn find(&self, key: &str) -> Option<Found> {
        self.entries.get(key).map(|e| match e {
            OverlayEntry::Row(r) => Found::Row(OVERLAY_ROW | r),
            OverlayEntry::Absent => Found::Absent,
            OverlayEntry::Unreachable => Found::Unreachable,
        })
    }
}

impl PartialCache {
    /// Keeps what `overlay` answered, written at `now_ms`, except keys that changed after its
    /// lookup started (it may have read them before the change).
    pub fn absorb(&mut self, overlay: &Overlay, now_ms: i64) {
        for (key, row) in overlay.answered() {
            if self.still_valid(key, overlay.epoch) {
                self.insert(key, row.map(<[Value]>::to_vec), now_ms);
            }
        }
    }
}

/// The decoder's [`Lookup`] in partial mode: the batch's overlay first, then the cache (held
/// under a read lock for the decode). A key in neither is [`Found::Unknown`]: the batch asks
/// for it and is decoded again.
#[derive(Debug)]
pub struct PartialView<'a> {
    pub cache: &'a PartialCache,
    pub overlay: &'a Overlay,
    pub columns: &'a [(String, FieldType)],
    pub now_ms: i64,
}

impl PartialView<'_> {
    fn value(&self, row: u32, c: usize) -> Option<&Value> {
        if row & OVERLAY_ROW != 0 {
            self.overlay
                .rows
                .get((row & !OVERLAY_ROW) as usize)
                .and_then(|r| r.get(c))
        } else {
            self.cache.row(row).get(c)
        }
    }
}

impl Lookup for PartialView<'_> {
    fn find(&self, key: &str) -> Found {
        if let Some(found) = self.overlay.find(key) {
            return found;
        }
        match self.cache.get(key, self.now_ms) {
            Cached::Row(slot) => Found::Row(slot),
            Cached::Absent => Found::Absent,
            Cached::Unknown => Found::Unknown,
        }
    }

    fn columns(&self) -> &[(String, FieldType)] {
        self.columns
    }

    fn column(&self, c: usize, rows: &UInt32Array) -> Result<ArrayRef, String> {
        let ty = &self
            .columns
            .get(c)
            .ok_or_else(|| format!("no enrichment column {c}"))?
            .1;
        let values = rows.iter().map(|row| row.and_then(|r| self.value(r, c)));
        Ok(build_column(ty, rows.len(), values))
    }
}

/// An Arrow column of `ty` from borrowed values (text is copied once, into the array).
pub fn build_column<'v>(
    ty: &FieldType,
    n: usize,
    values: impl Iterator<Item = Option<&'v Value>>,
) -> ArrayRef {
    use std::sync::Arc;
    macro_rules! build {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Some(Value::$variant(x)) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        FieldType::String | FieldType::Digits { .. } => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for v in values {
                match v {
                    Some(Value::Str(s)) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Int { .. } => build!(Int64Builder::with_capacity(n), Int),
        FieldType::Float | FieldType::DecimalComma => {
            build!(Float64Builder::with_capacity(n), Float)
        }
        FieldType::Bool => build!(BooleanBuilder::with_capacity(n), Bool),
        FieldType::Date { .. } => build!(Date32Builder::with_capacity(n), Date),
        FieldType::Timestamp { .. } => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            Timestamp
        ),
    }
}

/// The key lists of the miss queries for `keys` (distinct, in any order): chunks of at most
/// `max` keys, each padded (with its last key repeated) to a power of two, so a handful of
/// statement shapes serve every batch (the server and the client cache prepared statements by
/// text). `max` is rounded down to a power of two.
pub fn in_list_chunks(keys: &[String], max: usize) -> Vec<Vec<&str>> {
    let max = if max <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - max.leading_zeros())
    };
    keys.chunks(max)
        .map(|chunk| {
            let mut list: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let padded = list.len().next_power_of_two();
            let last = list[list.len() - 1];
            list.resize(padded, last);
            list
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(s: &str) -> Vec<Value> {
        vec![Value::Str(s.to_string()), Value::Int(s.len() as i64)]
    }

    fn limits(max_bytes: usize, ttl_ms: Option<i64>) -> Limits {
        Limits { max_bytes, ttl_ms }
    }

    #[test]
    fn holds_rows_and_absent_keys_until_they_expire() {
        let mut cache = PartialCache::new(limits(1 << 20, Some(1000)));
        assert_eq!(cache.get("a", 0), Cached::Unknown);
        cache.insert("a", Some(row("A")), 0);
        cache.insert("b", None, 0);
        let Cached::Row(slot) = cache.get("a", 999) else {
            panic!("a is held");
        };
        assert_eq!(cache.row(slot), row("A").as_slice());
        assert_eq!(cache.get("b", 999), Cached::Absent);
        // Expire after write: 1 s after it was written, asked again.
        assert_eq!(cache.get("a", 1000), Cached::Unknown);
        assert_eq!(cache.get("b", 1000), Cached::Unknown);
        cache.insert("a", Some(row("A2")), 1000);
        assert!(matches!(cache.get("a", 1500), Cached::Row(_)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn changes_touch_only_keys_held() {
        let mut cache = PartialCache::new(limits(1 << 20, None));
        cache.insert("a", Some(row("A")), 0);
        cache.insert("gone", None, 0);
        cache.apply(
            Change::Upsert {
                key: "not-held".into(),
                row: row("X"),
            },
            5,
        );
        assert_eq!(cache.get("not-held", 5), Cached::Unknown);
        cache.apply(
            Change::Upsert {
                key: "a".into(),
                row: row("NEW"),
            },
            5,
        );
        let Cached::Row(slot) = cache.get("a", 5) else {
            panic!()
        };
        assert_eq!(cache.row(slot)[0], Value::Str("NEW".into()));
        // An insert of a key known absent makes it present; a delete makes a row absent.
        cache.apply(
            Change::Upsert {
                key: "gone".into(),
                row: row("BACK"),
            },
            6,
        );
        assert!(matches!(cache.get("gone", 6), Cached::Row(_)));
        cache.apply(Change::Delete { key: "a".into() }, 7);
        assert_eq!(cache.get("a", 7), Cached::Absent);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn eviction_gives_used_entries_a_second_chance() {
        let one = entry_bytes("k0", Some(&row("v")));
        let mut cache = PartialCache::new(limits(3 * one, None));
        for k in ["k0", "k1", "k2"] {
            cache.insert(k, Some(row("v")), 0);
        }
        // k0 is used; inserting k3 must evict an unused one (k1), not k0.
        assert!(matches!(cache.get("k0", 0), Cached::Row(_)));
        cache.insert("k3", Some(row("v")), 0);
        assert_eq!(cache.len(), 3);
        assert!(matches!(cache.get("k0", 0), Cached::Row(_)));
        assert_eq!(cache.get("k1", 0), Cached::Unknown);
        assert_eq!(cache.evictions(), 1);
        assert!(cache.bytes() <= 3 * one);
    }

    #[test]
    fn a_change_forgets_the_key_and_an_answer_read_before_it_is_not_kept() {
        let mut cache = PartialCache::new(limits(1 << 20, None));
        cache.insert("a", Some(row("OLD")), 0);
        // A lookup of a and b starts (epoch 0), then the log says a and b changed.
        let mut overlay = Overlay {
            epoch: cache.epoch(),
            ..Overlay::default()
        };
        overlay.answer("a".into(), Some(row("OLD")));
        overlay.answer("b".into(), None);
        overlay.answer("c".into(), Some(row("C")));
        cache.invalidate(&["a".to_string(), "b".to_string()]);
        assert_eq!(cache.get("a", 0), Cached::Unknown);
        cache.absorb(&overlay, 0);
        assert_eq!(cache.get("a", 0), Cached::Unknown, "read before the change");
        assert_eq!(cache.get("b", 0), Cached::Unknown);
        assert!(
            matches!(cache.get("c", 0), Cached::Row(_)),
            "unchanged keys are kept"
        );
        // A lookup that starts after the change is kept.
        let mut fresh = Overlay {
            epoch: cache.epoch(),
            ..Overlay::default()
        };
        fresh.answer("a".into(), Some(row("NEW")));
        cache.absorb(&fresh, 0);
        assert!(matches!(cache.get("a", 0), Cached::Row(_)));
        // Too many changes since to tell: nothing of an old lookup is kept.
        for i in 0..RECENT_CHANGES + 1 {
            cache.invalidate(&[format!("x{i}")]);
        }
        let mut stale = Overlay::default();
        stale.answer("z".into(), None);
        cache.absorb(&stale, 0);
        assert_eq!(cache.get("z", 0), Cached::Unknown);
        assert!(cache.recent.len() <= RECENT_CHANGES);
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_kept() {
        let mut cache = PartialCache::new(limits(10, None));
        cache.insert("key", Some(row("a long value")), 0);
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn in_lists_are_chunked_and_padded_to_powers_of_two() {
        let keys: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        let chunks = in_list_chunks(&keys, 6);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 4]);
        assert_eq!(chunks[2], vec!["8", "9", "10", "10"]);
        assert!(in_list_chunks(&[], 8).is_empty());
    }

    #[test]
    fn the_view_reads_the_overlay_before_the_cache() {
        let mut cache = PartialCache::new(limits(1 << 20, None));
        cache.insert("a", Some(row("CACHED")), 0);
        let mut overlay = Overlay::default();
        overlay.answer("b".into(), Some(row("FETCHED")));
        overlay.answer("c".into(), None);
        overlay.unreachable("d".into());
        let columns = vec![
            ("p_s".to_string(), FieldType::String),
            ("p_n".to_string(), FieldType::Int { ordinal: false }),
        ];
        let view = PartialView {
            cache: &cache,
            overlay: &overlay,
            columns: &columns,
            now_ms: 0,
        };
        let (Found::Row(a), Found::Row(b)) = (view.find("a"), view.find("b")) else {
            panic!("a and b are found");
        };
        assert_eq!(view.find("c"), Found::Absent);
        assert_eq!(view.find("d"), Found::Unreachable);
        assert_eq!(view.find("e"), Found::Unknown);
        let rows = UInt32Array::from(vec![Some(b), None, Some(a)]);
        let col = view.column(0, &rows).unwrap();
        let strings = arrow::array::AsArray::as_string::<i32>(col.as_ref());
        assert_eq!(strings.value(0), "FETCHED");
        assert!(arrow::array::Array::is_null(strings, 1));
        assert_eq!(strings.value(2), "CACHED");
        // Only answered keys are kept by the cache.
        cache.absorb(&overlay, 0);
        assert!(matches!(cache.get("b", 0), Cached::Row(_)));
        assert_eq!(cache.get("c", 0), Cached::Absent);
        assert_eq!(cache.get("d", 0), Cached::Unknown);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, Option<u8>),
        Get(u8),
        Apply(u8, Option<u8>),
        Remove(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40u8, proptest::option::of(0..5u8)).prop_map(|(k, v)| Op::Insert(k, v)),
            (0..40u8).prop_map(Op::Get),
            (0..40u8, proptest::option::of(0..5u8)).prop_map(|(k, v)| Op::Apply(k, v)),
            (0..40u8).prop_map(Op::Remove),
            (0..500u16).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model of the dimension as last written: the cache never answers anything
        /// but the last value written for a key (or a change applied to it), never holds more
        /// bytes than its bound, never answers an expired entry, and its accounting adds up.
        #[test]
        fn never_stale_never_over_the_bound(
            ops in proptest::collection::vec(op(), 0..300),
            max_entries in 1..20usize,
            ttl in proptest::option::of(1..2000i64),
        ) {
            let one = entry_bytes("k00", Some(&row("vv")));
            let mut cache = PartialCache::new(limits(max_entries * one, ttl));
            // key -> (value, written at) as the cache was last told.
            let mut model: HashMap<String, (Option<Vec<Value>>, i64)> = HashMap::new();
            let mut now = 0i64;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let key = format!("k{k:02}");
                        let value = v.map(|v| row(&format!("v{v}")));
                        cache.insert(&key, value.clone(), now);
                        model.insert(key, (value, now));
                    }
                    Op::Apply(k, v) => {
                        let key = format!("k{k:02}");
                        let held = cache.index.contains_key(key.as_str());
                        let change = match v {
                            Some(v) => Change::Upsert { key: key.clone(), row: row(&format!("v{v}")) },
                            None => Change::Delete { key: key.clone() },
                        };
                        let value = match &change { Change::Upsert { row, .. } => Some(row.clone()), Change::Delete { .. } => None };
                        cache.apply(change, now);
                        if held {
                            model.insert(key, (value, now));
                        }
                    }
                    Op::Remove(k) => {
                        let key = format!("k{k:02}");
                        cache.remove(&key);
                        model.remove(&key);
                    }
                    Op::Advance(ms) => now += i64::from(ms),
                    Op::Get(k) => {
                        let key = format!("k{k:02}");
                        let got = cache.get(&key, now);
                        match (got, model.get(&key)) {
                            (Cached::Unknown, _) => {}
                            (Cached::Row(slot), Some((Some(v), at))) => {
                                prop_assert_eq!(cache.row(slot), v.as_slice());
                                prop_assert!(ttl.is_none_or(|t| now - at < t));
                            }
                            (Cached::Absent, Some((None, at))) => {
                                prop_assert!(ttl.is_none_or(|t| now - at < t));
                            }
                            (got, want) => prop_assert!(false, "{key}: cache {got:?}, model {want:?}"),
                        }
                    }
                }
                prop_assert!(cache.bytes() <= max_entries * one);
                let live: usize = cache.slots.iter().filter(|s| s.live).map(|s| s.bytes).sum();
                prop_assert_eq!(live, cache.bytes());
                prop_assert_eq!(cache.slots.iter().filter(|s| s.live).count(), cache.len());
            }
        }
    }
}
