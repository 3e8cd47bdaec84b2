//! At-least-once without waiting for the broker: a batch's offsets are
//! committed once every record it produced is acknowledged, while the loop
//! already processes the next batches. Committing an offset only after the
//! outputs of every record before it are acknowledged is what makes
//! at-least-once lose nothing; waiting for that at each commit (a flush)
//! kept a loop idle for about as long as it processed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};

use super::Tp;

/// Batches are counted in a ring of this many slots. A slot is reused only
/// after this many batches; a batch abandoned by a replay that still has
/// records in flight then only delays the batch that reuses its slot.
pub const RING: usize = 64;

/// Batches that may wait for acknowledgements before the loop stops and
/// flushes: the records a replay may repeat.
pub const MAX_IN_FLIGHT: usize = 4;

/// Per batch (its number modulo [`RING`]): records sent and not yet
/// acknowledged (delivered or failed). Shared with the producer's delivery
/// callback.
pub struct Unacknowledged([AtomicI64; RING]);

impl Default for Unacknowledged {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicI64::new(0)))
    }
}

impl Unacknowledged {
    pub fn sent(&self, batch: usize) {
        self.0[batch % RING].fetch_add(1, Ordering::Relaxed);
    }

    pub fn acknowledged(&self, batch: usize) {
        self.0[batch % RING].fetch_sub(1, Ordering::Relaxed);
    }

    fn settled(&self, batch: usize) -> bool {
        self.0[batch % RING].load(Ordering::Relaxed) == 0
    }
}

/// Closed batches whose records are not all acknowledged yet, oldest first,
/// each with the offsets it would commit.
#[derive(Default)]
pub struct InFlight {
    batches: VecDeque<(usize, BTreeMap<Tp, i64>)>,
    next: usize,
}

impl InFlight {
    /// The batch records sent now belong to.
    pub fn current(&self) -> usize {
        self.next
    }

    pub fn close(&mut self, positions: BTreeMap<Tp, i64>) {
        self.batches.push_back((self.next, positions));
        self.next = self.next.wrapping_add(1);
    }

    pub fn full(&self) -> bool {
        self.batches.len() >= MAX_IN_FLIGHT
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The offsets to commit now: those of the oldest batches that are
    /// acknowledged, up to the first that is not, merged (a later batch
    /// need not touch every partition an earlier one did).
    pub fn completed(&mut self, acks: &Unacknowledged) -> Option<BTreeMap<Tp, i64>> {
        let mut done: Option<BTreeMap<Tp, i64>> = None;
        while self.batches.front().is_some_and(|(b, _)| acks.settled(*b)) {
            let (_, offsets) = self.batches.pop_front().unwrap();
            done.get_or_insert_default().extend(offsets);
        }
        done
    }

    /// A replay starts from the committed offsets: the batches in flight
    /// are abandoned (their records may still arrive, as duplicates).
    pub fn abandon(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(i32, i64)]) -> BTreeMap<Tp, i64> {
        entries
            .iter()
            .map(|(p, o)| (("in".into(), *p), *o))
            .collect()
    }

    #[test]
    fn a_batch_commits_only_after_it_and_every_earlier_batch_is_acknowledged() {
        let acks = Unacknowledged::default();
        let mut flight = InFlight::default();
        acks.sent(flight.current());
        flight.close(offsets(&[(0, 10), (1, 5)]));
        acks.sent(flight.current());
        acks.sent(flight.current());
        flight.close(offsets(&[(0, 20)]));
        assert_eq!(flight.completed(&acks), None, "nothing acknowledged");
        acks.acknowledged(1);
        acks.acknowledged(1);
        assert_eq!(
            flight.completed(&acks),
            None,
            "batch 1 is done but batch 0 is not: committing 0→20 would skip its records"
        );
        acks.acknowledged(0);
        assert_eq!(
            flight.completed(&acks),
            Some(offsets(&[(0, 20), (1, 5)])),
            "both, merged, the later offset winning"
        );
        assert!(flight.is_empty());
    }

    #[test]
    fn an_abandoned_batch_in_a_reused_slot_only_delays() {
        let acks = Unacknowledged::default();
        let mut flight = InFlight::default();
        acks.sent(0);
        flight.close(offsets(&[(0, 1)]));
        flight.abandon();
        for _ in 1..RING {
            flight.close(BTreeMap::new());
            flight.completed(&acks);
        }
        assert_eq!(flight.current() % RING, 0, "slot 0 again");
        flight.close(offsets(&[(0, 99)]));
        assert_eq!(flight.completed(&acks), None, "the old record is still out");
        acks.acknowledged(0);
        assert_eq!(flight.completed(&acks), Some(offsets(&[(0, 99)])));
        assert!(!flight.full());
    }
}
