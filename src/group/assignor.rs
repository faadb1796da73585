//! The range assignor (Kafka's `range`, as `org.apache.kafka.clients.consumer.RangeAssignor`):
//! pure, deterministic, and byte-for-byte the same decisions as the Java client's, so a group may
//! mix this client with Java consumers.
//!
//! Per topic, the members subscribed to it are sorted by member id; with `n` partitions and `c`
//! members, member `i` gets the contiguous range starting at `i * (n / c) + min(i, n % c)` of
//! length `n / c`, plus one when `i < n % c`. So every partition of a subscribed topic goes to
//! exactly one member, counts differ by at most one, and the same inputs always give the same
//! answer (the inputs are ordered maps; nothing depends on arrival order or a clock).

use std::collections::{BTreeMap, BTreeSet};

/// Member id -> topic -> partitions.
pub type GroupAssignment = BTreeMap<String, BTreeMap<String, BTreeSet<i32>>>;

/// Assigns the partitions of every topic (`partitions`: topic -> partition count) over the
/// members subscribed to it (`subscriptions`: member id -> topics). Every member appears in the
/// answer, with an empty map when it gets nothing; topics that nobody subscribes to, or that are
/// missing from `partitions` (not in the metadata), are not assigned.
pub fn range_assign(
    partitions: &BTreeMap<String, i32>,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
) -> GroupAssignment {
    let mut assignment: GroupAssignment = subscriptions
        .keys()
        .map(|member| (member.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partitions {
        // BTreeMap iteration: members in member id order, as the Java assignor sorts them.
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let c = members.len() as i64;
        let n = i64::from(count);
        let (per_member, extra) = (n / c, n % c);
        for (i, member) in members.into_iter().enumerate() {
            let i = i as i64;
            let start = i * per_member + i.min(extra);
            let length = per_member + i64::from(i < extra);
            if length == 0 {
                continue;
            }
            // start + length <= n <= i32::MAX, so the casts are exact.
            let range = (start as i32)..((start + length) as i32);
            assignment
                .get_mut(member)
                .expect("every member has an entry")
                .insert(topic.clone(), range.collect());
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        members
            .iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn of(assignment: &GroupAssignment, member: &str, topic: &str) -> Vec<i32> {
        assignment[member]
            .get(topic)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn one_member_gets_everything() {
        let a = range_assign(&counts(&[("t", 6)]), &subs(&[("m1", &["t"])]));
        assert_eq!(of(&a, "m1", "t"), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn two_members_split_six_partitions_three_and_three() {
        let a = range_assign(
            &counts(&[("t", 6)]),
            &subs(&[("m-b", &["t"]), ("m-a", &["t"])]),
        );
        assert_eq!(of(&a, "m-a", "t"), vec![0, 1, 2]);
        assert_eq!(of(&a, "m-b", "t"), vec![3, 4, 5]);
    }

    /// The example of the Java `RangeAssignor`'s documentation: two consumers, two topics of
    /// three partitions each: C0 gets t0p0, t0p1, t1p0, t1p1; C1 gets t0p2, t1p2.
    #[test]
    fn matches_the_java_range_assignor_example() {
        let a = range_assign(
            &counts(&[("t0", 3), ("t1", 3)]),
            &subs(&[("C0", &["t0", "t1"]), ("C1", &["t0", "t1"])]),
        );
        assert_eq!(of(&a, "C0", "t0"), vec![0, 1]);
        assert_eq!(of(&a, "C0", "t1"), vec![0, 1]);
        assert_eq!(of(&a, "C1", "t0"), vec![2]);
        assert_eq!(of(&a, "C1", "t1"), vec![2]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty() {
        let a = range_assign(
            &counts(&[("t", 2)]),
            &subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]),
        );
        assert_eq!(of(&a, "a", "t"), vec![0]);
        assert_eq!(of(&a, "b", "t"), vec![1]);
        assert!(a["c"].is_empty(), "c is in the answer with nothing");
    }

    #[test]
    fn unknown_or_unsubscribed_topics_are_not_assigned() {
        let a = range_assign(
            &counts(&[("t", 4), ("other", 4)]),
            &subs(&[("a", &["t", "missing"]), ("b", &["t"])]),
        );
        assert_eq!(of(&a, "a", "t"), vec![0, 1]);
        assert_eq!(of(&a, "b", "t"), vec![2, 3]);
        assert!(!a["a"].contains_key("missing") && !a["a"].contains_key("other"));
    }

    proptest! {
        /// Every partition of every subscribed topic goes to exactly one of its subscribers; the
        /// counts per topic differ by at most one; each member's partitions are contiguous; and
        /// the answer does not depend on the order the members were inserted in.
        #[test]
        fn every_partition_exactly_once_and_balanced(
            topic_counts in proptest::collection::vec(0i32..40, 1..4),
            member_topics in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 1..9),
            salt in any::<u64>(),
        ) {
            let topics: BTreeMap<String, i32> = topic_counts
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("topic-{i}"), *n))
                .collect();
            let mut subscriptions = BTreeMap::new();
            for (m, wants) in member_topics.iter().enumerate() {
                let id = format!("member-{:x}-{m}", salt.wrapping_mul(m as u64 + 1));
                let chosen: BTreeSet<String> = topics
                    .keys()
                    .zip(wants)
                    .filter(|(_, w)| **w)
                    .map(|(t, _)| t.clone())
                    .collect();
                subscriptions.insert(id, chosen);
            }
            let a = range_assign(&topics, &subscriptions);
            prop_assert_eq!(a.len(), subscriptions.len());
            for (topic, &n) in &topics {
                let subscribers: Vec<&String> = subscriptions
                    .iter()
                    .filter(|(_, t)| t.contains(topic))
                    .map(|(m, _)| m)
                    .collect();
                let mut seen = BTreeSet::new();
                let mut sizes = Vec::new();
                for (member, topics_of) in &a {
                    let Some(parts) = topics_of.get(topic) else {
                        if subscribers.contains(&member) { sizes.push(0); }
                        continue;
                    };
                    prop_assert!(subscribers.contains(&member), "{} got {} unsubscribed", member, topic);
                    prop_assert!(!parts.is_empty());
                    let (lo, hi) = (*parts.first().unwrap(), *parts.last().unwrap());
                    prop_assert_eq!((hi - lo + 1) as usize, parts.len(), "contiguous");
                    for p in parts {
                        prop_assert!((0..n).contains(p));
                        prop_assert!(seen.insert(*p), "partition {} twice", p);
                    }
                    sizes.push(parts.len());
                }
                if subscribers.is_empty() {
                    prop_assert!(seen.is_empty());
                } else {
                    prop_assert_eq!(seen.len(), n as usize, "every partition of {}", topic);
                    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    prop_assert!(max - min <= 1, "balanced: {:?}", sizes);
                }
            }
        }
    }
}
