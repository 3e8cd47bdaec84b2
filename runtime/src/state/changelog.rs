//! The changelog topics: `<applicationId>-<step>-changelog`, compacted,
//! one partition per task. Created by the worker when missing, checked
//! when present: a changelog that deletes by time, or has fewer
//! partitions than there are tasks, would lose state.

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

/// What is wrong with an existing changelog, if anything.
pub fn problem(
    topic: &str,
    cleanup_policy: Option<&str>,
    partitions: i32,
    tasks: i32,
) -> Option<String> {
    let compacted = cleanup_policy.is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"));
    if !compacted || cleanup_policy.is_some_and(|p| p.contains("delete")) {
        return Some(format!(
            "changelog topic '{topic}' has cleanup.policy '{}': a changelog must be compacted \
             (cleanup.policy=compact) or it loses state; fix the topic or delete it for Millrace \
             to create it",
            cleanup_policy.unwrap_or("unknown")
        ));
    }
    (partitions < tasks)
        .then(|| format!("changelog topic '{topic}' has {partitions} partitions for {tasks} tasks"))
}

/// The changelogs as [`ensure`] left them.
#[derive(Debug, Default)]
pub struct Ensured {
    /// The shortest tombstone retention among them (`restore` must not
    /// trust a store older than that).
    pub tombstone_retention_ms: u64,
}

/// Creates the missing changelogs and checks the rest; grows one with
/// fewer partitions than tasks.
pub fn ensure(config: &WorkerConfig, topics: &[String], tasks: i32) -> Result<Ensured, String> {
    let mut ensured = Ensured {
        tombstone_retention_ms: DEFAULT_TOMBSTONE_RETENTION_MS,
    };
    if topics.is_empty() {
        return Ok(ensured);
    }
    let fail = |e: &dyn std::fmt::Display| format!("changelog topics: {e}");
    let admin: AdminClient<DefaultClientContext> = clients::admin(config)
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, tasks, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact")
        })
        .collect();
    let created =
        futures::executor::block_on(admin.create_topics(&new, &options)).map_err(|e| fail(&e))?;
    for result in created {
        match result {
            Ok(topic) => {
                tracing::info!(topic, partitions = tasks, "created the changelog topic");
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(format!("creating changelog topic '{topic}': {code}"))
            }
        }
    }
    let consumer: BaseConsumer = clients::consumer(config)
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?;
    for topic in topics {
        let configs = topic_configs(&admin, &options, topic)?;
        let value = |name: &str| configs.get(name).cloned();
        if let Some(ms) = value("delete.retention.ms").and_then(|v| v.parse().ok()) {
            ensured.tombstone_retention_ms = ensured.tombstone_retention_ms.min(ms);
        }
        let partitions = partition_count(&consumer, topic)?;
        match problem(topic, value("cleanup.policy").as_deref(), partitions, tasks) {
            None => {}
            Some(_) if partitions > 0 && partitions < tasks => {
                // The source topics gained partitions: so does the changelog.
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
                    "grew the changelog topic"
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
        .map_err(|e| format!("describing changelog topic '{topic}': {e}"))?;
        let entries: std::collections::BTreeMap<String, String> = match described.into_iter().next()
        {
            Some(Ok(resource)) => resource
                .entries
                .into_iter()
                .filter_map(|e| Some((e.name, e.value?)))
                .collect(),
            Some(Err(e)) if since.elapsed() > NEW_TOPIC_GRACE => {
                return Err(format!("changelog topic '{topic}': {e}"))
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
            .map_err(|e| format!("metadata of changelog topic '{topic}': {e}"))?;
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
        assert_eq!(problem("c", Some("compact"), 8, 8), None);
        assert_eq!(problem("c", Some("compact"), 12, 8), None, "more is fine");
        let deletes = problem("c", Some("delete"), 8, 8).unwrap();
        assert!(
            deletes.contains("'c' has cleanup.policy 'delete'"),
            "{deletes}"
        );
        assert!(
            problem("c", Some("compact,delete"), 8, 8).is_some(),
            "loses old keys"
        );
        assert!(problem("c", None, 8, 8).is_some());
        assert!(problem("c", Some("compact"), 4, 8)
            .unwrap()
            .contains("4 partitions for 8"));
    }

    #[test]
    fn changelogs_are_named_for_the_app_and_the_step() {
        assert_eq!(
            names("shop", &["count".into(), "once".into()]),
            vec!["shop-count-changelog", "shop-once-changelog"]
        );
    }
}
