//! The workers: how many, how they scale, their state volume, and pod
//! template overrides.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lag-driven autoscaling (see docs/autoscaling.md). `Off` uses
/// `spec.replicas` (and the `/scale` subresource, for an HPA or KEDA);
/// `Lag` lets the operator set the worker count from lag measured against
/// the last stable offset; `DryRun` decides and reports the same way in
/// status and Events but does not act.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// `Off` (default), `Lag` or `DryRun`.
    #[serde(default)]
    pub mode: AutoscalingMode,
    /// Fewest workers. 0 lets an idle app scale to zero. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most workers. Default and hard cap: the task count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// How fast a backlog must be gone while keeping up with input, e.g.
    /// `60s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_drain_time: Option<String>,
    /// Lag (records) that wakes an app scaled to zero. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub activation_lag: Option<i64>,
    /// How often lag is measured and a decision made, e.g. `10s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Scale-up rules. Default: no stabilisation window, at most max(4,
    /// current) workers added at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Scale-down rules. Default: a 60s window (the highest recommendation
    /// in it wins), no step limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
    /// No further change this long after a change, e.g. `30s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
}

/// Autoscaling modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AutoscalingMode {
    #[default]
    Off,
    Lag,
    DryRun,
}

/// Stabilisation and step limit of one direction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations within this window are considered, e.g. `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<String>,
    /// Most workers added or removed in one change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step: Option<i32>,
}

fn one() -> i32 {
    1
}

/// The query API every worker of a stateful app serves (docs/queries.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuerySpec {
    /// Serve it. Default true (for apps with stateful steps).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The workers' query port (a `query` container port and the
    /// `<app>-query` Service). Default 8081.
    #[serde(default = "QuerySpec::default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Allow paged scans of a task's whole store. Default false.
    #[serde(default)]
    pub scan: bool,
    /// Queries a worker serves at once; more get 503. Default 64.
    #[serde(default = "QuerySpec::default_max_concurrent")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: i32,
}

fn yes() -> bool {
    true
}

impl QuerySpec {
    pub const DEFAULT_PORT: i32 = 8081;
    fn default_port() -> i32 {
        Self::DEFAULT_PORT
    }
    fn default_max_concurrent() -> i32 {
        64
    }
}

impl Default for QuerySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            port: Self::DEFAULT_PORT,
            scan: false,
            max_concurrent: Self::default_max_concurrent(),
        }
    }
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
    /// A copy of a task's state this many changelog records or fewer
    /// behind counts as caught up: a live task moves only to such a copy,
    /// so a move restores at most this much. Default 10000 (Kafka
    /// Streams' `acceptable.recovery.lag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub acceptable_lag: Option<i64>,
    /// Most copies warming up at once, so that a task can move to a worker
    /// that has no caught-up copy: scale-ups and scale-downs of stateful
    /// apps warm these up in parallel. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_warmups: Option<i32>,
}

impl StateSpec {
    pub const DEFAULT_ACCEPTABLE_LAG: u64 = 10_000;
    pub const DEFAULT_MAX_WARMUPS: usize = 8;

    /// `acceptableLag`, defaulted; a negative value (refused at
    /// admission) counts as 0.
    pub fn acceptable_lag(&self) -> u64 {
        self.acceptable_lag
            .map_or(Self::DEFAULT_ACCEPTABLE_LAG, |l| l.max(0) as u64)
    }

    /// `maxWarmups`, defaulted; at least 1.
    pub fn max_warmups(&self) -> usize {
        self.max_warmups
            .map_or(Self::DEFAULT_MAX_WARMUPS, |m| m.max(1) as usize)
    }
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
