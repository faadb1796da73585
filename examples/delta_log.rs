//! How fast the Delta table opens as its log grows (issue 24: "after a day of 1-minute windows
//! over 6 partitions, ~8,600 commits, opening the table is as fast as on the first hour").
//!
//! Publishes `--commits` commits the way `app consume` does (one per closed window and
//! partition: one add with statistics and a `txn` for the partition), into a new table under
//! `--dir`, with a Delta checkpoint every `--checkpoint-every` commits (0: none). At a few
//! points it times what a restart and a reader pay: opening the table (latest snapshot) and
//! reading the application version of every partition. The data files are not written (the
//! log is what is measured; a reader of the log never opens them).
//!
//! ```text
//! cargo run --release --example delta_log -- --dir /tmp/delta-log --commits 8640
//! cargo run --release --example delta_log -- --dir /tmp/delta-log --commits 8640 --checkpoint-every 0
//! cargo run --release --example delta_log -- --dir /tmp/delta-log --open-only 20
//! cargo run --release --example delta_log -- --dir /tmp/delta-log --commits 8640 --log-retention-secs 6
//! ```
//!
//! `--log-retention-secs S` sets the log retention (default: Delta's 30 days); commits come
//! about 80 per second here, so 6 s keeps about an hour of 1-minute windows over 6 partitions.
//!
//! `--open-only N` publishes nothing: it opens the existing table under `--dir` N times (for a
//! profiler) and prints the median times.

use std::path::PathBuf;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use reclamacoes::checkpoint::{FileRef, TableFile};
use reclamacoes::output::delta::{DeltaConfig, DeltaTable};
use reclamacoes::output::store::{LocalStore, Store};
use reclamacoes::output::table::TableCommitter;

const TOPIC: &str = "reclamacoes";
const PARTITIONS: i32 = 6;
const MINUTE_MS: i64 = 60_000;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(arg("--dir", "/tmp/delta-log"));
    let commits: u64 = arg("--commits", "8640").parse()?;
    let every: u64 = arg("--checkpoint-every", "100").parse()?;
    let open_only: usize = arg("--open-only", "0").parse()?;
    let retention: Option<u64> = match arg("--log-retention-secs", "") {
        s if s.is_empty() => None,
        s => Some(s.parse()?),
    };
    if dir.exists() && open_only == 0 {
        std::fs::remove_dir_all(&dir)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("value", DataType::Utf8, true),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_timestamp", utc(), false),
        Field::new("window_start", utc(), false),
        Field::new("window_end", utc(), false),
    ]);
    let store = LocalStore::new(&dir);
    let config = DeltaConfig {
        checkpoint_every: every,
        log_retention: retention.map(std::time::Duration::from_secs),
        ..DeltaConfig::default()
    };
    let root = store.table_root()?;
    let open = || DeltaTable::open_or_create(root.clone(), &schema, config.clone());
    let table = open()?;
    if open_only > 0 {
        let (mut opens, mut versions) = (Vec::new(), Vec::new());
        for _ in 0..open_only {
            let t0 = Instant::now();
            let reopened = open()?;
            opens.push(t0.elapsed().as_secs_f64() * 1e3);
            let t1 = Instant::now();
            for p in 0..PARTITIONS {
                reopened.app_version(TOPIC, p)?;
            }
            versions.push(t1.elapsed().as_secs_f64() * 1e3);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "version {}: open {:.1} ms, app versions {:.1} ms (median of {open_only})",
            table.version(),
            median(&mut opens),
            median(&mut versions)
        );
        return Ok(());
    }
    let marks: Vec<u64> = [60 * 6, 1_000, 2_000, 4_000, 8_640, commits]
        .into_iter()
        .filter(|&m| m <= commits)
        .collect();
    println!("commits  open_ms  app_versions_ms  log_files  (checkpoint every {every})");
    let started = Instant::now();
    let mut generation = vec![0u64; PARTITIONS as usize];
    for n in 1..=commits {
        let partition = ((n - 1) % PARTITIONS as u64) as i32;
        let minute = ((n - 1) / PARTITIONS as u64) as i64;
        let g = &mut generation[partition as usize];
        *g += 1;
        let file = TableFile {
            generation: *g,
            window: 1_796_515_200_000 + minute * MINUTE_MS,
            file: FileRef {
                name: format!("part-{partition}-{minute}-{minute}-00000000.parquet"),
                first: minute * 1000,
                last: minute * 1000 + 999,
                rows: 1000,
                bytes: 100_000,
            },
        };
        table.publish(TOPIC, partition, *g, &[file])?;
        if marks.contains(&n) {
            // A restart: a new process opens the table and reads every partition's version.
            let t0 = Instant::now();
            let reopened = open()?;
            let open_ms = t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            for p in 0..PARTITIONS {
                let v = reopened.app_version(TOPIC, p)?;
                assert_eq!(v, Some(generation[p as usize] as i64));
            }
            let versions_ms = t1.elapsed().as_secs_f64() * 1e3;
            let log_files = std::fs::read_dir(dir.join("_delta_log"))?.count();
            println!("{n:>7}  {open_ms:>7.1}  {versions_ms:>15.1}  {log_files:>9}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{commits} commits in {secs:.1} s ({:.1} ms per commit, checkpoints included)",
        secs * 1e3 / commits as f64
    );
    Ok(())
}
