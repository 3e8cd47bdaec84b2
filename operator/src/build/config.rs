//! The worker configuration ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use millrace_crds::worker_config::{KafkaClientConfig, WorkerConfig, CONFIG_DIR, CONFIG_FILE};
use sha2::{Digest, Sha256};

use super::{config_map_name, meta, STATE_MOUNT};
use crate::model::{AppModel, Workload};

pub const TLS_DIR: &str = "/etc/millrace/tls";
pub const SASL_USERNAME_ENV: &str = "MILLRACE_SASL_USERNAME";
pub const SASL_PASSWORD_ENV: &str = "MILLRACE_SASL_PASSWORD";

pub fn worker_config(model: &AppModel) -> WorkerConfig {
    let tls = model.kafka.tls.as_ref().filter(|t| t.enabled);
    let sasl = model.kafka.sasl.as_ref();
    let security_protocol = millrace_crds::kafka::security_protocol(tls.is_some(), sasl.is_some());
    let file = |present: bool, name: &str| present.then(|| format!("{TLS_DIR}/{name}"));
    WorkerConfig {
        application_id: model.application_id.clone(),
        processing_guarantee: model.guarantee,
        commit_interval_ms: model.commit_interval.as_millis() as u64,
        transaction_timeout_ms: model.transaction_timeout.as_millis() as u64,
        kafka: KafkaClientConfig {
            bootstrap_servers: model.kafka.bootstrap_servers.clone(),
            properties: model.kafka.properties.clone(),
            security_protocol: security_protocol.into(),
            sasl_mechanism: sasl.map(|s| s.mechanism.as_str().to_string()),
            sasl_username_env: sasl.map(|_| SASL_USERNAME_ENV.to_string()),
            sasl_password_env: sasl.map(|_| SASL_PASSWORD_ENV.to_string()),
            ssl_ca_location: file(tls.is_some_and(|t| t.ca.is_some()), "ca.crt"),
            ssl_certificate_location: file(
                tls.is_some_and(|t| t.client_cert.is_some()),
                "client.crt",
            ),
            ssl_key_location: file(tls.is_some_and(|t| t.client_key.is_some()), "client.key"),
        },
        pipeline: match &model.workload {
            Workload::Pipeline { spec, .. } => Some(spec.clone()),
            Workload::Custom { .. } => None,
        },
        custom: match &model.workload {
            Workload::Pipeline { .. } => None,
            Workload::Custom { io, .. } => Some(io.clone()),
        },
        admin_port: model.admin_port,
        placement_config_map: Some(millrace_crds::placement::placement_config_map(&model.name)),
        query: model.query.clone(),
        state_dir: model.state.as_ref().map(|_| STATE_MOUNT.to_string()),
        loops: 0,
    }
}

pub fn config_map(model: &AppModel, config: &WorkerConfig) -> ConfigMap {
    let json = serde_json::to_string_pretty(config).expect("worker config serialises");
    ConfigMap {
        metadata: meta(model, &config_map_name(&model.name)),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), json)])),
        ..Default::default()
    }
}

/// Changes whenever the configuration does; put on the pod template so a
/// spec change rolls the workers and nothing else does.
pub fn config_hash(config: &WorkerConfig) -> String {
    let json = serde_json::to_vec(config).expect("worker config serialises");
    let digest = Sha256::digest(json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Where the ConfigMap is mounted in a worker.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}
