//! The output: Parquet files of one consumer in a [`Store`], by destination.
//!
//! - [`layout`]: every name (format and parse), for the sink, recovery and `inspect`.
//! - [`store`]: the I/O seam ([`Store`]), local disk ([`LocalStore`]), memory (tests).
//! - [`object`]: object storage behind the same seam (S3; GCS and Azure from the same crate).
//! - [`location`]: the one place that turns `--output` into a [`Store`].
//! - [`parquet`]: columns, encoding, in-memory row groups, concatenation without re-encoding.
//! - [`PartitionSink`] (here): what one partition has in memory per destination, and the
//!   operations the consumer core asks for: append rows, stage an open window's row group,
//!   close a window into its final file(s), write late rows and dead letters.
//!
//! Nothing outside this module knows about paths, renames or fsync: callers name destinations
//! and get back [`FileRef`]s to record in the checkpoint.

pub mod delta;
pub mod layout;
pub mod local_listing;
pub mod location;
pub mod object;
pub mod parquet;
pub mod store;
pub mod table;

use std::collections::BTreeMap;
use std::sync::Arc;

use ::parquet::file::properties::WriterPropertiesPtr;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;

pub use self::location::Location;
pub use self::object::{ObjectOptions, ObjectOutput, ObjectUrl};
pub use self::parquet::{Compression, FormatConfig, OutputSchema, ParquetFormatError};
pub use self::store::{LocalStore, MemStore, Store, StoreError};
use crate::checkpoint::FileRef;
use layout::{Destination, FileKind, PartName, WriterId};

/// Errors of the sink: storage or encoding.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] ParquetFormatError),
    #[error(
        "staged row group {key} in {location} is missing: it was deleted by hand? The window \
         cannot be completed; move the output aside and start over"
    )]
    MissingStaged { key: String, location: String },
}

/// How output files are made.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    pub format: FormatConfig,
    /// A closed window's rows of one partition go into files of about this size at most (one
    /// file unless the window holds more).
    pub max_file_bytes: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: FormatConfig::default(),
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

/// One partition's open row groups, per destination, and the files it writes.
pub struct PartitionSink {
    store: Arc<dyn Store>,
    partition: i32,
    writer: WriterId,
    table_schema: SchemaRef,
    dead_schema: SchemaRef,
    props: WriterPropertiesPtr,
    max_file_bytes: u64,
    open: BTreeMap<Destination, parquet::RowGroup>,
}

impl std::fmt::Debug for PartitionSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionSink")
            .field("partition", &self.partition)
            .field("writer", &self.writer)
            .field("open", &self.open)
            .finish()
    }
}

/// A file just written, with what the metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub destination: Destination,
    pub file: FileRef,
}

impl PartitionSink {
    pub fn new(
        store: Arc<dyn Store>,
        partition: i32,
        writer: WriterId,
        output: &OutputSchema,
        config: &OutputConfig,
    ) -> Self {
        PartitionSink {
            store,
            partition,
            writer,
            table_schema: Arc::clone(output.arrow()),
            dead_schema: parquet::dead_letter_schema(),
            props: config.format.writer_properties(),
            max_file_bytes: config.max_file_bytes,
            open: BTreeMap::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Encodes `batch` (rows of this partition, offsets `first..=last` in order) into the open
    /// row group of `destination`.
    pub fn append(
        &mut self,
        destination: Destination,
        batch: &RecordBatch,
        first: i64,
        last: i64,
    ) -> Result<(), SinkError> {
        let schema = match destination {
            Destination::DeadLetter => &self.dead_schema,
            _ => &self.table_schema,
        };
        let group = match self.open.entry(destination) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(parquet::RowGroup::new(schema, &self.props, first)?)
            }
        };
        group.write(batch, last)?;
        Ok(())
    }

    /// Bytes held by all open row groups.
    pub fn memory(&self) -> usize {
        self.open.values().map(parquet::RowGroup::memory).sum()
    }

    /// Bytes held by open row groups of windows, late windows and dead letters.
    pub fn memory_by_output(&self) -> [usize; 3] {
        let mut out = [0; 3];
        for (d, g) in &self.open {
            let i = match d {
                Destination::Window(_) => 0,
                Destination::Late(_) => 1,
                Destination::DeadLetter => 2,
            };
            out[i] += g.memory();
        }
        out
    }

    /// The open window holding the most memory, if any holds rows.
    pub fn largest_window(&self) -> Option<(i64, usize)> {
        self.open
            .iter()
            .filter_map(|(d, g)| match d {
                Destination::Window(w) => Some((*w, g.memory())),
                _ => None,
            })
            .max_by_key(|(w, m)| (*m, std::cmp::Reverse(*w)))
    }

    fn take(&mut self, destination: Destination) -> Option<parquet::RowGroup> {
        self.open.remove(&destination)
    }

    fn part(&self, group: &parquet::RowGroup, kind: FileKind) -> PartName {
        PartName::new(
            self.partition,
            group.first_offset,
            group.last_offset,
            self.writer,
            kind,
        )
    }

    /// Ends an open row group as the object `key`, streaming it into the store.
    fn finish_group(
        &self,
        group: parquet::RowGroup,
        part: &PartName,
        key: &str,
    ) -> Result<FileRef, SinkError> {
        let rows = group.rows;
        let out = self.store.writer(key)?;
        let bytes = group.finish_to(out).map_err(|e| match e {
            parquet::FinishError::Store(e) => SinkError::Store(e),
            parquet::FinishError::Format(e) => SinkError::Format(e),
        })?;
        Ok(FileRef {
            name: part.to_string(),
            first: part.first_offset,
            last: part.last_offset,
            rows,
            bytes,
        })
    }

    /// Writes the open window's rows in memory as one staged row group.
    pub fn stage(&mut self, window: i64) -> Result<Option<FileRef>, SinkError> {
        let Some(group) = self.take(Destination::Window(window)) else {
            return Ok(None);
        };
        let part = self.part(&group, FileKind::Staged);
        let key = layout::staged_key(window, &part);
        self.finish_group(group, &part, &key).map(Some)
    }

    /// Closes a window: its staged row groups (in order) and the rows in memory become final
    /// table files, rolled at `max_file_bytes` between row groups (never within one).
    pub fn close_window(
        &mut self,
        window: i64,
        staged: &[FileRef],
    ) -> Result<Vec<FileRef>, SinkError> {
        let destination = Destination::Window(window);
        let in_memory = self.take(destination);
        if staged.is_empty() {
            // The common case: one row group, written straight as the final file.
            let Some(group) = in_memory else {
                return Ok(Vec::new());
            };
            let part = self.part(&group, FileKind::Table);
            let key = layout::data_key(destination, &part);
            return Ok(vec![self.finish_group(group, &part, &key)?]);
        }
        // Inputs in offset order: the staged row groups, then the rows in memory, staged too
        // for the moment (no checkpoint refers to that one: it is deleted once the final files
        // are durable, and recovery deletes it if a crash comes first).
        let mut inputs: Vec<FileRef> = staged.to_vec();
        let extra = match in_memory {
            Some(group) => {
                let part = self.part(&group, FileKind::Staged);
                let key = layout::staged_key(window, &part);
                let file = self.finish_group(group, &part, &key)?;
                inputs.push(file.clone());
                Some(file)
            }
            None => None,
        };
        let mut files = Vec::new();
        let mut start = 0;
        while start < inputs.len() {
            // Take inputs while the file stays under max_file_bytes (at least one).
            let mut end = start + 1;
            let mut size = inputs[start].bytes;
            while end < inputs.len() && size + inputs[end].bytes <= self.max_file_bytes {
                size += inputs[end].bytes;
                end += 1;
            }
            files.push(self.concat(window, &inputs[start..end])?);
            start = end;
        }
        if let Some(extra) = extra {
            self.delete_staged(window, &extra)?;
        }
        Ok(files)
    }

    /// One final file of the staged row groups `inputs`, each read when its turn comes.
    fn concat(&self, window: i64, inputs: &[FileRef]) -> Result<FileRef, SinkError> {
        let first = inputs[0].first;
        let last = inputs[inputs.len() - 1].last;
        let part = PartName::new(self.partition, first, last, self.writer, FileKind::Table);
        let out = self
            .store
            .writer(&layout::data_key(Destination::Window(window), &part))?;
        let load = |i: usize| -> Result<(String, Bytes), SinkError> {
            let key = staged_key_of(window, &inputs[i]);
            let bytes = self
                .store
                .get(&key)?
                .ok_or_else(|| SinkError::MissingStaged {
                    key: key.clone(),
                    location: self.store.describe(),
                })?;
            Ok((inputs[i].name.clone(), bytes))
        };
        let (out, rows) =
            parquet::concat(inputs.len(), load, out, &self.props).map_err(|e| match e {
                parquet::ConcatError::Load(e) => e,
                parquet::ConcatError::Format(e) => SinkError::Format(e),
            })?;
        let bytes = out.finish()?;
        Ok(FileRef {
            name: part.to_string(),
            first,
            last,
            rows,
            bytes,
        })
    }

    /// Writes the rows in memory of a late window, or the dead letters, as one file.
    pub fn flush_side(&mut self, destination: Destination) -> Result<Option<FileRef>, SinkError> {
        debug_assert!(!matches!(destination, Destination::Window(_)));
        let Some(group) = self.take(destination) else {
            return Ok(None);
        };
        let part = self.part(&group, FileKind::Side);
        let key = layout::data_key(destination, &part);
        self.finish_group(group, &part, &key).map(Some)
    }

    /// Deletes a staged row group no checkpoint references any more.
    pub fn delete_staged(&self, window: i64, file: &FileRef) -> Result<(), SinkError> {
        self.store.delete(&staged_key_of(window, file))?;
        Ok(())
    }
}

fn staged_key_of(window: i64, file: &FileRef) -> String {
    layout::staged_key_named(window, &file.name)
}
