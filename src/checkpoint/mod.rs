//! Exactly-once bookkeeping of the consumer, one partition at a time: what a checkpoint holds
//! ([`PartitionCheckpoint`], [`marks`]), how generations are committed and loaded
//! ([`store`]), and how an output is brought back to what its checkpoints committed before
//! anything is fetched ([`recovery`]). Why this gives exactly once is argued in
//! `consume::core`'s module docs; this module keeps the records that argument relies on.
//!
//! Every partition has its own checkpoint, so a partition's state can move between instances
//! (consumer groups) and instances sharing one output never write the same file. Generations are
//! immutable files created with an atomic create-if-absent (`Store::put_new`): of two writers of
//! one partition only one can commit a given generation, the other is fenced.

pub mod marks;
pub mod recovery;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use marks::Marks;
pub use store::{commit, load, CheckpointError, Loaded};

/// Checkpoint format written by this version (layout 1 wrote version 1).
pub const CHECKPOINT_VERSION: u32 = 2;

/// A durable file a checkpoint refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The file name (`output::layout::PartName`); the directory follows from its destination.
    pub name: String,
    pub first: i64,
    pub last: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// A closed window's data file that a checkpoint committed and the table (`output::table`) may
/// not hold yet: `generation` is the checkpoint generation that first committed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    pub generation: u64,
    /// The window's start (UTC ms): the file lives in its directory.
    pub window: i64,
    pub file: FileRef,
}

/// Everything needed to resume one partition exactly once. See `consume::core`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionCheckpoint {
    pub version: u32,
    /// Incremented by every commit; the file name carries it too.
    pub generation: u64,
    pub topic: String,
    pub partition: i32,
    pub window_ms: i64,
    /// The writer id (`output::layout::WriterId`) of the process that committed it.
    pub writer: String,
    /// Fetch from here on restart: the lowest offset held only in memory at the commit.
    pub resume_offset: i64,
    /// The next offset not yet routed at the commit (`>= resume_offset`); up to it, a restart
    /// replays, and no window closes before the replay reached it.
    pub next_offset: i64,
    /// Maximum event time seen (the watermark before lateness).
    pub max_event_ms: Option<i64>,
    /// Every window whose end is `<=` this is closed for this partition.
    pub closed_before: i64,
    /// Open windows' staged row groups, by window start, in offset order.
    pub staged: BTreeMap<i64, Vec<FileRef>>,
    pub marks: Marks,
    /// Writers this partition was taken over from (the writer of each checkpoint a new run
    /// started from; the last [`FENCED_WRITERS_KEPT`]). Committed files never overlap in
    /// offsets, so a table or late file of one of them that overlaps another writer's file was written after
    /// it lost the partition (a zombie's write landing late) and is not committed
    /// (`recovery::plan`: superseded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_writers: Vec<String>,
    /// `<writer>@<generation>` of the checkpoint this writer's run started from (its claim),
    /// carried by every generation it commits: a commit that landed late can tell whether a
    /// new owner started from it (`store::commit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_from: Option<String>,
    /// Closed windows' files committed here or by an earlier generation whose table commit is
    /// not known to have landed, in commit order (`output::table`): whoever runs the partition
    /// next publishes them before anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<TableFile>,
}

impl PartitionCheckpoint {
    /// The `claimed_from` naming this checkpoint.
    pub fn origin(&self) -> String {
        format!("{}@{}", self.writer, self.generation)
    }
}

/// How many earlier writers a checkpoint remembers (see `fenced_writers`).
pub const FENCED_WRITERS_KEPT: usize = 16;

impl PartitionCheckpoint {
    /// Whether the window starting at `start` is closed per this checkpoint.
    pub fn is_closed(&self, start: i64) -> bool {
        crate::window::window_end(start, self.window_ms) <= self.closed_before
    }

    /// FNV-1a (64-bit) of the canonical JSON: detects torn or edited files (not tampering).
    fn checksum(&self) -> String {
        let body = serde_json::to_vec(self).expect("a checkpoint always serializes");
        const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let hash = body
            .iter()
            .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
        format!("fnv1a64:{hash:016x}")
    }
}

/// The file format: the checkpoint and a checksum over its canonical JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    checksum: String,
    checkpoint: PartitionCheckpoint,
}
