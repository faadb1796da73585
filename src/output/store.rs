//! The I/O seam of the output: a small, blocking, object-store-shaped trait ([`Store`]) and its
//! local-disk implementation ([`LocalStore`]); object storage is `output::object`. Everything above it (Parquet encoding, staging,
//! checkpoints, recovery, `inspect`) speaks in keys relative to the output root and never in
//! paths, renames or fsyncs; a second storage (object storage) is a second implementation.
//!
//! The contract every implementation keeps:
//! - [`Store::put`] and [`ObjectWriter::finish`] make an object appear whole or not at all, and
//!   durably: when they return, a crash cannot lose it.
//! - [`Store::put_new`] is an atomic create-if-absent: of two writers racing on one key exactly
//!   one succeeds. Checkpoint generations are committed with it, which is what fences a second
//!   writer of the same partition.
//! - Nothing is ever visible half-written under its final key.
//!
//! The methods block: call them from `spawn_blocking` or a thread of our own. Errors say which
//! object, where, and what to do.
//!
//! [`MemStore`] keeps objects in memory for tests of the layers above (a fake at this trait
//! boundary); it can fail every call after a given number, to simulate a crash between any two
//! steps.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::delta::TableRoot;
use super::layout::{self, Key};

/// Errors of a store. Each names the object and its location and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no space left on the device writing {location}: {source}. Free space and restart; \
         committed output is intact"
    )]
    NoSpace { location: String, source: io::Error },
    #[error(
        "cannot {action} {location}: {source}. Check that the output is reachable and \
         writable, then restart; committed output is intact"
    )]
    Io {
        action: &'static str,
        location: String,
        source: io::Error,
    },
    /// Object storage refused or failed a request (`output::object`); the detail holds no
    /// secret.
    #[error("cannot {action} {target}: {detail}. {advice}")]
    Remote {
        action: &'static str,
        /// `<key> in <location>`, or the location alone.
        target: String,
        detail: String,
        advice: String,
    },
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn io(action: &'static str, location: impl fmt::Display, source: io::Error) -> Self {
        let location = location.to_string();
        // ENOSPC (28) and EDQUOT (122) on Linux; EFBIG (27) is "File too large".
        if source.kind() == io::ErrorKind::StorageFull
            || matches!(source.raw_os_error(), Some(28) | Some(122))
        {
            StoreError::NoSpace { location, source }
        } else {
            StoreError::Io {
                action,
                location,
                source,
            }
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the output root, `/`-separated.
    pub key: Key,
    pub size: u64,
}

/// A large object being written; it appears under its key only when [`finish`](Self::finish)
/// returns. Dropping it unfinished leaves nothing behind (or a temporary that recovery removes).
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable under its key; returns its size.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Where the output lives. See the module docs for the contract.
pub trait Store: Send + Sync + fmt::Debug {
    /// Where this is, for messages (never a secret).
    fn describe(&self) -> String;
    /// Writes `bytes` under `key`, atomically and durably, replacing what was there.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Creates `key` with `bytes` unless it exists; `Ok(false)` when it already did.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// Streams a large object to `key`.
    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// The object's bytes, or `None` when there is no such key.
    fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// The object's last `len` bytes (all of it when shorter), or `None` when there is no such
    /// key: a Parquet footer without reading the file.
    fn get_suffix(&self, key: &str, len: u64) -> Result<Option<Bytes>> {
        Ok(self.get(key)?.map(|b| {
            let start = b
                .len()
                .saturating_sub(usize::try_from(len).unwrap_or(usize::MAX));
            b.slice(start..)
        }))
    }
    /// Every object whose key starts with `prefix` (`""`: all), in key order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Removes `key`; a missing key is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// Why the store is failing right now while a call retries through an outage (`None`: it
    /// is not). `/healthz` reports it.
    fn failing(&self) -> Option<String> {
        None
    }
    /// The same place as an `ObjectStore` and a URL, for the Delta table's engine
    /// (`output::delta`), which reads and writes through `object_store` itself.
    fn table_root(&self) -> Result<TableRoot>;
}

// ---------------------------------------------------------------------------------------------
// Local disk
// ---------------------------------------------------------------------------------------------

/// A directory on local disk. Writes go to a hidden temporary file in the same directory
/// ([`layout::temp_name`]), are fsynced, renamed into place, and the directory is fsynced (also
/// every directory it had to create), so a crash leaves either the old state or the new one.
/// `put_new` links the fsynced temporary file to its final name, which fails atomically when the
/// name exists.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        let mut path = self.root.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
        }
        path
    }

    /// The final path and the temporary path it is written under.
    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let path = self.path(key);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let temp = path.with_file_name(layout::temp_name(&name));
        (path, temp)
    }

    fn create_temp(&self, path: &Path, temp: &Path) -> Result<File> {
        if let Some(dir) = path.parent() {
            create_dir_durably(dir)?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)
            .map_err(|e| StoreError::io("create", temp.display(), e))
    }
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir.display(), e))
}

/// Creates `dir` and its missing parents, fsyncing each parent so the new entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        current = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir.display(), e))?;
    for d in missing.iter().rev() {
        sync_parent(d)?;
    }
    Ok(())
}

/// Whether a rename or link failed because the temporary file is gone, and the write should be
/// tried again (twice at most). A writer that is taking the partition over deletes the
/// temporary files it finds there (`checkpoint::recovery`), possibly this writer's in flight; the
/// write itself is still valid to try: `put_new` stays create-if-absent, so against that writer's
/// own commit it loses as it would have (`Ok(false)`: fenced), instead of failing with an I/O
/// error.
fn temp_vanished(e: &io::Error, attempt: u32) -> bool {
    e.kind() == io::ErrorKind::NotFound && attempt < 3
}

impl LocalStore {
    /// Writes `bytes` to the temporary file `temp` of `path`, fsynced.
    fn write_temp(&self, path: &Path, temp: &Path, bytes: &[u8]) -> Result<()> {
        let mut file = self.create_temp(path, temp)?;
        let written = file.write_all(bytes).and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(temp);
            return Err(StoreError::io("write", temp.display(), e));
        }
        Ok(())
    }
}

impl Store for LocalStore {
    fn table_root(&self) -> Result<TableRoot> {
        create_dir_durably(&self.root)?;
        let absolute = std::fs::canonicalize(&self.root)
            .map_err(|e| StoreError::io("resolving", self.root.display(), e))?;
        let url = url::Url::from_directory_path(&absolute).map_err(|()| {
            StoreError::Other(format!(
                "{} cannot be written as a file:// URL",
                absolute.display()
            ))
        })?;
        Ok(TableRoot {
            store: Arc::new(super::local_listing::LocalListing::new()),
            url,
        })
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let (path, temp) = self.paths(key);
        for attempt in 1.. {
            self.write_temp(&path, &temp, bytes)?;
            match fs::rename(&temp, &path) {
                Ok(()) => break,
                Err(e) if temp_vanished(&e, attempt) => continue,
                Err(e) => return Err(StoreError::io("rename into place", path.display(), e)),
            }
        }
        sync_parent(&path)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let (path, temp) = self.paths(key);
        for attempt in 1.. {
            self.write_temp(&path, &temp, bytes)?;
            let linked = fs::hard_link(&temp, &path);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) if temp_vanished(&e, attempt) => continue,
                Err(e) => return Err(StoreError::io("create", path.display(), e)),
            }
        }
        sync_parent(&path)?;
        Ok(true)
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let (path, temp) = self.paths(key);
        let file = self.create_temp(&path, &temp)?;
        Ok(Box::new(LocalWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            path,
            temp,
            size: 0,
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", path.display(), e)),
        }
    }

    fn get_suffix(&self, key: &str, len: u64) -> Result<Option<Bytes>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(key);
        let read = || -> io::Result<Vec<u8>> {
            let mut file = fs::File::open(&path)?;
            let size = file.metadata()?.len();
            file.seek(SeekFrom::Start(size.saturating_sub(len)))?;
            let mut out = Vec::with_capacity(usize::try_from(len.min(size)).unwrap_or(0));
            file.read_to_end(&mut out)?;
            Ok(out)
        };
        match read() {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", path.display(), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Walk from the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        walk(&self.path(dir_part), dir_part, &mut out)?;
        out.retain(|o| o.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", path.display(), e)),
        }
    }
}

fn walk(dir: &Path, key: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(StoreError::io("list", dir.display(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir.display(), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let child = if key.is_empty() {
            name
        } else {
            format!("{key}/{name}")
        };
        let file_type = entry
            .file_type()
            .map_err(|e| StoreError::io("inspect", entry.path().display(), e))?;
        if file_type.is_dir() {
            walk(&entry.path(), &child, out)?;
        } else if file_type.is_file() {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(ObjectInfo { key: child, size });
        }
    }
    Ok(())
}

struct LocalWriter {
    file: Option<BufWriter<File>>,
    path: PathBuf,
    temp: PathBuf,
    size: u64,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .file
            .as_mut()
            .expect("writer is open until finish")
            .write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("writer is open until finish")
            .flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        let file = self.file.take().expect("finish is called once");
        let file = file
            .into_inner()
            .map_err(|e| StoreError::io("write", self.temp.display(), e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", self.temp.display(), e))?;
        drop(file);
        fs::rename(&self.temp, &self.path)
            .map_err(|e| StoreError::io("rename into place", self.path.display(), e))?;
        self.temp = PathBuf::new();
        sync_parent(&self.path)?;
        Ok(self.size)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = fs::remove_file(&self.temp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In memory (tests)
// ---------------------------------------------------------------------------------------------

/// Objects in memory, shared by clones. `fail_after(n)` makes every call after the next `n`
/// fail, which simulates a crash at that point: what was put before stays, nothing after.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    objects: Arc<Mutex<BTreeMap<Key, Bytes>>>,
    /// The Delta table's log, when a test asks for one (`table_root`).
    table: Arc<object_store::memory::InMemory>,
    /// Calls left before failing; negative: never fail.
    budget: Arc<AtomicI64>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore {
            objects: Arc::default(),
            table: Arc::default(),
            budget: Arc::new(AtomicI64::new(-1)),
        }
    }

    /// Every call after the next `calls` fails (until [`heal`](Self::heal)).
    pub fn fail_after(&self, calls: i64) {
        self.budget.store(calls, Ordering::SeqCst);
    }

    /// Calls succeed again.
    pub fn heal(&self) {
        self.budget.store(-1, Ordering::SeqCst);
    }

    /// A copy of every object.
    pub fn snapshot(&self) -> BTreeMap<Key, Bytes> {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn spend(&self) -> Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if left < 0 {
            return Ok(());
        }
        if left == 0 {
            return Err(StoreError::Other("simulated crash (MemStore)".into()));
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        Ok(())
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn table_root(&self) -> Result<TableRoot> {
        Ok(TableRoot {
            store: Arc::clone(&self.table) as _,
            url: url::Url::parse("memory:///").map_err(|e| StoreError::Other(e.to_string()))?,
        })
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.spend()?;
        self.objects()
            .insert(key.to_string(), Bytes::copy_from_slice(bytes));
        Ok(())
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        self.spend()?;
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_string(), Bytes::copy_from_slice(bytes));
        Ok(true)
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.spend()?;
        Ok(Box::new(MemWriter {
            store: self.clone(),
            key: key.to_string(),
            buf: Vec::new(),
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.spend()?;
        Ok(self.objects().get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.spend()?;
        Ok(self
            .objects()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.spend()?;
        self.objects().remove(key);
        Ok(())
    }
}

struct MemWriter {
    store: MemStore,
    key: Key,
    buf: Vec<u8>,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemWriter {
    fn finish(self: Box<Self>) -> Result<u64> {
        self.store.spend()?;
        let size = self.buf.len() as u64;
        self.store.objects().insert(self.key, Bytes::from(self.buf));
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        store.put("a/b/x.json", b"one").unwrap();
        store.put("a/b/x.json", b"two").unwrap();
        assert_eq!(store.get("a/b/x.json").unwrap().unwrap(), &b"two"[..]);
        assert!(store.put_new("a/c.json", b"first").unwrap());
        assert!(!store.put_new("a/c.json", b"second").unwrap());
        assert_eq!(store.get("a/c.json").unwrap().unwrap(), &b"first"[..]);
        let mut w = store.writer("z/big.bin").unwrap();
        w.write_all(&[7u8; 10_000]).unwrap();
        assert_eq!(
            store.get("z/big.bin").unwrap(),
            None,
            "invisible until finish"
        );
        assert_eq!(w.finish().unwrap(), 10_000);
        assert_eq!(store.get("z/big.bin").unwrap().unwrap().len(), 10_000);
        assert_eq!(
            store.get_suffix("z/big.bin", 8).unwrap().unwrap(),
            &[7u8; 8][..]
        );
        assert_eq!(
            store.get_suffix("a/b/x.json", 100).unwrap().unwrap(),
            &b"two"[..],
            "longer than the object: all of it"
        );
        assert_eq!(store.get_suffix("z/none.bin", 8).unwrap(), None);
        let unfinished = store.writer("z/gone.bin").unwrap();
        drop(unfinished);
        let keys: Vec<String> = store.list("").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["a/b/x.json", "a/c.json", "z/big.bin"]);
        let keys: Vec<String> = store
            .list("a/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a/b/x.json", "a/c.json"]);
        store.delete("a/c.json").unwrap();
        store.delete("a/c.json").unwrap();
        assert_eq!(store.get("a/c.json").unwrap(), None);
    }

    #[test]
    fn local_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&LocalStore::new(dir.path().join("out")));
        // No temporary file is left behind.
        let mut found = Vec::new();
        walk(&dir.path().join("out"), "", &mut found).unwrap();
        assert!(found.iter().all(|o| !o.key.contains(".tmp")), "{found:?}");
    }

    #[test]
    fn mem_store_keeps_the_contract_and_fails_on_demand() {
        let store = MemStore::new();
        exercise(&store);
        store.fail_after(1);
        store.put("ok", b"").unwrap();
        assert!(store.put("no", b"").is_err());
        store.heal();
        assert!(store.get("ok").unwrap().is_some());
        assert!(store.get("no").unwrap().is_none());
    }

    #[test]
    fn no_space_is_its_own_error() {
        let e = StoreError::io("write", "x", io::Error::from_raw_os_error(28));
        assert!(matches!(e, StoreError::NoSpace { .. }));
        assert!(e.to_string().contains("no space left"), "{e}");
    }
}
