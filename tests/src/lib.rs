//! Helpers for tests that run against the local stack (`make stack-up`):
//! where the broker and API server are, unique names, polling, and the
//! processes the pod runner started for a pod.
//!
//! These tests never fall back to mocks: without the stack they fail and say
//! how to start it.

pub mod cluster;
pub mod confinement;
pub mod join_verifier;
pub mod proxy;
pub mod repartition_verifier;
pub mod runtime;
pub mod standalone;
pub mod state_verifier;
pub mod verifier;
pub mod window_verifier;
pub mod workers;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Bootstrap servers of the single-node broker.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The TLS material and SCRAM password of the single node's SSL and
/// SASL_SSL listeners (`e2e/kafka/tls.sh`).
pub fn kafka_tls_dir() -> std::path::PathBuf {
    let stack = std::env::var("MILLRACE_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"));
    stack.join("kafka/single/tls")
}

/// The kubeconfig of the local API server; panics with the fix when unset.
pub fn kubeconfig() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(path) if !path.is_empty() => path,
        _ => {
            let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack/kubeconfig");
            assert!(
                std::path::Path::new(default).exists(),
                "KUBECONFIG is not set and {default} does not exist: run `make stack-up` first"
            );
            default.into()
        }
    }
}

/// A name no earlier run used: tests share one broker and one API server.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// Runs kubectl against the local API server; an error carries its stderr.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Some`, or fails naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pids of the live processes the pod runner started for the pod `uid`.
pub fn pod_processes(uid: &str) -> Vec<u32> {
    let marker = format!("MILLRACE_PODRUNNER_POD_UID={uid}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if !zombie && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The repository root (charts, examples, fixtures are found from here).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs helm (`$HELM`, else `helm` on PATH) against the local API server.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&helm)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(repo_root())
        .args(args)
        .output()
        .with_context(|| format!("running {helm} (make stack-up builds it and prints its PATH)"))?;
    if !out.status.success() {
        bail!(
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates topics that do not exist yet; existing ones are left alone.
/// The topics of `examples/orders-router.yaml`.
pub fn example_topics() {
    ensure_topics(&[
        ("orders", 4),
        ("orders-large", 1),
        ("orders-eu", 1),
        ("orders-other", 1),
        ("orders-dlq", 1),
    ]);
}

pub fn ensure_topics(topics: &[(&str, i32)]) {
    ensure_topics_with(topics, &[]);
}

fn admin() -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .expect("admin client")
}

/// Adds partitions to `topic` until it has `total`, and waits until
/// metadata shows them.
pub fn add_partitions(topic: &str, total: i32) {
    use rdkafka::admin::{AdminOptions, NewPartitions};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results = rt
        .block_on(admin().create_partitions(
            &[NewPartitions::new(topic, total as usize)],
            &AdminOptions::new(),
        ))
        .expect("create_partitions");
    for r in results {
        r.unwrap_or_else(|(t, code)| panic!("adding partitions to {t}: {code}"));
    }
    wait_for_topics(&[(topic, total)]);
}

/// As [`ensure_topics`], each created with the topic configs `config`.
pub fn ensure_topics_with(topics: &[(&str, i32)], config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin = admin();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, n)| {
            config.iter().fold(
                // The broker's default: 1 on the single node, 3 on the cluster.
                NewTopic::new(name, *n, TopicReplication::Fixed(-1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create_topics (is the broker up?)");
    for r in results {
        if let Err((topic, code)) = r {
            assert_eq!(
                code,
                RDKafkaErrorCode::TopicAlreadyExists,
                "creating {topic}"
            );
        }
    }
    wait_for_topics(topics);
}

/// Created is not yet visible to every client: waits until metadata has
/// the topics with their partition counts.
fn wait_for_topics(topics: &[(&str, i32)]) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .expect("probe");
    for (name, partitions) in topics {
        wait_until(
            &format!("topic {name} in metadata"),
            std::time::Duration::from_secs(30),
            || {
                let md = probe
                    .fetch_metadata(Some(name), std::time::Duration::from_secs(5))
                    .ok()?;
                md.topics()
                    .iter()
                    .any(|t| {
                        t.name() == *name
                            && t.error().is_none()
                            && t.partitions().len() == *partitions as usize
                    })
                    .then_some(())
            },
        );
    }
}

/// The chart installed once per test binary as release `millrace` in
/// `millrace-system`, with the operator running as the chart's pod.
pub fn install_chart(extra: &[&str]) {
    // Tests of one binary run in parallel threads; install once per setting.
    static INSTALLED: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    let wanted: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if installed.as_ref() == Some(&wanted) {
        return;
    }
    let mut args = vec![
        "upgrade",
        "--install",
        "millrace",
        "charts/millrace",
        "-n",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    ];
    args.extend_from_slice(extra);
    helm(&args).expect("helm install of charts/millrace");
    *installed = Some(wanted);
}

pub const OPERATOR_NAMESPACE: &str = "millrace-system";

/// A namespace deleted (without waiting) when the test ends.
pub struct TestNamespace(pub String);

impl TestNamespace {
    pub fn create(prefix: &str) -> Self {
        let name = unique(prefix);
        kubectl(&["create", "namespace", &name]).unwrap();
        Self(name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // MILLRACE_KEEP_NAMESPACES=1 keeps them (and the pods' logs) to look at.
        if std::env::var_os("MILLRACE_KEEP_NAMESPACES").is_some() {
            return;
        }
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (e2e/test.sh does it before the tests).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    // MILLRACE_PROFILE=release measures the optimised build.
    let profile = std::env::var("MILLRACE_PROFILE").unwrap_or_else(|_| "debug".into());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The offset `group` has committed for one partition (`Offset::Invalid`:
/// none).
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> rdkafka::Offset {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .find_partition(topic, partition)
        .expect("the partition asked for")
        .offset()
}

/// Produces one record (idempotent producer, flushed).
pub fn produce(topic: &str, key: &str, value: &str) {
    produce_to(topic, None, key, value)
}

/// [`produce`] to one partition (`None`: the key's).
pub fn produce_to(topic: &str, partition: Option<i32>, key: &str, value: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer.send(record).map_err(|(e, _)| e).expect("send");
    producer
        .flush(std::time::Duration::from_secs(30))
        .expect("flush");
}

/// A consumer of its own group that reads only committed records and
/// reports each partition's end.
pub fn committed_reader<C: rdkafka::config::FromClientConfig>() -> C {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer")
}

/// Values of every committed record of a topic, read to its end.
pub fn committed_values(topic: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = committed_reader();
    let metadata = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let mut at_end = 0;
    while at_end < partitions {
        match consumer.poll(std::time::Duration::from_secs(5)) {
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => break,
        }
    }
    values
}
