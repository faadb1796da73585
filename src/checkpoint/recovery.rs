//! Startup recovery: before anything is fetched, bring the files of one partition back to exactly
//! what its checkpoint committed. Planned without side effects ([`plan`]), then applied
//! ([`Plan::apply`]); idempotent, so a crash during recovery is harmless.
//!
//! For partition `p` with checkpoint `cp` (resume offset `r`), a file is kept iff:
//! - a staged row group of window `W`: it is in `cp.staged[W]`;
//! - a table file of window `W`: `W` is closed per `cp`, and `last <= mark(W)` or `last < r`;
//! - a late file of `W`: `last <= mark(_late/W)` or `last < r`;
//! - a dead-letter file: `cp` lists it, or `last < r`;
//!
//! and every temporary file of `p` is deleted. Why that is exact: files are written in offset
//! order per destination, and a commit covers everything written before it (`consume::core`);
//! marks below `r` are pruned, but no file written after the commit can hold only offsets below
//! `r` (everything below `r` was routed before the commit). Table files of a window that the
//! checkpoint considers open were written by a close that never committed; staged files not in
//! the checkpoint were staged after it, or merged by a later close and kept only while the
//! previous generation might still be needed.
//!
//! That argument assumes one writer at a time, which fencing gives for commits but not for
//! writes: a writer that lost the partition (frozen, or cut off with an upload in flight) can
//! land a file after the new owner took over, with the same offsets as the new owner's copy,
//! and the offsets alone would keep both. So a checkpoint names the writers the partition was
//! taken from (`fenced_writers`), and a table or late file of one of them that overlaps in
//! offsets a file of another writer for the same destination is *superseded*: deleted, whatever
//! the offsets say. Committed table files of a window come from one writer's close, and
//! committed late files of a window have disjoint ranges (replays skip late rows up to the late
//! mark), so at most one of two overlapping files is committed, and it is not the one whose
//! writer had lost the partition. Dead-letter files are left out of the rule: they hold
//! scattered offsets, so committed ones may overlap in range (a late dead-letter copy of a
//! zombie stays until found by hand: `app inspect` lists the writers). A fenced writer's staged
//! row group that the checkpoint does not list is uncommitted like any other.
//!
//! Without a checkpoint, data files of `p` are refused rather than deleted
//! ([`CheckpointError::OrphanedOutput`]): they were committed by a checkpoint that is gone.
//! Files of other partitions, success markers (see `consume::success`) and anything that is not
//! ours are never touched.

use super::store::CheckpointError;
use super::PartitionCheckpoint;
use crate::output::layout::{self, Destination, Entry, FileKind, Key};
use crate::output::store::{ObjectInfo, Store};

/// What recovery of one partition deletes and keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub partition: i32,
    /// Temporary files of interrupted writes.
    pub temp: Vec<Key>,
    /// Data and staged files written after the checkpoint.
    pub uncommitted: Vec<Key>,
    /// Table and late files of a fenced writer (`PartitionCheckpoint::fenced_writers`) that overlap in
    /// offsets a file of another writer for the same destination: written after that writer
    /// lost the partition. Never committed, whoever asks and whenever: safe to delete at once.
    pub superseded: Vec<Key>,
    /// Committed data and staged files.
    pub kept: usize,
}

impl Plan {
    pub fn is_clean(&self) -> bool {
        self.temp.is_empty() && self.uncommitted.is_empty() && self.superseded.is_empty()
    }

    pub fn apply(&self, store: &dyn Store) -> Result<(), CheckpointError> {
        for key in self
            .temp
            .iter()
            .chain(&self.uncommitted)
            .chain(&self.superseded)
        {
            store.delete(key)?;
        }
        Ok(())
    }
}

/// Refuses a layout-1 output (see [`CheckpointError::Legacy`]).
pub fn refuse_legacy(store: &dyn Store, listing: &[ObjectInfo]) -> Result<(), CheckpointError> {
    match listing
        .iter()
        .find(|o| matches!(layout::classify(&o.key), Entry::Legacy))
    {
        Some(o) => Err(CheckpointError::Legacy {
            location: store.describe(),
            example: o.key.clone(),
        }),
        None => Ok(()),
    }
}

/// Plans recovery of `partition` (see the module docs). `listing` is every object of the output.
pub fn plan(
    store: &dyn Store,
    partition: i32,
    checkpoint: Option<&PartitionCheckpoint>,
    listing: &[ObjectInfo],
) -> Result<Plan, CheckpointError> {
    let mut plan = Plan {
        partition,
        ..Plan::default()
    };
    let mut data = Vec::new();
    for o in listing {
        match layout::classify(&o.key) {
            Entry::Temp { for_key } => {
                let owner = match layout::classify(&for_key) {
                    Entry::Data { part, .. } | Entry::Staged { part, .. } => Some(part.partition),
                    _ => None,
                };
                if owner == Some(partition) {
                    plan.temp.push(o.key.clone());
                }
            }
            Entry::Data { destination, part } if part.partition == partition => {
                data.push((o.key.clone(), Some(destination), None, part))
            }
            Entry::Staged { window, part } if part.partition == partition => {
                data.push((o.key.clone(), None, Some(window), part))
            }
            _ => {}
        }
    }
    let Some(cp) = checkpoint else {
        if let Some((example, ..)) = data.first() {
            return Err(CheckpointError::OrphanedOutput {
                location: store.describe(),
                partition,
                files: data.len(),
                example: example.clone(),
            });
        }
        return Ok(plan);
    };
    let resume = cp.resume_offset;
    let superseded = superseded(&data, &cp.fenced_writers);
    for (key, destination, staged_window, part) in data {
        if superseded.contains(&key) {
            plan.superseded.push(key);
            continue;
        }
        let name = part.to_string();
        let keep = match (destination, staged_window) {
            (None, Some(window)) => cp
                .staged
                .get(&window)
                .is_some_and(|files| files.iter().any(|f| f.name == name)),
            (Some(Destination::Window(w)), _) => {
                cp.is_closed(w)
                    && (cp
                        .marks
                        .get(Destination::Window(w))
                        .is_some_and(|m| part.last_offset <= m)
                        || part.last_offset < resume)
            }
            (Some(Destination::Late(w)), _) => {
                cp.marks
                    .get(Destination::Late(w))
                    .is_some_and(|m| part.last_offset <= m)
                    || part.last_offset < resume
            }
            (Some(Destination::DeadLetter), _) => {
                cp.marks.has_dead_letter_file(&name) || part.last_offset < resume
            }
            (None, None) => unreachable!("every data entry has a destination or a window"),
        };
        debug_assert!(part.kind != FileKind::Staged || staged_window.is_some());
        if keep {
            plan.kept += 1;
        } else {
            plan.uncommitted.push(key);
        }
    }
    plan.temp.sort();
    plan.uncommitted.sort();
    plan.superseded.sort();
    Ok(plan)
}

type DataEntry = (Key, Option<Destination>, Option<i64>, layout::PartName);

/// The table and late files of `fenced` writers that overlap, in offsets, a file of a writer
/// not in `fenced` with the same destination (see [`Plan::superseded`]). Committed files of one
/// window come from one writer's close (a window closes once; a close that never committed is
/// redone by the next writer and its files deleted), and committed late files of a window have
/// disjoint ranges (a replay skips late rows up to the window's late mark), so of two
/// overlapping files at most one is committed, and it is not the one whose writer had been
/// taken over from.
fn superseded(data: &[DataEntry], fenced: &[String]) -> std::collections::BTreeSet<Key> {
    let is_fenced = |part: &layout::PartName| {
        part.writer
            .is_some_and(|w| fenced.iter().any(|f| *f == w.to_string()))
    };
    let mut out = std::collections::BTreeSet::new();
    if fenced.is_empty() {
        return out;
    }
    for (key, destination, _, part) in data {
        // Staged files are committed by name; dead-letter files hold scattered offsets (replays
        // skip the ones already written one by one), so two committed ones can overlap in range.
        let Some(destination @ (Destination::Window(_) | Destination::Late(_))) = destination
        else {
            continue;
        };
        if !is_fenced(part) {
            continue;
        }
        let overlaps = data.iter().any(|(_, d, _, other)| {
            d.as_ref() == Some(destination)
                && !is_fenced(other)
                && other.first_offset <= part.last_offset
                && part.first_offset <= other.last_offset
        });
        if overlaps {
            out.insert(key.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{FileRef, Marks, CHECKPOINT_VERSION};
    use crate::output::layout::{data_key, staged_key, PartName, WriterId};
    use crate::output::store::MemStore;

    const W: i64 = 60_000;

    fn part(p: i32, first: i64, last: i64, kind: FileKind) -> PartName {
        PartName::new(p, first, last, WriterId(7), kind)
    }

    fn fref(part: &PartName) -> FileRef {
        FileRef {
            name: part.to_string(),
            first: part.first_offset,
            last: part.last_offset,
            rows: 1,
            bytes: 1,
        }
    }

    #[test]
    fn keeps_exactly_what_the_checkpoint_committed() {
        let store = MemStore::new();
        let closed = part(0, 0, 9, FileKind::Table); // window 0, closed, committed
        let closed_after = part(0, 10, 12, FileKind::Table); // window 0 again? no: window W2 closed after the commit
        let staged_ok = part(0, 20, 29, FileKind::Staged); // window 2W, open, listed
        let staged_late = part(0, 30, 31, FileKind::Staged); // staged after the commit
        let late_ok = part(0, 13, 13, FileKind::Side);
        let late_new = part(0, 40, 40, FileKind::Side);
        let dead_ok = part(0, 14, 14, FileKind::Side);
        let dead_new = part(0, 41, 41, FileKind::Side);
        let other_partition = part(1, 0, 99, FileKind::Table);
        let keys = [
            data_key(Destination::Window(0), &closed),
            data_key(Destination::Window(W), &closed_after),
            staged_key(2 * W, &staged_ok),
            staged_key(2 * W, &staged_late),
            data_key(Destination::Late(0), &late_ok),
            data_key(Destination::Late(0), &late_new),
            data_key(Destination::DeadLetter, &dead_ok),
            data_key(Destination::DeadLetter, &dead_new),
            data_key(Destination::Window(0), &other_partition),
            format!(
                "window=1970-01-01T00:00:00Z/{}",
                layout::temp_name(&closed_after.to_string())
            ),
            "window=1970-01-01T00:00:00Z/_SUCCESS".to_string(),
        ];
        for k in &keys {
            store.put(k, b"x").unwrap();
        }
        let mut marks = Marks::default();
        marks.record(Destination::Window(0), 9);
        marks.record(Destination::Late(0), 13);
        marks.record(Destination::Window(2 * W), 29);
        marks.record_dead_letters(&[14], fref(&dead_ok));
        let cp = PartitionCheckpoint {
            version: CHECKPOINT_VERSION,
            generation: 3,
            topic: "t".into(),
            partition: 0,
            window_ms: W,
            writer: "00000007".into(),
            resume_offset: 20,
            next_offset: 35,
            max_event_ms: None,
            closed_before: W, // window 0 closed; window W and 2W open
            staged: [(2 * W, vec![fref(&staged_ok)])].into(),
            marks,
            fenced_writers: Vec::new(),
            claimed_from: None,
            unpublished: Vec::new(),
        };
        let listing = store.list("").unwrap();
        let plan = plan(&store, 0, Some(&cp), &listing).unwrap();
        let mut expected = vec![
            keys[1].clone(), // a close of window W that never committed
            keys[3].clone(),
            keys[5].clone(),
            keys[7].clone(),
        ];
        expected.sort();
        assert_eq!(plan.uncommitted, expected);
        assert_eq!(plan.temp, vec![keys[9].clone()]);
        assert_eq!(plan.kept, 4);
        plan.apply(&store).unwrap();
        let again = super::plan(&store, 0, Some(&cp), &store.list("").unwrap()).unwrap();
        assert!(again.is_clean(), "idempotent: {again:?}");
        assert!(
            store.get(&keys[8]).unwrap().is_some(),
            "other partitions untouched"
        );
        assert!(store.get(&keys[10]).unwrap().is_some(), "markers untouched");
    }

    #[test]
    fn a_fenced_writers_late_copy_is_superseded_whatever_the_offsets_say() {
        // Writer 7 lost the partition to writer 8; a close it had in flight landed afterwards,
        // holding the same offsets as writer 8's committed file of that window.
        let store = MemStore::new();
        let by = |w: u32, first: i64, last: i64| {
            PartName::new(0, first, last, WriterId(w), FileKind::Table)
        };
        let committed_old = by(7, 0, 9); // committed by 7 before the takeover
        let zombie = by(7, 10, 19);
        let committed_new = by(8, 10, 19);
        let other_window = by(7, 10, 19); // same offsets, another window: no overlap there
        let keys = [
            data_key(Destination::Window(0), &committed_old),
            data_key(Destination::Window(0), &zombie),
            data_key(Destination::Window(0), &committed_new),
            data_key(Destination::Window(W), &other_window),
        ];
        for k in &keys {
            store.put(k, b"x").unwrap();
        }
        let mut marks = Marks::default();
        marks.record(Destination::Window(0), 19);
        marks.record(Destination::Window(W), 19);
        let mut cp = PartitionCheckpoint {
            version: CHECKPOINT_VERSION,
            generation: 5,
            topic: "t".into(),
            partition: 0,
            window_ms: W,
            writer: "00000008".into(),
            resume_offset: 30,
            next_offset: 30,
            max_event_ms: None,
            closed_before: 2 * W,
            staged: Default::default(),
            marks,
            fenced_writers: Vec::new(),
            claimed_from: None,
            unpublished: Vec::new(),
        };
        let listing = store.list("").unwrap();
        let unaware = plan(&store, 0, Some(&cp), &listing).unwrap();
        assert!(
            unaware.superseded.is_empty() && unaware.kept == 4,
            "without the fenced writer the offsets alone keep both copies: {unaware:?}"
        );
        cp.fenced_writers = vec!["00000007".into()];
        let plan = plan(&store, 0, Some(&cp), &listing).unwrap();
        assert_eq!(plan.superseded, vec![keys[1].clone()]);
        assert_eq!(plan.kept, 3, "7's committed files stay: {plan:?}");
        assert!(plan.uncommitted.is_empty());
    }

    #[test]
    fn data_without_a_checkpoint_is_refused_and_layout_1_too() {
        let store = MemStore::new();
        let p = part(2, 0, 9, FileKind::Table);
        store
            .put(&data_key(Destination::Window(0), &p), b"x")
            .unwrap();
        let listing = store.list("").unwrap();
        let e = plan(&store, 2, None, &listing).unwrap_err().to_string();
        assert!(
            e.contains("no checkpoint") && e.contains("partition 2"),
            "{e}"
        );
        assert!(plan(&store, 1, None, &listing).unwrap().is_clean());
        store.put("_checkpoint/checkpoint.json", b"{}").unwrap();
        let e = refuse_legacy(&store, &store.list("").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("layout 1") && e.contains("new --output"), "{e}");
    }
}
