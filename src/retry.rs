//! TEMPORARY stub of the retry policy (replaced by the helper's module at merge).
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Transient,
    Permanent,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub jitter: bool,
    pub deadline: Option<Duration>,
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: self.clone(),
            attempts: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempts: u32,
}

impl Backoff {
    pub fn next_delay(&mut self, elapsed: Duration) -> Option<Duration> {
        if self.policy.max_attempts.is_some_and(|m| self.attempts >= m) {
            return None;
        }
        if self.policy.deadline.is_some_and(|d| elapsed >= d) {
            return None;
        }
        let d = self
            .policy
            .initial
            .mul_f64(self.policy.multiplier.powi(self.attempts as i32))
            .min(self.policy.max_delay);
        self.attempts += 1;
        Some(d)
    }
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}
