//! Kafka identities of an app: the transactional ids its workers' loops
//! use, which are also what fences a worker (one definition for the worker,
//! which sets them and fences its own unused ones at start, and the
//! operator, which fences a worker that does not let go of a task), and the
//! names of the internal topics Millrace creates for it.

use std::ops::Range;

/// Most processing loops a worker runs. At start the transactional ids of
/// loops beyond the current count are fenced, so a previous incarnation that
/// ran more loops leaves no open transaction behind to block its partitions;
/// the operator fences all of them when it fences a worker.
pub const MAX_LOOPS: usize = 8;

/// `<applicationId>-<loop id>`: a restarted worker's producer fences its
/// zombie by reusing it.
pub fn transactional_id(application_id: &str, loop_id: &str) -> String {
    format!("{application_id}-{loop_id}")
}

/// The id of loop `index` of worker `worker_id` (the pod name in a pod):
/// loop 0 is the worker id itself, so a one-loop worker's transactional id
/// is `<applicationId>-<pod name>`.
pub fn loop_id(worker_id: &str, index: usize) -> String {
    if index == 0 {
        worker_id.to_string()
    } else {
        format!("{worker_id}-{index}")
    }
}

/// Whether `id` is the id of one of worker `worker_id`'s loops
/// ([`loop_id`]): a worker's `/tasks` answers with one of them.
pub fn is_loop_of(id: &str, worker_id: &str) -> bool {
    match id.strip_prefix(worker_id) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// The transactional ids of loops `loops` of a worker: what to fence.
pub fn loop_transactional_ids(
    application_id: &str,
    worker_id: &str,
    loops: Range<usize>,
) -> Vec<String> {
    loops
        .map(|index| transactional_id(application_id, &loop_id(worker_id, index)))
        .collect()
}

/// What an internal topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalTopic {
    /// A state store's changes.
    Changelog,
    /// Records re-keyed by a step, for the next one.
    Repartition,
}

impl InternalTopic {
    const ALL: [InternalTopic; 2] = [InternalTopic::Changelog, InternalTopic::Repartition];

    fn suffix(self) -> &'static str {
        match self {
            InternalTopic::Changelog => "changelog",
            InternalTopic::Repartition => "repartition",
        }
    }
}

/// `<applicationId>-<step>-changelog` or `-repartition`: the only names
/// Millrace gives topics it creates for an app.
pub fn internal_topic(application_id: &str, step: &str, kind: InternalTopic) -> String {
    format!("{application_id}-{step}-{}", kind.suffix())
}

/// Whether `topic` is the name of an internal topic of one of the app's
/// `steps`. A name alone is not proof (a user may have such a topic): what
/// may be deleted is what Millrace recorded creating *and* is named so.
pub fn is_internal_topic(application_id: &str, steps: &[String], topic: &str) -> bool {
    steps.iter().any(|step| {
        InternalTopic::ALL
            .iter()
            .any(|kind| internal_topic(application_id, step, *kind) == topic)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_id_names_its_worker_and_no_other() {
        for i in 0..3 {
            assert!(is_loop_of(&loop_id("enricher-1", i), "enricher-1"));
        }
        assert!(!is_loop_of("enricher-11", "enricher-1"));
        assert!(!is_loop_of("enricher-1-", "enricher-1"));
        assert!(!is_loop_of("enricher-1-x", "enricher-1"));
        assert!(!is_loop_of("other-0", "enricher-1"));
    }

    #[test]
    fn loop_zero_is_the_worker_and_the_rest_are_numbered() {
        assert_eq!(
            loop_transactional_ids("shop.orders", "orders-1", 0..3),
            [
                "shop.orders-orders-1",
                "shop.orders-orders-1-1",
                "shop.orders-orders-1-2"
            ]
        );
        assert_eq!(loop_transactional_ids("a", "w", 2..MAX_LOOPS).len(), 6);
    }

    #[test]
    fn only_internal_topics_of_the_apps_own_steps_are_internal() {
        let steps = vec!["dedup".to_string(), "by-customer".to_string()];
        let changelog = internal_topic("orders", "dedup", InternalTopic::Changelog);
        assert_eq!(changelog, "orders-dedup-changelog");
        assert!(is_internal_topic("orders", &steps, &changelog));
        assert!(is_internal_topic(
            "orders",
            &steps,
            "orders-by-customer-repartition"
        ));
        for user in [
            "orders",
            "orders-large",
            "orders-eu",
            "orders-dlq",
            "orders--changelog",
            "orders-changelog",
            "ordersx-dedup-changelog",
            "other-dedup-changelog",
            "orders-dedup-changelog-v2",
            // Another app's, whose id starts with this one's.
            "orders-eu-agg-changelog",
        ] {
            assert!(!is_internal_topic("orders", &steps, user), "{user}");
        }
    }
}
