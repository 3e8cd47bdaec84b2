//! The internal topics, created by the worker when missing and checked
//! when present:
//! - changelogs, `<applicationId>-<step>-changelog`: compacted, a partition
//!   per task. One that deletes by time, or has fewer partitions than there
//!   are tasks, would lose state.
//! - repartition topics, `<applicationId>-<step>-repartition`: kept until
//!   purged (`retention.ms=-1`, deleted up to the committed offsets by
//!   `purge.rs`), exactly a partition per task. A compacted one would drop
//!   records of one key; one with more partitions than tasks would take
//!   records no task reads.
//!
//! A join's store has no changelog here: its table topic is one (the
//! user's, never created or changed; only its retention is read).

use std::time::Duration;

use rdkafka::admin::TopicReplication;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::engine::clients;
use millrace_crds::identity::{internal_topic, InternalTopic};
use millrace_crds::worker_config::WorkerConfig;

const TIMEOUT: Duration = Duration::from_secs(30);
const NEW_TOPIC_GRACE: Duration = Duration::from_secs(10);
/// Kafka's default `delete.retention.ms` (a day): how long a compacted
/// topic keeps a tombstone.
pub const DEFAULT_TOMBSTONE_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// The changelog of each store, in store order.
pub fn names(application_id: &str, stores: &[String]) -> Vec<String> {
    stores
        .iter()
        .map(|step| internal_topic(application_id, step, InternalTopic::Changelog))
        .collect()
}

/// The partition count an internal topic should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// One per task: a topic with fewer is grown.
    PerTask(i32),
    /// `spec.pipeline.repartitionPartitions`: exactly this many. Growing
    /// the topic would move groups to other partitions (tasks), away from
    /// their state.
    Set(i32),
}

impl Wanted {
    pub fn count(self) -> i32 {
        match self {
            Wanted::PerTask(n) | Wanted::Set(n) => n,
        }
    }
}

/// What is wrong with an existing internal topic, if anything.
pub fn problem(
    kind: InternalTopic,
    topic: &str,
    cleanup_policy: Option<&str>,
    partitions: i32,
    wanted: Wanted,
) -> Option<String> {
    if let (Wanted::Set(n), true) = (wanted, partitions != wanted.count()) {
        return Some(format!(
            "repartition topic '{topic}' has {partitions} partitions and \
             spec.pipeline.repartitionPartitions is {n}: a repartition topic's count cannot \
             change under a running app (its groups would move away from their state); set it \
             back to {partitions}, or give the app a new applicationId"
        ));
    }
    let tasks = wanted.count();
    let has =
        |policy: &str| cleanup_policy.is_some_and(|p| p.split(',').any(|p| p.trim() == policy));
    match kind {
        InternalTopic::Changelog if !has("compact") || has("delete") => Some(format!(
            "changelog topic '{topic}' has cleanup.policy '{}': a changelog must be compacted \
             (cleanup.policy=compact) or it loses state; fix the topic or delete it for Millrace \
             to create it",
            cleanup_policy.unwrap_or("unknown")
        )),
        InternalTopic::Repartition if has("compact") => Some(format!(
            "repartition topic '{topic}' is compacted: records of one key would be dropped; \
             set cleanup.policy=delete or delete it for Millrace to create it"
        )),
        InternalTopic::Repartition if partitions > tasks => Some(format!(
            "repartition topic '{topic}' has {partitions} partitions for {tasks} tasks: records \
             in the partitions past the tasks' would never be read; delete it (once the app has \
             read it) for Millrace to create it"
        )),
        _ => (partitions < tasks).then(|| {
            format!("internal topic '{topic}' has {partitions} partitions for {tasks} tasks")
        }),
    }
}

/// A join table that deletes by time loses keys a store restored from it
/// then misses: allowed (the user's topic, their retention), said.
pub fn table_warning(topic: &str, cleanup_policy: Option<&str>) -> Option<String> {
    let compacted =
        cleanup_policy.is_some_and(|p| p.split(',').map(str::trim).eq(std::iter::once("compact")));
    (!compacted).then(|| {
        format!(
            "join table '{topic}' has cleanup.policy '{}': a join's store is restored from its \
             table, so keys the table has deleted by time are missing from a restored store; \
             make it cleanup.policy=compact for every key's latest value",
            cleanup_policy.unwrap_or("unknown")
        )
    })
}

/// The changelogs as [`ensure`] left them.
#[derive(Debug, Default)]
pub struct Ensured {
    /// The shortest tombstone retention among them (`restore` must not
    /// trust a store older than that).
    pub tombstone_retention_ms: u64,
}

/// The topics [`ensure`] sees to.
pub struct Internal<'a> {
    /// The app's own changelogs: created, checked, grown.
    pub changelogs: &'a [String],
    /// Created, checked, grown with the tasks; or, with a set count
    /// (`repartitionPartitions`), created with it and held to it.
    pub repartitions: &'a [String],
    pub repartition_partitions: Option<i32>,
    /// Join tables, their stores' changelogs: only read (the user's
    /// topics), for their tombstone retention.
    pub tables: &'a [String],
}

/// Creates the missing changelogs and repartition topics and checks the
/// rest; grows one with fewer partitions than tasks. Reads the join
/// tables' tombstone retention too: a store restored from a table must not
/// trust a copy older than that either.
pub fn ensure(
    config: &WorkerConfig,
    internal: Internal<'_>,
    tasks: i32,
) -> Result<Ensured, String> {
    let mut ensured = Ensured {
        tombstone_retention_ms: DEFAULT_TOMBSTONE_RETENTION_MS,
    };
    let topics: Vec<(&String, InternalTopic)> = internal
        .changelogs
        .iter()
        .map(|t| (t, InternalTopic::Changelog))
        .chain(
            internal
                .repartitions
                .iter()
                .map(|t| (t, InternalTopic::Repartition)),
        )
        .collect();
    if topics.is_empty() && internal.tables.is_empty() {
        return Ok(ensured);
    }
    let fail = |e: &dyn std::fmt::Display| format!("internal topics: {e}");
    let admin: AdminClient<DefaultClientContext> = clients::admin(config)
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    for table in internal.tables {
        let configs = topic_configs(&admin, &options, table)?;
        if let Some(ms) = configs
            .get("delete.retention.ms")
            .and_then(|v| v.parse().ok())
        {
            ensured.tombstone_retention_ms = ensured.tombstone_retention_ms.min(ms);
        }
        let policy = configs.get("cleanup.policy").map(String::as_str);
        if let Some(warning) = table_warning(table, policy) {
            tracing::warn!("{warning}");
        }
    }
    if topics.is_empty() {
        return Ok(ensured);
    }
    let wanted = |kind: InternalTopic| match (kind, internal.repartition_partitions) {
        (InternalTopic::Repartition, Some(n)) => Wanted::Set(n),
        _ => Wanted::PerTask(tasks),
    };
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, kind)| {
            let partitions = wanted(*kind).count();
            let topic = NewTopic::new(t, partitions, TopicReplication::Fixed(-1));
            match kind {
                InternalTopic::Changelog => topic.set("cleanup.policy", "compact"),
                // The records keep their input's time, for windows
                // downstream, whatever the broker's default.
                InternalTopic::Repartition => topic
                    .set("cleanup.policy", "delete")
                    .set("retention.ms", "-1")
                    .set("message.timestamp.type", "CreateTime"),
            }
        })
        .collect();
    let created =
        futures::executor::block_on(admin.create_topics(&new, &options)).map_err(|e| fail(&e))?;
    for result in created {
        match result {
            Ok(topic) => tracing::info!(topic, "created the internal topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating internal topic '{topic}': {code}")),
        }
    }
    let consumer: BaseConsumer = clients::consumer(config)
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?;
    for (topic, kind) in topics {
        let configs = topic_configs(&admin, &options, topic)?;
        let value = |name: &str| configs.get(name).cloned();
        let retention = value("delete.retention.ms").and_then(|v| v.parse().ok());
        if let Some(ms) = retention.filter(|_| kind == InternalTopic::Changelog) {
            ensured.tombstone_retention_ms = ensured.tombstone_retention_ms.min(ms);
        }
        let partitions = partition_count(&consumer, topic)?;
        let wanted = wanted(kind);
        let policy = value("cleanup.policy");
        match problem(kind, topic, policy.as_deref(), partitions, wanted) {
            None => {}
            Some(_) if partitions > 0 && matches!(wanted, Wanted::PerTask(n) if partitions < n) => {
                // The source topics gained partitions: so does the topic.
                let grow = NewPartitions::new(topic, tasks as usize);
                let grown = futures::executor::block_on(admin.create_partitions(&[grow], &options))
                    .map_err(|e| fail(&e))?;
                for result in grown {
                    result.map_err(|(t, code)| format!("adding partitions to '{t}': {code}"))?;
                }
                tracing::info!(
                    topic,
                    from = partitions,
                    to = tasks,
                    "grew the internal topic"
                );
            }
            Some(problem) => return Err(problem),
        }
    }
    Ok(ensured)
}

/// A topic's configuration. Asked right after the topic is created, a
/// broker may answer without its entries (it does not know the topic
/// yet): asked again for a few seconds.
fn topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let since = std::time::Instant::now();
    loop {
        let described = futures::executor::block_on(
            admin.describe_configs(&[ResourceSpecifier::Topic(topic)], options),
        )
        .map_err(|e| format!("describing internal topic '{topic}': {e}"))?;
        let entries: std::collections::BTreeMap<String, String> = match described.into_iter().next()
        {
            Some(Ok(resource)) => resource
                .entries
                .into_iter()
                .filter_map(|e| Some((e.name, e.value?)))
                .collect(),
            Some(Err(e)) if since.elapsed() > NEW_TOPIC_GRACE => {
                return Err(format!("internal topic '{topic}': {e}"))
            }
            _ => Default::default(),
        };
        if entries.contains_key("cleanup.policy") || since.elapsed() > NEW_TOPIC_GRACE {
            return Ok(entries);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A topic created a moment ago may not be in the metadata yet: looked
/// up again for a few seconds while it has no partitions.
fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<i32, String> {
    let since = std::time::Instant::now();
    loop {
        let md = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("metadata of internal topic '{topic}': {e}"))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if count > 0 || since.elapsed() > NEW_TOPIC_GRACE {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changelog_must_be_compacted_only_and_cover_every_task() {
        let problem = |policy, partitions, tasks| {
            problem(
                InternalTopic::Changelog,
                "c",
                policy,
                partitions,
                Wanted::PerTask(tasks),
            )
        };
        assert_eq!(problem(Some("compact"), 8, 8), None);
        assert_eq!(problem(Some("compact"), 12, 8), None, "more is fine");
        let deletes = problem(Some("delete"), 8, 8).unwrap();
        assert!(
            deletes.contains("'c' has cleanup.policy 'delete'"),
            "{deletes}"
        );
        assert!(
            problem(Some("compact,delete"), 8, 8).is_some(),
            "loses old keys"
        );
        assert!(problem(None, 8, 8).is_some());
        assert!(problem(Some("compact"), 4, 8)
            .unwrap()
            .contains("4 partitions for 8"));
    }

    #[test]
    fn a_repartition_topic_must_not_compact_and_have_a_partition_per_task() {
        let problem = |policy, partitions, tasks| {
            problem(
                InternalTopic::Repartition,
                "r",
                policy,
                partitions,
                Wanted::PerTask(tasks),
            )
        };
        assert_eq!(problem(Some("delete"), 8, 8), None);
        assert!(problem(Some("compact"), 8, 8)
            .unwrap()
            .contains("compacted"));
        assert!(problem(Some("delete"), 12, 8)
            .unwrap()
            .contains("never be read"));
        assert!(problem(Some("delete"), 4, 8)
            .unwrap()
            .contains("4 partitions for 8"));
    }

    #[test]
    fn a_set_repartition_count_is_held_to_exactly() {
        let problem = |partitions| {
            problem(
                InternalTopic::Repartition,
                "r",
                Some("delete"),
                partitions,
                Wanted::Set(12),
            )
        };
        assert_eq!(problem(12), None, "whatever the task count");
        for other in [8, 16] {
            let message = problem(other).unwrap();
            assert!(
                message.contains(&format!(
                    "has {other} partitions and spec.pipeline.repartitionPartitions is 12"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn a_join_table_that_deletes_by_time_is_warned_about() {
        assert_eq!(table_warning("t", Some("compact")), None);
        for policy in [Some("delete"), Some("compact,delete"), None] {
            let warning = table_warning("t", policy).unwrap();
            assert!(warning.contains("join table 't'"), "{warning}");
        }
    }

    #[test]
    fn changelogs_are_named_for_the_app_and_the_step() {
        assert_eq!(
            names("shop", &["count".into(), "once".into()]),
            vec!["shop-count-changelog", "shop-once-changelog"]
        );
    }
}
