//! The local file system as the Delta kernel sees it: object_store's `LocalFileSystem`, except
//! that a listing from an offset reads the directory's names and looks only at the names after
//! the offset.
//!
//! Why: the kernel opens a table by listing `_delta_log/` from its last checkpoint, an offset
//! that S3 applies on the server (`start-after`). `LocalFileSystem` walks the whole directory
//! instead and, following links, stats every entry and turns every name into a path before it
//! compares it with the offset. A log holds one commit per closed window and partition (8,640
//! after a day of 1-minute windows over 6 partitions, until log retention deletes them), so that
//! walk, not the table, became most of the time to open it. Here the names are compared first
//! and only the later ones are stat'ed (their metadata made as `LocalFileSystem` makes it).
//!
//! Why it is correct: a listing returns the same objects as `LocalFileSystem`'s. A name is
//! compared as the path `LocalFileSystem` would make of it only when that path is the name
//! itself (plain ASCII names, which every Delta log file has); for any other entry, a
//! subdirectory or a name with other characters, the listing is `LocalFileSystem`'s own.
//! Names of unfinished writes (`<name>#<digits>`) are skipped as `LocalFileSystem` skips them.
//! An entry deleted between the read of the directory and its stat is left out, as a listing
//! that ran a moment later would.
//!
//! Writes are `LocalFileSystem`'s with fsync on (its default is off): a Delta commit, a
//! checkpoint or a version checksum is on disk when its write returns, as every other file of
//! the output is ([`super::store::LocalStore`]); a power cut cannot leave a torn
//! `_delta_log/<version>.json` behind.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// `LocalFileSystem` rooted at `/`, fsyncing its writes, with an offset listing that skips
/// earlier names unread.
#[derive(Debug, Default)]
pub struct LocalListing {
    inner: Arc<LocalFileSystem>,
}

impl LocalListing {
    pub fn new() -> Self {
        LocalListing {
            inner: Arc::new(LocalFileSystem::new().with_fsync(true)),
        }
    }
}

impl fmt::Display for LocalListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalListing({})", self.inner)
    }
}

/// The objects of the directory after the offset, when every entry is a plain file with a
/// plain name; `None` otherwise (the caller lists as `LocalFileSystem` does).
fn objects_after(dir: &std::path::Path, prefix: &Path, offset: &Path) -> Option<Vec<ObjectMeta>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let mut after = Vec::new();
    for entry in entries {
        let entry = entry.ok()?;
        let name = entry.file_name().into_string().ok()?;
        if !plain_name(&name) || !entry.file_type().ok()?.is_file() {
            return None;
        }
        if unfinished_write(&name) {
            continue;
        }
        let location = prefix.clone().join(name.as_str());
        if location <= *offset {
            continue;
        }
        match entry.metadata() {
            Ok(metadata) => after.push(object_meta(&metadata, location)),
            // Deleted since the directory was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    Some(after)
}

/// `LocalFileSystem`'s metadata of a file (its ETag scheme included).
fn object_meta(metadata: &std::fs::Metadata, location: Path) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt as _;
    let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
    let micros = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size: metadata.len(),
        e_tag: Some(format!(
            "\"{:x}-{micros:x}-{:x}\"",
            metadata.ino(),
            metadata.len()
        )),
        version: None,
    }
}

/// A name that `LocalFileSystem` turns into a path of itself.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'#'))
}

/// `LocalFileSystem`'s staging files: `<name>#<digits>`.
fn unfinished_write(name: &str) -> bool {
    name.split_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[async_trait]
impl ObjectStore for LocalListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(prefix) = prefix.filter(|p| !p.as_ref().is_empty()) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let dir = match self.inner.path_to_filesystem(prefix) {
            Ok(dir) => dir,
            Err(_) => return self.inner.list_with_offset(Some(prefix), offset),
        };
        let objects = {
            let (prefix, offset) = (prefix.clone(), offset.clone());
            tokio::task::spawn_blocking(move || objects_after(&dir, &prefix, &offset))
        };
        let (inner, prefix, offset) = (Arc::clone(&self.inner), prefix.clone(), offset.clone());
        stream::once(async move {
            match objects.await {
                Ok(Some(objects)) => stream::iter(objects.into_iter().map(Ok)).boxed(),
                _ => inner.list_with_offset(Some(&prefix), &offset),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt as _;

    async fn listed(store: &dyn ObjectStore, prefix: &Path, offset: &Path) -> Vec<String> {
        let mut names: Vec<String> = store
            .list_with_offset(Some(prefix), offset)
            .map_ok(|m| {
                format!(
                    "{} {} {:?} {}",
                    m.location, m.size, m.e_tag, m.last_modified
                )
            })
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    /// The same objects as `LocalFileSystem`'s listing, on a log-like directory and on ones
    /// that take the fallback (a subdirectory, a name with a space), and on none at all.
    #[tokio::test]
    async fn lists_what_local_file_system_lists() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("_delta_log");
        std::fs::create_dir(&log).unwrap();
        for v in 0..30u64 {
            std::fs::write(log.join(format!("{v:020}.json")), vec![b'x'; v as usize]).unwrap();
            std::fs::write(log.join(format!("{v:020}.crc")), b"{}").unwrap();
        }
        std::fs::write(log.join("_last_checkpoint"), b"{}").unwrap();
        std::fs::write(log.join("00000000000000000030.json#1"), b"unfinished").unwrap();
        let ours = LocalListing::new();
        let theirs = LocalFileSystem::new();
        let prefix = Path::from_filesystem_path(&log).unwrap();
        for offset in [0u64, 17, 29, 40] {
            let offset = Path::from(format!("{prefix}/{offset:020}"));
            let expected = listed(&theirs, &prefix, &offset).await;
            assert_eq!(listed(&ours, &prefix, &offset).await, expected);
            assert!(expected.iter().all(|n| !n.contains('#')), "{expected:?}");
        }
        let offset = Path::from(format!("{prefix}/{:020}", 17));
        // Versions 17 to 29, a commit and a checksum each, and `_last_checkpoint`.
        assert_eq!(listed(&ours, &prefix, &offset).await.len(), 2 * 13 + 1);
        // The fallback: a subdirectory and an unusual name.
        std::fs::create_dir(log.join("_commits")).unwrap();
        std::fs::write(log.join("_commits/00000000000000000031.json"), b"x").unwrap();
        std::fs::write(log.join("a name"), b"x").unwrap();
        let expected = listed(&theirs, &prefix, &offset).await;
        assert_eq!(listed(&ours, &prefix, &offset).await, expected);
        assert!(
            expected.iter().any(|n| n.contains("_commits")),
            "{expected:?}"
        );
        // A directory that does not exist lists nothing.
        let missing = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("missing");
        assert!(listed(&ours, &missing, &offset).await.is_empty());
    }
}
