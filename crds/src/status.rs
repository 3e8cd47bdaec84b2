//! What the operator reports about a StreamApp.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamAppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist (the `/scale` subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The worker count the operator is driving towards.
    #[serde(default)]
    pub desired_replicas: i32,
    /// `ready/desired`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_summary: Option<String>,
    /// Tasks: the partition count of the source topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<i32>,
    /// Records behind, summed over tasks, against the last stable offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Label selector of the worker pods (the `/scale` subresource reads this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The application id in effect (consumer group, transactional id prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// When the worker count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Where the tasks run; the full document is the ConfigMap
    /// `<name>-placement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSummary>,
    /// The autoscaler's measurements and last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// Topics Millrace created for this app (changelogs, repartition
    /// topics), recorded as they are created. `deletionPolicy: Delete`
    /// deletes these, and only those named as internal topics
    /// (`<applicationId>-<step>-changelog|repartition`); never a topic the
    /// user made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_topics: Vec<String>,
    /// Where the app's state answers queries (docs/queries.md): the
    /// Service and port any worker answers on, for any key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_endpoint: Option<QueryEndpoint>,
    /// Tasks stopped at a failing record (`onError: Stop`), as their
    /// workers report them; the other tasks go on. Written by the
    /// placement driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped_tasks: Vec<crate::worker_status::StoppedTask>,
}

/// What the autoscaler measured and decided at its last poll.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// `Lag` or `DryRun`.
    pub mode: String,
    /// The worker count decided (applied under `Lag`, reported under `DryRun`).
    pub decided: i32,
    /// The recommendation before stabilisation windows, step limits and cooldown.
    pub recommended: i32,
    /// Why, with the numbers.
    pub reason: String,
    /// Set when more workers would not help (stuck or hot partition,
    /// ineffective scale-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<String>,
    /// Records/s arriving on the source topics.
    #[serde(default)]
    pub input_rate: f64,
    /// Records/s the app commits.
    #[serde(default)]
    pub processing_rate: f64,
    /// Records/s one worker processes, as learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_per_replica: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// Heavy tasks (each needs half a worker or more) that placement gives
    /// a worker of their own, most loaded first; applied under `Lag` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_tasks: Vec<i32>,
    /// The autoscaler's memory (JSON), so a restarted operator does not relearn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// A summary of the task placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSummary {
    /// The placement document's epoch.
    pub epoch: i64,
    /// Active tasks per worker pod.
    #[serde(default)]
    pub tasks_per_worker: std::collections::BTreeMap<String, i32>,
    /// Tasks being handed from one worker to another.
    #[serde(default)]
    pub moves_in_progress: i32,
    /// Stateful apps: restores under way and how far the standby copies
    /// are behind, as the workers report them (`kubectl get streamapps`
    /// shows it as State).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The Service of an app's query API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryEndpoint {
    /// The app's Service (`<app>`, in its namespace).
    pub service: String,
    pub port: i32,
}
