//! The static musl binary (`make static`, scripts/static.sh) is statically linked and runs the
//! pipeline: produce the fixtures to the real Kafka, consume them with MySQL enrichment, inspect.
//!
//! Building it is slow, so an existing target/x86_64-unknown-linux-musl/dist/app is reused when
//! it is newer than every source file (src/, Cargo.toml, Cargo.lock); otherwise scripts/static.sh
//! builds it, and the test fails with its message if the musl target cannot be installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use common::random_topic;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn newest_mtime(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut newest = meta.modified().unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            newest = newest.max(newest_mtime(&entry.unwrap().path()));
        }
    }
    newest
}

/// The static binary, built by scripts/static.sh when missing or older than the sources (once
/// for the tests of this file).
fn static_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_if_stale).clone()
}

fn build_if_stale() -> PathBuf {
    let root = common::repo_root();
    let bin = root.join("target").join(TARGET).join("dist/app");
    let sources = ["src", "Cargo.toml", "Cargo.lock"]
        .iter()
        .map(|p| newest_mtime(&root.join(p)))
        .max()
        .unwrap();
    let fresh = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= sources);
    if !fresh {
        eprintln!(
            "building the static binary with scripts/static.sh ({} is missing or older than the sources; this takes minutes)",
            bin.display()
        );
        let out = Command::new(root.join("scripts/static.sh"))
            .current_dir(&root)
            .output()
            .expect("run scripts/static.sh");
        assert!(
            out.status.success(),
            "scripts/static.sh failed, so the static binary cannot be tested. If it says the musl \
             target cannot be installed, install it (rustup target add {TARGET}; apt-get install \
             musl-tools) and rerun.\n--- stdout\n{}\n--- stderr, its error lines\n{}\n--- stderr (last 4000 bytes)\n{}",
            String::from_utf8_lossy(&out.stdout),
            error_lines(&out.stderr),
            tail(&out.stderr, 4000)
        );
    }
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

/// The compiler's and linker's verdicts (`error…`, a signal, a full disk), each cut to 300
/// characters: the tail alone can be one rustc command line.
fn error_lines(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("error")
                || l.contains("ERROR")
                || l.contains("signal")
                || l.contains("No space left")
                || l.contains("collect2")
        })
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(n);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Runs the static binary `bin` as `common::app` runs the test build (the shared services).
fn run(bin: &Path, args: &[&str], cwd: &Path) -> Output {
    let out = common::app_env(Command::new(bin).args(args).current_dir(cwd))
        .output()
        .expect("run the static binary");
    assert!(
        out.status.success(),
        "static app {args:?} failed with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What the shipped binary may weigh, stripped (issue 24: under 30 MB with the Delta table).
const MAX_STRIPPED_BYTES: u64 = 30_000_000;

#[test]
fn static_binary_stripped_stays_under_30_mb() {
    let bin = static_binary();
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("app");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .output()
        .expect("`strip` (binutils) is installed: apt-get install binutils");
    assert!(
        out.status.success(),
        "strip {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&stripped).unwrap().len();
    assert!(
        size < MAX_STRIPPED_BYTES,
        "the stripped static binary is {size} bytes, over {MAX_STRIPPED_BYTES}: a new dependency \
         or a hot crate's code grew it. Find what with `nm --size-sort -S --demangle=rust {}`, \
         and keep code that never runs per record at opt-level \"z\" (Cargo.toml, profile.release.package)",
        bin.display()
    );
}

#[tokio::test]
async fn static_binary_is_static_and_runs_the_pipeline() {
    common::require_kafka().await;
    common::require_mysql().await;
    let bin = static_binary();

    let file = Command::new("file")
        .arg("-b")
        .arg(&bin)
        .output()
        .expect("`file` is installed");
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{} is not static: {file}",
        bin.display()
    );
    let ldd = Command::new("ldd")
        .arg(&bin)
        .output()
        .expect("`ldd` is installed");
    let ldd = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "ldd lists shared libraries: {ldd}"
    );

    let topic = random_topic("static");
    let work = tempfile::tempdir().unwrap();
    let fixtures = common::fixtures();
    let produced = run(
        &bin,
        &common::produce_args(&topic, "2", &fixtures),
        work.path(),
    );
    let produced = String::from_utf8_lossy(&produced.stdout);
    assert!(
        produced.contains("rows sent (acknowledged): 80"),
        "{produced}"
    );
    // An independent client sees them.
    assert_eq!(common::kcat_read_all(&topic).len(), 80);

    let out = work.path().join("output");
    let consumed = run(
        &bin,
        &common::consume_args(&topic, &out, &common::BOUNDED),
        work.path(),
    );
    let consumed = String::from_utf8_lossy(&consumed.stdout);
    assert!(consumed.contains("rows written: 80"), "{consumed}");
    // Enrichment over MySQL (TLS-capable client, pure Rust) works from the static binary: the 44
    // fixture rows whose CNPJ is in sql/seed.sql.
    assert!(consumed.contains("enrichment: 44 hits"), "{consumed}");

    let inspected = run(
        &bin,
        &["inspect", "--json", out.to_str().unwrap()],
        work.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(report["total_rows"], 80);
    // The Delta table, written by the kernel inside the static binary (built without
    // unwinding and with fat LTO, profile `dist`), holds every row.
    assert_eq!(report["delta"]["rows"], 80, "{report}");
    // The files read back with the library's own reader too.
    let mut rows = 0;
    for window in std::fs::read_dir(&out).unwrap() {
        let window = window.unwrap().path();
        if !window
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("window=")
        {
            continue;
        }
        for file in std::fs::read_dir(&window).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "parquet") {
                let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
                let suffix = |n: u64| {
                    let start = bytes.len().saturating_sub(n as usize);
                    Ok::<_, ()>(Some(bytes.slice(start..)))
                };
                rows += reclamacoes::output::parquet::footer_row_count(suffix)
                    .expect("a table file with a readable footer");
            }
        }
    }
    assert_eq!(rows, 80);
}
