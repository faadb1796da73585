//! Many instances of the coordinator, each carrying out its actions as the driver does, over the
//! real claim (`prepare`, then `PartitionPipeline::claim`), pipelines, checkpoints and marker
//! sweep on one `MemStore`, with a fake group: generations that drain and hand partitions over,
//! members cut off from the group that go on writing (their commits are fenced), claims still in
//! flight when a generation is revoked, takeover checks, sweeps from every instance, and
//! partitions whose drain hangs until the drain deadline fails the run. Time is a clock the
//! test advances. At the end every offset is in exactly one file and every
//! window's marker lists exactly its files; after every sweep, every marker is supported by
//! every partition's committed checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::super::{Action, Coordinator, EndRequest, Finish, Input};
use super::config;
use crate::checkpoint::{self, CheckpointError};
use crate::consume::core::Now;
use crate::consume::decode::{DecodeConfig, Decoder, RawRecord};
use crate::consume::markers;
use crate::consume::pipeline::tests::{
    config as pipeline_config, read_output, schema, table, table_adds, BASE_WALL, TOPIC, WIDTH,
};
use crate::consume::pipeline::{prepare, PartitionPipeline, PipelineError, Progress};
use crate::enrich::{OnMiss, ReferenceTable};
use crate::output::delta::{DeltaConfig, DeltaTable};
use crate::output::layout::{self, Destination, Entry, SuccessScope, WriterId};
use crate::output::store::{MemStore, Store as _};
use crate::output::table::TableCommitter;
use crate::output::OutputSchema;

const PARTITIONS: i32 = 3;
const RECORDS: usize = 24;

/// One member of the group and the run it is in.
struct Member {
    coordinator: Coordinator,
    writer: WriterId,
    claim: Option<i32>,
    claimed: BTreeMap<i32, PartitionPipeline>,
    running: BTreeMap<i32, PartitionPipeline>,
    sweep: Option<bool>,
    checking: Vec<i32>,
    finish: Option<Finish>,
    /// This member's process's own handle on the one Delta table.
    delta: Arc<dyn TableCommitter>,
}

impl Member {
    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            assert!(self.finish.is_none(), "an action after the finish: {a:?}");
            match a {
                Action::Claim { partition, .. } => self.claim = Some(partition),
                Action::Start { partition } => {
                    let p = self
                        .claimed
                        .remove(&partition)
                        .expect("started once claimed");
                    self.running.insert(partition, p);
                }
                Action::Dropped { partition, .. } => {
                    self.running.remove(&partition);
                    self.claimed.remove(&partition);
                }
                Action::Sweep { reconcile } => self.sweep = Some(reconcile),
                Action::CheckTakeover { partition } => self.checking.push(partition),
                Action::Finish(f) => self.finish = Some(f),
                Action::ShowOffset { .. } | Action::Stop | Action::ReportFailure { .. } => {}
            }
        }
    }
}

struct World {
    store: MemStore,
    decoder: Decoder,
    table: ReferenceTable,
    output: OutputSchema,
    /// Per partition: (event time, JSON value) of each offset.
    topic: Vec<Vec<(i64, Vec<u8>)>>,
    now: Duration,
    members: Vec<Option<Member>>,
    /// Cut off from the group: they hear nothing, but their tasks go on.
    cut_off: BTreeSet<usize>,
    /// Their partitions never finish draining (a write hangs): the drain deadline ends them.
    stalled: BTreeSet<usize>,
    writers: u32,
    sweeps: usize,
}

fn all() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

impl World {
    fn new(members: usize) -> World {
        let schema = schema();
        let table = table(true);
        let output = OutputSchema::new(&schema, &table.columns).unwrap();
        let decoder = Decoder::new(
            DecodeConfig {
                schema,
                event_time_field: None,
                join_field: 0,
                on_miss: OnMiss::DeadLetter,
                max_future_ms: None,
                window_ms: WIDTH,
            },
            &output,
            "test table",
        );
        let topic = (0..PARTITIONS)
            .map(|p| {
                (0..RECORDS)
                    .map(|i| {
                        let t = BASE_WALL - 3_000 + i as i64 * 40 + i64::from(p) * 7;
                        (t, format!("{{\"k\":\"x\",\"n\":{i}}}").into_bytes())
                    })
                    .collect()
            })
            .collect();
        World {
            store: MemStore::new(),
            decoder,
            table,
            output,
            topic,
            now: Duration::ZERO,
            members: (0..members).map(|_| None).collect(),
            cut_off: BTreeSet::new(),
            stalled: BTreeSet::new(),
            writers: 0,
            sweeps: 0,
        }
    }

    fn core_now(&self) -> Now {
        let ms = self.now.as_millis() as i64;
        Now {
            wall_ms: BASE_WALL + ms,
            mono_ms: ms,
        }
    }

    fn feed(&mut self, slot: usize, input: Input) {
        let now = self.now;
        if let Some(m) = self.members[slot].as_mut() {
            if m.finish.is_none() {
                let actions = m.coordinator.handle(input, now);
                m.apply(actions);
            }
        }
    }

    /// A new generation: `assignment` maps members to their partitions.
    fn generation(&mut self, assignment: BTreeMap<usize, BTreeSet<i32>>) {
        for (slot, partitions) in assignment {
            self.writers += 1;
            let (coordinator, first) = Coordinator::new(config(true), &partitions, self.now);
            let mut m = Member {
                coordinator,
                writer: WriterId(self.writers),
                claim: None,
                claimed: BTreeMap::new(),
                running: BTreeMap::new(),
                sweep: None,
                checking: Vec::new(),
                finish: None,
                delta: Arc::new(
                    DeltaTable::open_or_create(
                        self.store.table_root().unwrap(),
                        self.output.arrow(),
                        DeltaConfig {
                            checkpoint_every: 4,
                            retry_timeout: Duration::ZERO,
                            log_retention: None,
                        },
                    )
                    .unwrap(),
                ),
            };
            m.apply(first);
            self.members[slot] = Some(m);
        }
    }

    fn land_claim(&mut self, slot: usize) {
        let now = self.core_now();
        let Some(m) = self.members[slot].as_mut() else {
            return;
        };
        let Some(p) = m.claim.take() else { return };
        let rec = prepare(&self.store, TOPIC, WIDTH, &BTreeSet::from([p]))
            .unwrap()
            .remove(&p)
            .unwrap();
        let mut config = pipeline_config(1 << 30, false);
        config.table = Some(Arc::clone(&m.delta));
        let claimed = PartitionPipeline::claim(
            Arc::new(self.store.clone()),
            &config,
            &self.output,
            p,
            m.writer,
            &rec,
            0,
            now,
        );
        let input = match claimed {
            Ok(pipeline) => {
                let next_offset = pipeline.core().next_offset();
                m.claimed.insert(p, pipeline);
                Input::Claimed {
                    partition: p,
                    next_offset,
                }
            }
            Err(PipelineError::Checkpoint(CheckpointError::Fenced { .. })) => {
                Input::ClaimRefused { partition: p }
            }
            Err(e) => panic!("claim of {p}: {e}"),
        };
        self.feed(slot, input);
    }

    /// The process task of `p`: `n` more records, then a commit when a window closed.
    fn process(&mut self, slot: usize, p: i32, n: usize, commit: bool) {
        let now = self.core_now();
        let Some(m) = self.members[slot].as_mut() else {
            return;
        };
        let Some(pipeline) = m.running.get_mut(&p) else {
            return;
        };
        let from = pipeline.core().next_offset() as usize;
        let to = (from + n).min(RECORDS);
        let mut closed = false;
        if from < to {
            let records = self.topic[p as usize][from..to]
                .iter()
                .enumerate()
                .map(|(i, (t, v))| RawRecord {
                    offset: (from + i) as i64,
                    timestamp_ms: *t,
                    key: None,
                    value: Some(v),
                    refused: None,
                });
            let batch = self
                .decoder
                .decode(p, records, &self.table, now.wall_ms)
                .unwrap();
            let progress = pipeline.process(&batch, now).unwrap();
            pipeline.skip_to(to as i64).unwrap();
            closed = progress.tally.windows_closed > 0;
        }
        if commit || closed {
            self.commit(slot, p);
        }
    }

    fn commit(&mut self, slot: usize, p: i32) {
        let Some(m) = self.members[slot].as_mut() else {
            return;
        };
        let Some(pipeline) = m.running.get_mut(&p) else {
            return;
        };
        let input = match pipeline.checkpoint(&mut Progress::default()) {
            Ok(c) => Input::Committed {
                partition: p,
                next_offset: pipeline.core().next_offset(),
                closed_windows: !c.closed.is_empty(),
            },
            Err(e) => {
                m.running.remove(&p);
                let fenced = matches!(e, PipelineError::Checkpoint(CheckpointError::Fenced { .. }));
                Input::Failed {
                    partition: p,
                    fenced,
                }
            }
        };
        self.feed(slot, input);
    }

    fn sweep(&mut self, slot: usize) {
        let Some(reconcile) = self.members[slot].as_mut().and_then(|m| m.sweep.take()) else {
            return;
        };
        let found = markers::sweep(
            &self.store,
            TOPIC,
            WIDTH,
            &SuccessScope::AllPartitions,
            &all(),
            reconcile,
        )
        .unwrap();
        markers::apply(&self.store, found).unwrap();
        self.sweeps += 1;
        self.check_markers_supported();
        self.feed(slot, Input::SweepDone);
    }

    fn answer_takeover(&mut self, slot: usize) {
        let Some(m) = self.members[slot].as_mut() else {
            return;
        };
        let Some(p) = m.checking.pop() else { return };
        let newest = checkpoint::load(&self.store, TOPIC, p, WIDTH)
            .unwrap()
            .checkpoint;
        let taken_over = newest.is_some_and(|cp| cp.writer != m.writer.to_string());
        self.feed(
            slot,
            Input::TakeoverChecked {
                partition: p,
                taken_over,
            },
        );
    }

    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        for slot in 0..self.members.len() {
            let due = self.members[slot]
                .as_ref()
                .and_then(|m| m.coordinator.deadline())
                .is_some_and(|d| d <= self.now);
            if due {
                self.feed(slot, Input::Tick);
            }
        }
    }

    /// A member answers everything it was asked, and its partitions finish.
    fn drain(&mut self, slot: usize, close_windows: bool) {
        for _ in 0..100 {
            let Some(m) = self.members[slot].as_mut() else {
                return;
            };
            if m.finish.is_some() {
                break;
            }
            let stalled = self.stalled.contains(&slot);
            if m.claim.is_some() {
                self.land_claim(slot);
            } else if let Some(&p) = m.running.keys().next().filter(|_| !stalled) {
                let mut pipeline = m.running.remove(&p).unwrap();
                let input = match pipeline.finish(close_windows, &mut Progress::default()) {
                    Ok(_) => Input::Done { partition: p },
                    Err(PipelineError::Checkpoint(CheckpointError::Fenced { .. })) => {
                        Input::Failed {
                            partition: p,
                            fenced: true,
                        }
                    }
                    Err(e) => panic!("finish of {p}: {e}"),
                };
                self.feed(slot, input);
            } else if m.sweep.is_some() {
                self.sweep(slot);
            } else if !m.checking.is_empty() {
                self.answer_takeover(slot);
            } else {
                let d = m
                    .coordinator
                    .deadline()
                    .expect("a run not over waits for time");
                self.now = self.now.max(d);
                self.feed(slot, Input::Tick);
            }
        }
        let m = self.members[slot].as_mut().unwrap();
        let finish = m.finish.clone().expect("the run ended");
        assert!(!finish.dropped);
        if !m.running.is_empty() {
            // A hung partition: the run fails at the drain deadline; the process exits and
            // what it did not commit is the next owner's to recover.
            assert_eq!(finish.failure, Some(super::super::Failure::DrainTimeout));
            self.stalled.remove(&slot);
        }
        if finish.sweep {
            m.sweep = Some(false);
            // The driver's final sweep, after the tasks.
            self.sweep(slot);
        }
        self.members[slot] = None;
    }

    /// The group revokes the generation: members it hears from drain, cut-off members keep
    /// their runs; the partitions go to the members it hears from, round robin from `shift`.
    fn rebalance(&mut self, shift: usize) {
        let heard: Vec<usize> = (0..self.members.len())
            .filter(|s| !self.cut_off.contains(s))
            .collect();
        for &slot in &heard {
            self.feed(slot, Input::End(EndRequest::Drain));
            self.drain(slot, false);
        }
        let mut assignment: BTreeMap<usize, BTreeSet<i32>> = BTreeMap::new();
        for p in 0..PARTITIONS {
            let slot = heard[(p as usize + shift) % heard.len()];
            assignment.entry(slot).or_default().insert(p);
        }
        self.generation(assignment);
    }

    /// A cut-off member hears again: its generation was lost (dropped at once).
    fn heal(&mut self, slot: usize) {
        if self.cut_off.remove(&slot) {
            self.feed(slot, Input::End(EndRequest::Drop));
            if let Some(m) = &self.members[slot] {
                // Dropped now, or over already: every partition was taken over while cut off.
                assert!(m
                    .finish
                    .as_ref()
                    .is_some_and(|f| f.dropped || f.await_revocation));
            }
            self.members[slot] = None;
        }
    }

    /// Every marker in the output is for a window every partition's committed checkpoint has
    /// closed.
    fn check_markers_supported(&self) {
        let closed: Vec<i64> = (0..PARTITIONS)
            .map(|p| {
                checkpoint::load(&self.store, TOPIC, p, WIDTH)
                    .unwrap()
                    .checkpoint
                    .map_or(i64::MIN, |cp| cp.closed_before)
            })
            .collect();
        for key in self.store.snapshot().keys() {
            if let Entry::Success { window, .. } = layout::classify(key) {
                let end = crate::window::window_end(window, WIDTH);
                assert!(
                    closed.iter().all(|c| *c >= end),
                    "marker {key} while partitions closed only {closed:?}"
                );
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Claim(usize),
    Process(usize, i32, usize, bool),
    Sweep(usize),
    Takeover(usize),
    Tick(u64),
    Rebalance(usize),
    CutOff(usize),
    Heal(usize),
    Stall(usize),
}

fn op(members: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..members).prop_map(Op::Claim),
        8 => (0..members, 0..PARTITIONS, 1..6usize, any::<bool>())
            .prop_map(|(s, p, n, c)| Op::Process(s, p, n, c)),
        2 => (0..members).prop_map(Op::Sweep),
        1 => (0..members).prop_map(Op::Takeover),
        2 => (1..3_000u64).prop_map(Op::Tick),
        1 => (0..members).prop_map(Op::Rebalance),
        1 => (0..members).prop_map(Op::CutOff),
        1 => (0..members).prop_map(Op::Heal),
        1 => (0..members).prop_map(Op::Stall),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn instances_of_the_coordinator_write_every_offset_once_with_true_markers(
        ops in proptest::collection::vec(op(3), 0..80),
    ) {
        let mut w = World::new(3);
        w.generation(BTreeMap::from([(0, all())]));
        for op in ops {
            match op {
                Op::Claim(s) => w.land_claim(s),
                Op::Process(s, p, n, c) => w.process(s, p, n, c),
                Op::Sweep(s) => w.sweep(s),
                Op::Takeover(s) => w.answer_takeover(s),
                Op::Tick(ms) => w.tick(ms),
                Op::Rebalance(shift) => w.rebalance(shift),
                Op::CutOff(s) => {
                    // Never every member: the group needs one it hears from.
                    if w.cut_off.len() + 1 < w.members.len() {
                        w.cut_off.insert(s);
                    }
                }
                Op::Heal(s) => w.heal(s),
                Op::Stall(s) => {
                    w.stalled.insert(s);
                }
            }
        }
        // The end: cut-off members hear they lost their partitions, then one member reads
        // every partition to its end, closes every window and sweeps.
        for s in 0..w.members.len() {
            w.heal(s);
        }
        for s in 0..w.members.len() {
            if w.members[s].is_some() {
                w.feed(s, Input::End(EndRequest::Drain));
                w.drain(s, false);
            }
        }
        // The last reader is healthy.
        w.stalled.clear();
        w.generation(BTreeMap::from([(0, all())]));
        for _ in 0..PARTITIONS {
            w.land_claim(0);
        }
        for p in 0..PARTITIONS {
            w.process(0, p, RECORDS, false);
        }
        w.feed(0, Input::End(EndRequest::Drain));
        w.drain(0, true);

        // Every offset in exactly one window file.
        let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();
        let mut files: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for (destination, key, offsets, _) in read_output(&w.store) {
            let Entry::Data { part, .. } = layout::classify(&key) else { unreachable!() };
            let Destination::Window(window) = destination else {
                panic!("only window files expected: {key}");
            };
            files.entry(window).or_default().insert(part.to_string());
            for o in offsets {
                let previous = seen.insert((part.partition, o), key.clone());
                prop_assert!(previous.is_none(), "{}@{} in {:?} and {}", part.partition, o, previous, key);
            }
        }
        prop_assert_eq!(seen.len(), PARTITIONS as usize * RECORDS, "records lost");
        // The table every member published to holds exactly the window files, each once.
        let adds = table_adds(&w.store);
        prop_assert!(adds.values().all(|&n| n == 1), "a file added twice: {:?}", adds);
        let in_table: BTreeSet<String> = adds.into_keys().collect();
        let window_files: BTreeSet<String> = seen.values().cloned().collect();
        prop_assert_eq!(in_table, window_files, "the table's files");
        // Every window's marker lists exactly its files.
        let snapshot = w.store.snapshot();
        for (window, names) in &files {
            let key = layout::success_key(*window, &SuccessScope::AllPartitions);
            let body = snapshot.get(&key);
            prop_assert!(body.is_some(), "no marker for window {}", window);
            let manifest: serde_json::Value = serde_json::from_slice(body.unwrap()).unwrap();
            let listed: BTreeSet<String> = manifest["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect();
            prop_assert_eq!(&listed, names, "window {}", window);
        }
    }
}
