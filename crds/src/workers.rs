//! The workers: how many, how they scale, their state volume, and pod
//! template overrides.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lag-driven autoscaling. When enabled the operator sets the worker count
/// between `minReplicas` and `maxReplicas`, never above the task count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Turn autoscaling on. When off, `spec.replicas` is the worker count.
    #[serde(default)]
    pub enabled: bool,
    /// Fewest workers. 0 allows scaling to zero when there is no lag.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most workers (also capped at the task count).
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Compute and report decisions without changing the worker count.
    #[serde(default)]
    pub dry_run: bool,
}

fn one() -> i32 {
    1
}

/// Local state of the workers: a volume per worker and standby copies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateSpec {
    /// Warm copies of each task's state kept on other workers, so a task
    /// moves without a restore. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3))]
    pub standby_replicas: i32,
    /// Size of each worker's state volume. Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// StorageClass of the state volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Overrides applied to every worker pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// CPU and memory requests and limits of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a worker pod requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the worker pods. Without it the operator prefers to
    /// spread workers across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment variables of the worker container. Names starting
    /// with `MILLRACE_` are reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra annotations of the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels of the worker pods. The `app.kubernetes.io/*` labels
    /// Millrace sets win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Priority class of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}
