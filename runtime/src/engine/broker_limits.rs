//! The broker's settings a worker must fit, read once at start:
//! `transaction.max.timeout.ms` (a longer `transaction.timeout.ms` makes
//! every `init_transactions` fail, forever) and `offsets.retention.minutes`
//! (committed offsets of a group without members expire that long after
//! their last commit, so idle partitions' offsets are committed again well
//! within it). A broker that does not say (no DescribeConfigs permission,
//! say) is assumed to have Kafka's defaults, with a warning.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{clients, EngineError, KAFKA_TIMEOUT};
use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::ProcessingGuarantee;

/// Kafka's default `offsets.retention.minutes` (7 days).
const DEFAULT_OFFSETS_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest between two commits of an idle partition's offset.
const MAX_OFFSET_REFRESH: Duration = Duration::from_secs(3600);
const MIN_OFFSET_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BrokerLimits {
    pub offsets_retention: Duration,
    pub transaction_max_timeout_ms: Option<u64>,
}

impl BrokerLimits {
    /// From a broker's config entries (name, value); absent ones are
    /// Kafka's defaults.
    fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Self {
        let mut limits = BrokerLimits {
            offsets_retention: DEFAULT_OFFSETS_RETENTION,
            transaction_max_timeout_ms: None,
        };
        for (name, value) in entries {
            let Some(value) = value.and_then(|v| v.trim().parse::<u64>().ok()) else {
                continue;
            };
            match name {
                "offsets.retention.minutes" => {
                    limits.offsets_retention = Duration::from_secs(value.saturating_mul(60))
                }
                "transaction.max.timeout.ms" => limits.transaction_max_timeout_ms = Some(value),
                _ => {}
            }
        }
        limits
    }

    /// How often every owned partition's offset is committed again: four
    /// times per retention, at most hourly.
    pub fn offset_refresh(&self) -> Duration {
        (self.offsets_retention / 4).clamp(MIN_OFFSET_REFRESH, MAX_OFFSET_REFRESH)
    }

    /// Under exactly-once, the transaction timeout must be one the broker
    /// accepts.
    pub fn check(&self, config: &WorkerConfig) -> Result<(), EngineError> {
        let Some(max) = self.transaction_max_timeout_ms else {
            return Ok(());
        };
        if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce
            && config.transaction_timeout_ms > max
        {
            return Err(EngineError::Config(format!(
                "spec.transactionTimeout is {} ms, above the broker's transaction.max.timeout.ms ({max} ms): the broker would refuse every transaction; lower it",
                config.transaction_timeout_ms
            )));
        }
        Ok(())
    }
}

/// Reads the limits from one broker of the cluster (they are cluster-wide
/// in practice); Kafka's defaults when it does not say.
pub(super) fn read(config: &WorkerConfig, consumer: &BaseConsumer) -> BrokerLimits {
    match describe(config, consumer) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("reading the broker's configuration: {e}; assuming Kafka's defaults");
            BrokerLimits::from_entries([])
        }
    }
}

fn describe(config: &WorkerConfig, consumer: &BaseConsumer) -> anyhow::Result<BrokerLimits> {
    let metadata = consumer.fetch_metadata(None, KAFKA_TIMEOUT)?;
    let broker = metadata
        .brokers()
        .first()
        .ok_or_else(|| anyhow::anyhow!("the metadata lists no broker"))?
        .id();
    let admin: AdminClient<DefaultClientContext> = clients::admin(config)?.create()?;
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let results = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Broker(broker)], &options),
    )?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no answer for broker {broker}"))?
        .map_err(|e| anyhow::anyhow!("broker {broker}: {e}"))?;
    Ok(BrokerLimits::from_entries(
        resource
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref())),
    ))
}

/// A topic's `max.message.bytes` (what the broker takes in one record
/// batch), or `None` when the broker does not say.
pub(super) fn topic_max_message_bytes(config: &WorkerConfig, topic: &str) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = clients::admin(config).ok()?.create().ok()?;
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let results = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
    );
    let resource = results.ok()?.into_iter().next()?.ok()?;
    let limit = resource
        .get("max.message.bytes")?
        .value
        .as_deref()?
        .parse()
        .ok();
    if limit.is_none() {
        tracing::warn!(
            topic,
            "the broker did not give the topic's max.message.bytes"
        );
    }
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_offsets_are_committed_four_times_per_retention_at_most_hourly() {
        let defaults = BrokerLimits::from_entries([]);
        assert_eq!(defaults.offset_refresh(), MAX_OFFSET_REFRESH);
        let short = BrokerLimits::from_entries([("offsets.retention.minutes", Some("1"))]);
        assert_eq!(short.offset_refresh(), Duration::from_secs(15));
        let day = BrokerLimits::from_entries([("offsets.retention.minutes", Some("1440"))]);
        assert_eq!(day.offset_refresh(), MAX_OFFSET_REFRESH);
        let nonsense = BrokerLimits::from_entries([("offsets.retention.minutes", Some("x"))]);
        assert_eq!(nonsense, defaults);
    }
}
