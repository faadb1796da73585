//! The classic group protocol as pure functions: requests built for a given version (only the
//! fields that version has are set, so encoding never fails on a field the version lacks), answers
//! turned into plain values, the ConsumerProtocol subscription and assignment encodings, and the
//! one table that says how the member reacts to each error code ([`reaction`]). No I/O here;
//! `super::member` sends what these build.
//!
//! The subscription and assignment bytes are Kafka's `ConsumerProtocolSubscription` /
//! `ConsumerProtocolAssignment` messages prefixed by their version as a big-endian `i16`, exactly
//! what the Java client writes (`ConsumerProtocol.serializeSubscription`): that is what lets
//! `kafka-consumer-groups --describe` show each member's partitions, and a Java consumer share a
//! group with this one. A version newer than we know is read as the newest we know (new versions
//! only append fields), as the Java client does.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::find_coordinator_response::FindCoordinatorResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use super::assignor::GroupAssignment;

/// The protocol type of consumer groups (what Kafka's tools and the Java client use).
pub(crate) const PROTOCOL_TYPE: &str = "consumer";
/// Our only assignor.
pub(crate) const ASSIGNOR: &str = "range";
/// Versions written (the newest the generated messages know; Kafka 4.x writes these too).
const SUBSCRIPTION_VERSION: i16 = 3;
const ASSIGNMENT_VERSION: i16 = 3;
/// FindCoordinator key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn group_id(group: &str) -> GroupId {
    GroupId(str_bytes(group))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(str_bytes(topic))
}

// ---------------------------------------------------------------------------------------------
// ConsumerProtocol bytes
// ---------------------------------------------------------------------------------------------

fn version_prefixed<M: Encodable>(version: i16, message: &M) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(version);
    message
        .encode(&mut out, version)
        .expect("a ConsumerProtocol message of a known version encodes");
    out.freeze()
}

/// Reads the version prefix; versions newer than `M` knows are read as its newest.
fn read_version<M: Message>(bytes: &mut Bytes, what: &str) -> Result<i16, String> {
    if bytes.remaining() < 2 {
        return Err(format!("{what}: {} bytes, too short", bytes.len()));
    }
    let version = bytes.get_i16();
    if version < M::VERSIONS.min {
        return Err(format!("{what}: unknown version {version}"));
    }
    Ok(version.min(M::VERSIONS.max))
}

/// A member's subscription: the topics it reads. It owns nothing when it joins (the eager
/// protocol revokes everything first), so `owned_partitions` stays empty.
pub(crate) fn encode_subscription(topics: &[String]) -> Bytes {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| str_bytes(t)).collect();
    subscription.generation_id = -1;
    version_prefixed(SUBSCRIPTION_VERSION, &subscription)
}

/// The topics of a member's subscription (from any client that speaks ConsumerProtocol).
pub(crate) fn decode_subscription(bytes: &Bytes) -> Result<BTreeSet<String>, String> {
    let mut bytes = bytes.clone();
    let version = read_version::<ConsumerProtocolSubscription>(&mut bytes, "subscription")?;
    let subscription = ConsumerProtocolSubscription::decode(&mut bytes, version)
        .map_err(|e| format!("subscription v{version}: {e}"))?;
    Ok(subscription.topics.iter().map(|t| t.to_string()).collect())
}

/// One member's assignment, as the leader sends it in SyncGroup.
pub(crate) fn encode_assignment(topics: &BTreeMap<String, BTreeSet<i32>>) -> Bytes {
    let mut assignment = ConsumerProtocolAssignment::default();
    assignment.assigned_partitions = topics
        .iter()
        .map(|(topic, partitions)| {
            let mut entry = AssignedTopic::default();
            entry.topic = topic_name(topic);
            entry.partitions = partitions.iter().copied().collect();
            entry
        })
        .collect();
    version_prefixed(ASSIGNMENT_VERSION, &assignment)
}

/// A member's assignment from SyncGroup. Empty bytes mean nothing assigned (a leader may send
/// nothing for a member it gives no partitions).
pub(crate) fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, BTreeSet<i32>>, String> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut bytes = bytes.clone();
    let version = read_version::<ConsumerProtocolAssignment>(&mut bytes, "assignment")?;
    let assignment = ConsumerProtocolAssignment::decode(&mut bytes, version)
        .map_err(|e| format!("assignment v{version}: {e}"))?;
    let mut topics: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for entry in assignment.assigned_partitions {
        topics
            .entry(entry.topic.0.to_string())
            .or_default()
            .extend(entry.partitions);
    }
    Ok(topics)
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

pub(crate) fn metadata_request(version: i16, topics: &BTreeSet<String>) -> MetadataRequest {
    let mut request = MetadataRequest::default();
    request.topics = Some(
        topics
            .iter()
            .map(|t| {
                let mut topic = MetadataRequestTopic::default();
                topic.name = Some(topic_name(t));
                topic
            })
            .collect(),
    );
    // Never create a topic by asking about it.
    request.allow_auto_topic_creation = false;
    let _ = version; // every field above exists in all versions we speak (9..)
    request
}

pub(crate) fn find_coordinator_request(version: i16, group: &str) -> FindCoordinatorRequest {
    let mut request = FindCoordinatorRequest::default();
    request.key_type = KEY_TYPE_GROUP;
    if version >= 4 {
        request.coordinator_keys = vec![str_bytes(group)];
    } else {
        request.key = str_bytes(group);
    }
    request
}

/// What the member needs to say when it joins.
#[derive(Debug, Clone)]
pub(crate) struct JoinParams<'a> {
    pub group: &'a str,
    pub member_id: &'a str,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub topics: &'a [String],
    pub reason: &'a str,
}

pub(crate) fn join_request(version: i16, p: &JoinParams<'_>) -> JoinGroupRequest {
    let mut request = JoinGroupRequest::default();
    request.group_id = group_id(p.group);
    request.session_timeout_ms = p.session_timeout_ms;
    request.rebalance_timeout_ms = p.rebalance_timeout_ms;
    request.member_id = str_bytes(p.member_id);
    request.group_instance_id = None; // dynamic membership
    request.protocol_type = str_bytes(PROTOCOL_TYPE);
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = str_bytes(ASSIGNOR);
    protocol.metadata = encode_subscription(p.topics);
    request.protocols = vec![protocol];
    if version >= 8 {
        request.reason = Some(str_bytes(p.reason));
    }
    request
}

pub(crate) fn sync_request(
    version: i16,
    group: &str,
    generation_id: i32,
    member_id: &str,
    assignments: &GroupAssignment,
) -> SyncGroupRequest {
    let mut request = SyncGroupRequest::default();
    request.group_id = group_id(group);
    request.generation_id = generation_id;
    request.member_id = str_bytes(member_id);
    if version >= 5 {
        request.protocol_type = Some(str_bytes(PROTOCOL_TYPE));
        request.protocol_name = Some(str_bytes(ASSIGNOR));
    }
    request.assignments = assignments
        .iter()
        .map(|(member, topics)| {
            let mut entry = SyncGroupRequestAssignment::default();
            entry.member_id = str_bytes(member);
            entry.assignment = encode_assignment(topics);
            entry
        })
        .collect();
    request
}

pub(crate) fn heartbeat_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
) -> HeartbeatRequest {
    let mut request = HeartbeatRequest::default();
    request.group_id = group_id(group);
    request.generation_id = generation_id;
    request.member_id = str_bytes(member_id);
    request
}

pub(crate) fn leave_request(
    version: i16,
    group: &str,
    member_id: &str,
    reason: &str,
) -> LeaveGroupRequest {
    let mut request = LeaveGroupRequest::default();
    request.group_id = group_id(group);
    let mut member = MemberIdentity::default();
    member.member_id = str_bytes(member_id);
    if version >= 5 {
        member.reason = Some(str_bytes(reason));
    }
    request.members = vec![member];
    request
}

pub(crate) fn commit_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> OffsetCommitRequest {
    let mut request = OffsetCommitRequest::default();
    request.group_id = group_id(group);
    request.generation_id_or_member_epoch = generation_id;
    request.member_id = str_bytes(member_id);
    let mut entry = OffsetCommitRequestTopic::default();
    entry.name = topic_name(topic);
    entry.partitions = offsets
        .iter()
        .map(|(&partition, &offset)| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = partition;
            p.committed_offset = offset;
            p.committed_leader_epoch = -1;
            p.committed_metadata = Some(StrBytes::from_static_str(""));
            p
        })
        .collect();
    request.topics = vec![entry];
    request
}

pub(crate) fn offset_fetch_request(
    version: i16,
    group: &str,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> OffsetFetchRequest {
    let mut request = OffsetFetchRequest::default();
    let indexes: Vec<i32> = partitions.iter().copied().collect();
    if version >= 8 {
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = group_id(group);
        g.member_id = None; // classic groups: no member epoch check
        g.member_epoch = -1;
        let mut t = OffsetFetchRequestTopics::default();
        t.name = topic_name(topic);
        t.partition_indexes = indexes;
        g.topics = Some(vec![t]);
        request.groups = vec![g];
    } else {
        request.group_id = group_id(group);
        let mut t = OffsetFetchRequestTopic::default();
        t.name = topic_name(topic);
        t.partition_indexes = indexes;
        request.topics = Some(vec![t]);
    }
    // Wait for transactional offsets in flight instead of reading around them (v7+).
    request.require_stable = version >= 7;
    request
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// A refused call: the error code and the broker's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub error: ResponseError,
    pub message: Option<String>,
}

fn refusal(code: i16, message: Option<&StrBytes>) -> Option<Refusal> {
    code.err().map(|error| Refusal {
        error,
        message: message.map(|m| m.to_string()),
    })
}

/// The coordinator's `host:port`.
pub(crate) fn parse_find_coordinator(
    version: i16,
    response: &FindCoordinatorResponse,
) -> Result<String, Refusal> {
    if version >= 4 {
        let Some(c) = response.coordinators.first() else {
            return Err(Refusal {
                error: ResponseError::CoordinatorNotAvailable,
                message: Some("the answer names no coordinator".into()),
            });
        };
        if let Some(r) = refusal(c.error_code, c.error_message.as_ref()) {
            return Err(r);
        }
        Ok(format!("{}:{}", c.host, c.port))
    } else {
        if let Some(r) = refusal(response.error_code, response.error_message.as_ref()) {
            return Err(r);
        }
        Ok(format!("{}:{}", response.host, response.port))
    }
}

/// A topic as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicState {
    Partitions(i32),
    Missing,
    Refused(Refusal),
}

pub(crate) fn parse_metadata(
    version: i16,
    response: &MetadataResponse,
    asked: &BTreeSet<String>,
) -> Result<BTreeMap<String, TopicState>, Refusal> {
    if version >= 13 {
        if let Some(r) = refusal(response.error_code, None) {
            return Err(r);
        }
    }
    let mut topics: BTreeMap<String, TopicState> = asked
        .iter()
        .map(|t| (t.clone(), TopicState::Missing))
        .collect();
    for topic in &response.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        let state = match topic.error_code.err() {
            None => TopicState::Partitions(topic.partitions.len() as i32),
            Some(ResponseError::UnknownTopicOrPartition) => TopicState::Missing,
            Some(error) => TopicState::Refused(Refusal {
                error,
                message: None,
            }),
        };
        topics.insert(name, state);
    }
    Ok(topics)
}

/// The first refused partition of a commit, if any.
pub(crate) fn parse_commit(response: &OffsetCommitResponse) -> Option<(i32, Refusal)> {
    response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find_map(|p| refusal(p.error_code, None).map(|r| (p.partition_index, r)))
}

/// Committed offsets of `topic` (partitions without a committed offset are left out).
pub(crate) fn parse_offset_fetch(
    version: i16,
    response: &OffsetFetchResponse,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, Refusal> {
    let mut offsets = BTreeMap::new();
    let mut keep = |partition: i32, offset: i64, code: i16| -> Result<(), Refusal> {
        if let Some(r) = refusal(code, None) {
            return Err(r);
        }
        if offset >= 0 {
            offsets.insert(partition, offset);
        }
        Ok(())
    };
    if version >= 8 {
        let Some(group) = response.groups.first() else {
            return Ok(BTreeMap::new());
        };
        if let Some(r) = refusal(group.error_code, None) {
            return Err(r);
        }
        for t in group.topics.iter().filter(|t| t.name.0.as_str() == topic) {
            for p in &t.partitions {
                keep(p.partition_index, p.committed_offset, p.error_code)?;
            }
        }
    } else {
        if let Some(r) = refusal(response.error_code, None) {
            return Err(r);
        }
        for t in response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
        {
            for p in &t.partitions {
                keep(p.partition_index, p.committed_offset, p.error_code)?;
            }
        }
    }
    Ok(offsets)
}

// ---------------------------------------------------------------------------------------------
// Reactions
// ---------------------------------------------------------------------------------------------

/// What the member does when the coordinator answers with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Join again. `forget_member_id`: the coordinator does not know our member id any more
    /// (UNKNOWN_MEMBER_ID), so join as a new member. `lost`: our generation is over without a
    /// rebalance we took part in, so the partitions may already be someone else's.
    Rejoin { forget_member_id: bool, lost: bool },
    /// KIP-394: the coordinator gave us a member id and wants the JoinGroup again with it.
    AdoptMemberId,
    /// The coordinator moved or is unavailable: find it again after a backoff, then retry.
    Rediscover,
    /// The coordinator is loading the group's state: the same call again after a backoff.
    RetryLater,
    /// Retrying cannot help; the hint says what to change.
    Fatal { hint: &'static str },
}

/// The one table of error handling (the classic protocol as the Java client handles it).
pub(crate) fn reaction(error: ResponseError) -> Reaction {
    use ResponseError as E;
    match error {
        E::RebalanceInProgress => Reaction::Rejoin {
            forget_member_id: false,
            lost: false,
        },
        E::IllegalGeneration => Reaction::Rejoin {
            forget_member_id: false,
            lost: true,
        },
        E::UnknownMemberId => Reaction::Rejoin {
            forget_member_id: true,
            lost: true,
        },
        E::MemberIdRequired => Reaction::AdoptMemberId,
        E::NotCoordinator
        | E::CoordinatorNotAvailable
        | E::NetworkException
        | E::RequestTimedOut => Reaction::Rediscover,
        E::CoordinatorLoadInProgress | E::UnstableOffsetCommit => Reaction::RetryLater,
        E::InvalidSessionTimeout => Reaction::Fatal {
            hint: "--session-timeout must lie within the broker's group.min.session.timeout.ms \
                   and group.max.session.timeout.ms (6 s and 30 min by default)",
        },
        E::InconsistentGroupProtocol => Reaction::Fatal {
            hint: "another kind of member already uses this group id (another protocol type or \
                   assignor, or a KIP-848 `consumer` group); pick another --group",
        },
        E::GroupAuthorizationFailed => Reaction::Fatal {
            hint: "the principal may not use this group: grant it READ on the group \
                   (kafka-acls --add --allow-principal User:NAME --operation Read --group GROUP)",
        },
        E::TopicAuthorizationFailed => Reaction::Fatal {
            hint: "the principal may not read the topic: grant it READ and DESCRIBE on the topic",
        },
        E::InvalidGroupId => Reaction::Fatal {
            hint: "give a non-empty --group",
        },
        E::GroupMaxSizeReached => Reaction::Fatal {
            hint: "the group already has the broker's group.max.size members: stop an instance \
                   or raise group.max.size",
        },
        E::FencedInstanceId => Reaction::Fatal {
            hint: "another member registered with the same group instance id",
        },
        E::UnsupportedVersion => Reaction::Fatal {
            hint: "the broker does not serve this request version; consumer groups need Kafka \
                   2.4 or newer",
        },
        _ => Reaction::Fatal {
            hint: "this answer is unexpected here; see the broker's log",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::connection::GroupRequest;
    use kafka_protocol::messages::{
        FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
        MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
    };

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    /// Every request encodes at every version we may choose: no field is set that the version
    /// does not have (`kafka-protocol` refuses those).
    #[test]
    fn every_request_encodes_at_every_version_we_speak() {
        fn all<R: GroupRequest>(build: impl Fn(i16) -> R) {
            for v in R::OURS.min..=R::OURS.max {
                let mut buf = BytesMut::new();
                build(v)
                    .encode(&mut buf, v)
                    .unwrap_or_else(|e| panic!("{} v{v}: {e}", R::NAME));
                assert!(!buf.is_empty());
            }
        }
        let t = topics(&["t"]);
        let offsets: BTreeMap<i32, i64> = [(0, 5), (3, 7)].into();
        let assignment: GroupAssignment =
            [("m-1".to_string(), [("t".to_string(), [0, 1].into())].into())].into();
        all::<MetadataRequest>(|v| metadata_request(v, &["t".to_string()].into()));
        all::<FindCoordinatorRequest>(|v| find_coordinator_request(v, "g"));
        all::<JoinGroupRequest>(|v| {
            join_request(
                v,
                &JoinParams {
                    group: "g",
                    member_id: "",
                    session_timeout_ms: 45_000,
                    rebalance_timeout_ms: 60_000,
                    topics: &t,
                    reason: "joining",
                },
            )
        });
        all::<SyncGroupRequest>(|v| sync_request(v, "g", 3, "m-1", &assignment));
        all::<HeartbeatRequest>(|_| heartbeat_request("g", 3, "m-1"));
        all::<LeaveGroupRequest>(|v| leave_request(v, "g", "m-1", "shutting down"));
        all::<OffsetCommitRequest>(|_| commit_request("g", 3, "m-1", "t", &offsets));
        all::<OffsetFetchRequest>(|v| offset_fetch_request(v, "g", "t", &[0, 3].into()));
    }

    #[test]
    fn subscription_round_trips_with_the_java_layout() {
        let bytes = encode_subscription(&topics(&["reclamacoes"]));
        // Version prefix (i16 big-endian), then v3's topics array: an INT32 count and a
        // STRING (INT16 length + bytes), as Java's non-flexible ConsumerProtocol writes it.
        assert_eq!(&bytes[..2], &3i16.to_be_bytes());
        assert_eq!(&bytes[2..6], &1i32.to_be_bytes());
        assert_eq!(&bytes[6..8], &11i16.to_be_bytes());
        assert_eq!(&bytes[8..19], b"reclamacoes");
        assert_eq!(
            decode_subscription(&bytes).unwrap(),
            ["reclamacoes".to_string()].into()
        );
    }

    #[test]
    fn newer_and_older_subscription_versions_are_read() {
        // v0 (topics + user data), as a 2.x Java client writes it.
        let mut s = ConsumerProtocolSubscription::default();
        s.topics = vec![
            StrBytes::from_static_str("a"),
            StrBytes::from_static_str("b"),
        ];
        let v0 = version_prefixed(0, &s);
        assert_eq!(
            decode_subscription(&v0).unwrap(),
            ["a".into(), "b".into()].into()
        );
        // A future version 7: read as our newest (fields appended later are ignored).
        let mut future = BytesMut::new();
        future.put_i16(7);
        s.encode(&mut future, 3).unwrap();
        future.put_slice(b"fields of the future");
        assert_eq!(
            decode_subscription(&future.freeze()).unwrap(),
            ["a".into(), "b".into()].into()
        );
        assert!(decode_subscription(&Bytes::from_static(&[0xff, 0xff])).is_err());
        assert!(decode_subscription(&Bytes::from_static(&[0])).is_err());
    }

    #[test]
    fn assignment_round_trips_and_empty_means_nothing() {
        let topics: BTreeMap<String, BTreeSet<i32>> = [
            ("t".to_string(), [0, 2, 4].into()),
            ("u".to_string(), [1].into()),
        ]
        .into();
        let bytes = encode_assignment(&topics);
        assert_eq!(&bytes[..2], &3i16.to_be_bytes());
        assert_eq!(decode_assignment(&bytes).unwrap(), topics);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0, 1, 0])).is_err());
    }

    #[test]
    fn find_coordinator_reads_both_answer_shapes() {
        let mut old = FindCoordinatorResponse::default();
        old.host = StrBytes::from_static_str("b1");
        old.port = 9092;
        assert_eq!(parse_find_coordinator(3, &old).unwrap(), "b1:9092");
        old.error_code = ResponseError::CoordinatorNotAvailable.code();
        assert_eq!(
            parse_find_coordinator(3, &old).unwrap_err().error,
            ResponseError::CoordinatorNotAvailable
        );
        let mut new = FindCoordinatorResponse::default();
        let mut c = kafka_protocol::messages::find_coordinator_response::Coordinator::default();
        c.host = StrBytes::from_static_str("b2");
        c.port = 19092;
        new.coordinators = vec![c];
        assert_eq!(parse_find_coordinator(6, &new).unwrap(), "b2:19092");
        assert!(parse_find_coordinator(6, &FindCoordinatorResponse::default()).is_err());
    }

    #[test]
    fn each_error_gets_the_classic_protocol_reaction() {
        use ResponseError as E;
        assert_eq!(
            reaction(E::RebalanceInProgress),
            Reaction::Rejoin {
                forget_member_id: false,
                lost: false
            }
        );
        assert_eq!(
            reaction(E::IllegalGeneration),
            Reaction::Rejoin {
                forget_member_id: false,
                lost: true
            }
        );
        assert_eq!(
            reaction(E::UnknownMemberId),
            Reaction::Rejoin {
                forget_member_id: true,
                lost: true
            }
        );
        assert_eq!(reaction(E::MemberIdRequired), Reaction::AdoptMemberId);
        for e in [E::NotCoordinator, E::CoordinatorNotAvailable] {
            assert_eq!(reaction(e), Reaction::Rediscover, "{e}");
        }
        assert_eq!(reaction(E::CoordinatorLoadInProgress), Reaction::RetryLater);
        for e in [
            E::InvalidSessionTimeout,
            E::InconsistentGroupProtocol,
            E::GroupAuthorizationFailed,
            E::GroupMaxSizeReached,
            E::UnknownServerError,
        ] {
            assert!(matches!(reaction(e), Reaction::Fatal { .. }), "{e}");
        }
    }

    #[test]
    fn metadata_says_which_topics_are_missing() {
        let mut response = MetadataResponse::default();
        let mut t = kafka_protocol::messages::metadata_response::MetadataResponseTopic::default();
        t.name = Some(topic_name("t"));
        t.partitions = vec![Default::default(); 6];
        response.topics = vec![t];
        let asked: BTreeSet<String> = ["t".to_string(), "gone".to_string()].into();
        let topics = parse_metadata(12, &response, &asked).unwrap();
        assert_eq!(topics["t"], TopicState::Partitions(6));
        assert_eq!(topics["gone"], TopicState::Missing);
    }
}
