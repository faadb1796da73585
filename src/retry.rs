//! The one retry policy: exponential backoff with jitter, a deadline, an attempt limit, the stop
//! signal, and a classifier per caller that says which errors are worth another attempt.
//!
//! This module owns:
//! - [`RetryPolicy`]: the numbers (first delay, cap, multiplier, jitter, deadline, attempts);
//!   each caller keeps its own as a `const` and adds the deadline its flag gives at run time;
//! - [`Backoff`]: the delays of one retried operation. Pure: it reads no clock (the time spent
//!   so far is an argument) and draws its jitter from its own seeded generator, so a pure state
//!   machine (the consume coordinator) can hold one and a test can replay one;
//! - [`retry`] / [`retry_notify`]: run an operation until it succeeds, its classifier calls the
//!   error [`Verdict::Permanent`], the policy gives up, or the [`Shutdown`] fires; the outcome is
//!   a [`RetryError`] that keeps the last error, the attempts and the time spent.
//!
//! ## Why it is correct
//! - **Bounded delays.** The `n`-th delay is `initial × multiplierⁿ⁻¹` capped at `max_delay`
//!   (computed in nanoseconds: exact for whole multipliers, saturating instead of overflowing),
//!   and jitter only ever shortens it (below), so no delay exceeds `max_delay`.
//! - **Equal jitter**, `delay ∈ [base/2, base]`, not full jitter (`[0, base]`). Either spreads
//!   clients that failed together (eight produce lanes after one broker restart, the members of
//!   a group after a coordinator move) so they do not retry in lockstep. Full jitter spreads a
//!   little more, but its delays may be near zero, so a run can hammer a service that is down
//!   and the number of attempts within a deadline has no useful bound. With equal jitter the
//!   backoff still doubles, the first retry waits at least `initial/2`, and a deadline `D`
//!   admits at most about `log₂(D / initial) + D / (max_delay / 2)` attempts: a predictable
//!   load on a server that is struggling, and tests with paused time can count attempts.
//! - **Deadline.** The deadline counts the wall time of the whole operation (attempts included,
//!   not just the sleeps as rskafka's `BackoffConfig::deadline` does): a retry is scheduled only
//!   when it would *start* before the deadline (`elapsed + delay < deadline`), so the operation
//!   never sleeps past it only to give up. An attempt already running is the caller's to bound
//!   (enrichment bounds its load by the time left; a produce attempt is bounded by `--timeout`).
//! - **Permanent errors are never retried.** The classifier runs on every error before any
//!   delay: a `Permanent` verdict returns [`RetryError::Permanent`] after exactly one attempt.
//! - **Stop.** [`retry`] races both the attempt and the wait against the stop signal, so a stop
//!   ends either at once (the attempt in flight is dropped: pass `None` for an operation that
//!   must not be cut short, e.g. a produce whose batch is already read).
//!
//! ## Why not `backon`
//! `backon`'s `ExponentialBuilder::build()` is an iterator of delays, and its `Retryable`
//! future takes a classifier (`when`) and a hook (`notify`). But its jitter is *added*
//! (`delay + rand(0, delay)`: up to twice the cap), its `total_delay` limit counts only the
//! sleeps, not the attempts, so `--retry-timeout` would not bound the time a batch is retried,
//! its iterator cannot be reset after a success (the group client resets after each join), it
//! has no stop signal, and it loses the last error and the count our messages name ("gave up
//! after 12 attempts over 300 s: ..."). What is left of it, the arithmetic of one delay, is the
//! twenty lines of [`Backoff`]; so this is ours, and it adds no dependency (`rand` is already
//! one).
//!
//! ## Callers and their classifiers
//! | caller | policy | classifier: permanent |
//! |---|---|---|
//! | produce, each lane's batch (`produce::send_batches`) | 100 ms ×2 to 5 s, deadline `--retry-timeout` | [`kafka::produce_verdict`](crate::kafka::produce_verdict): authorization and authentication, a batch or record the broker will never take (too large, invalid, bad timestamp), an unsupported request, a topic gone after rskafka's own retries; `InitProducerId` refused for good (no `IDEMPOTENT_WRITE`, an old broker). Idempotence refusals are transient: the lane takes a new producer id. A batch that cannot be encoded is permanent. |
//! | fetch (`consume::tasks::fetch`) | 100 ms ×2 to 5 s, no deadline (a [`Backoff`] in its loop: the stop signal and the data-loss policy are its own) | [`kafka::fetch_verdict`](crate::kafka::fetch_verdict): offset out of range, authorization and authentication, a topic that does not exist (after rskafka's retries) |
//! | enrichment, first load (`enrich::first_load`) | 200 ms ×2 to 5 s, deadline `--mysql-timeout` | [`enrich::first_load_verdict`](crate::enrich::first_load_verdict): a query MySQL refuses (syntax, no such table or column, access denied), a wrong password or database, a column that cannot be converted, no columns |
//! | enrichment, refresh (`enrich::refresh_loop`) | 500 ms ×2 to the refresh interval, no deadline | none: the previous table keeps being served and a refresh is never fatal |
//! | group client, join and coordinator (`group::member`) | 100 ms ×2 to max(heartbeat, 500 ms); finding the coordinator before the start: deadline `--timeout` | [`GroupError::verdict`](crate::group::GroupError::verdict): everything but connection, timeout and coordinator-moving errors |
//! | object storage, every call (`output::object`) | 200 ms ×2 to 5 s, deadline `--output-retry-timeout` | `object_verdict`: `NotFound`, `Precondition`, `AlreadyExists`, `NotModified`, `PermissionDenied`, `Unauthenticated`, `InvalidPath`, `NotSupported`, `NotImplemented`, a configuration error; a generic error is transient when it is a transport failure (connect, request, timeout) or a 5xx, 408, 429 or S3's `SlowDown`/`InternalError` |
//! | object storage, a create racing another writer's (`put_new`) | 100 ms ×2 to 1 s, deadline `--output-retry-timeout` | (a [`Backoff`] in its loop) |
//! | the claim of a partition (`consume::coordinator`, group only) | 200 ms ×2 to 2 s, deadline 10 s (a [`Backoff`] the coordinator holds) | only `CheckpointError::Fenced` is retried (a previous owner's last commit landing); any other claim error fails the run |

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same call may succeed later (a connection, a timeout, a leader or coordinator moving).
    Transient,
    /// Retrying cannot help (a refusal, bad input, missing rights): fail now, with this error.
    Permanent,
}

impl Verdict {
    /// `Transient` when `transient`, else `Permanent`.
    pub const fn transient_if(transient: bool) -> Verdict {
        if transient {
            Verdict::Transient
        } else {
            Verdict::Permanent
        }
    }
}

/// How one kind of operation is retried. Each caller keeps its policy as a `const` (see the
/// module docs) and adds the deadline its flag gives.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The delay after the first failure (before jitter).
    pub initial: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
    /// Each delay is the previous one times this (values below 1 count as 1).
    pub multiplier: f64,
    /// Equal jitter: each delay is drawn from `[base/2, base]` (module docs).
    pub jitter: bool,
    /// Give up rather than start an attempt this long after the first one began.
    pub deadline: Option<Duration>,
    /// Give up after this many attempts in all (the first included).
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// `initial` doubling up to `max_delay`, with jitter, no deadline and no attempt limit.
    pub const fn exponential(initial: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            initial,
            max_delay,
            multiplier: 2.0,
            jitter: true,
            deadline: None,
            max_attempts: None,
        }
    }

    /// The same policy, giving up at `deadline` after the first attempt began.
    pub const fn with_deadline(self, deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            deadline: Some(deadline),
            ..self
        }
    }

    /// The same policy, giving up after `attempts` attempts in all.
    pub const fn with_max_attempts(self, attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(attempts),
            ..self
        }
    }

    /// The same policy with exact delays (no jitter).
    pub const fn without_jitter(self) -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..self
        }
    }

    /// The delays of one operation, its jitter seeded at random.
    pub fn backoff(&self) -> Backoff {
        self.backoff_seeded(rand::rng().random())
    }

    /// The delays of one operation, its jitter drawn from `seed`: the same seed gives the same
    /// delays (tests, a property-tested state machine).
    pub fn backoff_seeded(&self, seed: u64) -> Backoff {
        Backoff {
            policy: self.clone(),
            attempts: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

/// The delays of one retried operation. Pure: no clock is read (the time spent is given to
/// [`next_delay`](Self::next_delay)) and the jitter comes from its own seeded generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    policy: RetryPolicy,
    /// Failed attempts so far.
    attempts: u32,
    rng: SmallRng,
}

impl Backoff {
    /// Records a failed attempt; returns the wait before the next one, or `None` to give up
    /// (the attempts are spent, or the next attempt would start at or after the deadline).
    /// `elapsed` is the time since the first attempt began (only read with a deadline).
    pub fn next_delay(&mut self, elapsed: Duration) -> Option<Duration> {
        self.attempts = self.attempts.saturating_add(1);
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        let base = self.base();
        let delay = if self.policy.jitter {
            let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
            let half = nanos / 2;
            Duration::from_nanos(half + self.rng.random_range(0..=nanos - half))
        } else {
            base
        };
        match self.policy.deadline {
            Some(deadline) if elapsed.saturating_add(delay) >= deadline => None,
            _ => Some(delay),
        }
    }

    /// Failed attempts recorded since the start or the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After a success: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The policy these delays follow.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The delay before jitter after the `attempts`-th failure: `initial × multiplierⁿ⁻¹`,
    /// capped at `max_delay`.
    fn base(&self) -> Duration {
        let p = &self.policy;
        let cap = p.max_delay.as_nanos() as f64;
        let steps = self.attempts.saturating_sub(1).min(4096) as i32;
        let nanos = p.initial.as_nanos() as f64 * p.multiplier.max(1.0).powi(steps);
        // NaN (0 × ∞) is a zero first delay that stays zero.
        let nanos = if nanos.is_nan() { 0.0 } else { nanos.min(cap) };
        // `as` saturates; the cap keeps it within max_delay.
        Duration::from_nanos(nanos as u64).min(p.max_delay)
    }
}

/// Why [`retry`] returned without a success.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The classifier called the error permanent: it was not retried.
    #[error("{0}")]
    Permanent(E),
    /// The policy gave up (deadline or attempts); `last` is the last attempt's error.
    #[error("{last} (gave up after {attempts} attempts over {elapsed:?})")]
    GaveUp {
        last: E,
        attempts: u32,
        elapsed: Duration,
    },
    /// The stop signal fired; `last` is the error of the last attempt that finished, if any.
    #[error("stopped before the operation succeeded")]
    Stopped { last: Option<E> },
}

impl<E> RetryError<E> {
    /// The last error seen, if any.
    pub fn into_last(self) -> Option<E> {
        match self {
            RetryError::Permanent(e) | RetryError::GaveUp { last: e, .. } => Some(e),
            RetryError::Stopped { last } => last,
        }
    }
}

/// A retry about to wait: what [`retry_notify`]'s hook is told.
#[derive(Debug)]
pub struct Retrying<'a, E> {
    /// What is retried, as given to [`retry`].
    pub what: &'a str,
    /// The error of the attempt that just failed.
    pub error: &'a E,
    /// Failed attempts so far (1 after the first).
    pub attempt: u32,
    /// The wait before the next attempt.
    pub delay: Duration,
    /// Time since the first attempt began.
    pub elapsed: Duration,
}

/// The default report of a retry: one warning, `"{what} failed; retrying"`, with the attempt,
/// the delay and the error.
pub fn log_retry<E: fmt::Display>(r: &Retrying<'_, E>) {
    tracing::warn!(
        attempt = r.attempt,
        retry_in = ?r.delay,
        error = %r.error,
        "{} failed; retrying",
        r.what
    );
}

/// Runs `op` until it succeeds, `classify` calls its error [`Verdict::Permanent`], `policy`
/// gives up, or `stop` fires (which also cuts the attempt in flight short). Each retry is
/// logged once at warn ([`log_retry`]) with `what`, the attempt, the delay and the error.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    stop: Option<&Shutdown>,
    classify: impl Fn(&E) -> Verdict,
    op: F,
) -> Result<T, RetryError<E>>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_notify(policy, what, stop, classify, log_retry, op).await
}

/// [`retry`], with `notify` instead of [`log_retry`] told of each retry before its wait: for a
/// caller that counts retries, reports an outage, or logs with its own fields.
pub async fn retry_notify<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    stop: Option<&Shutdown>,
    classify: impl Fn(&E) -> Verdict,
    mut notify: impl FnMut(&Retrying<'_, E>),
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff = policy.backoff();
    let mut stop = stop.cloned();
    let mut last: Option<E> = None;
    loop {
        let result = match stop.as_mut() {
            Some(stop) if stop.is_requested() => return Err(RetryError::Stopped { last }),
            Some(stop) => tokio::select! {
                r = op() => r,
                () = stop.requested() => return Err(RetryError::Stopped { last }),
            },
            None => op().await,
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if classify(&error) == Verdict::Permanent {
            return Err(RetryError::Permanent(error));
        }
        let elapsed = started.elapsed();
        let Some(delay) = backoff.next_delay(elapsed) else {
            return Err(RetryError::GaveUp {
                last: error,
                attempts: backoff.attempts(),
                elapsed,
            });
        };
        notify(&Retrying {
            what,
            error: &error,
            attempt: backoff.attempts(),
            delay,
            elapsed,
        });
        last = Some(error);
        match stop.as_mut() {
            Some(stop) => tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.requested() => return Err(RetryError::Stopped { last }),
            },
            None => tokio::time::sleep(delay).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    proptest! {
        /// Every delay is within `[base/2, base]` with jitter (exactly `base` without), where
        /// `base` doubles from `initial` and never exceeds `max_delay`.
        #[test]
        fn delays_follow_the_base_and_never_exceed_the_cap(
            initial_ms in 0u64..5_000,
            max_ms in 0u64..60_000,
            multiplier in prop_oneof![Just(1.0), Just(1.5), Just(2.0), Just(3.0), 0.0f64..10.0],
            jitter in any::<bool>(),
            seed in any::<u64>(),
            failures in 1usize..80,
        ) {
            let policy = RetryPolicy {
                initial: ms(initial_ms),
                max_delay: ms(max_ms),
                multiplier,
                jitter,
                deadline: None,
                max_attempts: None,
            };
            let mut b = policy.backoff_seeded(seed);
            let mut previous_base = Duration::ZERO;
            for n in 1..=failures {
                let delay = b.next_delay(Duration::ZERO).expect("no deadline, no limit");
                let base = b.base();
                prop_assert!(delay <= policy.max_delay, "{delay:?} > {:?}", policy.max_delay);
                prop_assert!(base >= previous_base, "the base never shrinks");
                if jitter {
                    prop_assert!(delay >= base / 2 && delay <= base, "{delay:?} vs {base:?}");
                } else {
                    prop_assert_eq!(delay, base);
                }
                if n == 1 {
                    prop_assert_eq!(base, policy.initial.min(policy.max_delay));
                }
                previous_base = base;
            }
            prop_assert_eq!(b.attempts() as usize, failures);
        }

        /// With a deadline, a delay is handed out only when the next attempt starts before it.
        #[test]
        fn the_deadline_gives_up_before_it_is_reached(
            deadline_ms in 1u64..20_000,
            seed in any::<u64>(),
            attempt_ms in 0u64..500,
        ) {
            let policy = RetryPolicy::exponential(100 * MS, 5_000 * MS)
                .with_deadline(ms(deadline_ms));
            let mut b = policy.backoff_seeded(seed);
            let mut elapsed = ms(attempt_ms);
            let mut attempts = 1u32;
            while let Some(delay) = b.next_delay(elapsed) {
                prop_assert!(elapsed + delay < ms(deadline_ms));
                elapsed += delay + ms(attempt_ms);
                attempts += 1;
                prop_assert!(attempts < 1_000, "no end");
            }
            prop_assert_eq!(b.attempts(), attempts);
        }

        /// The same seed gives the same delays.
        #[test]
        fn seeded_backoffs_replay(seed in any::<u64>()) {
            let policy = RetryPolicy::exponential(100 * MS, 5_000 * MS);
            let (mut a, mut b) = (policy.backoff_seeded(seed), policy.backoff_seeded(seed));
            for _ in 0..20 {
                prop_assert_eq!(a.next_delay(Duration::ZERO), b.next_delay(Duration::ZERO));
            }
        }
    }

    #[test]
    fn without_jitter_delays_double_up_to_the_cap_and_reset() {
        let policy = RetryPolicy::exponential(100 * MS, 500 * MS).without_jitter();
        let mut b = policy.backoff();
        let delays: Vec<u64> = (0..5)
            .map(|_| b.next_delay(Duration::ZERO).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(Duration::ZERO), Some(100 * MS));
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy::exponential(MS, MS).with_max_attempts(3);
        let mut b = policy.backoff();
        assert!(b.next_delay(Duration::ZERO).is_some());
        assert!(b.next_delay(Duration::ZERO).is_some());
        assert_eq!(b.next_delay(Duration::ZERO), None);
        assert_eq!(b.attempts(), 3);
        // No deadline: elapsed is not read.
        let mut unbounded = RetryPolicy::exponential(MS, MS).backoff();
        assert!(unbounded.next_delay(Duration::MAX).is_some());
    }

    #[test]
    fn extreme_policies_do_not_panic() {
        let policy = RetryPolicy {
            initial: Duration::MAX,
            max_delay: Duration::MAX,
            multiplier: f64::INFINITY,
            jitter: true,
            deadline: Some(Duration::MAX),
            max_attempts: None,
        };
        let mut b = policy.backoff();
        for _ in 0..10 {
            let _ = b.next_delay(Duration::MAX);
        }
        let mut zero = RetryPolicy {
            initial: Duration::ZERO,
            multiplier: f64::INFINITY,
            ..policy
        }
        .backoff();
        for _ in 0..5 {
            assert_eq!(zero.next_delay(Duration::ZERO), Some(Duration::ZERO));
        }
    }

    #[derive(Debug, PartialEq)]
    enum Failure {
        Flaky,
        Broken,
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn classify(e: &Failure) -> Verdict {
        Verdict::transient_if(*e == Failure::Flaky)
    }

    const POLICY: RetryPolicy =
        RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

    #[tokio::test(start_paused = true)]
    async fn returns_the_success_value_after_transient_failures() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let got = retry(&POLICY, "Test", None, classify, || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err(Failure::Flaky),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        // Three waits: within [50+100+200, 100+200+400] ms.
        let waited = started.elapsed();
        assert!(waited >= 350 * MS && waited <= 700 * MS, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = retry(&POLICY, "Test", None, classify, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Failure::Broken)
        })
        .await;
        assert!(matches!(got, Err(RetryError::Permanent(Failure::Broken))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_gives_up_with_the_last_error_and_the_count() {
        let calls = AtomicU32::new(0);
        let policy = POLICY.clone().with_deadline(Duration::from_secs(3));
        let started = Instant::now();
        let mut notified = Vec::new();
        let got: Result<(), _> = retry_notify(
            &policy,
            "Test",
            None,
            classify,
            |r| notified.push((r.attempt, r.delay)),
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(Failure::Flaky)
            },
        )
        .await;
        let calls = calls.load(Ordering::Relaxed);
        match got {
            Err(RetryError::GaveUp {
                last,
                attempts,
                elapsed,
            }) => {
                assert_eq!(last, Failure::Flaky);
                assert_eq!(attempts, calls);
                assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        // Delays ≥ 50, 100, 200, 400, 800 ms: at most 6 attempts before 3 s.
        assert!((4..=6).contains(&calls), "{calls}");
        assert_eq!(notified.len() as u32, calls - 1, "each retry notified once");
        assert!(notified
            .iter()
            .enumerate()
            .all(|(i, (a, _))| *a == i as u32 + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_gives_up() {
        let calls = AtomicU32::new(0);
        let policy = POLICY.clone().with_max_attempts(4);
        let got: Result<(), _> = retry(&policy, "Test", None, classify, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Failure::Flaky)
        })
        .await;
        assert!(matches!(got, Err(RetryError::GaveUp { attempts: 4, .. })));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_wait_promptly() {
        let (trigger, stop) = crate::shutdown::channel();
        let policy = RetryPolicy::exponential(Duration::from_secs(3600), Duration::from_secs(3600));
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.trigger();
        };
        let retried = retry(&policy, "Test", Some(&stop), classify, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failure::Flaky)
        });
        let (got, ()) = tokio::join!(retried, stopper);
        assert!(
            matches!(
                got,
                Err(RetryError::Stopped {
                    last: Some(Failure::Flaky)
                })
            ),
            "{got:?}"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cuts_an_attempt_short_and_a_stopped_signal_starts_none() {
        let (trigger, stop) = crate::shutdown::channel();
        let started = Instant::now();
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.trigger();
        };
        let retried = retry(&POLICY, "Test", Some(&stop), classify, || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Failure>(())
        });
        let (got, ()) = tokio::join!(retried, stopper);
        assert!(matches!(got, Err(RetryError::Stopped { last: None })));
        assert!(started.elapsed() < Duration::from_secs(2));

        let calls = AtomicU32::new(0);
        let got = retry(&POLICY, "Test", Some(&stop), classify, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Failure>(())
        })
        .await;
        assert!(matches!(got, Err(RetryError::Stopped { last: None })));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }
}
