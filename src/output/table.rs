//! The table seam: the sink writes files, a [`TableCommitter`] decides when they become
//! visible to table readers, and recovery asks it what it already holds. The one committer is
//! the Delta Lake table (`output::delta`); `--table none` runs without one (a file is visible
//! to directory readers as soon as it lands, as before).
//!
//! # Why a closed window's file enters the table exactly once
//! A partition's checkpoints form one chain of generations (`checkpoint::store`: each is
//! created if absent, so two writers never commit the same generation). A window's file is
//! *committed* by the first generation that covers it, and every later generation carries it in
//! `unpublished` until the table is known to hold it. The table records, per partition, an
//! application version ([`app_id`]): the highest generation published. Publishing generation
//! `G` with the files `U` reads the current application version `v` (none: `-1`) and, in one
//! table commit that also sets the version to `G`, adds exactly the files of `U` committed after
//! `v` ([`decide`]); when `v >= G` it does nothing. The table serializes commits (a commit is
//! created if absent, and a lost race is retried on the new snapshot), so:
//! - *never twice*: once a commit with version `G1` added a file of generation `g <= G1`, the
//!   version is `>= g` for good (it only grows), and every later publish skips the file;
//! - *never lost*: a file of generation `g` stays in `unpublished` along the chain until some
//!   publish moved the version to at least `g`; the first such publish read `v < g` and carried
//!   the file (it was in its chain), so it added it;
//! - *zombies*: a writer fenced after committing `g` may still publish `g` late. If the new owner
//!   already published (version `>= g`) the late publish adds nothing; if not, it adds the
//!   files of `g`, which are committed files, and the new owner's publish then skips them.
//!
//! A file a checkpoint never committed is never published: recovery deletes it
//! (`checkpoint::recovery`), and a fenced writer withdraws it.

use std::fmt;

use crate::checkpoint::TableFile;

/// The table's application id of one topic partition: its `txn` action's `appId`, as
/// kafka-delta-ingest names them.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// What publishing a generation has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The table's version for the partition is already at or past the generation.
    Skip,
    /// Commit these files with the version set to the generation. None: the table already
    /// holds every file, and a commit would only move the version (not needed; see the docs).
    Commit(Vec<&'a TableFile>),
}

/// The publishing rule of the module docs: `current` is the partition's application version in
/// the snapshot the commit is built on.
pub fn decide(files: &[TableFile], current: Option<i64>, generation: u64) -> Decision<'_> {
    let current = current.unwrap_or(-1);
    if i64::try_from(generation).is_ok_and(|g| g <= current) {
        return Decision::Skip;
    }
    Decision::Commit(
        files
            .iter()
            .filter(|f| i64::try_from(f.generation).map_or(true, |g| g > current))
            .collect(),
    )
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A table commit landed at `version`, adding `files` files.
    Committed { version: u64, files: usize },
    /// The table already held the generation (its version for the partition is `at`).
    Already { at: i64 },
}

/// Errors of the table: what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{action} the Delta table at {location} failed: {detail}; {advice}")]
    Delta {
        action: &'static str,
        location: String,
        detail: String,
        advice: &'static str,
    },
    #[error(
        "the Delta table at {location} has another schema than this run writes ({detail}); \
         write to a new --output, or run with --table none to write plain Parquet files only"
    )]
    Schema { location: String, detail: String },
}

/// Makes committed files visible to table readers (see the module docs).
pub trait TableCommitter: Send + Sync + fmt::Debug {
    /// Where the table is, for messages.
    fn describe(&self) -> String;
    /// Publishes generation `generation` of `topic`/`partition`, whose checkpoint carries
    /// `files` as unpublished. Blocking.
    fn publish(
        &self,
        topic: &str,
        partition: i32,
        generation: u64,
        files: &[TableFile],
    ) -> Result<Published, TableError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::FileRef;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn file(generation: u64, id: u64) -> TableFile {
        TableFile {
            generation,
            window: 0,
            file: FileRef {
                name: format!("f{id}"),
                first: 0,
                last: 0,
                rows: 1,
                bytes: 1,
            },
        }
    }

    #[test]
    fn a_publish_adds_only_what_came_after_the_tables_version() {
        let files = [file(3, 1), file(4, 2), file(5, 3)];
        assert_eq!(decide(&files, Some(5), 5), Decision::Skip);
        assert_eq!(decide(&files, Some(7), 5), Decision::Skip);
        assert_eq!(
            decide(&files, Some(3), 5),
            Decision::Commit(vec![&files[1], &files[2]])
        );
        assert_eq!(
            decide(&files, None, 5),
            Decision::Commit(files.iter().collect())
        );
        assert_eq!(decide(&[], Some(2), 5), Decision::Commit(vec![]));
    }

    /// A model of the module docs' argument: one chain of generations of a partition, each
    /// closing some files; any number of writers publish any generation they committed, in
    /// any order, each commit serialized by the table. Every file committed by a published
    /// generation is added exactly once, and none twice.
    fn publishes() -> impl Strategy<Value = (Vec<u8>, Vec<(u64, u64)>)> {
        // Files closed per generation 1..=n, then publishes: (generation, "knows up to"),
        // where a writer's unpublished list holds the files of generations above what it
        // had seen published when it committed.
        (1usize..12)
            .prop_flat_map(|n| {
                (
                    proptest::collection::vec(0u8..3, n),
                    proptest::collection::vec((1..=n as u64, 0..=n as u64), 0..20),
                )
            })
            .boxed()
    }

    proptest! {
        #[test]
        fn every_committed_file_enters_the_table_once((closed, order) in publishes()) {
            let mut all = Vec::new();
            for (g, &count) in closed.iter().enumerate() {
                for _ in 0..count {
                    let id = all.len() as u64;
                    all.push(file(g as u64 + 1, id));
                }
            }
            let mut version: Option<i64> = None;
            let mut added: BTreeMap<String, u32> = BTreeMap::new();
            let mut highest_published = 0;
            for (generation, seen) in order {
                // The writer of `generation` carries every file of its chain above what it saw
                // published (never above what was really published: it saw it happen).
                let seen = seen.min(version.map_or(0, |v| v as u64));
                let unpublished: Vec<TableFile> = all
                    .iter()
                    .filter(|f| f.generation > seen && f.generation <= generation)
                    .cloned()
                    .collect();
                if let Decision::Commit(files) = decide(&unpublished, version, generation) {
                    for f in files {
                        *added.entry(f.file.name.clone()).or_default() += 1;
                    }
                    version = Some(generation as i64);
                    highest_published = highest_published.max(generation);
                }
            }
            prop_assert!(added.values().all(|&n| n == 1), "a file added twice: {added:?}");
            for f in &all {
                let expected = u32::from(f.generation <= highest_published);
                prop_assert_eq!(added.get(&f.file.name).copied().unwrap_or(0), expected,
                    "file {:?}", f);
            }
        }
    }
}
