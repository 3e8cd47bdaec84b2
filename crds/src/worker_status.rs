//! `/tasks`, the worker's report to the operator: its placement epoch, its
//! tasks with their offsets and lag, commit times and busy time. The worker
//! serves it, the operator's placement and autoscaling loops read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `/tasks`: what the worker does, read by the operator and by people.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub worker_id: String,
    pub application_id: String,
    pub placement: String,
    /// The placement epoch every loop has applied (releases committed and
    /// stopped, takes started): the acknowledgement the operator waits for.
    #[serde(default)]
    pub applied_epoch: Option<u64>,
    pub tasks: Vec<i32>,
    pub partitions: Vec<TaskPartition>,
    /// Per owned task, its first and last commit since this worker took it.
    #[serde(default)]
    pub commits: BTreeMap<i32, TaskCommits>,
    /// Per task released by this worker, the time of its last commit here.
    #[serde(default)]
    pub released: BTreeMap<i32, u64>,
    /// Processing loops (each one thread).
    #[serde(default)]
    pub loops: u32,
    /// Nanoseconds spent processing and committing since start, over all
    /// loops: busy fraction = Δ / (Δt × loops).
    #[serde(default)]
    pub busy_nanos: u64,
    /// Tasks stopped at a failing record (`onError: Stop`): nothing more of
    /// them is processed until the user acts (docs/streamapp.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<StoppedTask>,
    /// Per owned task of a stateful app, its stores' restore: under way,
    /// or done and the task active.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restores: BTreeMap<i32, TaskRestore>,
    /// Internal topics (changelogs) this worker uses, created by it or
    /// found and checked: the operator records them in
    /// `status.internalTopics`, which deletion deletes. Every start reports
    /// them again, so one created by a worker that crashed before the
    /// operator read its report is still recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_topics: Vec<String>,
}

/// A task's restore from its changelogs, over its stores.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRestore {
    pub state: RestoreState,
    pub records_restored: u64,
    pub records_remaining: u64,
    /// A store was restored from the changelog's start (new, lost or
    /// untrusted), not from the offset it had reached.
    pub full: bool,
    pub since_ms: u64,
    /// Records per second so far.
    pub rate: u64,
    /// A standby's lag in time: the age of the newest change it has
    /// applied while records remain, 0 at the end; `None` before it has
    /// read one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_behind: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreState {
    #[default]
    Restoring,
    /// Restored: processing.
    Active,
    /// A standby copy here, kept warm from the changelog (remaining = its
    /// lag behind the changelog's end).
    Standby,
}

/// A task stopped at a record: its offset is committed up to the record,
/// the other tasks go on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoppedTask {
    pub task: i32,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub step: String,
    pub error: String,
    pub since_ms: u64,
}

impl std::fmt::Display for StoppedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task {} stopped at record {}/{}@{} in step '{}': {}",
            self.task, self.topic, self.partition, self.offset, self.step, self.error
        )
    }
}

/// Commit times of one task on this worker (Unix milliseconds).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskCommits {
    pub first_ms: u64,
    pub last_ms: u64,
}

/// One task partition as the admin endpoint reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskPartition {
    pub topic: String,
    pub partition: i32,
    /// Next offset to process after the last commit.
    pub committed_offset: Option<i64>,
    pub lag: Option<i64>,
}

/// Lag of one partition against the last stable offset (what a
/// read_committed client sees as the end, so transaction markers and aborted
/// records are not lag). Without a committed offset a worker starts at the
/// beginning (`earliest`), so everything retained is lag.
pub fn partition_lag(last_stable: i64, log_start: i64, committed: Option<i64>) -> i64 {
    let from = committed.unwrap_or(log_start).max(log_start);
    (last_stable - from).max(0)
}

/// Now as Unix milliseconds: the clock of every time in `/tasks`.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_from_the_committed_offset_or_the_log_start() {
        assert_eq!(partition_lag(100, 0, Some(60)), 40);
        assert_eq!(
            partition_lag(100, 20, None),
            80,
            "no commit yet: all retained records"
        );
        assert_eq!(
            partition_lag(100, 20, Some(5)),
            80,
            "committed below the log start"
        );
        assert_eq!(partition_lag(100, 0, Some(100)), 0);
        assert_eq!(partition_lag(100, 0, Some(120)), 0, "never negative");
    }
}
