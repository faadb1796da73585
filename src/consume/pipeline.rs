//! One partition's processing, synchronously: the pure [`PartitionCore`] decides, the
//! [`PartitionSink`] writes, and this glue applies the core's effects in order, feeds the
//! confirmations back, keeps the partition's memory under its bound, and commits its checkpoint.
//! It blocks on storage I/O; the async layer (`consume::run`) calls it from blocking threads.
//!
//! The exactly-once property test at the bottom drives this real code (core, sink, recovery,
//! checkpoint store) over an in-memory store that can fail any call, i.e. crash between any two
//! steps, and checks that every offset ends up in exactly one file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::Int64Type;

use super::core::{Committed, CoreConfig, Effect, Now, PartitionCore, Start, Tally};
use super::decode::DecodedBatch;
use crate::checkpoint::recovery::{self, Plan};
use crate::checkpoint::{self, CheckpointError, FileRef, PartitionCheckpoint};
use crate::output::layout::{self, Destination, Key, WriterId};
use crate::output::store::Store;
use crate::output::table::{Published, TableCommitter, TableError};
use crate::output::{OutputConfig, OutputSchema, PartitionSink, SinkError};

/// Errors of a partition's processing.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("selecting rows for {destination} failed: {message}; this is a bug, please report it")]
    Select {
        destination: Destination,
        message: String,
    },
}

/// What a partition's output holds at startup, before it is claimed: its checkpoint and the
/// plan of what to delete (see `checkpoint::recovery`). Nothing is deleted yet.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub checkpoint: Option<PartitionCheckpoint>,
    pub newest_generation: u64,
    pub plan: Plan,
    pub fell_back: Vec<String>,
}

/// The first half of recovery, for every partition in `partitions`: lists the output once,
/// refuses a legacy layout, then loads and plans each partition. It deletes nothing, so a
/// refused start changes nothing; [`PartitionPipeline::claim`] is the second half. Production
/// (`consume`) and the exactly-once property tests run this same path.
pub fn prepare(
    store: &dyn Store,
    topic: &str,
    window_ms: i64,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, Recovered>, CheckpointError> {
    let listing = store.list("")?;
    recovery::refuse_legacy(store, &listing)?;
    let mut loaded = BTreeMap::new();
    for &p in partitions {
        loaded.insert(p, checkpoint::load(store, topic, p, window_ms)?);
    }
    let mut out = BTreeMap::new();
    for (p, l) in loaded {
        let plan = recovery::plan(store, p, l.checkpoint.as_ref(), &listing)?;
        out.insert(
            p,
            Recovered {
                checkpoint: l.checkpoint,
                newest_generation: l.newest_generation,
                plan,
                fell_back: l.fell_back,
            },
        );
    }
    Ok(out)
}

/// What one call did, for the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub tally: Tally,
    /// Files written (final, late, dead-letter and staged).
    pub written: Vec<(FileKindWritten, FileRef)>,
}

/// Which output a written file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKindWritten {
    Window,
    Late,
    DeadLetter,
    Staged,
}

/// One partition: core + sink.
#[derive(Debug)]
pub struct PartitionPipeline {
    core: PartitionCore,
    sink: PartitionSink,
    writer: WriterId,
    memory_budget: usize,
    /// Files written since the last commit: no checkpoint covers them yet. If the commit is
    /// fenced they never will be, and this writer deletes them (see [`Self::checkpoint`]).
    uncommitted: Vec<Key>,
    topic: String,
    /// Where closed windows' files are published after each commit (`None`: `--table none`).
    table: Option<Arc<dyn TableCommitter>>,
}

/// How a partition runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub topic: String,
    pub core: CoreConfig,
    pub output: OutputConfig,
    /// Bound on the bytes of this partition's open row groups; past it, the largest open window
    /// is staged (memory pressure makes row groups smaller, never files more numerous).
    pub memory_budget: usize,
    /// The table closed windows are published to (`output::table`); `None`: files only.
    pub table: Option<Arc<dyn TableCommitter>>,
}

impl PartitionPipeline {
    /// Claims a partition from what [`prepare`] found (`fresh_offset` is where a partition
    /// without a checkpoint starts), then deletes what its checkpoint does not cover.
    ///
    /// The claim is a first commit, a new checkpoint generation: a second writer of the
    /// partition is fenced from here on, so it can never commit a file deleted here (hence the
    /// order: claim, then delete). It also makes every data file written afterwards one that a
    /// checkpoint of this partition governs, so a crash before the next commit is recovered,
    /// not mistaken for an output whose checkpoint was deleted.
    #[allow(clippy::too_many_arguments)]
    pub fn claim(
        store: Arc<dyn Store>,
        config: &PipelineConfig,
        schema: &OutputSchema,
        partition: i32,
        writer: WriterId,
        recovered: &Recovered,
        fresh_offset: i64,
        now: Now,
    ) -> Result<PartitionPipeline, PipelineError> {
        let start = match &recovered.checkpoint {
            Some(cp) => Start::Checkpoint(Box::new(cp.clone())),
            None => Start::Fresh {
                offset: fresh_offset,
            },
        };
        let mut core =
            PartitionCore::new(&config.topic, partition, config.core.clone(), start, now);
        core.set_generation(recovered.newest_generation);
        let sink = PartitionSink::new(store, partition, writer, schema, &config.output);
        let mut pipeline = PartitionPipeline {
            core,
            sink,
            writer,
            memory_budget: config.memory_budget,
            uncommitted: Vec::new(),
            topic: config.topic.clone(),
            table: config.table.clone(),
        };
        pipeline.checkpoint(&mut Progress::default())?;
        let plan = &recovered.plan;
        plan.apply(pipeline.sink.store().as_ref())?;
        if !plan.is_clean() {
            tracing::warn!(
                partition,
                temp_removed = plan.temp.len(),
                uncommitted_removed = plan.uncommitted.len(),
                superseded_removed = plan.superseded.len(),
                kept = plan.kept,
                "Recovered the output to the last checkpoint"
            );
        }
        Ok(pipeline)
    }

    pub fn core(&self) -> &PartitionCore {
        &self.core
    }

    /// Bytes held by the partition's open row groups.
    pub fn memory(&self) -> usize {
        self.sink.memory()
    }

    /// Bytes held by open row groups of windows, late windows and dead letters.
    pub fn memory_by_output(&self) -> [usize; 3] {
        self.sink.memory_by_output()
    }

    pub fn set_memory_budget(&mut self, bytes: usize) {
        self.memory_budget = bytes;
    }

    /// Routes and writes one decoded batch.
    pub fn process(&mut self, batch: &DecodedBatch, now: Now) -> Result<Progress, PipelineError> {
        let routing = self.core.route(&batch.metas, now);
        let mut out = Progress {
            tally: routing.tally,
            ..Progress::default()
        };
        self.apply(routing.effects, Some(batch), &mut out)?;
        self.relieve(&mut out)?;
        Ok(out)
    }

    /// The fetch stepped over every offset below `offset` (`PartitionCore::skip_to`).
    pub fn skip_to(&mut self, offset: i64) -> Result<Progress, PipelineError> {
        let routing = self.core.skip_to(offset);
        let mut out = Progress {
            tally: routing.tally,
            ..Progress::default()
        };
        self.apply(routing.effects, None, &mut out)?;
        Ok(out)
    }

    /// Idle detection and advance; `boundary` is the instance boundary an idle partition follows.
    pub fn tick(&mut self, now: Now, boundary: Option<i64>) -> Result<Progress, PipelineError> {
        let routing = self.core.tick(now, boundary);
        let mut out = Progress {
            tally: routing.tally,
            ..Progress::default()
        };
        self.apply(routing.effects, None, &mut out)?;
        Ok(out)
    }

    fn apply(
        &mut self,
        effects: Vec<Effect>,
        batch: Option<&DecodedBatch>,
        out: &mut Progress,
    ) -> Result<(), PipelineError> {
        for effect in effects {
            match effect {
                Effect::Rows { dest, rows } => {
                    let batch = batch.expect("rows come with a batch");
                    let selected = select(&batch.rows, &rows, dest)?;
                    let offsets = selected
                        .column_by_name(crate::output::parquet::COLUMN_OFFSET)
                        .expect("output rows have kafka_offset")
                        .as_primitive::<Int64Type>();
                    let (first, last) = (offsets.value(0), offsets.value(offsets.len() - 1));
                    self.sink.append(dest, &selected, first, last)?;
                }
                Effect::DeadLetters { letters } => {
                    let batch = batch.expect("dead letters come with a batch");
                    let selected = select(&batch.dead, &letters, Destination::DeadLetter)?;
                    let offsets = selected.column(1).as_primitive::<Int64Type>();
                    let (first, last) = (offsets.value(0), offsets.value(offsets.len() - 1));
                    self.sink
                        .append(Destination::DeadLetter, &selected, first, last)?;
                }
                Effect::Close { window } => {
                    let staged = self.core.closing_staged(window).to_vec();
                    let files = self.sink.close_window(window, &staged)?;
                    for f in &files {
                        self.uncommitted
                            .push(layout::data_key_named(Destination::Window(window), &f.name));
                        out.written.push((FileKindWritten::Window, f.clone()));
                    }
                    self.core.window_closed(window, files);
                }
            }
        }
        Ok(())
    }

    /// Stages the largest open windows while over the memory bound; then, if late rows or dead
    /// letters are what holds the memory, writes them early.
    fn relieve(&mut self, out: &mut Progress) -> Result<(), PipelineError> {
        while self.sink.memory() > self.memory_budget {
            let Some((window, _)) = self.sink.largest_window() else {
                break;
            };
            self.stage(window, out)?;
        }
        if self.sink.memory() > self.memory_budget {
            self.flush_side(out)?;
        }
        Ok(())
    }

    fn stage(&mut self, window: i64, out: &mut Progress) -> Result<(), PipelineError> {
        if let Some(file) = self.sink.stage(window)? {
            self.uncommitted
                .push(layout::staged_key_named(window, &file.name));
            out.written.push((FileKindWritten::Staged, file.clone()));
            self.core.window_staged(window, file);
        }
        Ok(())
    }

    fn flush_side(&mut self, out: &mut Progress) -> Result<(), PipelineError> {
        for window in self.core.late_in_memory() {
            if let Some(file) = self.sink.flush_side(Destination::Late(window))? {
                self.uncommitted.push(layout::data_key_named(
                    Destination::Late(window),
                    &file.name,
                ));
                out.written.push((FileKindWritten::Late, file.clone()));
                self.core.late_written(window, file);
            }
        }
        if self.core.dead_letters_in_memory() {
            if let Some(file) = self.sink.flush_side(Destination::DeadLetter)? {
                self.uncommitted
                    .push(layout::data_key_named(Destination::DeadLetter, &file.name));
                out.written
                    .push((FileKindWritten::DeadLetter, file.clone()));
                self.core.dead_letters_written(file);
            }
        }
        Ok(())
    }

    /// Writes late rows and dead letters, then commits the partition's checkpoint and deletes
    /// staged files no retained generation needs. Fails with `Fenced` if another writer
    /// committed this generation first; this writer then deletes the files it wrote since its
    /// last commit (no checkpoint can cover them, and a later recovery could not tell them from
    /// the other writer's) and must stop. When its own commit landed and a newer owner started
    /// from it (`landed`), the files stay: that owner's checkpoints cover them.
    pub fn checkpoint(&mut self, out: &mut Progress) -> Result<Committed, PipelineError> {
        self.flush_side(out)?;
        let cp = self.core.capture(self.writer);
        if let Err(e) = checkpoint::commit(self.sink.store().as_ref(), &cp) {
            if matches!(e, CheckpointError::Fenced { landed: false, .. }) {
                self.withdraw();
            }
            return Err(e.into());
        }
        self.uncommitted.clear();
        let committed = self.core.committed(cp.generation);
        for (window, file) in &committed.retired_staged {
            self.sink.delete_staged(*window, file)?;
        }
        self.publish(cp.generation)?;
        Ok(committed)
    }

    /// Publishes the closed windows' files that generation `generation` (just committed)
    /// carries as unpublished: after a failure they stay in the checkpoint, and the next
    /// commit, or whoever claims the partition next, publishes them (`output::table`).
    fn publish(&mut self, generation: u64) -> Result<(), PipelineError> {
        let Some(table) = &self.table else {
            self.core.published(generation);
            return Ok(());
        };
        if self.core.unpublished().is_empty() {
            return Ok(());
        }
        let partition = self.core.partition();
        let outcome = table.publish(&self.topic, partition, generation, self.core.unpublished())?;
        match outcome {
            Published::Committed { version, files } => tracing::debug!(
                partition,
                generation,
                version,
                files,
                "Published to {}",
                table.describe()
            ),
            Published::Already { at } => tracing::debug!(
                partition,
                generation,
                at,
                "{} already holds these files (published by an earlier owner)",
                table.describe()
            ),
        }
        self.core.published(generation);
        Ok(())
    }

    /// Deletes the files written since the last commit (after being fenced). Best effort: what
    /// cannot be deleted is logged.
    fn withdraw(&mut self) {
        let store = self.sink.store();
        let files = std::mem::take(&mut self.uncommitted);
        let mut failed = 0;
        for key in &files {
            if let Err(e) = store.delete(key) {
                failed += 1;
                tracing::error!(
                    partition = self.core.partition(),
                    key = %key,
                    error = %e,
                    "Fenced: cannot delete a file no checkpoint covers; delete it by hand"
                );
            }
        }
        tracing::warn!(
            partition = self.core.partition(),
            removed = files.len() - failed,
            "Fenced by another writer: removed the files written since the last commit"
        );
    }

    /// End of input or shutdown: with `close_windows`, every window closes (end of stream);
    /// otherwise the open windows' rows in memory are staged so the checkpoint covers them. Then
    /// commits (twice when the first commit retired staged files, so they are deleted too).
    pub fn finish(
        &mut self,
        close_windows: bool,
        out: &mut Progress,
    ) -> Result<Vec<Committed>, PipelineError> {
        if close_windows {
            let routing = self.core.close_all();
            out.tally.add(&routing.tally);
            self.apply(routing.effects, None, out)?;
        } else {
            for window in self.core.windows_in_memory() {
                self.stage(window, out)?;
            }
        }
        let mut commits = vec![self.checkpoint(out)?];
        if self.core.has_retired() {
            commits.push(self.checkpoint(out)?);
        }
        Ok(commits)
    }
}

/// The rows at `indices` (increasing) of `batch`: a zero-copy slice when contiguous.
fn select(
    batch: &RecordBatch,
    indices: &[u32],
    destination: Destination,
) -> Result<RecordBatch, PipelineError> {
    let (first, last) = (indices[0] as usize, indices[indices.len() - 1] as usize);
    if last - first + 1 == indices.len() {
        return Ok(batch.slice(first, indices.len()));
    }
    let indices = UInt32Array::from(indices.to_vec());
    arrow::compute::take_record_batch(batch, &indices).map_err(|e| PipelineError::Select {
        destination,
        message: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests;
