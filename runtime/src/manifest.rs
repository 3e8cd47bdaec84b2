//! `millrace-runtime run --manifest app.yaml`: the worker configuration of a
//! StreamApp manifest, for running without Kubernetes.

use millrace_crds::{durations, kafka_spec_problems, Invalid, SecretKeyRef, StreamApp};

use millrace_crds::kafka::security_protocol;
use millrace_crds::worker_config::{CustomIo, KafkaClientConfig, WorkerConfig};

/// Environment variables that carry SASL credentials in standalone mode.
pub const SASL_USERNAME_ENV: &str = "MILLRACE_SASL_USERNAME";
pub const SASL_PASSWORD_ENV: &str = "MILLRACE_SASL_PASSWORD";

/// Reads the first StreamApp of a YAML file.
pub fn load(path: &std::path::Path) -> anyhow::Result<StreamApp> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text)
        .map_err(|e| anyhow::anyhow!("{}: not YAML: {e}", path.display()))?;
    let doc = docs
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("StreamApp"))
        .ok_or_else(|| anyhow::anyhow!("{}: no document of kind StreamApp", path.display()))?;
    serde_json::from_value(doc)
        .map_err(|e| anyhow::anyhow!("{}: not a valid StreamApp: {e}", path.display()))
}

/// The configuration the operator would render, from the manifest alone.
///
/// TLS material comes from `secrets_dir`, laid out as Kubernetes mounts a
/// Secret: the key `k` of the Secret `s` is the file `<secrets_dir>/s/k`.
pub fn worker_config(
    app: &StreamApp,
    bootstrap: Option<&str>,
    admin_port: u16,
    secrets_dir: Option<&std::path::Path>,
) -> anyhow::Result<WorkerConfig> {
    let spec = &app.spec;
    let custom = match (&spec.pipeline, &spec.image, CustomIo::from_spec(spec)) {
        (Some(_), None, None) if spec.outputs.is_none() && spec.on_error.is_none() => None,
        (None, Some(_), Some(custom)) => {
            let problems = custom.problems();
            if !problems.is_empty() {
                return Err(one_line(problems));
            }
            Some(custom)
        }
        (None, Some(_), None) => anyhow::bail!(
            "spec.source: an app with spec.image must name the topics it reads"
        ),
        (Some(_), None, _) => anyhow::bail!(
            "spec.source, spec.outputs and spec.onError apply only with spec.image (a pipeline declares them under spec.pipeline)"
        ),
        _ => anyhow::bail!(
            "spec: set exactly one of spec.pipeline (zero-code) or spec.image with spec.source (custom runtime)"
        ),
    };
    let tls = spec.kafka.tls.as_ref().filter(|t| t.enabled);
    let tls_file = |field: &str, r: &Option<SecretKeyRef>| -> anyhow::Result<Option<String>> {
        let Some(r) = r else { return Ok(None) };
        let Some(dir) = secrets_dir else {
            anyhow::bail!("spec.kafka.tls.{field}: Secret {} is read from a directory in standalone mode: pass --secrets-dir DIR holding {}/{}", r.name, r.name, r.key);
        };
        let path = dir.join(&r.name).join(&r.key);
        if !path.is_file() {
            anyhow::bail!(
                "spec.kafka.tls.{field}: {} does not exist (Secret {}, key {})",
                path.display(),
                r.name,
                r.key
            );
        }
        Ok(Some(path.display().to_string()))
    };
    let (ca, client_cert, client_key) = match tls {
        Some(t) => (
            tls_file("ca", &t.ca)?,
            tls_file("clientCert", &t.client_cert)?,
            tls_file("clientKey", &t.client_key)?,
        ),
        None => (None, None, None),
    };
    let timing = durations::timing(spec).map_err(one_line)?;
    let owned = kafka_spec_problems(&spec.kafka);
    if !owned.is_empty() {
        return Err(one_line(owned));
    }
    let sasl = spec.kafka.sasl.as_ref();
    Ok(WorkerConfig {
        application_id: millrace_crds::application_id(app),
        processing_guarantee: spec.processing_guarantee,
        commit_interval_ms: timing.commit_interval.as_millis() as u64,
        transaction_timeout_ms: timing.transaction_timeout.as_millis() as u64,
        kafka: KafkaClientConfig {
            bootstrap_servers: bootstrap
                .map(str::to_string)
                .unwrap_or_else(|| spec.kafka.bootstrap_servers.clone()),
            properties: spec.kafka.properties.clone(),
            security_protocol: security_protocol(tls.is_some(), sasl.is_some()).into(),
            sasl_mechanism: sasl.map(|s| s.mechanism.as_str().to_string()),
            sasl_username_env: sasl.map(|_| SASL_USERNAME_ENV.to_string()),
            sasl_password_env: sasl.map(|_| SASL_PASSWORD_ENV.to_string()),
            ssl_ca_location: ca,
            ssl_certificate_location: client_cert,
            ssl_key_location: client_key,
        },
        pipeline: spec.pipeline.clone(),
        custom,
        admin_port,
        placement_config_map: None,
        query: millrace_crds::worker_config::QueryConfig::of(spec.query.as_ref()),
        state_dir: None,
        loops: 0,
    })
}

fn one_line(problems: Vec<Invalid>) -> anyhow::Error {
    let lines: Vec<String> = problems.iter().map(Invalid::to_string).collect();
    anyhow::anyhow!("{}", lines.join("; "))
}
