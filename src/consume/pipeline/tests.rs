//! The exactly-once property test of the real processing code: `PartitionPipeline` (core,
//! sink, checkpoint store, recovery) over a `MemStore` that can fail any call. A random stream
//! (disorder, late records, garbage, records whose route changes between runs because the
//! enrichment table or the wall clock changed) is consumed through random steps: fetches of
//! random sizes, ticks, checkpoints, memory pressure, crashes, and crashes in the middle of any
//! store call. At the end every offset must be in exactly one file, in the right place.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;

use super::*;
use crate::consume::core::{CoreConfig, LatePolicy, Now};
use crate::consume::decode::{DecodeConfig, Decoder, RawRecord};
use crate::enrich::{OnMiss, ReferenceTable};
use crate::output::layout::{self, Entry};
use crate::output::store::MemStore;
use crate::schema::{FieldType, Schema, Value};

pub(crate) const WIDTH: i64 = 100;
pub(crate) const TOPIC: &str = "t";
pub(crate) const BASE_WALL: i64 = 1_000_000;

/// What a record of the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A good row (its key is always in the table).
    Good,
    /// Not JSON: always a dead letter.
    Garbage,
    /// Its key is in the enrichment table only in even-numbered runs (dead letter otherwise).
    Flaky,
    /// Dated `FUTURE` ahead: refused while the wall clock is behind it, accepted later.
    Future,
    /// A transaction marker or a record of an aborted transaction: a read committed fetch
    /// steps over it (`PartitionCore::skip_to`); it is in no file.
    Skipped,
}

const FUTURE: i64 = 2_000;

#[derive(Debug, Clone)]
struct Rec {
    event_ms: i64,
    kind: Kind,
    value: Vec<u8>,
}

fn stream() -> impl Strategy<Value = Vec<Rec>> {
    proptest::collection::vec((-150..150i64, 0..12u8), 0..60).prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (jitter, k))| {
                let kind = match k {
                    0 => Kind::Garbage,
                    1 => Kind::Flaky,
                    2 => Kind::Future,
                    3 => Kind::Skipped,
                    _ => Kind::Good,
                };
                let event_ms = match kind {
                    Kind::Future => BASE_WALL + FUTURE + i as i64,
                    _ => BASE_WALL - 3_000 + i as i64 * 25 + jitter,
                };
                let key = if kind == Kind::Flaky { "flip" } else { "x" };
                let value = match kind {
                    Kind::Garbage => format!("garbage {i}").into_bytes(),
                    _ => format!("{{\"k\":\"{key}\",\"n\":{i}}}").into_bytes(),
                };
                Rec {
                    event_ms,
                    kind,
                    value,
                }
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Step {
    Fetch(usize),
    /// Time passes (ms), and the instance boundary an idle partition follows, if any.
    Tick(i64, Option<i64>),
    /// A clean stop (open windows staged, committed), then a restart.
    Shutdown,
    Checkpoint,
    Pressure(usize),
    Crash,
    /// Fail the store after this many calls, then fetch, tick or checkpoint.
    CrashInside(i64, u8, usize),
    /// Checkpoint, and crash in the table commit: before it (`false`) or after it landed.
    CrashInPublish(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1..8usize).prop_map(Step::Fetch),
        2 => (1..800i64, proptest::option::of(BASE_WALL - 3_500..BASE_WALL)).prop_map(|(ms, b)| Step::Tick(ms, b)),
        1 => Just(Step::Shutdown),
        2 => Just(Step::Checkpoint),
        1 => (1..8usize).prop_map(Step::Pressure),
        1 => Just(Step::Crash),
        2 => (0..8i64, 0..3u8, 1..8usize).prop_map(|(c, what, n)| Step::CrashInside(c, what, n)),
        1 => any::<bool>().prop_map(Step::CrashInPublish),
    ]
}

pub(crate) fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::from_toml_str(
            "[[fields]]\ncolumn = \"k\"\ntype = \"string\"\n[[fields]]\ncolumn = \"n\"\ntype = \"int\"\nrequired = true\n",
            "test",
        )
        .unwrap(),
    )
}

pub(crate) fn table(with_flip: bool) -> ReferenceTable {
    let mut rows = vec![vec![Value::Str("x".into()), Value::Str("X".into())]];
    if with_flip {
        rows.push(vec![Value::Str("flip".into()), Value::Str("F".into())]);
    }
    ReferenceTable::build(
        "ref_",
        vec![
            ("key".into(), FieldType::String),
            ("name".into(), FieldType::String),
        ],
        rows,
    )
}

/// The real Delta table (over the `MemStore`'s in-memory object store) behind a switch that
/// makes the next publish crash before the table commit or just after it landed.
#[derive(Debug)]
struct FlakyTable {
    inner: crate::output::delta::DeltaTable,
    crash_next: std::sync::Mutex<Option<bool>>,
}

impl FlakyTable {
    fn open(store: &MemStore, schema: &OutputSchema) -> Arc<FlakyTable> {
        let config = crate::output::delta::DeltaConfig {
            checkpoint_every: 3,
            retry_timeout: std::time::Duration::ZERO,
            log_retention: None,
        };
        let inner = crate::output::delta::DeltaTable::open_or_create(
            store.table_root().unwrap(),
            schema.arrow(),
            config,
        )
        .unwrap();
        Arc::new(FlakyTable {
            inner,
            crash_next: Default::default(),
        })
    }
}

impl TableCommitter for FlakyTable {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn publish(
        &self,
        topic: &str,
        partition: i32,
        generation: u64,
        files: &[crate::checkpoint::TableFile],
    ) -> Result<Published, TableError> {
        let crash = |when: &str| TableError::Delta {
            action: "committing to",
            location: "the test table".into(),
            detail: format!("crash {when} the commit"),
            advice: "",
        };
        match self.crash_next.lock().unwrap().take() {
            Some(false) => Err(crash("before")),
            Some(true) => {
                self.inner.publish(topic, partition, generation, files)?;
                Err(crash("after"))
            }
            None => self.inner.publish(topic, partition, generation, files),
        }
    }
}

/// The data files the table's commits add, by path (decoded), counting repeats.
pub(crate) fn table_adds(store: &MemStore) -> BTreeMap<String, usize> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt as _;
    let root = store.table_root().unwrap();
    let log = object_store::path::Path::from("_delta_log");
    let metas: Vec<_> =
        futures::executor::block_on(root.store.list(Some(&log)).try_collect()).unwrap();
    let mut adds = BTreeMap::new();
    for meta in metas {
        if !meta.location.as_ref().ends_with(".json") {
            continue;
        }
        let bytes = futures::executor::block_on(async {
            root.store.get(&meta.location).await.unwrap().bytes().await
        })
        .unwrap();
        for line in std::str::from_utf8(&bytes).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                *adds.entry(path.replace("%3A", ":")).or_default() += 1;
            }
        }
    }
    adds
}

/// One run of the consumer over the stream (until it "crashes").
struct Run<'a> {
    stream: &'a [Rec],
    pipeline: PartitionPipeline,
    /// The run's table, when the test runs with one.
    delta: Option<Arc<FlakyTable>>,
    decoder: Decoder,
    table: ReferenceTable,
    now: Now,
    budget: usize,
}

pub(crate) fn config(budget: usize, idle_advance: bool) -> PipelineConfig {
    PipelineConfig {
        topic: TOPIC.into(),
        core: CoreConfig {
            window_ms: WIDTH,
            allowed_lateness_ms: 60,
            late: LatePolicy::SideOutput,
            idle_timeout_ms: 500,
            idle_advance,
        },
        output: OutputConfig {
            max_file_bytes: 3_000,
            ..OutputConfig::default()
        },
        table: None,
        memory_budget: budget,
    }
}

impl<'a> Run<'a> {
    fn start(
        stream: &'a [Rec],
        store: &MemStore,
        run: u32,
        now: Now,
        idle_advance: bool,
        with_table: bool,
    ) -> Run<'a> {
        store.heal();
        let schema = schema();
        let table = table(run % 2 == 0);
        let output = OutputSchema::new(&schema, &table.columns).unwrap();
        let decoder = Decoder::new(
            DecodeConfig {
                schema,
                event_time_field: None,
                join_field: 0,
                on_miss: OnMiss::DeadLetter,
                max_future_ms: Some(500),
                window_ms: WIDTH,
            },
            &output,
            "test table",
        );
        // Production's recovery path: prepare (plan, delete nothing), then claim and apply.
        let recovered = prepare(store, TOPIC, WIDTH, &BTreeSet::from([0]))
            .unwrap()
            .remove(&0)
            .unwrap();
        let budget = 1 << 30;
        // Each run is a new process: it opens the table afresh.
        let delta = with_table.then(|| FlakyTable::open(store, &output));
        let mut config = config(budget, idle_advance);
        config.table = delta.clone().map(|d| d as Arc<dyn TableCommitter>);
        let pipeline = PartitionPipeline::claim(
            Arc::new(store.clone()),
            &config,
            &output,
            0,
            WriterId(run),
            &recovered,
            0,
            now,
        )
        .unwrap();
        Run {
            stream,
            pipeline,
            delta,
            decoder,
            table,
            now,
            budget,
        }
    }

    fn fetch(&mut self, count: usize) -> Result<(), PipelineError> {
        let from = self.pipeline.core().next_offset() as usize;
        let to = (from + count).min(self.stream.len());
        if from >= to {
            return Ok(());
        }
        // As the consumer's fetch does: the records to decode, then every offset of the fetch
        // stepped over (markers and aborted data are never decoded).
        let records: Vec<RawRecord<'_>> = (from..to)
            .filter(|i| self.stream[*i].kind != Kind::Skipped)
            .map(|i| RawRecord {
                offset: i as i64,
                timestamp_ms: self.stream[i].event_ms,
                key: None,
                value: Some(&self.stream[i].value),
                refused: None,
            })
            .collect();
        self.now.mono_ms += 1;
        if !records.is_empty() {
            let batch = self
                .decoder
                .decode(0, records.into_iter(), &self.table, self.now.wall_ms)
                .unwrap();
            self.pipeline.process(&batch, self.now)?;
        }
        self.pipeline.skip_to(to as i64).map(|_| ())
    }

    fn tick(&mut self, ms: i64, boundary: Option<i64>) -> Result<(), PipelineError> {
        self.now.mono_ms += ms;
        self.now.wall_ms += ms;
        let boundary = boundary.map(|b| crate::window::window_start(b, WIDTH));
        self.pipeline.tick(self.now, boundary).map(|_| ())
    }

    fn shutdown(&mut self) -> Result<(), PipelineError> {
        self.pipeline
            .finish(false, &mut Progress::default())
            .map(|_| ())
    }

    fn checkpoint(&mut self) -> Result<(), PipelineError> {
        self.pipeline
            .checkpoint(&mut Progress::default())
            .map(|_| ())
    }

    fn pressure(&mut self, count: usize) -> Result<(), PipelineError> {
        self.pipeline.set_memory_budget(0);
        let r = self.fetch(count);
        self.pipeline.set_memory_budget(self.budget);
        r
    }
}

/// Every data file in the store: (destination, file name, offsets, window starts of its rows).
pub(crate) fn read_output(store: &MemStore) -> Vec<(Destination, String, Vec<i64>, Vec<i64>)> {
    let mut out = Vec::new();
    for (key, bytes) in store.snapshot() {
        match layout::classify(&key) {
            Entry::Data { destination, part } => {
                let (offsets, windows) = read_parquet(bytes, destination);
                assert_eq!(offsets.first(), Some(&part.first_offset), "{key}");
                assert_eq!(offsets.last(), Some(&part.last_offset), "{key}");
                out.push((destination, key, offsets, windows));
            }
            Entry::Staged { .. } => panic!("staged row group left after a clean finish: {key}"),
            Entry::Temp { .. } => panic!("temporary file left: {key}"),
            _ => {}
        }
    }
    out
}

fn read_parquet(bytes: Bytes, destination: Destination) -> (Vec<i64>, Vec<i64>) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let (mut offsets, mut windows) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.unwrap();
        let o = batch
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        offsets.extend(o.values().iter().copied());
        if destination != Destination::DeadLetter {
            let w = batch
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            assert_eq!(w.null_count(), 0);
            windows.extend(w.values().iter().map(|us| us / 1000));
        }
    }
    (offsets, windows)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn every_offset_is_written_exactly_once_across_crashes(
        stream in stream(),
        steps in proptest::collection::vec(step(), 0..70),
        idle_advance in any::<bool>(),
        with_table in any::<bool>(),
    ) {
        let store = MemStore::new();
        let mut now = Now { wall_ms: BASE_WALL, mono_ms: 0 };
        let mut runs = 0u32;
        let mut run = Run::start(&stream, &store, runs, now, idle_advance, with_table);
        for step in steps {
            let crashed = match step {
                Step::Fetch(n) => run.fetch(n).is_err(),
                Step::Tick(ms, boundary) => run.tick(ms, boundary).is_err(),
                Step::Shutdown => {
                    let _ = run.shutdown();
                    true
                }
                Step::Checkpoint => run.checkpoint().is_err(),
                Step::Pressure(n) => run.pressure(n).is_err(),
                Step::Crash => true,
                Step::CrashInside(calls, what, n) => {
                    store.fail_after(calls);
                    let r = match what {
                        0 => run.fetch(n),
                        1 => run.checkpoint(),
                        _ => run.pressure(n),
                    };
                    // A failed store call is a crash; one that fit in the budget carries on.
                    store.heal();
                    r.is_err()
                }
                Step::CrashInPublish(after) => match run.delta.clone() {
                    Some(delta) => {
                        *delta.crash_next.lock().unwrap() = Some(after);
                        let r = run.checkpoint();
                        // No closed window to publish: the switch was not reached.
                        delta.crash_next.lock().unwrap().take();
                        r.is_err()
                    }
                    None => run.checkpoint().is_err(),
                },
            };
            if crashed {
                now = run.now;
                now.wall_ms += 50;
                runs += 1;
                run = Run::start(&stream, &store, runs, now, idle_advance, with_table);
            }
        }
        // End: read everything, the wall clock far ahead so no record is refused as future.
        now = run.now;
        now.wall_ms += 10 * FUTURE;
        runs += 1;
        let mut run = Run::start(&stream, &store, runs, now, idle_advance, with_table);
        run.fetch(stream.len()).unwrap();
        let mut progress = Progress::default();
        run.pipeline.finish(true, &mut progress).unwrap();

        let files = read_output(&store);
        let mut seen = BTreeMap::<i64, Destination>::new();
        for (destination, key, offsets, windows) in &files {
            for (i, offset) in offsets.iter().enumerate() {
                let previous = seen.insert(*offset, *destination);
                prop_assert!(previous.is_none(), "@{} in {:?} and {} ({})", offset, previous, destination, key);
                let rec = &stream[*offset as usize];
                prop_assert!(rec.kind != Kind::Skipped, "@{} was stepped over, yet in {}", offset, key);
                match destination {
                    Destination::DeadLetter => prop_assert!(rec.kind != Kind::Good, "@{} {:?} dead", offset, rec.kind),
                    Destination::Window(w) | Destination::Late(w) => {
                        prop_assert!(rec.kind != Kind::Garbage);
                        let start = crate::window::window_start(rec.event_ms, WIDTH);
                        prop_assert_eq!(*w, start, "@{} in the window of its event time", offset);
                        prop_assert_eq!(windows[i], start);
                    }
                }
            }
        }
        let missing: Vec<usize> = (0..stream.len())
            .filter(|o| stream[*o].kind != Kind::Skipped && !seen.contains_key(&(*o as i64)))
            .collect();
        prop_assert!(missing.is_empty(), "records lost: {:?} ({} runs)", missing, runs);
        for (offset, rec) in stream.iter().enumerate() {
            if rec.kind == Kind::Garbage {
                prop_assert_eq!(seen[&(offset as i64)], Destination::DeadLetter);
            }
        }
        // Within one file rows are in offset order, and the files of one window (or late window)
        // never overlap. Dead-letter files may: a record kept in memory and lost in a crash can
        // come back as a dead letter below an earlier dead-letter file's last offset.
        let mut ranges: BTreeMap<Destination, Vec<(i64, i64)>> = BTreeMap::new();
        for (destination, _, offsets, _) in &files {
            prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            ranges.entry(*destination).or_default().push((offsets[0], *offsets.last().unwrap()));
        }
        for (destination, mut r) in ranges {
            if destination == Destination::DeadLetter {
                continue;
            }
            r.sort();
            prop_assert!(r.windows(2).all(|w| w[0].1 < w[1].0), "{} files overlap: {:?}", destination, r);
        }
        // The table: every closed window's file, each added once, and nothing else (no late
        // file, no dead letter, no file a checkpoint never committed).
        let adds = table_adds(&store);
        prop_assert!(adds.values().all(|&n| n == 1), "a file added twice: {:?}", adds);
        let window_files: BTreeSet<String> = files
            .iter()
            .filter(|(d, ..)| matches!(d, Destination::Window(_)))
            .map(|(_, key, ..)| key.clone())
            .collect();
        if with_table {
            let in_table: BTreeSet<String> = adds.into_keys().collect();
            prop_assert_eq!(in_table, window_files, "the table's files ({} runs)", runs);
        } else {
            prop_assert!(adds.is_empty());
        }
        // A restart after the clean finish has nothing to clean up and resumes at the end.
        let recovered = prepare(&store, TOPIC, WIDTH, &BTreeSet::from([0])).unwrap().remove(&0).unwrap();
        prop_assert!(recovered.plan.is_clean(), "{:?}", recovered.plan);
        let cp = recovered.checkpoint.unwrap();
        prop_assert_eq!(cp.resume_offset, stream.len() as i64);
        prop_assert!(cp.staged.is_empty());
        let windows: BTreeSet<i64> = seen.values().filter_map(|d| match d { Destination::Window(w) => Some(*w), _ => None }).collect();
        for w in windows {
            prop_assert!(cp.is_closed(w));
        }
    }
}
