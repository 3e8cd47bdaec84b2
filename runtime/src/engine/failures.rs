//! What happens to a record that cannot go on as processed: passed over
//! (`onError.skip`), failed before anything of it is sent (an output too
//! large or to a topic that does not exist), refused by the broker before
//! (`refusals`), or failed in a step. Each follows `onError`: dead-lettered,
//! or its task stopped at it while the other tasks go on.

use millrace_crds::worker_status::{unix_ms, StoppedTask};
use millrace_crds::ErrorPolicy;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::refusals::{Origin, RefusedRecord};
use super::{record_size, Core, EngineError};
use crate::pipeline::record::dead_letter_headers;
use crate::processor::{InputRecord, OutputRecord, Processed, RecordError};

/// An output of the record cannot be produced: its error, in step `produce`.
fn produce_error(message: String) -> RecordError {
    RecordError {
        step: "produce".into(),
        message,
    }
}

impl Core {
    pub(super) fn is_stopped(&self, task: i32) -> bool {
        self.stopped.iter().any(|s| s.task == task)
    }

    pub(super) fn skipped(&self, record: &InputRecord<'_>) -> bool {
        !self.io.skip.is_empty()
            && self.io.skip.iter().any(|r| {
                r.offset == record.offset
                    && r.partition == record.partition
                    && r.topic.0 == record.topic
            })
    }

    /// A record's outputs go out, unless one of them cannot: one too large
    /// for the producer, or to a topic that does not exist, fails the
    /// record before anything of it is sent.
    pub(super) fn processed(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
        origin: Origin,
        processed: Processed,
    ) -> Result<(), EngineError> {
        if processed.filtered {
            self.metrics.filtered.inc();
        }
        if processed.unrouted {
            self.metrics.unrouted.inc();
        }
        if processed.late {
            self.metrics.late.inc();
        }
        let refusal = record_size::too_large(&processed.outputs, self.max_message_bytes)
            .or_else(|| self.destinations.missing(consumer, &processed.outputs));
        if let Some(message) = refusal {
            return self.failed(consumer, record, origin, produce_error(message));
        }
        processed
            .outputs
            .into_iter()
            .try_for_each(|out| self.send(out, origin))
    }

    /// A record the broker refused an output of, replayed: its error. When
    /// its dead-letter copy was refused too, nothing can take it: the
    /// loop stops at it, whatever the policy, rather than loop on it.
    pub(super) fn refused_again(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
        origin: Origin,
        refused: RefusedRecord,
    ) -> Result<(), EngineError> {
        let error = produce_error(refused.error);
        match refused.dead_letter_refused {
            None => self.failed(consumer, record, origin, error),
            Some(dead_letter) => {
                let error = RecordError {
                    message: format!(
                        "{}; its dead-letter copy was refused too: {dead_letter}",
                        error.message
                    ),
                    ..error
                };
                self.stop_at(consumer, record, error)
            }
        }
    }

    /// A send failed. Fenced: the transaction is lost; start over from the
    /// committed offsets once the placement has been read again. The
    /// transaction failed (an output of it was refused, say): it is
    /// aborted and replayed, as a failed commit is. Any other error stops
    /// the loop.
    pub(super) fn send_failed(
        &mut self,
        consumer: &BaseConsumer,
        e: EngineError,
    ) -> Result<(), EngineError> {
        match e {
            EngineError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)) => {
                self.reinitialise()?;
                self.checkpoint.discard();
                self.assign_resume_points(consumer)
            }
            EngineError::Kafka(e @ KafkaError::MessageProduction(RDKafkaErrorCode::State))
                if self.guarantee.transactional() =>
            {
                // Only an open transaction, never a closing one, takes
                // sends (`Checkpoint::route`): this aborts nothing else.
                self.serve_deliveries();
                let ended = self.transaction_ended(Err(e));
                self.commit_failed(consumer, ended.expect_err("ended with an error"))
            }
            e => Err(e),
        }
    }

    pub(super) fn failed(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
        origin: Origin,
        error: RecordError,
    ) -> Result<(), EngineError> {
        // A failed record changes no state, whatever its steps wrote before
        // the one that failed.
        self.record_writes.clear();
        match (self.io.error_policy, &self.io.dead_letter_topic) {
            (ErrorPolicy::DeadLetter, Some(dlq)) => {
                let out = OutputRecord {
                    topic: dlq.0.clone(),
                    key: record.key.map(<[u8]>::to_vec),
                    value: record.value.map(<[u8]>::to_vec),
                    headers: dead_letter_headers(&error, record),
                    timestamp: None,
                };
                let out = record_size::fit_dead_letter(out, self.max_message_bytes);
                self.send(out, origin)?;
                self.metrics.dead_lettered.inc();
                Ok(())
            }
            _ => self.stop_at(consumer, record, error),
        }
    }

    /// `onError: Stop` stops the record's task, and only it: what came
    /// before the record is committed (every task's), then the task's
    /// partitions are no longer consumed, so its committed offset stays at
    /// the record and a restart (the user's fix) resumes there. The other
    /// tasks go on. `/tasks` reports it, and the operator the StreamApp.
    fn stop_at(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
        error: RecordError,
    ) -> Result<(), EngineError> {
        // The open batch first (its records before this one), then, under
        // at-least-once, the batches in flight: every task's resume point is
        // then what was processed, and reassigning rewinds none of them.
        self.commit_processed(consumer)?;
        self.settle_offsets(consumer)?;
        let stopped = StoppedTask {
            task: record.partition,
            topic: record.topic.into(),
            partition: record.partition,
            offset: record.offset,
            step: error.step,
            error: error.message,
            since_ms: unix_ms(),
        };
        if self.rewound {
            // Committing what came before failed and the loop rewound: the
            // record comes again, and stops its task then, at the right
            // committed offset.
            return Ok(());
        }
        tracing::error!("{stopped}; the other tasks go on (onError policy Stop)");
        self.status.stop(stopped.clone());
        self.stopped.push(stopped);
        self.metrics.stopped_tasks.inc();
        self.assign_resume_points(consumer)
    }
}
