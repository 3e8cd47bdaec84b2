//! Kafka client settings. The settings Millrace owns come last, so a user
//! property can never override them (the operator refuses such specs too).

use rdkafka::ClientConfig;

use super::stash::{STASH_BYTES, STASH_RECORDS};
use millrace_crds::identity::transactional_id;
use millrace_crds::worker_config::{KafkaClientConfig, WorkerConfig};
use millrace_crds::ProcessingGuarantee;

/// `tuning` are defaults the user's `spec.kafka.properties` may override.
fn base(kafka: &KafkaClientConfig, tuning: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    for (k, v) in tuning {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    c.set("security.protocol", kafka.security_protocol.to_lowercase());
    if let Some(mechanism) = &kafka.sasl_mechanism {
        c.set("sasl.mechanism", mechanism);
        for (env, key) in [
            (&kafka.sasl_username_env, "sasl.username"),
            (&kafka.sasl_password_env, "sasl.password"),
        ] {
            let Some(env) = env else { continue };
            let value = std::env::var(env).map_err(|_| {
                anyhow::anyhow!("SASL is configured but the environment variable {env} is not set")
            })?;
            c.set(key, value);
        }
    }
    for (location, key) in [
        (&kafka.ssl_ca_location, "ssl.ca.location"),
        (&kafka.ssl_certificate_location, "ssl.certificate.location"),
        (&kafka.ssl_key_location, "ssl.key.location"),
    ] {
        if let Some(path) = location {
            c.set(key, path);
        }
    }
    Ok(c)
}

/// An admin client: reads the broker's limits at start (`broker_limits`).
pub fn admin(config: &WorkerConfig) -> anyhow::Result<ClientConfig> {
    base(&config.kafka, &[])
}

/// A worker's prefetch, shared by its loops' consumers (librdkafka's
/// defaults, a 64 MB queue and fetches of up to 50 MB per consumer, made
/// most of a worker's memory). 20 MB rather than 30 cost no measurable
/// throughput once a full queue no longer held fetching back for a second
/// (`fetch.queue.backoff.ms`), and about 35 MB of peak RSS.
const PREFETCH_BUDGET_KB: usize = 20 * 1024;
const MIN_QUEUE_KB: usize = 8 * 1024;

/// (queue KB, fetch bytes) of one loop's consumer. The queue holds three
/// fetches: with room for only one, a consumer stops fetching until its
/// loop has drained the queue, and an 8 MB queue with 8 MB fetches ran at
/// half the throughput of a 16 MB one (bench/README.md).
pub fn prefetch(loops: usize) -> (usize, usize) {
    let queue_kb = (PREFETCH_BUDGET_KB / loops.max(1)).max(MIN_QUEUE_KB);
    (queue_kb, queue_kb * 1024 / 3)
}

/// Consumer defaults the user's properties may override; the benchmark's
/// raw pipe uses them too, so it is not starved where Millrace is not.
pub fn consumer_tuning(loops: usize) -> Vec<(&'static str, String)> {
    let (queue_kb, fetch_bytes) = prefetch(loops);
    vec![
        ("queued.max.messages.kbytes", queue_kb.to_string()),
        ("fetch.max.bytes", fetch_bytes.to_string()),
        ("max.partition.fetch.bytes", "524288".to_string()),
        // librdkafka waits 1 s before fetching a partition again once its
        // queue was full; a loop drains a full queue in well under that and
        // then starved (idle a third of the time while its commits waited).
        ("fetch.queue.backoff.ms", "10".to_string()),
    ]
}

/// The consumer: in the app's group (for committed offsets) but never
/// joining it: tasks are assigned, not balanced. read_committed in both modes.
pub fn consumer(config: &WorkerConfig) -> anyhow::Result<ClientConfig> {
    let tuning = consumer_tuning(config.loops);
    let tuning: Vec<(&str, &str)> = tuning.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut c = base(&config.kafka, &tuning)?;
    c.set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    Ok(c)
}

/// The producer; transactional under ExactlyOnce with `transactional.id =
/// <applicationId>-<worker id>`, so a restarted worker fences its zombie.
pub fn producer(config: &WorkerConfig, worker_id: &str) -> anyhow::Result<ClientConfig> {
    // librdkafka queues up to 100,000 records (and 1 GB) per producer.
    // Past a smaller cap, sends wait for deliveries instead of growing
    // memory; but a send that finds the queue full waits 50 ms, and at
    // 20,000 records exactly-once loops did so 13–27 times per million
    // records (after each commit the held-back outputs go out at once, into
    // a transaction whose partitions are not registered yet). The cap takes
    // the largest stash twice over: in interleaved runs exactly-once went
    // from 351k to 390k records/s, at-least-once stayed at 389k–393k
    // (bench/README.md, item 20).
    let (max_messages, max_kbytes) = producer_queue_cap();
    let tuning = [
        ("queue.buffering.max.messages", max_messages.as_str()),
        ("queue.buffering.max.kbytes", max_kbytes.as_str()),
        // librdkafka's 5 ms made produce requests of a few records per
        // partition; at 20 ms the broker used about a third less CPU per
        // record, which on a shared machine is throughput (bench/README.md).
        // Kafka Streams' default is 100 ms. Under exactly-once outputs are
        // visible only at the commit, and a closed batch is flushed at once
        // (`flusher`), so lingering longer costs no latency there.
        ("linger.ms", linger_ms(config.processing_guarantee)),
    ];
    let mut c = base(&config.kafka, &tuning)?;
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's default: keys land on the partitions Kafka
        // Streams and other Java producers would choose.
        .set("partitioner", "murmur2_random");
    if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
        transactional(&mut c, config, worker_id);
    }
    Ok(c)
}

/// A producer that sends no records, only transactions' ends: at-least-once
/// in a placed pod commits the loop's offsets with it, under the
/// transactional id the exactly-once producer would have, so the operator's
/// fence reaches it (`fence`); a worker fences its unused loop ids with it.
pub fn offset_fence(config: &WorkerConfig, worker_id: &str) -> anyhow::Result<ClientConfig> {
    let mut c = base(&config.kafka, &[])?;
    transactional(&mut c, config, worker_id);
    // `spec.transactionTimeout` is only checked under exactly-once: kept
    // within librdkafka's and the broker's default bounds here, and the
    // delivery timeouts (no records are sent) within it, whatever the
    // user's properties say, so the producer is always valid.
    let timeout_ms = config.transaction_timeout_ms.clamp(1_000, 15 * 60 * 1_000);
    for key in ["transaction.timeout.ms", "message.timeout.ms"] {
        c.set(key, timeout_ms.to_string());
    }
    c.remove("delivery.timeout.ms");
    Ok(c)
}

fn transactional(c: &mut ClientConfig, config: &WorkerConfig, worker_id: &str) {
    c.set(
        "transactional.id",
        transactional_id(&config.application_id, worker_id),
    )
    .set(
        "transaction.timeout.ms",
        config.transaction_timeout_ms.to_string(),
    );
}

/// The producer queue's cap (`queue.buffering.max.messages`, `.kbytes`):
/// twice the most a loop holds back while a batch closes.
fn producer_queue_cap() -> (String, String) {
    (
        (2 * STASH_RECORDS).to_string(),
        (2 * STASH_BYTES / 1024).to_string(),
    )
}

/// Producer `linger.ms`: longer under exactly-once, where a batch's
/// outputs wait for its commit anyway.
pub fn linger_ms(guarantee: ProcessingGuarantee) -> &'static str {
    match guarantee {
        ProcessingGuarantee::ExactlyOnce => "50",
        ProcessingGuarantee::AtLeastOnce => "20",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_share_the_prefetch_budget_and_each_queue_holds_three_fetches() {
        assert_eq!(prefetch(1), (20 * 1024, 20 * 1024 * 1024 / 3));
        assert_eq!(prefetch(2), (10 * 1024, 10 * 1024 * 1024 / 3));
        assert_eq!(prefetch(3).0, 8 * 1024, "never below 8 MB");
        assert_eq!(prefetch(0), prefetch(1));
    }

    fn config(properties: &[(&str, &str)]) -> WorkerConfig {
        serde_json::from_value(serde_json::json!({
            "applicationId": "app",
            "processingGuarantee": "ExactlyOnce",
            "commitIntervalMs": 100,
            "transactionTimeoutMs": 10000,
            "adminPort": 8080,
            "kafka": {
                "bootstrapServers": "k:9092",
                "securityProtocol": "PLAINTEXT",
                "properties": properties.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn buffer_sizes_are_defaults_the_user_may_change_but_owned_settings_are_not() {
        let mut two_loops = config(&[]);
        two_loops.loops = 2;
        let c = consumer(&two_loops).unwrap();
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("10240"));
        assert_eq!(c.get("fetch.max.bytes"), Some("3495253"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        let c = consumer(&config(&[
            ("queued.max.messages.kbytes", "32768"),
            ("isolation.level", "read_uncommitted"),
        ]))
        .unwrap();
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("32768"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        let p = producer(&config(&[("queue.buffering.max.messages", "50000")]), "w").unwrap();
        assert_eq!(p.get("queue.buffering.max.messages"), Some("50000"));
        assert_eq!(p.get("transactional.id"), Some("app-w"));
        assert_eq!(p.get("linger.ms"), Some("50"), "exactly-once");
        let mut at_least_once = config(&[]);
        at_least_once.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
        let p = producer(&at_least_once, "w").unwrap();
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("queue.buffering.max.messages"), Some("60000"));
        assert_eq!(p.get("queue.buffering.max.kbytes"), Some("16384"));
        assert_eq!(p.get("transactional.id"), None);
    }
}
