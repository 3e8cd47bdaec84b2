//! Exactly-once without stopping for the commit.
//!
//! A transaction commits only once every output it holds is acknowledged
//! (librdkafka flushes first), and under load that wait took about half of
//! each loop's time (bench/README.md). So at the end of a commit interval
//! the batch is *closed* instead: its offsets are set aside and the loop
//! goes on consuming and evaluating, holding the next batch's outputs back
//! (the stash, `stash.rs`). The closed batch's transaction commits on a
//! helper thread (`committer`): its offsets are sent at once, the end
//! marker once its outputs are all acknowledged. When the loop sees the
//! outcome, a new transaction begins and the stash is sent into it.
//!
//! Why held back rather than sent at once: sent into the open transaction,
//! they would commit with offsets that do not cover their input yet (after
//! a crash, replayed into duplicates); sent by a second producer, they could
//! overtake the closed batch's outputs still in flight to the same
//! partition.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, KafkaResult};

use super::checkpoint::Closed;
use super::committer::{Committer, Progress};
use super::refusals::Origin;
use super::{Core, EngineError, Guarantee, KAFKA_TIMEOUT};
use crate::pipeline::record::OutputRecord;

impl Core {
    /// Ends the batch at a commit interval: at-least-once commits it,
    /// exactly-once closes it. One batch closes at a time, so offsets commit
    /// in order: while the one before is still closing (its
    /// acknowledgements late), this batch goes on, its outputs held back,
    /// and closes at the next interval instead of waiting now.
    pub(super) fn end_batch(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        if !self.guarantee.transactional() {
            return self.commit(consumer);
        }
        if self.checkpoint.closing().is_some() {
            return Ok(());
        }
        self.absorb_positions(consumer);
        self.close(consumer)
    }

    /// Exactly-once's only commit path: the open transaction gets the
    /// processed offsets and commits on the committer thread. Every other
    /// commit (shutdown, a placement change, a failing record) is this
    /// followed by `settle_closing`.
    pub(super) fn close(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        if !self.guarantee.transactional() {
            return self.commit_processed(consumer);
        }
        if self.checkpoint.closing().is_some() || !self.checkpoint.has_open_offsets() {
            return Ok(());
        }
        // Only skipped markers moved the offsets: an empty transaction
        // carries them.
        if !self.checkpoint.transaction_begun() && !self.begin()? {
            self.checkpoint.discard();
            return self.assign_resume_points(consumer);
        }
        // The batch's state changes join its transaction before its
        // offsets: they commit (or abort) together.
        if let Err(e) = self.send_changelog() {
            return self.send_failed(consumer, e);
        }
        crate::failpoint::reach("state.changelog-sent");
        let Guarantee::ExactlyOnce { flusher, committer } = &self.guarantee else {
            unreachable!("checked above: exactly-once");
        };
        let producer = &self.producer;
        self.checkpoint.close(|offsets| {
            let (list, group) = Self::commit_arguments(consumer, offsets)?;
            // Both at once: the flush sends the outputs still lingering
            // while the committer sends the offsets.
            flusher.flush(producer);
            Ok::<_, EngineError>(committer.commit(producer, list, group))
        })?;
        Ok(())
    }

    /// How long the loop may wait for a record: briefly while a batch
    /// closes, so its commit is not held up by an idle input.
    pub(super) fn poll_wait(&self, until_deadline: Duration) -> Duration {
        let most = if self.checkpoint.closing().is_some() {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        until_deadline.min(most)
    }

    /// Between records (delivery reports served just before): finishes the
    /// closing batch once its commit is over, or waits for it when the
    /// stash is full.
    pub(super) fn advance_closing(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        let Some(pending) = self.checkpoint.closing() else {
            return Ok(());
        };
        match pending.poll(Duration::ZERO) {
            Progress::Done(outcome) => self.closed(consumer, outcome),
            Progress::Waiting if !self.checkpoint.stash_full() => Ok(()),
            Progress::Waiting => self.settle_closing(consumer),
            Progress::Hung => self.commit_hung(consumer),
        }
    }

    /// Waits for the closing batch's commit, then sends the stash into a
    /// new transaction. Afterwards the loop is where it would be had it
    /// committed without closing: every other path (shutdown, a placement
    /// change, a failing record) calls this first.
    pub(super) fn settle_closing(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        let Some(pending) = self.checkpoint.closing() else {
            return Ok(());
        };
        // The commit waits for the outputs' acknowledgements, which count
        // once their reports are served: serve them while waiting.
        let outcome = loop {
            self.serve_deliveries();
            match pending.poll(Duration::from_millis(1)) {
                Progress::Done(outcome) => break outcome,
                Progress::Waiting => {}
                Progress::Hung => return self.commit_hung(consumer),
            }
        };
        self.closed(consumer, outcome)
    }

    /// The closing batch's commit never ended (`Progress::Hung`). A new
    /// producer with the same transactional id fences the stuck one (the
    /// coordinator aborts its open transaction, so whatever the stuck call
    /// does later is refused), a new committer thread takes the next
    /// commits, and the batch is replayed from the committed offsets, as
    /// after any failed commit.
    fn commit_hung(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        tracing::error!(
            "a commit had no outcome within its deadline (a librdkafka hang after a broker loss): \
             abandoning its producer and committer thread"
        );
        self.metrics.hung_commits.inc();
        if let Guarantee::ExactlyOnce { committer, .. } = &mut self.guarantee {
            *committer = Committer::spawn(KAFKA_TIMEOUT);
        }
        self.reinitialise()?;
        self.checkpoint.closed(false);
        self.commit_failed(consumer, EngineError::Kafka(KafkaError::Canceled))
    }

    /// The closing batch's commit is over. Failed: the transaction is
    /// aborted (or the producer replaced) before the checkpoint drops the
    /// batch and what was held, and the loop replays. Committed: the held
    /// outputs go into a new transaction.
    fn closed(
        &mut self,
        consumer: &BaseConsumer,
        outcome: KafkaResult<()>,
    ) -> Result<(), EngineError> {
        if let Err(e) = self.transaction_ended(outcome) {
            self.checkpoint.closed(false);
            return self.commit_failed(consumer, e);
        }
        let Some(Closed::Committed {
            offsets,
            since,
            held,
            writes,
        }) = self.checkpoint.closed(true)
        else {
            return Ok(());
        };
        // Committed: now, and only now, the store takes the batch's writes.
        // A crash before this leaves the store behind its changelog, which
        // the next start replays.
        crate::failpoint::reach("state.committed");
        self.apply_committed(&writes, &offsets)?;
        crate::failpoint::reach("state.applied");
        self.report_commit(&offsets);
        self.metrics
            .commit_seconds
            .observe(since.elapsed().as_secs_f64());
        if held.is_empty() {
            self.checkpoint.reuse(held);
            return Ok(());
        }
        if !self.begin()? {
            self.checkpoint.discard();
            return self.assign_resume_points(consumer);
        }
        for record in held.iter() {
            if let Err(e) = self.send_record(record) {
                return self.send_failed(consumer, e);
            }
        }
        self.checkpoint.reuse(held);
        Ok(())
    }

    /// Sends an output, or holds it back while a batch closes.
    pub(super) fn send(&mut self, out: OutputRecord, origin: Origin) -> Result<(), EngineError> {
        match self.checkpoint.route(out, origin) {
            Some(out) => self.send_now(&out, origin),
            None => Ok(()),
        }
    }
}
