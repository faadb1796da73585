//! `--metrics-addr` against the real services: the `/metrics` numbers of a running `app consume`
//! agree with the Parquet it wrote (read back by DuckDB), `/healthz` turns 503 when the broker
//! goes away (a private Kafka started for this test, never the shared one), `app produce`
//! exposes its counters, and a taken address fails with a message naming it.

mod common;

use common::scalar_f64 as scalar;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, random_topic, run_app};
use reclamacoes::kafka::Kafka;

// ----------------------------------------------------------------------------- helpers

/// `/metrics` parsed into `name{labels}` -> value (comments skipped).
fn scrape(port: u16) -> Option<BTreeMap<String, f64>> {
    let (status, body) = common::http_get(port, "/metrics")?;
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    Some(parse_metrics(&body))
}

fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let value = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {l}"));
            (key.to_string(), value)
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("metric `{key}` missing; have: {:#?}", m.keys()))
}

/// A running `app` child: stdout/stderr go to files (shown on failure); SIGKILLed on drop if
/// still running.
struct App {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl App {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> App {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn app");
        App {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Panics with the output if the process already exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("app exited early with {status}\n{}", self.output());
        }
    }

    /// SIGTERM, then wait (bounded) for the exit, which must be clean (`consume` drains and
    /// commits); returns stdout.
    fn terminate_cleanly(&mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("app did not exit within 90 s of SIGTERM\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "consume did not exit cleanly on SIGTERM\n{}",
            self.output()
        );
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 200 ms (`common::poll`) until it returns `Some`, failing when the app
/// exits first, or after `bound` with `what` and the app's output. Bounds are generous: they
/// catch hangs, they do not measure speed.
fn wait_while_running<T>(
    app: &mut App,
    bound: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let found = common::poll(bound, Duration::from_millis(200), || {
        let found = check();
        if found.is_none() {
            app.assert_running();
        }
        found
    });
    found.unwrap_or_else(|| {
        panic!(
            "timed out after {bound:?} waiting for {what}\n{}",
            app.output()
        )
    })
}

/// (files, bytes) of the data files of one part of the output: the table (`window=*/*.parquet`,
/// `sub` = `None`), or `_late` / `_dead_letter` (`.pq` files, at any depth).
fn parquet_files(out: &Path, sub: Option<&str>) -> (u64, u64) {
    let (pattern, ext) = match sub {
        None => ("window=*/*.parquet".to_string(), "parquet"),
        Some(s) => (format!("{s}/**/*.pq"), "pq"),
    };
    let (mut files, mut bytes) = (0, 0);
    for p in glob::glob(&out.join(pattern).display().to_string())
        .unwrap()
        .flatten()
    {
        if p.extension().is_some_and(|x| x == ext) {
            files += 1;
            bytes += std::fs::metadata(&p).unwrap().len();
        }
    }
    (files, bytes)
}

fn produce_fixtures(brokers: &str, topic: &str, dir: &Path) {
    let out = common::app_with(brokers, &common::mysql_url())
        .args(common::produce_args(topic, "3", &common::fixtures()))
        .current_dir(dir)
        .output()
        .expect("run app produce");
    assert!(
        out.status.success(),
        "app produce to {brokers} failed\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn consume_cmd(brokers: &str, topic: &str, out: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = common::app_with(brokers, &common::mysql_url());
    let addr = format!("127.0.0.1:{port}");
    cmd.args(common::consume_args(topic, out, &["--metrics-addr", &addr]))
        .args(extra)
        .current_dir(out.parent().unwrap());
    cmd
}

// ----------------------------------------------------------------------------- private Kafka

/// A private Kafka (and MariaDB: `scripts/services.sh up` starts both) under
/// `.local/metrics-test` on free ports, stopped on drop. The shared services are never touched.
struct PrivateServices {
    env: Vec<(&'static str, String)>,
    kafka_port: u16,
    record: PathBuf,
}

impl PrivateServices {
    fn start() -> PrivateServices {
        let root = common::repo_root();
        let local = root.join(".local/metrics-test");
        let shared_libs = common::kafka_dir().join("libs");
        assert!(
            shared_libs.join(".pom.sha256").is_file(),
            "Kafka jars not found at {} — run `make up` first",
            shared_libs.display()
        );
        PrivateServices::stop_leftovers(&local);
        // Reuse the jars of `make up` (links, so `services.sh` does not resolve them again) and
        // format a fresh KRaft store: the ports change from run to run.
        let kafka = local.join("kafka");
        let _ = std::fs::remove_dir_all(&kafka);
        let libs = kafka.join("libs");
        std::fs::create_dir_all(&libs).unwrap();
        for entry in std::fs::read_dir(&shared_libs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if path.extension().is_some_and(|e| e == "jar") {
                std::os::unix::fs::symlink(&path, libs.join(name)).unwrap();
            }
        }
        std::fs::copy(shared_libs.join(".pom.sha256"), libs.join(".pom.sha256")).unwrap();

        let [kafka_port, controller_port, mysql_port] = common::free_ports::<3>();
        let env = vec![
            ("LOCAL_DIR", local.display().to_string()),
            ("SERVICES_MODE", "local".to_string()),
            ("KAFKA_PORT", kafka_port.to_string()),
            ("KAFKA_CONTROLLER_PORT", controller_port.to_string()),
            ("MYSQL_PORT", mysql_port.to_string()),
            ("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m".to_string()),
        ];
        let record = local.join("started-by-test");
        let _ = std::fs::remove_file(&record);
        let services = PrivateServices {
            env,
            kafka_port,
            record,
        };
        let out = services
            .script()
            .args(["up", "--record"])
            .arg(&services.record)
            .output()
            .expect("run scripts/services.sh");
        assert!(
            out.status.success(),
            "could not start the private Kafka/MariaDB under {} (scripts/services.sh up):\n{}",
            local.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        services
    }

    /// Stops what an earlier, interrupted run left running in the private directory (by its
    /// pid files; nothing else is touched).
    fn stop_leftovers(local: &Path) {
        if !local.exists() {
            return;
        }
        let _ = Command::new(common::repo_root().join("scripts/services.sh"))
            .env("LOCAL_DIR", local)
            .env("SERVICES_MODE", "local")
            .arg("down")
            .output();
    }

    fn script(&self) -> Command {
        let mut cmd = Command::new(common::repo_root().join("scripts/services.sh"));
        cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        // No private S3 server: `make test` exports S3=1 for the shared one (port 7070).
        cmd.env_remove("S3");
        cmd
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// Stops only the private Kafka.
    fn stop_kafka(&self) {
        let only = self.record.with_file_name("kafka-only");
        std::fs::write(&only, "kafka\n").unwrap();
        let out = self
            .script()
            .args(["down", "--only"])
            .arg(&only)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stopping the private Kafka failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        // Only what this test's `up` started (the record file), with the private env.
        let _ = self
            .script()
            .args(["down", "--only"])
            .arg(&self.record)
            .output();
    }
}

// ----------------------------------------------------------------------------- tests

#[tokio::test]
async fn consume_metrics_agree_with_the_parquet_output() {
    let kafka = common::require_kafka().await;
    common::require_mysql().await;
    let topic = random_topic("metrics");
    let work = tempfile::tempdir().unwrap();
    produce_fixtures(&common::brokers(), &topic, work.path());
    // Three undecodable messages on partition 1 become dead letters.
    kafka.ensure_topic(&topic, 3, 1).await.unwrap();
    common::produce_undecodable(&kafka, &topic, 1).await;

    let out = work.path().join("output");
    let port = free_port();
    // Without --until-caught-up it keeps running to be scraped. One-second windows, no allowed
    // lateness and a one-second idle timeout: once the input is read, the partitions go idle,
    // their watermarks follow the wall clock (--idle-advance, on for Kafka timestamps) and every
    // window closes while it runs; --max-buffer-bytes 1 stages row groups and writes dead
    // letters at once on the way.
    let mut app = App::spawn(
        consume_cmd(
            &common::brokers(),
            &topic,
            &out,
            port,
            &[
                "--window",
                "1s",
                "--allowed-lateness",
                "0s",
                "--idle-timeout",
                "1s",
                "--max-buffer-bytes",
                "1",
                "--checkpoint-interval",
                "1s",
            ],
        ),
        work.path(),
        "consume",
    );

    // During: healthy, and the counters move to where the input says they end.
    let (_, health) =
        wait_while_running(&mut app, Duration::from_secs(120), "/healthz 200", || {
            common::http_get(port, "/healthz").filter(|(s, _)| *s == 200)
        });
    assert!(health.starts_with("ok\n"), "{health}");
    let (_, text) = common::http_get(port, "/metrics").unwrap();
    assert!(
        text.contains("# TYPE reclamacoes_consume_records_read_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP reclamacoes_consume_partition_lag_records "));
    assert!(text.contains("# TYPE reclamacoes_consume_checkpoint_duration_seconds histogram"));
    let m = wait_while_running(
        &mut app,
        Duration::from_secs(120),
        "every record read and written",
        || {
            let m = scrape(port)?;
            let done = m.get("reclamacoes_consume_records_read_total") == Some(&83.0)
                && m.get("reclamacoes_consume_rows_written_total{output=\"window\"}")
                    == Some(&80.0)
                && m.get("reclamacoes_consume_files_written_total{output=\"dead_letter\"}")
                    .is_some_and(|n| *n >= 1.0)
                && m.get("reclamacoes_consume_buffered_bytes{buffer=\"windows\"}") == Some(&0.0)
                && m.get("reclamacoes_consume_buffered_bytes{buffer=\"dead_letter\"}")
                    == Some(&0.0)
                && m.get("reclamacoes_consume_buffered_bytes{buffer=\"late\"}") == Some(&0.0);
            done.then_some(m)
        },
    );

    // After: every number against the files on disk.
    let windows = common::output::TABLE;
    let parquet_rows = scalar(&out, &format!("SELECT count(*) FROM {windows}"));
    assert_eq!(parquet_rows, 80.0);
    assert_eq!(
        get(
            &m,
            "reclamacoes_consume_rows_written_total{output=\"window\"}"
        ),
        parquet_rows
    );
    let dead_rows = scalar(
        &out,
        &format!("SELECT count(*) FROM {}", common::output::DEAD),
    );
    assert_eq!(dead_rows, 3.0);
    assert_eq!(get(&m, "reclamacoes_consume_dead_letters_total"), dead_rows);
    let (late_files, late_bytes) = parquet_files(&out, Some("_late"));
    let late_rows = if late_files == 0 {
        0.0
    } else {
        scalar(
            &out,
            &format!("SELECT count(*) FROM {}", common::output::LATE),
        )
    };
    assert_eq!(
        get(
            &m,
            "reclamacoes_consume_rows_written_total{output=\"late\"}"
        ),
        late_rows
    );
    assert_eq!(
        get(
            &m,
            "reclamacoes_consume_late_records_total{action=\"side_output\"}"
        ),
        late_rows
    );

    // Files and bytes, per output and in the size histogram.
    let (window_files, window_bytes) = parquet_files(&out, None);
    let (dead_files, dead_bytes) = parquet_files(&out, Some("_dead_letter"));
    for (output, files, bytes) in [
        ("window", window_files, window_bytes),
        ("late", late_files, late_bytes),
        ("dead_letter", dead_files, dead_bytes),
    ] {
        assert_eq!(
            get(
                &m,
                &format!("reclamacoes_consume_files_written_total{{output=\"{output}\"}}")
            ),
            files as f64,
            "{output} files"
        );
        assert_eq!(
            get(
                &m,
                &format!("reclamacoes_consume_bytes_written_total{{output=\"{output}\"}}")
            ),
            bytes as f64,
            "{output} bytes"
        );
    }
    let all_files = (window_files + late_files + dead_files) as f64;
    let all_bytes = (window_bytes + late_bytes + dead_bytes) as f64;
    assert_eq!(
        get(&m, "reclamacoes_consume_file_size_bytes_count"),
        all_files
    );
    assert_eq!(
        get(&m, "reclamacoes_consume_file_size_bytes_sum"),
        all_bytes
    );
    assert_eq!(
        get(
            &m,
            "reclamacoes_consume_file_size_bytes_bucket{le=\"+Inf\"}"
        ),
        all_files
    );
    assert!(get(&m, "reclamacoes_consume_checkpoint_duration_seconds_count") >= 1.0);

    // Positions: offsets start at 0, so the next offsets add up to the records read; lag 0.
    let mut next_sum = 0.0;
    for p in 0..3 {
        let next = get(
            &m,
            &format!("reclamacoes_consume_partition_next_offset{{partition=\"{p}\"}}"),
        );
        let high = get(
            &m,
            &format!("reclamacoes_consume_partition_high_watermark{{partition=\"{p}\"}}"),
        );
        assert_eq!(next, high, "partition {p}: read to the end");
        assert_eq!(
            get(
                &m,
                &format!("reclamacoes_consume_partition_lag_records{{partition=\"{p}\"}}")
            ),
            0.0
        );
        next_sum += next;
    }
    assert_eq!(next_sum, 83.0);

    // Enrichment: hits are exactly the rows that got a bank name; every good row was looked up.
    let hits = get(&m, "reclamacoes_consume_enrichment_hits_total");
    let misses = get(&m, "reclamacoes_consume_enrichment_misses_total");
    assert_eq!(
        hits,
        scalar(
            &out,
            &format!("SELECT count(*) FROM {windows} WHERE banco_nome IS NOT NULL")
        )
    );
    assert_eq!(hits + misses, 80.0);
    assert!(get(&m, "reclamacoes_consume_enrichment_keys") > 0.0);
    assert!(get(&m, "reclamacoes_consume_enrichment_refreshes_total") >= 1.0);
    let age = get(
        &m,
        "reclamacoes_consume_enrichment_last_refresh_age_seconds",
    );
    assert!((0.0..3600.0).contains(&age), "refresh age {age}");
    assert_eq!(
        get(&m, "reclamacoes_consume_enrichment_refresh_failures_total"),
        0.0
    );

    // The partitions are idle by now: their watermarks follow the wall clock (Kafka timestamps,
    // --idle-advance auto, no lateness), past every event time seen and not past now.
    let hi = scalar(
        &out,
        &format!("SELECT epoch(max(kafka_timestamp)) FROM {windows}"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let watermark = get(&m, "reclamacoes_consume_watermark_timestamp_seconds");
    assert!(
        watermark >= hi && watermark <= now,
        "watermark {watermark} outside [{hi}, {now}]"
    );
    for p in 0..3 {
        assert_eq!(
            get(
                &m,
                &format!(
                    "reclamacoes_consume_partition_watermark_source{{partition=\"{p}\",source=\"idle_clock\"}}"
                )
            ),
            1.0,
            "partition {p} follows the clock"
        );
    }
    assert_eq!(get(&m, "reclamacoes_healthy"), 1.0);
    assert_eq!(
        get(
            &m,
            &format!(
                "reclamacoes_build_info{{command=\"consume\",version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    let stdout = app.terminate_cleanly();
    assert!(stdout.contains("rows written: 80"), "{stdout}");
    assert!(stdout.contains("dead letters: 3"), "{stdout}");
}

#[tokio::test]
async fn healthz_turns_503_when_the_broker_stops() {
    common::require_mysql().await;
    let services = PrivateServices::start();
    let brokers = services.brokers();
    let private = Kafka::connect(common::kafka_config_for(&brokers))
        .await
        .unwrap_or_else(|e| panic!("the private Kafka at {brokers} does not answer: {e}"));
    drop(private);

    let topic = random_topic("metrics-health");
    let work = tempfile::tempdir().unwrap();
    produce_fixtures(&brokers, &topic, work.path());
    let out = work.path().join("output");
    let port = free_port();
    let mut app = App::spawn(
        consume_cmd(&brokers, &topic, &out, port, &["--timeout", "2s"]),
        work.path(),
        "consume-private",
    );
    wait_while_running(
        &mut app,
        Duration::from_secs(120),
        "/healthz 200 and 80 records read",
        || {
            let healthy = common::http_get(port, "/healthz").is_some_and(|(s, _)| s == 200);
            let m = scrape(port)?;
            (healthy && m.get("reclamacoes_consume_records_read_total") == Some(&80.0))
                .then_some(())
        },
    );

    services.stop_kafka();
    let body = wait_while_running(
        &mut app,
        Duration::from_secs(180),
        "/healthz 503 after the broker stopped",
        || {
            common::http_get(port, "/healthz")
                .filter(|(s, _)| *s == 503)
                .map(|(_, b)| b)
        },
    );
    assert!(body.starts_with("unhealthy\n"), "{body}");
    assert!(body.contains("no successful fetch"), "{body}");
    assert!(body.contains(&brokers), "{body}");
    let m = scrape(port).expect("/metrics still answers");
    assert_eq!(get(&m, "reclamacoes_healthy"), 0.0);

    // It still shuts down cleanly: draining needs no broker.
    let stdout = app.terminate_cleanly();
    assert!(stdout.contains("records read: 80"), "{stdout}");
    drop(services);
}

#[tokio::test]
async fn produce_exposes_its_counters_while_it_runs() {
    common::require_kafka().await;
    let topic = random_topic("metrics-produce");
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = common::app();
    cmd.args([
        "produce",
        "--topic",
        &topic,
        "--rate",
        "20",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        common::fixtures().to_str().unwrap(),
    ])
    .current_dir(work.path());
    let mut app = App::spawn(cmd, work.path(), "produce");
    let m = wait_while_running(
        &mut app,
        Duration::from_secs(60),
        "rows acknowledged while paced",
        || {
            scrape(port).filter(|m| {
                m.get("reclamacoes_produce_rows_sent_total")
                    .is_some_and(|n| *n > 0.0)
            })
        },
    );
    assert!(get(&m, "reclamacoes_produce_batches_total") >= 1.0);
    assert!(get(&m, "reclamacoes_produce_bytes_sent_total") > 0.0);
    assert!(get(&m, "reclamacoes_produce_input_bytes_read_total") > 0.0);
    assert!(
        get(&m, "reclamacoes_produce_rows_read_total")
            >= get(&m, "reclamacoes_produce_rows_sent_total")
    );
    assert_eq!(get(&m, "reclamacoes_produce_rows_rejected_total"), 0.0);
    assert_eq!(get(&m, "reclamacoes_produce_retries_total"), 0.0);
    let (status, body) = common::http_get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rows acknowledged"), "{body}");
    // Paced at 20 rows/s it ends on its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = app.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "produce did not finish\n{}",
            app.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{}", app.output());
    let stdout = std::fs::read_to_string(&app.stdout).unwrap();
    assert!(stdout.contains("rows sent (acknowledged): 80"), "{stdout}");
}

#[test]
fn a_taken_metrics_address_fails_with_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    for args in [
        vec!["consume", "--topic", "unused", "--metrics-addr", &addr],
        vec!["produce", "--metrics-addr", &addr, "unused.csv"],
    ] {
        let out = run_app(&args, work.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot listen on --metrics-addr {addr}")),
            "{args:?}: {stderr}"
        );
    }
    drop(taken);
}
