//! `millrace-runtime` as a user meets it: exit codes and one-line errors for
//! bad configuration, missing topics and `onError: Stop`.

use std::process::Command;
use std::time::Duration;

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
    let mut child = Command::new(workspace_binary("millrace-runtime"))
        .args([
            "run",
            "--manifest",
            path.to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
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

#[test]
fn on_error_stop_commits_before_the_bad_record_and_exits_3_naming_it() {
    let (source, output) = (unique("cli-src"), unique("cli-out"));
    ensure_topics(&[(&source, 1), (&output, 1)]);
    produce(&source, "a", r#"{"amount": 5}"#);
    produce(&source, "b", r#"{"no_amount": true}"#);
    produce(&source, "c", r#"{"amount": 7}"#);
    let app = unique("cli-app");
    let out = run(&manifest(&app, &source, &output, "{policy: Stop}"), 18102);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "record {source}/0@1 failed in step 'amount-check'"
        )),
        "{stderr}"
    );
    assert_eq!(
        committed_values(&output),
        [r#"{"amount": 5}"#],
        "only the record before the bad one was committed"
    );

    // The group's committed offset stops at the bad record: a restart fails
    // on it again instead of skipping it.
    let again = run(&manifest(&app, &source, &output, "{policy: Stop}"), 18103);
    assert_eq!(again.status.code(), Some(3));
    assert_eq!(committed_values(&output).len(), 1);
}

#[test]
fn validate_prints_every_error_with_step_and_position() {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("cli-validate")));
    std::fs::write(
        &path,
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {name: v}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  pipeline:\n    source: {topics: [a]}\n    steps:\n    - {name: f, filter: 'value.x >'}\n    - {filter: 'nope == 1'}\n",
    )
    .unwrap();
    let out = Command::new(workspace_binary("millrace-runtime"))
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
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
