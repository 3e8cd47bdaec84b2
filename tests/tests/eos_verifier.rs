//! The exactly-once verifier, after Kafka's own EOS system test: keyed
//! records with known content go to an 8-partition input; the runtime routes
//! them to three topics and a dead-letter topic while it is SIGKILLed and
//! restarted; then every output partition is read under read_committed and
//! checked record by record against what the input dictates.
//!
//! Sizes: `MILLRACE_VERIFY_RECORDS` (default 50,000) and
//! `MILLRACE_VERIFY_KILLS` (default 3). The full run of the issue is
//! `MILLRACE_VERIFY_RECORDS=1000000 MILLRACE_VERIFY_KILLS=10`.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use millrace_tests::{ensure_topics, kafka_bootstrap, unique, wait_until, workspace_binary};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;
const MALFORMED_EVERY: u64 = 97;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Topics {
    input: String,
    outputs: [String; 3],
    dlq: String,
}

impl Topics {
    fn new(prefix: &str) -> Self {
        let t = |s: &str| format!("{prefix}-{s}");
        Self {
            input: t("input"),
            outputs: [t("out-a"), t("out-b"), t("out-c")],
            dlq: t("dlq"),
        }
    }
    fn all(&self) -> Vec<&String> {
        let mut v = vec![&self.input, &self.dlq];
        v.extend(self.outputs.iter());
        v
    }
    /// What the routing rules dictate for record `seq` (None: dead letter).
    fn expected(&self, seq: u64) -> &str {
        if seq.is_multiple_of(MALFORMED_EVERY) {
            return &self.dlq;
        }
        &self.outputs[(seq % 3) as usize]
    }
}

fn manifest(app_id: &str, topics: &Topics, guarantee: &str, commit_interval: &str) -> String {
    format!(
        r#"apiVersion: millrace.dev/v1alpha1
kind: StreamApp
metadata: {{name: verifier}}
spec:
  kafka: {{bootstrapServers: "{bootstrap}"}}
  applicationId: {app_id}
  processingGuarantee: {guarantee}
  commitInterval: {commit_interval}
  transactionTimeout: 30s
  pipeline:
    source: {{topics: [{input}]}}
    steps:
    - route:
        rules:
        - {{when: "value.seq % 3 == 0", to: {a}}}
        - {{when: "value.seq % 3 == 1", to: {b}}}
        default: {c}
    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}
"#,
        bootstrap = kafka_bootstrap(),
        input = topics.input,
        a = topics.outputs[0],
        b = topics.outputs[1],
        c = topics.outputs[2],
        dlq = topics.dlq,
    )
}

/// Writes `records` records over about `over`, so the worker is busy (and
/// killed) while input keeps arriving, as in Kafka's EOS system test.
fn generate(topics: &Topics, records: u64, over: Duration) {
    let started = Instant::now();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for seq in 0..records {
        if seq.is_multiple_of(1000) {
            let due = over.mul_f64(seq as f64 / records as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        let key = format!("k{}", seq % 997);
        let value = if seq.is_multiple_of(MALFORMED_EVERY) {
            format!("not-json-{seq}")
        } else {
            format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat(64))
        };
        let mut record = BaseRecord::to(&topics.input).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// Every committed record of a topic: (partition, key, value, headers).
type Read = (i32, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn read_all(topic: &str) -> Vec<Read> {
    let consumer = reader(&unique("verify-read"));
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..PARTITIONS {
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
        (0..PARTITIONS).all(|p| match pos.find_partition(topic, p).map(|e| e.offset()) {
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

fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    if let Some(rest) = text.strip_prefix("not-json-") {
        return rest.parse().unwrap();
    }
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

struct Summary {
    records: u64,
    lost: u64,
    duplicated: u64,
    misrouted: u64,
    out_of_order: u64,
}

fn verify(topics: &Topics, records: u64) -> Summary {
    let input = read_all(&topics.input);
    assert_eq!(
        input.len() as u64,
        records,
        "the input holds every generated record"
    );
    let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
    let mut out_of_order = 0;
    for topic in topics.outputs.iter().chain([&topics.dlq]) {
        // Per key, a topic must show the key's records in input order.
        let mut last_per_key: HashMap<Vec<u8>, u64> = HashMap::new();
        for (_, key, value, headers) in read_all(topic) {
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
                }
                if found.iter().any(|t| t != topics.expected(seq)) {
                    misrouted += 1;
                }
            }
        }
    }
    Summary {
        records,
        lost,
        duplicated,
        misrouted,
        out_of_order,
    }
}

fn start(manifest: &std::path::Path, port: u16) -> Child {
    Command::new(workspace_binary("millrace-runtime"))
        .args([
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

/// Committed offsets of the app's group have reached the end of the input.
fn drained(group: &str, input: &str) -> bool {
    let consumer = reader(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(input, p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return false;
    };
    (0..PARTITIONS).all(|p| {
        let end = consumer.fetch_watermarks(input, p, Duration::from_secs(10)).map(|w| w.1).unwrap_or(i64::MAX);
        matches!(committed.find_partition(input, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
    })
}

/// Fresh topics and a manifest for one run: (topics, application id, manifest path).
fn prepare(
    prefix: &str,
    guarantee: &str,
    commit_interval: &str,
) -> (Topics, String, std::path::PathBuf) {
    let topics = Topics::new(prefix);
    let specs: Vec<(&str, i32)> = topics
        .all()
        .into_iter()
        .map(|t| (t.as_str(), PARTITIONS))
        .collect();
    ensure_topics(&specs);
    let app_id = format!("{prefix}-app");
    let path = std::env::temp_dir().join(format!("{prefix}.yaml"));
    std::fs::write(
        &path,
        manifest(&app_id, &topics, guarantee, commit_interval),
    )
    .unwrap();
    (topics, app_id, path)
}

fn run_verifier(guarantee: &str, commit_interval: &str, port: u16) -> Summary {
    let records = env_or("MILLRACE_VERIFY_RECORDS", 50_000);
    let kills = env_or("MILLRACE_VERIFY_KILLS", 3);
    let prefix = unique("eos");
    let (topics, app_id, path) = prepare(&prefix, guarantee, commit_interval);

    let mut child = start(&path, port);
    let generating = Duration::from_millis(1700 * kills + 1000);
    let generator = {
        let topics = Topics::new(&prefix);
        std::thread::spawn(move || generate(&topics, records, generating))
    };
    // Kill at pseudo-random moments while input flows: some land inside
    // open transactions, some between them.
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(700 + (seed >> 33) % 1600);
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("{guarantee}: kill {} after {delay:?}", kill + 1);
        child = start(&path, port);
    }
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(600),
        || drained(&app_id, &topics.input).then_some(()),
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the worker cleanly: {status}"
    );

    let s = verify(&topics, records);
    println!(
        "{guarantee}: records {}, lost {}, duplicated {}, misrouted {}, out-of-order {} ({kills} SIGKILLs)",
        s.records, s.lost, s.duplicated, s.misrouted, s.out_of_order
    );
    s
}

#[test]
fn exactly_once_survives_sigkills_with_no_loss_and_no_duplicates() {
    let s = run_verifier("ExactlyOnce", "1s", 18091);
    assert_eq!(
        (s.lost, s.duplicated, s.misrouted, s.out_of_order),
        (0, 0, 0, 0)
    );
}

#[test]
fn at_least_once_loses_nothing_across_sigkills() {
    let s = run_verifier("AtLeastOnce", "1s", 18092);
    assert_eq!(
        (s.lost, s.misrouted),
        (0, 0),
        "duplicates are allowed under AtLeastOnce, loss is not"
    );
}

/// Throughput figures (not a timed test): pre-fill the input, then time one
/// worker draining it. Run with
/// `MILLRACE_PROFILE=release cargo test --release -p millrace-tests --test eos_verifier throughput -- --ignored --nocapture`
/// after `cargo build --release -p millrace-runtime`.
#[test]
#[ignore]
fn throughput() {
    let records = env_or("MILLRACE_VERIFY_RECORDS", 500_000);
    for (i, guarantee) in ["AtLeastOnce", "ExactlyOnce", "AtLeastOnce", "ExactlyOnce"]
        .into_iter()
        .enumerate()
    {
        let prefix = unique("tput");
        let (topics, app_id, path) = prepare(&prefix, guarantee, "100ms");
        generate(&topics, records, Duration::ZERO);
        let started = Instant::now();
        let mut child = start(&path, 18093 + i as u16);
        wait_until("drained", Duration::from_secs(600), || {
            drained(&app_id, &topics.input).then_some(())
        });
        let elapsed = started.elapsed();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        println!(
            "{guarantee}: {records} records in {elapsed:.2?} = {:.0} records/s",
            records as f64 / elapsed.as_secs_f64()
        );
    }
}
