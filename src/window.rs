//! Event-time window arithmetic and the window settings. Tumbling, epoch-aligned windows of
//! width `window_ms`: `start = floor(t / width) * width` (Euclidean, so negative times work),
//! `end = start + width`. Window ends are multiples of the width, so "every window whose end is
//! `<=` the watermark is closed" is the same as "closed before `window_start(watermark)`", which
//! is how `consume::core` keeps its `closed_before`. Routing and watermarks live there.

use std::time::Duration;

/// Window width, allowed lateness and idle timeout (`--window`, `--allowed-lateness`,
/// `--idle-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// Width of the tumbling windows in milliseconds; must be positive.
    pub window_ms: i64,
    /// How far behind its maximum event time a partition's watermark trails; must be `>= 0`.
    pub allowed_lateness_ms: i64,
    /// A partition with no record for this long is idle.
    pub idle_timeout: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: 60_000,
            allowed_lateness_ms: 10_000,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Errors of this module: only configuration can be wrong here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window width must be a positive number of milliseconds, got {0} ms; pass e.g. `--window 60s`")]
    Width(i64),
    #[error(
        "allowed lateness must not be negative, got {0} ms; pass e.g. `--allowed-lateness 10s`"
    )]
    Lateness(i64),
}

impl WindowConfig {
    /// Checks the invariants the rest of the consumer relies on.
    pub fn validate(&self) -> Result<(), WindowError> {
        if self.window_ms <= 0 {
            return Err(WindowError::Width(self.window_ms));
        }
        if self.allowed_lateness_ms < 0 {
            return Err(WindowError::Lateness(self.allowed_lateness_ms));
        }
        Ok(())
    }
}

/// Start of the tumbling window holding `event_time_ms`: the largest multiple of `window_ms`
/// that is `<= event_time_ms`. `window_ms` must be positive.
pub fn window_start(event_time_ms: i64, window_ms: i64) -> i64 {
    event_time_ms.div_euclid(window_ms) * window_ms
}

/// End (exclusive) of the window starting at `start_ms`. Saturates at `i64::MAX`.
pub fn window_end(start_ms: i64, window_ms: i64) -> i64 {
    start_ms.saturating_add(window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_are_epoch_aligned_and_half_open() {
        assert_eq!(window_start(0, 60_000), 0);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
        assert_eq!(window_end(i64::MAX - 5, 60_000), i64::MAX);
        assert!(WindowConfig::default().validate().is_ok());
        assert!(WindowConfig {
            window_ms: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    proptest! {
        #[test]
        fn every_time_is_in_exactly_its_window(t in -1_000_000_000_000i64..1_000_000_000_000, w in 1..10_000_000i64) {
            let start = window_start(t, w);
            prop_assert!(start <= t && t < window_end(start, w));
            prop_assert_eq!(start.rem_euclid(w), 0);
            prop_assert_eq!(window_start(start, w), start);
        }
    }
}
