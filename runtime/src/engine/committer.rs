//! Commits a closed batch's transaction on a helper thread, so the loop
//! goes on evaluating while the coordinator answers.
//!
//! A commit is three requests in a row: the offsets' partition added to the
//! transaction (AddOffsetsToTxn), the offsets written (TxnOffsetCommit) and
//! the end marker (EndTxn). Made by the loop itself, once its outputs were
//! acknowledged, they stopped it for about 16 ms of every 100 ms commit
//! interval in the benchmark (bench/README.md). Here the offsets are sent as
//! soon as the batch closes, while its last outputs are still on their way,
//! and the loop only picks the outcome up.
//!
//! Safe because nothing else touches the transaction meanwhile: while a
//! batch closes the loop holds every new output back (the stash), and it
//! begins the next transaction only once it has the outcome.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::TopicPartitionList;

/// One commit under way: its outcome, once the thread has it, and how long
/// it may take.
pub struct Pending {
    outcome: mpsc::Receiver<KafkaResult<()>>,
    deadline: Instant,
}

/// Where a commit is.
pub enum Progress {
    Done(KafkaResult<()>),
    Waiting,
    /// Past every bound its three steps have. librdkafka can block in
    /// `send_offsets_to_transaction` for good once a coordinator's broker
    /// is gone (confluentinc/librdkafka#5456: the call's timeout is not
    /// applied; #5511: a decommissioned broker stays cached as the group
    /// coordinator), seen here when the cluster's brokers crash in turn
    /// (tests/tests/broker_faults.rs). The thread and its producer cannot
    /// be got back: the loop abandons both.
    Hung,
}

impl Pending {
    /// The outcome if it comes within `wait`.
    pub fn poll(&self, wait: Duration) -> Progress {
        match self.outcome.recv_timeout(wait) {
            Ok(outcome) => Progress::Done(outcome),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= self.deadline => {
                Progress::Hung
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Progress::Waiting,
            // The thread panicked: the caller aborts and replays.
            Err(mpsc::RecvTimeoutError::Disconnected) => Progress::Done(Err(KafkaError::Canceled)),
        }
    }
}

struct Request<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
    done: mpsc::Sender<KafkaResult<()>>,
}

pub struct Committer<C: ProducerContext + 'static> {
    requests: mpsc::Sender<Request<C>>,
    timeout: Duration,
}

impl<C: ProducerContext + 'static> Committer<C> {
    /// A thread that commits on request; it ends when the committer is
    /// dropped. `timeout` bounds each of a commit's waits.
    pub fn spawn(timeout: Duration) -> Self {
        let (requests, pending) = mpsc::channel::<Request<C>>();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for request in pending {
                    let outcome = commit(&request, timeout);
                    // The loop may have stopped waiting (its producer was
                    // replaced): the outcome is then nobody's concern.
                    let _ = request.done.send(outcome);
                }
            })
            .expect("spawning the committer thread");
        Self { requests, timeout }
    }

    /// Starts committing `producer`'s open transaction with `offsets`. The
    /// caller must keep serving the producer's delivery reports until the
    /// outcome arrives: the commit waits for every output's acknowledgement,
    /// and an acknowledgement counts once its report is served.
    pub fn commit(
        &self,
        producer: &Arc<BaseProducer<C>>,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Pending {
        let (done, outcome) = mpsc::channel();
        // Three waits of `timeout` at most, and a little for the requests.
        let deadline = Instant::now() + 3 * self.timeout + Duration::from_secs(5);
        let request = Request {
            producer: producer.clone(),
            offsets,
            group,
            done,
        };
        // Fails only if the thread panicked: the request is then dropped
        // with its sender, and the caller sees the outcome disconnected
        // (aborts and replays) rather than waiting.
        let _ = self.requests.send(request);
        Pending { outcome, deadline }
    }
}

fn commit<C: ProducerContext>(request: &Request<C>, timeout: Duration) -> KafkaResult<()> {
    let producer = &request.producer;
    producer.send_offsets_to_transaction(&request.offsets, &request.group, timeout)?;
    // rust-rdkafka's commit_transaction flushes by polling for delivery
    // reports in 100 ms steps (and would take them from the loop); the
    // loop serves them, so wait in librdkafka's own flush, which returns as
    // soon as none is left.
    // SAFETY: the Arc keeps the native handle alive for the call;
    // rd_kafka_flush is thread-safe.
    let flushed = unsafe {
        rdkafka::bindings::rd_kafka_flush(
            producer.client().native_ptr(),
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    if flushed != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(KafkaError::Flush(RDKafkaErrorCode::from(flushed)));
    }
    producer.commit_transaction(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(deadline: Instant) -> (mpsc::Sender<KafkaResult<()>>, Pending) {
        let (done, outcome) = mpsc::channel();
        (done, Pending { outcome, deadline })
    }

    #[test]
    fn a_commit_without_an_outcome_is_waiting_until_its_deadline_then_hung() {
        let (_done, before) = pending(Instant::now() + Duration::from_secs(60));
        assert!(matches!(before.poll(Duration::ZERO), Progress::Waiting));
        let (_done, after) = pending(Instant::now());
        assert!(matches!(after.poll(Duration::ZERO), Progress::Hung));
    }

    #[test]
    fn an_outcome_counts_even_past_the_deadline_and_a_lost_thread_fails_the_commit() {
        let (done, late) = pending(Instant::now());
        done.send(Ok(())).unwrap();
        assert!(matches!(late.poll(Duration::ZERO), Progress::Done(Ok(()))));
        let (done, orphaned) = pending(Instant::now() + Duration::from_secs(60));
        drop(done);
        assert!(matches!(
            orphaned.poll(Duration::ZERO),
            Progress::Done(Err(KafkaError::Canceled))
        ));
    }
}
