//! TLS and SASL through the operator and worker pods (issue 20): a
//! StreamApp whose `spec.kafka` names a CA Secret and SCRAM-SHA-512
//! credentials in a Secret, against the single node's SASL_SSL listener
//! (`e2e/kafka/tls.sh`), routes exactly once; the operator's own clients
//! (topic checks, lag) use the same Secrets. An app with a wrong password
//! is Degraded with the cause named. Neither password appears in any
//! status, event, ConfigMap, worker log or the operator's log, and the
//! workers' service account may read no Secret.

use std::time::Duration;

use millrace_tests::verifier::{self, drained, generate, verify, Topics};
use millrace_tests::workers::{apply_yaml, get, pod_log, wait_settled};
use millrace_tests::{
    install_chart, kafka_bootstrap, kafka_tls_dir, kubectl, unique, wait_until, TestNamespace,
};

const PARTITIONS: i32 = 4;
const RECORDS: u64 = 5_000;
const SASL_SSL: &str = "127.0.0.1:9097";

fn secret(ns: &str, name: &str, from: &[String]) {
    let mut args = vec!["-n", ns, "create", "secret", "generic", name];
    args.extend(from.iter().map(String::as_str));
    kubectl(&args).unwrap();
}

/// The routing verifier's StreamApp `name`, connecting over SCRAM and TLS
/// with the credentials of Secret `user`.
fn manifest(name: &str, app_id: &str, topics: &Topics, user: &str) -> String {
    let plain = verifier::manifest(
        name,
        app_id,
        topics,
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 500ms\n  replicas: 1\n",
        "",
    );
    let head = format!("kafka: {{bootstrapServers: \"{}\"}}", kafka_bootstrap());
    assert!(plain.contains(&head));
    plain.replace(
        &head,
        &format!(
            "kafka: {{bootstrapServers: \"{SASL_SSL}\", tls: {{ca: {{name: kafka-ca, key: ca.crt}}}}, \
             sasl: {{mechanism: SCRAM-SHA-512, credentials: {{secretName: {user}}}}}}}"
        ),
    )
}

fn degraded_message(ns: &str, app: &str) -> String {
    get(
        ns,
        &format!("streamapp/{app}"),
        "{.status.conditions[?(@.type==\"Degraded\")].status} {.status.conditions[?(@.type==\"Degraded\")].message}",
    )
}

#[test]
fn scram_over_tls_routes_exactly_once_and_a_wrong_password_is_named_but_never_shown() {
    install_chart(&[]);
    let ns = TestNamespace::create("security");
    let ns = ns.0.as_str();
    let tls = kafka_tls_dir();
    let password = std::fs::read_to_string(tls.join("scram-password"))
        .unwrap()
        .trim()
        .to_string();
    let wrong = format!("wrong-{}", &password[..8]);
    secret(
        ns,
        "kafka-ca",
        &[format!(
            "--from-file=ca.crt={}",
            tls.join("ca.crt").display()
        )],
    );
    for (name, pw) in [("kafka-user", &password), ("kafka-bad-user", &wrong)] {
        secret(
            ns,
            name,
            &[
                "--from-literal=username=millrace".into(),
                format!("--from-literal=password={pw}"),
            ],
        );
    }

    let prefix = unique("secure");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    apply_yaml(
        ns,
        "secure",
        &manifest("secure", &app_id, &topics, "kafka-user"),
    );
    wait_settled(ns, "secure", 1, PARTITIONS);
    generate(&topics, RECORDS, Duration::ZERO);
    wait_until(
        "the whole input committed",
        Duration::from_secs(180),
        || drained(&app_id, &topics).then_some(()),
    );
    verify(&topics, RECORDS).assert_exactly_once("SCRAM over TLS on the test bed");

    // The workers' identity may read their placement and no Secret, not
    // even the ones they are given (the kubelet reads those for the pod).
    let worker = format!("system:serviceaccount:{ns}:secure-worker");
    let can_get = |what: &str| {
        kubectl(&["-n", ns, "auth", "can-i", "get", what, "--as", &worker])
            .is_ok_and(|answer| answer.trim() == "yes")
    };
    assert!(
        can_get("configmap/secure-placement"),
        "the worker reads its placement"
    );
    for denied in [
        "secret/kafka-user",
        "secret/kafka-ca",
        "configmap/secure-config",
    ] {
        assert!(!can_get(denied), "the worker may get {denied}");
    }

    let refused = Topics::new(&unique("refused"), PARTITIONS);
    refused.create();
    apply_yaml(
        ns,
        "refused",
        &manifest(
            "refused",
            &format!("{prefix}-refused"),
            &refused,
            "kafka-bad-user",
        ),
    );
    let message = wait_until(
        "the app with a wrong password Degraded",
        Duration::from_secs(120),
        || {
            let m = degraded_message(ns, "refused");
            m.starts_with("True ").then_some(m)
        },
    );
    assert!(
        message.contains("refused the SASL credentials")
            && message.contains("spec.kafka.sasl.credentials"),
        "the cause is named: {message}"
    );
    println!("Degraded: {message}");

    // Nowhere a password could leak to: the API's objects and every log.
    let mut places: Vec<(String, String)> = Vec::new();
    for kind in ["streamapps", "configmaps", "events", "statefulsets", "pods"] {
        places.push((
            kind.into(),
            kubectl(&["-n", ns, "get", kind, "-o", "yaml"]).unwrap(),
        ));
    }
    let pods = get(ns, "pods", "{.items[*].metadata.name}");
    for pod in pods.split_whitespace() {
        places.push((format!("log of {pod}"), pod_log(ns, pod)));
    }
    let operator = kubectl(&[
        "-n",
        "millrace-system",
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .unwrap();
    for pod in operator.split_whitespace() {
        places.push((format!("log of {pod}"), pod_log("millrace-system", pod)));
    }
    assert!(
        places
            .iter()
            .any(|(w, l)| w.starts_with("log of secure-") && !l.is_empty()),
        "a worker's log was read"
    );
    for (what, text) in &places {
        for secret in [&password, &wrong] {
            assert!(!text.contains(secret.as_str()), "a password in the {what}");
        }
    }
}
