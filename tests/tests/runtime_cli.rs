//! `millrace-runtime` as a user meets it: exit codes and one-line errors for
//! bad configuration and missing topics (failing records:
//! `record_failures.rs`).

use std::process::Command;
use std::time::Duration;

use millrace_tests::runtime::{committed_records, header, start, start_logging};
use millrace_tests::{
    committed_values, ensure_topics, kafka_bootstrap, produce, unique, workspace_binary,
};

fn manifest(app: &str, source: &str, output: &str, on_error: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: cli}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  applicationId: {app}\n  commitInterval: 200ms\n  pipeline:\n    source: {{topics: [{source}]}}\n    steps:\n    - {{name: amount-check, filter: 'value.amount > 0'}}\n    - route: {{default: {output}}}\n    onError: {on_error}\n",
        kafka_bootstrap()
    );
    let path = std::env::temp_dir().join(format!("{app}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run(path: &std::path::Path, port: u16) -> std::process::Output {
    let mut child = start(path, port);
    // Processes stop by themselves in these cases; a hang is a failure.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("millrace-runtime did not stop by itself");
}

#[test]
fn a_missing_output_topic_is_a_one_line_configuration_error() {
    let source = unique("cli-src");
    ensure_topics(&[(&source, 1)]);
    let missing = unique("cli-missing");
    let out = run(
        &manifest(&unique("cli-app"), &source, &missing, "{policy: Stop}"),
        18101,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap();
    assert!(
        line.contains(&format!("topic '{missing}' does not exist")),
        "{stderr}"
    );
}

/// `millrace-runtime validate` of a manifest reading topic `a` with these
/// pipeline steps (YAML list items, indented four spaces).
fn validate_steps(steps: &str) -> std::process::Output {
    validate_spec("", steps)
}

/// As [`validate_steps`], with more `spec:` fields (`spec`, each line
/// indented two spaces).
fn validate_spec(spec: &str, steps: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("cli-validate")));
    std::fs::write(
        &path,
        format!("apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: v}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n{spec}  pipeline:\n    source: {{topics: [a]}}\n    steps:\n{steps}"),
    )
    .unwrap();
    Command::new(workspace_binary("millrace-runtime"))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn validate_prints_every_error_with_step_and_position() {
    let out = validate_steps("    - {name: f, filter: 'value.x >'}\n    - {filter: 'nope == 1'}\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.pipeline.steps[0].filter (step 'f') at 1:"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown variable 'nope'"), "{stderr}");
    assert!(stderr.contains("has no route step"), "{stderr}");
    let ok = Command::new(workspace_binary("millrace-runtime"))
        .args([
            "validate",
            millrace_tests::repo_root()
                .join("examples/orders-router.yaml")
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn validate_accepts_stateful_steps_under_exactly_once_only() {
    let steps =
        "    - {name: once, dedup: {id: value.id, within: 1m}}\n    - {route: {default: b}}\n";
    let out = validate_steps(steps);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = validate_spec("  processingGuarantee: AtLeastOnce\n", steps);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.processingGuarantee: the stateful steps [\"once\"] need"),
        "{stderr}"
    );
}

#[test]
fn an_output_the_producer_refuses_is_dead_lettered_and_the_partition_keeps_flowing() {
    let (source, output, dlq) = (unique("cli-src"), unique("cli-out"), unique("cli-dlq"));
    ensure_topics(&[(&source, 1), (&output, 1), (&dlq, 1)]);
    // The map triples `pad`: record 10's output passes the producer's 3,000
    // bytes; record 15 is too large even as it came in, so its dead-letter
    // copy goes without its value.
    for n in 0..20 {
        let pad = match n {
            10 => 1200,
            15 => 3200,
            _ => 10,
        };
        let value = serde_json::json!({ "n": n, "pad": "x".repeat(pad) }).to_string();
        produce(&source, &n.to_string(), &value);
    }
    let app = unique("cli-app");
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: cli}}\nspec:\n  kafka:\n    bootstrapServers: '{}'\n    properties: {{message.max.bytes: '3000'}}\n  applicationId: {app}\n  commitInterval: 200ms\n  pipeline:\n    source: {{topics: [{source}]}}\n    steps:\n    - map: {{value: \"{{'n': value.n, 'pad': value.pad + value.pad + value.pad}}\"}}\n    - route: {{default: {output}}}\n    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}\n",
        kafka_bootstrap()
    );
    let path = std::env::temp_dir().join(format!("{app}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let mut child = start_logging(&path, 18104);
    let flowed = millrace_tests::wait_until(
        "18 outputs and 2 dead letters",
        Duration::from_secs(60),
        || {
            child.assert_alive();
            let (outputs, dead) = (committed_values(&output), committed_records(&dlq));
            (outputs.len() >= 18 && dead.len() >= 2).then_some((outputs, dead))
        },
    );
    child.terminate();

    let (outputs, dead) = flowed;
    let numbers: Vec<i64> = outputs
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let expected: Vec<i64> = (0..20).filter(|n| ![10, 15].contains(n)).collect();
    assert_eq!(numbers, expected, "every other record once, in order");
    assert_eq!(
        committed_values(&output).len(),
        18,
        "and no more afterwards"
    );
    assert_eq!(dead.len(), 2);
    assert_eq!(
        header(&dead[0].1, "millrace.source.offset").as_deref(),
        Some("10")
    );
    assert_eq!(
        header(&dead[0].1, "millrace.error.step").as_deref(),
        Some("produce")
    );
    assert!(
        header(&dead[0].1, "millrace.error")
            .unwrap()
            .contains("over the producer's message.max.bytes (3000)"),
        "{:?}",
        dead[0].1
    );
    assert!(
        dead[0].0.as_ref().is_some_and(|v| v.contains("\"n\":10")),
        "the input as it came"
    );
    assert_eq!(
        header(&dead[1].1, "millrace.source.offset").as_deref(),
        Some("15")
    );
    assert_eq!(
        dead[1].0, None,
        "too large even as it came: the value is dropped"
    );
    assert!(header(&dead[1].1, "millrace.error.value-dropped").is_some());
}
