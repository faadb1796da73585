//! Pure membership bookkeeping, with time passed in: the lease on an assignment and the member's
//! identity (member id and generation) as error reactions change it. `super::member` does the
//! I/O and asks these what to do; the backoff between its retries is [`crate::retry::Backoff`].

use std::time::Duration;

use tokio::time::Instant;

use super::protocol::Reaction;

/// How long this member may keep treating its partitions as its own without hearing from the
/// coordinator.
///
/// The coordinator expires a member `session_timeout` after it last *received* a heartbeat (or
/// sent it its SyncGroup answer: Kafka's `GroupMetadataManager` reschedules the member's
/// session then, and on every heartbeat, also during PreparingRebalance); we count from when
/// the last successful heartbeat — or the SyncGroup that gave the assignment — was *sent*,
/// which is earlier, so our lease ends first. The lease also ends `margin` (one
/// heartbeat interval) before that, so the consumer gets that long to stop using the partitions
/// before the coordinator can even start giving them to someone else — and a new owner needs a
/// whole rebalance on top. Clocks: both sides measure durations (no wall clock), so only the
/// drift between two monotonic clocks over one session timeout matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    session_timeout: Duration,
    margin: Duration,
    renewed_at: Instant,
}

impl Lease {
    /// A lease that starts at `sent_at` (when the request that proved membership was sent).
    pub(crate) fn new(session_timeout: Duration, margin: Duration, sent_at: Instant) -> Lease {
        Lease {
            session_timeout,
            margin: margin.min(session_timeout),
            renewed_at: sent_at,
        }
    }

    /// A heartbeat sent at `sent_at` was answered without error.
    pub(crate) fn renew(&mut self, sent_at: Instant) {
        self.renewed_at = self.renewed_at.max(sent_at);
    }

    /// When the member must consider its partitions lost.
    pub(crate) fn ends_at(&self) -> Instant {
        self.renewed_at + (self.session_timeout - self.margin)
    }

    pub(crate) fn has_ended(&self, now: Instant) -> bool {
        now >= self.ends_at()
    }

    /// Time since the last successful renewal, for messages.
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.renewed_at)
    }
}

/// Who this member is to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Identity {
    /// Empty until the coordinator hands one out (KIP-394: in the first JoinGroup answer).
    pub member_id: String,
    /// The generation whose assignment the member holds, if any.
    pub generation_id: Option<i32>,
}

impl Identity {
    /// Applies a rejoin reaction: the generation is over; the member id is kept unless the
    /// coordinator has forgotten it (then we join as a new member).
    pub(crate) fn rejoin(&mut self, reaction: Reaction) {
        if let Reaction::Rejoin {
            forget_member_id, ..
        } = reaction
        {
            if forget_member_id {
                self.member_id.clear();
            }
            self.generation_id = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_ends_one_margin_before_the_session_timeout() {
        let t0 = Instant::now();
        let mut lease = Lease::new(Duration::from_secs(10), Duration::from_secs(3), t0);
        assert_eq!(lease.ends_at(), t0 + Duration::from_secs(7));
        assert!(!lease.has_ended(t0 + Duration::from_millis(6_999)));
        assert!(lease.has_ended(t0 + Duration::from_secs(7)));
        lease.renew(t0 + Duration::from_secs(5));
        assert_eq!(lease.ends_at(), t0 + Duration::from_secs(12));
        // An older heartbeat answered late never shortens the lease.
        lease.renew(t0 + Duration::from_secs(1));
        assert_eq!(lease.ends_at(), t0 + Duration::from_secs(12));
        assert_eq!(
            lease.silent_for(t0 + Duration::from_secs(8)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_margin_larger_than_the_session_ends_the_lease_at_once() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_secs(1), Duration::from_secs(5), t0);
        assert!(lease.has_ended(t0));
    }

    #[test]
    fn rejoin_keeps_the_member_id_unless_the_coordinator_forgot_it() {
        let mut id = Identity {
            member_id: "m-1".into(),
            generation_id: Some(4),
        };
        id.rejoin(Reaction::Rejoin {
            forget_member_id: false,
            lost: true,
        });
        assert_eq!(id.member_id, "m-1");
        assert_eq!(id.generation_id, None);
        id.generation_id = Some(5);
        id.rejoin(Reaction::Rejoin {
            forget_member_id: true,
            lost: true,
        });
        assert!(id.member_id.is_empty());
        assert_eq!(id.generation_id, None);
        // Other reactions do not change who we are.
        id.member_id = "m-2".into();
        id.generation_id = Some(6);
        id.rejoin(Reaction::Rediscover);
        assert_eq!(id.generation_id, Some(6));
    }
}
