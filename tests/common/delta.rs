//! The Delta Lake table of a consumer output, read two ways: by three real readers
//! (`tests/delta_readers.py`: python `deltalake`, `polars.read_delta` and DuckDB's delta
//! extension, run with [`super::python`]), and as written (the commits of `_delta_log/`, one
//! JSON action a line). A local directory or an `s3://` URL of the shared S3 server
//! ([`super::s3`]): the readers get exactly that server's settings, as `app` does.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;

/// The log directory under the table root (`src/output/delta.rs`).
pub const LOG_DIR: &str = "_delta_log";

/// What one reader read: its rows, `rows - distinct (kafka_partition, kafka_offset)`, and the
/// version it read (`None` when the reader does not say).
#[derive(Debug, Clone, Deserialize)]
pub struct Read {
    pub rows: u64,
    pub duplicates: u64,
    pub version: Option<u64>,
}

/// One entry of the table's history (deltalake's `history()`).
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub operation: Option<String>,
}

/// What `tests/delta_readers.py` printed.
#[derive(Debug, Clone, Deserialize)]
pub struct Reads {
    pub deltalake: Read,
    pub polars: Read,
    pub duckdb: Read,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
    /// Data files in the snapshot read (deltalake).
    pub files: u64,
}

impl Reads {
    /// The three readers by name.
    pub fn readers(&self) -> [(&'static str, &Read); 3] {
        [
            ("deltalake", &self.deltalake),
            ("polars", &self.polars),
            ("duckdb", &self.duckdb),
        ]
    }

    /// The latest version deltalake read.
    pub fn version(&self) -> u64 {
        self.deltalake
            .version
            .expect("deltalake reports its version")
    }
}

/// The table at `table` (an output directory, or `s3://bucket/prefix` on the shared S3 server)
/// read by the three readers, at `version` (`None`: the latest). Fails with the readers' error
/// when one of them cannot read it.
pub fn read(table: &(impl AsRef<OsStr> + ?Sized), version: Option<u64>) -> Reads {
    let table = table.as_ref().to_str().expect("a UTF-8 table location");
    let python = super::python();
    let mut cmd = Command::new(&python);
    cmd.arg(super::repo_root().join("tests/delta_readers.py"))
        .arg(table);
    if let Some(v) = version {
        cmd.args(["--version", &v.to_string()]);
    }
    if table.starts_with("s3://") {
        super::services::s3::env(&mut cmd);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({e}): the Python readers are missing; run scripts/python-env.sh \
             (make test does)",
            python.display()
        )
    });
    assert!(
        out.status.success(),
        "tests/delta_readers.py {table} (version {version:?}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tests/delta_readers.py printed no readable JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts that every reader reads exactly `rows` rows of the latest snapshot of `table`, none
/// of them twice (`what` says which output); returns what they read.
pub fn assert_rows(table: &(impl AsRef<OsStr> + ?Sized), rows: u64, what: &str) -> Reads {
    let reads = read(table, None);
    eprintln!(
        "Delta readers ({what}): version {}, {} files, {:?}",
        reads.version(),
        reads.files,
        reads
            .readers()
            .map(|(name, r)| format!("{name} {} rows, {} duplicates", r.rows, r.duplicates))
    );
    for (name, r) in reads.readers() {
        assert_eq!(
            (r.rows, r.duplicates),
            (rows, 0),
            "{what}: {name} reads every row of the table once (rows, duplicates): {reads:?}"
        );
    }
    reads
}

/// A reader that keeps reading the table while writers run (`tests/delta_readers.py --poll`:
/// python `deltalake` opens the latest snapshot afresh every 0.3 s). [`Poller::stop`] returns
/// what it saw, so a test can assert that no snapshot, at any moment, held a row twice.
pub struct Poller {
    child: std::process::Child,
    table: String,
    /// Its stdout, drained by a thread (a full pipe would stall the reader).
    lines: std::thread::JoinHandle<String>,
}

/// One read of a [`Poller`]: a snapshot, or why it could not be read.
#[derive(Debug, Clone, Deserialize)]
pub struct PollRead {
    pub version: Option<u64>,
    pub rows: Option<u64>,
    pub duplicates: Option<u64>,
    pub error: Option<String>,
}

impl Poller {
    pub fn start(table: &(impl AsRef<OsStr> + ?Sized)) -> Poller {
        let table = table
            .as_ref()
            .to_str()
            .expect("a UTF-8 table location")
            .to_string();
        let mut cmd = Command::new(super::python());
        cmd.arg(super::repo_root().join("tests/delta_readers.py"))
            .arg(&table)
            .args(["--poll", "0.3"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if table.starts_with("s3://") {
            super::services::s3::env(&mut cmd);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start the polling Delta reader ({e}); run scripts/python-env.sh")
        });
        let mut stdout = child.stdout.take().expect("piped stdout");
        let lines = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Poller {
            child,
            table,
            lines,
        }
    }

    /// Stops the reader and asserts what every read saw: no duplicated (partition, offset), the
    /// version and the rows never going back, no failed read once the table was readable, and
    /// at least `min_reads` snapshots read. Returns the reads.
    pub fn stop(mut self, min_reads: usize, what: &str) -> Vec<PollRead> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let lines = std::mem::replace(&mut self.lines, std::thread::spawn(String::new));
        let text = lines.join().unwrap_or_default();
        let reads: Vec<PollRead> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let ok: Vec<&PollRead> = reads.iter().filter(|r| r.error.is_none()).collect();
        eprintln!(
            "polling Delta reader ({what}) on {}: {} snapshots read, versions {:?}..{:?}",
            self.table,
            ok.len(),
            ok.first().and_then(|r| r.version),
            ok.last().and_then(|r| r.version)
        );
        assert!(
            ok.len() >= min_reads,
            "{what}: the polling reader read {} snapshots, fewer than {min_reads}: {reads:?}",
            ok.len()
        );
        let first_ok = reads.iter().position(|r| r.error.is_none()).unwrap_or(0);
        if let Some(failed) = reads[first_ok..].iter().find(|r| r.error.is_some()) {
            panic!("{what}: a read of the table failed after it was readable: {failed:?}");
        }
        for r in &ok {
            assert_eq!(
                r.duplicates,
                Some(0),
                "{what}: a snapshot held a row twice: {r:?}"
            );
        }
        for pair in ok.windows(2) {
            assert!(
                pair[0].version <= pair[1].version && pair[0].rows <= pair[1].rows,
                "{what}: the table went back: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        reads
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One commit of the log: its version and its actions in order.
#[derive(Debug, Clone)]
pub struct LogCommit {
    pub version: u64,
    pub actions: Vec<Json>,
}

impl LogCommit {
    /// The actions of kind `kind` (`add`, `txn`, `metaData`, `commitInfo`, ...).
    pub fn actions<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
        self.actions.iter().filter_map(move |a| a.get(kind))
    }

    /// The add actions.
    pub fn adds(&self) -> impl Iterator<Item = &Json> + '_ {
        self.actions("add")
    }
}

/// Every commit (`<version>.json`) of the table in the directory `table`, by version.
pub fn log(table: &Path) -> Vec<LogCommit> {
    let dir = table.join(LOG_DIR);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} cannot be listed: {e}", dir.display()));
    let mut commits: Vec<LogCommit> = entries
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?;
            let version = name.strip_suffix(".json")?.parse().ok()?;
            let text = std::fs::read_to_string(&path).unwrap();
            let actions = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display()))
                })
                .collect();
            Some(LogCommit { version, actions })
        })
        .collect();
    commits.sort_by_key(|c| c.version);
    commits
}

/// An add action's statistics (its `stats` string, parsed).
pub fn stats(add: &Json) -> Json {
    let text = add["stats"]
        .as_str()
        .unwrap_or_else(|| panic!("an add without stats: {add}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("stats {text}: {e}"))
}

/// An add action's `numRecords`.
pub fn num_records(add: &Json) -> u64 {
    stats(add)["numRecords"]
        .as_u64()
        .unwrap_or_else(|| panic!("an add without numRecords: {add}"))
}

/// The local file of an add action of the table in the directory `table` (its path is a
/// URL-encoded path relative to the root: `window=…T14%3A00%3A00Z/…`).
pub fn add_file(table: &Path, add: &Json) -> PathBuf {
    let path = add["path"]
        .as_str()
        .unwrap_or_else(|| panic!("an add without a path: {add}"));
    table_file(table, path)
}

/// The files of the latest snapshot of the table in `table`, as the log says (every add, less
/// what a remove took away), and the sum of their `numRecords`.
pub fn live_files(table: &Path) -> (BTreeSet<PathBuf>, u64) {
    let mut files = std::collections::BTreeMap::new();
    for commit in log(table) {
        for add in commit.adds() {
            files.insert(add["path"].as_str().unwrap().to_string(), add.clone());
        }
        for remove in commit.actions("remove") {
            files.remove(remove["path"].as_str().unwrap());
        }
    }
    let rows = files.values().map(num_records).sum();
    let paths = files.values().map(|add| add_file(table, add)).collect();
    (paths, rows)
}

/// The Parquet files of the windows of the output directory `out` (`window=*/*.parquet`) that
/// are on disk.
pub fn window_files(out: &Path) -> BTreeSet<PathBuf> {
    glob::glob(&out.join("window=*/*.parquet").display().to_string())
        .unwrap()
        .map(|p| p.unwrap().canonicalize().unwrap())
        .collect()
}

/// The local file of a path relative to the table in the directory `table`, URL-encoded as in
/// the log.
fn table_file(table: &Path, relative: &str) -> PathBuf {
    let root = url::Url::from_directory_path(table.canonicalize().unwrap()).unwrap();
    root.join(relative)
        .unwrap_or_else(|e| panic!("table path {relative}: {e}"))
        .to_file_path()
        .unwrap()
}

/// The files the latest checkpoints of the output directory `out` carry as committed but not
/// yet in the table (`unpublished`), as local paths.
pub fn unpublished_files(out: &Path) -> BTreeSet<PathBuf> {
    let store = reclamacoes::output::LocalStore::new(out);
    reclamacoes::checkpoint::store::read_latest(&store)
        .unwrap_or_default()
        .iter()
        .flat_map(|(cp, _)| cp.unpublished.iter())
        .map(|f| table_file(out, &reclamacoes::output::delta::relative_path(f)))
        .collect()
}
