//! Brokers with short limits, run for these tests alone (`kafka.sh up
//! limits`: group offsets expire after a minute, transactions last at most
//! a minute).
//!
//! An idle partition's committed offset outlives `offsets.retention.minutes`:
//! workers never join their consumer group, so the broker expires each
//! offset that long after its last commit, and a partition that saw no input
//! for that long would be read again from its beginning, its outputs
//! duplicated. A `transactionTimeout` above `transaction.max.timeout.ms`
//! (every transaction refused) is the worker's configuration error and the
//! StreamApp's `Degraded` condition.

use std::process::Command;
use std::time::{Duration, Instant};

use millrace_tests::runtime::{start, start_logging, tasks, write_manifest};
use millrace_tests::workers::{apply_yaml, get};
use millrace_tests::{
    committed_offset, committed_values, ensure_topics, install_chart, produce_to, repo_root,
    unique, wait_until, TestNamespace,
};
use rdkafka::Offset;

const BOOTSTRAP: &str = "127.0.0.1:9292";
/// The broker's retention (one minute) and its 5 s check, with room.
const PAST_RETENTION: Duration = Duration::from_secs(80);

/// Starts the broker once per test binary; every helper of this binary
/// then talks to it.
fn limits_broker() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/kafka/kafka.sh"))
            .args(["up", "limits"])
            .env("KAFKA_HEAP", "384m")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "starting the limits broker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::set_var("KAFKA_BOOTSTRAP", BOOTSTRAP);
    });
}

fn manifest(app: &str, extra: &str, source: &str, output: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: limits}}\nspec:\n  kafka: {{bootstrapServers: '{BOOTSTRAP}'}}\n  applicationId: {app}\n  commitInterval: 200ms\n{extra}  pipeline:\n    source: {{topics: [{source}]}}\n    steps:\n    - route: {{default: {output}}}\n"
    );
    write_manifest(app, &yaml)
}

#[test]
fn an_idle_partitions_offset_survives_a_retention_shorter_than_its_idleness() {
    limits_broker();
    let (source, output) = (unique("retention-src"), unique("retention-out"));
    ensure_topics(&[(&source, 2), (&output, 1)]);
    produce_to(&source, Some(0), "k", r#"{"n": 0}"#);
    produce_to(&source, Some(1), "k", r#"{"n": 1}"#);
    let app = unique("retention-app");
    let manifest = manifest(&app, "", &source, &output);
    let port = 18121;
    let mut worker = start_logging(&manifest, port);
    wait_until("both records", Duration::from_secs(60), || {
        worker.assert_alive();
        (committed_values(&output).len() == 2).then_some(())
    });
    assert_eq!(committed_offset(&app, &source, 1), Offset::Offset(1));

    // Partition 0 keeps flowing; partition 1 sees nothing for longer than
    // the retention.
    let idle_since = Instant::now();
    let mut n = 2;
    while idle_since.elapsed() < PAST_RETENTION {
        worker.assert_alive();
        produce_to(&source, Some(0), "k", &format!("{{\"n\": {n}}}"));
        n += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        committed_offset(&app, &source, 1),
        Offset::Offset(1),
        "the idle partition's offset is still committed after {PAST_RETENTION:?} idle"
    );
    worker.terminate();

    // Restarted, the worker does not read the idle partition again.
    let outputs = committed_values(&output).len();
    assert_eq!(outputs, n as usize);
    let mut again = start_logging(&manifest, port);
    produce_to(&source, Some(0), "k", r#"{"n": -1}"#);
    // Both partitions committed up to their end: whatever the worker read
    // again would be output by now.
    wait_until(
        "the restarted worker caught up",
        Duration::from_secs(60),
        || {
            again.assert_alive();
            let report = tasks(port)?;
            let caught_up = report["partitions"]
                .as_array()?
                .iter()
                .filter(|p| p["lag"] == 0 && p["committedOffset"].as_i64().is_some())
                .count();
            (caught_up == 2 && committed_values(&output).len() > outputs).then_some(())
        },
    );
    assert_eq!(
        committed_values(&output).len(),
        outputs + 1,
        "nothing of the idle partition is output twice"
    );
    again.terminate();
}

#[test]
fn a_transaction_timeout_the_broker_refuses_is_a_worker_error_and_degrades_the_app() {
    limits_broker();
    let (source, output) = (unique("limits-src"), unique("limits-out"));
    ensure_topics(&[(&source, 1), (&output, 1)]);
    let app = unique("limits-app");
    let too_long = manifest(&app, "  transactionTimeout: 2m\n", &source, &output);
    let mut worker = start(&too_long, 18122);
    let status = wait_until("the worker to exit", Duration::from_secs(60), || {
        worker.try_wait().unwrap()
    });
    let stderr = std::io::read_to_string(worker.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.lines().last().unwrap().contains(
            "spec.transactionTimeout is 120000 ms, above the broker's transaction.max.timeout.ms (60000 ms)"
        ),
        "{stderr}"
    );

    install_chart(&[]);
    let ns = TestNamespace::create("limits");
    let ns = ns.0.as_str();
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: slow, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '{BOOTSTRAP}'}}\n  transactionTimeout: 2m\n  pipeline: {{source: {{topics: [{source}]}}, steps: [{{route: {{default: {output}}}}}]}}\n"
    );
    apply_yaml(ns, "slow", &yaml);
    let message = wait_until(
        "Degraded TransactionTimeoutTooLong",
        Duration::from_secs(90),
        || {
            let reason = get(
                ns,
                "streamapp/slow",
                "{.status.conditions[?(@.type==\"Degraded\")].reason}",
            );
            (reason == "TransactionTimeoutTooLong").then(|| {
                get(
                    ns,
                    "streamapp/slow",
                    "{.status.conditions[?(@.type==\"Degraded\")].message}",
                )
            })
        },
    );
    assert!(
        message.contains("spec.transactionTimeout (120s) is above the broker's transaction.max.timeout.ms (60000 ms)"),
        "{message}"
    );
    assert!(
        get(ns, "statefulsets", "{.items[*].metadata.name}").is_empty(),
        "no workers that would fail every transaction"
    );
}
