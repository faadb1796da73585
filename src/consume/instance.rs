//! What concerns every partition of one consumer instance at once, kept pure:
//!
//! - [`Board`]: the boundary an idle partition follows (see `consume::core`): the lowest
//!   `closed_before` of the active partitions, or the highest of all when every partition is
//!   idle.
//! - [`SuccessTracker`]: when a window gets its success marker. A window's files appear
//!   partition by partition, as each partition's watermark passes the window's end; the marker
//!   is written once every partition in scope has *committed* a `closed_before` past the end,
//!   and it lists the window's files (a manifest: what a reader of an object store should read).
//!   It judges the committed checkpoints and a listing of the output (`consume::markers` sweeps
//!   them): missing markers are created and, when reconciling, ones a fallback to an older
//!   checkpoint made untrue are removed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::checkpoint::PartitionCheckpoint;
use crate::output::layout::{self, Destination, Entry, Key, SuccessScope};
use crate::output::store::ObjectInfo;
use crate::window::window_end;

/// Per assigned partition: its `closed_before` and whether it is active (not idle).
#[derive(Debug, Clone, Default)]
pub struct Board {
    partitions: BTreeMap<i32, (i64, bool)>,
}

impl Board {
    pub fn new(partitions: impl IntoIterator<Item = i32>) -> Self {
        Board {
            partitions: partitions
                .into_iter()
                .map(|p| (p, (i64::MIN, true)))
                .collect(),
        }
    }

    pub fn update(&mut self, partition: i32, closed_before: i64, active: bool) {
        self.partitions.insert(partition, (closed_before, active));
    }

    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The boundary idle partitions follow; `None` while it is `i64::MIN` (nothing closed).
    pub fn boundary(&self) -> Option<i64> {
        let active = self
            .partitions
            .values()
            .filter(|(_, a)| *a)
            .map(|(c, _)| *c)
            .min();
        let b = match active {
            Some(m) => m,
            None => self.partitions.values().map(|(c, _)| *c).max()?,
        };
        (b > i64::MIN).then_some(b)
    }

    /// The lowest `closed_before` of all assigned partitions (what `_SUCCESS` waits for).
    pub fn lowest(&self) -> Option<i64> {
        self.partitions.values().map(|(c, _)| *c).min()
    }
}

/// One file of a window's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestFile {
    pub name: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// The content of a success marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub window_start: String,
    pub window_end: String,
    pub partitions: Vec<i32>,
    pub rows: u64,
    pub files: Vec<ManifestFile>,
}

/// A marker to write: its key and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub window: i64,
    pub key: Key,
    pub manifest: Manifest,
}

impl Marker {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.manifest).expect("a manifest serializes");
        v.push(b'\n');
        v
    }
}

/// Decides the success markers of one instance. See the module docs.
#[derive(Debug, Clone)]
pub struct SuccessTracker {
    scope: SuccessScope,
    window_ms: i64,
    partitions: Vec<i32>,
    committed: BTreeMap<i32, i64>,
    pending: BTreeMap<i64, Vec<ManifestFile>>,
}

impl SuccessTracker {
    /// `scope` names the markers; `partitions` are the assigned ones.
    pub fn new(scope: SuccessScope, window_ms: i64, partitions: &BTreeSet<i32>) -> Self {
        SuccessTracker {
            scope,
            window_ms,
            partitions: partitions.iter().copied().collect(),
            committed: partitions.iter().map(|p| (*p, i64::MIN)).collect(),
            pending: BTreeMap::new(),
        }
    }

    /// Reconciles markers with the recovered checkpoints at startup: returns the keys of markers
    /// to remove and the markers to create now; windows still waiting are remembered. `rows` gives
    /// the row count of a listed table file (read from its footer by the caller).
    pub fn start(
        &mut self,
        checkpoints: &BTreeMap<i32, PartitionCheckpoint>,
        listing: &[ObjectInfo],
        mut rows: impl FnMut(&str) -> u64,
    ) -> (Vec<Key>, Vec<Marker>) {
        for (p, cp) in checkpoints {
            self.committed.insert(*p, cp.closed_before);
        }
        let marker_name = self.scope.marker_name();
        let mut with_marker = BTreeSet::new();
        let mut remove = Vec::new();
        for o in listing {
            match layout::classify(&o.key) {
                Entry::Success { window, name } if name == marker_name => {
                    if self.is_complete(window) {
                        with_marker.insert(window);
                    } else {
                        remove.push(o.key.clone());
                    }
                }
                Entry::Data {
                    destination: Destination::Window(window),
                    part,
                } if self.committed.contains_key(&part.partition) => {
                    // Recovery ran before: every table file left of ours is committed.
                    self.pending.entry(window).or_default().push(ManifestFile {
                        name: part.to_string(),
                        partition: part.partition,
                        first_offset: part.first_offset,
                        last_offset: part.last_offset,
                        rows: rows(&o.key),
                        bytes: o.size,
                    });
                }
                _ => {}
            }
        }
        for w in with_marker {
            self.pending.remove(&w);
        }
        (remove, self.ready())
    }

    fn is_complete(&self, window: i64) -> bool {
        let end = window_end(window, self.window_ms);
        self.committed.values().all(|c| *c >= end)
    }

    /// Markers for every pending window that is now complete (removed from pending).
    fn ready(&mut self) -> Vec<Marker> {
        let complete: Vec<i64> = self
            .pending
            .keys()
            .copied()
            .filter(|w| self.is_complete(*w))
            .collect();
        complete
            .into_iter()
            .map(|window| {
                let mut files = self.pending.remove(&window).unwrap_or_default();
                files.sort_by(|a, b| {
                    (a.partition, a.first_offset).cmp(&(b.partition, b.first_offset))
                });
                Marker {
                    window,
                    key: layout::success_key(window, &self.scope),
                    manifest: Manifest {
                        window_start: layout::window_label(window),
                        window_end: layout::window_label(window_end(window, self.window_ms)),
                        partitions: self.partitions.clone(),
                        rows: files.iter().map(|f| f.rows).sum(),
                        files,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_follows_active_partitions_or_the_most_advanced() {
        let mut b = Board::new([0, 1, 2]);
        assert_eq!(b.boundary(), None);
        b.update(0, 100, true);
        b.update(1, 300, true);
        b.update(2, i64::MIN, true);
        assert_eq!(
            b.boundary(),
            None,
            "an active partition that closed nothing holds it"
        );
        b.update(2, 50, true);
        assert_eq!(b.boundary(), Some(50));
        b.update(2, 50, false);
        assert_eq!(
            b.boundary(),
            Some(100),
            "idle partitions do not hold it back"
        );
        b.update(0, 100, false);
        b.update(1, 300, false);
        assert_eq!(b.boundary(), Some(300), "all idle: the most advanced");
        assert_eq!(b.lowest(), Some(50));
    }
}
