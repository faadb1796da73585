//! [`GroupMember`]: one member of a consumer group, driven by a background task that owns the
//! connections, and seen by the consumer as a stream of [`GroupEvent`]s plus a few calls.
//!
//! ```text
//!  consumer                         GroupMember task                      coordinator
//!  ────────                         ────────────────                      ───────────
//!  join(config, shutdown) ───────▶  bootstrap, Metadata, FindCoordinator
//!                                   JoinGroup ───────────────────────────▶ (waits for all)
//!                                   SyncGroup (leader: range assignment) ▶
//!  next_event: Assigned(g, P) ◀───  heartbeat every --heartbeat-interval ▶
//!  commit_offsets(g, ..) ─────────▶ OffsetCommit ────────────────────────▶
//!                                   heartbeat: REBALANCE_IN_PROGRESS ◀────
//!  next_event: Revoked(g, P) ◀────  (keeps heartbeating)
//!  ...finish with P, commit...
//!  drop the Revocation ───────────▶ JoinGroup ... SyncGroup ...
//!  next_event: Assigned(g+1, P') ◀─
//! ```
//!
//! The task runs three phases in a loop: **join** (JoinGroup + SyncGroup until an assignment),
//! **stable** (heartbeats and commits while the lease holds), **revoke** (the consumer finishes
//! with the partitions; the task waits for it before joining again). Each phase keeps answering
//! commands and watching the shutdown future, so nothing the consumer calls ever waits for a
//! rebalance to end. Errors go through `protocol::reaction`: connection problems and a moving
//! coordinator are retried with backoff for as long as it takes (the lease makes that safe: the
//! partitions are reported lost before anyone else can own them); settings the broker refuses end
//! the task with an error that says what to change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::{
    FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::assignor::range_assign;
use super::connection::{Connection, ConnectionSettings, GroupRequest, VersionChoice};
use super::error::{broker_message, GroupError, Result};
use super::membership::{Identity, Lease};
use super::protocol::{self, Reaction, Refusal, TopicState};
use crate::kafka::KafkaConfig;
use crate::retry::{Backoff, RetryPolicy, Verdict};

/// Default `--session-timeout`: the Java client's default since Kafka 3.0 (KIP-735).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// Default `--heartbeat-interval`: the Java client's default.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Default `--rebalance-timeout`: twice the consumer's default `--drain-timeout` (30 s), so a
/// member can write what it holds for its partitions before the group moves on without it.
pub const DEFAULT_REBALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the leader checks whether the topic gained partitions (the Java client's
/// `metadata.max.age.ms` is 5 min; a pipeline wants new partitions read sooner).
pub const DEFAULT_METADATA_REFRESH: Duration = Duration::from_secs(30);

/// Events kept in the channel to the consumer. The task waits for each revocation to be released
/// before it can produce the next assignment, so at most an `Assigned` and its `Revoked` are ever
/// waiting: this never fills.
const EVENT_CAPACITY: usize = 4;
/// Commands (commits) waiting for the task; a caller past this waits (backpressure).
const COMMAND_CAPACITY: usize = 8;
/// The first delay of the group client's retries ([`crate::retry`]); they double, with jitter,
/// up to the heartbeat interval (at least 500 ms). Joining retries without a deadline (the
/// lease makes that safe, module docs); finding the coordinator before the start, for
/// `--timeout`.
const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// How to join which group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Brokers, the bound on every call (`--timeout`), TLS and SASL: the same as every other
    /// Kafka connection of the program.
    pub kafka: KafkaConfig,
    /// `--group`.
    pub group_id: String,
    /// The topic this member reads.
    pub topic: String,
    /// Shown by `kafka-consumer-groups` as CLIENT-ID.
    pub client_id: String,
    /// The coordinator drops a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How often the member heartbeats; at most a third of the session timeout.
    pub heartbeat_interval: Duration,
    /// How long the coordinator waits for every member to rejoin in a rebalance, i.e. how long
    /// a member has to finish with its partitions.
    pub rebalance_timeout: Duration,
    /// How often the leader checks the topic's partition count (a change triggers a rebalance).
    pub metadata_refresh: Duration,
    /// Which protocol versions to use (the oldest only to test compatibility).
    pub versions: VersionChoice,
}

impl GroupConfig {
    /// The defaults for everything but where, which group and which topic.
    pub fn new(kafka: KafkaConfig, group_id: impl Into<String>, topic: impl Into<String>) -> Self {
        GroupConfig {
            kafka,
            group_id: group_id.into(),
            topic: topic.into(),
            client_id: "reclamacoes".into(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            rebalance_timeout: DEFAULT_REBALANCE_TIMEOUT,
            metadata_refresh: DEFAULT_METADATA_REFRESH,
            versions: VersionChoice::Newest,
        }
    }

    /// Checks the settings before anything is sent.
    pub fn validate(&self) -> Result<()> {
        let problem = |reason: String| {
            Err(GroupError::Config {
                group: self.group_id.clone(),
                reason,
            })
        };
        if self.group_id.trim().is_empty() {
            return problem("--group must not be empty".into());
        }
        if self.topic.is_empty() {
            return problem("--topic must not be empty".into());
        }
        let max = Duration::from_millis(i32::MAX as u64);
        for (name, value) in [
            ("--session-timeout", self.session_timeout),
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--rebalance-timeout", self.rebalance_timeout),
        ] {
            if value < Duration::from_millis(1) || value > max {
                return problem(format!("{name} {value:?} must lie between 1ms and {max:?}"));
            }
        }
        if self.heartbeat_interval * 3 > self.session_timeout {
            return problem(format!(
                "--heartbeat-interval {:?} must be at most a third of --session-timeout {:?}, so \
                 that a late heartbeat or two does not cost the member its partitions",
                self.heartbeat_interval, self.session_timeout
            ));
        }
        if self.metadata_refresh.is_zero() {
            return problem("the metadata refresh interval must not be zero".into());
        }
        Ok(())
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// The partitions this member owns in one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The fencing token: the coordinator refuses commits of any other generation, and every
    /// rebalance starts a new one. Keep it with whatever is written for these partitions.
    pub generation_id: i32,
    pub member_id: String,
    pub topic: String,
    pub partitions: BTreeSet<i32>,
    /// Whether this member computed the group's assignment.
    pub leader: bool,
}

/// Why an assignment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeReason {
    /// A rebalance: the member is still in the generation; others get nothing of ours until we
    /// release the revocation (or the rebalance timeout passes). Commit now, then release.
    Rebalance,
    /// The generation is over without us: the coordinator expired or fenced the member, or no
    /// heartbeat was answered for the lease. The partitions may already be someone else's: do
    /// not commit, drop what is not durable.
    Lost { reason: String },
    /// The shutdown future resolved: finish, commit, release; the member then leaves the group.
    Shutdown,
}

/// The end of an [`Assignment`]. Keep it while finishing with the partitions; dropping it (or
/// [`release`](Revocation::release)) tells the member it may join the next generation.
pub struct Revocation {
    pub assignment: Assignment,
    pub reason: RevokeReason,
    _released: oneshot::Sender<()>,
}

impl Revocation {
    /// Whether the partitions may already belong to another member.
    pub fn is_lost(&self) -> bool {
        matches!(self.reason, RevokeReason::Lost { .. })
    }

    /// Done with the partitions (the same as dropping it).
    pub fn release(self) {}
}

impl fmt::Debug for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocation")
            .field("assignment", &self.assignment)
            .field("reason", &self.reason)
            .finish()
    }
}

/// What the consumer hears from the member. Every `Assigned` is followed by exactly one
/// `Revoked` of the same generation before the next `Assigned`, so a consumer can hold one
/// assignment at a time.
#[derive(Debug)]
pub enum GroupEvent {
    Assigned(Assignment),
    Revoked(Revocation),
}

enum Command {
    Commit {
        generation_id: i32,
        offsets: BTreeMap<i32, i64>,
        reply: oneshot::Sender<Result<()>>,
    },
    Committed {
        partitions: BTreeSet<i32>,
        reply: oneshot::Sender<Result<BTreeMap<i32, i64>>>,
    },
    Leave {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// One member of a consumer group. See the module docs for the flow.
///
/// Dropping it without [`leave`](GroupMember::leave) (or the shutdown future) abandons the
/// membership like a crash would: the coordinator gives its partitions to the others once the
/// session timeout has passed.
pub struct GroupMember {
    group_id: String,
    events: mpsc::Receiver<Result<GroupEvent>>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GroupMember {
    /// Connects (bounded by `--timeout`), checks that the topic exists and finds the group's
    /// coordinator, then joins in the background: the first assignment arrives through
    /// [`next_event`](GroupMember::next_event). When `shutdown` resolves, the member revokes its
    /// assignment (a [`RevokeReason::Shutdown`] event), waits for it to be released (at most the
    /// rebalance timeout), leaves the group and ends the event stream.
    pub async fn join(
        config: GroupConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<GroupMember> {
        config.validate()?;
        let (event_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let (commands, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let group_id = config.group_id.clone();
        let mut task = Task::new(config, Box::pin(shutdown), event_tx, command_rx);
        task.prepare().await?;
        let task = tokio::spawn(task.run());
        Ok(GroupMember {
            group_id,
            events,
            commands,
            task,
        })
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The next assignment or revocation; `Ok(None)` once the member has left the group; an
    /// error (once, then `None`) when the member had to stop, saying why.
    pub async fn next_event(&mut self) -> Result<Option<GroupEvent>> {
        match self.events.recv().await {
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    fn stopped(&self) -> GroupError {
        GroupError::Stopped {
            group: self.group_id.clone(),
            reason: "it has left the group or failed; `next_event` says why".into(),
        }
    }

    async fn ask<T>(&self, command: Command, reply: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.stopped())?;
        reply.await.map_err(|_| self.stopped())?
    }

    /// Commits `offsets` (partition -> the next offset to read, Kafka's convention) for the
    /// generation `generation_id`, for display: `kafka-consumer-groups --describe` then shows
    /// them and the lag. Refused with [`GroupError::CommitFenced`] unless `generation_id` is the
    /// member's current generation (including while its revocation is being finished).
    pub async fn commit_offsets(
        &self,
        generation_id: i32,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        self.committer()
            .commit_offsets(generation_id, offsets)
            .await
    }

    /// A handle that commits offsets from another task, so that waiting for a commit's answer
    /// never stands in the way of [`next_event`](GroupMember::next_event): the member may hold
    /// a commit back until a revocation is released, which needs the event to be read first.
    pub fn committer(&self) -> OffsetCommitter {
        OffsetCommitter {
            group_id: self.group_id.clone(),
            commands: self.commands.clone(),
        }
    }

    /// The group's committed offsets of `partitions` (those without one are left out).
    pub async fn committed_offsets(
        &self,
        partitions: &BTreeSet<i32>,
    ) -> Result<BTreeMap<i32, i64>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Committed {
            partitions: partitions.clone(),
            reply,
        };
        self.ask(command, answer).await
    }

    /// Leaves the group now (LeaveGroup): the others get the partitions at once instead of after
    /// the session timeout. Call it once done with the current assignment; no `Revoked` event
    /// follows. `Ok` also when the member had already left.
    pub async fn leave(self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Leave { reply }).await.is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

/// Commits offsets for a [`GroupMember`] from anywhere (see [`GroupMember::committer`]).
#[derive(Debug, Clone)]
pub struct OffsetCommitter {
    group_id: String,
    commands: mpsc::Sender<Command>,
}

impl OffsetCommitter {
    /// [`GroupMember::commit_offsets`].
    pub async fn commit_offsets(
        &self,
        generation_id: i32,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Commit {
            generation_id,
            offsets: offsets.clone(),
            reply,
        };
        let stopped = || GroupError::Stopped {
            group: self.group_id.clone(),
            reason: "it has left the group or failed; `next_event` says why".into(),
        };
        self.commands.send(command).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

// ---------------------------------------------------------------------------------------------
// The background task
// ---------------------------------------------------------------------------------------------

/// Why the member stops.
enum Stop {
    Shutdown,
    Leave(oneshot::Sender<Result<()>>),
    /// The `GroupMember` is gone (its drop aborts the task; this only ends a loop cleanly).
    Dropped,
}

/// How a stable phase ended.
enum End {
    Rebalance,
    Lost { reason: String, reaction: Reaction },
    Stop,
}

/// What one heartbeat found.
enum Beat {
    Alive {
        sent_at: Instant,
    },
    Rejoin(Reaction),
    /// A transient failure (already logged); the lease decides when it matters.
    Failed,
}

/// The outcome of one join attempt.
enum JoinStep {
    Joined {
        assignment: Assignment,
        lease: Lease,
        partition_counts: BTreeMap<String, i32>,
    },
    /// Join again at once (member id adopted, generation over).
    Again,
    /// A stop was requested while joining.
    Interrupted,
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The group client's retry policy (see [`RETRY_INITIAL`]).
fn retry_policy(config: &GroupConfig) -> RetryPolicy {
    RetryPolicy::exponential(
        RETRY_INITIAL,
        config.heartbeat_interval.max(Duration::from_millis(500)),
    )
}

struct Task {
    config: Arc<GroupConfig>,
    settings: Arc<ConnectionSettings>,
    bootstrap: Vec<String>,
    next_bootstrap: usize,
    /// Any broker: Metadata and FindCoordinator.
    any: Option<Connection>,
    coordinator: Option<Connection>,
    identity: Identity,
    topics: Vec<String>,
    events: mpsc::Sender<Result<GroupEvent>>,
    commands: mpsc::Receiver<Command>,
    shutdown: Shutdown,
    shutdown_fired: bool,
    stop: Option<Stop>,
    backoff: Backoff,
}

impl Task {
    fn new(
        config: GroupConfig,
        shutdown: Shutdown,
        events: mpsc::Sender<Result<GroupEvent>>,
        commands: mpsc::Receiver<Command>,
    ) -> Task {
        let settings = Arc::new(ConnectionSettings {
            group: config.group_id.clone(),
            client_id: config.client_id.clone(),
            security: config.kafka.security.clone(),
            timeout: config.kafka.timeout,
            versions: config.versions,
        });
        let bootstrap = config
            .kafka
            .brokers
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        let backoff = retry_policy(&config).backoff();
        Task {
            topics: vec![config.topic.clone()],
            config: Arc::new(config),
            settings,
            bootstrap,
            next_bootstrap: 0,
            any: None,
            coordinator: None,
            identity: Identity::default(),
            events,
            commands,
            shutdown,
            shutdown_fired: false,
            stop: None,
            backoff,
        }
    }

    fn group(&self) -> &str {
        &self.config.group_id
    }

    // --- connections ---------------------------------------------------------------------

    /// A connection to any bootstrap broker, trying each in turn.
    async fn any_broker(&mut self) -> Result<&mut Connection> {
        if self.any.is_none() {
            if self.bootstrap.is_empty() {
                return Err(GroupError::Config {
                    group: self.group().to_string(),
                    reason: "--brokers is empty".into(),
                });
            }
            let mut last = None;
            for i in 0..self.bootstrap.len() {
                let index = (self.next_bootstrap + i) % self.bootstrap.len();
                match Connection::open(&self.bootstrap[index], self.settings.clone()).await {
                    Ok(connection) => {
                        self.next_bootstrap = index;
                        self.any = Some(connection);
                        break;
                    }
                    Err(e) if e.is_transient() => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            if self.any.is_none() {
                self.next_bootstrap = (self.next_bootstrap + 1) % self.bootstrap.len();
                return Err(last.expect("at least one broker was tried"));
            }
        }
        Ok(self.any.as_mut().expect("connected above"))
    }

    /// Calls any broker; a failed connection is dropped so the next call opens another. A
    /// connection that sat idle may have been closed by the broker
    /// (`connections.max.idle.ms`), so a wire failure on a reused one is retried once on a fresh
    /// one: otherwise a member that becomes leader after a quiet spell would fail its first
    /// Metadata call and cost the group another rebalance.
    async fn call_any<R: GroupRequest>(
        &mut self,
        build: impl Fn(i16) -> R,
    ) -> Result<(i16, R::Response, String)> {
        let reused = self.any.is_some();
        match self.call_any_once(&build).await {
            Err(GroupError::Io { .. }) if reused => self.call_any_once(&build).await,
            other => other,
        }
    }

    async fn call_any_once<R: GroupRequest>(
        &mut self,
        build: &impl Fn(i16) -> R,
    ) -> Result<(i16, R::Response, String)> {
        let connection = self.any_broker().await?;
        let broker = connection.broker().to_string();
        let version = connection.version::<R>()?;
        match connection.call(&build(version), Duration::ZERO).await {
            Ok((version, answer)) => Ok((version, answer, broker)),
            Err(e) => {
                self.any = None;
                Err(e)
            }
        }
    }

    fn refusal_error(&self, broker: &str, call: &'static str, refusal: Refusal) -> GroupError {
        let group = self.group().to_string();
        let message = self
            .settings
            .security
            .redact(broker_message(refusal.message.as_deref()));
        match protocol::reaction(refusal.error) {
            Reaction::Fatal { hint } => GroupError::Refused {
                group,
                broker: broker.to_string(),
                call,
                error: refusal.error,
                message,
                hint,
            },
            _ => GroupError::Unavailable {
                group,
                broker: broker.to_string(),
                call,
                error: refusal.error,
                message,
            },
        }
    }

    /// The coordinator's connection, found and opened when there is none.
    async fn coordinator(&mut self) -> Result<&mut Connection> {
        if self.coordinator.is_none() {
            let group = self.group().to_string();
            let (version, answer, broker) = self
                .call_any(|v| protocol::find_coordinator_request(v, &group))
                .await?;
            let address = protocol::parse_find_coordinator(version, &answer)
                .map_err(|r| self.refusal_error(&broker, FindCoordinatorRequest::NAME, r))?;
            tracing::debug!(group = %group, coordinator = %address, "Found the group coordinator");
            self.coordinator = Some(Connection::open(&address, self.settings.clone()).await?);
        }
        Ok(self.coordinator.as_mut().expect("connected above"))
    }

    /// Calls the coordinator; a transient failure drops the connection (the coordinator may
    /// have moved), so the next call finds it again.
    async fn call_coordinator<R: GroupRequest>(
        &mut self,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response, String)> {
        let connection = self.coordinator().await?;
        let broker = connection.broker().to_string();
        let version = connection.version::<R>()?;
        match connection.call(&build(version), Duration::ZERO).await {
            Ok((version, answer)) => Ok((version, answer, broker)),
            Err(e) => {
                self.coordinator = None;
                Err(e)
            }
        }
    }

    /// Partition counts of `topics` (missing topics are left out, and logged).
    async fn partition_counts(
        &mut self,
        topics: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, i32>> {
        let (version, answer, broker) = self
            .call_any(|v| protocol::metadata_request(v, topics))
            .await?;
        let states = protocol::parse_metadata(version, &answer, topics)
            .map_err(|r| self.refusal_error(&broker, MetadataRequest::NAME, r))?;
        let mut counts = BTreeMap::new();
        for (topic, state) in states {
            match state {
                TopicState::Partitions(n) => {
                    counts.insert(topic, n);
                }
                TopicState::Missing => {
                    tracing::warn!(group = %self.group(), topic = %topic, "A subscribed topic does not exist; nothing of it is assigned");
                }
                TopicState::Refused(r) => {
                    return Err(self.refusal_error(&broker, MetadataRequest::NAME, r))
                }
            }
        }
        Ok(counts)
    }

    // --- the loop ----------------------------------------------------------------------------

    /// Before the task is spawned: the brokers answer, the topic exists, the coordinator is
    /// found (retried while it is still being elected, within the timeout).
    async fn prepare(&mut self) -> Result<()> {
        let topic: BTreeSet<String> = [self.config.topic.clone()].into();
        let counts = self.partition_counts(&topic).await?;
        if !counts.contains_key(&self.config.topic) {
            return Err(GroupError::NoSuchTopic {
                group: self.group().to_string(),
                topic: self.config.topic.clone(),
                brokers: self.config.kafka.brokers.clone(),
            });
        }
        let started = Instant::now();
        let mut backoff = retry_policy(&self.config)
            .with_deadline(self.config.kafka.timeout)
            .backoff();
        loop {
            match self.coordinator().await {
                Ok(_) => return Ok(()),
                // Only a coordinator still being elected is waited for: a broker that cannot
                // be reached fails the start at once.
                Err(e @ GroupError::Unavailable { .. }) => {
                    match backoff.next_delay(started.elapsed()) {
                        Some(delay) => {
                            tracing::debug!(error = %e, "Waiting for the group coordinator");
                            tokio::time::sleep(delay).await;
                        }
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run(mut self) {
        let outcome = self.phases().await;
        if let Err(e) = outcome {
            tracing::error!(group = %self.group(), error = %e, "The group member stopped");
            if let Some(Stop::Leave(reply)) = self.stop.take() {
                let _ = reply.send(Err(e.clone()));
            }
            let _ = self.events.send(Err(e)).await;
        }
    }

    async fn phases(&mut self) -> Result<()> {
        while self.stop.is_none() {
            let Some((assignment, lease, counts)) = self.join_phase().await? else {
                break;
            };
            tracing::info!(
                group = %self.group(),
                generation = assignment.generation_id,
                member = %assignment.member_id,
                leader = assignment.leader,
                partitions = ?assignment.partitions,
                "Assigned"
            );
            if self
                .events
                .send(Ok(GroupEvent::Assigned(assignment.clone())))
                .await
                .is_err()
            {
                return Ok(()); // nobody listens: the GroupMember is gone
            }
            let end = self.stable_phase(&assignment, lease, &counts).await?;
            self.revoke_phase(assignment, end).await?;
        }
        self.leave_group().await
    }

    /// Joins until an assignment arrives, or `None` when a stop was requested.
    async fn join_phase(&mut self) -> Result<Option<(Assignment, Lease, BTreeMap<String, i32>)>> {
        loop {
            if self.stop.is_some() {
                return Ok(None);
            }
            match self.join_once().await {
                Ok(JoinStep::Joined {
                    assignment,
                    lease,
                    partition_counts,
                }) => {
                    self.backoff.reset();
                    return Ok(Some((assignment, lease, partition_counts)));
                }
                Ok(JoinStep::Again) => {}
                Ok(JoinStep::Interrupted) => return Ok(None),
                Err(e) if e.verdict() == Verdict::Transient => {
                    // No deadline: the policy never gives up.
                    let delay = self
                        .backoff
                        .next_delay(Duration::ZERO)
                        .unwrap_or(self.backoff.policy().max_delay);
                    tracing::warn!(group = %self.group(), attempt = self.backoff.attempts(),
                        retry_in = ?delay, error = %e, "Joining the group failed; retrying");
                    self.coordinator = None;
                    self.pause(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn join_once(&mut self) -> Result<JoinStep> {
        let config = self.config.clone();
        let connection = self.coordinator().await?;
        let broker = connection.broker().to_string();
        let version = connection.version::<JoinGroupRequest>()?;
        let request = protocol::join_request(
            version,
            &protocol::JoinParams {
                group: &config.group_id,
                member_id: &self.identity.member_id,
                session_timeout_ms: millis(config.session_timeout),
                rebalance_timeout_ms: millis(config.rebalance_timeout),
                topics: &self.topics,
                reason: if self.identity.member_id.is_empty() {
                    "joining"
                } else {
                    "rejoining after a rebalance"
                },
            },
        );
        // The coordinator holds JoinGroup until every member has rejoined (at most the
        // rebalance timeout).
        let Some((_, joined)) = self
            .interruptible(&request, config.rebalance_timeout)
            .await?
        else {
            return Ok(JoinStep::Interrupted);
        };
        if let Some(error) = joined.error_code.err() {
            return match protocol::reaction(error) {
                Reaction::AdoptMemberId => {
                    self.identity.member_id = joined.member_id.to_string();
                    Ok(JoinStep::Again)
                }
                r @ Reaction::Rejoin { .. } => {
                    self.identity.rejoin(r);
                    Ok(JoinStep::Again)
                }
                _ => {
                    let refusal = Refusal {
                        error,
                        message: None,
                    };
                    Err(self.refusal_error(&broker, JoinGroupRequest::NAME, refusal))
                }
            };
        }
        self.identity.member_id = joined.member_id.to_string();
        let generation_id = joined.generation_id;
        let leader = joined.leader.as_str() == self.identity.member_id;

        let mut partition_counts = BTreeMap::new();
        let assignments = if leader {
            let mut subscriptions = BTreeMap::new();
            for member in &joined.members {
                let topics = protocol::decode_subscription(&member.metadata).unwrap_or_else(|e| {
                    tracing::warn!(group = %config.group_id, member = %member.member_id, error = %e, "Cannot read a member's subscription; it gets nothing");
                    BTreeSet::new()
                });
                subscriptions.insert(member.member_id.to_string(), topics);
            }
            let topics: BTreeSet<String> = subscriptions.values().flatten().cloned().collect();
            partition_counts = self.partition_counts(&topics).await?;
            range_assign(&partition_counts, &subscriptions)
        } else {
            BTreeMap::new()
        };

        let sent_at = Instant::now();
        let connection = self.coordinator().await?;
        let version = connection.version::<SyncGroupRequest>()?;
        let request = protocol::sync_request(
            version,
            &config.group_id,
            generation_id,
            &self.identity.member_id,
            &assignments,
        );
        // Followers wait in SyncGroup until the leader has sent the assignment.
        let Some((_, synced)) = self
            .interruptible(&request, config.rebalance_timeout)
            .await?
        else {
            return Ok(JoinStep::Interrupted);
        };
        if let Some(error) = synced.error_code.err() {
            return match protocol::reaction(error) {
                r @ Reaction::Rejoin { .. } => {
                    self.identity.rejoin(r);
                    Ok(JoinStep::Again)
                }
                _ => {
                    let refusal = Refusal {
                        error,
                        message: None,
                    };
                    Err(self.refusal_error(&broker, SyncGroupRequest::NAME, refusal))
                }
            };
        }
        let topics = protocol::decode_assignment(&synced.assignment).map_err(|reason| {
            GroupError::Protocol {
                group: config.group_id.clone(),
                broker: broker.clone(),
                call: SyncGroupRequest::NAME,
                reason: format!("the leader's assignment cannot be read: {reason}"),
            }
        })?;
        self.identity.generation_id = Some(generation_id);
        let partitions = topics.get(&config.topic).cloned().unwrap_or_default();
        Ok(JoinStep::Joined {
            assignment: Assignment {
                generation_id,
                member_id: self.identity.member_id.clone(),
                topic: config.topic.clone(),
                partitions,
                leader,
            },
            lease: Lease::new(config.session_timeout, config.heartbeat_interval, sent_at),
            partition_counts,
        })
    }

    /// A coordinator call that may wait long (JoinGroup, SyncGroup), while commands are
    /// answered and a stop is noticed. `None`: interrupted by a stop (the connection is dropped,
    /// its answer would arrive out of turn).
    async fn interruptible<R: GroupRequest>(
        &mut self,
        request: &R,
        extra_wait: Duration,
    ) -> Result<Option<(i16, R::Response)>> {
        let group = self.config.group_id.clone();
        let outcome = {
            let connection = self.coordinator.as_mut().expect("the caller connected");
            let call = connection.call(request, extra_wait);
            tokio::pin!(call);
            loop {
                tokio::select! {
                    result = &mut call => break Some(result),
                    () = &mut self.shutdown, if !self.shutdown_fired => {
                        self.shutdown_fired = true;
                        self.stop = Some(Stop::Shutdown);
                        break None;
                    }
                    command = self.commands.recv(), if self.stop.is_none() => match command {
                        Some(Command::Leave { reply }) => {
                            self.stop = Some(Stop::Leave(reply));
                            break None;
                        }
                        Some(other) => refuse_while_rebalancing(other, &group),
                        None => {
                            self.stop = Some(Stop::Dropped);
                            break None;
                        }
                    },
                }
            }
        };
        match outcome {
            Some(Ok(answer)) => Ok(Some(answer)),
            Some(Err(e)) => {
                self.coordinator = None;
                Err(e)
            }
            None => {
                self.coordinator = None;
                Ok(None)
            }
        }
    }

    /// Waits `delay` (a backoff), answering commands and noticing a stop.
    async fn pause(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        let group = self.config.group_id.clone();
        while self.stop.is_none() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = &mut self.shutdown, if !self.shutdown_fired => {
                    self.shutdown_fired = true;
                    self.stop = Some(Stop::Shutdown);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Leave { reply }) => self.stop = Some(Stop::Leave(reply)),
                    Some(other) => refuse_while_rebalancing(other, &group),
                    None => self.stop = Some(Stop::Dropped),
                },
            }
        }
    }

    fn heartbeat_timer(&self) -> tokio::time::Interval {
        let period = self.config.heartbeat_interval;
        let mut timer = tokio::time::interval_at(Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    }

    /// Heartbeats and commits while the assignment holds.
    async fn stable_phase(
        &mut self,
        assignment: &Assignment,
        mut lease: Lease,
        partition_counts: &BTreeMap<String, i32>,
    ) -> Result<End> {
        let mut heartbeat = self.heartbeat_timer();
        let refresh = self.config.metadata_refresh;
        let mut metadata = tokio::time::interval_at(Instant::now() + refresh, refresh);
        metadata.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut self.shutdown, if !self.shutdown_fired => {
                    self.shutdown_fired = true;
                    self.stop = Some(Stop::Shutdown);
                    return Ok(End::Stop);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Leave { reply }) => {
                        self.stop = Some(Stop::Leave(reply));
                        return Ok(End::Stop);
                    }
                    Some(other) => self.serve(other, Some(assignment.generation_id)).await,
                    None => {
                        self.stop = Some(Stop::Dropped);
                        return Ok(End::Stop);
                    }
                },
                _ = heartbeat.tick() => {
                    match self.heartbeat(assignment.generation_id, lease.ends_at()).await? {
                        Beat::Alive { sent_at } => lease.renew(sent_at),
                        Beat::Rejoin(r @ Reaction::Rejoin { lost: true, .. }) => {
                            return Ok(End::Lost {
                                reason: "the coordinator has fenced this member (its generation is \
                                         over: the session expired or the group moved on)".into(),
                                reaction: r,
                            });
                        }
                        Beat::Rejoin(_) => {
                            tracing::info!(group = %self.group(), generation = assignment.generation_id, "The group is rebalancing; revoking");
                            return Ok(End::Rebalance);
                        }
                        Beat::Failed => {}
                    }
                }
                () = tokio::time::sleep_until(lease.ends_at()) => {}
                _ = metadata.tick(), if assignment.leader => {
                    if self.partitions_changed(partition_counts).await {
                        return Ok(End::Rebalance);
                    }
                }
            }
            let now = Instant::now();
            if lease.has_ended(now) {
                return Ok(End::Lost {
                    reason: format!(
                        "no heartbeat was answered for {:?} (session timeout {:?}); the \
                         coordinator may already have given the partitions to others",
                        lease.silent_for(now),
                        self.config.session_timeout
                    ),
                    reaction: Reaction::Rejoin {
                        forget_member_id: false,
                        lost: true,
                    },
                });
            }
        }
    }

    /// Whether the subscribed topics' partition counts differ from those the assignment was
    /// made with (the leader then rejoins, which rebalances the group).
    async fn partitions_changed(&mut self, assigned_with: &BTreeMap<String, i32>) -> bool {
        let topics: BTreeSet<String> = assigned_with
            .keys()
            .cloned()
            .chain(self.topics.iter().cloned())
            .collect();
        match self.partition_counts(&topics).await {
            Ok(now) if &now != assigned_with => {
                tracing::info!(group = %self.group(), before = ?assigned_with, now = ?now, "Partitions changed; rebalancing");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(group = %self.group(), error = %e, "Checking the partition count failed");
                false
            }
        }
    }

    /// One heartbeat, finished by `deadline` (the lease end) at the latest.
    async fn heartbeat(&mut self, generation_id: i32, deadline: Instant) -> Result<Beat> {
        let sent_at = Instant::now();
        let group = self.config.group_id.clone();
        let member_id = self.identity.member_id.clone();
        let attempt = self
            .call_coordinator(|_| protocol::heartbeat_request(&group, generation_id, &member_id));
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.coordinator = None;
                tracing::warn!(group = %group, "Heartbeat did not complete before the lease ended");
                return Ok(Beat::Failed);
            }
        };
        let (_, answer, broker) = match outcome {
            Ok(answer) => answer,
            Err(e) if e.is_transient() => {
                tracing::warn!(group = %group, error = %e, "Heartbeat failed; retrying at the next interval");
                return Ok(Beat::Failed);
            }
            Err(e) => return Err(e),
        };
        let Some(error) = answer.error_code.err() else {
            self.backoff.reset();
            return Ok(Beat::Alive { sent_at });
        };
        match protocol::reaction(error) {
            r @ Reaction::Rejoin { .. } => {
                tracing::debug!(group = %group, generation = generation_id, %error, "Heartbeat: rejoin needed");
                Ok(Beat::Rejoin(r))
            }
            Reaction::Rediscover | Reaction::RetryLater => {
                self.coordinator = None;
                tracing::warn!(group = %group, %error, "Heartbeat: the coordinator moved or is loading; finding it again");
                Ok(Beat::Failed)
            }
            Reaction::AdoptMemberId | Reaction::Fatal { .. } => {
                let refusal = Refusal {
                    error,
                    message: None,
                };
                Err(self.refusal_error(&broker, HeartbeatRequest::NAME, refusal))
            }
        }
    }

    /// Tells the consumer the assignment is over and waits until it has finished with it.
    async fn revoke_phase(&mut self, assignment: Assignment, end: End) -> Result<()> {
        let generation_id = assignment.generation_id;
        let (reason, lost_reaction) = match end {
            End::Rebalance => (RevokeReason::Rebalance, None),
            End::Lost { reason, reaction } => (RevokeReason::Lost { reason }, Some(reaction)),
            End::Stop => match self.stop {
                Some(Stop::Shutdown) => (RevokeReason::Shutdown, None),
                // leave() was called: the caller is done with the partitions; nobody reads
                // events any more.
                _ => return Ok(()),
            },
        };
        let lost = lost_reaction.is_some();
        if lost {
            tracing::warn!(group = %self.group(), generation = generation_id, reason = ?reason, "Partitions lost");
        }
        let (released_tx, mut released) = oneshot::channel();
        let revocation = Revocation {
            assignment,
            reason,
            _released: released_tx,
        };
        if self
            .events
            .send(Ok(GroupEvent::Revoked(revocation)))
            .await
            .is_err()
        {
            self.stop = Some(Stop::Dropped);
            return Ok(());
        }
        let started = Instant::now();
        let patience = started + self.config.rebalance_timeout;
        let mut warned = false;
        let mut heartbeat = self.heartbeat_timer();
        // Commits count for the generation until the revocation is released — unless lost.
        let may_commit = (!lost).then_some(generation_id);
        loop {
            tokio::select! {
                _ = &mut released => break,
                () = tokio::time::sleep_until(patience), if !warned => {
                    warned = true;
                    if matches!(self.stop, Some(Stop::Shutdown)) {
                        tracing::warn!(group = %self.group(), "The revoked partitions were not released within the rebalance timeout; leaving the group anyway");
                        break;
                    }
                    tracing::warn!(group = %self.group(), "The revoked partitions were not released within the rebalance timeout; the group continues without this member, which rejoins once they are");
                }
                _ = heartbeat.tick(), if !lost => {
                    // Keeps the session alive while the consumer finishes; the answer is
                    // REBALANCE_IN_PROGRESS until we rejoin.
                    let deadline = Instant::now() + self.config.kafka.timeout;
                    if let Beat::Rejoin(r) = self.heartbeat(generation_id, deadline).await? {
                        self.identity.rejoin(r);
                    }
                }
                () = &mut self.shutdown, if !self.shutdown_fired => {
                    self.shutdown_fired = true;
                    if self.stop.is_none() {
                        self.stop = Some(Stop::Shutdown);
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Leave { reply }) => {
                        self.stop = Some(Stop::Leave(reply));
                        break;
                    }
                    Some(other) => self.serve(other, may_commit).await,
                    None => {
                        self.stop = Some(Stop::Dropped);
                        break;
                    }
                },
            }
        }
        tracing::debug!(group = %self.group(), generation = generation_id, waited = ?started.elapsed(), "Revocation released");
        match lost_reaction {
            Some(r) => self.identity.rejoin(r),
            None => self.identity.generation_id = None,
        }
        Ok(())
    }

    /// Answers a commit or an offset fetch. `generation`: the generation that may commit now.
    async fn serve(&mut self, command: Command, generation: Option<i32>) {
        match command {
            Command::Commit {
                generation_id,
                offsets,
                reply,
            } => {
                let result = if generation != Some(generation_id) {
                    Err(GroupError::CommitFenced {
                        group: self.group().to_string(),
                        generation: generation_id,
                        reason: match generation {
                            Some(current) => format!("the member is in generation {current}"),
                            None => "the member holds no assignment now".into(),
                        },
                    })
                } else {
                    self.commit(generation_id, &offsets).await
                };
                let _ = reply.send(result);
            }
            Command::Committed { partitions, reply } => {
                let _ = reply.send(self.fetch_offsets(&partitions).await);
            }
            Command::Leave { reply } => self.stop = Some(Stop::Leave(reply)),
        }
    }

    async fn commit(&mut self, generation_id: i32, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let config = self.config.clone();
        let member_id = self.identity.member_id.clone();
        let (_, answer, broker) = self
            .call_coordinator(|_| {
                protocol::commit_request(
                    &config.group_id,
                    generation_id,
                    &member_id,
                    &config.topic,
                    offsets,
                )
            })
            .await?;
        let Some((partition, refusal)) = protocol::parse_commit(&answer) else {
            tracing::debug!(group = %config.group_id, generation = generation_id, ?offsets, "Offsets committed");
            return Ok(());
        };
        match protocol::reaction(refusal.error) {
            Reaction::Rejoin { .. } => Err(GroupError::CommitFenced {
                group: config.group_id.clone(),
                generation: generation_id,
                reason: format!("partition {partition}: {}", refusal.error),
            }),
            Reaction::Rediscover => {
                self.coordinator = None;
                Err(self.refusal_error(&broker, OffsetCommitRequest::NAME, refusal))
            }
            _ => Err(self.refusal_error(&broker, OffsetCommitRequest::NAME, refusal)),
        }
    }

    async fn fetch_offsets(&mut self, partitions: &BTreeSet<i32>) -> Result<BTreeMap<i32, i64>> {
        let config = self.config.clone();
        let (version, answer, broker) = self
            .call_coordinator(|v| {
                protocol::offset_fetch_request(v, &config.group_id, &config.topic, partitions)
            })
            .await?;
        protocol::parse_offset_fetch(version, &answer, &config.topic)
            .map_err(|r| self.refusal_error(&broker, OffsetFetchRequest::NAME, r))
    }

    /// LeaveGroup (bounded by the timeout), and the answer to `leave()` if it asked.
    async fn leave_group(&mut self) -> Result<()> {
        let reply = match self.stop.take() {
            Some(Stop::Leave(reply)) => Some(reply),
            Some(Stop::Dropped) => return Ok(()),
            _ => None,
        };
        let result = if self.identity.member_id.is_empty() {
            Ok(())
        } else {
            self.send_leave().await
        };
        match &result {
            Ok(()) => {
                tracing::info!(group = %self.group(), member = %self.identity.member_id, "Left the group")
            }
            Err(e) => {
                tracing::warn!(group = %self.group(), error = %e, "Leaving the group failed; the coordinator drops the member after the session timeout")
            }
        }
        self.identity = Identity::default();
        match reply {
            Some(reply) => {
                let _ = reply.send(result);
                Ok(())
            }
            // A shutdown: not leaving cleanly costs the others one session timeout; it is not
            // an error of the member.
            None => Ok(()),
        }
    }

    async fn send_leave(&mut self) -> Result<()> {
        let config = self.config.clone();
        let member_id = self.identity.member_id.clone();
        let attempt = self.call_coordinator(|v| {
            protocol::leave_request(
                v,
                &config.group_id,
                &member_id,
                "the consumer is shutting down",
            )
        });
        let bound = config.kafka.timeout * 2;
        let (_, answer, broker) = match tokio::time::timeout(bound, attempt).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(GroupError::Timeout {
                    group: config.group_id.clone(),
                    broker: "the coordinator".into(),
                    call: LeaveGroupRequest::NAME,
                    timeout: bound,
                })
            }
        };
        let member_error = answer
            .members
            .iter()
            .find_map(|m| m.error_code.err())
            .filter(|_| answer.error_code == 0);
        match answer.error_code.err().or(member_error) {
            None | Some(kafka_protocol::ResponseError::UnknownMemberId) => Ok(()),
            Some(error) => {
                let refusal = Refusal {
                    error,
                    message: None,
                };
                Err(self.refusal_error(&broker, LeaveGroupRequest::NAME, refusal))
            }
        }
    }
}

/// The answer to a commit or fetch that arrives while the group is rebalancing.
fn refuse_while_rebalancing(command: Command, group: &str) {
    match command {
        Command::Commit {
            generation_id,
            reply,
            ..
        } => {
            let _ = reply.send(Err(GroupError::CommitFenced {
                group: group.to_string(),
                generation: generation_id,
                reason: "the group is rebalancing".into(),
            }));
        }
        Command::Committed { reply, .. } => {
            let _ = reply.send(Err(GroupError::Rebalancing {
                group: group.to_string(),
            }));
        }
        Command::Leave { reply } => {
            let _ = reply.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GroupConfig {
        GroupConfig::new(KafkaConfig::default(), "g", "t")
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let mut c = config();
        c.heartbeat_interval = Duration::from_secs(20);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--heartbeat-interval") && e.contains("a third"),
            "{e}"
        );
        let mut c = config();
        c.group_id = " ".into();
        assert!(c.validate().unwrap_err().to_string().contains("--group"));
        let mut c = config();
        c.session_timeout = Duration::ZERO;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--session-timeout"));
    }

    #[test]
    fn dropping_a_revocation_releases_it() {
        let (tx, mut rx) = oneshot::channel::<()>();
        let revocation = Revocation {
            assignment: Assignment {
                generation_id: 1,
                member_id: "m".into(),
                topic: "t".into(),
                partitions: [0].into(),
                leader: true,
            },
            reason: RevokeReason::Rebalance,
            _released: tx,
        };
        assert!(rx
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert!(!revocation.is_lost());
        revocation.release();
        assert!(rx
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
    }
}
