//! Kafka helpers of the harness: topics, filling the input, progress.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn create_topics(bootstrap: &str, names: &[String], partitions: i32) -> anyhow::Result<()> {
    create_topics_with(bootstrap, names, partitions, &[])
}

/// [`create_topics`] with topic settings (`cleanup.policy` and the like).
pub fn create_topics_with(
    bootstrap: &str,
    names: &[String],
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    let (admin, rt) = admin(bootstrap)?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            settings.iter().fold(
                NewTopic::new(n, partitions, TopicReplication::Fixed(1)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let results = rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))?;
    each_done_or(results, RDKafkaErrorCode::TopicAlreadyExists, "creating")
}

/// Deletes topics (an absent one is no error). The broker removes their
/// files after `log.segment.delete.delay.ms`.
pub fn delete_topics(bootstrap: &str, names: &[String]) -> anyhow::Result<()> {
    let (admin, rt) = admin(bootstrap)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = rt.block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
    each_done_or(
        results,
        RDKafkaErrorCode::UnknownTopicOrPartition,
        "deleting",
    )
}

fn admin(
    bootstrap: &str,
) -> anyhow::Result<(AdminClient<DefaultClientContext>, tokio::runtime::Runtime)> {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((admin, rt))
}

/// Every topic's operation succeeded, or failed with `harmless`.
fn each_done_or(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
    harmless: RDKafkaErrorCode,
    doing: &str,
) -> anyhow::Result<()> {
    for r in results {
        if let Err((t, code)) = r {
            anyhow::ensure!(code == harmless, "{doing} {t}: {code}");
        }
    }
    Ok(())
}

/// An order of about 200 bytes; every 1000th record is malformed (it goes
/// to the dead-letter topic). `ts` is the produce time for latency.
pub fn order(i: u64, ts_ms: u128) -> String {
    if i % 1000 == 999 {
        return format!("malformed order {i}");
    }
    let status = if i.is_multiple_of(10) { "open" } else { "paid" };
    let region = ["eu", "us", "apac"][(i % 3) as usize];
    format!(
        r#"{{"id":{i},"status":"{status}","amount":{},"region":"{region}","customer":"c-{}","ts":{ts_ms},"note":"{}"}}"#,
        (i * 37) % 2000,
        i % 5000,
        "x".repeat(60)
    )
}

/// Where the orders router sends order `i` (an index into the outputs
/// large, eu, other, dlq), or `None` when it drops it (not paid): the
/// fields `order` gives it, read as the router's rules read them.
pub fn route_of(i: u64) -> Option<usize> {
    if i % 1000 == 999 {
        Some(3)
    } else if i.is_multiple_of(10) {
        None
    } else if (i * 37) % 2000 >= 1000 {
        Some(0)
    } else if i.is_multiple_of(3) {
        Some(1)
    } else {
        Some(2)
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Writes `records` orders; with `rate` (records/s) spread over time.
pub fn fill(bootstrap: &str, topic: &str, records: u64, rate: Option<u64>) -> anyhow::Result<()> {
    produce(bootstrap, topic, 0..records, rate, |i| {
        (None, format!("c-{}", i % 5000), order(i, now_ms()))
    })?;
    Ok(())
}

/// Writes records `seqs` of the stateful benchmark ([`keyed_record`]).
pub fn fill_keyed(
    bootstrap: &str,
    topic: &str,
    seqs: std::ops::Range<u64>,
    keys: u64,
) -> anyhow::Result<()> {
    produce(bootstrap, topic, seqs, None, |i| {
        keyed_record(i, keys, None)
    })?;
    Ok(())
}

/// Record `i` of the stateful benchmark: key `k-<i % keys>`, value
/// `{"id":i,"n":..}` of about 80 bytes. With `partitions`, written to the
/// partition [`task_of_key`] names, so a key's task is known from its name.
pub fn keyed_record(i: u64, keys: u64, partitions: Option<i32>) -> Record {
    let key = i % keys;
    (
        partitions.map(|n| (key % n as u64) as i32),
        format!("k-{key}"),
        format!(
            r#"{{"id":{i},"n":{},"note":"{}"}}"#,
            (i * 7) % 100,
            "x".repeat(40)
        ),
    )
}

/// The partition (task) of a key `k-<n>` that [`keyed_record`] wrote with
/// `partitions`.
pub fn task_of_key(key: &[u8], partitions: i32) -> Option<usize> {
    let n: u64 = std::str::from_utf8(key.strip_prefix(b"k-")?)
        .ok()?
        .parse()
        .ok()?;
    Some((n % partitions as u64) as usize)
}

/// The stream–table join's table: one customer `{"name":..,"tier":..}`
/// for each key `k-<n>` of [`keyed_record`], `n` < `keys`, but none for
/// every tenth key ([`in_table`]), so a left join's null path runs too.
pub fn fill_table(bootstrap: &str, topic: &str, keys: u64) -> anyhow::Result<()> {
    produce(
        bootstrap,
        topic,
        (0..keys).filter(|n| in_table(*n)),
        None,
        |n| {
            (
                None,
                format!("k-{n}"),
                format!(r#"{{"name":"customer-{n}","tier":{}}}"#, n % 5),
            )
        },
    )?;
    Ok(())
}

/// Whether key `k-<n>` has a customer in [`fill_table`]'s table.
pub fn in_table(n: u64) -> bool {
    !n.is_multiple_of(10)
}

/// Records `seqs`, each keyed by its own id and carrying a group `g` (one
/// of `groups`), an amount and an event time `at` 1 ms after the previous,
/// from now: Kafka Streams writes a record's event time as its timestamp
/// to the repartition topic, and the broker refuses timestamps more than
/// an hour ahead (`log.message.timestamp.after.max.ms`).
pub fn fill_grouped(
    bootstrap: &str,
    topic: &str,
    seqs: std::ops::Range<u64>,
    groups: u64,
) -> anyhow::Result<()> {
    let base = now_ms();
    produce(bootstrap, topic, seqs, None, |i| {
        (
            None,
            format!("o-{i}"),
            format!(
                r#"{{"id":{i},"g":"g-{}","n":{},"at":{}}}"#,
                i % groups,
                (i * 7) % 100,
                base + u128::from(i)
            ),
        )
    })?;
    Ok(())
}

/// A record to write: its partition (`None`: the producer's partitioner),
/// key and value.
pub type Record = (Option<i32>, String, String);

/// Writes `record_of(i)` for each `i` of `seqs`, `rate` records/s when
/// given; returns how many were written once all are acknowledged.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    seqs: impl IntoIterator<Item = u64>,
    rate: Option<u64>,
    record_of: impl Fn(u64) -> Record,
) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()?;
    let started = Instant::now();
    let mut sent = 0u64;
    for i in seqs {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        let (partition, key, value) = record_of(i);
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        record.partition = partition;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(sent)
}

/// Records of `topic` a read_committed consumer sees, read to its end:
/// the count a contender's output is checked against.
pub fn count_committed(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<u64> {
    Ok(count_committed_matching(bootstrap, topic, partitions, |_| false)?.0)
}

/// [`count_committed`], and how many of those records' values `matches`.
pub fn count_committed_matching(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    matches: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<(u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("count-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        ends.push(
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1,
        );
    }
    consumer.assign(&tpl)?;
    // The position passes commit markers and aborted records too, so every
    // partition's reaches its high watermark once all is read.
    let at_end = |c: &BaseConsumer| -> anyhow::Result<bool> {
        let positions = c.position()?;
        Ok(ends.iter().enumerate().all(|(p, end)| {
            match positions
                .find_partition(topic, p as i32)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o >= *end,
                _ => *end == 0,
            }
        }))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut count, mut matched) = (0, 0);
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(m) => {
                if matches(rdkafka::Message::payload(&m?).unwrap_or_default()) {
                    matched += 1;
                }
                count += 1;
                // Positions are asked for every few thousand records, not per record.
                if count % 5000 != 0 {
                    continue;
                }
            }
            None => anyhow::ensure!(
                Instant::now() < deadline,
                "reading {topic} to its end took over 10 minutes"
            ),
        }
        if at_end(&consumer)? {
            return Ok((count, matched));
        }
    }
}

/// The end offsets of a topic filled without transactions (its high
/// watermarks are its last stable offsets), per partition.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    end_offsets_with(&consumer, topic, partitions)
}

fn end_offsets_with(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<i64>> {
    (0..partitions)
        .map(|p| {
            Ok(consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1)
        })
        .collect()
}

/// Watches a group's committed offsets reach the end of a topic that no
/// longer grows. One client for the whole run and the end offsets read once:
/// polled every 100 ms, it costs the broker (which shares the cores with
/// the contender) one request per poll, not a new connection and a request
/// per partition.
pub struct DrainWatch {
    consumer: BaseConsumer,
    topic: String,
    ends: Vec<i64>,
}

impl DrainWatch {
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            // Reads the committed offsets only, at once. Under read_committed
            // librdkafka asks for stable offsets (KIP-447): while a
            // transaction holds offsets the broker answers
            // UNSTABLE_OFFSET_COMMIT and the client retries after a backoff,
            // so the end of an exactly-once run was noticed up to seconds
            // late. Offsets pending in a transaction are not returned
            // either way (checked against the broker, bench/README.md).
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let ends = end_offsets_with(&consumer, topic, partitions)?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            ends,
        })
    }

    /// The input's end offsets (it no longer grows).
    pub fn ends(&self) -> &[i64] {
        &self.ends
    }

    /// Records committed so far (summed over partitions), and whether that
    /// is the whole topic; `None` when the broker did not answer.
    pub fn progress(&self) -> Option<(i64, bool)> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.ends.len() {
            tpl.add_partition(&self.topic, p as i32);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .ok()?;
        let offsets: Vec<i64> = (0..self.ends.len())
            .map(|p| {
                match committed
                    .find_partition(&self.topic, p as i32)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                }
            })
            .collect();
        let done = offsets.iter().zip(&self.ends).all(|(o, end)| o >= end);
        Some((offsets.iter().sum(), done))
    }
}

/// Watches records arrive on output topics written without transactions:
/// their end offsets, summed per topic, are the records written. One
/// request (a ListOffsets for every partition) per poll.
pub struct OutputWatch {
    consumer: BaseConsumer,
    topics: Vec<String>,
    latest: TopicPartitionList,
}

impl OutputWatch {
    pub fn new(bootstrap: &str, topics: &[String], partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()?;
        let mut latest = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                // A "timestamp" of -1 asks for the latest offset.
                latest.add_partition_offset(topic, p, Offset::End)?;
            }
        }
        Ok(Self {
            consumer,
            topics: topics.to_vec(),
            latest,
        })
    }

    /// Records written to each topic so far (in the order given); `None`
    /// when the broker did not answer for every partition.
    pub fn written(&self) -> Option<Vec<i64>> {
        let ends = self
            .consumer
            .offsets_for_times(self.latest.clone(), Duration::from_secs(10))
            .ok()?;
        let mut written = vec![0; self.topics.len()];
        for e in ends.elements() {
            let Offset::Offset(o) = e.offset() else {
                return None;
            };
            let i = self.topics.iter().position(|t| t.as_str() == e.topic())?;
            written[i] += o;
        }
        Some(written)
    }
}

/// Latency of committed outputs: for every record seen by a read_committed
/// consumer on `topics`, now − the `ts` its value carries. Stops after
/// `quiet` without records once `until` has passed.
pub fn latencies(bootstrap: &str, topics: &[String], until: Instant, quiet: Duration) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("latency-{}", now_ms()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "latest")
        .create()
        .expect("latency consumer");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).expect("subscribe");
    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                use rdkafka::Message;
                let ts = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["ts"].as_u64());
                if let Some(ts) = ts {
                    out.push((now_ms() as u64).saturating_sub(ts));
                }
            }
            _ => {
                if Instant::now() > until && last.elapsed() > quiet {
                    return out;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_task_is_its_partition() {
        for i in [0, 5, 17, 1_599_999] {
            let (partition, key, _) = keyed_record(i, 1_600_000, Some(16));
            assert_eq!(
                task_of_key(key.as_bytes(), 16),
                partition.map(|p| p as usize)
            );
        }
        assert_eq!(task_of_key(b"other", 16), None);
    }

    /// `route_of` agrees with the router's rules applied to `order`'s JSON.
    #[test]
    fn route_of_follows_the_orders() {
        for i in 0..5000 {
            let expected = match serde_json::from_str::<serde_json::Value>(&order(i, 0)) {
                Err(_) => Some(3),
                Ok(v) if v["status"] != "paid" => None,
                Ok(v) if v["amount"].as_u64().unwrap() >= 1000 => Some(0),
                Ok(v) if v["region"] == "eu" => Some(1),
                Ok(_) => Some(2),
            };
            assert_eq!(route_of(i), expected, "order {i}");
        }
    }
}
