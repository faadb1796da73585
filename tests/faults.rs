//! Faults: every test does something bad to a running pipeline and then proves that nothing was
//! lost (and, for the consumer, nothing written twice).
//!
//! | test | what is done | what must hold |
//! |---|---|---|
//! | `sigkilled_consumer_...` | consumer SIGKILLed at random moments (5 mid-stream kills over 100k records, 3 partitions; `CHAOS=1`: 20 kills over 1,000,000) | every (partition, offset) once; the `_late` of an uninterrupted run and of the killed run are both exactly the records late by construction; the Delta readers read exactly the other rows, none twice |
//! | `sigkilled_producer_...` | producer SIGKILLed mid-file, resumed from the first row missing in the topic | every CSV row at least once; duplicates only after the resume point, identical, identified by `_source` |
//! | `interrupted_producer_...` | producer SIGINTed mid-file, rerun with the printed `--resume-from` | every row exactly once |
//! | `broker_crash_...` | PRIVATE broker SIGKILLed for 20 s while two producers and a consumer run | the consumer and the default producer continue by themselves; a producer with `--retry-timeout 5s` stops with a resumable error and its resume loses nothing; every row in the topic, every offset once in the output |
//! | `broker_pause_and_crash_...` | PRIVATE broker frozen (SIGSTOP) 6 s, then SIGKILLed and restarted, while a producer with `--timeout 2s` runs | the producer rides both out; every row in the topic exactly once; every batch carries a producer id, and each (partition, producer id)'s sequence numbers run from 0 without a gap (Kafka's `DumpLogSegments`) |
//! | `mariadb_outage_...` | PRIVATE MariaDB stopped while a consumer runs; a consumer started meanwhile | stale map keeps serving, refresh failures counted, next refresh after the restart succeeds; the new consumer fails after `--mysql-timeout` naming the server |
//! | `disk_full_...` | output on a 1 MiB tmpfs (root) or under RLIMIT_FSIZE | clear error naming the path; committed files readable; after space is freed a restart completes exactly once |
//! | `damaged_checkpoint_...` | a partition's newest checkpoint generation truncated; both generations damaged; the only one empty; the checkpoint directory deleted | falls back to the previous generation (logged, damaged file kept aside); otherwise a clear error and nothing in the output touched |
//! | `retention_below_the_checkpoint_...` | DeleteRecords past the checkpoint | `--on-data-loss fail` errors with the numbers; `earliest` continues and the loss is exactly the deleted range |
//!
//! The PRIVATE instance (`LOCAL_DIR=.local/faults`, Kafka 19092/19093, MariaDB 13306; other ports
//! with `RECLAMACOES_FAULTS_KAFKA_PORT`, `RECLAMACOES_FAULTS_KAFKA_CONTROLLER_PORT`,
//! `RECLAMACOES_FAULTS_MYSQL_PORT`) is started by the tests that need it and stopped again
//! afterwards; the shared services are never stopped.
//! `CHAOS=1` (what `make chaos` sets) makes the long variants run; without it the short ones run.

mod faultkit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use faultkit::common::{
    self, brokers as shared_brokers, consume_args, mysql_url as shared_mysql_url, BOUNDED,
    KILL_TEST_FLAGS,
};
use faultkit::{
    app, duckdb, interrupt, private_brokers, private_mysql_url, read_topic, run_bounded, scalar,
    source_of, wait_bounded, wait_until, walk, Finished, Private,
};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::{Schema, Source, Value};
use rskafka::record::Record;

const HANG_GUARD: Duration = Duration::from_secs(600);

fn chaos() -> bool {
    std::env::var("CHAOS").is_ok_and(|v| v == "1")
}

fn random_topic(prefix: &str) -> String {
    common::random_topic(&format!("faults-{prefix}"))
}

/// A JSON complaint record of the built-in schema; `label` goes into the institution name.
fn record(schema: &Schema, i: u64, cnpj: &str, label: &str, event_ms: i64) -> Record {
    let mut values = vec![Value::Null; schema.fields.len()];
    values[0] = Value::Int(2025);
    values[1] = Value::Int(1 + (i % 4) as i64);
    values[2] = Value::Str("Falhas".into());
    values[3] = Value::Str("Banco/financeira".into());
    values[4] = Value::Str(cnpj.into());
    values[5] = Value::Str(format!("{label} {i}"));
    values[7] = Value::Int(i as i64);
    let mut json = String::new();
    schema.write_json(
        &values,
        Some(&Source {
            file: "faults".into(),
            line: i,
        }),
        &mut json,
    );
    Record {
        key: Some(cnpj.as_bytes().to_vec()),
        value: Some(json.into_bytes()),
        headers: Default::default(),
        timestamp: Utc.timestamp_millis_opt(event_ms).unwrap(),
    }
}

fn base_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

async fn produce_records(brokers: &str, topic: &str, partition: i32, records: Vec<Record>) {
    let kafka = faultkit::connect(brokers).await;
    let h = faultkit::partition(&kafka, topic, partition).await;
    for chunk in records.chunks(2000) {
        h.produce(chunk.to_vec(), Compression::Lz4).await.unwrap();
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let kafka = faultkit::connect(brokers).await;
    kafka.ensure_topic(topic, partitions, 1).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Consumer killed with SIGKILL; nothing in _late that was not late
// ---------------------------------------------------------------------------------------------

/// The stream of one partition, designed so that lateness does not depend on timing:
/// event time walks forward by `span` over the partition with a jitter in [0, 10 s), which is
/// below the allowed lateness (30 s), so an ordinary record can never be late whatever the
/// interleaving of partitions (the watermark trails its own partition's maximum, which is at
/// most 10 s ahead of it, by 30 s). Every 997th record from offset 10,000 on is an hour before
/// the first one: once every partition has spoken, the first windows close and such a record is
/// late whatever the interleaving (a window-relative distance is not enough: partitions were
/// seen to lag each other by more than 11,000 records, several whole fetches). Every 1009th is
/// not JSON.
#[derive(Clone, Copy)]
struct StreamDesign {
    per_partition: u64,
    span_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OnTime,
    Late,
    Dead,
}

impl StreamDesign {
    fn forward(&self, i: u64) -> i64 {
        (i as i128 * self.span_ms as i128 / self.per_partition as i128) as i64
    }

    fn kind(&self, i: u64) -> Kind {
        if i % 1009 == 500 {
            Kind::Dead
        } else if i % 997 == 0 && i >= 10_000 {
            Kind::Late
        } else {
            Kind::OnTime
        }
    }

    fn event_ms(&self, p: i32, i: u64) -> i64 {
        let jitter = ((i * 7919 + p as u64 * 31) % 10_000) as i64;
        match self.kind(i) {
            // An hour before the stream starts: behind every window the consumer has closed
            // since all partitions spoke, whatever the interleaving.
            Kind::Late => base_ms() - 3_600_000 + jitter,
            _ => base_ms() + self.forward(i) + jitter,
        }
    }

    fn records(&self, schema: &Schema, p: i32) -> Vec<Record> {
        (0..self.per_partition)
            .map(|i| {
                let event = self.event_ms(p, i);
                match self.kind(i) {
                    Kind::Dead => common::garbage_record(i, event),
                    _ => record(
                        schema,
                        i,
                        &format!("{:08}", 360305 + (i % 7)),
                        "FALHA",
                        event,
                    ),
                }
            })
            .collect()
    }

    fn expected(&self, partitions: i32, kind: Kind) -> BTreeSet<(i64, i64)> {
        (0..partitions)
            .flat_map(|p| {
                (0..self.per_partition)
                    .filter(move |&i| self.kind(i) == kind)
                    .map(move |i| (p as i64, i as i64))
            })
            .collect()
    }
}

fn late_set(out: &Path) -> BTreeSet<(i64, i64)> {
    duckdb(
        out,
        &format!(
            "SELECT kafka_partition, kafka_offset FROM {}",
            faultkit::output::LATE
        ),
    )
    .into_iter()
    .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
    .collect()
}

/// (rows, distinct (partition, offset)) over the table, staged row groups, _late and
/// _dead_letter.
fn exactly_once_counts(out: &Path) -> (i64, i64) {
    let Some(all) = faultkit::output::all_offsets(out) else {
        return (0, 0);
    };
    let rows = scalar(out, &format!("SELECT count(*) FROM {all}"));
    let distinct = scalar(
        out,
        &format!("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {all}"),
    );
    (rows, distinct)
}

fn describe_difference(
    design: &StreamDesign,
    name: &str,
    got: &BTreeSet<(i64, i64)>,
    expected: &BTreeSet<(i64, i64)>,
) -> String {
    let extra: Vec<_> = got.difference(expected).take(10).collect();
    let missing: Vec<_> = expected.difference(got).take(10).collect();
    let show = |v: &[&(i64, i64)]| {
        v.iter()
            .map(|(p, o)| {
                format!(
                    "p{p}@{o} (event {}, {:?})",
                    design.event_ms(*p as i32, *o as u64) - base_ms(),
                    design.kind(*o as u64)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{name}: {} late rows, {} expected; {} not late by design but in _late [{}]; {} late by design but not in _late [{}]",
        got.len(),
        expected.len(),
        got.difference(expected).count(),
        show(&extra),
        expected.difference(got).count(),
        show(&missing)
    )
}

#[tokio::test]
async fn sigkilled_consumer_writes_exactly_once_and_late_only_what_is_late() {
    let brokers = shared_brokers();
    let mysql = shared_mysql_url();
    let (per_partition, span_min, wanted_kills) = if chaos() {
        (333_334u64, 100i64, 20usize)
    } else {
        (34_000u64, 25i64, 5usize)
    };
    let design = StreamDesign {
        per_partition,
        span_ms: span_min * 60_000,
    };
    let topic = random_topic("sigkill-consumer");
    create_topic(&brokers, &topic, 3).await;
    let schema = Schema::banco_central();
    for p in 0..3 {
        produce_records(&brokers, &topic, p, design.records(&schema, p)).await;
    }
    let total = per_partition * 3;
    let expected_late = design.expected(3, Kind::Late);
    let expected_dead = design.expected(3, Kind::Dead);

    let work = tempfile::tempdir().unwrap();
    let flags = [&BOUNDED[..], &KILL_TEST_FLAGS, &["--window", "1m"]].concat();

    // Reference: the same topic, no kills.
    let reference = work.path().join("reference");
    let started = Instant::now();
    let done = run_bounded(
        app(&brokers, &mysql)
            .args(consume_args(&topic, &reference, &flags))
            .current_dir(work.path()),
        HANG_GUARD,
    );
    let reference_time = started.elapsed();
    assert!(
        done.status.success(),
        "reference run failed\n{}",
        done.both()
    );

    // Killed: SIGKILL at random moments until `wanted_kills` kills hit a run mid-stream, paced
    // by the committed progress (common::kill_mid_stream says how).
    let killed = work.path().join("killed");
    let killed_args = consume_args(&topic, &killed, &flags);
    let (kills, attempts) = common::kill_mid_stream(
        || {
            let mut cmd = app(&brokers, &mysql);
            cmd.args(&killed_args).current_dir(work.path());
            cmd
        },
        || faultkit::committed_offsets(&killed),
        total,
        wanted_kills,
        wanted_kills * 8,
        HANG_GUARD,
    );
    assert!(
        kills >= wanted_kills,
        "only {kills} kills hit a run mid-stream in {attempts} attempts"
    );
    let last = run_bounded(
        app(&brokers, &mysql)
            .args(&killed_args)
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(last.status.success(), "final run failed\n{}", last.both());
    eprintln!(
        "{kills} SIGKILLs in {attempts} attempts survived over {total} records (reference run \
         {reference_time:?})\n{}",
        last.stdout
    );

    for (name, out) in [("reference", &reference), ("killed", &killed)] {
        let (rows, distinct) = exactly_once_counts(out);
        assert_eq!(
            distinct as u64, total,
            "{name}: every (partition, offset) appears"
        );
        assert_eq!(rows as u64, total, "{name}: and appears once");
        let dead: BTreeSet<(i64, i64)> = duckdb(
            out,
            &format!(
                "SELECT kafka_partition, kafka_offset FROM {}",
                faultkit::output::DEAD
            ),
        )
        .into_iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
        .collect();
        assert_eq!(
            dead, expected_dead,
            "{name}: dead letters are the garbage records"
        );
        for file in walk(out) {
            let n = file.file_name().unwrap().to_string_lossy().to_string();
            assert!(!n.ends_with(".tmp"), "{name}: leftover {}", file.display());
        }
    }
    // Lateness is decided per partition, from the partition's own records (src/consume/core.rs),
    // and a restarted partition replays in the state its checkpoint captured: the killed run
    // routes exactly the same records to _late as the uninterrupted one, which are exactly the
    // records late by design.
    let late_reference = late_set(&reference);
    let late_killed = late_set(&killed);
    assert!(
        late_reference == expected_late,
        "{}",
        describe_difference(&design, "reference", &late_reference, &expected_late)
    );
    assert!(
        late_killed == expected_late,
        "{}",
        describe_difference(&design, "killed", &late_killed, &expected_late)
    );
    eprintln!(
        "_late: uninterrupted run = killed run = design ({} records)",
        expected_late.len()
    );
    // The on-time rows are in the window of their own event time.
    let misplaced = scalar(
        &killed,
        &format!(
            "SELECT count(*) FROM {} \
             WHERE strftime(window_start AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') <> regexp_extract(filename, 'window=([^/]+)', 1)",
            faultkit::output::TABLE_FILES
        ),
    );
    assert_eq!(misplaced, 0, "rows sit in the directory of their window");
    // The Delta table of the killed run, as deltalake, polars and DuckDB read it: every row of
    // the closed windows (neither late rows nor dead letters), none twice.
    let in_table = total - (expected_late.len() + expected_dead.len()) as u64;
    common::delta::assert_rows(&killed, in_table, &format!("{kills} kills"));
    faultkit::delete_topic(&brokers, &topic).await;
}

// ---------------------------------------------------------------------------------------------
// Producer killed mid-file
// ---------------------------------------------------------------------------------------------

/// Writes two CSV files of `rows` rows each under `dir/input`; returns the paths in input order.
fn two_csv_files(dir: &Path, rows: usize) -> Vec<PathBuf> {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let a = input.join("a.csv");
    let b = input.join("b.csv");
    faultkit::write_bcb_csv(&a, rows, "A");
    faultkit::write_bcb_csv(&b, rows, "B");
    vec![a, b]
}

/// `app produce` of the input of [`two_csv_files`] (`work/input`) into `topic`, run in `work`,
/// with `flags`.
fn produce_input(brokers: &str, mysql: &str, topic: &str, work: &Path, flags: &[&str]) -> Command {
    let mut cmd = app(brokers, mysql);
    cmd.args(["produce", "--topic", topic])
        .args(flags)
        .arg(work.join("input"))
        .current_dir(work);
    cmd
}

/// [`produce_input`] to the shared services, creating `topic` with 3 partitions: the producer
/// that the SIGKILL and SIGINT tests stop and resume.
fn produce_to_shared(topic: &str, work: &Path, flags: &[&str]) -> Command {
    let flags = [&["--partitions", "3"], flags].concat();
    produce_input(&shared_brokers(), &shared_mysql_url(), topic, work, &flags)
}

/// The resume point (`--resume-from '<file>:<line>'`) a stopped producer printed.
fn resume_point(stopped: &Finished) -> Option<String> {
    stopped
        .stdout
        .split("--resume-from '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .map(str::to_string)
}

/// How many times each (file, line) is in the topic, and the value of each.
async fn sources_in_topic(
    brokers: &str,
    topic: &str,
) -> (
    BTreeMap<(String, u64), u32>,
    BTreeMap<(String, u64), Vec<Vec<u8>>>,
) {
    let mut counts = BTreeMap::new();
    let mut values: BTreeMap<(String, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for r in read_topic(brokers, topic).await {
        let value = r.value.expect("produced records have a value");
        let src = source_of(&value);
        *counts.entry(src.clone()).or_insert(0) += 1;
        values.entry(src).or_default().push(value);
    }
    (counts, values)
}

async fn topic_size(brokers: &str, topic: &str) -> i64 {
    let kafka = faultkit::connect(brokers).await;
    let Some(n) = kafka.partition_count(topic).await.unwrap() else {
        return 0;
    };
    let mut sum = 0;
    for p in 0..n as i32 {
        let (earliest, latest) = faultkit::partition(&kafka, topic, p)
            .await
            .offsets()
            .await
            .unwrap();
        sum += latest - earliest;
    }
    sum
}

#[tokio::test]
async fn sigkilled_producer_resumes_from_the_topic_and_loses_nothing() {
    let brokers = shared_brokers();
    let topic = random_topic("sigkill-producer");
    let work = tempfile::tempdir().unwrap();
    let rows = 40_000;
    let files = two_csv_files(work.path(), rows);
    let mut child = produce_to_shared(&topic, work.path(), &["--rate", "20000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some rows are acknowledged, at a random point of the first ~3/4 of the input.
    let target = 2000 + (rand::random::<u64>() % (rows as u64 + rows as u64 / 2)) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while topic_size(&brokers, &topic).await < target {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the producer finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the producer made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL: no summary, no resume hint
    child.wait().unwrap();

    // The resume point is the first row (in input order) that is not in the topic.
    let (before, _) = sources_in_topic(&brokers, &topic).await;
    let in_order: Vec<(String, u64)> = files
        .iter()
        .flat_map(|f| {
            let shown = f.display().to_string();
            (2..rows as u64 + 2).map(move |line| (shown.clone(), line))
        })
        .collect();
    let resume = in_order
        .iter()
        .position(|s| !before.contains_key(s))
        .expect("the kill happened before the end");
    let (resume_file, resume_line) = in_order[resume].clone();
    let sent_beyond = before
        .keys()
        .filter(|s| in_order.iter().position(|x| x == *s).unwrap() > resume)
        .count();
    let finished = run_bounded(
        &mut produce_to_shared(
            &topic,
            work.path(),
            &["--resume-from", &format!("{resume_file}:{resume_line}")],
        ),
        HANG_GUARD,
    );
    assert!(finished.status.success(), "{}", finished.both());

    let (after, values) = sources_in_topic(&brokers, &topic).await;
    for s in &in_order {
        assert!(after.contains_key(s), "row {s:?} is missing from the topic");
    }
    let duplicated: Vec<&(String, u64)> = after
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(s, _)| s)
        .collect();
    for s in &duplicated {
        let position = in_order.iter().position(|x| x == *s).unwrap();
        assert!(
            position >= resume,
            "{s:?} is duplicated but lies before the resume point"
        );
        assert_eq!(after[*s], 2, "{s:?} was sent more than twice");
        let v = &values[*s];
        assert!(
            v.windows(2).all(|w| w[0] == w[1]),
            "duplicates of {s:?} differ"
        );
    }
    assert_eq!(
        duplicated.len(),
        sent_beyond,
        "the duplicates are exactly the rows past the resume point that the killed run had sent"
    );
    eprintln!(
        "producer SIGKILLed after {} of {} rows; resumed from {resume_file}:{resume_line}; \
         {} rows past the resume point had been acknowledged and were sent twice \
         (identical values, same _source)",
        before.len(),
        in_order.len(),
        duplicated.len()
    );
    faultkit::delete_topic(&brokers, &topic).await;
}

#[tokio::test]
async fn interrupted_producer_prints_a_resume_point_that_loses_and_repeats_nothing() {
    let brokers = shared_brokers();
    let topic = random_topic("sigint-producer");
    let work = tempfile::tempdir().unwrap();
    let rows = 40_000;
    let files = two_csv_files(work.path(), rows);
    let child = faultkit::spawn(&mut produce_to_shared(
        &topic,
        work.path(),
        &["--rate", "20000"],
    ));
    let target = 2000 + (rand::random::<u64>() % rows as u64) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while topic_size(&brokers, &topic).await < target {
        assert!(Instant::now() < deadline, "the producer made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    interrupt(&child);
    let first = wait_bounded(child, HANG_GUARD);
    assert_eq!(first.status.code(), Some(130), "{}", first.both());
    let resume = resume_point(&first)
        .unwrap_or_else(|| panic!("no --resume-from in the summary\n{}", first.both()));
    let second = run_bounded(
        &mut produce_to_shared(&topic, work.path(), &["--resume-from", &resume]),
        HANG_GUARD,
    );
    assert!(second.status.success(), "{}", second.both());
    let (counts, _) = sources_in_topic(&brokers, &topic).await;
    let mut missing = 0;
    for f in &files {
        for line in 2..rows as u64 + 2 {
            missing += usize::from(!counts.contains_key(&(f.display().to_string(), line)));
        }
    }
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    assert_eq!(missing, 0, "rows missing after the resume from {resume}");
    assert_eq!(
        duplicates, 0,
        "rows sent twice after the resume from {resume}"
    );
    eprintln!("producer SIGINTed, resumed with --resume-from '{resume}': every row exactly once");
    faultkit::delete_topic(&brokers, &topic).await;
}

// ---------------------------------------------------------------------------------------------
// Private broker crashes for 20 s during produce and consume
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn broker_crash_during_produce_and_consume_loses_nothing() {
    let private = Private::acquire();
    let brokers = private_brokers();
    let mysql = shared_mysql_url();
    let topic = random_topic("broker-crash");
    create_topic(&brokers, &topic, 3).await;
    let work = tempfile::tempdir().unwrap();
    let rows = 30_000;
    let files = two_csv_files(work.path(), rows);
    let out = work.path().join("output");

    // `app produce` of the test's input into `topic`, with `extra` flags.
    let produce =
        |topic: &str, extra: &[&str]| produce_input(&brokers, &mysql, topic, work.path(), extra);
    // A paced producer (~40 s of input) and a live consumer, both on the private broker.
    let producer = faultkit::spawn(&mut produce(&topic, &["--rate", "1500"]));
    // A second producer, to another topic, that gives up after 5 s of failures: it must stop
    // with a resumable error, and resuming must lose nothing.
    let topic_b = random_topic("broker-crash-b");
    create_topic(&brokers, &topic_b, 3).await;
    let impatient = faultkit::spawn(&mut produce(
        &topic_b,
        &["--rate", "1500", "--retry-timeout", "5s"],
    ));
    let consumer = faultkit::spawn(
        app(&brokers, &mysql)
            .args(consume_args(
                &topic,
                &out,
                &["--checkpoint-interval", "500ms", "--idle-timeout", "2s"],
            ))
            .current_dir(work.path()),
    );
    wait_until(Duration::from_secs(120), "the consumer to commit", || {
        faultkit::committed_offsets(&out) > 1000
    });
    private.kill_kafka();
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    private.start_again();
    eprintln!("private broker was down for {:?}", down_at.elapsed());

    let produced = wait_bounded(producer, HANG_GUARD);
    let rode_out = produced.status.success();
    // Either the producer rode out the outage, or it stopped with a resumable error.
    if !rode_out {
        let resume = resume_point(&produced)
            .unwrap_or_else(|| panic!("failed without a resume point\n{}", produced.both()));
        eprintln!("producer stopped with a resumable error; resuming from {resume}");
        let again = run_bounded(
            &mut produce(&topic, &["--resume-from", &resume]),
            HANG_GUARD,
        );
        assert!(again.status.success(), "{}", again.both());
    } else {
        eprintln!("producer rode out the outage:\n{}", produced.stdout);
    }
    let (counts, _) = sources_in_topic(&brokers, &topic).await;
    for f in &files {
        for line in 2..rows as u64 + 2 {
            assert!(
                counts.contains_key(&(f.display().to_string(), line)),
                "{}:{line} is missing from the topic",
                f.display()
            );
        }
    }

    let gave_up = wait_bounded(impatient, HANG_GUARD);
    assert_eq!(
        gave_up.status.code(),
        Some(1),
        "--retry-timeout 5s gives up\n{}",
        gave_up.both()
    );
    let resume_b =
        resume_point(&gave_up).unwrap_or_else(|| panic!("no resume point\n{}", gave_up.both()));
    eprintln!(
        "impatient producer: {}",
        gave_up
            .stdout
            .lines()
            .filter(|l| l.contains("NOT FINISHED") || l.contains("--resume-from"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let resumed = run_bounded(
        &mut produce(&topic_b, &["--resume-from", &resume_b]),
        HANG_GUARD,
    );
    assert!(resumed.status.success(), "{}", resumed.both());
    let (counts_b, values_b) = sources_in_topic(&brokers, &topic_b).await;
    for f in &files {
        for line in 2..rows as u64 + 2 {
            assert!(
                counts_b.contains_key(&(f.display().to_string(), line)),
                "{}:{line} is missing from the resumed topic",
                f.display()
            );
        }
    }
    let twice = values_b.values().filter(|v| v.len() > 1).count();
    assert!(
        values_b
            .values()
            .all(|v| v.windows(2).all(|w| w[0] == w[1])),
        "duplicates are identical"
    );
    eprintln!("impatient producer resumed from {resume_b}: every row present, {twice} sent twice (identical, same _source)");

    let in_topic = topic_size(&brokers, &topic).await;
    let duplicates = in_topic as usize - counts.len();
    eprintln!(
        "topic holds {in_topic} records for {} rows ({duplicates} duplicates)",
        counts.len()
    );
    if rode_out {
        // Idempotent produce: batches retried across the crash were not written twice.
        assert_eq!(
            duplicates, 0,
            "the producer rode out the outage, so every row is in the topic once"
        );
    }

    // The consumer catches up by itself, then drains on SIGINT.
    let caught_up = common::wait_for(Duration::from_secs(300), || {
        faultkit::committed_offsets(&out) as i64 >= in_topic
    });
    interrupt(&consumer);
    let consumed = wait_bounded(consumer, HANG_GUARD);
    assert!(
        caught_up,
        "timed out after 300s waiting for the consumer to catch up: {} of {in_topic} committed\n{}",
        faultkit::committed_offsets(&out),
        consumed.both()
    );
    assert!(consumed.status.success(), "{}", consumed.both());
    let (rows_written, distinct) = exactly_once_counts(&out);
    assert_eq!(
        distinct, in_topic,
        "every record of the topic is in the output"
    );
    assert_eq!(rows_written, in_topic, "exactly once");
    let retries = consumed.stderr.matches("Fetch failed; retrying").count();
    eprintln!(
        "consumer rode out the outage ({retries} fetch retries logged):\n{}",
        consumed.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Private broker frozen, then crashed, during produce: idempotent retries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn broker_pause_and_crash_during_produce_writes_every_row_once() {
    let private = Private::acquire();
    let brokers = private_brokers();
    let mysql = shared_mysql_url();
    let topic = random_topic("idempotent");
    create_topic(&brokers, &topic, 3).await;
    let work = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let files = two_csv_files(work.path(), rows);
    // ~13 s of input. `--timeout 2s`: while the broker is frozen, every lane's request in flight
    // times out and is sent again on the same connection; when the broker runs again it reads
    // both, so without idempotence the batch would be written twice.
    let producer = faultkit::spawn(&mut produce_input(
        &brokers,
        &mysql,
        &topic,
        work.path(),
        &["--rate", "3000", "--timeout", "2s"],
    ));
    let progress = |at_least: i64| {
        let brokers = brokers.clone();
        let topic = topic.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while topic_size(&brokers, &topic).await < at_least {
                assert!(Instant::now() < deadline, "the producer made no progress");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    progress(3_000).await;
    private.pause_kafka();
    std::thread::sleep(Duration::from_secs(6));
    private.resume_kafka();
    eprintln!("private broker was frozen for 6 s");
    progress(20_000).await;
    private.kill_kafka();
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    private.start_again();
    eprintln!(
        "private broker was SIGKILLed and down for {:?}",
        down_at.elapsed()
    );

    let produced = wait_bounded(producer, HANG_GUARD);
    assert!(
        produced.status.success(),
        "the producer rides out a frozen and a crashed broker\n{}",
        produced.both()
    );
    // `bytes: 1.2 MB in 345 batches (6 retries)`
    let retries: u64 = produced
        .stdout
        .split(" retries)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry count in the summary\n{}", produced.both()));
    let (counts, _) = sources_in_topic(&brokers, &topic).await;
    let mut missing = Vec::new();
    for f in &files {
        for line in 2..rows as u64 + 2 {
            if !counts.contains_key(&(f.display().to_string(), line)) {
                missing.push(format!("{}:{line}", f.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "rows missing from the topic: {missing:?}"
    );
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} rows are in the topic more than once, e.g. {:?}\n{}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        produced.both()
    );
    assert_eq!(topic_size(&brokers, &topic).await, 2 * rows as i64);
    assert!(
        retries > 0,
        "the faults made the producer retry\n{}",
        produced.both()
    );

    // Kafka's own reading of the log: every batch has a producer id, and per (partition,
    // producer id) the batches' sequences run 0, 1, 2, ... without a gap or an overlap.
    let batches = common::dump_log_segments(&faultkit::private_dir().join("kafka"), &topic, false);
    let records: i64 = batches.iter().map(|b| b.count).sum();
    assert_eq!(
        records,
        2 * rows as i64,
        "DumpLogSegments sees every record"
    );
    let mut next: BTreeMap<(i32, i64), i64> = BTreeMap::new();
    let mut sorted = batches;
    sorted.sort_by_key(|b| (b.partition, b.base_offset));
    for b in &sorted {
        assert!(b.producer_id >= 0, "a batch without a producer id: {b:?}");
        let expected = next.entry((b.partition, b.producer_id)).or_insert(0);
        assert_eq!(
            b.base_sequence, *expected,
            "partition {}: producer {}'s sequence jumps: {b:?}",
            b.partition, b.producer_id
        );
        assert_eq!(b.last_sequence, b.base_sequence + b.count - 1, "{b:?}");
        *expected = b.last_sequence + 1;
    }
    let producers: BTreeSet<i64> = next.keys().map(|&(_, id)| id).collect();
    let reinit = produced
        .stderr
        .matches("The broker refused this lane's producer id")
        .count();
    eprintln!(
        "every row once after a 6 s freeze and a crash: {} batches from {} producer ids \
         (one per lane{}), {retries} retries",
        sorted.len(),
        producers.len(),
        if reinit > 0 {
            format!(", {reinit} re-initialised")
        } else {
            String::new()
        }
    );
    faultkit::delete_topic(&brokers, &topic).await;
}

// ---------------------------------------------------------------------------------------------
// Private MariaDB stopped while consuming; started while it is down
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mariadb_outage_keeps_the_stale_map_and_refresh_recovers() {
    let private = Private::acquire();
    let brokers = shared_brokers();
    let mysql = private_mysql_url();
    // A table of this test in the private database (the private `bancos` is seeded too, but a
    // table of our own can be changed freely).
    let table = format!("bancos_outage_{:08x}", rand::random::<u32>());
    private.sql(&format!(
        "CREATE TABLE {table} (cnpj CHAR(8) PRIMARY KEY, segmento VARCHAR(4) NOT NULL, nome VARCHAR(255) NOT NULL); \
         INSERT INTO {table} VALUES ('11111111', 'S1', 'ANTES'), ('22222222', 'S2', 'FIXO')"
    ));
    let query = format!("SELECT cnpj, segmento, nome FROM {table}");
    let topic = random_topic("mariadb-outage");
    create_topic(&brokers, &topic, 1).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let schema = Schema::banco_central();
    let base = base_ms();
    let batch = |label: &str, from: u64| -> Vec<Record> {
        (from..from + 50)
            .map(|i| {
                let cnpj = if i % 2 == 0 { "11111111" } else { "22222222" };
                record(&schema, i, cnpj, label, base + i as i64 * 1000)
            })
            .collect()
    };
    let consumer = faultkit::spawn(
        app(&brokers, &mysql)
            .env("RUST_LOG", "warn,reclamacoes::enrich=debug")
            .args(consume_args(
                &topic,
                &out,
                &[
                    "--enrich-query",
                    &query,
                    "--refresh-interval",
                    "1s",
                    "--checkpoint-interval",
                    "300ms",
                ],
            ))
            .current_dir(work.path()),
    );
    let log_text = || consumer.stderr_so_far();
    produce_records(&brokers, &topic, 0, batch("LOTE1", 0)).await;
    wait_until(Duration::from_secs(120), "batch 1 to be read", || {
        faultkit::committed_offsets(&out) >= 50
    });

    private.stop_mysql();
    wait_until(
        Duration::from_secs(60),
        "a refresh failure to be logged",
        || log_text().contains("enrichment refresh failed"),
    );
    // The stale map keeps serving while the database is down.
    produce_records(&brokers, &topic, 0, batch("LOTE2", 50)).await;
    wait_until(Duration::from_secs(120), "batch 2 to be read", || {
        faultkit::committed_offsets(&out) >= 100
    });
    // A consumer started now gives up after --mysql-timeout with a clear error.
    let fresh_out = work.path().join("fresh");
    let fresh = run_bounded(
        app(&brokers, &mysql).args(consume_args(
            &topic,
            &fresh_out,
            &["--until-caught-up", "--mysql-timeout", "3s"],
        )),
        Duration::from_secs(120),
    );
    assert!(!fresh.status.success(), "{}", fresh.both());
    eprintln!(
        "consumer started with MariaDB down:\n{}",
        fresh.stderr.trim()
    );
    let message = fresh.both();
    assert!(
        message.contains(&format!("127.0.0.1:{}", faultkit::private_mysql_port()))
            && message.contains("3s")
            && !message.contains("reclamacoes@")
            && !message.contains(":reclamacoes"),
        "the error names the server and the timeout, never the password:\n{message}"
    );

    // Back up, with a changed row: the first refresh after the outage must bring it.
    private.start_again();
    private.sql(&format!(
        "UPDATE {table} SET nome = 'DEPOIS' WHERE cnpj = '11111111'"
    ));
    let failures_logged = log_text().matches("enrichment refresh failed").count();
    let refreshed_at = log_text().len();
    wait_until(
        Duration::from_secs(120),
        "a successful refresh after the outage",
        || log_text()[refreshed_at..].contains("enrichment table refreshed"),
    );
    produce_records(&brokers, &topic, 0, batch("LOTE3", 100)).await;
    wait_until(Duration::from_secs(120), "batch 3 to be read", || {
        faultkit::committed_offsets(&out) >= 150
    });
    interrupt(&consumer);
    let done = wait_bounded(consumer, HANG_GUARD);
    assert!(done.status.success(), "{}", done.both());
    private.sql(&format!("DROP TABLE {table}"));

    let names: BTreeMap<String, i64> = duckdb(
        &out,
        &format!(
            "SELECT split_part(instituicao_financeira, ' ', 1) || '/' || cnpj_if || '/' || coalesce(banco_nome, 'NULL'), count(*) \
             FROM {} GROUP BY 1 ORDER BY 1",
            faultkit::output::rows(&out)
        ),
    )
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
    .collect();
    let expected: BTreeMap<String, i64> = [
        ("LOTE1/11111111/ANTES", 25),
        ("LOTE1/22222222/FIXO", 25),
        ("LOTE2/11111111/ANTES", 25),
        ("LOTE2/22222222/FIXO", 25),
        ("LOTE3/11111111/DEPOIS", 25),
        ("LOTE3/22222222/FIXO", 25),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        names, expected,
        "stale map during the outage, fresh map after it"
    );
    let summary_failures: u64 = done
        .stdout
        .lines()
        .find(|l| l.contains("enrichment:") && l.contains("refresh failures"))
        .and_then(|l| l.split("refresh failures").next())
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("the summary counts refresh failures:\n{}", done.stdout));
    assert!(
        summary_failures >= failures_logged as u64 && summary_failures > 0,
        "summary says {summary_failures} refresh failures, the log shows {failures_logged}"
    );
    eprintln!("MariaDB outage: {summary_failures} refresh failures counted; stale map served; refresh after restart succeeded");
}

// ---------------------------------------------------------------------------------------------
// Output disk full
// ---------------------------------------------------------------------------------------------

/// A small filesystem for the output: a tmpfs when we may mount (root), else none (the caller
/// falls back to RLIMIT_FSIZE).
struct SmallDisk {
    mount: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    fn new(dir: &Path, size: &str) -> SmallDisk {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        SmallDisk { mount, mounted }
    }

    fn grow(&self, size: &str) {
        if self.mounted {
            let ok = Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.mount)
                .status()
                .unwrap()
                .success();
            assert!(ok, "remounting the tmpfs failed");
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
    }
}

#[tokio::test]
async fn disk_full_is_a_clear_error_and_a_restart_after_freeing_space_completes() {
    let brokers = shared_brokers();
    let mysql = shared_mysql_url();
    let topic = random_topic("disk-full");
    create_topic(&brokers, &topic, 2).await;
    let schema = Schema::banco_central();
    let per_partition = 30_000u64;
    for p in 0..2 {
        let records = (0..per_partition)
            .map(|i| {
                record(
                    &schema,
                    i,
                    &format!("{:08}", 10_000_000 + i * 7 + p as u64),
                    &format!(
                        "INSTITUIÇÃO COM UM NOME BEM LONGO {:x}",
                        rand::random::<u64>()
                    ),
                    base_ms() + i as i64 * 200,
                )
            })
            .collect();
        produce_records(&brokers, &topic, p, records).await;
    }
    let total = per_partition as i64 * 2;
    let work = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(work.path(), "1m");
    let out = disk.mount.join("output");
    let args = consume_args(
        &topic,
        &out,
        &[
            "--until-caught-up",
            "--checkpoint-interval",
            "200ms",
            "--compression",
            "none",
        ],
    );
    let full = if disk.mounted {
        run_bounded(app(&brokers, &mysql).args(&args), HANG_GUARD)
    } else {
        // Not allowed to mount: every file may grow to 256 KiB, and SIGXFSZ is ignored so the
        // write fails with EFBIG instead of killing the process.
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("trap '' XFSZ; exec prlimit --fsize=262144 -- \"$@\"")
            .arg("bash")
            .arg(env!("CARGO_BIN_EXE_app"))
            .args(&args);
        common::app_env_for(&mut cmd, &brokers, &mysql);
        run_bounded(&mut cmd, HANG_GUARD)
    };
    eprintln!(
        "disk full via {}: exit {:?}\n{}",
        if disk.mounted {
            "a 1 MiB tmpfs"
        } else {
            "RLIMIT_FSIZE 256 KiB"
        },
        full.status,
        full.stderr
    );
    assert!(!full.status.success(), "the run must fail\n{}", full.both());
    let error = full
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line\n{}", full.both()));
    let expected_reason = if disk.mounted {
        "no space left"
    } else {
        "File too large"
    };
    assert!(
        error
            .to_lowercase()
            .contains(&expected_reason.to_lowercase())
            && error.contains(&*disk.mount.to_string_lossy()),
        "the error names the reason and the path: {error}"
    );
    // No committed file is corrupt: every finished Parquet file reads completely.
    let mut checked = 0;
    for file in walk(&out) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".parquet") && !name.starts_with('.') {
            let rows = scalar(
                &out,
                &format!("SELECT count(*) FROM read_parquet('{}')", file.display()),
            );
            assert!(rows > 0, "{} is empty", file.display());
            checked += 1;
        }
    }
    eprintln!("{checked} finished Parquet files read back intact after the failure");

    disk.grow("512m");
    let again = run_bounded(app(&brokers, &mysql).args(&args), HANG_GUARD);
    assert!(again.status.success(), "{}", again.both());
    let (rows, distinct) = exactly_once_counts(&out);
    assert_eq!(
        (rows, distinct),
        (total, total),
        "exactly once after the restart"
    );
    for file in walk(&out) {
        assert!(
            !file.to_string_lossy().ends_with(".tmp"),
            "leftover {}",
            file.display()
        );
    }
    faultkit::delete_topic(&brokers, &topic).await;
}

// ---------------------------------------------------------------------------------------------
// Damaged checkpoint
// ---------------------------------------------------------------------------------------------

fn listing(dir: &Path) -> BTreeSet<(PathBuf, u64)> {
    walk(dir)
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            (f, len)
        })
        .collect()
}

#[tokio::test]
async fn damaged_checkpoint_falls_back_to_the_previous_generation_or_refuses() {
    let brokers = shared_brokers();
    let mysql = shared_mysql_url();
    let topic = random_topic("checkpoint");
    create_topic(&brokers, &topic, 2).await;
    let schema = Schema::banco_central();
    let produce_batch = |from: u64| {
        let schema = schema.clone();
        let brokers = brokers.clone();
        let topic = topic.clone();
        async move {
            for p in 0..2 {
                let records = (from..from + 1000)
                    .map(|i| record(&schema, i, "00360305", "CKPT", base_ms() + i as i64 * 1000))
                    .collect();
                produce_records(&brokers, &topic, p, records).await;
            }
        }
    };
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let consume = || {
        run_bounded(
            app(&brokers, &mysql).args(consume_args(&topic, &out, &["--until-caught-up"])),
            HANG_GUARD,
        )
    };
    // Two runs: partition 0 has a current and a previous generation.
    produce_batch(0).await;
    assert!(consume().status.success());
    produce_batch(1000).await;
    assert!(consume().status.success());
    let generations = |out: &Path| -> Vec<PathBuf> {
        let mut g: Vec<PathBuf> = walk(&out.join("_checkpoint/partition=0"))
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "json"))
            .collect();
        g.sort();
        g
    };
    let gens = generations(&out);
    assert_eq!(
        gens.len(),
        2,
        "a current and a previous generation: {gens:?}"
    );
    let current = gens[1].clone();

    // 1. The current file truncated (a torn write): the previous generation is used, loudly,
    //    and the output ends exactly once.
    let text = std::fs::read(&current).unwrap();
    std::fs::write(&current, &text[..text.len() / 2]).unwrap();
    produce_batch(2000).await;
    let run = consume();
    assert!(run.status.success(), "{}", run.both());
    assert!(
        run.stderr
            .contains("Resuming from an older checkpoint generation"),
        "the fallback is logged:\n{}",
        run.stderr
    );
    let (rows, distinct) = exactly_once_counts(&out);
    assert_eq!(
        (rows, distinct),
        (6000, 6000),
        "exactly once after the fallback"
    );
    let damaged = current.with_file_name(format!(
        "{}.damaged",
        current.file_name().unwrap().to_string_lossy()
    ));
    assert!(
        damaged.exists(),
        "the damaged file is kept aside for investigation"
    );

    // 2. Both generations damaged (one truncated, one with a flipped digit, so valid JSON with
    //    a wrong checksum): a clear error naming both files, and nothing in the output touched.
    let gens = generations(&out);
    let (previous, current) = (gens[gens.len() - 2].clone(), gens[gens.len() - 1].clone());
    let text = std::fs::read_to_string(&current).unwrap();
    std::fs::write(&current, &text[..text.len() / 3]).unwrap();
    let prev_text = std::fs::read_to_string(&previous).unwrap();
    let flipped = prev_text.replacen("\"next_offset\": ", "\"next_offset\": 1", 1);
    assert_ne!(flipped, prev_text);
    std::fs::write(&previous, flipped).unwrap();
    let before = listing(&out);
    produce_batch(3000).await;
    let refused = consume();
    assert!(!refused.status.success(), "{}", refused.both());
    let both = refused.both();
    for needle in [
        "no usable checkpoint".to_string(),
        "partition 0".to_string(),
        current.file_name().unwrap().to_string_lossy().to_string(),
        previous.file_name().unwrap().to_string_lossy().to_string(),
        "not valid JSON".to_string(),
        "checksum".to_string(),
    ] {
        assert!(both.contains(&needle), "`{needle}` missing from:\n{both}");
    }
    assert_eq!(listing(&out), before, "a refused start changes nothing");

    // 3. Only a zero-length generation: refused as well.
    std::fs::write(&current, b"").unwrap();
    std::fs::remove_file(&previous).unwrap();
    let refused = consume();
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("no usable checkpoint"),
        "{}",
        refused.both()
    );

    // 4. The whole checkpoint directory deleted: starting over would delete the committed
    //    files (and lose what retention removed meanwhile), so it is refused too, twice.
    std::fs::remove_dir_all(out.join("_checkpoint")).unwrap();
    let before = listing(&out);
    for _ in 0..2 {
        let refused = consume();
        assert!(!refused.status.success(), "{}", refused.both());
        assert!(
            refused.stderr.contains("but no checkpoint for it"),
            "{}",
            refused.both()
        );
        assert_eq!(listing(&out), before, "a refused start changes nothing");
    }
    eprintln!(
        "damaged checkpoints: fallback to the previous generation logged; both damaged, empty, \
         or the directory deleted -> refused with a clear error, output untouched"
    );
}

// ---------------------------------------------------------------------------------------------
// Retention deleted records below the checkpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retention_below_the_checkpoint_follows_on_data_loss() {
    let brokers = shared_brokers();
    let mysql = shared_mysql_url();
    let topic = random_topic("data-loss");
    create_topic(&brokers, &topic, 1).await;
    let schema = Schema::banco_central();
    let batch = |from: u64, n: u64| -> Vec<Record> {
        (from..from + n)
            .map(|i| record(&schema, i, "00360305", "PERDA", base_ms() + i as i64 * 1000))
            .collect()
    };
    produce_records(&brokers, &topic, 0, batch(0, 1000)).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let consume = |policy: &str| {
        run_bounded(
            app(&brokers, &mysql).args(consume_args(
                &topic,
                &out,
                &["--until-caught-up", "--on-data-loss", policy],
            )),
            HANG_GUARD,
        )
    };
    assert!(consume("fail").status.success());
    assert_eq!(faultkit::committed_offsets(&out), 1000);

    // 1000 more, then retention deletes everything below 1500: offsets 1000..1500 were never read.
    produce_records(&brokers, &topic, 0, batch(1000, 1000)).await;
    let kafka = faultkit::connect(&brokers).await;
    let h = faultkit::partition(&kafka, &topic, 0).await;
    h.client.delete_records(1500, 10_000).await.unwrap();
    assert_eq!(h.offsets().await.unwrap(), (1500, 2000));

    let failed = consume("fail");
    assert!(!failed.status.success(), "{}", failed.both());
    let error = failed.both();
    for needle in [
        &format!("topic `{topic}` partition 0"),
        "offset 1000 is out of range",
        "1500..2000",
        "--on-data-loss earliest",
    ] {
        assert!(error.contains(needle), "`{needle}` missing from:\n{error}");
    }
    assert_eq!(faultkit::committed_offsets(&out), 1000, "nothing committed");

    let lossy = consume("earliest");
    assert!(lossy.status.success(), "{}", lossy.both());
    assert!(
        lossy.stderr.contains("Data deleted by retention") && lossy.stderr.contains("lost=500"),
        "the loss is logged with its size:\n{}",
        lossy.stderr
    );
    let offsets: Vec<i64> = duckdb(
        &out,
        &format!(
            "SELECT kafka_offset FROM {} ORDER BY 1",
            faultkit::output::rows(&out)
        ),
    )
    .into_iter()
    .map(|r| r[0].as_i64().unwrap())
    .collect();
    let expected: Vec<i64> = (0..1000).chain(1500..2000).collect();
    assert_eq!(offsets, expected, "exactly the deleted range is missing");
    eprintln!(
        "retention: fail -> clear error (1000 vs 1500..2000); earliest -> 500 records lost, logged"
    );
}
