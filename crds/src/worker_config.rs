//! The worker configuration the operator renders into a ConfigMap and the
//! runtime reads at start (`MILLRACE_CONFIG`, default
//! `/etc/millrace/config/config.json`). One type for both sides, so a field the
//! operator writes is a field the runtime reads.

use std::collections::BTreeMap;

use crate::{OnError, PipelineSpec, ProcessingGuarantee, SourceSpec, TopicName};
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config.json";
/// A directory of its own, not `/etc/millrace`: the TLS Secrets mount
/// beside it (`/etc/millrace/tls`), and a mount nested in a read-only
/// ConfigMap volume cannot be made (its mount point cannot be created in
/// the read-only directory; the pod runner failed to start such pods).
pub const CONFIG_DIR: &str = "/etc/millrace/config";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfig {
    pub application_id: String,
    pub processing_guarantee: ProcessingGuarantee,
    pub commit_interval_ms: u64,
    pub transaction_timeout_ms: u64,
    pub kafka: KafkaClientConfig,
    /// The pipeline to run; `None` for custom images, which bring their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,
    /// Custom images: what the processor reads and writes (a pipeline
    /// carries its own in `pipeline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomIo>,
    /// Port of the worker's admin HTTP endpoint (health, metrics, tasks).
    pub admin_port: u16,
    /// The ConfigMap holding the operator's task placement (pods only; a
    /// worker without one owns every task when it is pod ordinal 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_config_map: Option<String>,
    /// The query API (stateful apps): its port and limits. `None`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryConfig>,
    /// Directory of the worker's local state volume, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// The worker's processing loops, which share its prefetch budget (set
    /// by the worker, not configured).
    #[serde(skip)]
    pub loops: usize,
}

/// The query API's settings (`spec.query`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueryConfig {
    pub port: u16,
    pub scan: bool,
    pub max_concurrent: u32,
}

impl QueryConfig {
    /// `spec.query` as a worker runs it: `None` when turned off.
    pub fn of(spec: Option<&crate::QuerySpec>) -> Option<Self> {
        let spec = spec.cloned().unwrap_or_default();
        spec.enabled.then(|| Self {
            port: u16::try_from(spec.port).unwrap_or(crate::QuerySpec::DEFAULT_PORT as u16),
            scan: spec.scan,
            max_concurrent: spec.max_concurrent.max(1) as u32,
        })
    }
}

/// Client settings; secrets are never here, only where to find them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaClientConfig {
    pub bootstrap_servers: String,
    /// librdkafka properties passed through (already checked against the
    /// properties Millrace owns).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// Environment variables holding the SASL username and password
    /// (filled from the Secret by the pod spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_env: Option<String>,
    /// Files mounted from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_ca_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_certificate_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_key_location: Option<String>,
}

/// A custom image's topics and error policy (`spec.source`, `spec.outputs`,
/// `spec.onError`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustomIo {
    pub source: SourceSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<TopicName>,
    #[serde(default)]
    pub on_error: OnError,
}

impl CustomIo {
    /// The custom image's part of a spec; `None` without `spec.source`.
    pub fn from_spec(spec: &crate::StreamAppSpec) -> Option<Self> {
        Some(Self {
            source: spec.source.clone()?,
            outputs: spec.outputs.clone().unwrap_or_default(),
            on_error: spec.on_error.clone().unwrap_or_default(),
        })
    }

    /// What is wrong with a custom image's topics and error policy, each
    /// naming its field: a dead-letter policy without a topic, and a
    /// dead-letter or output topic that is also a source (every record
    /// written there would be read again: a loop without end).
    pub fn problems(&self) -> Vec<crate::Invalid> {
        let mut problems = Vec::new();
        let dead_letter = self.on_error.dead_letter_topic.as_ref();
        if self.on_error.policy == crate::ErrorPolicy::DeadLetter && dead_letter.is_none() {
            problems.push(crate::Invalid::new(
                "spec.onError.deadLetterTopic",
                "is required with policy DeadLetter",
            ));
        }
        let is_source = |t: &TopicName| self.source.topics.contains(t);
        if let Some(t) = dead_letter.filter(|t| is_source(t)) {
            problems.push(crate::Invalid::new(
                "spec.onError.deadLetterTopic",
                format!("'{t}' is a source topic: failed records would be read again"),
            ));
        }
        for (i, t) in self.outputs.iter().enumerate() {
            if is_source(t) {
                problems.push(crate::Invalid::new(
                    &format!("spec.outputs[{i}]"),
                    format!("'{t}' is a source topic: every output would be read again"),
                ));
            }
        }
        problems
    }

    /// Every topic the processor may write: its outputs and the dead-letter
    /// topic, sorted, once each.
    pub fn output_topics(&self) -> Vec<TopicName> {
        let mut topics = self.outputs.clone();
        topics.extend(self.on_error.dead_letter_topic.iter().cloned());
        topics.sort();
        topics.dedup();
        topics
    }
}
