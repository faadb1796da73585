//! The coordinator driven directly: scenarios for each rule of the module docs, then a property
//! test over random interleavings of inputs and time, then (`world`) many instances of the real
//! driver's decisions over the real pipeline, checkpoints and marker sweep on a `MemStore`,
//! with a fake group that rebalances, loses members and freezes them.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

mod world;

const DRAIN: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_secs(5);
const SPACING: Duration = Duration::from_secs(1);

fn config(group: bool) -> CoordinatorConfig {
    CoordinatorConfig {
        group,
        drain_timeout: DRAIN,
        claim_retry: RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2))
            .with_deadline(Duration::from_secs(10)),
        sweep_every: EVERY,
        sweep_spacing: SPACING,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parts(list: &[i32]) -> BTreeSet<i32> {
    list.iter().copied().collect()
}

fn finish_of(actions: &[Action]) -> Option<&Finish> {
    actions.iter().find_map(|a| match a {
        Action::Finish(f) => Some(f),
        _ => None,
    })
}

/// Claims every partition of a fresh coordinator, as a driver whose claims all land.
fn claimed_all(group: bool, list: &[i32]) -> (Coordinator, Vec<Action>) {
    let (mut c, mut actions) = Coordinator::new(config(group), &parts(list), ms(0));
    let mut all = actions.clone();
    while let Some(Action::Claim { partition, .. }) = actions
        .iter()
        .find(|a| matches!(a, Action::Claim { .. }))
        .cloned()
    {
        actions = c.handle(
            Input::Claimed {
                partition,
                next_offset: 0,
            },
            ms(1),
        );
        all.extend(actions.clone());
    }
    (c, all)
}

#[test]
fn claims_one_at_a_time_in_order_then_reconciles_markers_once_alone() {
    let (mut c, first) = Coordinator::new(config(false), &parts(&[2, 0, 1]), ms(0));
    assert_eq!(
        first,
        vec![Action::Claim {
            partition: 0,
            attempt: 0
        }]
    );
    let a = c.handle(
        Input::Claimed {
            partition: 0,
            next_offset: 7,
        },
        ms(1),
    );
    assert_eq!(
        a,
        vec![
            Action::Start { partition: 0 },
            Action::ShowOffset {
                partition: 0,
                offset: 7
            },
            Action::Claim {
                partition: 1,
                attempt: 0
            },
        ]
    );
    c.handle(
        Input::Claimed {
            partition: 1,
            next_offset: 0,
        },
        ms(2),
    );
    let a = c.handle(
        Input::Claimed {
            partition: 2,
            next_offset: 0,
        },
        ms(3),
    );
    // Claims done: the first sweep reconciles (alone) at once.
    assert!(a.contains(&Action::Sweep { reconcile: true }), "{a:?}");
    let a = c.handle(Input::SweepDone, ms(4));
    assert!(a.is_empty(), "{a:?}");
    // No sweep is due until a commit closes windows; then one, spaced.
    assert_eq!(c.deadline(), None);
    c.handle(
        Input::Committed {
            partition: 0,
            next_offset: 10,
            closed_windows: true,
        },
        ms(10),
    );
    assert_eq!(c.deadline(), Some(ms(4) + SPACING));
    let a = c.handle(Input::Tick, ms(4) + SPACING);
    assert_eq!(a, vec![Action::Sweep { reconcile: false }]);
}

#[test]
fn end_of_input_finishes_when_every_partition_is_done_and_sweeps_once_more() {
    let (mut c, _) = claimed_all(false, &[0, 1]);
    c.handle(Input::SweepDone, ms(2));
    assert!(c.handle(Input::Done { partition: 0 }, ms(3)).is_empty());
    let a = c.handle(Input::Done { partition: 1 }, ms(4));
    assert_eq!(
        finish_of(&a),
        Some(&Finish {
            failure: None,
            dropped: false,
            sweep: true,
            await_revocation: false,
        })
    );
    assert!(c.is_over());
    assert!(
        c.handle(Input::Tick, ms(5)).is_empty(),
        "nothing after the end"
    );
}

#[test]
fn a_revocation_during_a_claim_claims_nothing_more_and_starts_nothing() {
    let (mut c, _) = Coordinator::new(config(true), &parts(&[0, 1, 2]), ms(0));
    c.handle(
        Input::Claimed {
            partition: 0,
            next_offset: 0,
        },
        ms(1),
    );
    // Partition 1's claim is in flight when the group revokes the generation.
    let a = c.handle(Input::End(EndRequest::Drain), ms(2));
    assert_eq!(a, vec![Action::Stop]);
    let a = c.handle(
        Input::Claimed {
            partition: 1,
            next_offset: 0,
        },
        ms(3),
    );
    assert_eq!(
        a[0],
        Action::Dropped {
            partition: 1,
            why: DropReason::ClaimedTooLate
        }
    );
    assert!(!a
        .iter()
        .any(|a| matches!(a, Action::Start { .. } | Action::Claim { .. })));
    // Partition 0 drains, then the run ends; 2 was never claimed.
    let a = c.handle(Input::Done { partition: 0 }, ms(4));
    let f = finish_of(&a).expect("finished");
    assert_eq!(f.failure, None);
    assert!(!f.await_revocation);
    assert_eq!(c.started(), &parts(&[0]));
}

#[test]
fn a_lost_generation_ends_at_once_without_waiting_or_sweeping() {
    let (mut c, _) = claimed_all(true, &[0, 1]);
    let a = c.handle(Input::End(EndRequest::Drop), ms(5));
    assert_eq!(a[0], Action::Stop);
    assert_eq!(
        finish_of(&a),
        Some(&Finish {
            failure: None,
            dropped: true,
            sweep: false,
            await_revocation: false,
        })
    );
}

#[test]
fn a_refused_claim_is_retried_with_backoff_in_a_group_until_the_deadline() {
    let (mut c, _) = Coordinator::new(config(true), &parts(&[0]), ms(0));
    let mut now = ms(0);
    let mut attempts = 0;
    loop {
        let a = c.handle(Input::ClaimRefused { partition: 0 }, now);
        if let Some(f) = finish_of(&a) {
            assert_eq!(f.failure, Some(Failure::Claim(0)));
            break;
        }
        assert!(a.is_empty(), "{a:?}");
        let at = c.deadline().expect("a retry is due");
        assert!(
            at > now && at - now <= Duration::from_secs(2),
            "{now:?} -> {at:?}"
        );
        now = at;
        let a = c.handle(Input::Tick, now);
        attempts += 1;
        assert_eq!(
            a,
            vec![Action::Claim {
                partition: 0,
                attempt: attempts
            }]
        );
    }
    assert!(attempts >= 5, "{attempts} attempts");
    // The policy never sleeps past its deadline just to give up: the last retry is within one
    // maximum delay of it.
    assert!(
        now >= Duration::from_secs(8) && now < Duration::from_secs(10),
        "{now:?}"
    );
}

#[test]
fn a_refused_claim_alone_fails_at_once() {
    let (mut c, _) = Coordinator::new(config(false), &parts(&[0, 1]), ms(0));
    let a = c.handle(Input::ClaimRefused { partition: 0 }, ms(1));
    assert_eq!(a[0], Action::Stop);
    assert_eq!(finish_of(&a).unwrap().failure, Some(Failure::Claim(0)));
}

#[test]
fn the_drain_deadline_fails_the_run_when_a_partition_never_reports() {
    let (mut c, _) = claimed_all(false, &[0, 1]);
    c.handle(Input::SweepDone, ms(2));
    c.handle(Input::End(EndRequest::Drain), ms(100));
    c.handle(Input::Done { partition: 0 }, ms(200));
    assert_eq!(c.deadline(), Some(ms(100) + DRAIN));
    assert!(c.handle(Input::Tick, ms(100) + DRAIN - ms(1)).is_empty());
    let a = c.handle(Input::Tick, ms(100) + DRAIN);
    let f = finish_of(&a).unwrap();
    assert_eq!(f.failure, Some(Failure::DrainTimeout));
    assert!(f.sweep, "what was committed still gets its markers");
}

#[test]
fn a_partition_failure_alone_stops_every_partition_and_fails_the_run() {
    let (mut c, _) = claimed_all(false, &[0, 1]);
    c.handle(Input::SweepDone, ms(2));
    let a = c.handle(
        Input::Failed {
            partition: 1,
            fenced: false,
        },
        ms(3),
    );
    assert_eq!(
        a,
        vec![Action::ReportFailure { partition: 1 }, Action::Stop]
    );
    let a = c.handle(Input::Done { partition: 0 }, ms(4));
    assert_eq!(finish_of(&a).unwrap().failure, Some(Failure::Partition(1)));
}

#[test]
fn a_takeover_in_a_group_drops_the_partition_and_waits_for_the_revocation() {
    let (mut c, _) = claimed_all(true, &[0, 1]);
    c.handle(Input::SweepDone, ms(2));
    let a = c.handle(
        Input::Failed {
            partition: 0,
            fenced: true,
        },
        ms(3),
    );
    assert_eq!(
        a,
        vec![Action::Dropped {
            partition: 0,
            why: DropReason::Fenced
        }]
    );
    let a = c.handle(
        Input::Failed {
            partition: 1,
            fenced: false,
        },
        ms(4),
    );
    assert_eq!(a, vec![Action::CheckTakeover { partition: 1 }]);
    let a = c.handle(
        Input::TakeoverChecked {
            partition: 1,
            taken_over: true,
        },
        ms(5),
    );
    let f = finish_of(&a).unwrap();
    assert_eq!(f.failure, None);
    assert!(f.await_revocation);
    assert!(!a.contains(&Action::Stop), "nothing else to stop");
}

#[test]
fn a_failed_write_that_was_no_takeover_fails_a_group_run() {
    let (mut c, _) = claimed_all(true, &[0]);
    c.handle(Input::SweepDone, ms(2));
    c.handle(
        Input::Failed {
            partition: 0,
            fenced: false,
        },
        ms(3),
    );
    let a = c.handle(
        Input::TakeoverChecked {
            partition: 0,
            taken_over: false,
        },
        ms(4),
    );
    assert_eq!(a[0], Action::ReportFailure { partition: 0 });
    assert_eq!(finish_of(&a).unwrap().failure, Some(Failure::Partition(0)));
}

#[test]
fn a_group_sweeps_periodically_for_other_instances_and_the_end_waits_for_a_sweep() {
    let (mut c, all) = claimed_all(true, &[0]);
    assert!(all.contains(&Action::Sweep { reconcile: false }), "{all:?}");
    c.handle(Input::SweepDone, ms(10));
    assert_eq!(c.deadline(), Some(ms(10) + EVERY));
    let a = c.handle(Input::Tick, ms(10) + EVERY);
    assert_eq!(a, vec![Action::Sweep { reconcile: false }]);
    // The partition is done while that sweep runs: the run ends after it.
    assert!(c
        .handle(Input::End(EndRequest::Drain), ms(5_020))
        .contains(&Action::Stop));
    let a = c.handle(Input::Done { partition: 0 }, ms(5_030));
    assert!(finish_of(&a).is_none(), "{a:?}");
    let a = c.handle(Input::SweepDone, ms(5_040));
    assert!(finish_of(&a).is_some(), "{a:?}");
}

#[test]
fn a_group_failure_drops_everything() {
    let (mut c, _) = claimed_all(true, &[0, 1]);
    let a = c.handle(Input::GroupFailed, ms(3));
    let f = finish_of(&a).unwrap();
    assert_eq!(f.failure, Some(Failure::Group));
    assert!(f.dropped);
}

/// One input of the property test, with the time that passes before it.
#[derive(Debug, Clone)]
enum Step {
    End(bool),
    GroupFailed,
    ClaimLands,
    ClaimRefused,
    ClaimFails,
    Commit(i32, bool),
    Done(i32),
    Fail(i32, bool),
    Takeover(bool),
    SweepDone,
    Tick,
}

fn step() -> impl Strategy<Value = (u64, Step)> {
    let s = prop_oneof![
        1 => any::<bool>().prop_map(Step::End),
        1 => Just(Step::GroupFailed),
        6 => Just(Step::ClaimLands),
        2 => Just(Step::ClaimRefused),
        1 => Just(Step::ClaimFails),
        4 => (0..4i32, any::<bool>()).prop_map(|(p, c)| Step::Commit(p, c)),
        3 => (0..4i32).prop_map(Step::Done),
        1 => (0..4i32, any::<bool>()).prop_map(|(p, f)| Step::Fail(p, f)),
        1 => any::<bool>().prop_map(Step::Takeover),
        3 => Just(Step::SweepDone),
        3 => Just(Step::Tick),
    ];
    (0..4_000u64, s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever happens, in whatever order, as a driver that answers only what was asked:
    /// claims one at a time and never after the stop, each partition started once, one sweep
    /// at a time, the drain deadline kept, and exactly one finish, only once nothing started
    /// is still running (unless dropped or past the deadline).
    #[test]
    fn the_coordinator_keeps_its_rules_under_any_interleaving(
        group in any::<bool>(),
        n in 1..4usize,
        steps in proptest::collection::vec(step(), 0..60),
    ) {
        let assigned: BTreeSet<i32> = (0..n as i32).collect();
        let (mut c, first) = Coordinator::new(config(group), &assigned, ms(0));
        let mut now = ms(0);
        let mut claim_in_flight: Option<i32> = None;
        let mut started = BTreeSet::new();
        let mut running = BTreeSet::new();
        let mut checking = BTreeSet::new();
        let mut sweeping = false;
        let mut stopped_at: Option<Duration> = None;
        let mut finished = false;
        let observe = |actions: Vec<Action>, now: Duration,
                           claim_in_flight: &mut Option<i32>,
                           started: &mut BTreeSet<i32>,
                           running: &mut BTreeSet<i32>,
                           checking: &mut BTreeSet<i32>,
                           sweeping: &mut bool,
                           stopped_at: &mut Option<Duration>|
         -> Result<Option<Finish>, TestCaseError> {
            let mut finish = None;
            for a in actions {
                prop_assert!(finish.is_none(), "an action after the finish: {:?}", a);
                match a {
                    Action::Claim { partition, .. } => {
                        prop_assert!(claim_in_flight.is_none(), "two claims at once");
                        prop_assert!(stopped_at.is_none(), "a claim after the stop");
                        prop_assert!(!started.contains(&partition));
                        *claim_in_flight = Some(partition);
                    }
                    Action::Start { partition } => {
                        prop_assert!(stopped_at.is_none(), "a start after the stop");
                        prop_assert!(started.insert(partition), "started twice");
                        running.insert(partition);
                    }
                    Action::Stop => {
                        prop_assert!(stopped_at.is_none(), "stopped twice");
                        *stopped_at = Some(now);
                    }
                    Action::Sweep { .. } => {
                        prop_assert!(!*sweeping, "two sweeps at once");
                        *sweeping = true;
                    }
                    Action::CheckTakeover { partition } => {
                        prop_assert!(group);
                        checking.insert(partition);
                    }
                    Action::ReportFailure { partition } | Action::Dropped { partition, .. } => {
                        running.remove(&partition);
                    }
                    Action::ShowOffset { .. } => {}
                    Action::Finish(f) => finish = Some(f),
                }
            }
            Ok(finish)
        };
        let f = observe(first, now, &mut claim_in_flight, &mut started, &mut running,
                        &mut checking, &mut sweeping, &mut stopped_at)?;
        finished |= f.is_some();
        for (wait, step) in steps {
            if finished {
                break;
            }
            // Time passes; the driver wakes at the coordinator's deadline on the way.
            let target = now + ms(wait);
            while let Some(d) = c.deadline().filter(|d| *d <= target) {
                now = d.max(now);
                let a = c.handle(Input::Tick, now);
                if let Some(f) = observe(a, now, &mut claim_in_flight, &mut started, &mut running,
                                         &mut checking, &mut sweeping, &mut stopped_at)? {
                    if let Some(s) = stopped_at {
                        prop_assert!(
                            f.dropped || (running.is_empty() && checking.is_empty()) || now >= s + DRAIN,
                            "finished with partitions still running before the drain deadline"
                        );
                    }
                    finished = true;
                    break;
                }
            }
            if finished {
                break;
            }
            now = target;
            if let Some(s) = stopped_at {
                prop_assert!(now < s + DRAIN || c.is_over(), "past the drain deadline");
            }
            let input = match step {
                Step::End(drop) => Input::End(if drop { EndRequest::Drop } else { EndRequest::Drain }),
                Step::GroupFailed => Input::GroupFailed,
                Step::ClaimLands => match claim_in_flight.take() {
                    Some(partition) => Input::Claimed { partition, next_offset: 0 },
                    None => continue,
                },
                Step::ClaimRefused => match claim_in_flight.take() {
                    Some(partition) => Input::ClaimRefused { partition },
                    None => continue,
                },
                Step::ClaimFails => match claim_in_flight.take() {
                    Some(partition) => Input::ClaimFailed { partition },
                    None => continue,
                },
                Step::Commit(p, closed) if running.contains(&p) => {
                    Input::Committed { partition: p, next_offset: 1, closed_windows: closed }
                }
                Step::Done(p) if running.contains(&p) && stopped_at.is_some() => {
                    running.remove(&p);
                    Input::Done { partition: p }
                }
                Step::Fail(p, fenced) if running.contains(&p) => {
                    running.remove(&p);
                    Input::Failed { partition: p, fenced }
                }
                Step::Takeover(t) => match checking.pop_first() {
                    Some(partition) => Input::TakeoverChecked { partition, taken_over: t },
                    None => continue,
                },
                Step::SweepDone if sweeping => {
                    sweeping = false;
                    Input::SweepDone
                }
                Step::Tick => Input::Tick,
                _ => continue,
            };
            let settled_before = running.is_empty() && checking.is_empty() && claim_in_flight.is_none();
            let a = c.handle(input, now);
            if let Some(f) = observe(a, now, &mut claim_in_flight, &mut started, &mut running,
                                     &mut checking, &mut sweeping, &mut stopped_at)? {
                prop_assert!(
                    f.dropped
                        || stopped_at.is_some_and(|s| now >= s + DRAIN)
                        || (running.is_empty() && checking.is_empty()),
                    "finished with partitions still running: {:?} {:?}", running, f
                );
                prop_assert!(f.dropped || !sweeping || settled_before, "finished during a sweep");
                finished = true;
            }
        }
        // Whatever is left, the driver drains: every partition reports, every answer comes,
        // and the run ends, by the drain deadline at the latest.
        if !finished {
            let mut inputs = vec![Input::End(EndRequest::Drain)];
            if let Some(p) = claim_in_flight.take() {
                inputs.push(Input::Claimed { partition: p, next_offset: 0 });
            }
            inputs.extend(checking.iter().map(|p| Input::TakeoverChecked { partition: *p, taken_over: true }));
            inputs.extend(running.iter().map(|p| Input::Done { partition: *p }));
            if sweeping {
                inputs.push(Input::SweepDone);
            }
            let mut fin = None;
            for input in inputs {
                now += ms(1);
                for a in c.handle(input, now) {
                    if let Action::Finish(f) = &a {
                        fin = Some(f.clone());
                    }
                    if let Action::Sweep { .. } = a {
                        fin = fin.or_else(|| {
                            c.handle(Input::SweepDone, now).into_iter().find_map(|a| match a {
                                Action::Finish(f) => Some(f),
                                _ => None,
                            })
                        });
                    }
                }
            }
            if fin.is_none() {
                now = c.deadline().expect("a run not over has a deadline");
                fin = c.handle(Input::Tick, now).into_iter().find_map(|a| match a {
                    Action::Finish(f) => Some(f),
                    _ => None,
                });
            }
            prop_assert!(fin.is_some() && c.is_over(), "the run never ended");
        }
    }
}
