//! # Consumer-group membership: which instance reads which partitions
//!
//! `app consume --group NAME` over N instances needs Kafka's group coordinator to split a topic's
//! partitions between them, move them when an instance comes or goes, and show the group in
//! Kafka's own tools. rskafka has no consumer groups (and its protocol internals carry no API
//! promise), librdkafka is not an option, so this module is a small group client of its own:
//! messages encoded by the `kafka-protocol` crate (generated from Kafka's message specs), sent over
//! connections of ours (tokio TCP, rustls with ring, SASL through `rsasl`), every call bounded.
//!
//! `app consume --group` drives it (`consume::run_group`: one run over each generation's
//! partitions). This module only decides *membership*. Records, offsets that matter (the pipeline's own
//! exactly-once checkpoint) and output stay with the consumer: offsets committed here are for
//! display (`kafka-consumer-groups --describe` shows members, partitions and lag).
//!
//! ## Layout
//! - `connection`: one framed connection (size prefix, correlation ids, one call in flight),
//!   TLS, SASL, `ApiVersions` and the version each request goes out with.
//! - `protocol`: pure request builders and answer parsers, the ConsumerProtocol
//!   subscription/assignment bytes, and the one table of reactions to error codes.
//! - [`assignor`]: the range assignor, pure and deterministic.
//! - `membership`: pure bookkeeping with time passed in: the lease and the identity (the backoff
//!   is [`crate::retry::Backoff`]).
//! - [`member`]: [`GroupMember`], the async API, and the background task doing the I/O.
//! - [`error`]: every error of the module, as one [`GroupError`] enum.
//!
//! ## Which protocol, and why
//! The **classic** group protocol (JoinGroup/SyncGroup/Heartbeat), **eager** rebalancing, the
//! **range** assignor, protocol type `consumer`:
//! - It works with every broker since Kafka 2.4 (and Kafka-compatible services), not only Kafka
//!   4.x; KIP-848's `ConsumerGroupHeartbeat` needs a 4.0+ broker with the new coordinator.
//! - Eager is the simplest correct choice for a consumer that keeps per-partition state: every
//!   rebalance revokes everything, then assigns; there is never a moment where two generations
//!   both think they own a partition, and the generation id is a plain fencing token. Cooperative
//!   rebalancing would spare the partitions that stay put, at the price of a second rebalance
//!   round and incremental revocation logic; with a handful of instances the eager pause (a few
//!   seconds) is cheaper than that complexity.
//! - Range is what the Java client does by default, so a Java consumer may share the group, and
//!   it keeps contiguous partition ranges per member.
//!
//! ## The flow
//! 1. **Connect**: any bootstrap broker; `ApiVersions` picks the version of every request (the
//!    newest both sides speak, within what this code fills in); SASL if configured. `Metadata`
//!    proves the topic exists; `FindCoordinator` (key type group) names the coordinator.
//! 2. **Join**: `JoinGroup` with an empty member id gets MEMBER_ID_REQUIRED and an id (KIP-394),
//!    then joins again with it. The coordinator answers once every member has joined (at most the
//!    rebalance timeout), naming a generation and a leader; the leader also gets every member's
//!    subscription.
//! 3. **Sync**: the leader reads the topic's partition count, computes the range assignment and
//!    sends it in `SyncGroup`; every member gets its own partitions back. The consumer hears
//!    `Assigned { generation_id, partitions }`.
//! 4. **Stable**: a `Heartbeat` every `heartbeat_interval`; `OffsetCommit` on request, fenced by
//!    the generation. The leader re-reads the partition count every `metadata_refresh` and
//!    rejoins when it changed.
//! 5. **Rebalance**: a heartbeat answered REBALANCE_IN_PROGRESS (someone joined or left) makes the
//!    member emit `Revoked`; it keeps heartbeating (its session stays alive) until the consumer
//!    releases the revocation — having committed under the old generation — and only then joins
//!    again (step 2).
//! 6. **Leave**: on shutdown, `Revoked(Shutdown)`, then `LeaveGroup` once released, so the others
//!    rebalance at once instead of after the session timeout.
//!
//! Errors (one table, `protocol::reaction`): REBALANCE_IN_PROGRESS rejoins; ILLEGAL_GENERATION
//! and UNKNOWN_MEMBER_ID mean the member was fenced — its partitions are reported *lost* and it
//! rejoins (as a new member for UNKNOWN_MEMBER_ID); NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE
//! and connection failures drop the coordinator connection, find the coordinator again and retry
//! with backoff; COORDINATOR_LOAD_IN_PROGRESS retries with backoff; settings the broker refuses
//! (session timeout out of range, authorization, another protocol on the same group id) stop
//! the member with an error saying what to change.
//!
//! ## Why no two members process a partition at once
//! - *Within the protocol*: a new generation's assignment exists only after every member of the
//!   old one has rejoined or been removed. A member rejoins only after the consumer released its
//!   revocation, i.e. after it stopped using the partitions. So a member that takes part in the
//!   rebalance has let go before anyone is given its partitions.
//! - *A member that is removed* (it stopped heartbeating: a stalled process, a partition of the
//!   network) is not asked. It protects itself with a **lease**: it counts `session_timeout` from
//!   when its last successful heartbeat was *sent* — the coordinator counts from when it
//!   *received* it, later — and reports its partitions `Lost` one `heartbeat_interval` before
//!   that. The coordinator cannot give them away before it expires the member, and the new owner
//!   needs a rebalance on top; so the lost member learns first, by at least one heartbeat
//!   interval, provided its process runs at all. Only monotonic durations are compared, never
//!   wall clocks.
//! - *Whatever is written anyway* (a process frozen across the whole window) is fenced by the
//!   generation id: the coordinator refuses commits of an old generation, and the consumer keeps
//!   the generation with its own checkpoints.
//!
//! ## Settings (defaults)
//! - `session_timeout` **45 s** (the Java default since Kafka 3.0, KIP-735): how long a silent
//!   member keeps its partitions; takeover after a crash takes about this plus one heartbeat and
//!   a rebalance. Lower it (the broker allows 6 s up) for faster takeover, at the risk of a
//!   rebalance whenever heartbeats stall that long. A clean stop (LeaveGroup) does not wait for it.
//! - `heartbeat_interval` **3 s** (the Java default), at most a third of the session timeout.
//! - `rebalance_timeout` **60 s**: how long a member has to finish with its partitions in a
//!   rebalance before the group moves on without it (twice the consumer's 30 s drain timeout).
//! - `metadata_refresh` **30 s**: how soon added partitions get assigned.

pub mod assignor;
mod connection;
pub mod error;
pub mod member;
mod membership;
mod protocol;

pub use assignor::range_assign;
pub use connection::VersionChoice;
pub use error::GroupError;
pub use member::{
    Assignment, GroupConfig, GroupEvent, GroupMember, OffsetCommitter, Revocation, RevokeReason,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_METADATA_REFRESH, DEFAULT_REBALANCE_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
};
