//! The errors of the group client. Each names the consumer group, the broker and the call, and
//! says what to do. None of them ever holds the SASL password: every text that comes from outside
//! (a broker's error message, an I/O or TLS error) goes through [`KafkaSecurity::redact`] first.
//!
//! [`KafkaSecurity::redact`]: crate::kafka::KafkaSecurity

use std::time::Duration;

use kafka_protocol::error::ResponseError;

pub type Result<T, E = GroupError> = std::result::Result<T, E>;

/// Everything that can go wrong in the group client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// Opening a connection (TCP, TLS, ApiVersions) failed.
    #[error(
        "consumer group `{group}`: cannot connect to the Kafka broker {broker} within {timeout:?}: \
         {reason}. {hint}"
    )]
    Connect {
        group: String,
        broker: String,
        timeout: Duration,
        reason: String,
        hint: &'static str,
    },
    /// A call failed on the wire (connection reset, closed, refused). Retried with backoff.
    #[error(
        "consumer group `{group}`: `{call}` to {broker} failed: {reason}. The broker may be down or \
         restarting (see its log); the group client retries with backoff"
    )]
    Io {
        group: String,
        broker: String,
        call: &'static str,
        reason: String,
    },
    /// A call did not answer in time. Retried with backoff.
    #[error(
        "consumer group `{group}`: `{call}` to {broker} did not answer within {timeout:?}. The broker \
         may be down or overloaded; raise --timeout or check the broker"
    )]
    Timeout {
        group: String,
        broker: String,
        call: &'static str,
        timeout: Duration,
    },
    /// The broker speaks no version of an API that this client speaks.
    #[error(
        "consumer group `{group}`: the broker {broker} offers `{call}` versions {theirs}, this client \
         speaks {ours}: consumer groups need Kafka 2.4 or newer"
    )]
    Unsupported {
        group: String,
        broker: String,
        call: &'static str,
        ours: String,
        theirs: String,
    },
    /// An answer could not be decoded, or broke the protocol (wrong correlation id, bad size).
    #[error(
        "consumer group `{group}`: the answer of {broker} to `{call}` is not valid Kafka protocol: \
         {reason}. Is {broker} a Kafka broker (and does it need --kafka-tls)?"
    )]
    Protocol {
        group: String,
        broker: String,
        call: &'static str,
        reason: String,
    },
    /// SASL authentication failed (wrong password, unknown mechanism, not a SASL listener).
    #[error(
        "consumer group `{group}`: SASL {mechanism} authentication to {broker} failed: {reason}. \
         Check --kafka-sasl-mechanism, --kafka-sasl-username and the password in \
         KAFKA_SASL_PASSWORD, and that {broker} is a SASL listener"
    )]
    Authentication {
        group: String,
        broker: String,
        mechanism: &'static str,
        reason: String,
    },
    /// The coordinator refused a call for a reason that retrying cannot fix.
    #[error("consumer group `{group}`: {broker} refused `{call}`: {error}{message}. {hint}")]
    Refused {
        group: String,
        broker: String,
        call: &'static str,
        error: ResponseError,
        /// The broker's own message, `": ..."`, or empty.
        message: String,
        hint: &'static str,
    },
    /// The coordinator is moving or loading (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
    /// COORDINATOR_LOAD_IN_PROGRESS). Retried with backoff after finding the coordinator again.
    #[error(
        "consumer group `{group}`: {broker} answered `{call}` with {error}{message}: the group's \
         coordinator is moving or loading; the group client retries with backoff"
    )]
    Unavailable {
        group: String,
        broker: String,
        call: &'static str,
        error: ResponseError,
        message: String,
    },
    /// The group is rebalancing: there is no assignment to act on right now.
    #[error(
        "consumer group `{group}`: the group is rebalancing; try again once the member has its \
         next assignment"
    )]
    Rebalancing { group: String },
    /// The subscribed topic does not exist.
    #[error(
        "consumer group `{group}`: topic `{topic}` does not exist on {brokers}; produce to it first \
         or check --topic"
    )]
    NoSuchTopic {
        group: String,
        topic: String,
        brokers: String,
    },
    /// The settings cannot work (checked before anything is sent).
    #[error("consumer group `{group}`: {reason}")]
    Config { group: String, reason: String },
    /// Offsets were not committed because the generation they belong to is over (or not the
    /// member's current one). Nothing is wrong: commit again under the next assignment.
    #[error(
        "consumer group `{group}`: offsets of generation {generation} were not committed: {reason}. \
         The group has moved on (a rebalance); commit again under the new assignment"
    )]
    CommitFenced {
        group: String,
        generation: i32,
        reason: String,
    },
    /// The member's background task has ended (it left the group, or failed earlier with the
    /// error that `next_event` returned).
    #[error(
        "consumer group `{group}`: the member is no longer in the group ({reason}); join it again"
    )]
    Stopped { group: String, reason: String },
    /// TLS or SASL settings are not usable (CA file, missing password).
    #[error("consumer group `{group}`: Kafka security settings are not usable: {reason}")]
    Security { group: String, reason: String },
}

impl GroupError {
    /// Whether the failure is of the connection (broker down, coordinator moved, timeout), so
    /// finding the coordinator again and retrying after a backoff can fix it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GroupError::Connect { .. }
                | GroupError::Io { .. }
                | GroupError::Timeout { .. }
                | GroupError::Unavailable { .. }
        )
    }

    /// The group client's classifier ([`crate::retry`]): [`is_transient`](Self::is_transient)
    /// errors are worth another attempt; every other error (a refusal, bad settings, SASL) is
    /// permanent.
    pub fn verdict(&self) -> crate::retry::Verdict {
        crate::retry::Verdict::transient_if(self.is_transient())
    }
}

/// The broker's optional error message as `": message"`, for [`GroupError::Refused`].
pub(crate) fn broker_message(message: Option<&str>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}
