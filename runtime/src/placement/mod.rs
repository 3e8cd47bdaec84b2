//! The worker's side of placement: which tasks this worker owns.
//!
//! A task is one partition index across the source topics. In a pod the
//! operator's placement decides ([`watch`] follows the placement ConfigMap
//! and gives each loop its share as a [`TaskSource`]); standalone, a worker owns every task; a pod
//! without a placement (a configuration from before placement) owns them
//! only as ordinal 0, so no two workers ever process one partition.

pub mod watch;

/// A change of this worker's tasks, in placement epoch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementChange {
    /// Stop processing these tasks: the engine commits what it processed,
    /// stops consuming them, then acknowledges the epoch.
    Release { epoch: u64, tasks: Vec<i32> },
    /// Start processing these tasks from their committed offsets (read with
    /// require_stable), then acknowledge the epoch.
    Take { epoch: u64, tasks: Vec<i32> },
}

/// Decides the tasks of this worker. `tasks` is asked after every
/// `init_transactions` (start, or after being fenced) before anything is
/// processed, and must read the placement afresh; `poll_change` between
/// commits.
pub trait TaskSource: Send {
    fn tasks(&mut self, task_count: i32) -> Vec<i32>;
    fn describe(&self) -> String;
    fn poll_change(&mut self) -> Option<PlacementChange> {
        None
    }
    /// The change of `epoch` is done (released tasks are committed and
    /// no longer consumed; taken tasks are being consumed).
    fn acknowledge(&mut self, _epoch: u64) {}
}

/// One processing loop's share of a worker's tasks: task `t` belongs to loop
/// `t % of`, so a task never moves between two loops of one worker. For
/// sources without placement changes (standalone, ordinal zero).
pub struct Share {
    pub inner: Box<dyn TaskSource>,
    pub index: usize,
    pub of: usize,
}

impl TaskSource for Share {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        self.inner
            .tasks(task_count)
            .into_iter()
            .filter(|t| (*t as usize) % self.of == self.index)
            .collect()
    }
    fn describe(&self) -> String {
        format!(
            "{} (loop {} of {})",
            self.inner.describe(),
            self.index + 1,
            self.of
        )
    }
}

/// `millrace-runtime run`: one worker owns all tasks.
pub struct Standalone;

impl TaskSource for Standalone {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        (0..task_count).collect()
    }
    fn describe(&self) -> String {
        "standalone: this worker owns every task".into()
    }
}

/// In a StatefulSet before placement exists: ordinal 0 owns all tasks.
pub struct OrdinalZero {
    pub ordinal: Option<u32>,
}

impl OrdinalZero {
    /// `orders-router-2` → 2.
    pub fn from_pod_name(name: &str) -> Self {
        Self {
            ordinal: name.rsplit('-').next().and_then(|n| n.parse().ok()),
        }
    }
}

impl TaskSource for OrdinalZero {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        if self.ordinal == Some(0) {
            (0..task_count).collect()
        } else {
            Vec::new()
        }
    }
    fn describe(&self) -> String {
        match self.ordinal {
            Some(0) => "worker 0 owns every task until task placement lands".into(),
            _ => "standing by: worker 0 owns every task until task placement lands".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_a_workers_tasks_without_overlap() {
        let share = |index| {
            Share {
                inner: Box::new(Standalone),
                index,
                of: 3,
            }
            .tasks(8)
        };
        assert_eq!(
            (share(0), share(1), share(2)),
            (vec![0, 3, 6], vec![1, 4, 7], vec![2, 5])
        );
        let idle = Share {
            inner: Box::new(OrdinalZero::from_pod_name("app-1")),
            index: 0,
            of: 2,
        };
        assert!({ idle }.tasks(8).is_empty());
    }

    #[test]
    fn standalone_owns_all_and_only_ordinal_zero_works_in_a_statefulset() {
        assert_eq!(Standalone.tasks(3), [0, 1, 2]);
        assert_eq!(
            OrdinalZero::from_pod_name("orders-router-0").tasks(2),
            [0, 1]
        );
        assert!(OrdinalZero::from_pod_name("orders-router-1")
            .tasks(2)
            .is_empty());
        assert!(OrdinalZero::from_pod_name("weird").tasks(2).is_empty());
    }
}
