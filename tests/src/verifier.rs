//! The exactly-once verifier's data side, after Kafka's own EOS system test:
//! keyed records with known content go to an input topic; a pipeline routes
//! them to three topics and a dead-letter topic; then every output partition
//! is read under read_committed and checked record by record against what
//! the input dictates. Shared by the standalone verifier and the placement
//! verifier (workers in pods, rescaled and killed).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::{kafka_bootstrap, unique};

pub const MALFORMED_EVERY: u64 = 97;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
pub struct Topics {
    pub input: String,
    pub outputs: [String; 3],
    pub dlq: String,
    /// Partitions of every topic.
    pub partitions: i32,
}

impl Topics {
    pub fn new(prefix: &str, partitions: i32) -> Self {
        let t = |s: &str| format!("{prefix}-{s}");
        Self {
            input: t("input"),
            outputs: [t("out-a"), t("out-b"), t("out-c")],
            dlq: t("dlq"),
            partitions,
        }
    }
    /// Creates every topic (waiting until it is in the metadata).
    pub fn create(&self) {
        let specs: Vec<(&str, i32)> = self
            .all()
            .into_iter()
            .map(|t| (t.as_str(), self.partitions))
            .collect();
        crate::ensure_topics(&specs);
    }
    /// The input, the first output and the dead-letter topic: where a
    /// [`pipeline_manifest`] app reads and writes.
    pub fn sinks(&self) -> (&str, &str, &str) {
        (&self.input, &self.outputs[0], &self.dlq)
    }

    pub fn all(&self) -> Vec<&String> {
        let mut v = vec![&self.input, &self.dlq];
        v.extend(self.outputs.iter());
        v
    }
    /// What the routing rules dictate for record `seq` (None: dead letter).
    pub fn expected(&self, seq: u64) -> &str {
        if seq.is_multiple_of(MALFORMED_EVERY) {
            return &self.dlq;
        }
        &self.outputs[(seq % 3) as usize]
    }
}

/// Writes `records` records over about `over`, so the worker is busy (and
/// killed) while input keeps arriving, as in Kafka's EOS system test.
/// The start of a StreamApp on the test bed's broker, up to its own
/// `spec:` fields.
pub fn manifest_head(name: &str, app_id: &str) -> String {
    format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: {name}}}\nspec:\n  kafka: {{bootstrapServers: \"{}\"}}\n  applicationId: {app_id}\n",
        kafka_bootstrap()
    )
}

/// A StreamApp running `steps` (list items under `steps:`, each line
/// indented four spaces) on `input`, then routing every record to
/// `output`, failed ones to `dlq`; `spec` is more YAML under `spec:` (two
/// spaces). The stateful verifiers' apps are all of this shape.
pub fn pipeline_manifest(
    (name, app_id): (&str, &str),
    spec: &str,
    (input, output, dlq): (&str, &str, &str),
    steps: &str,
) -> String {
    format!(
        r#"{head}{spec}  pipeline:
    source: {{topics: [{input}]}}
    steps:
{steps}    - route: {{default: {output}}}
    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}
"#,
        head = manifest_head(name, app_id),
    )
}

/// A StreamApp routing the verifier's topics as [`Topics::expected`] says.
/// `spec` is more YAML under `spec:` (each line indented two spaces),
/// `pipeline` more under `spec.pipeline:` (four spaces).
pub fn manifest(name: &str, app_id: &str, topics: &Topics, spec: &str, pipeline: &str) -> String {
    format!(
        r#"{head}{spec}  pipeline:
{pipeline}    source: {{topics: [{input}]}}
    steps:
    - route:
        rules:
        - {{when: "value.seq % 3 == 0", to: {a}}}
        - {{when: "value.seq % 3 == 1", to: {b}}}
        default: {c}
    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}
"#,
        head = manifest_head(name, app_id),
        input = topics.input,
        a = topics.outputs[0],
        b = topics.outputs[1],
        c = topics.outputs[2],
        dlq = topics.dlq,
    )
}

pub fn generate(topics: &Topics, records: u64, over: Duration) {
    generate_seqs(topics, 0..records, over);
}

/// Writes the records with sequence numbers `seqs`, spread over about `over`.
pub fn generate_seqs(topics: &Topics, seqs: std::ops::Range<u64>, over: Duration) {
    write_records(topics, seqs, over, None);
}

/// Writes `records` records, all into one partition (a hot partition).
pub fn generate_into(topics: &Topics, records: u64, partition: i32) {
    write_records(topics, 0..records, Duration::ZERO, Some(partition));
}

fn write_records(
    topics: &Topics,
    seqs: std::ops::Range<u64>,
    over: Duration,
    partition: Option<i32>,
) {
    write_paced(&topics.input, seqs, over, partition, |seq| {
        (format!("k{}", seq % 997), input_value(seq))
    });
}

/// How far ahead of its schedule the writer may run before it sleeps.
const PACE_SLACK: Duration = Duration::from_millis(5);

/// Writes `record(seq)` (key, value) for each of `seqs` to `topic` with an
/// idempotent producer, spread over about `over`, to `partition` or the
/// key's (murmur2, as Java clients).
pub fn write_paced(
    topic: &str,
    seqs: std::ops::Range<u64>,
    over: Duration,
    partition: Option<i32>,
    record: impl Fn(u64) -> (String, String),
) {
    let started = Instant::now();
    let (first, records) = (seqs.start, seqs.end - seqs.start);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for seq in seqs {
        // Smooth, not in bursts: a burst every few seconds would make every
        // task idle between bursts, and a moved task's pause look as long.
        let due = over.mul_f64((seq - first) as f64 / records as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            if ahead > PACE_SLACK {
                std::thread::sleep(ahead);
            }
        }
        let (key, value) = record(seq);
        let mut out = BaseRecord::to(topic).key(&key).payload(&value);
        if let Some(p) = partition {
            out = out.partition(p);
        }
        loop {
            match producer.send(out) {
                Ok(()) => break,
                Err((_, r)) => {
                    out = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The value of input record `seq`: JSON, except every
/// [`MALFORMED_EVERY`]th, which must be dead-lettered.
pub fn input_value(seq: u64) -> String {
    if seq.is_multiple_of(MALFORMED_EVERY) {
        format!("not-json-{seq}")
    } else {
        format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat(64))
    }
}

/// The end (high watermark) of one partition.
pub fn end_offset(topic: &str, partition: i32) -> i64 {
    reader(&unique("end"))
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Whether the cluster has `topic` (listed, so asking does not create it).
pub fn topic_exists(topic: &str) -> bool {
    partitions_listed(topic).is_some()
}

/// How many partitions `topic` has (0: none, it does not exist).
pub fn partition_count(topic: &str) -> i32 {
    partitions_listed(topic).unwrap_or(0)
}

fn partitions_listed(topic: &str) -> Option<i32> {
    reader(&unique("exists"))
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
}

pub fn reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// Every committed record of a topic: (partition, key, value, headers).
pub type Read = (i32, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

pub fn read_all(topic: &str, partitions: i32) -> Vec<Read> {
    let consumer = reader(&unique("verify-read"));
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        ends.insert(
            p,
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1,
        );
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let done = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        (0..partitions).all(|p| match pos.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= ends[&p],
            _ => ends[&p] == 0,
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut since_check = 0;
    loop {
        // Asking for positions is a call into librdkafka: do it when idle
        // or every few thousand records, not per record.
        if since_check == 0 && done(&consumer) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end took too long"
        );
        since_check = (since_check + 1) % 5000;
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            since_check = 0;
            continue;
        };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            m.partition(),
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }

    out
}

pub fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    if let Some(rest) = text.strip_prefix("not-json-") {
        return rest.parse().unwrap();
    }
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

pub struct Summary {
    /// Input partitions whose records were duplicated, with counts.
    pub duplicated_in: std::collections::BTreeMap<i32, u64>,
    pub records: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misrouted: u64,
    pub out_of_order: u64,
}

impl Summary {
    /// Prints the summary under `label` and fails unless nothing was lost,
    /// duplicated, misrouted or reordered.
    pub fn assert_exactly_once(&self, label: &str) {
        println!("{label}: {self}");
        assert_eq!(
            (
                self.lost,
                self.duplicated,
                self.misrouted,
                self.out_of_order
            ),
            (0, 0, 0, 0),
            "{label}: {self}"
        );
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records {}, lost {}, duplicated {}, misrouted {}, out-of-order {}",
            self.records, self.lost, self.duplicated, self.misrouted, self.out_of_order
        )?;
        if !self.duplicated_in.is_empty() {
            write!(
                f,
                " (duplicates by input partition: {:?})",
                self.duplicated_in
            )?;
        }
        Ok(())
    }
}

pub fn verify(topics: &Topics, records: u64) -> Summary {
    let input = read_all(&topics.input, topics.partitions);
    assert_eq!(
        input.len() as u64,
        records,
        "the input holds every generated record"
    );
    let partition_of: HashMap<u64, i32> = input
        .iter()
        .map(|(p, _, value, _)| (seq_of(value), *p))
        .collect();
    let mut duplicated_in: std::collections::BTreeMap<i32, u64> = Default::default();
    let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
    let mut out_of_order = 0;
    for topic in topics.outputs.iter().chain([&topics.dlq]) {
        // Per key, a topic must show the key's records in input order.
        let mut last_per_key: HashMap<Vec<u8>, u64> = HashMap::new();
        for (_, key, value, headers) in read_all(topic, topics.partitions) {
            let seq = seq_of(&value);
            if let Some(previous) = last_per_key.insert(key.clone(), seq) {
                if previous >= seq {
                    out_of_order += 1;
                }
            }
            if *topic == topics.dlq {
                let header = |k: &str| {
                    headers
                        .iter()
                        .find(|(h, _)| h == k)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                assert_eq!(header("millrace.error.step").as_deref(), Some("source"));
                assert_eq!(
                    header("millrace.source.topic").as_deref(),
                    Some(topics.input.as_str())
                );
                assert!(
                    header("millrace.source.offset").is_some()
                        && header("millrace.error").unwrap().contains("not JSON")
                );
            }
            seen.entry(seq).or_default().push(topic.clone());
        }
    }
    let (mut lost, mut duplicated, mut misrouted) = (0, 0, 0);
    for seq in 0..records {
        match seen.get(&seq).map(Vec::as_slice) {
            None | Some([]) => lost += 1,
            Some(found) => {
                if found.len() > 1 {
                    duplicated += found.len() as u64 - 1;
                    *duplicated_in.entry(partition_of[&seq]).or_default() += 1;
                }
                if found.iter().any(|t| t != topics.expected(seq)) {
                    misrouted += 1;
                }
            }
        }
    }
    Summary {
        duplicated_in,
        records,
        lost,
        duplicated,
        misrouted,
        out_of_order,
    }
}

/// Committed offsets of the app's group have reached the end of the input.
pub fn drained(group: &str, topics: &Topics) -> bool {
    topic_drained(group, &topics.input, topics.partitions)
}

/// Committed offsets of `group` have reached the end of every partition of
/// `topic` (a repartition topic, say).
pub fn topic_drained(group: &str, topic: &str, partitions: i32) -> bool {
    let consumer = reader(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return false;
    };
    (0..partitions).all(|p| {
        let end = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|w| w.1).unwrap_or(i64::MAX);
        // A partition nothing was written to has no committed offset.
        end == 0
            || matches!(committed.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
    })
}

/// Records a topic holds now (from its log start to its end), over all
/// partitions: what purging keeps bounded.
pub fn retained(topic: &str, partitions: i32) -> i64 {
    let consumer = reader(&unique("retained"));
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_or(0, |(start, end)| end - start)
        })
        .sum()
}
