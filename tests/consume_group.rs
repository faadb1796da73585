//! `app consume --group`: instances of the real binary share one topic through Kafka's group
//! coordinator (the real broker), hand partitions over when a member is SIGKILLed or a new one
//! joins, and write every record exactly once into one shared output, with success markers
//! that cover every partition. Kafka's own `kafka-consumer-groups` shows the group.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::random_topic;
use reclamacoes::kafka::{Compression, PartitionHandle};
use reclamacoes::schema::Schema;

const PARTITIONS: i32 = 6;
/// Records per partition (240,000 in all: the debug binary reads them in well under a minute).
const PER_PARTITION: u64 = 40_000;
/// One-minute windows the event time walks through.
const WINDOWS: i64 = 12;

struct Member {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Member {
    fn start(name: &'static str, topic: &str, group: &str, out: &Path, work: &Path) -> Member {
        let log = work.join(format!("{name}.log"));
        let child = common::app()
            .args([
                "consume",
                "--topic",
                topic,
                "--output",
                out.to_str().unwrap(),
                "--group",
                group,
                "--session-timeout",
                "6s",
                "--heartbeat-interval",
                "1s",
                "--checkpoint-interval",
                "300ms",
                "--idle-timeout",
                "2s",
                "--allowed-lateness",
                "10s",
                "--max-buffer-bytes",
                "8000000",
                "--fetch-max-bytes",
                "131072",
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(work)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start app consume --group");
        Member { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assignments(&self) -> usize {
        self.log().matches("Partitions assigned").count()
    }

    fn assigned_nonempty(&self) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("Partitions assigned") && !l.contains("partitions={}"))
    }

    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits for a clean exit after SIGTERM; panics with the log otherwise.
    fn wait_clean(mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status} after SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not stop within {within:?} of SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms for at most `within`; panics with `what` and the members' logs.
fn wait_for(what: &str, within: Duration, members: &[&Member], mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log(), 4000)))
                .collect();
            panic!("{what}: not within {within:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn scalar(out: &Path, sql: &str) -> i64 {
    common::duckdb(out, sql)[0][0].as_i64().unwrap()
}

async fn fill(topic: &str) -> u64 {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    kafka.ensure_topic(topic, PARTITIONS, 1).await.unwrap();
    let schema = Schema::banco_central();
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    for p in 0..PARTITIONS {
        let handle = PartitionHandle {
            config: common::kafka_config(),
            topic: topic.to_string(),
            partition: p,
            client: kafka.partition(topic, p).await.unwrap(),
        };
        let mut batch = Vec::new();
        for i in 0..PER_PARTITION {
            // Forward through the windows with a few seconds of disorder.
            let forward = (i as i64 * WINDOWS * 60_000) / PER_PARTITION as i64;
            let jitter = ((i * 7919 + p as u64 * 31) % 6_000) as i64 - 3_000;
            batch.push(common::synthetic_record(
                &schema,
                i,
                base + forward + jitter,
            ));
            if batch.len() == 4000 {
                handle
                    .produce(std::mem::take(&mut batch), Compression::Lz4)
                    .await
                    .unwrap();
            }
        }
        handle.produce(batch, Compression::Lz4).await.unwrap();
    }
    PER_PARTITION * PARTITIONS as u64
}

fn success_markers(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .filter(|d| d.path().join("_SUCCESS").is_file())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_through_a_sigkill_and_a_new_member_exactly_once() {
    let topic = random_topic("group-consume");
    let group = format!("{topic}-g");
    let total = fill(&topic).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let dir = work.path();

    let a = Member::start("a", &topic, &group, &out, dir);
    let b = Member::start("b", &topic, &group, &out, dir);
    let c = Member::start("c", &topic, &group, &out, dir);
    wait_for(
        "every member gets partitions",
        Duration::from_secs(60),
        &[&a, &b, &c],
        || a.assigned_nonempty() && b.assigned_nonempty() && c.assigned_nonempty(),
    );

    // SIGKILL one member mid-stream: its partitions go to the others once its session (6 s)
    // expires, and the new owners resume from its last checkpoint.
    wait_for(
        "a third of the records committed",
        Duration::from_secs(120),
        &[&a, &b, &c],
        || common::output::committed_offsets(&out) >= total / 3,
    );
    let mut b = b;
    let before = (a.assignments(), c.assignments());
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let killed_at = common::output::committed_offsets(&out);
    eprintln!("SIGKILLed b at {killed_at} of {total} committed");
    assert!(killed_at < total, "b was killed mid-stream");
    wait_for(
        "the survivors are assigned b's partitions",
        Duration::from_secs(60),
        &[&a, &c],
        || a.assignments() > before.0 && c.assignments() > before.1,
    );
    eprintln!(
        "takeover after SIGKILL (session timeout 6 s): {:.1} s",
        killed.elapsed().as_secs_f64()
    );

    // A fourth member joins: the group rebalances again and it gets partitions.
    let d = Member::start("d", &topic, &group, &out, dir);
    wait_for(
        "the new member gets partitions",
        Duration::from_secs(60),
        &[&a, &c, &d],
        || d.assigned_nonempty(),
    );
    wait_for(
        "every record committed",
        Duration::from_secs(180),
        &[&a, &c, &d],
        || common::output::committed_offsets(&out) >= total,
    );
    // Idle partitions follow the clock (Kafka-timestamp event time), so every window closes;
    // a marker needs every partition's checkpoint past the window, in whichever member.
    wait_for(
        "a success marker for every window",
        Duration::from_secs(90),
        &[&a, &c, &d],
        || success_markers(&out) >= WINDOWS as usize,
    );

    // Kafka's own tool shows the group: the three live members and no lag.
    let describe = tokio::task::spawn_blocking({
        let group = group.clone();
        move || common::groups::consumer_groups(&group, &["--describe"])
    })
    .await
    .unwrap();
    eprintln!("kafka-consumer-groups --describe:\n{describe}");
    let rows = common::groups::table(&describe, "GROUP");
    assert_eq!(rows.len(), PARTITIONS as usize, "{describe}");
    let owners: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["CONSUMER-ID"].as_str()).collect();
    assert_eq!(
        owners.len(),
        3,
        "three members own the partitions:\n{describe}"
    );
    // The group offsets are for display and follow the commits; allow the last few in flight.
    wait_for(
        "the group's committed offsets reach the end",
        Duration::from_secs(30),
        &[&a, &c, &d],
        || {
            let describe = common::groups::consumer_groups(&group, &["--describe"]);
            common::groups::table(&describe, "GROUP")
                .iter()
                .all(|r| r["LAG"] == "0")
        },
    );

    for m in [&a, &c, &d] {
        m.sigterm();
    }
    for m in [a, c, d] {
        m.wait_clean(Duration::from_secs(60));
    }

    let all = common::output::all_offsets(&out).expect("output written");
    let rows = scalar(&out, &format!("SELECT count(*) FROM {all}"));
    let distinct = scalar(
        &out,
        &format!("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {all}"),
    );
    assert_eq!(distinct as u64, total, "every (partition, offset) appears");
    assert_eq!(
        rows as u64, total,
        "and appears once, across a SIGKILL and two rebalances"
    );
    let table = scalar(
        &out,
        &format!("SELECT count(*) FROM {}", common::output::TABLE),
    );
    // Every marker lists files of all six partitions, and the manifests add up to the table.
    let mut manifest_rows = 0u64;
    for dir in std::fs::read_dir(&out).unwrap().filter_map(|d| d.ok()) {
        let marker = dir.path().join("_SUCCESS");
        if !marker.is_file() {
            continue;
        }
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
        assert_eq!(
            m["partitions"].as_array().unwrap().len(),
            PARTITIONS as usize,
            "{}",
            marker.display()
        );
        manifest_rows += m["rows"].as_u64().unwrap();
    }
    assert_eq!(
        manifest_rows as i64, table,
        "the manifests list exactly the table's rows"
    );
}

#[test]
fn group_refuses_static_partitions_and_bounded_runs_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        ["--partitions", "0,1"],
        ["--until-caught-up", "--close-windows"],
    ] {
        let mut args = vec!["consume", "--topic", "t", "--group", "g"];
        args.extend(extra);
        let out = common::run_app(&args, dir.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot be used with"),
            "{extra:?}: {stderr}"
        );
    }
}
