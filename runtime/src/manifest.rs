//! `millrace-runtime run --manifest app.yaml`: the worker configuration of a
//! StreamApp manifest, for running without Kubernetes.

use millrace_crds::{durations, owned_property_problems, Invalid, StreamApp};

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
pub fn worker_config(
    app: &StreamApp,
    bootstrap: Option<&str>,
    admin_port: u16,
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
    if spec.kafka.tls.as_ref().is_some_and(|t| t.enabled) {
        anyhow::bail!("spec.kafka.tls: TLS material comes from Kubernetes Secrets, which standalone mode cannot read; run it under the operator");
    }
    let timing = durations::timing(spec).map_err(one_line)?;
    let owned = owned_property_problems(&spec.kafka);
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
