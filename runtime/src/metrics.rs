//! The worker's Prometheus metrics and the task status its admin endpoint
//! serves (the operator reads `/tasks`).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use millrace_crds::worker_status::{
    StoppedTask, TaskCommits, TaskPartition, TaskRestore, WorkerStatus,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreLabel {
    pub task: String,
    /// `restoring` (a task this worker owns, before it processes) or
    /// `standby` (a warm copy following the changelog).
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskIdLabel {
    pub task: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub records_in: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub dead_lettered: Counter,
    pub filtered: Counter,
    pub unrouted: Counter,
    /// Records too late for every window of a windowed aggregate.
    pub late: Counter,
    pub skipped: Counter,
    pub stopped_tasks: Counter,
    pub commits: Counter,
    pub aborts: Counter,
    pub hung_commits: Counter,
    /// A loop found its producer fenced (another owner of its tasks, or
    /// its own zombie) and started over from a fresh read of its placement.
    pub fenced: Counter,
    /// Changelog records replayed into the stores (restores, tails or full).
    pub restored_records: Counter,
    pub commit_seconds: Histogram,
    pub lag: Family<TaskLabel, Gauge<i64, AtomicI64>>,
    /// Read from the status at each scrape ([`Metrics::encode`]).
    restore_remaining: Family<RestoreLabel, Gauge<i64, AtomicI64>>,
    standby_seconds_behind: Family<TaskIdLabel, Gauge<i64, AtomicI64>>,
    /// One scrape refreshes the status gauges at a time.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("millrace");
        let m = Self {
            records_in: Family::default(),
            records_out: Family::default(),
            dead_lettered: Counter::default(),
            filtered: Counter::default(),
            unrouted: Counter::default(),
            late: Counter::default(),
            skipped: Counter::default(),
            stopped_tasks: Counter::default(),
            commits: Counter::default(),
            aborts: Counter::default(),
            hung_commits: Counter::default(),
            fenced: Counter::default(),
            restored_records: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            lag: Family::default(),
            restore_remaining: Family::default(),
            standby_seconds_behind: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records consumed, by source topic",
            m.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Records produced, by destination topic",
            m.records_out.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "filtered",
            "Records dropped by a filter step",
            m.filtered.clone(),
        );
        registry.register(
            "unrouted",
            "Records no route rule matched, without a default",
            m.unrouted.clone(),
        );
        registry.register(
            "late_records",
            "Records too late for every window of a windowed aggregate (dropped, or dead-lettered when the step says so)",
            m.late.clone(),
        );
        registry.register(
            "skipped",
            "Records passed over because spec onError.skip names them",
            m.skipped.clone(),
        );
        registry.register(
            "tasks_stopped",
            "Tasks stopped at a failing record (onError policy Stop)",
            m.stopped_tasks.clone(),
        );
        registry.register(
            "commits",
            "Committed transactions (or offset commits under AtLeastOnce)",
            m.commits.clone(),
        );
        registry.register(
            "transaction_aborts",
            "Transactions aborted and replayed",
            m.aborts.clone(),
        );
        registry.register(
            "hung_commits",
            "Commits abandoned without an outcome past their deadline (the producer replaced)",
            m.hung_commits.clone(),
        );
        registry.register(
            "fenced",
            "Times a loop found its producer fenced and read its placement again before processing",
            m.fenced.clone(),
        );
        registry.register(
            "state_restored_records",
            "Changelog records replayed into the state stores",
            m.restored_records.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit a transaction",
            m.commit_seconds.clone(),
        );
        registry.register(
            "task_lag",
            "Records behind the last stable offset, per task partition",
            m.lag.clone(),
        );
        registry.register(
            "task_restore_remaining_records",
            "Changelog records a task still has to replay here: restoring (owned, not yet processing) or standby (a warm copy's lag behind the changelog's end)",
            m.restore_remaining.clone(),
        );
        registry.register(
            "standby_seconds_behind",
            "Age of the newest change a standby copy has applied while records remain (0 caught up)",
            m.standby_seconds_behind.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The exposition, with the restore and standby gauges read from
    /// `status` now (tasks that finished or moved away drop out).
    pub fn encode(&self, status: &Status) -> String {
        use millrace_crds::worker_status::RestoreState;
        let _one_scrape = self.scrape.lock().unwrap();
        self.restore_remaining.clear();
        self.standby_seconds_behind.clear();
        for (task, r) in &status.snapshot().restores {
            let state = match r.state {
                RestoreState::Restoring => "restoring",
                RestoreState::Standby => "standby",
                RestoreState::Active => continue,
            };
            let task = task.to_string();
            self.restore_remaining
                .get_or_create(&RestoreLabel {
                    task: task.clone(),
                    state: state.into(),
                })
                .set(r.records_remaining.try_into().unwrap_or(i64::MAX));
            if let (RestoreState::Standby, Some(behind)) = (r.state, r.seconds_behind) {
                self.standby_seconds_behind
                    .get_or_create(&TaskIdLabel { task })
                    .set(behind.try_into().unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

/// What the worker is doing, for `/readyz` and `/tasks`.
#[derive(Default)]
pub struct Status {
    pub ready: AtomicBool,
    /// How the app's tasks are laid out (for routing queries).
    pub layout: Mutex<crate::query::route::Layout>,
    pub detail: Mutex<WorkerStatus>,
    /// Next offset per owned (topic, partition) after the last commit,
    /// published by the engine for the lag watcher.
    pub committed: Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    /// Nanoseconds the loops spent processing and committing (not waiting
    /// for records), summed over loops: the operator's busy time.
    pub busy_nanos: AtomicU64,
    /// When each processing loop last made progress (Unix ms), for
    /// `/healthz`.
    heartbeats: Mutex<Vec<u64>>,
    /// A loop silent for longer than this is stuck: `/healthz` fails and
    /// the kubelet restarts the worker.
    stall_limit_ms: AtomicU64,
}

/// A loop that has made no progress for too long.
#[derive(Debug, PartialEq, Eq)]
pub struct Stalled {
    pub loop_index: usize,
    pub silent_ms: u64,
    pub limit_ms: u64,
}

impl Status {
    /// A processing loop starts; returns its heartbeat slot. A loop is
    /// stuck once silent for `limit_ms`.
    pub fn register_loop(&self, now_ms: u64, limit_ms: u64) -> usize {
        self.stall_limit_ms.store(limit_ms, Ordering::Relaxed);
        let mut beats = self.heartbeats.lock().unwrap();
        beats.push(now_ms);
        beats.len() - 1
    }

    /// Loop `index` made progress: it finished a commit interval, or it is
    /// retrying something outside it (the broker away), which is progress
    /// too: restarting the worker would not bring the broker back.
    pub fn beat(&self, index: usize, now_ms: u64) {
        if let Some(beat) = self.heartbeats.lock().unwrap().get_mut(index) {
            *beat = now_ms;
        }
    }

    /// The loop silent the longest, when past the limit.
    pub fn stalled(&self, now_ms: u64) -> Option<Stalled> {
        let limit_ms = self.stall_limit_ms.load(Ordering::Relaxed);
        let beats = self.heartbeats.lock().unwrap();
        let (loop_index, last) = beats.iter().enumerate().min_by_key(|(_, t)| **t)?;
        let silent_ms = now_ms.saturating_sub(*last);
        (silent_ms > limit_ms).then_some(Stalled {
            loop_index,
            silent_ms,
            limit_ms,
        })
    }

    pub fn add_busy(&self, d: std::time::Duration) {
        self.busy_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// `/tasks`: the detail with the busy counter as of now.
    pub fn snapshot(&self) -> WorkerStatus {
        let mut d = self.detail.lock().unwrap().clone();
        d.busy_nanos = self.busy_nanos.load(Ordering::Relaxed);
        d
    }

    /// A transaction (or offset commit) with progress for `tasks` succeeded.
    pub fn record_commit(&self, tasks: impl Iterator<Item = i32>, now_ms: u64) {
        let mut detail = self.detail.lock().unwrap();
        for task in tasks {
            detail
                .commits
                .entry(task)
                .or_insert(TaskCommits {
                    first_ms: now_ms,
                    last_ms: now_ms,
                })
                .last_ms = now_ms;
        }
    }

    pub fn restore_progress(&self, task: i32, progress: TaskRestore) {
        self.detail.lock().unwrap().restores.insert(task, progress);
    }

    /// A standby copy's lag, unless a loop here owns the task (its restore
    /// reports it).
    pub fn standby_progress(&self, task: i32, progress: TaskRestore) {
        let mut detail = self.detail.lock().unwrap();
        if !detail.tasks.contains(&task) {
            detail.restores.insert(task, progress);
        }
    }

    /// No standby copy here is followed now.
    pub fn forget_standbys(&self) {
        use millrace_crds::worker_status::RestoreState;
        let mut detail = self.detail.lock().unwrap();
        detail
            .restores
            .retain(|_, r| r.state != RestoreState::Standby);
    }

    /// The task is no longer a standby here.
    pub fn forget_standby(&self, task: i32) {
        let mut detail = self.detail.lock().unwrap();
        if !detail.tasks.contains(&task) {
            detail.restores.remove(&task);
        }
    }

    /// Internal topics this worker uses, for the operator to record.
    pub fn internal_topics(&self, topics: &[String]) {
        let mut detail = self.detail.lock().unwrap();
        detail.internal_topics.extend_from_slice(topics);
        detail.internal_topics.sort();
        detail.internal_topics.dedup();
    }

    /// A task stopped at a record (replacing an older report of it).
    pub fn stop(&self, stopped: StoppedTask) {
        let mut detail = self.detail.lock().unwrap();
        detail.stopped.retain(|s| s.task != stopped.task);
        detail.stopped.push(stopped);
        detail.stopped.sort_by_key(|s| s.task);
    }

    pub fn release(&self, tasks: &[i32]) {
        let mut detail = self.detail.lock().unwrap();
        detail.tasks.retain(|t| !tasks.contains(t));
        detail.stopped.retain(|s| !tasks.contains(&s.task));
        detail.restores.retain(|t, _| !tasks.contains(t));
        for t in tasks {
            if let Some(c) = detail.commits.remove(t) {
                detail.released.insert(*t, c.last_ms);
            }
        }
    }

    pub fn take(&self, tasks: &[i32]) {
        let mut detail = self.detail.lock().unwrap();
        detail.tasks.extend(tasks);
        detail.tasks.sort_unstable();
        detail.tasks.dedup();
        for t in tasks {
            detail.released.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_silent_past_the_limit_is_stalled_and_a_beat_clears_it() {
        let status = Status::default();
        assert_eq!(status.stalled(1_000_000), None, "no loop yet: healthy");
        let first = status.register_loop(1_000, 60_000);
        let second = status.register_loop(1_000, 60_000);
        assert_eq!(status.stalled(61_000), None, "at the limit");
        status.beat(first, 50_000);
        assert_eq!(
            status.stalled(70_000),
            Some(Stalled {
                loop_index: second,
                silent_ms: 69_000,
                limit_ms: 60_000
            })
        );
        status.beat(second, 69_000);
        assert_eq!(status.stalled(70_000), None);
    }
}
