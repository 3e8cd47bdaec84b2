//! The `StreamApp` resource.

// printcolumn(...) entries repeat `type_ = ...` by design; clippy reads them
// as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{
    AutoscalingSpec, KafkaSpec, OnError, PipelineSpec, QuerySpec, SourceSpec, StateSpec,
    StreamAppStatus, TopicName, WorkerTemplate,
};

/// A Kafka stream application run by Millrace: a zero-code CEL pipeline or a
/// custom image built on the runtime library, processed exactly once by a
/// StatefulSet of workers that the operator places, heals and scales.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "millrace.dev",
    version = "v1alpha1",
    kind = "StreamApp",
    doc = "A Kafka stream application run by Millrace: a CEL pipeline or a custom runtime image, processed exactly once by workers the operator places, heals and scales.",
    plural = "streamapps",
    shortname = "sapp",
    category = "millrace",
    namespaced,
    status = "StreamAppStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.replicaSummary",
        description = "ready/desired workers"
    ),
    printcolumn(name = "Tasks", type_ = "integer", json_path = ".status.tasks"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.placement.state",
        description = "restores under way and standby lag (stateful apps)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.pipeline) != has(self.image)").message("set exactly one of spec.pipeline (zero-code) or spec.image (custom runtime)"),
    validation = Rule::new("has(self.image) || (!has(self.command) && !has(self.args))").message("spec.command and spec.args apply only with spec.image"),
    validation = Rule::new("has(self.image) == has(self.source)").message("spec.source is required with spec.image and applies only to it (a pipeline declares pipeline.source)"),
    validation = Rule::new("has(self.image) || (!has(self.outputs) && !has(self.onError))").message("spec.outputs and spec.onError apply only with spec.image (a pipeline routes in its steps and declares pipeline.onError)"),
    validation = Rule::new("!has(self.commitInterval) || !has(self.transactionTimeout) || duration(self.commitInterval) < duration(self.transactionTimeout)").message("spec.commitInterval must be shorter than spec.transactionTimeout"),
    validation = Rule::new("has(self.applicationId) == has(oldSelf.applicationId) && (!has(self.applicationId) || self.applicationId == oldSelf.applicationId)").message("spec.applicationId is immutable: it names the consumer group, transactional ids and internal topics"),
)]
pub struct StreamAppSpec {
    /// How the workers reach Kafka.
    pub kafka: KafkaSpec,
    /// Kafka identity of the app: its consumer group id and the prefix of its
    /// transactional ids and internal topics. Default `<namespace>.<name>`.
    /// Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9._-]+$')").message("spec.applicationId may contain only letters, digits, '.', '_' and '-'"))]
    #[schemars(length(min = 1, max = 200))]
    pub application_id: Option<String>,
    /// `ExactlyOnce` (default): output, state and input offsets commit in one
    /// Kafka transaction. `AtLeastOnce`: no transactions; after a crash some
    /// records may be processed again, none are lost.
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// How often work is committed, as a duration (`100ms`, `5s`). Default
    /// `100ms` for ExactlyOnce, `5s` for AtLeastOnce. Shorter means lower
    /// end-to-end latency for read_committed consumers, longer means higher
    /// throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("spec.commitInterval must be a duration such as 100ms, 5s or 1m"))]
    #[schemars(length(max = 32))]
    pub commit_interval: Option<String>,
    /// Producer `transaction.timeout.ms` as a duration. Default `60s`. Must
    /// be longer than `commitInterval`; a worker that stalls longer than
    /// this is aborted by the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("spec.transactionTimeout must be a duration such as 30s or 1m"))]
    #[schemars(length(max = 32))]
    pub transaction_timeout: Option<String>,
    /// Zero-code pipeline in CEL. Set this or `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,
    /// Image of a custom runtime built on the Millrace runtime library. Set
    /// this or `pipeline`; pipelines run the `millrace-runtime` image of the
    /// operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Custom images: the topics the processor reads (a pipeline declares
    /// them in `pipeline.source`). Required with `image`. Partition N of
    /// every source topic is one task, as for a pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Custom images: the topics the processor writes. Each must exist
    /// before workers start (Millrace creates no user topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub outputs: Option<Vec<TopicName>>,
    /// Custom images: what happens to a record the processor fails on
    /// (`pipeline.onError` for a pipeline). Default `Stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Entrypoint of the custom image (its own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments of the custom image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Worker count when autoscaling is off. Default 1. `kubectl scale`,
    /// HPA and KEDA write it through the `/scale` subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Lag-driven autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Local state: per-worker volume and standby replicas. A custom image
    /// gets a state volume only when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
    /// The query API over the app's state (stateful pipelines): on by
    /// default, port 8081.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QuerySpec>,
    /// Overrides for the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkerTemplate>,
    /// What happens to the app's Kafka data when the StreamApp is deleted:
    /// `Retain` (default) keeps internal topics and committed offsets, so a
    /// re-created app resumes; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

impl StreamAppSpec {
    /// The query API its workers serve: a pipeline with state, unless
    /// `spec.query.enabled` is false.
    pub fn query_config(&self) -> Option<crate::worker_config::QueryConfig> {
        let stateful = self.pipeline.is_some() && self.state.is_some();
        stateful
            .then(|| crate::worker_config::QueryConfig::of(self.query.as_ref()))
            .flatten()
    }

    /// The topics the app reads: its pipeline's source, or a custom image's
    /// `spec.source`. Partition N of each is task N.
    pub fn source_topics(&self) -> &[TopicName] {
        match (&self.pipeline, &self.source) {
            (Some(pipeline), _) => &pipeline.source.topics,
            (None, Some(source)) => &source.topics,
            (None, None) => &[],
        }
    }
}

/// Processing guarantee.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ProcessingGuarantee {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

/// Fate of the app's internal topics and offsets on deletion.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}
