//! Checkpoint generations of one partition in an output [`Store`]:
//! `_checkpoint/partition=<p>/gen-<generation>.json`, each written once with `put_new`.
//!
//! - [`commit`] creates generation `g`; if it already exists another writer committed it first
//!   and this one is fenced ([`CheckpointError::Fenced`]): it must stop writing this partition.
//!   A writer that fell two or more generations behind finds its slot free (old generations are
//!   deleted), so after creating `g` the commit also lists the partition's generations: any
//!   newer than `g` fences it too. Its `g` is deleted again, unless a newer generation names it
//!   as `claimed_from`: then `g` landed late yet before a new owner read it and took the
//!   partition over from it (a cut connection), so `g` and the files it covers are committed and
//!   stay (the fenced writer keeps its files; `load` still prefers the newest). A takeover from
//!   `g` followed by a second takeover, both while `g`'s request was in flight, is not
//!   recognised (`claimed_from` names only the direct origin). That cannot miss one: a writer
//!   deletes only generations below its own latest, so once `g` is gone some generation `> g`
//!   exists at every moment. Generations older than `g − 1` are then deleted, so the previous
//!   one stays as a fallback.
//! - [`load`] reads the newest generation; a damaged one (torn, unparseable, checksum mismatch) is
//!   copied aside as `<name>.damaged` and the next older one is used, which is safe: files the
//!   newer generation committed are uncommitted from the older one's point of view, so recovery
//!   deletes them and their records are replayed. A checkpoint of another topic or window width,
//!   or of an unknown version, is refused: the consumer never guesses.

use serde_json::Value as Json;

use super::{Envelope, PartitionCheckpoint, CHECKPOINT_VERSION};
use crate::output::layout::{self, Entry};
use crate::output::store::{Store, StoreError};

/// Errors of checkpoints and recovery. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no usable checkpoint for partition {partition} in {location}: {problems}. Resuming from \
         the beginning could duplicate rows already in the output, so this run stops. To start \
         over, move the output aside and rerun; keep the damaged files to investigate"
    )]
    Unusable {
        partition: i32,
        location: String,
        problems: String,
    },
    #[error(
        "checkpoint {key} in {location} was written for {field} `{found}`, but this run uses \
         `{expected}`. Rerun with the original setting, or write to a new output"
    )]
    Mismatch {
        location: String,
        key: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "checkpoint {key} in {location} has format version {found}; this program understands \
         version {CHECKPOINT_VERSION}. Run the version of the program that wrote it"
    )]
    UnsupportedVersion {
        location: String,
        key: String,
        found: u64,
    },
    #[error(
        "partition {partition}: generation {generation} of its checkpoint in {location} was \
         committed by another consumer (writer {other}) while this one ({me}) held the \
         partition. Two consumers are writing the same partitions of one output: this one \
         stops without committing, so the output stays exactly once. Give each consumer its own \
         partitions (or --group), or its own output"
    )]
    Fenced {
        partition: i32,
        generation: u64,
        location: String,
        me: String,
        other: String,
        /// This writer's own commit was written, but a newer owner took the partition over
        /// *from it* (its `claimed_from`): the files it covers are committed and must stay.
        landed: bool,
    },
    #[error(
        "{location} was written by an earlier version of app (layout 1: `window_start=…` \
         folders and {example}). This version writes layout {} (`window=…` folders, a checkpoint \
         per partition) and does not mix the two. Consume into a new --output (and delete the old \
         one when done); `app inspect` still reads the old layout",
        layout::LAYOUT_VERSION
    )]
    Legacy { location: String, example: String },
    #[error(
        "{location} holds {files} file(s) of partition {partition} (e.g. {example}) but no \
         checkpoint for it: the checkpoint was deleted. Starting over would delete those files and \
         rewrite them (losing whatever retention has removed since), so this run stops. Restore \
         `_checkpoint/`, or move the output aside to start over"
    )]
    OrphanedOutput {
        location: String,
        partition: i32,
        files: usize,
        example: String,
    },
}

/// What [`load`] found for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The newest usable generation, if any.
    pub checkpoint: Option<PartitionCheckpoint>,
    /// The newest generation present, usable or not: the next commit is above it.
    pub newest_generation: u64,
    /// Why newer generations were skipped, if any were.
    pub fell_back: Vec<String>,
}

/// How often [`load`] lists again when a listed generation is gone by the time it is read.
const VANISHED_RETRIES: u32 = 10;

/// Loads the newest usable checkpoint of `partition`. See the module docs.
///
/// A generation that was listed but is gone when read was pruned by a writer that committed
/// newer ones meanwhile (another instance's run, e.g. the partition's new owner while this one
/// was cut off): the listing is stale, so it is listed again rather than falling back past it
/// (which would discard that writer's output) or refusing the start.
pub fn load(
    store: &dyn Store,
    topic: &str,
    partition: i32,
    window_ms: i64,
) -> Result<Loaded, CheckpointError> {
    // A generation pruned between the listing and the read: list again, briefly backed off
    // (the one retry policy, `crate::retry`), then judge the listing as it stands.
    const RELIST: crate::retry::RetryPolicy = crate::retry::RetryPolicy::exponential(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(400),
    );
    let mut backoff = RELIST.backoff();
    loop {
        let relist = backoff.attempts() < VANISHED_RETRIES;
        match load_listed(store, topic, partition, window_ms, relist)? {
            Some(loaded) => return Ok(loaded),
            None => {
                let delay = backoff.next_delay(std::time::Duration::ZERO);
                std::thread::sleep(delay.unwrap_or(RELIST.max_delay));
            }
        }
    }
}

/// One pass of [`load`] over one listing; `None` when a listed generation vanished and
/// `relist` allows listing again.
fn load_listed(
    store: &dyn Store,
    topic: &str,
    partition: i32,
    window_ms: i64,
    relist: bool,
) -> Result<Option<Loaded>, CheckpointError> {
    let mut generations: Vec<(u64, String)> = store
        .list(&format!("{}/", layout::checkpoint_dir(partition)))?
        .into_iter()
        .filter_map(|o| match layout::classify(&o.key) {
            Entry::Checkpoint {
                partition: p,
                generation,
            } if p == partition => Some((generation, o.key)),
            _ => None,
        })
        .collect();
    generations.sort();
    let newest_generation = generations.last().map_or(0, |(g, _)| *g);
    let mut problems = Vec::new();
    // Copied aside only when an older generation is used: a refused start changes nothing.
    let mut damaged: Vec<(String, bytes::Bytes)> = Vec::new();
    for (generation, key) in generations.iter().rev() {
        let Some(bytes) = store.get(key)? else {
            if relist {
                return Ok(None);
            }
            problems.push(format!("{key}: vanished while being read"));
            continue;
        };
        match parse(&bytes, store, key)? {
            Ok(cp) => {
                if cp.generation != *generation || cp.partition != partition {
                    problems.push(format!(
                        "{key}: holds generation {} of partition {}",
                        cp.generation, cp.partition
                    ));
                    continue;
                }
                check_identity(store, key, &cp, topic, window_ms)?;
                for (key, bytes) in &damaged {
                    store.put(&format!("{key}.damaged"), bytes)?;
                }
                if !problems.is_empty() {
                    tracing::warn!(
                        partition,
                        generation,
                        skipped = %problems.join("; "),
                        "Resuming from an older checkpoint generation; output written after it is \
                         removed and its records replayed"
                    );
                }
                return Ok(Some(Loaded {
                    checkpoint: Some(cp),
                    newest_generation,
                    fell_back: problems,
                }));
            }
            Err(problem) => {
                problems.push(format!("{key}: {problem}"));
                damaged.push((key.clone(), bytes));
            }
        }
    }
    if problems.is_empty() {
        Ok(Some(Loaded {
            checkpoint: None,
            newest_generation,
            fell_back: problems,
        }))
    } else {
        Err(CheckpointError::Unusable {
            partition,
            location: store.describe(),
            problems: problems.join("; "),
        })
    }
}

/// Parses one generation: `Ok(Err(problem))` when it is damaged.
fn parse(
    bytes: &[u8],
    store: &dyn Store,
    key: &str,
) -> Result<Result<PartitionCheckpoint, String>, CheckpointError> {
    let json: Json = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Ok(Err(format!("not valid JSON ({e})"))),
    };
    if let Some(version) = json.pointer("/checkpoint/version").and_then(Json::as_u64) {
        if version != u64::from(CHECKPOINT_VERSION) {
            return Err(CheckpointError::UnsupportedVersion {
                location: store.describe(),
                key: key.to_string(),
                found: version,
            });
        }
    }
    let envelope: Envelope = match serde_json::from_value(json) {
        Ok(e) => e,
        Err(e) => return Ok(Err(format!("not a checkpoint ({e})"))),
    };
    let actual = envelope.checkpoint.checksum();
    if envelope.checksum != actual {
        return Ok(Err(format!(
            "damaged (checksum {} recorded, {actual} computed)",
            envelope.checksum
        )));
    }
    Ok(Ok(envelope.checkpoint))
}

fn check_identity(
    store: &dyn Store,
    key: &str,
    cp: &PartitionCheckpoint,
    topic: &str,
    window_ms: i64,
) -> Result<(), CheckpointError> {
    let mismatch = |field, found: String, expected: String| CheckpointError::Mismatch {
        location: store.describe(),
        key: key.to_string(),
        field,
        found,
        expected,
    };
    if cp.topic != topic {
        return Err(mismatch("topic", cp.topic.clone(), topic.to_string()));
    }
    if cp.window_ms != window_ms {
        return Err(mismatch(
            "window width (ms)",
            cp.window_ms.to_string(),
            window_ms.to_string(),
        ));
    }
    Ok(())
}

/// Commits `cp` as generation `cp.generation` (see the module docs).
pub fn commit(store: &dyn Store, cp: &PartitionCheckpoint) -> Result<(), CheckpointError> {
    let key = layout::checkpoint_key(cp.partition, cp.generation);
    let envelope = Envelope {
        checksum: cp.checksum(),
        checkpoint: cp.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&envelope).expect("a checkpoint serializes");
    text.push(b'\n');
    // A conditional put that was retried after its first attempt landed (a timeout, a cut
    // connection) finds its own object: that is our commit, not another writer's. Taking it for
    // a fence would make this writer withdraw files its own commit covers.
    if !store.put_new(&key, &text)? && store.get(&key)?.as_deref() != Some(&text[..]) {
        let other = writer_of(store, &key)?;
        return Err(CheckpointError::Fenced {
            partition: cp.partition,
            generation: cp.generation,
            location: store.describe(),
            me: cp.writer.clone(),
            other,
            landed: false,
        });
    }
    let listing = store.list(&format!("{}/", layout::checkpoint_dir(cp.partition)))?;
    let newer = listing
        .iter()
        .filter_map(|o| match layout::classify(&o.key) {
            Entry::Checkpoint { generation, .. } if generation > cp.generation => {
                Some((generation, o.key.clone()))
            }
            _ => None,
        })
        .max();
    if let Some((generation, newest)) = newer {
        // Ours is not the partition's latest state. If a new owner took the partition over
        // *from ours* (it landed late, and the claim read it), what ours covers is committed:
        // keep our slot and files and stop. Otherwise our slot had been pruned and was written
        // again after a long pause: nobody builds on it, withdraw it (and our files).
        let origin = cp.origin();
        let mut built_on_ours = false;
        for o in &listing {
            if let Entry::Checkpoint { generation: g, .. } = layout::classify(&o.key) {
                if g > cp.generation {
                    built_on_ours |= store
                        .get(&o.key)?
                        .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
                        .and_then(|j| {
                            j.pointer("/checkpoint/claimed_from")
                                .and_then(Json::as_str)
                                .map(|c| c == origin)
                        })
                        .unwrap_or(false);
                }
            }
        }
        if !built_on_ours {
            store.delete(&key)?;
        }
        return Err(CheckpointError::Fenced {
            partition: cp.partition,
            generation,
            location: store.describe(),
            me: cp.writer.clone(),
            other: writer_of(store, &newest)?,
            landed: built_on_ours,
        });
    }
    for o in listing {
        if let Entry::Checkpoint { generation, .. } = layout::classify(&o.key) {
            if generation + 1 < cp.generation {
                store.delete(&o.key)?;
            }
        }
    }
    Ok(())
}

/// The writer recorded in a generation file, or `unknown`.
fn writer_of(store: &dyn Store, key: &str) -> Result<String, CheckpointError> {
    Ok(store
        .get(key)?
        .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
        .and_then(|j| {
            j.pointer("/checkpoint/writer")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into()))
}

/// The newest usable checkpoint of every partition found in the output (for `inspect`), without
/// identity checks. Damaged generations are skipped, not copied aside.
pub fn read_latest(
    store: &dyn Store,
) -> Result<Vec<(PartitionCheckpoint, String)>, CheckpointError> {
    let mut by_partition: std::collections::BTreeMap<i32, Vec<(u64, String)>> = Default::default();
    for o in store.list(&format!("{}/", layout::CHECKPOINT_DIR))? {
        if let Entry::Checkpoint {
            partition,
            generation,
        } = layout::classify(&o.key)
        {
            by_partition
                .entry(partition)
                .or_default()
                .push((generation, o.key));
        }
    }
    let mut out = Vec::new();
    for (_, mut gens) in by_partition {
        gens.sort();
        for (_, key) in gens.iter().rev() {
            let Some(bytes) = store.get(key)? else {
                continue;
            };
            if let Ok(Ok(cp)) = parse(&bytes, store, key) {
                out.push((cp, key.clone()));
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Marks;
    use crate::output::store::MemStore;

    fn cp(generation: u64) -> PartitionCheckpoint {
        PartitionCheckpoint {
            version: CHECKPOINT_VERSION,
            generation,
            topic: "t".into(),
            partition: 3,
            window_ms: 60_000,
            writer: "0000000a".into(),
            resume_offset: 10 * generation as i64,
            next_offset: 10 * generation as i64 + 5,
            max_event_ms: Some(1),
            closed_before: 0,
            staged: Default::default(),
            marks: Marks::default(),
            fenced_writers: Vec::new(),
            claimed_from: None,
            unpublished: Vec::new(),
        }
    }

    #[test]
    fn commits_load_back_and_keep_one_previous_generation() {
        let store = MemStore::new();
        assert_eq!(load(&store, "t", 3, 60_000).unwrap().checkpoint, None);
        for g in 1..=4 {
            commit(&store, &cp(g)).unwrap();
        }
        let loaded = load(&store, "t", 3, 60_000).unwrap();
        assert_eq!(loaded.checkpoint, Some(cp(4)));
        assert_eq!(loaded.newest_generation, 4);
        let keys: Vec<String> = store
            .list("_checkpoint/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            [layout::checkpoint_key(3, 3), layout::checkpoint_key(3, 4)]
        );
    }

    #[test]
    fn a_late_commit_that_a_new_owner_started_from_is_kept() {
        let store = MemStore::new();
        commit(&store, &cp(1)).unwrap();
        // Writer a's generation 2 lands late; b had read it and claimed 3 from it, then moved
        // on to 4 (pruning 2). a's commit of 2 is then re-created here: a stale slot, but 4
        // names it as the origin, so a keeps its slot and files.
        let mine = cp(2);
        let mut claim = cp(3);
        claim.writer = "0000000b".into();
        claim.claimed_from = Some(mine.origin());
        let mut next = claim.clone();
        next.generation = 4;
        commit(&store, &claim).unwrap();
        commit(&store, &next).unwrap();
        let e = commit(&store, &mine).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Fenced { landed: true, .. }),
            "{e}"
        );
        assert!(store.get(&layout::checkpoint_key(3, 2)).unwrap().is_some());
    }

    #[test]
    fn a_retried_commit_that_had_landed_is_not_a_fence() {
        let store = MemStore::new();
        commit(&store, &cp(1)).unwrap();
        // The same commit again: what a conditional put retried after a lost answer sees.
        commit(&store, &cp(1)).expect("our own landed commit");
        assert_eq!(load(&store, "t", 3, 60_000).unwrap().newest_generation, 1);
    }

    #[test]
    fn a_second_writer_of_a_generation_is_fenced() {
        let store = MemStore::new();
        commit(&store, &cp(1)).unwrap();
        let mut other = cp(1);
        other.writer = "0000000b".into();
        let e = commit(&store, &other).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Fenced { generation: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("0000000a"), "{e}");
    }

    #[test]
    fn a_writer_two_generations_behind_is_fenced_too() {
        let store = MemStore::new();
        for g in 1..=4 {
            commit(&store, &cp(g)).unwrap(); // deletes 1 and 2 on the way
        }
        assert_eq!(store.get(&layout::checkpoint_key(3, 2)).unwrap(), None);
        let mut zombie = cp(2);
        zombie.writer = "0000000b".into();
        let e = commit(&store, &zombie).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Fenced {
                    generation: 4,
                    landed: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("0000000a"), "{e}");
        assert_eq!(
            store.get(&layout::checkpoint_key(3, 2)).unwrap(),
            None,
            "the stale generation nobody built on is withdrawn"
        );
        assert_eq!(
            load(&store, "t", 3, 60_000).unwrap().checkpoint,
            Some(cp(4))
        );
    }

    /// A store whose newest generations are pruned by "another writer" committing two newer
    /// ones just as they are first read.
    #[derive(Debug)]
    struct PrunedWhileRead {
        inner: MemStore,
        raced: std::sync::atomic::AtomicBool,
    }

    impl Store for PrunedWhileRead {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn table_root(&self) -> crate::output::store::Result<crate::output::delta::TableRoot> {
            self.inner.table_root()
        }
        fn put(&self, key: &str, bytes: &[u8]) -> crate::output::store::Result<()> {
            self.inner.put(key, bytes)
        }
        fn put_new(&self, key: &str, bytes: &[u8]) -> crate::output::store::Result<bool> {
            self.inner.put_new(key, bytes)
        }
        fn writer(
            &self,
            key: &str,
        ) -> crate::output::store::Result<Box<dyn crate::output::store::ObjectWriter>> {
            self.inner.writer(key)
        }
        fn get(&self, key: &str) -> crate::output::store::Result<Option<bytes::Bytes>> {
            if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                commit(&self.inner, &cp(3)).unwrap();
                commit(&self.inner, &cp(4)).unwrap();
            }
            self.inner.get(key)
        }
        fn list(
            &self,
            prefix: &str,
        ) -> crate::output::store::Result<Vec<crate::output::store::ObjectInfo>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> crate::output::store::Result<()> {
            self.inner.delete(key)
        }
    }

    #[test]
    fn generations_pruned_while_being_read_are_listed_again() {
        let store = PrunedWhileRead {
            inner: MemStore::new(),
            raced: Default::default(),
        };
        commit(&store.inner, &cp(1)).unwrap();
        commit(&store.inner, &cp(2)).unwrap();
        let loaded = load(&store, "t", 3, 60_000).unwrap();
        assert_eq!(loaded.checkpoint, Some(cp(4)));
        assert_eq!(loaded.newest_generation, 4);
        assert!(loaded.fell_back.is_empty(), "{:?}", loaded.fell_back);
    }

    #[test]
    fn a_damaged_newest_generation_falls_back_and_is_kept_aside() {
        let store = MemStore::new();
        commit(&store, &cp(1)).unwrap();
        commit(&store, &cp(2)).unwrap();
        let key = layout::checkpoint_key(3, 2);
        let mut bytes = store.get(&key).unwrap().unwrap().to_vec();
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"resume_offset\": 20", "\"resume_offset\": 21");
        bytes = text.into_bytes();
        store.put(&key, &bytes).unwrap();
        let loaded = load(&store, "t", 3, 60_000).unwrap();
        assert_eq!(loaded.checkpoint, Some(cp(1)));
        assert_eq!(loaded.newest_generation, 2);
        assert!(
            loaded.fell_back[0].contains("checksum"),
            "{:?}",
            loaded.fell_back
        );
        assert!(store.get(&format!("{key}.damaged")).unwrap().is_some());
        store.delete(&format!("{key}.damaged")).unwrap();
        // Both damaged: refused, naming both, and nothing written.
        store.put(&layout::checkpoint_key(3, 1), b"{").unwrap();
        let before = store.snapshot();
        let e = load(&store, "t", 3, 60_000).unwrap_err().to_string();
        assert_eq!(store.snapshot(), before);
        assert!(
            e.contains("gen-00000000000000000001") && e.contains("gen-00000000000000000002"),
            "{e}"
        );
    }

    #[test]
    fn another_topic_window_or_version_is_refused() {
        let store = MemStore::new();
        commit(&store, &cp(1)).unwrap();
        let e = load(&store, "other", 3, 60_000).unwrap_err().to_string();
        assert!(e.contains("topic") && e.contains("other"), "{e}");
        let e = load(&store, "t", 3, 30_000).unwrap_err().to_string();
        assert!(e.contains("window width"), "{e}");
        let key = layout::checkpoint_key(3, 2);
        let text = String::from_utf8(
            store
                .get(&layout::checkpoint_key(3, 1))
                .unwrap()
                .unwrap()
                .to_vec(),
        )
        .unwrap()
        .replace("\"version\": 2", "\"version\": 9");
        store.put(&key, text.as_bytes()).unwrap();
        let e = load(&store, "t", 3, 60_000).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
