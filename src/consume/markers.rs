//! The success markers, derived from the output itself: one sweep serves a single instance and
//! many. The coordinator (`coordinator`) says when a sweep is due; this module says what it
//! finds and writes it. Synchronous storage I/O: the driver runs it on the blocking pool.
//!
//! Why a sweep's markers are true: it loads every in-scope partition's committed checkpoint
//! *before* it lists the output, so every file a loaded checkpoint covers was written before it
//! was committed and is listed; files written after are judged against it and skipped
//! (`recovery::plan`: temporary, uncommitted, superseded). A window gets its marker only when
//! every in-scope partition's checkpoint has closed it ([`SuccessTracker`]); its manifest lists
//! the window's committed files. Two instances may write the same marker: its content depends
//! only on the committed state, so the second write changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use super::instance::{Marker, SuccessTracker};
use super::ConsumeError;
use crate::checkpoint::{self, recovery};
use crate::output::layout::{self, Destination, Entry, Key, SuccessScope};
use crate::output::store::{ObjectInfo, Store};

/// What a sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Markers of complete windows that do not exist yet.
    pub create: Vec<Marker>,
    /// With `reconcile`: markers no checkpoint supports any more (a fallback to an older one).
    pub remove: Vec<Key>,
    /// Files a writer wrote after it had lost the partition (their rows are in the new owner's).
    pub superseded: Vec<Key>,
}

/// Looks at every partition of `partitions` (the scope's) and the output's listing.
pub fn sweep(
    store: &dyn Store,
    topic: &str,
    window_ms: i64,
    scope: &SuccessScope,
    partitions: &BTreeSet<i32>,
    reconcile: bool,
) -> Result<Sweep, ConsumeError> {
    let mut checkpoints = BTreeMap::new();
    for &p in partitions {
        match checkpoint::load(store, topic, p, window_ms)?.checkpoint {
            Some(cp) => checkpoints.insert(p, cp),
            // A partition nobody has claimed yet: no window is complete.
            None => return Ok(Sweep::default()),
        };
    }
    let listing = store.list("")?;
    let closed_everywhere = checkpoints
        .values()
        .map(|cp| cp.closed_before)
        .min()
        .unwrap_or(i64::MIN);
    let mut skip = BTreeSet::new();
    let mut superseded = Vec::new();
    for (p, cp) in &checkpoints {
        let plan = recovery::plan(store, *p, Some(cp), &listing)?;
        skip.extend(plan.temp);
        skip.extend(plan.uncommitted);
        skip.extend(plan.superseded.iter().cloned());
        superseded.extend(plan.superseded);
    }
    let marker_name = scope.marker_name();
    let with_marker: BTreeSet<i64> = listing
        .iter()
        .filter_map(|o| match layout::classify(&o.key) {
            Entry::Success { window, name } if name == marker_name => Some(window),
            _ => None,
        })
        .collect();
    // The tracker sees the markers (to judge them, when reconciling) and only the table files
    // of complete windows without a marker: footers are read for those alone.
    let seen: Vec<ObjectInfo> = listing
        .into_iter()
        .filter(|o| !skip.contains(&o.key))
        .filter(|o| match layout::classify(&o.key) {
            Entry::Success { name, .. } => reconcile && name == marker_name,
            Entry::Data {
                destination: Destination::Window(window),
                part,
            } => {
                partitions.contains(&part.partition)
                    && !with_marker.contains(&window)
                    && crate::window::window_end(window, window_ms) <= closed_everywhere
            }
            _ => false,
        })
        .collect();
    if seen.is_empty() {
        return Ok(Sweep {
            superseded,
            ..Sweep::default()
        });
    }
    let mut tracker = SuccessTracker::new(scope.clone(), window_ms, partitions);
    let (remove, create) = tracker.start(&checkpoints, &seen, |key| footer_rows(store, key));
    Ok(Sweep {
        create,
        remove,
        superseded,
    })
}

/// Deletes superseded files and unsupported markers, then writes the new markers; returns how
/// many markers it wrote.
pub fn apply(store: &dyn Store, sweep: Sweep) -> Result<u64, ConsumeError> {
    for key in &sweep.superseded {
        tracing::warn!(
            file = %key,
            "Removing a file written by a writer after it had lost the partition (its rows are \
             in the new owner's file)"
        );
        store.delete(key)?;
    }
    for key in &sweep.remove {
        tracing::info!(marker = %key, "Removing a success marker the checkpoint does not support");
        store.delete(key)?;
    }
    for m in &sweep.create {
        store.put(&m.key, &m.to_json())?;
    }
    Ok(sweep.create.len() as u64)
}

/// The row count in a table file's footer, for a manifest (0 when it cannot be read: the
/// manifest still lists the file). Reads the footer only, never the file.
fn footer_rows(store: &dyn Store, key: &str) -> u64 {
    crate::output::parquet::footer_row_count(|n| store.get_suffix(key, n)).unwrap_or(0)
}
