//! `millrace-runtime run --manifest app.yaml`: the worker configuration of a
//! StreamApp manifest, for running without Kubernetes.

use millrace_crds::{parse_duration, ProcessingGuarantee, StreamApp};

use crate::config::{KafkaClientConfig, WorkerConfig};

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
pub fn worker_config(
    app: &StreamApp,
    bootstrap: Option<&str>,
    admin_port: u16,
) -> anyhow::Result<WorkerConfig> {
    let spec = &app.spec;
    let Some(pipeline) = spec.pipeline.clone() else {
        anyhow::bail!(
            "spec.pipeline: `run` executes pipelines; an app with spec.image runs its own binary"
        );
    };
    if spec.kafka.tls.as_ref().is_some_and(|t| t.enabled) {
        anyhow::bail!("spec.kafka.tls: TLS material comes from Kubernetes Secrets, which standalone mode cannot read; run it under the operator");
    }
    let eos = spec.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let duration = |field: &str, text: Option<&str>, default: &str| {
        let text = text.unwrap_or(default);
        parse_duration(text).ok_or_else(|| {
            anyhow::anyhow!("{field}: '{text}' is not a duration such as 100ms, 5s or 1m")
        })
    };
    let commit = duration(
        "spec.commitInterval",
        spec.commit_interval.as_deref(),
        if eos { "100ms" } else { "5s" },
    )?;
    let timeout = duration(
        "spec.transactionTimeout",
        spec.transaction_timeout.as_deref(),
        "60s",
    )?;
    if commit >= timeout {
        anyhow::bail!("spec.commitInterval must be shorter than spec.transactionTimeout");
    }
    for key in spec.kafka.properties.keys() {
        if millrace_crds::OWNED_KAFKA_PROPERTIES.contains(&key.as_str()) {
            anyhow::bail!(
                "spec.kafka.properties['{key}'] is set by Millrace and cannot be overridden"
            );
        }
    }
    let sasl = spec.kafka.sasl.as_ref();
    Ok(WorkerConfig {
        application_id: millrace_crds::application_id(app),
        processing_guarantee: spec.processing_guarantee,
        commit_interval_ms: commit.as_millis() as u64,
        transaction_timeout_ms: timeout.as_millis() as u64,
        kafka: KafkaClientConfig {
            bootstrap_servers: bootstrap
                .map(str::to_string)
                .unwrap_or_else(|| spec.kafka.bootstrap_servers.clone()),
            properties: spec.kafka.properties.clone(),
            security_protocol: if sasl.is_some() {
                "SASL_PLAINTEXT"
            } else {
                "PLAINTEXT"
            }
            .into(),
            sasl_mechanism: sasl.map(|s| s.mechanism.as_str().to_string()),
            sasl_username_env: sasl.map(|_| SASL_USERNAME_ENV.to_string()),
            sasl_password_env: sasl.map(|_| SASL_PASSWORD_ENV.to_string()),
            ..Default::default()
        },
        pipeline: Some(pipeline),
        admin_port,
        placement_config_map: None,
        state_dir: None,
        loops: 0,
    })
}
