//! Security: secrets stay out of logs, errors and `--help`; Kafka TLS and SASL (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512) work against a real broker and fail clearly; TLS to MySQL is
//! enforced when asked for; no record value ever becomes part of a file path.
//!
//! The TLS/SASL broker is a PRIVATE single-node Kafka started by this test (free ports, a
//! temporary directory, a throw-away CA made with `openssl`, SCRAM users added at format time);
//! the shared services are only read from.

mod faultkit;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use faultkit::common::{
    self, brokers as shared_brokers, consume_args, mysql_url as shared_mysql_url,
};
use faultkit::secure_broker::{start_secure_broker, PLAIN_PASSWORD, SCRAM_PASSWORD};
use faultkit::{app, run_bounded, walk, Finished};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::{Schema, Value};
use rskafka::record::Record;

const HANG_GUARD: Duration = Duration::from_secs(300);

fn random_topic(prefix: &str) -> String {
    common::random_topic(&format!("security-{prefix}"))
}

fn assert_absent(output: &Finished, secret: &str, what: &str) {
    let both = output.both();
    assert!(
        !both.contains(secret),
        "{what}: the secret `{secret}` appears in the output:\n{both}"
    );
}

// ---------------------------------------------------------------------------------------------
// Passwords never appear
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn passwords_never_appear_in_logs_errors_or_help() {
    let brokers = shared_brokers();
    let kafka = faultkit::connect(&brokers).await;
    let topic = random_topic("passwords");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let consume = |url: &str, log: &str| {
        run_bounded(
            app(&brokers, url)
                .env("RUST_LOG", log)
                .args(consume_args(
                    &topic,
                    &out,
                    &["--until-caught-up", "--mysql-timeout", "2s"],
                ))
                .current_dir(work.path()),
            HANG_GUARD,
        )
    };

    // 1. An unreachable host, with every log level on.
    let secret = "Unreachable-S3cret-pw";
    let url = format!("mysql://someone:{secret}@127.0.0.1:1/db");
    let done = consume(&url, "trace");
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("127.0.0.1:1") && done.stderr.contains("someone:***@"),
        "the error names the server (password redacted):\n{}",
        done.stderr
    );
    assert_absent(&done, secret, "unreachable MySQL, RUST_LOG=trace");

    // 2. The real server with a wrong password.
    let secret = "Wr0ng-Passw0rd-x";
    let real = shared_mysql_url();
    let url = real.replacen(":reclamacoes@", &format!(":{secret}@"), 1);
    assert_ne!(url, real, "MYSQL_URL has the expected shape");
    let done = consume(&url, "debug");
    assert!(!done.status.success());
    assert!(
        done.stderr.to_lowercase().contains("access denied"),
        "the error says why:\n{}",
        done.stderr
    );
    assert_absent(&done, secret, "wrong MySQL password, RUST_LOG=debug");

    // 3. A password with URL-special characters (percent-encoded in the URL).
    let secret = "p%40ss%2Fw0rd";
    let done = consume(&format!("mysql://someone:{secret}@127.0.0.1:1/db"), "debug");
    assert_absent(&done, secret, "percent-encoded password");
    assert_absent(&done, "p@ss/w0rd", "decoded password");

    // 4. --help never shows environment values (clap would print `[env: MYSQL_URL=...]`).
    for sub in ["consume", "produce"] {
        let help = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_app"))
                .args([sub, "--help"])
                .env("MYSQL_URL", "mysql://u:Help-S3cret@h:3306/d")
                .env("KAFKA_SASL_PASSWORD", "Sasl-Help-S3cret")
                .env("KAFKA_SASL_USERNAME", "alice")
                .env("KAFKA_BROKERS", "broker-with-S3cret-in-name:9092"),
            HANG_GUARD,
        );
        assert!(help.status.success());
        assert_absent(&help, "Help-S3cret", &format!("{sub} --help"));
        assert_absent(&help, "Sasl-Help-S3cret", &format!("{sub} --help"));
        assert!(
            !help.stdout.contains("mysql://u:"),
            "{sub} --help shows the MySQL URL from the environment:\n{}",
            help.stdout
        );
    }

    // 5. The Kafka SASL password, against a broker that does not speak SASL.
    let secret = "Kafka-Sasl-S3cret";
    let done = run_bounded(
        app(&brokers, &shared_mysql_url())
            .env("RUST_LOG", "trace")
            .env("KAFKA_SASL_PASSWORD", secret)
            .args([
                "produce",
                "--topic",
                &topic,
                "--timeout",
                "3s",
                "--kafka-sasl-mechanism",
                "scram-sha-256",
                "--kafka-sasl-username",
                "alice",
            ])
            .arg(common::fixtures())
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(!done.status.success(), "{}", done.both());
    assert_absent(&done, secret, "Kafka SASL password");
}

#[test]
fn sasl_options_never_print_the_password() {
    let options = reclamacoes::kafka::SaslOptions {
        mechanism: reclamacoes::kafka::SaslMechanism::Plain,
        username: "alice".into(),
        password: "Debug-S3cret".into(),
    };
    let config = reclamacoes::kafka::KafkaConfig {
        security: reclamacoes::kafka::KafkaSecurity {
            tls: None,
            sasl: Some(options),
        },
        ..Default::default()
    };
    let shown = format!("{config:?} {config:#?}");
    assert!(
        !shown.contains("Debug-S3cret") && shown.contains("alice"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// A private broker with SASL_PLAINTEXT, SSL and SASL_SSL listeners (faultkit::secure_broker)
// ---------------------------------------------------------------------------------------------

/// `app` against the secure broker at `port`; `password` goes to the environment only (the
/// security `flags` are added after the subcommand by the callers).
fn secure_app(port: u16, flags: &[&str], password: Option<&str>) -> Command {
    let mut cmd = app(&format!("127.0.0.1:{port}"), &shared_mysql_url());
    cmd.env_remove("KAFKA_SASL_PASSWORD");
    let _ = flags;
    if let Some(p) = password {
        cmd.env("KAFKA_SASL_PASSWORD", p);
    }
    cmd
}

fn produce_fixtures(port: u16, topic: &str, flags: &[&str], password: Option<&str>) -> Finished {
    let work = tempfile::tempdir().unwrap();
    run_bounded(
        secure_app(port, flags, password)
            .args([
                "produce",
                "--topic",
                topic,
                "--timeout",
                "5s",
                "--retry-timeout",
                "5s",
            ])
            .args(flags)
            .arg(common::fixtures())
            .current_dir(work.path()),
        HANG_GUARD,
    )
}

fn consume_all(
    port: u16,
    topic: &str,
    flags: &[&str],
    password: Option<&str>,
    out: &Path,
) -> Finished {
    run_bounded(
        secure_app(port, flags, password)
            .args(consume_args(topic, out, &common::BOUNDED))
            .args(["--timeout", "5s"])
            .args(flags),
        HANG_GUARD,
    )
}

#[tokio::test]
async fn kafka_tls_and_sasl_against_a_real_broker() {
    faultkit::connect(&shared_brokers()).await; // the jars and MySQL come from `make up`
    let broker = start_secure_broker();
    let topic = random_topic("tls-sasl");
    let kafka = faultkit::connect(&format!("127.0.0.1:{}", broker.plaintext)).await;
    kafka.ensure_topic(&topic, 2, 1).await.unwrap();
    let ca = broker.ca().display().to_string();
    let work = tempfile::tempdir().unwrap();

    // SASL_PLAINTEXT with PLAIN: produce the 80 fixture rows.
    let plain = [
        "--kafka-sasl-mechanism",
        "plain",
        "--kafka-sasl-username",
        "alice",
    ];
    let done = produce_fixtures(broker.sasl_plaintext, &topic, &plain, Some(PLAIN_PASSWORD));
    assert!(done.status.success(), "SASL PLAIN produce\n{}", done.both());
    assert!(
        done.stdout.contains("rows sent (acknowledged): 80"),
        "{}",
        done.stdout
    );
    assert_absent(&done, PLAIN_PASSWORD, "SASL PLAIN produce");

    // Wrong password: a clear authentication error, without the password.
    let done = produce_fixtures(broker.sasl_plaintext, &topic, &plain, Some("Not-The-Pw9"));
    assert!(!done.status.success(), "{}", done.both());
    let line = done.error_line();
    assert!(
        line.contains(&format!("127.0.0.1:{}", broker.sasl_plaintext))
            && line.contains("SASL authentication failed"),
        "the error names the broker and the failed authentication:\n{}",
        done.stderr
    );
    assert_absent(&done, "Not-The-Pw9", "wrong SASL password");
    eprintln!("wrong SASL password -> {}", done.error_line());

    // No password in the environment: refused before connecting.
    let done = produce_fixtures(broker.sasl_plaintext, &topic, &plain, None);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("KAFKA_SASL_PASSWORD"),
        "{}",
        done.stderr
    );
    eprintln!("no SASL password -> {}", done.error_line());

    // SASL_PLAINTEXT with SCRAM-SHA-256: consume them.
    let scram256 = [
        "--kafka-sasl-mechanism",
        "scram-sha-256",
        "--kafka-sasl-username",
        "alice",
    ];
    let out = work.path().join("scram256");
    let done = consume_all(
        broker.sasl_plaintext,
        &topic,
        &scram256,
        Some(SCRAM_PASSWORD),
        &out,
    );
    assert!(
        done.status.success(),
        "SCRAM-SHA-256 consume\n{}",
        done.both()
    );
    assert!(done.stdout.contains("rows written: 80"), "{}", done.stdout);
    assert_absent(&done, SCRAM_PASSWORD, "SCRAM consume");

    // SSL with the test CA: produce 80 more.
    let tls = ["--kafka-ca-file", ca.as_str()];
    let done = produce_fixtures(broker.ssl, &topic, &tls, None);
    assert!(done.status.success(), "TLS produce\n{}", done.both());
    assert!(
        done.stdout.contains("rows sent (acknowledged): 80"),
        "{}",
        done.stdout
    );

    // SSL trusting only the public roots: the test CA is unknown, a clear error.
    let done = produce_fixtures(broker.ssl, &topic, &["--kafka-tls"], None);
    assert!(!done.status.success(), "{}", done.both());
    let line = done.error_line();
    assert!(
        line.contains(&format!("127.0.0.1:{}", broker.ssl))
            && line.contains("UnknownIssuer")
            && line.contains("--kafka-ca-file"),
        "the error names the broker, the certificate problem and what to do:\n{}",
        done.stderr
    );
    eprintln!("unknown CA -> {}", done.error_line());

    // A CA file that is not PEM.
    let bogus = work.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let done = produce_fixtures(
        broker.ssl,
        &topic,
        &["--kafka-ca-file", bogus.to_str().unwrap()],
        None,
    );
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("bogus.pem") && done.stderr.contains("no PEM certificate"),
        "{}",
        done.stderr
    );

    // Plaintext against the TLS port: an error within --timeout, not a hang.
    let done = produce_fixtures(broker.ssl, &topic, &[], None);
    assert!(!done.status.success(), "{}", done.both());
    eprintln!("plaintext to the TLS port -> {}", done.error_line());

    // SASL_SSL with SCRAM-SHA-512: everything (160 rows) from scratch.
    let mut both = vec!["--kafka-ca-file", ca.as_str()];
    both.extend([
        "--kafka-sasl-mechanism",
        "scram-sha-512",
        "--kafka-sasl-username",
        "alice",
    ]);
    let out = work.path().join("sasl_ssl");
    let done = consume_all(broker.sasl_ssl, &topic, &both, Some(SCRAM_PASSWORD), &out);
    assert!(done.status.success(), "SASL_SSL consume\n{}", done.both());
    assert!(done.stdout.contains("rows written: 160"), "{}", done.stdout);
    assert_absent(&done, SCRAM_PASSWORD, "SASL_SSL consume");
    eprintln!(
        "TLS/SASL broker: PLAIN, SCRAM-SHA-256 (SASL_PLAINTEXT), TLS with a private CA (SSL), \
         SCRAM-SHA-512 over TLS (SASL_SSL) all worked; wrong password, unknown CA, bad CA file \
         and plaintext-to-TLS failed clearly"
    );
}

#[tokio::test]
async fn mysql_require_ssl_is_enforced_not_silently_dropped() {
    // The local MariaDB has no TLS configured: asking for TLS must fail, never fall back to
    // plaintext.
    let brokers = shared_brokers();
    let kafka = faultkit::connect(&brokers).await;
    let topic = random_topic("mysql-tls");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let url = format!("{}?require_ssl=true", shared_mysql_url());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let done = run_bounded(
        app(&brokers, &url).args(consume_args(
            &topic,
            &out,
            &["--until-caught-up", "--mysql-timeout", "3s"],
        )),
        HANG_GUARD,
    );
    assert!(!done.status.success(), "{}", done.both());
    let lower = done.stderr.to_lowercase();
    assert!(
        lower.contains("tls") || lower.contains("ssl"),
        "the error says TLS is the problem:\n{}",
        done.stderr
    );
    assert_absent(&done, ":reclamacoes@", "MySQL TLS error");
}

// ---------------------------------------------------------------------------------------------
// Record values never become paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn record_values_never_become_file_paths() {
    let brokers = shared_brokers();
    let kafka = faultkit::connect(&brokers).await;
    let topic = random_topic("paths");
    kafka.ensure_topic(&topic, 1, 1).await.unwrap();
    let h = common::partition(&kafka, &topic, 0).await;
    let schema = Schema::banco_central();
    let evil = [
        "../../../../tmp/evil",
        "/etc/passwd",
        "..\\..\\windows",
        "window=1970-01-01T00:00:00Z",
        "_checkpoint/partition=0/gen-00000000000000000009.json",
        "a\0b",
        "part-0-0-0.parquet",
    ];
    let ts = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let mut records = Vec::new();
    for (i, text) in evil.iter().enumerate() {
        let mut values = vec![Value::Null; schema.fields.len()];
        values[0] = Value::Int(2025);
        values[1] = Value::Int(1);
        values[2] = Value::Str(text.to_string());
        values[3] = Value::Str(text.to_string());
        values[5] = Value::Str(text.to_string());
        let mut json = String::new();
        schema.write_json(
            &values,
            Some(&reclamacoes::schema::Source {
                file: text.to_string(),
                line: i as u64,
            }),
            &mut json,
        );
        records.push(Record {
            key: Some(text.as_bytes().to_vec()),
            value: Some(json.into_bytes()),
            headers: Default::default(),
            timestamp: ts + chrono::Duration::seconds(i as i64),
        });
        // And as an undecodable message (dead letter) with the same text as value.
        records.push(Record {
            key: Some(text.as_bytes().to_vec()),
            value: Some(text.as_bytes().to_vec()),
            headers: Default::default(),
            timestamp: ts,
        });
    }
    h.produce(records, Compression::None).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let done = run_bounded(
        app(&brokers, &shared_mysql_url())
            .args(consume_args(&topic, &out, &common::BOUNDED))
            .current_dir(work.path()),
        HANG_GUARD,
    );
    assert!(done.status.success(), "{}", done.both());
    assert!(done.stdout.contains("rows written: 7"), "{}", done.stdout);
    assert!(done.stdout.contains("dead letters: 7"), "{}", done.stdout);

    // Nothing outside the output directory, and every path inside is one the consumer names
    // from event time, partition numbers and offsets only.
    let top: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        top,
        vec!["output".to_string()],
        "nothing written next to the output"
    );
    // Every path is one the layout itself names (src/output/layout.rs).
    use reclamacoes::output::layout::{self, Destination, Entry};
    for file in walk(&out) {
        let rel = file
            .strip_prefix(&out)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let ok = match layout::classify(&rel) {
            Entry::Data {
                destination: Destination::Window(w) | Destination::Late(w),
                ..
            }
            | Entry::Success { window: w, .. } => {
                layout::window_label(w).starts_with("2026-02-01T00:0")
            }
            Entry::Data {
                destination: Destination::DeadLetter,
                ..
            }
            | Entry::Checkpoint { partition: 0, .. } => true,
            // The Delta table's log: names the table makes (versions), none from a record.
            _ => rel.strip_prefix("_delta_log/").is_some_and(|name| {
                name == "_last_checkpoint" || reclamacoes::output::delta::log_name(name).is_some()
            }),
        };
        assert!(ok, "unexpected path {rel}");
    }
}
