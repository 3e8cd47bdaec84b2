//! A loop's checkpoint: where each partition resumes, what the open batch
//! has processed, and what waits for a commit. It is the one place the
//! commit order is decided; it does no I/O. `Core` asks it what to do and
//! does that against Kafka, in the order given here.
//!
//! Exactly-once: a batch is one transaction.
//! 1. A record's outputs are sent into the open transaction
//!    ([`Checkpoint::route`] says send), then its next offset joins the open
//!    batch ([`Checkpoint::processed`]).
//! 2. At the commit interval the batch closes ([`Checkpoint::close`]): its
//!    offsets leave the open batch and go to the transaction with the commit
//!    request. One batch closes at a time, so offsets commit in order.
//! 3. While it closes, outputs are held back ([`Checkpoint::route`] says
//!    held): sent into the closing transaction they would commit with
//!    offsets that do not cover their input (duplicates after a crash).
//! 4. The outcome ([`Checkpoint::closed`]). Committed: the batch's offsets
//!    become the resume points, and only then are the held outputs handed
//!    out, to be sent into the next transaction. Failed (the caller has
//!    aborted the transaction or replaced the producer first): the open
//!    batch and the held outputs are dropped and the loop rewinds to the
//!    resume points, so everything not committed is processed again.
//!
//! At-least-once: a batch is a set of offsets waiting for acknowledgements.
//! 1. Outputs are sent at once, tagged with the open batch's number
//!    ([`Checkpoint::batch_number`]); offsets join the open batch.
//! 2. At the commit interval the batch joins those in flight
//!    ([`Checkpoint::end_batch`]).
//! 3. A batch's offsets are handed out for commit only once its outputs and
//!    those of every earlier batch are acknowledged
//!    ([`Checkpoint::acknowledged`]): an offset committed earlier would
//!    skip records whose outputs may still fail.
//! 4. Committed ([`Checkpoint::committed`]), they become resume points.
//!
//! State travels with the offsets (exactly-once only; docs/state-store.md):
//! 1. A record's store writes join the open batch with its offset, and only
//!    if the record succeeded ([`Checkpoint::keep_writes`]); a failed one's
//!    are dropped by the caller.
//! 2. When the batch closes, its writes go with it (lent out first,
//!    [`Checkpoint::lend_writes`], for the caller to send to the changelogs
//!    inside the transaction). Records read through the open and closing writes to the
//!    store ([`Checkpoint::pending_writes`]).
//! 3. Committed: [`Closed::Committed`] hands the writes out, for the caller
//!    to apply to the store with the changelog offsets they reached. Failed,
//!    or [`Checkpoint::discard`]: dropped with the batch, the store never
//!    saw them, and the replay recomputes them.

use std::collections::BTreeMap;
use std::time::Instant;

use rdkafka::Offset;

use super::in_flight::{InFlight, Unacknowledged};
use super::refusals::Origin;
use super::stash::Stash;
use super::Tp;
use crate::pipeline::record::OutputRecord;
use crate::state::Writes;

/// Next offset to commit per partition.
pub(super) type Offsets = BTreeMap<Tp, i64>;

/// `C` is what the caller waits on for a closing batch's outcome (the
/// committer's reply; `()` in tests).
pub(super) struct Checkpoint<C> {
    /// Where each owned partition resumes after a rewind: its last committed
    /// offset, or where it started.
    resume: BTreeMap<Tp, Offset>,
    /// The open batch: next offset per partition of what it processed.
    open: Offsets,
    /// The open batch's store writes.
    open_writes: Writes,
    waiting: Waiting<C>,
}

/// What a guarantee keeps between a batch's end and its commit.
enum Waiting<C> {
    Transaction {
        /// A transaction is open on the producer.
        begun: bool,
        closing: Option<Closing<C>>,
        /// Outputs held back while a batch closes.
        stash: Stash,
    },
    Acknowledgements(InFlight),
}

/// A batch whose records are all processed and sent, its transaction
/// committing.
struct Closing<C> {
    offsets: Offsets,
    writes: Writes,
    since: Instant,
    outcome: C,
}

/// A closed batch's commit is over.
pub(super) enum Closed {
    /// Its offsets are the resume points now; `held` are the outputs held
    /// back meanwhile, to be sent into the next transaction, in order.
    Committed {
        offsets: Offsets,
        since: Instant,
        held: Stash,
        /// Its store writes, to apply now.
        writes: Writes,
    },
    /// It and everything after it are dropped: rewind to the resume points.
    Failed,
}

impl<C> Checkpoint<C> {
    pub fn exactly_once() -> Self {
        Self::with(Waiting::Transaction {
            begun: false,
            closing: None,
            stash: Stash::default(),
        })
    }

    pub fn at_least_once() -> Self {
        Self::with(Waiting::Acknowledgements(InFlight::default()))
    }

    fn with(waiting: Waiting<C>) -> Self {
        Self {
            resume: BTreeMap::new(),
            open: Offsets::new(),
            open_writes: Writes::default(),
            waiting,
        }
    }

    // Where partitions resume.

    pub fn resume_at(&mut self, tp: Tp, offset: Offset) {
        self.resume.insert(tp, offset);
    }

    pub fn resume_points(&self) -> impl Iterator<Item = (&Tp, &Offset)> {
        self.resume.iter()
    }

    /// The committed offsets of the owned partitions (those that have one).
    pub fn committed_offsets(&self) -> Offsets {
        self.resume
            .iter()
            .filter_map(|(tp, o)| match o {
                Offset::Offset(o) => Some((tp.clone(), *o)),
                _ => None,
            })
            .collect()
    }

    pub fn owned_partitions(&self) -> Vec<i32> {
        self.resume.keys().map(|(_, p)| *p).collect()
    }

    /// Stops tracking these tasks (committed before, by the caller).
    pub fn release(&mut self, tasks: &[i32]) {
        self.resume.retain(|(_, p), _| !tasks.contains(p));
        self.open.retain(|(_, p), _| !tasks.contains(p));
        self.open_writes.drop_tasks(|t| tasks.contains(&t));
    }

    /// Forgets every task: the caller assigns afresh from committed offsets.
    pub fn forget(&mut self) {
        self.discard();
        self.resume.clear();
    }

    // The open batch.

    /// A record is processed (its outputs sent or held): its partition goes
    /// on from `next`. Looked up by `&str` first: allocating the key for
    /// every record showed in the profile.
    pub fn processed(&mut self, topic: &str, partition: i32, next: i64) {
        let known = self
            .open
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic);
        match known {
            Some((_, offset)) => *offset = next,
            None => {
                self.open.insert((topic.to_string(), partition), next);
            }
        }
    }

    /// Moves each owned partition's offset to the consumer's position where
    /// that is further: past transaction markers and aborted records, which
    /// the consumer skips. Committed offsets then reach the last stable
    /// offset and an idle app shows lag 0, not 1 per marker (KEDA #5675).
    /// Only partitions with a known offset (processed, or committed) move:
    /// one never assigned, or resumed from its beginning with nothing
    /// processed yet, is left out.
    pub fn absorb(&mut self, positions: impl IntoIterator<Item = (Tp, i64)>) {
        for (tp, position) in positions {
            let known = self.open.get(&tp).copied().or(match self.resume.get(&tp) {
                Some(Offset::Offset(o)) => Some(*o),
                _ => None,
            });
            if known.is_some_and(|k| position > k) {
                self.open.insert(tp, position);
            }
        }
    }

    /// Every owned partition's committed offset joins the open batch where
    /// the batch has none, so the next commit writes it again. The group
    /// has no members (workers never join it), and the broker drops such a
    /// group's offsets `offsets.retention.minutes` after their last commit:
    /// an idle partition would then be read again from its beginning, its
    /// outputs duplicated.
    pub fn refresh_committed(&mut self) {
        for (tp, offset) in &self.resume {
            if let Offset::Offset(o) = offset {
                self.open.entry(tp.clone()).or_insert(*o);
            }
        }
    }

    /// A succeeded record's writes (`record`, left empty) join the open
    /// batch.
    pub fn keep_writes(&mut self, record: &mut Writes) {
        if !record.is_empty() {
            self.open_writes.absorb(record);
        }
    }

    /// Writes not in the store yet, newest first: the open batch's, then
    /// the closing one's.
    pub fn pending_writes(&self) -> [Option<&Writes>; 2] {
        let closing = match &self.waiting {
            Waiting::Transaction {
                closing: Some(c), ..
            } => Some(&c.writes),
            _ => None,
        };
        [Some(&self.open_writes), closing]
    }

    /// The open batch's writes, lent out to be sent to the changelogs
    /// inside its transaction before [`Checkpoint::close`] moves them, and
    /// given back once sent.
    pub fn lend_writes(&mut self) -> Writes {
        std::mem::take(&mut self.open_writes)
    }

    pub fn give_back_writes(&mut self, writes: Writes) {
        self.open_writes = writes;
    }

    pub fn has_open_offsets(&self) -> bool {
        !self.open.is_empty()
    }

    /// The opaque records sent now carry: their batch, for at-least-once's
    /// acknowledgements.
    pub fn batch_number(&self) -> usize {
        match &self.waiting {
            Waiting::Acknowledgements(in_flight) => in_flight.current(),
            Waiting::Transaction { .. } => 0,
        }
    }

    /// An output to send now, or `None` when it is held back because a
    /// batch is closing.
    pub fn route(&mut self, out: OutputRecord, origin: Origin) -> Option<OutputRecord> {
        match &mut self.waiting {
            Waiting::Transaction {
                closing: Some(_),
                stash,
                ..
            } => {
                stash.push(out, origin);
                None
            }
            _ => Some(out),
        }
    }

    /// Everything since the last commit is dropped: the caller rewinds to
    /// the resume points. Only once the transaction holding it has ended
    /// (aborted, or its producer replaced): a closing batch dropped with its
    /// transaction still open would commit with the next one's offsets.
    pub fn discard(&mut self) {
        self.open.clear();
        self.open_writes.clear();
        match &mut self.waiting {
            Waiting::Transaction { closing, stash, .. } => {
                *closing = None;
                stash.clear();
            }
            Waiting::Acknowledgements(in_flight) => in_flight.abandon(),
        }
    }

    /// Offsets whose commit is done: where a rewind resumes from.
    pub fn committed(&mut self, offsets: &Offsets) {
        for (tp, offset) in offsets {
            self.resume.insert(tp.clone(), Offset::Offset(*offset));
        }
    }

    // Exactly-once.

    pub fn transaction_begun(&self) -> bool {
        matches!(self.waiting, Waiting::Transaction { begun: true, .. })
    }

    pub fn began(&mut self) {
        if let Waiting::Transaction { begun, .. } = &mut self.waiting {
            *begun = true;
        }
    }

    /// The producer's transaction is over (committed, aborted, or the
    /// producer replaced).
    pub fn transaction_ended(&mut self) {
        if let Waiting::Transaction { begun, .. } = &mut self.waiting {
            *begun = false;
        }
    }

    pub fn closing(&self) -> Option<&C> {
        match &self.waiting {
            Waiting::Transaction {
                closing: Some(c), ..
            } => Some(&c.outcome),
            _ => None,
        }
    }

    /// Held outputs are at their limit: the loop waits for the commit.
    pub fn stash_full(&self) -> bool {
        matches!(&self.waiting, Waiting::Transaction { stash, .. } if stash.full())
    }

    /// Closes the open batch when it holds offsets and no other batch is
    /// closing: `start` gets its offsets and starts the commit (in the open
    /// transaction). Returns whether a batch closed; when `start` fails
    /// nothing changes.
    pub fn close<E>(&mut self, start: impl FnOnce(&Offsets) -> Result<C, E>) -> Result<bool, E> {
        let Waiting::Transaction { closing, .. } = &mut self.waiting else {
            return Ok(false);
        };
        if closing.is_some() || self.open.is_empty() {
            return Ok(false);
        }
        let outcome = start(&self.open)?;
        *closing = Some(Closing {
            offsets: std::mem::take(&mut self.open),
            writes: std::mem::take(&mut self.open_writes),
            since: Instant::now(),
            outcome,
        });
        Ok(true)
    }

    /// The closing batch's commit is over: `committed` or not. The
    /// transaction has ended either way. `None` when no batch was closing.
    pub fn closed(&mut self, committed: bool) -> Option<Closed> {
        let Waiting::Transaction {
            begun,
            closing,
            stash,
        } = &mut self.waiting
        else {
            return None;
        };
        let done = closing.take()?;
        *begun = false;
        if !committed {
            self.discard();
            return Some(Closed::Failed);
        }
        let held = std::mem::take(stash);
        self.committed(&done.offsets);
        Some(Closed::Committed {
            offsets: done.offsets,
            since: done.since,
            held,
            writes: done.writes,
        })
    }

    /// Gives a released stash back, emptied, to keep its buffers.
    pub fn reuse(&mut self, mut released: Stash) {
        if let Waiting::Transaction { stash, .. } = &mut self.waiting {
            if stash.is_empty() {
                released.clear();
                *stash = released;
            }
        }
    }

    // At-least-once.

    pub fn end_batch(&mut self) {
        if let Waiting::Acknowledgements(in_flight) = &mut self.waiting {
            in_flight.close(std::mem::take(&mut self.open));
        }
    }

    pub fn in_flight_full(&self) -> bool {
        matches!(&self.waiting, Waiting::Acknowledgements(f) if f.full())
    }

    pub fn nothing_in_flight(&self) -> bool {
        match &self.waiting {
            Waiting::Acknowledgements(f) => f.is_empty(),
            Waiting::Transaction { .. } => true,
        }
    }

    /// The offsets that may be committed now: those of the oldest batches
    /// whose outputs are all acknowledged, up to the first that is not.
    pub fn acknowledged(&mut self, acks: &Unacknowledged) -> Option<Offsets> {
        match &mut self.waiting {
            Waiting::Acknowledgements(in_flight) => in_flight.completed(acks),
            Waiting::Transaction { .. } => None,
        }
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
