//! The consumer-group client (`reclamacoes::group`) against the real broker: members split a
//! topic, rebalance when one comes or goes, lose their partitions when silent past the session
//! timeout, are fenced when removed, show up in Kafka's own `kafka-consumer-groups` with their
//! partitions and committed offsets, share a group with a Java consumer, work over TLS and SASL,
//! and never show the SASL password.
//!
//! Every test uses its own random topic and group on the shared broker (127.0.0.1:9092, or
//! `KAFKA_BROKERS`); the TLS/SASL test starts a private broker on free ports.

mod faultkit;
use faultkit::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use reclamacoes::group::{
    Assignment, GroupConfig, GroupError, GroupEvent, GroupMember, Revocation, RevokeReason,
    VersionChoice,
};
use reclamacoes::kafka::{
    Compression, KafkaConfig, KafkaSecurity, SaslMechanism, SaslOptions, TlsOptions,
};

/// Bound on waiting for one event (a rebalance here takes seconds; this only catches hangs).
const EVENT_WAIT: Duration = Duration::from_secs(90);
const SESSION_TIMEOUT: Duration = Duration::from_secs(6); // the broker's minimum
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

fn random_group(prefix: &str) -> String {
    format!("test-group-{prefix}-{:016x}", rand::random::<u64>())
}

fn group_config(kafka: KafkaConfig, group: &str, topic: &str) -> GroupConfig {
    let mut config = GroupConfig::new(kafka, group, topic);
    config.session_timeout = SESSION_TIMEOUT;
    config.heartbeat_interval = HEARTBEAT_INTERVAL;
    config.rebalance_timeout = Duration::from_secs(30);
    config
}

async fn topic_with_partitions(
    prefix: &str,
    partitions: i32,
) -> (reclamacoes::kafka::Kafka, String) {
    let kafka = common::require_kafka().await;
    let topic = common::random_topic(prefix);
    kafka.ensure_topic(&topic, partitions, 1).await.unwrap();
    (kafka, topic)
}

async fn join(config: GroupConfig) -> GroupMember {
    let group = config.group_id.clone();
    match GroupMember::join(config, std::future::pending()).await {
        Ok(member) => member,
        Err(e) => panic!("joining {group}: {e}"),
    }
}

async fn next(member: &mut GroupMember, who: &str) -> GroupEvent {
    match tokio::time::timeout(EVENT_WAIT, member.next_event()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("{who}: the event stream ended"),
        Ok(Err(e)) => panic!("{who}: {e}"),
        Err(_) => panic!("{who}: no event within {EVENT_WAIT:?}"),
    }
}

async fn assigned(member: &mut GroupMember, who: &str) -> Assignment {
    match next(member, who).await {
        GroupEvent::Assigned(a) => a,
        GroupEvent::Revoked(r) => panic!("{who}: expected an assignment, got {r:?}"),
    }
}

async fn revoked(member: &mut GroupMember, who: &str) -> Revocation {
    match next(member, who).await {
        GroupEvent::Revoked(r) => r,
        GroupEvent::Assigned(a) => panic!("{who}: expected a revocation, got {a:?}"),
    }
}

fn all(n: i32) -> BTreeSet<i32> {
    (0..n).collect()
}

/// A commit under `generation` is refused: that generation is fenced.
async fn assert_commit_fenced(member: &mut GroupMember, generation: i32) {
    let fenced = member
        .commit_offsets(generation, &[(0, 1)].into())
        .await
        .unwrap_err();
    assert!(
        matches!(fenced, GroupError::CommitFenced { .. }),
        "{fenced}"
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_the_topic_and_rebalance_when_one_comes_or_goes() {
    let (kafka, topic) = topic_with_partitions("group-split", 6).await;
    let group = random_group("split");

    let mut a = join(group_config(kafka.config.clone(), &group, &topic)).await;
    let first = assigned(&mut a, "a").await;
    assert_eq!(first.partitions, all(6), "one member gets everything");
    assert!(first.leader);
    assert_eq!(first.topic, topic);

    // A second member: a is told to let go first, then both get half.
    let mut b = join(group_config(kafka.config.clone(), &group, &topic)).await;
    let revocation = revoked(&mut a, "a").await;
    assert_eq!(revocation.reason, RevokeReason::Rebalance);
    assert_eq!(revocation.assignment, first);
    // Still this generation's until released: a commit under it is accepted.
    a.commit_offsets(first.generation_id, &[(0, 0)].into())
        .await
        .expect("commit while finishing the revoked partitions");
    revocation.release();
    let a2 = assigned(&mut a, "a").await;
    let b2 = assigned(&mut b, "b").await;
    assert_eq!(a2.generation_id, b2.generation_id);
    assert!(a2.generation_id > first.generation_id);
    assert!(a2.partitions.is_disjoint(&b2.partitions), "{a2:?} {b2:?}");
    let union: BTreeSet<i32> = a2.partitions.union(&b2.partitions).copied().collect();
    assert_eq!(union, all(6));
    assert_eq!(
        (a2.partitions.len(), b2.partitions.len()),
        (3, 3),
        "range: 3 + 3"
    );
    // The range assignor gives the lower member id the lower half.
    let (low, high) = if a2.member_id < b2.member_id {
        (&a2, &b2)
    } else {
        (&b2, &a2)
    };
    assert_eq!(low.partitions, [0, 1, 2].into());
    assert_eq!(high.partitions, [3, 4, 5].into());

    // The old generation is fenced.
    assert_commit_fenced(&mut a, first.generation_id).await;

    // b leaves: a gets everything back without waiting for a session timeout.
    let left_at = Instant::now();
    b.leave().await.expect("leave");
    revoked(&mut a, "a").await.release();
    let a3 = assigned(&mut a, "a").await;
    assert_eq!(a3.partitions, all(6));
    assert!(a3.generation_id > a2.generation_id);
    eprintln!(
        "clean leave: the remaining member had all 6 partitions {:?} after LeaveGroup",
        left_at.elapsed()
    );
    a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_loses_its_partitions_after_the_session_timeout() {
    let (kafka, topic) = topic_with_partitions("group-silent", 6).await;
    let group = random_group("silent");
    let mut a = join(group_config(kafka.config.clone(), &group, &topic)).await;
    assert_eq!(assigned(&mut a, "a").await.partitions, all(6));
    let mut b = join(group_config(kafka.config.clone(), &group, &topic)).await;
    revoked(&mut a, "a").await.release();
    let a2 = assigned(&mut a, "a").await;
    let b2 = assigned(&mut b, "b").await;
    assert_eq!(a2.partitions.len() + b2.partitions.len(), 6);

    // b stops heartbeating (dropped without LeaveGroup, as a crash would).
    let silent_at = Instant::now();
    drop(b);
    let revocation = revoked(&mut a, "a").await;
    let rebalance_seen = silent_at.elapsed();
    assert_eq!(revocation.reason, RevokeReason::Rebalance);
    revocation.release();
    let a3 = assigned(&mut a, "a").await;
    let takeover = silent_at.elapsed();
    assert_eq!(a3.partitions, all(6), "a took over b's partitions");
    // Safety, not speed: the coordinator may not hand b's partitions over before b's session
    // can have expired (b's last heartbeat was at most one interval before it went silent).
    assert!(
        takeover >= SESSION_TIMEOUT - HEARTBEAT_INTERVAL,
        "takeover after {takeover:?}, before b's session ({SESSION_TIMEOUT:?}) could expire"
    );
    eprintln!(
        "silent member: session timeout {SESSION_TIMEOUT:?}, heartbeat {HEARTBEAT_INTERVAL:?}: \
         the survivor saw the rebalance after {rebalance_seen:?} and held all 6 partitions after \
         {takeover:?}"
    );
    a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_by_an_admin_reports_its_partitions_lost_and_rejoins() {
    let (kafka, topic) = topic_with_partitions("group-fenced", 3).await;
    let group = random_group("fenced");
    let mut a = join(group_config(kafka.config.clone(), &group, &topic)).await;
    let first = assigned(&mut a, "a").await;
    assert_eq!(first.partitions, all(3));

    // KIP-571: remove every member, as an operator would with the Admin API.
    let source = r#"
import java.util.Map;
import org.apache.kafka.clients.admin.*;
public class RemoveMembers {
    public static void main(String[] args) throws Exception {
        try (Admin admin = Admin.create(Map.of("bootstrap.servers", args[0]))) {
            admin.removeMembersFromConsumerGroup(args[1], new RemoveMembersFromConsumerGroupOptions()).all().get();
        }
        System.out.println("removed");
    }
}
"#;
    let brokers = common::brokers();
    let group2 = group.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::run_java(source, "RemoveMembers", &[&brokers, &group2])
    })
    .await
    .unwrap();
    assert!(out.contains("removed"), "{out}");

    let revocation = revoked(&mut a, "a").await;
    assert!(revocation.is_lost(), "{revocation:?}");
    let RevokeReason::Lost { reason } = &revocation.reason else {
        unreachable!()
    };
    assert!(reason.contains("fenced"), "{reason}");
    // A lost generation may not commit any more.
    assert_commit_fenced(&mut a, first.generation_id).await;
    revocation.release();
    let again = assigned(&mut a, "a").await;
    assert_eq!(again.partitions, all(3));
    assert_ne!(again.member_id, first.member_id, "rejoined as a new member");
    assert!(again.generation_id > first.generation_id);
    a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumer_groups_shows_members_partitions_committed_offsets_and_lag() {
    let (kafka, topic) = topic_with_partitions("group-describe", 6).await;
    // 10 records in every partition: log end offset 10.
    for p in 0..6 {
        let handle = common::partition(&kafka, &topic, p).await;
        let records = (0..10)
            .map(|i| common::raw_record(format!("record {i}").as_bytes(), chrono::Utc::now()))
            .collect();
        handle.produce(records, Compression::None).await.unwrap();
    }
    let group = random_group("describe");
    let mut a_config = group_config(kafka.config.clone(), &group, &topic);
    a_config.client_id = "instance-a".into();
    let mut a = join(a_config).await;
    assigned(&mut a, "a").await;
    let mut b_config = group_config(kafka.config.clone(), &group, &topic);
    b_config.client_id = "instance-b".into();
    let mut b = join(b_config).await;
    revoked(&mut a, "a").await.release();
    let a2 = assigned(&mut a, "a").await;
    let b2 = assigned(&mut b, "b").await;

    // a has read 4 records of each of its partitions, b 7 of each of its.
    let committed = |assignment: &Assignment, offset: i64| -> BTreeMap<i32, i64> {
        assignment.partitions.iter().map(|&p| (p, offset)).collect()
    };
    a.commit_offsets(a2.generation_id, &committed(&a2, 4))
        .await
        .unwrap();
    b.commit_offsets(b2.generation_id, &committed(&b2, 7))
        .await
        .unwrap();
    assert_eq!(
        a.committed_offsets(&all(6)).await.unwrap(),
        committed(&a2, 4)
            .into_iter()
            .chain(committed(&b2, 7))
            .collect::<BTreeMap<_, _>>(),
        "OffsetFetch reads back both members' commits"
    );

    let describe = tokio::task::spawn_blocking({
        let group = group.clone();
        move || common::groups::consumer_groups(&group, &["--describe"])
    })
    .await
    .unwrap();
    eprintln!("kafka-consumer-groups --describe:\n{describe}");
    let rows = common::groups::table(&describe, "GROUP");
    assert_eq!(rows.len(), 6, "one row per partition:\n{describe}");
    for row in &rows {
        let partition: i32 = row["PARTITION"].parse().unwrap();
        let (owner, client, offset) = if a2.partitions.contains(&partition) {
            (&a2.member_id, "instance-a", 4)
        } else {
            (&b2.member_id, "instance-b", 7)
        };
        assert_eq!(&row["TOPIC"], &topic);
        assert_eq!(&row["CONSUMER-ID"], owner, "partition {partition}");
        assert_eq!(row["CLIENT-ID"], client, "partition {partition}");
        assert_eq!(
            row["CURRENT-OFFSET"],
            offset.to_string(),
            "partition {partition}"
        );
        assert_eq!(row["LOG-END-OFFSET"], "10", "partition {partition}");
        assert_eq!(
            row["LAG"],
            (10 - offset).to_string(),
            "partition {partition}"
        );
    }

    let members = tokio::task::spawn_blocking({
        let group = group.clone();
        move || common::groups::consumer_groups(&group, &["--describe", "--members"])
    })
    .await
    .unwrap();
    eprintln!("kafka-consumer-groups --describe --members:\n{members}");
    let rows = common::groups::table(&members, "GROUP");
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["CONSUMER-ID"].clone(), r["#PARTITIONS"].clone()))
        .collect();
    seen.sort();
    let mut expected = vec![
        (a2.member_id.clone(), "3".to_string()),
        (b2.member_id.clone(), "3".to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected, "{members}");

    let state = tokio::task::spawn_blocking({
        let group = group.clone();
        move || common::groups::consumer_groups(&group, &["--describe", "--state"])
    })
    .await
    .unwrap();
    let rows = common::groups::table(&state, "GROUP");
    assert_eq!(rows[0]["ASSIGNMENT-STRATEGY"], "range", "{state}");
    assert_eq!(rows[0]["STATE"], "Stable", "{state}");
    assert_eq!(rows[0]["#MEMBERS"], "2", "{state}");

    b.leave().await.unwrap();
    a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_consumer_shares_the_group() {
    let (kafka, topic) = topic_with_partitions("group-java", 6).await;
    let group = random_group("java");
    let mut a = join(group_config(kafka.config.clone(), &group, &topic)).await;
    assert_eq!(assigned(&mut a, "a").await.partitions, all(6));

    // The Java client (classic protocol, range assignor) joins, holds its assignment until it
    // has been stable for 3 s, prints it, and leaves.
    let source = r#"
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.TopicPartition;
public class GroupPeer {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", args[0]);
        p.put("group.id", args[1]);
        p.put("group.protocol", "classic");
        p.put("partition.assignment.strategy", "org.apache.kafka.clients.consumer.RangeAssignor");
        p.put("key.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
        p.put("value.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
        p.put("enable.auto.commit", "false");
        p.put("client.id", "java-peer");
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(args[2]));
            long deadline = System.currentTimeMillis() + 90_000;
            Set<TopicPartition> last = Set.of();
            long since = System.currentTimeMillis();
            while (System.currentTimeMillis() < deadline) {
                consumer.poll(Duration.ofMillis(200));
                Set<TopicPartition> now = consumer.assignment();
                if (!now.equals(last)) { last = new HashSet<>(now); since = System.currentTimeMillis(); }
                else if (!now.isEmpty() && System.currentTimeMillis() - since > 3_000) break;
            }
            List<Integer> parts = new ArrayList<>();
            for (TopicPartition tp : last) parts.add(tp.partition());
            Collections.sort(parts);
            System.out.println("ASSIGNED " + parts);
        }
    }
}
"#;
    let brokers = common::brokers();
    let (g, t) = (group.clone(), topic.clone());
    let java = tokio::task::spawn_blocking(move || {
        common::run_java(source, "GroupPeer", &[&brokers, &g, &t])
    });
    revoked(&mut a, "a").await.release();
    let shared = assigned(&mut a, "a").await;
    assert_eq!(shared.partitions.len(), 3, "{shared:?}");
    let out = java.await.unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("ASSIGNED "))
        .unwrap_or_else(|| panic!("no assignment printed:\n{out}"));
    let theirs: BTreeSet<i32> = line["ASSIGNED ".len()..]
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert!(
        theirs.is_disjoint(&shared.partitions),
        "java {theirs:?}, ours {shared:?}"
    );
    assert_eq!(
        theirs
            .union(&shared.partitions)
            .copied()
            .collect::<BTreeSet<_>>(),
        all(6)
    );
    // The Java consumer closed (LeaveGroup): everything comes back.
    revoked(&mut a, "a").await.release();
    assert_eq!(assigned(&mut a, "a").await.partitions, all(6));
    eprintln!(
        "java peer held {theirs:?} while this member held {:?}",
        shared.partitions
    );
    a.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_protocol_versions_work_alongside_the_newest() {
    let (kafka, topic) = topic_with_partitions("group-versions", 4).await;
    let group = random_group("versions");
    let mut old_config = group_config(kafka.config.clone(), &group, &topic);
    old_config.versions = VersionChoice::Oldest;
    let mut old = join(old_config).await;
    let o1 = assigned(&mut old, "old").await;
    assert_eq!(o1.partitions, all(4));
    old.commit_offsets(o1.generation_id, &[(0, 3), (1, 5)].into())
        .await
        .unwrap();
    assert_eq!(
        old.committed_offsets(&all(4)).await.unwrap(),
        [(0, 3), (1, 5)].into()
    );
    let mut new = join(group_config(kafka.config.clone(), &group, &topic)).await;
    revoked(&mut old, "old").await.release();
    let o2 = assigned(&mut old, "old").await;
    let n2 = assigned(&mut new, "new").await;
    assert_eq!(o2.partitions.len() + n2.partitions.len(), 4);
    assert!(o2.partitions.is_disjoint(&n2.partitions));
    assert_eq!(
        new.committed_offsets(&all(4)).await.unwrap(),
        [(0, 3), (1, 5)].into(),
        "the newest OffsetFetch reads what the oldest OffsetCommit wrote"
    );
    old.leave().await.unwrap();
    revoked(&mut new, "new").await.release();
    assert_eq!(assigned(&mut new, "new").await.partitions, all(4));
    new.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_revokes_then_leaves_and_ends_the_stream() {
    let (kafka, topic) = topic_with_partitions("group-shutdown", 2).await;
    let group = random_group("shutdown");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut a = GroupMember::join(group_config(kafka.config.clone(), &group, &topic), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let first = assigned(&mut a, "a").await;
    let mut b = join(group_config(kafka.config.clone(), &group, &topic)).await;
    revoked(&mut a, "a").await.release();
    let a2 = assigned(&mut a, "a").await;
    assigned(&mut b, "b").await;
    assert!(a2.generation_id > first.generation_id);

    stop.send(()).unwrap();
    let revocation = revoked(&mut a, "a").await;
    assert_eq!(revocation.reason, RevokeReason::Shutdown);
    assert_eq!(revocation.assignment, a2);
    // Commits still count until the revocation is released.
    a.commit_offsets(
        a2.generation_id,
        &a2.partitions.iter().map(|&p| (p, 0)).collect(),
    )
    .await
    .unwrap();
    let released_at = Instant::now();
    revocation.release();
    let end = tokio::time::timeout(EVENT_WAIT, a.next_event())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    // b gets everything at once (a left), not after a session timeout.
    revoked(&mut b, "b").await.release();
    assert_eq!(assigned(&mut b, "b").await.partitions, all(2));
    eprintln!(
        "shutdown: the other member held everything {:?} after the revocation was released",
        released_at.elapsed()
    );
    b.leave().await.unwrap();
}

#[tokio::test]
async fn a_missing_topic_and_bad_settings_fail_before_joining() {
    let kafka = common::require_kafka().await;
    let topic = common::random_topic("group-missing");
    let e = GroupMember::join(
        group_config(kafka.config.clone(), &random_group("missing"), &topic),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, GroupError::NoSuchTopic { .. }) && e.to_string().contains(&topic),
        "{e}"
    );

    let (kafka, topic) = topic_with_partitions("group-badcfg", 1).await;
    let mut config = group_config(kafka.config.clone(), &random_group("badcfg"), &topic);
    config.session_timeout = Duration::from_secs(4); // below the broker's 6 s minimum
    let mut member = join(config).await;
    let e = tokio::time::timeout(EVENT_WAIT, member.next_event())
        .await
        .unwrap()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("InvalidSessionTimeout") && text.contains("--session-timeout"),
        "{text}"
    );
    assert!(matches!(member.next_event().await, Ok(None)));

    let unreachable = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let e = GroupMember::join(group_config(unreachable, "g", "t"), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(e, GroupError::Connect { .. }) && e.to_string().contains("127.0.0.1:1"),
        "{e}"
    );
}

#[tokio::test]
async fn the_sasl_password_never_appears_in_errors() {
    let kafka = common::require_kafka().await;
    let (_, topic) = topic_with_partitions("group-password", 1).await;
    let secret = "Group-Sasl-S3cret";
    for mechanism in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        // The shared broker's listener does not speak SASL.
        let config = KafkaConfig {
            security: KafkaSecurity {
                tls: None,
                sasl: Some(SaslOptions {
                    mechanism,
                    username: "alice".into(),
                    password: secret.into(),
                }),
            },
            ..kafka.config.clone()
        };
        let group_config = group_config(config, &random_group("password"), &topic);
        let shown = format!("{group_config:?}");
        assert!(!shown.contains(secret), "{shown}");
        let e = GroupMember::join(group_config, std::future::pending())
            .await
            .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains(secret), "{text}");
        assert!(
            matches!(e, GroupError::Authentication { .. }) && text.contains("127.0.0.1:9092"),
            "{mechanism:?}: {e}"
        );
        eprintln!("{mechanism:?} against a plaintext listener -> {e}");
    }
}

/// TLS and SASL against a private broker (free ports): every listener kind, wrong password,
/// unknown CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_work_over_tls_and_sasl() {
    use faultkit::secure_broker::{start_secure_broker, PLAIN_PASSWORD, SCRAM_PASSWORD};
    common::require_kafka().await; // the jars come from `make up`
    let broker = tokio::task::spawn_blocking(start_secure_broker)
        .await
        .unwrap();
    let plaintext = KafkaConfig {
        brokers: format!("127.0.0.1:{}", broker.plaintext),
        ..Default::default()
    };
    let kafka = reclamacoes::kafka::Kafka::connect(plaintext).await.unwrap();
    let topic = common::random_topic("group-secure");
    kafka.ensure_topic(&topic, 2, 1).await.unwrap();
    let ca = TlsOptions {
        ca_file: Some(broker.ca()),
    };
    let sasl = |mechanism, password: &str| SaslOptions {
        mechanism,
        username: "alice".into(),
        password: password.into(),
    };
    let cases = [
        (
            "SASL_PLAINTEXT PLAIN",
            broker.sasl_plaintext,
            KafkaSecurity {
                tls: None,
                sasl: Some(sasl(SaslMechanism::Plain, PLAIN_PASSWORD)),
            },
        ),
        (
            "SASL_PLAINTEXT SCRAM-SHA-256",
            broker.sasl_plaintext,
            KafkaSecurity {
                tls: None,
                sasl: Some(sasl(SaslMechanism::ScramSha256, SCRAM_PASSWORD)),
            },
        ),
        (
            "SSL",
            broker.ssl,
            KafkaSecurity {
                tls: Some(ca.clone()),
                sasl: None,
            },
        ),
        (
            "SASL_SSL SCRAM-SHA-512",
            broker.sasl_ssl,
            KafkaSecurity {
                tls: Some(ca.clone()),
                sasl: Some(sasl(SaslMechanism::ScramSha512, SCRAM_PASSWORD)),
            },
        ),
    ];
    for (name, port, security) in cases {
        let config = KafkaConfig {
            brokers: format!("127.0.0.1:{port}"),
            timeout: Duration::from_secs(10),
            security,
        };
        let group = random_group("secure");
        let mut member = join(group_config(config, &group, &topic)).await;
        let a = assigned(&mut member, name).await;
        assert_eq!(a.partitions, all(2), "{name}");
        member
            .commit_offsets(a.generation_id, &[(0, 1), (1, 2)].into())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            member.committed_offsets(&all(2)).await.unwrap(),
            [(0, 1), (1, 2)].into(),
            "{name}"
        );
        member.leave().await.unwrap();
        eprintln!("{name}: joined, assigned, committed, left");
    }

    // A wrong password: an authentication error naming the broker, without the password.
    let wrong = "Not-The-Group-Pw9";
    let config = KafkaConfig {
        brokers: format!("127.0.0.1:{}", broker.sasl_plaintext),
        timeout: Duration::from_secs(10),
        security: KafkaSecurity {
            tls: None,
            sasl: Some(sasl(SaslMechanism::ScramSha256, wrong)),
        },
    };
    let e = GroupMember::join(
        group_config(config, &random_group("wrong"), &topic),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        matches!(e, GroupError::Authentication { .. })
            && text.contains(&format!("127.0.0.1:{}", broker.sasl_plaintext))
            && !text.contains(wrong),
        "{text}"
    );
    eprintln!("wrong SCRAM password -> {e}");

    // The public roots do not know the test CA.
    let config = KafkaConfig {
        brokers: format!("127.0.0.1:{}", broker.ssl),
        timeout: Duration::from_secs(10),
        security: KafkaSecurity {
            tls: Some(TlsOptions::default()),
            sasl: None,
        },
    };
    let e = GroupMember::join(
        group_config(config, &random_group("ca"), &topic),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("UnknownIssuer") && text.contains("--kafka-ca-file"),
        "{text}"
    );
    eprintln!("unknown CA -> {e}");
}

/// Sends `signal` (STOP, CONT) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The lease: a member whose coordinator stops answering (here: the broker frozen with
/// SIGSTOP) reports its partitions lost by itself, before the coordinator could have expired it,
/// and joins again once the broker is back. Uses a private broker (free ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_its_coordinator_reports_its_partitions_lost_in_time() {
    common::require_kafka().await; // the jars come from `make up`
    let broker = tokio::task::spawn_blocking(faultkit::secure_broker::start_secure_broker)
        .await
        .unwrap();
    let config = KafkaConfig {
        brokers: format!("127.0.0.1:{}", broker.plaintext),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let kafka = reclamacoes::kafka::Kafka::connect(config.clone())
        .await
        .unwrap();
    let topic = common::random_topic("group-frozen");
    kafka.ensure_topic(&topic, 2, 1).await.unwrap();
    let mut a = join(group_config(config, &random_group("frozen"), &topic)).await;
    let first = assigned(&mut a, "a").await;
    assert_eq!(first.partitions, all(2));
    tokio::time::sleep(HEARTBEAT_INTERVAL * 2).await; // a few heartbeats answered

    signal(broker.pid(), "STOP");
    let frozen_at = Instant::now();
    let revocation = tokio::time::timeout(EVENT_WAIT, a.next_event()).await;
    let lost_after = frozen_at.elapsed();
    signal(broker.pid(), "CONT");
    let Ok(Ok(Some(GroupEvent::Revoked(revocation)))) = revocation else {
        panic!("expected a revocation, got {revocation:?}");
    };
    let RevokeReason::Lost { reason } = &revocation.reason else {
        panic!("expected the partitions lost, got {revocation:?}");
    };
    assert!(reason.contains("no heartbeat was answered"), "{reason}");
    // The member's lease runs SESSION_TIMEOUT - HEARTBEAT_INTERVAL from its last answered
    // heartbeat, sent at most one interval before the freeze; the coordinator counts the whole
    // SESSION_TIMEOUT from when it *received* that heartbeat. So the member must report the loss
    // between SESSION - 2 * HEARTBEAT and SESSION - HEARTBEAT after the freeze, give or take
    // scheduling slack (a heartbeat tick can lag on a loaded machine): not cut short, and about
    // a heartbeat interval before the coordinator can act.
    let slack = Duration::from_millis(500);
    assert!(
        lost_after >= SESSION_TIMEOUT - HEARTBEAT_INTERVAL * 2 - slack
            && lost_after < SESSION_TIMEOUT - HEARTBEAT_INTERVAL + slack,
        "lost {lost_after:?} after the freeze"
    );
    revocation.release();
    let again = assigned(&mut a, "a").await;
    assert_eq!(again.partitions, all(2));
    assert!(again.generation_id > first.generation_id);
    eprintln!(
        "frozen coordinator: partitions reported lost {lost_after:?} after the freeze (session \
         timeout {SESSION_TIMEOUT:?}); rejoined as generation {} after the thaw",
        again.generation_id
    );
    a.leave().await.unwrap();
}
