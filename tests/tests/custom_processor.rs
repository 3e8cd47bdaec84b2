//! A custom image built on the runtime library (`examples/custom-processor`)
//! run by the operator through `spec.image`, under the exactly-once
//! verifier: worker pods SIGKILLed while input arrives, then every output
//! record checked (none lost, none duplicated, each where its shard field
//! sends it, malformed ones dead-lettered), and every output carries the
//! processor's enrichment, computed from its input record.
//!
//! Transactions last 2 s, as Kafka's EOS system test makes them long, so
//! each kill lands inside an open one: a worker that were not exactly-once
//! (run as at-least-once, say) would replay into duplicates.
//!
//! Size: `MILLRACE_CUSTOM_RECORDS` (default 20,000), `MILLRACE_CUSTOM_KILLS`
//! (default 3).

use std::time::Duration;

use millrace_tests::verifier::{
    drained, env_or, generate, input_value, manifest_head, read_all, seq_of, verify, Topics,
};
use millrace_tests::workers::{apply_yaml, pod_pids, signal, wait_settled, worker_pods};
use millrace_tests::{install_chart, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 8;
const REPLICAS: i32 = 2;
/// Mapped to the example's binary by the pod runner (e2e/images.conf).
const IMAGE: &str = "ghcr.io/millrace-dev/millrace-example-enricher:0.1.0";

fn manifest(name: &str, app_id: &str, topics: &Topics) -> String {
    format!(
        r#"{head}  processingGuarantee: ExactlyOnce
  commitInterval: 2s
  transactionTimeout: 30s
  replicas: {REPLICAS}
  image: {IMAGE}
  source: {{topics: [{input}]}}
  outputs: [{outputs}]
  onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}
"#,
        head = manifest_head(name, app_id),
        input = topics.input,
        outputs = topics.outputs.join(", "),
        dlq = topics.dlq,
    )
}

/// FNV-1a, 64 bits: what the example stamps on each record.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn a_custom_image_processes_exactly_once_across_sigkills() {
    install_chart(&[]);
    let records = env_or("MILLRACE_CUSTOM_RECORDS", 20_000);
    let kills = env_or("MILLRACE_CUSTOM_KILLS", 3);
    let ns = TestNamespace::create("custom");
    let ns = ns.0.as_str();
    let prefix = unique("custom");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let app = "enricher";
    apply_yaml(ns, app, &manifest(app, &app_id, &topics));
    wait_settled(ns, app, REPLICAS, PARTITIONS);

    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, Duration::from_secs(10 + 5 * kills)))
    };
    for kill in 0..kills {
        std::thread::sleep(Duration::from_secs(4));
        let pods = worker_pods(ns, app);
        let pod = &pods[kill as usize % pods.len()];
        let pids = pod_pids(ns, pod);
        assert!(!pids.is_empty(), "{pod} runs");
        signal(&pids, "KILL");
        eprintln!("kill {kill}: SIGKILL {pod} {pids:?}");
        // Killed mid-transaction; the pod runner restarts it and it takes
        // its tasks back from their committed offsets.
        wait_settled(ns, app, REPLICAS, PARTITIONS);
    }
    generator.join().unwrap();
    wait_until(
        "the custom processor to commit the whole input",
        Duration::from_secs(300),
        || drained(&app_id, &topics).then_some(()),
    );
    let summary = verify(&topics, records);
    let mut enriched = 0;
    for topic in &topics.outputs {
        for (_, _, value, _) in read_all(topic, PARTITIONS) {
            let seq = seq_of(&value);
            let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
            let expected = format!("{:016x}", fnv1a(input_value(seq).as_bytes()));
            assert_eq!(json["fingerprint"], expected.as_str(), "record {seq}");
            enriched += 1;
        }
    }
    println!("custom processor: {summary}; {enriched} outputs enriched, {kills} SIGKILLs");
    summary.assert_exactly_once("custom processor verifier");
}
