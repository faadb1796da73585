//! What one partition durably wrote where, as far as a replay needs to know: per window and late
//! window the highest offset written there, and the exact dead letters written at or above the
//! resume offset. [`Marks::should_skip`] is the replay rule of `consume::core`'s module docs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FileRef;
use crate::output::layout::Destination;

/// Per destination, the highest offset durably written; dead letters exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MarksFile", into = "MarksFile")]
pub struct Marks {
    written: BTreeMap<Destination, i64>,
    /// Dead-letter files whose offsets reach the resume offset, in order.
    dead_letter_files: Vec<FileRef>,
    /// Offsets in those files, as inclusive ranges, sorted.
    dead_letter_offsets: Vec<(i64, i64)>,
    /// The highest offset any mark covers: offsets above it are never skipped (fast path).
    highest: i64,
}

impl Default for Marks {
    fn default() -> Self {
        Marks {
            written: BTreeMap::new(),
            dead_letter_files: Vec::new(),
            dead_letter_offsets: Vec::new(),
            highest: i64::MIN,
        }
    }
}

impl Marks {
    /// A replayed record is already written: it is a dead letter of the exact set, or it has a
    /// window `W` and its offset is at most the mark of `W` or of `_late/W`.
    pub fn should_skip(&self, offset: i64, window: Option<i64>) -> bool {
        if offset > self.highest {
            return false;
        }
        if self.is_dead_letter(offset) {
            return true;
        }
        let Some(w) = window else {
            return false;
        };
        let covers = |d: Destination| self.written.get(&d).is_some_and(|&m| m >= offset);
        covers(Destination::Window(w)) || covers(Destination::Late(w))
    }

    fn is_dead_letter(&self, offset: i64) -> bool {
        let i = self
            .dead_letter_offsets
            .partition_point(|&(_, last)| last < offset);
        self.dead_letter_offsets
            .get(i)
            .is_some_and(|&(first, _)| first <= offset)
    }

    /// The mark of a window or late window.
    pub fn get(&self, destination: Destination) -> Option<i64> {
        self.written.get(&destination).copied()
    }

    /// Rows up to `last` are durably in `destination` (a window or a late window). Marks never
    /// go down.
    pub fn record(&mut self, destination: Destination, last: i64) {
        debug_assert!(destination != Destination::DeadLetter);
        let mark = self.written.entry(destination).or_insert(last);
        *mark = (*mark).max(last);
        self.highest = self.highest.max(last);
    }

    /// Dead letters at `offsets` are durably in `file`. They may lie below offsets recorded
    /// before (a replay can dead-letter a record that went elsewhere in an earlier run and was
    /// lost in a crash), so the ranges are kept sorted and merged.
    pub fn record_dead_letters(&mut self, offsets: &[i64], file: FileRef) {
        let mut all: Vec<(i64, i64)> = std::mem::take(&mut self.dead_letter_offsets);
        all.extend(offsets.iter().map(|&o| (o, o)));
        all.sort_unstable();
        for (first, last) in all {
            match self.dead_letter_offsets.last_mut() {
                Some((_, l)) if first <= *l + 1 => *l = (*l).max(last),
                _ => self.dead_letter_offsets.push((first, last)),
            }
            self.highest = self.highest.max(last);
        }
        self.dead_letter_files.push(file);
    }

    /// Whether `name` is a dead-letter file this checkpoint committed.
    pub fn has_dead_letter_file(&self, name: &str) -> bool {
        self.dead_letter_files.iter().any(|f| f.name == name)
    }

    /// Forgets what lies below `resume`: a replay starts there, so it can never ask.
    pub fn prune(&mut self, resume: i64) {
        self.written.retain(|_, mark| *mark >= resume);
        self.dead_letter_files.retain(|f| f.last >= resume);
        self.dead_letter_offsets.retain(|&(_, last)| last >= resume);
        if let Some(first) = self.dead_letter_offsets.first_mut() {
            first.0 = first.0.max(resume);
        }
        self.highest = self.recompute_highest();
    }

    fn recompute_highest(&self) -> i64 {
        self.written
            .values()
            .copied()
            .chain(self.dead_letter_offsets.iter().map(|&(_, l)| l))
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Destinations with a mark.
    pub fn destinations(&self) -> impl Iterator<Item = (Destination, i64)> + '_ {
        self.written.iter().map(|(d, m)| (*d, *m))
    }
}

/// How [`Marks`] are stored: destination directory names as keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarksFile {
    written: BTreeMap<String, i64>,
    dead_letter_files: Vec<FileRef>,
    dead_letter_offsets: Vec<(i64, i64)>,
}

impl TryFrom<MarksFile> for Marks {
    type Error = String;

    fn try_from(f: MarksFile) -> Result<Self, String> {
        let mut written = BTreeMap::new();
        for (name, mark) in f.written {
            match Destination::parse(&name) {
                Some(d @ (Destination::Window(_) | Destination::Late(_))) => {
                    written.insert(d, mark);
                }
                _ => return Err(format!("unknown destination `{name}` in the marks")),
            }
        }
        let mut marks = Marks {
            written,
            dead_letter_files: f.dead_letter_files,
            dead_letter_offsets: f.dead_letter_offsets,
            highest: i64::MIN,
        };
        marks.highest = marks.recompute_highest();
        Ok(marks)
    }
}

impl From<Marks> for MarksFile {
    fn from(m: Marks) -> Self {
        MarksFile {
            written: m.written.iter().map(|(d, v)| (d.dir(), *v)).collect(),
            dead_letter_files: m.dead_letter_files,
            dead_letter_offsets: m.dead_letter_offsets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, first: i64, last: i64) -> FileRef {
        FileRef {
            name: name.into(),
            first,
            last,
            rows: 1,
            bytes: 1,
        }
    }

    #[test]
    fn skip_rules_table() {
        let mut m = Marks::default();
        m.record(Destination::Window(1_000), 10);
        m.record(Destination::Window(1_000), 7); // never goes down
        m.record(Destination::Late(1_000), 20);
        m.record(Destination::Late(2_000), 25);
        m.record_dead_letters(&[3, 4, 5, 30], file("d", 3, 30));
        // (offset, window, skip?)
        let table = [
            (10, Some(1_000), true),  // in the window
            (15, Some(1_000), true),  // went late
            (21, Some(1_000), false), // beyond both of the window's marks
            (21, Some(2_000), true),  // another window's late mark
            (26, Some(2_000), false),
            (8, Some(3_000), false), // a window without marks
            (4, None, true),         // a dead letter
            (6, None, false),        // not one
            (30, Some(9_000), true), // a dead letter that has a window
            (31, None, false),       // above everything: fast path
        ];
        for (offset, window, skip) in table {
            assert_eq!(m.should_skip(offset, window), skip, "@{offset} {window:?}");
        }
        assert!(m.has_dead_letter_file("d"));
        // A replay dead-letters a record below earlier dead letters: still found.
        m.record_dead_letters(&[2, 29], file("e", 2, 29));
        assert!(m.should_skip(2, None) && m.should_skip(29, Some(9_000)));
        assert!(m.should_skip(3, None) && m.should_skip(30, None) && !m.should_skip(28, None));
    }

    #[test]
    fn prune_forgets_below_resume_only_and_round_trips() {
        let mut m = Marks::default();
        m.record(Destination::Window(0), 4);
        m.record(Destination::Late(0), 9);
        m.record_dead_letters(&[1, 2], file("a", 1, 2));
        m.record_dead_letters(&[6, 8], file("b", 6, 8));
        m.prune(5);
        assert_eq!(m.get(Destination::Window(0)), None);
        assert_eq!(m.get(Destination::Late(0)), Some(9));
        assert!(!m.has_dead_letter_file("a"));
        assert!(m.has_dead_letter_file("b"));
        assert!(m.should_skip(6, None) && !m.should_skip(7, None) && m.should_skip(8, None));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("_late/window=1970-01-01T00:00:00Z"), "{json}");
        let back: Marks = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let bad = json.replace("_late/window=", "_lateX/window=");
        assert!(serde_json::from_str::<Marks>(&bad).is_err());
    }
}
