//! `app consume --group`: instances of the real binary share one topic through Kafka's group
//! coordinator (the real broker), hand partitions over when a member is SIGKILLed, restarted,
//! added or removed, and write every record exactly once into one shared output (a directory,
//! or the S3 server), with success markers that cover every partition, and into one Delta table
//! that deltalake, polars and DuckDB read with every row once (every scenario ends with
//! `stop_and_check`). Kafka's own `kafka-consumer-groups` shows the group.
//!
//! | test | what happens | asserted |
//! |---|---|---|
//! | `three_members_...` | 3 members, 6 partitions; one SIGKILLed mid-stream, a fourth joins | takeover within session timeout + a few s; every (partition, offset) once; a `_SUCCESS` per window listing all 6 partitions, rows adding up; `--describe` shows 3 members, lag 0 |
//! | `churn_...` (local and S3) | one member SIGKILLed and restarted 4 times, a fourth added then stopped, mid-run | every (partition, offset) once, markers complete |
//! | `a_paused_member_...` | one member SIGSTOPped past its session timeout, then SIGCONT | it reports its partitions lost and drops them; the others finish; every (partition, offset) once |
//! | `a_member_cut_off_...` | one member in its own network namespace (veth pair, relays to the services' loopback ports), output in S3; its link cut while it holds partitions, restored after the takeover | its partitions move; it reports them lost; no checkpoint of its old writer survives the takeover; every (partition, offset) once. Needs root (`ip netns`); without it the test says so and passes nothing off as tested |
//!
//! 240,000 records (40,000 per partition); `CHAOS=1` (`make chaos`): 1,000,002.

mod common;
mod netns;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::{random_topic, scalar};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::Schema;

const PARTITIONS: i32 = 6;

/// Records per partition: 240,000 in all (the debug binary reads them in well under a
/// minute), 1,000,002 with `CHAOS=1`.
fn per_partition() -> u64 {
    if std::env::var("CHAOS").is_ok_and(|v| v == "1") {
        166_667
    } else {
        40_000
    }
}
/// One-minute windows the event time walks through (a few seconds of disorder touch one more
/// on each side).
const WINDOWS: i64 = 12;

/// The shared output of the members: a local directory or a prefix on the S3 server.
enum Output {
    Local(PathBuf),
    S3 {
        prefix: String,
        store: reclamacoes::output::ObjectOutput,
    },
}

impl Output {
    fn local(work: &Path) -> Output {
        Output::Local(work.join("output"))
    }

    fn s3(tag: &str) -> Output {
        common::s3::require();
        let prefix = common::s3::random_prefix(tag);
        let store = common::s3::store(&common::s3::endpoint(), &prefix);
        Output::S3 { prefix, store }
    }

    fn arg(&self) -> String {
        match self {
            Output::Local(dir) => dir.display().to_string(),
            Output::S3 { prefix, .. } => common::s3::url(prefix),
        }
    }

    /// Sum over partitions of the committed checkpoints' next offsets.
    fn committed(&self) -> u64 {
        match self {
            Output::Local(dir) => common::output::committed_offsets(dir),
            Output::S3 { store, .. } => common::s3::committed_offsets(store),
        }
    }

    /// The window folders that hold a `_SUCCESS` marker.
    fn markers(&self) -> usize {
        match self {
            Output::Local(dir) => std::fs::read_dir(dir)
                .map(|dirs| {
                    dirs.filter_map(|d| d.ok())
                        .filter(|d| d.path().join("_SUCCESS").is_file())
                        .count()
                })
                .unwrap_or(0),
            Output::S3 { store, .. } => {
                use reclamacoes::output::store::Store as _;
                let store = store.clone();
                std::thread::spawn(move || {
                    store.list("").map_or(0, |objects| {
                        objects
                            .iter()
                            .filter(|o| o.key.ends_with("/_SUCCESS"))
                            .count()
                    })
                })
                .join()
                .unwrap()
            }
        }
    }

    /// A local directory with everything written (the S3 prefix downloaded by pyarrow).
    fn readable(&self, work: &Path) -> PathBuf {
        match self {
            Output::Local(dir) => dir.clone(),
            Output::S3 { prefix, .. } => {
                let dest = work.join("downloaded");
                common::s3::download(&common::s3::endpoint(), prefix, &dest);
                dest
            }
        }
    }
}

struct Member {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Member {
    /// `app consume --group` as member `name`, logging to `<work>/<name>.log` (appended: a
    /// restarted member keeps one log), in the network namespace `netns` when given (`ip netns
    /// exec`, which execs the binary: the child's pid is the consumer's).
    fn start_in(
        netns: Option<&netns::Netns>,
        name: &'static str,
        topic: &str,
        group: &str,
        out: &Output,
        work: &Path,
    ) -> Member {
        let log = work.join(format!("{name}.log"));
        let mut cmd = match netns {
            None => common::app(),
            Some(ns) => {
                let mut cmd = std::process::Command::new("ip");
                cmd.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_app")]);
                common::app_env(&mut cmd);
                cmd
            }
        };
        if matches!(out, Output::S3 { .. }) {
            common::s3::env(&mut cmd);
        }
        let output = out.arg();
        let child = cmd
            .args(common::consume_args(
                topic,
                &output,
                &[
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
                ],
            ))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(work)
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
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

/// Polls `cond` every 100 ms (`common::wait_for`) for at most `within`; panics with `what` and
/// the members' logs.
fn wait_with_logs(what: &str, within: Duration, members: &[&Member], cond: impl FnMut() -> bool) {
    if !common::wait_for(within, cond) {
        let logs: Vec<String> = members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log(), 4000)))
            .collect();
        panic!("{what}: not within {within:?}\n{}", logs.join("\n"));
    }
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Fills a fresh 6-partition topic; returns the record count and the number of distinct
/// one-minute windows of their event times.
async fn fill(topic: &str) -> (u64, usize) {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    kafka.ensure_topic(topic, PARTITIONS, 1).await.unwrap();
    let schema = Schema::banco_central();
    let per_partition = per_partition();
    let mut windows = std::collections::BTreeSet::<i64>::new();
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    for p in 0..PARTITIONS {
        let handle = common::partition(&kafka, topic, p).await;
        let mut batch = Vec::new();
        for i in 0..per_partition {
            // Forward through the windows with a few seconds of disorder.
            let forward = (i as i64 * WINDOWS * 60_000) / per_partition as i64;
            let jitter = ((i * 7919 + p as u64 * 31) % 6_000) as i64 - 3_000;
            let event = base + forward + jitter;
            windows.insert(event.div_euclid(60_000));
            batch.push(common::synthetic_record(&schema, i, event));
            if batch.len() == 4000 {
                handle
                    .produce(std::mem::take(&mut batch), Compression::Lz4)
                    .await
                    .unwrap();
            }
        }
        handle.produce(batch, Compression::Lz4).await.unwrap();
    }
    (per_partition * PARTITIONS as u64, windows.len())
}

/// Stops `members` with SIGTERM (each must exit 0), then checks the output: every
/// (partition, offset) exactly once, a `_SUCCESS` per window listing all partitions whose
/// manifests add up to the table, and the Delta readers reading every row of the windows once.
fn stop_and_check(
    members: Vec<Member>,
    out: &Output,
    work: &Path,
    (total, windows): (u64, usize),
    what: &str,
) {
    for m in &members {
        m.sigterm();
    }
    for m in members {
        m.wait_clean(Duration::from_secs(60));
    }
    let dir = out.readable(work);
    common::output::assert_committed_exactly_once(&dir, total, what);
    let table = scalar(
        &dir,
        &format!("SELECT count(*) FROM {}", common::output::TABLE),
    );
    let mut manifest_rows = 0u64;
    let mut markers = 0;
    for entry in std::fs::read_dir(&dir).unwrap().filter_map(|d| d.ok()) {
        let marker = entry.path().join("_SUCCESS");
        if !marker.is_file() {
            continue;
        }
        markers += 1;
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
    assert_eq!(markers, windows, "a marker per window");
    assert_eq!(
        manifest_rows as i64, table,
        "the manifests list exactly the table's rows"
    );
    // The Delta table the members published to, as deltalake, polars and DuckDB read it (from
    // S3 for an S3 output): every row of the windows (neither late rows nor dead letters), none
    // twice.
    let side = |glob: &str, source: &str| {
        if common::output::has(&dir, glob) {
            common::output::count(&dir, source) as u64
        } else {
            0
        }
    };
    let late = side("_late/*/*.pq", common::output::LATE);
    let dead = side("_dead_letter/*.pq", common::output::DEAD);
    common::delta::assert_rows(&out.arg(), total - late - dead, what);
}

/// Waits until everything is committed and every window has its marker.
fn wait_finished(out: &Output, (total, windows): (u64, usize), members: &[&Member]) {
    wait_with_logs(
        "every record committed",
        Duration::from_secs(300),
        members,
        || out.committed() >= total,
    );
    // Idle partitions follow the clock (Kafka-timestamp event time), so every window closes;
    // a marker needs every partition's checkpoint past the window, in whichever member.
    wait_with_logs(
        "a success marker for every window",
        Duration::from_secs(90),
        members,
        || out.markers() >= windows,
    );
}

/// One scenario: a fresh topic of its own, its group, a work directory and the shared output.
struct Scenario {
    topic: String,
    group: String,
    /// Records and distinct windows in the topic.
    expected: (u64, usize),
    work: tempfile::TempDir,
    out: Output,
    /// A Delta reader polling the table through the whole scenario.
    poller: common::delta::Poller,
}

impl Scenario {
    async fn new(tag: &str, out: impl FnOnce(&Path) -> Output) -> Scenario {
        let topic = random_topic(tag);
        let expected = fill(&topic).await;
        let work = tempfile::tempdir().unwrap();
        let out = out(work.path());
        let poller = common::delta::Poller::start(&out.arg());
        Scenario {
            group: format!("{topic}-g"),
            topic,
            expected,
            work,
            out,
            poller,
        }
    }

    fn total(&self) -> u64 {
        self.expected.0
    }

    fn member(&self, name: &'static str) -> Member {
        self.member_in(None, name)
    }

    fn member_in(&self, netns: Option<&netns::Netns>, name: &'static str) -> Member {
        let dir = self.work.path();
        Member::start_in(netns, name, &self.topic, &self.group, &self.out, dir)
    }

    /// Members a, b (in `netns` when given) and c, once each has partitions.
    fn three(&self, netns: Option<&netns::Netns>) -> (Member, Member, Member) {
        let (a, b, c) = (
            self.member("a"),
            self.member_in(netns, "b"),
            self.member("c"),
        );
        wait_with_logs(
            "every member gets partitions",
            Duration::from_secs(60),
            &[&a, &b, &c],
            || a.assigned_nonempty() && b.assigned_nonempty() && c.assigned_nonempty(),
        );
        (a, b, c)
    }

    /// Waits until `share` percent of the records are committed.
    fn wait_committed(&self, share: u64, members: &[&Member]) {
        let target = self.total() * share / 100;
        wait_with_logs(
            &format!("{share}% of the records committed"),
            Duration::from_secs(240),
            members,
            || self.out.committed() >= target,
        );
    }

    /// Waits for everything to be committed and marked, then [`stop_and_check`].
    fn finish(self, members: Vec<Member>, what: &str) {
        let refs: Vec<&Member> = members.iter().collect();
        wait_finished(&self.out, self.expected, &refs);
        // While members were killed, frozen or cut off, no snapshot held a row twice.
        self.poller.stop(5, what);
        if let Ok(keep) = std::env::var("RECLAMACOES_KEEP_LOGS") {
            let dest = Path::new(&keep).join(&self.topic);
            std::fs::create_dir_all(&dest).unwrap();
            for e in std::fs::read_dir(self.work.path()).unwrap().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
                }
            }
        }
        stop_and_check(members, &self.out, self.work.path(), self.expected, what);
    }
}

/// Waits until both survivors were assigned again since `before` (their assignment counts);
/// returns the time since `since`.
fn wait_takeover(a: &Member, c: &Member, before: (usize, usize), since: Instant) -> Duration {
    wait_with_logs(
        "the survivors are assigned the lost member's partitions",
        Duration::from_secs(60),
        &[a, c],
        || a.assignments() > before.0 && c.assignments() > before.1,
    );
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_through_a_sigkill_and_a_new_member_exactly_once() {
    let run = Scenario::new("group-consume", Output::local).await;
    let (a, mut b, c) = run.three(None);

    // SIGKILL one member mid-stream: its partitions go to the others once its session (6 s)
    // expires, and the new owners resume from its last checkpoint.
    run.wait_committed(33, &[&a, &b, &c]);
    let before = (a.assignments(), c.assignments());
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let killed_at = run.out.committed();
    eprintln!("SIGKILLed b at {killed_at} of {} committed", run.total());
    assert!(killed_at < run.total(), "b was killed mid-stream");
    let takeover = wait_takeover(&a, &c, before, killed);
    eprintln!(
        "takeover after SIGKILL (session timeout 6 s): {:.1} s",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(6 + 5),
        "a dead member's partitions move within the session timeout plus a few seconds, not {takeover:?}"
    );

    // A fourth member joins: the group rebalances again and it gets partitions.
    let d = run.member("d");
    wait_with_logs(
        "the new member gets partitions",
        Duration::from_secs(60),
        &[&a, &c, &d],
        || d.assigned_nonempty(),
    );
    wait_finished(&run.out, run.expected, &[&a, &c, &d]);

    // Kafka's own tool shows the group: the three live members and, once the last commits are
    // in, no lag (the group's offsets are for display and follow the checkpoints).
    let describe = tokio::task::spawn_blocking({
        let group = run.group.clone();
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
    wait_with_logs(
        "the group's committed offsets reach the end",
        Duration::from_secs(30),
        &[&a, &c, &d],
        || {
            let describe = common::groups::consumer_groups(&run.group, &["--describe"]);
            common::groups::table(&describe, "GROUP")
                .iter()
                .all(|r| r["LAG"] == "0")
        },
    );
    run.finish(vec![a, c, d], "a SIGKILL and two rebalances");
}

/// One member SIGKILLed and restarted four times, a fourth member added and later stopped, all
/// while the records stream: the kills land at committed-progress targets, so mid-stream on
/// any machine.
async fn churn(out: impl FnOnce(&Path) -> Output, tag: &str) {
    let run = Scenario::new(tag, out).await;
    let (a, mut b, c) = (run.member("a"), run.member("b"), run.member("c"));
    let mut d: Option<Member> = None;
    let mut kills = 0;
    for (step, share) in [15u64, 30, 45, 60, 75].into_iter().enumerate() {
        let members: Vec<&Member> = [&a, &b, &c].into_iter().chain(d.as_ref()).collect();
        run.wait_committed(share, &members);
        match step {
            1 => d = Some(run.member("d")),
            3 => {
                let leaving = d.take().expect("d was added");
                leaving.sigterm();
                leaving.wait_clean(Duration::from_secs(60));
            }
            _ => {}
        }
        if run.out.committed() < run.total() {
            b.child.kill().unwrap();
            b.child.wait().unwrap();
            kills += 1;
            eprintln!(
                "step {step}: SIGKILLed b at {} of {}",
                run.out.committed(),
                run.total()
            );
            b = run.member("b");
        }
    }
    assert!(kills >= 4, "only {kills} kills landed mid-stream");
    run.finish(
        vec![a, b, c],
        &format!("{kills} SIGKILLs, a member added and removed"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_sigkills_restarts_and_a_member_added_and_removed_stays_exactly_once() {
    churn(Output::local, "group-churn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_into_s3_stays_exactly_once() {
    churn(|_| Output::s3("group-churn"), "group-churn-s3").await;
}

/// A member frozen (SIGSTOP) for longer than its session timeout is a zombie: the group gives
/// its partitions to the others. When it runs again its lease has expired, so it reports them
/// lost and drops its buffers; whatever it might still commit is fenced by the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_loses_its_partitions_and_writes_nothing_twice() {
    let run = Scenario::new("group-zombie", Output::local).await;
    let (a, mut b, c) = run.three(None);
    run.wait_committed(25, &[&a, &b, &c]);
    let pid = b.child.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    let before = (a.assignments(), c.assignments());
    signal("-STOP");
    wait_takeover(&a, &c, before, Instant::now());
    // Let the new owners write for a while under the new generation, then wake the zombie.
    std::thread::sleep(Duration::from_secs(2));
    signal("-CONT");
    // Frozen while it held them, it learns from its expired lease (revoked: Lost); frozen while
    // it was draining a rebalance, from the checkpoint that fences its commits. Either way it
    // stays up and writes nothing the new owners did not.
    wait_with_logs(
        "the woken member lets go of its partitions",
        Duration::from_secs(30),
        &[&b],
        || {
            let log = b.log();
            log.contains("reason=Lost") || log.contains("Partition taken over by another instance")
        },
    );
    for line in b
        .log()
        .lines()
        .filter(|l| l.contains("revoked") || l.contains("taken over"))
    {
        eprintln!("b: {line}");
    }
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "the woken member keeps running:\n{}",
        b.log()
    );
    run.finish(vec![a, b, c], "a frozen member woken up");
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

/// A member on a "separate host" (its own network namespace) cut off from the broker, MariaDB
/// and the S3 output while it holds partitions: they move to the others; its lease runs out and
/// it reports them lost; when the link comes back, whatever it still had in flight is fenced, so
/// no checkpoint of its old writer survives the takeover, and every record is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_network_is_fenced_and_writes_nothing_twice() {
    let ports = [
        common::brokers()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap(),
        common::mysql_url()
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .parse::<u16>()
            .unwrap(),
        common::s3::endpoint()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap(),
    ];
    let ns = match netns::Netns::create(&ports) {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!(
                "NOT RUN: a_member_cut_off_from_the_network_is_fenced_and_writes_nothing_twice \
                 needs network namespaces: {why}. Run the tests as root to run it."
            );
            return;
        }
    };
    let run = Scenario::new("group-netns", |_| Output::s3("group-netns")).await;
    let (a, b, c) = run.three(Some(&ns));
    run.wait_committed(25, &[&a, &b, &c]);
    wait_with_logs("b is consuming", Duration::from_secs(30), &[&b], || {
        b.log().contains("Consuming")
    });
    // b's writer in the generation it holds now.
    let writer_of_b = b
        .log()
        .lines()
        .rev()
        .find_map(|l| {
            l.contains("Consuming")
                .then(|| l.split("writer=").nth(1))
                .flatten()
                .and_then(|w| w.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("b logged its writer");
    let before = (a.assignments(), c.assignments());
    ns.cut();
    let takeover = wait_takeover(&a, &c, before, Instant::now());
    eprintln!(
        "takeover after the cut (session timeout 6 s): {:.1} s",
        takeover.as_secs_f64()
    );
    wait_with_logs(
        "the cut-off member reports its partitions lost",
        Duration::from_secs(30),
        &[&b],
        || b.log().contains("reason=Lost"),
    );
    // The new owners write under the new generation for a while; then the link comes back and
    // b's stalled requests (a commit, a heartbeat) may go through.
    std::thread::sleep(Duration::from_secs(3));
    ns.restore();
    wait_finished(&run.out, run.expected, &[&a, &b, &c]);
    let latest = match &run.out {
        Output::S3 { store, .. } => {
            let store = store.clone();
            std::thread::spawn(move || {
                reclamacoes::checkpoint::store::read_latest(&store).expect("read checkpoints")
            })
            .join()
            .unwrap()
        }
        Output::Local(_) => unreachable!(),
    };
    assert_eq!(latest.len(), PARTITIONS as usize);
    for (cp, _) in &latest {
        assert_ne!(
            cp.writer, writer_of_b,
            "partition {}: the newest checkpoint is by the writer b had before it was cut off",
            cp.partition
        );
    }
    run.finish(vec![a, b, c], "a member cut off from the network and back");
}
