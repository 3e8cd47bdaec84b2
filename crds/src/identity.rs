//! Kafka identities of a worker: the transactional ids its processing loops
//! use, which are also what fences it. One definition for the worker (which
//! sets them and fences its own unused ones at start) and the operator
//! (which fences a worker that does not let go of a task).

use std::ops::Range;

/// Most processing loops a worker runs. At start the transactional ids of
/// loops beyond the current count are fenced, so a previous incarnation that
/// ran more loops leaves no open transaction behind to block its partitions;
/// the operator fences all of them when it fences a worker.
pub const MAX_LOOPS: usize = 8;

/// `<applicationId>-<loop id>`: a restarted worker's producer fences its
/// zombie by reusing it.
pub fn transactional_id(application_id: &str, loop_id: &str) -> String {
    format!("{application_id}-{loop_id}")
}

/// The id of loop `index` of worker `worker_id` (the pod name in a pod):
/// loop 0 is the worker id itself, so a one-loop worker's transactional id
/// is `<applicationId>-<pod name>`.
pub fn loop_id(worker_id: &str, index: usize) -> String {
    if index == 0 {
        worker_id.to_string()
    } else {
        format!("{worker_id}-{index}")
    }
}

/// The transactional ids of loops `loops` of a worker: what to fence.
pub fn loop_transactional_ids(
    application_id: &str,
    worker_id: &str,
    loops: Range<usize>,
) -> Vec<String> {
    loops
        .map(|index| transactional_id(application_id, &loop_id(worker_id, index)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_zero_is_the_worker_and_the_rest_are_numbered() {
        assert_eq!(
            loop_transactional_ids("shop.orders", "orders-1", 0..3),
            [
                "shop.orders-orders-1",
                "shop.orders-orders-1-1",
                "shop.orders-orders-1-2"
            ]
        );
        assert_eq!(loop_transactional_ids("a", "w", 2..MAX_LOOPS).len(), 6);
    }
}
