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
    /// The source topics gained partitions: `task_count` tasks now. The
    /// new tasks of this source come as a change from `poll_change`.
    fn task_count_changed(&mut self, _task_count: i32) {}
}

/// One processing loop's share of a worker's tasks: task `t` belongs to loop
/// `t % of`, so a task never moves between two loops of one worker. For
/// sources without placement changes (standalone, ordinal zero).
pub struct Share {
    inner: Box<dyn TaskSource>,
    index: usize,
    of: usize,
    /// The task count the share was last computed for.
    task_count: i32,
    /// Tasks added since, not yet handed out.
    added: Vec<i32>,
}

impl Share {
    pub fn new(inner: Box<dyn TaskSource>, index: usize, of: usize) -> Self {
        Self {
            inner,
            index,
            of,
            task_count: 0,
            added: Vec::new(),
        }
    }

    fn share(&mut self, task_count: i32) -> Vec<i32> {
        self.inner
            .tasks(task_count)
            .into_iter()
            .filter(|t| (*t as usize) % self.of == self.index)
            .collect()
    }
}

impl TaskSource for Share {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        self.task_count = task_count;
        self.added.clear();
        self.share(task_count)
    }

    fn poll_change(&mut self) -> Option<PlacementChange> {
        if self.added.is_empty() {
            return None;
        }
        Some(PlacementChange::Take {
            epoch: 0,
            tasks: std::mem::take(&mut self.added),
        })
    }

    fn task_count_changed(&mut self, task_count: i32) {
        let before = self.task_count;
        self.task_count = task_count;
        let new = self.share(task_count).into_iter().filter(|t| *t >= before);
        self.added.extend(new);
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
        let share = |index| Share::new(Box::new(Standalone), index, 3).tasks(8);
        assert_eq!(
            (share(0), share(1), share(2)),
            (vec![0, 3, 6], vec![1, 4, 7], vec![2, 5])
        );
        let idle = Share::new(Box::new(OrdinalZero::from_pod_name("app-1")), 0, 2);
        assert!({ idle }.tasks(8).is_empty());
    }

    #[test]
    fn added_partitions_are_taken_by_the_share_they_fall_in() {
        let mut share = Share::new(Box::new(Standalone), 1, 2);
        assert_eq!(share.tasks(4), [1, 3]);
        assert_eq!(share.poll_change(), None);
        share.task_count_changed(8);
        assert_eq!(
            share.poll_change(),
            Some(PlacementChange::Take {
                epoch: 0,
                tasks: vec![5, 7]
            })
        );
        assert_eq!(share.poll_change(), None, "handed out once");
        let mut idle = Share::new(Box::new(OrdinalZero::from_pod_name("app-1")), 0, 1);
        idle.tasks(2);
        idle.task_count_changed(4);
        assert_eq!(idle.poll_change(), None, "not ordinal zero: none of them");
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
