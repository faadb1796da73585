//! The services' settings, in one place: where the shared Kafka (`KAFKA_BROKERS`), MariaDB
//! (`MYSQL_URL`) and S3 server (`RECLAMACOES_S3_ENDPOINT`, local credentials) are, the Kafka jars
//! and log directory of `make up` (`.local/kafka`), the Python interpreter of the independent
//! readers (`RECLAMACOES_PYTHON`), and the environment every `app` process of a test gets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reclamacoes::kafka::KafkaConfig;

use super::repo_root;

/// The shared broker (`KAFKA_BROKERS`, as `make test` sets it, else the default).
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| reclamacoes::cli::DEFAULT_BROKERS.into())
}

/// The shared MariaDB (`MYSQL_URL`, else the default of `make up`).
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| reclamacoes::enrich::DEFAULT_MYSQL_URL.into())
}

/// The same MySQL URL with another port (the private instance of the fault tests).
pub fn mysql_url_on_port(port: u16) -> String {
    reclamacoes::enrich::DEFAULT_MYSQL_URL.replace(":3306/", &format!(":{port}/"))
}

pub fn kafka_config() -> KafkaConfig {
    kafka_config_for(&brokers())
}

/// How the tests reach `brokers`: a 10 s bound on every call.
pub fn kafka_config_for(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_string(),
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// The Python interpreter of the independent readers: `RECLAMACOES_PYTHON` when set, else
/// `.local/venv/bin/python` (made by `scripts/python-env.sh`, which `make test` runs).
pub fn python() -> PathBuf {
    std::env::var_os("RECLAMACOES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/venv/bin/python"))
}

/// The shared broker's directory of `make up` (`.local/kafka`: its jars under `libs`, its log
/// directory under `data`).
pub fn kafka_dir() -> PathBuf {
    repo_root().join(".local/kafka")
}

/// The Kafka jars of `make up`; fails with what to do when they are missing.
pub fn kafka_libs() -> PathBuf {
    let libs = kafka_dir().join("libs");
    assert!(
        libs.is_dir(),
        "Kafka jars not found at {} — run `make up` first (in a worktree: ln -s the main \
         checkout's .local/kafka/libs)",
        libs.display()
    );
    libs
}

/// `java` with every jar of `libs` on the class path (`-cp <libs>/*`); the JVM options, the
/// main class and its arguments follow.
pub fn kafka_java(libs: &Path) -> Command {
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(format!("{}/*", libs.display()));
    cmd
}

/// The `app` binary against the given services, with quiet logs and no topic from the
/// developer's environment.
pub fn app_with(brokers: &str, mysql_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_app"));
    app_env_for(&mut cmd, brokers, mysql_url);
    cmd
}

/// The `app` binary against the shared services ([`app_with`]).
pub fn app() -> Command {
    app_with(&brokers(), &mysql_url())
}

/// Sets on `cmd` (the `app` binary, or a wrapper that runs it: another build, `ip netns exec`,
/// a shell) the environment [`app_with`] gives it.
pub fn app_env_for<'a>(cmd: &'a mut Command, brokers: &str, mysql_url: &str) -> &'a mut Command {
    cmd.env("KAFKA_BROKERS", brokers)
        .env("MYSQL_URL", mysql_url)
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_TOPIC")
}

/// [`app_env_for`] the shared services.
pub fn app_env(cmd: &mut Command) -> &mut Command {
    app_env_for(cmd, &brokers(), &mysql_url())
}

/// The local S3 server's settings (versitygw, `scripts/s3.sh`): bucket, local-development
/// credentials, address, and the environment of an `app` that writes there, set explicitly so
/// that a developer's own AWS settings never leak into a test.
pub mod s3 {
    use std::process::Command;

    pub const BUCKET: &str = "reclamacoes";
    pub const ACCESS_KEY: &str = "reclamacoes";
    /// Local development only (scripts/s3.sh).
    pub const SECRET_KEY: &str = "reclamacoes-secret";
    pub const REGION: &str = "us-east-1";

    /// `RECLAMACOES_S3_ENDPOINT`, else `http://127.0.0.1:$S3_PORT` (7070).
    pub fn endpoint() -> String {
        std::env::var("RECLAMACOES_S3_ENDPOINT").unwrap_or_else(|_| {
            format!(
                "http://127.0.0.1:{}",
                std::env::var("S3_PORT").unwrap_or_else(|_| "7070".into())
            )
        })
    }

    /// Sets exactly the S3 settings of `endpoint` on `cmd` (and removes any other AWS_*).
    pub fn env_for<'a>(cmd: &'a mut Command, endpoint: &str, secret: &str) -> &'a mut Command {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
    }

    /// [`env_for`] the shared server with the right secret.
    pub fn env(cmd: &mut Command) -> &mut Command {
        env_for(cmd, &endpoint(), SECRET_KEY)
    }
}
