//! Exactly-once over TLS and SASL against the real broker (issue 20). The
//! test bed's single node has an SSL listener (mutual TLS, 9096) and a
//! SASL_SSL one (SCRAM-SHA-512 over TLS, 9097), with a CA, certificates
//! and a SCRAM user made on the fly (`e2e/kafka/tls.sh`). A standalone
//! worker reads the `spec.kafka.tls` Secrets from `--secrets-dir` (laid out
//! as Kubernetes mounts a Secret) and its SASL credentials from the
//! environment; the input is written and the outputs read over plaintext.
//!
//! Routing over either listener is exactly once. A wrong password, a CA
//! that did not sign the broker's certificate and an expired client
//! certificate each leave the worker unable to connect with the cause in
//! its log, and no secret value in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use millrace_tests::runtime::log_path;
use millrace_tests::standalone::App;
use millrace_tests::verifier::{self, drained, generate, verify, Topics};
use millrace_tests::{kafka_tls_dir, unique, wait_until};

const PARTITIONS: i32 = 4;
const RECORDS: u64 = 10_000;
const MTLS: &str = "127.0.0.1:9096";
const SCRAM: &str = "127.0.0.1:9097";

/// A directory of Secrets as Kubernetes mounts them: for each (Secret,
/// key, file of the test bed's TLS material), `dir/Secret/key`.
fn secrets_dir(name: &str, secrets: &[(&str, &str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-secrets"));
    let _ = std::fs::remove_dir_all(&dir);
    for (secret, key, file) in secrets {
        std::fs::create_dir_all(dir.join(secret)).unwrap();
        std::fs::copy(kafka_tls_dir().join(file), dir.join(secret).join(key)).unwrap();
    }
    dir
}

fn password() -> String {
    std::fs::read_to_string(kafka_tls_dir().join("scram-password"))
        .unwrap()
        .trim()
        .to_string()
}

/// A routing verifier app whose worker connects to `bootstrap` with the
/// `kafka:` settings `security` (YAML flow-map entries after the bootstrap
/// servers) and the Secrets in `secrets`.
fn app(name: &str, port: u16, bootstrap: &str, security: &str, secrets: &Path) -> (App, Topics) {
    let prefix = unique(name);
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let plain = verifier::manifest(
        name,
        &app_id,
        &topics,
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 500ms\n",
        "",
    );
    let head = format!(
        "kafka: {{bootstrapServers: \"{}\"}}",
        millrace_tests::kafka_bootstrap()
    );
    assert!(plain.contains(&head));
    let manifest = plain.replace(
        &head,
        &format!("kafka: {{bootstrapServers: \"{bootstrap}\", {security}}}"),
    );
    let mut app = App::new(&app_id, &manifest, port);
    // The test bed's plaintext bootstrap would override the manifest's.
    app.envs.push(("KAFKA_BOOTSTRAP", bootstrap.to_string()));
    app.envs
        .push(("MILLRACE_SECRETS_DIR", secrets.display().to_string()));
    (app, topics)
}

const CA: &str = "tls: {ca: {name: kafka-ca, key: ca.crt}";
const CLIENT: &str = "clientCert: {name: kafka-client, key: tls.crt}, clientKey: {name: kafka-client, key: tls.key}}";
const SASL: &str = "sasl: {mechanism: SCRAM-SHA-512, credentials: {secretName: kafka-user}}";

fn routes_exactly_once(app: &App, topics: &Topics, label: &str) {
    let worker = app.start();
    generate(topics, RECORDS, Duration::ZERO);
    wait_until(
        "the whole input committed",
        Duration::from_secs(120),
        || drained(&app.app_id, topics).then_some(()),
    );
    worker.terminate();
    verify(topics, RECORDS).assert_exactly_once(label);
}

#[test]
fn routes_exactly_once_over_mutual_tls() {
    let secrets = secrets_dir(
        "mtls",
        &[
            ("kafka-ca", "ca.crt", "ca.crt"),
            ("kafka-client", "tls.crt", "client.crt"),
            ("kafka-client", "tls.key", "client.key"),
        ],
    );
    let (app, topics) = app("mtls", 18141, MTLS, &format!("{CA}, {CLIENT}"), &secrets);
    routes_exactly_once(&app, &topics, "mutual TLS");
}

#[test]
fn routes_exactly_once_over_scram_and_tls() {
    let secrets = secrets_dir("scram", &[("kafka-ca", "ca.crt", "ca.crt")]);
    let (mut app, topics) = app("scram", 18142, SCRAM, &format!("{CA}}}, {SASL}"), &secrets);
    app.envs.push(("MILLRACE_SASL_USERNAME", "millrace".into()));
    app.envs.push(("MILLRACE_SASL_PASSWORD", password()));
    routes_exactly_once(&app, &topics, "SASL SCRAM-SHA-512 over TLS");
}

/// Starts `app`, waits until its log says `cause`, and checks no value in
/// `secrets` appears in it.
fn refused_with(app: &App, cause: &str, secrets: &[String]) {
    let mut worker = app.start();
    let log = wait_until(
        &format!("the worker's log to name the cause ({cause})"),
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(log_path(app.port)).ok()?;
            log.contains(cause).then_some(log)
        },
    );
    worker.kill();
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret value in the log: {log}"
        );
    }
}

#[test]
fn a_wrong_password_an_unknown_ca_or_an_expired_certificate_is_named_and_no_secret_is_logged() {
    let secrets = secrets_dir(
        "refused",
        &[
            ("kafka-ca", "ca.crt", "ca.crt"),
            ("other-ca", "ca.crt", "other-ca.crt"),
            ("kafka-client", "tls.crt", "client.crt"),
            ("kafka-client", "tls.key", "client.key"),
            ("expired", "tls.crt", "expired.crt"),
            ("expired", "tls.key", "expired.key"),
        ],
    );
    let key = |file: &str| {
        let pem = std::fs::read_to_string(kafka_tls_dir().join(file)).unwrap();
        // A line of the key's body: enough to find it anywhere.
        pem.lines().nth(3).unwrap().to_string()
    };

    let wrong = "not-the-password-3f9a";
    let (mut app_, _) = app(
        "wrongpw",
        18143,
        SCRAM,
        &format!("{CA}}}, {SASL}"),
        &secrets,
    );
    app_.envs
        .push(("MILLRACE_SASL_USERNAME", "millrace".into()));
    app_.envs.push(("MILLRACE_SASL_PASSWORD", wrong.into()));
    refused_with(
        &app_,
        "refused the SASL credentials",
        &[wrong.into(), password()],
    );

    let other_ca = "tls: {ca: {name: other-ca, key: ca.crt}";
    let (app_, _) = app(
        "unknownca",
        18144,
        MTLS,
        &format!("{other_ca}, {CLIENT}"),
        &secrets,
    );
    refused_with(
        &app_,
        "not signed by the CA of spec.kafka.tls.ca",
        &[key("client.key")],
    );

    let expired =
        "clientCert: {name: expired, key: tls.crt}, clientKey: {name: expired, key: tls.key}}";
    let (app_, _) = app(
        "expired",
        18145,
        MTLS,
        &format!("{CA}, {expired}"),
        &secrets,
    );
    // The broker alone knows why it refused the certificate (its log says
    // expired); the worker names the field to check.
    refused_with(
        &app_,
        "refused the client certificate",
        &[key("expired.key")],
    );
}
