//! The output: Parquet files of one consumer in a [`Store`], by destination.
//!
//! - [`layout`]: every name (format and parse), for the sink, recovery and `inspect`.
//! - [`store`]: the I/O seam ([`Store`]), local disk ([`LocalStore`]), memory (tests).
//! - [`parquet`]: columns, encoding, in-memory row groups, concatenation without re-encoding.
//! - [`PartitionSink`] (here): what one partition has in memory per destination, and the
//!   operations the consumer core asks for: append rows, stage an open window's row group,
//!   close a window into its final file(s), write late rows and dead letters.
//!
//! Nothing outside this module knows about paths, renames or fsync: callers name destinations
//! and get back [`FileRef`]s to record in the checkpoint.

pub mod layout;
pub mod parquet;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use ::parquet::file::properties::WriterPropertiesPtr;

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

    /// Writes the open window's rows in memory as one staged row group.
    pub fn stage(&mut self, window: i64) -> Result<Option<FileRef>, SinkError> {
        let Some(group) = self.take(Destination::Window(window)) else {
            return Ok(None);
        };
        let part = self.part(&group, FileKind::Staged);
        let rows = group.rows;
        let bytes = group.finish()?;
        self.store.put(&layout::staged_key(window, &part), &bytes)?;
        Ok(Some(FileRef {
            name: part.to_string(),
            first: part.first_offset,
            last: part.last_offset,
            rows,
            bytes: bytes.len() as u64,
        }))
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
            let rows = group.rows;
            let bytes = group.finish()?;
            self.store.put(&layout::data_key(destination, &part), &bytes)?;
            return Ok(vec![FileRef {
                name: part.to_string(),
                first: part.first_offset,
                last: part.last_offset,
                rows,
                bytes: bytes.len() as u64,
            }]);
        }
        // Inputs in offset order: staged files, then what is in memory.
        let mut inputs: Vec<(FileRef, Option<Bytes>)> =
            staged.iter().map(|f| (f.clone(), None)).collect();
        if let Some(group) = in_memory {
            let part = self.part(&group, FileKind::Staged);
            let rows = group.rows;
            let bytes = Bytes::from(group.finish()?);
            inputs.push((
                FileRef {
                    name: part.to_string(),
                    first: part.first_offset,
                    last: part.last_offset,
                    rows,
                    bytes: bytes.len() as u64,
                },
                Some(bytes),
            ));
        }
        let mut files = Vec::new();
        let mut start = 0;
        while start < inputs.len() {
            // Take inputs while the file stays under max_file_bytes (at least one).
            let mut end = start + 1;
            let mut size = inputs[start].0.bytes;
            while end < inputs.len() && size + inputs[end].0.bytes <= self.max_file_bytes {
                size += inputs[end].0.bytes;
                end += 1;
            }
            files.push(self.concat(window, &inputs[start..end])?);
            start = end;
        }
        Ok(files)
    }

    fn concat(
        &self,
        window: i64,
        inputs: &[(FileRef, Option<Bytes>)],
    ) -> Result<FileRef, SinkError> {
        let mut loaded = Vec::with_capacity(inputs.len());
        for (file, bytes) in inputs {
            let bytes = match bytes {
                Some(b) => b.clone(),
                None => {
                    let key = staged_key_of(window, file);
                    self.store
                        .get(&key)?
                        .ok_or_else(|| SinkError::MissingStaged {
                            key: key.clone(),
                            location: self.store.describe(),
                        })?
                }
            };
            loaded.push((file.name.clone(), bytes));
        }
        let first = inputs[0].0.first;
        let last = inputs[inputs.len() - 1].0.last;
        let part = PartName::new(self.partition, first, last, self.writer, FileKind::Table);
        let out = self
            .store
            .writer(&layout::data_key(Destination::Window(window), &part))?;
        let (out, rows) = parquet::concat(&loaded, out, &self.props)?;
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
        let rows = group.rows;
        let bytes = group.finish()?;
        self.store.put(&layout::data_key(destination, &part), &bytes)?;
        Ok(Some(FileRef {
            name: part.to_string(),
            first: part.first_offset,
            last: part.last_offset,
            rows,
            bytes: bytes.len() as u64,
        }))
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
