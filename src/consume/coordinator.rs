//! The coordinator of one run over a set of partitions, as a pure state machine: [`Input`]s in
//! (a claim landed or was refused, a partition committed, finished or failed, the run was asked
//! to end, time passed), [`Action`]s out (claim, start, stop, check a takeover, sweep the
//! success markers, finish), the clock passed in, no I/O. It is to the instance what
//! [`super::core::PartitionCore`] is to one partition; `consume::run_partitions` is its thin
//! driver, and the tests below drive it directly, on a clock they advance.
//!
//! What it guarantees, and why that keeps the run exactly once:
//! - **Claims**, one at a time in partition order, never after the run was asked to end: a
//!   member that lost its partitions (cut off, frozen) while claiming would otherwise take a
//!   partition back from its new owner once its stalled claim is refused and retried. A claim
//!   that lands after the end was asked for is not started (its generation fences nobody who
//!   matters: the new owner's claim comes after and wins).
//! - **A refused claim** (a previous owner's last commit landed between recovery and claim) is
//!   retried on a fresh recovery with the claim policy's backoff, only in a group and only
//!   within the policy's deadline; then the run fails with the refusal.
//! - **Ending.** `Drain` (shutdown, a rebalance, a failure): every started partition writes what
//!   it holds, commits and reports; the run ends when all have, or fails with
//!   [`Failure::DrainTimeout`] `drain_timeout` after the stop. `Drop` (the partitions were
//!   lost, or the group is gone): the run ends at once and commits nothing more; whatever a task
//!   still commits is refused by the new owner's checkpoint generation.
//! - **Failures.** Alone, any partition's failure stops the run (drain, then fail). In a group, a
//!   fenced commit, or a failed write while another writer's checkpoint is the newest, means
//!   the partition was taken over: it is dropped, not a failure, and when every partition of the
//!   run was taken over the run waits for the group's revocation (the next generation sorts
//!   out the rest).
//! - **Success markers**, one rule: a window's marker is written once every partition in scope
//!   has committed past the window's end, and it is derived from the output itself (every
//!   partition's checkpoint, then the listing: `consume::markers`), so the same sweep serves one
//!   instance and many. A sweep is due once the claims are done, after a commit that closed
//!   windows (at most one per `sweep_spacing`), every `sweep_every` in a group (other
//!   instances' commits are seen only this way), and once at the end unless the run dropped its
//!   partitions. One sweep at a time. Only a static run's first sweep removes markers that no
//!   checkpoint supports (a fallback to an older checkpoint): in a group, another instance may
//!   have just written a marker from checkpoints newer than the ones this one read.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use crate::retry::{Backoff, RetryPolicy};

/// How a run is coordinated.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Partitions come from a consumer group (takeovers are expected, claims are retried).
    pub group: bool,
    pub drain_timeout: Duration,
    /// How long, and how often, a refused claim is tried again (group only).
    pub claim_retry: RetryPolicy,
    /// Group only: a marker sweep at least this often (other instances' commits).
    pub sweep_every: Duration,
    /// At most one sweep per this much time for this instance's own commits.
    pub sweep_spacing: Duration,
}

/// How the end of a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRequest {
    /// Write what is buffered, commit, stop.
    Drain,
    /// The partitions may be someone else's already: stop at once, commit nothing more.
    Drop,
}

/// What happened. Times are the driver's clock, as a duration since the run began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Shutdown, or the group revoked the run's generation.
    End(EndRequest),
    /// The group client failed (the driver holds its error).
    GroupFailed,
    /// The partition is claimed and recovered; it resumes at `next_offset`.
    Claimed { partition: i32, next_offset: i64 },
    /// The claim lost the race for the next checkpoint generation.
    ClaimRefused { partition: i32 },
    /// The claim failed otherwise (the driver holds the error).
    ClaimFailed { partition: i32 },
    /// A partition committed a checkpoint.
    Committed {
        partition: i32,
        next_offset: i64,
        closed_windows: bool,
    },
    /// A partition finished (drained and committed, or read to its end).
    Done { partition: i32 },
    /// A partition failed; `fenced`: its commit lost to another writer's.
    Failed { partition: i32, fenced: bool },
    /// The answer to [`Action::CheckTakeover`].
    TakeoverChecked { partition: i32, taken_over: bool },
    /// The sweep asked for finished (a failed sweep is logged and retried by the next one).
    SweepDone,
    /// Time passed (the driver wakes at [`Coordinator::deadline`]).
    Tick,
}

/// What the driver does next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Recover the partition (again, when `attempt > 0`) and claim it; answer with `Claimed`,
    /// `ClaimRefused` or `ClaimFailed`.
    Claim { partition: i32, attempt: u32 },
    /// Start the partition's fetch, decode and process tasks.
    Start { partition: i32 },
    /// Show the group where the partition is committed (display only).
    ShowOffset { partition: i32, offset: i64 },
    /// Stop fetching: every started partition drains, commits and reports.
    Stop,
    /// The partition's failure stops the run (log it, show it in `/healthz`).
    ReportFailure { partition: i32 },
    /// Whether another writer owns the partition's newest checkpoint; answer `TakeoverChecked`.
    CheckTakeover { partition: i32 },
    /// The partition is someone else's now; leave it (log why).
    Dropped { partition: i32, why: DropReason },
    /// Sweep the success markers; `reconcile`: also remove those no checkpoint supports.
    /// Answer `SweepDone`.
    Sweep { reconcile: bool },
    /// The run is over.
    Finish(Finish),
}

/// Why a partition was left to another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its commit was fenced by a newer generation.
    Fenced,
    /// A write failed and another writer's checkpoint is the newest.
    TakenOver,
    /// Claimed after the run was asked to end: never started.
    ClaimedTooLate,
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub failure: Option<Failure>,
    /// Abort the tasks without waiting for them: the partitions were dropped.
    pub dropped: bool,
    /// Sweep the markers once more: the last commits may have completed windows.
    pub sweep: bool,
    /// Every partition was taken over: wait for the group's revocation before ending.
    pub await_revocation: bool,
}

/// Why a run failed (the driver holds the error itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Partition(i32),
    Claim(i32),
    DrainTimeout,
    Group,
}

#[derive(Debug)]
struct ClaimState {
    partition: i32,
    attempt: u32,
    backoff: Backoff,
    since: Duration,
    /// `None` while the claim is in flight; else when it is tried again.
    retry_at: Option<Duration>,
}

#[derive(Debug, Default)]
struct SweepState {
    in_flight: bool,
    /// A commit closed windows since the last sweep.
    due: bool,
    last: Option<Duration>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    to_claim: VecDeque<i32>,
    claim: Option<ClaimState>,
    started: BTreeSet<i32>,
    /// Started partitions that are done, failed or dropped.
    finished: BTreeSet<i32>,
    checking: BTreeSet<i32>,
    stopped_at: Option<Duration>,
    end: Option<EndRequest>,
    failure: Option<Failure>,
    dropped: bool,
    sweep: SweepState,
    over: bool,
}

impl Coordinator {
    /// A run over `assigned`, and its first actions.
    pub fn new(
        config: CoordinatorConfig,
        assigned: &BTreeSet<i32>,
        now: Duration,
    ) -> (Coordinator, Vec<Action>) {
        let mut c = Coordinator {
            config,
            to_claim: assigned.iter().copied().collect(),
            claim: None,
            started: BTreeSet::new(),
            finished: BTreeSet::new(),
            checking: BTreeSet::new(),
            stopped_at: None,
            end: None,
            failure: None,
            dropped: false,
            sweep: SweepState::default(),
            over: false,
        };
        let mut out = Vec::new();
        c.claim_next(now, &mut out);
        c.advance(now, &mut out);
        (c, out)
    }

    /// Whether [`Action::Finish`] was given.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The partitions started so far.
    pub fn started(&self) -> &BTreeSet<i32> {
        &self.started
    }

    /// When the driver must wake with [`Input::Tick`] if nothing else happens.
    pub fn deadline(&self) -> Option<Duration> {
        if self.over {
            return None;
        }
        let drain = self.stopped_at.map(|t| t + self.config.drain_timeout);
        let claim = self.claim.as_ref().and_then(|c| c.retry_at);
        let sweep = self.next_sweep();
        [drain, claim, sweep].into_iter().flatten().min()
    }

    /// Takes one input at time `now` (never earlier than the last one's).
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.over {
            return out;
        }
        match input {
            Input::End(request) => self.end(request, now, &mut out),
            Input::GroupFailed => {
                self.failure.get_or_insert(Failure::Group);
                self.end(EndRequest::Drop, now, &mut out);
            }
            Input::Claimed {
                partition,
                next_offset,
            } => {
                self.claim = None;
                if self.stopped_at.is_some() {
                    out.push(Action::Dropped {
                        partition,
                        why: DropReason::ClaimedTooLate,
                    });
                } else {
                    self.started.insert(partition);
                    out.push(Action::Start { partition });
                    out.push(Action::ShowOffset {
                        partition,
                        offset: next_offset,
                    });
                    self.claim_next(now, &mut out);
                }
            }
            Input::ClaimRefused { partition } => {
                let retry = match &mut self.claim {
                    Some(c) if self.config.group && self.stopped_at.is_none() => {
                        c.backoff.next_delay(now.saturating_sub(c.since)).map(|d| {
                            c.retry_at = Some(now + d);
                        })
                    }
                    _ => None,
                };
                if retry.is_none() {
                    self.claim = None;
                    // Refused after the end was asked for: nothing to claim any more.
                    if self.stopped_at.is_none() {
                        self.failure.get_or_insert(Failure::Claim(partition));
                        self.stop(now, &mut out);
                    }
                }
            }
            Input::ClaimFailed { partition } => {
                self.claim = None;
                self.failure.get_or_insert(Failure::Claim(partition));
                self.stop(now, &mut out);
            }
            Input::Committed {
                partition,
                next_offset,
                closed_windows,
            } => {
                out.push(Action::ShowOffset {
                    partition,
                    offset: next_offset,
                });
                self.sweep.due |= closed_windows;
            }
            Input::Done { partition } => {
                self.finished.insert(partition);
            }
            Input::Failed { partition, fenced } => {
                if self.config.group && fenced {
                    out.push(Action::Dropped {
                        partition,
                        why: DropReason::Fenced,
                    });
                    self.finished.insert(partition);
                } else if self.config.group {
                    self.checking.insert(partition);
                    out.push(Action::CheckTakeover { partition });
                } else {
                    self.fail(partition, now, &mut out);
                }
            }
            Input::TakeoverChecked {
                partition,
                taken_over,
            } => {
                self.checking.remove(&partition);
                if taken_over {
                    out.push(Action::Dropped {
                        partition,
                        why: DropReason::TakenOver,
                    });
                    self.finished.insert(partition);
                } else {
                    self.fail(partition, now, &mut out);
                }
            }
            Input::SweepDone => {
                self.sweep.in_flight = false;
                self.sweep.last = Some(now);
            }
            Input::Tick => {}
        }
        self.advance(now, &mut out);
        out
    }

    /// Timers, due sweeps and the end of the run.
    fn advance(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.over {
            return;
        }
        if let Some(c) = &mut self.claim {
            if c.retry_at.is_some_and(|t| t <= now) {
                c.retry_at = None;
                c.attempt += 1;
                out.push(Action::Claim {
                    partition: c.partition,
                    attempt: c.attempt,
                });
            }
        }
        if self.dropped {
            return self.finish(out);
        }
        if self
            .stopped_at
            .is_some_and(|t| now >= t + self.config.drain_timeout)
        {
            self.failure.get_or_insert(Failure::DrainTimeout);
            return self.finish(out);
        }
        if self.next_sweep().is_some_and(|t| t <= now) {
            self.sweep.in_flight = true;
            self.sweep.due = false;
            out.push(Action::Sweep {
                reconcile: !self.config.group && self.sweep.last.is_none(),
            });
        }
        let settled = self.claim.is_none()
            && self.to_claim.is_empty()
            && self.checking.is_empty()
            && self.started.is_subset(&self.finished);
        // A sweep in flight ends first: the final sweep must see every commit.
        if settled && !self.sweep.in_flight {
            self.finish(out);
        }
    }

    /// When the next sweep is due (`None`: not now, or one is in flight).
    fn next_sweep(&self) -> Option<Duration> {
        let claims_done = self.claim.is_none() && self.to_claim.is_empty();
        // Once stopped, only the final sweep (`Finish::sweep`) is left to do.
        let stopped = self.stopped_at.is_some();
        if self.sweep.in_flight || !claims_done || stopped || self.started.is_empty() {
            return None;
        }
        let Some(last) = self.sweep.last else {
            // The first sweep, once recovery removed what no checkpoint covers.
            return Some(Duration::ZERO);
        };
        let own = self.sweep.due.then_some(last + self.config.sweep_spacing);
        let others = self.config.group.then_some(last + self.config.sweep_every);
        own.into_iter().chain(others).min()
    }

    fn claim_next(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.claim.is_some() || self.stopped_at.is_some() {
            return;
        }
        if let Some(partition) = self.to_claim.pop_front() {
            self.claim = Some(ClaimState {
                partition,
                attempt: 0,
                backoff: self.config.claim_retry.backoff(),
                since: now,
                retry_at: None,
            });
            out.push(Action::Claim {
                partition,
                attempt: 0,
            });
        }
    }

    fn end(&mut self, request: EndRequest, now: Duration, out: &mut Vec<Action>) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(request);
        if request == EndRequest::Drop {
            self.dropped = true;
        }
        self.stop(now, out);
    }

    fn fail(&mut self, partition: i32, now: Duration, out: &mut Vec<Action>) {
        out.push(Action::ReportFailure { partition });
        self.failure.get_or_insert(Failure::Partition(partition));
        self.finished.insert(partition);
        self.stop(now, out);
    }

    /// Stops fetching (once) and claims nothing more; a claim in flight is answered still.
    fn stop(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.to_claim.clear();
        if self.claim.as_ref().is_some_and(|c| c.retry_at.is_some()) {
            self.claim = None;
        }
        if self.stopped_at.is_none() {
            self.stopped_at = Some(now);
            out.push(Action::Stop);
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        self.over = true;
        let all_taken_over = self.config.group
            && self.end.is_none()
            && self.failure.is_none()
            && !self.started.is_empty();
        out.push(Action::Finish(Finish {
            failure: self.failure,
            dropped: self.dropped,
            sweep: !self.dropped && !self.started.is_empty(),
            await_revocation: all_taken_over,
        }));
    }
}

#[cfg(test)]
mod tests;
