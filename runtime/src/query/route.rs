//! Where a query goes (pure): the tasks that may hold a key, and whether
//! this worker may answer for a task from its own copy.

use millrace_crds::worker_status::{RestoreState, WorkerStatus};
use millrace_crds::Partitioner;
use millrace_pipeline::partitioner::{crc32_partition, murmur2_partition};
use millrace_pipeline::query::Spread;
use serde::Serialize;

/// How the app's tasks are laid out now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub source_partitions: i32,
    pub tasks: i32,
    pub repartition_partitions: i32,
}

/// A task to ask, and why it may hold the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub task: i32,
    /// The partitioner that puts the key in this task: `murmur2`,
    /// `crc32`, or `any` (a store not keyed by how records were
    /// partitioned: every task is asked).
    pub by: &'static str,
}

/// The tasks that may hold `key` of a store spread as `spread`, in the
/// order to ask: the declared partitioner's first, then the other's (the
/// input may have been written by a client with another default).
pub fn candidates(
    spread: Spread,
    key: &[u8],
    declared: Partitioner,
    layout: Layout,
) -> Vec<Candidate> {
    let murmur2 = |n| Candidate {
        task: murmur2_partition(key, n),
        by: "murmur2",
    };
    let crc32 = |n| Candidate {
        task: crc32_partition(key, n),
        by: "crc32",
    };
    match spread {
        Spread::Repartition => vec![murmur2(layout.repartition_partitions)],
        Spread::Source => {
            let n = layout.source_partitions;
            let (first, second) = match declared {
                Partitioner::Murmur2 => (murmur2(n), crc32(n)),
                Partitioner::Crc32 => (crc32(n), murmur2(n)),
            };
            let mut out = vec![first];
            if second.task != first.task {
                out.push(second);
            }
            out
        }
        Spread::AnyTask => (0..layout.tasks)
            .map(|task| Candidate { task, by: "any" })
            .collect(),
    }
}

/// This worker's copy of a task's state, as a query may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "role"
)]
pub enum Copy {
    /// The task is processed here: the store is its committed state.
    Active {
        #[serde(skip_serializing_if = "Option::is_none")]
        last_commit_ms: Option<u64>,
    },
    /// A standby (or warm-up) copy, `lag` changelog records behind.
    Standby {
        lag: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seconds_behind: Option<u64>,
    },
    /// Taken here, its restore `remaining` records from done.
    Restoring { remaining: u64 },
}

impl Copy {
    /// Records the copy is behind its changelog.
    pub fn lag(self) -> u64 {
        match self {
            Copy::Active { .. } => 0,
            Copy::Standby { lag, .. } => lag,
            Copy::Restoring { remaining } => remaining,
        }
    }
}

/// This worker's copy of `task`, if it has one.
pub fn copy_of(status: &WorkerStatus, task: i32) -> Option<Copy> {
    let restore = status.restores.get(&task);
    if status.tasks.contains(&task) {
        return Some(match restore {
            Some(r) if r.state == RestoreState::Restoring => Copy::Restoring {
                remaining: r.records_remaining,
            },
            _ => Copy::Active {
                last_commit_ms: status.commits.get(&task).map(|c| c.last_ms),
            },
        });
    }
    match restore {
        Some(r) if r.state == RestoreState::Standby => Some(Copy::Standby {
            lag: r.records_remaining,
            seconds_behind: r.seconds_behind,
        }),
        _ => None,
    }
}

/// Whether a copy may answer a caller who allows `max_lag` records of
/// staleness (0: only the active, restored copy).
pub fn may_answer(copy: Copy, max_lag: u64) -> bool {
    match copy {
        Copy::Active { .. } => true,
        other => other.lag() <= max_lag && max_lag > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_crds::worker_status::{TaskCommits, TaskRestore};

    const LAYOUT: Layout = Layout {
        source_partitions: 4,
        tasks: 6,
        repartition_partitions: 6,
    };

    #[test]
    fn a_source_keyed_store_is_asked_by_the_declared_partitioner_first() {
        // "c3": murmur2 → 3 of 4, CRC32 → 0 of 4 (computed independently).
        let key = b"c3";
        let java = candidates(Spread::Source, key, Partitioner::Murmur2, LAYOUT);
        assert_eq!(java[0].by, "murmur2");
        assert_eq!(java[0].task, murmur2_partition(key, 4));
        let librdkafka = candidates(Spread::Source, key, Partitioner::Crc32, LAYOUT);
        assert_eq!(librdkafka[0].by, "crc32");
        if java.len() == 2 {
            assert_eq!(java[1], librdkafka[0], "the other as a fallback");
        }
        assert_eq!(
            candidates(Spread::Repartition, key, Partitioner::Crc32, LAYOUT),
            vec![Candidate {
                task: murmur2_partition(key, 6),
                by: "murmur2"
            }],
            "Millrace writes repartition topics with murmur2, over their own count"
        );
        assert_eq!(
            candidates(Spread::AnyTask, key, Partitioner::Murmur2, LAYOUT).len(),
            6,
            "every task"
        );
    }

    #[test]
    fn only_an_active_restored_copy_answers_unless_staleness_is_allowed() {
        let mut status = WorkerStatus {
            tasks: vec![1, 2],
            ..Default::default()
        };
        status.commits.insert(
            1,
            TaskCommits {
                first_ms: 5,
                last_ms: 9,
            },
        );
        let restore = |state, remaining| TaskRestore {
            state,
            records_remaining: remaining,
            ..Default::default()
        };
        status.restores.insert(1, restore(RestoreState::Active, 0));
        status
            .restores
            .insert(2, restore(RestoreState::Restoring, 40));
        status.restores.insert(3, restore(RestoreState::Standby, 7));
        let active = copy_of(&status, 1).unwrap();
        assert_eq!(
            active,
            Copy::Active {
                last_commit_ms: Some(9)
            }
        );
        assert!(may_answer(active, 0));
        let restoring = copy_of(&status, 2).unwrap();
        assert!(!may_answer(restoring, 0) && !may_answer(restoring, 39));
        assert!(may_answer(restoring, 40));
        let standby = copy_of(&status, 3).unwrap();
        assert!(!may_answer(standby, 0), "a standby only when allowed");
        assert!(may_answer(standby, 7) && !may_answer(standby, 6));
        assert_eq!(copy_of(&status, 4), None);
    }
}
