//! Fencing under at-least-once. Outputs are not transactional there, so the
//! operator's fence (a producer initialised with each of the worker's
//! transactional ids, `operator/src/handoff.rs`) would stop nothing: a
//! worker that missed the revoke of its tasks (cut off from the API
//! server, or paused) would go on processing them beside their new owner.
//!
//! So in a placed pod an at-least-once loop commits its offsets in
//! transactions of their own, holding no records, through a producer with
//! the transactional id an exactly-once loop would have. Once the operator
//! fenced it, the loop's next commit fails: it drops every task and reads
//! the placement again before processing anything, as a fenced exactly-once
//! loop does. A revoked task is processed at most until that commit, about
//! one commit interval after the fence (a batch's offsets are committed
//! once it closed and its outputs are acknowledged); Kafka Streams'
//! at-least-once zombie likewise stops at its failed commit. Outputs of
//! that stretch are duplicates, which at-least-once allows; the new owner
//! reads committed offsets with require_stable, so the zombie's open offset
//! transaction (aborted by the fence) never moves them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};

use super::checkpoint::Offsets;
use super::committer::{Committer, Pending, Progress};
use super::transaction::{init_transactions, DeliveryCounter};
use super::{clients, Core, EngineError, Heartbeat, ABORT_TIMEOUT, KAFKA_TIMEOUT};
use millrace_crds::worker_config::WorkerConfig;

/// A commit starts at most this often (offsets acknowledged meanwhile wait
/// for the next): a few transactions per second per loop at most for the
/// coordinator, whatever the commit interval.
const COMMIT_GAP: Duration = Duration::from_millis(250);

pub(super) struct OffsetFence {
    producer: Arc<BaseProducer<DeliveryCounter>>,
    committer: Committer<DeliveryCounter>,
    /// The commit under way and the offsets it carries.
    pending: Option<(Pending, Offsets)>,
    /// Acknowledged offsets not sent yet (newest per partition).
    owed: Offsets,
    last_started: Option<Instant>,
    /// Why the last commit failed, while its offsets are owed again.
    last_failure: Option<KafkaError>,
}

pub(super) enum Failure {
    /// The fence's producer was fenced, or is unusable: the loop must not
    /// process another record before reading its placement again.
    Fenced(String),
    /// A commit that had to be done (`wait`) failed: the caller must not
    /// go on as if the offsets were committed (a handoff, a stop).
    Failed(KafkaError),
}

impl OffsetFence {
    /// A producer with the loop's transactional id, initialised: this
    /// fences the loop's previous incarnation.
    pub fn start(
        config: &WorkerConfig,
        worker_id: &str,
        guard: (&AtomicBool, &Heartbeat),
    ) -> Result<Self, EngineError> {
        let producer: BaseProducer<DeliveryCounter> = clients::offset_fence(config, worker_id)
            .map_err(|e| EngineError::Config(e.to_string()))?
            .create_with_context(DeliveryCounter::default())?;
        init_transactions(&producer, guard)?;
        Ok(Self {
            producer: Arc::new(producer),
            committer: Committer::spawn(KAFKA_TIMEOUT),
            pending: None,
            owed: Offsets::new(),
            last_started: None,
            last_failure: None,
        })
    }

    /// Offsets wait to be sent, or a commit for its outcome.
    pub fn owes(&self) -> bool {
        self.pending.is_some() || !self.owed.is_empty()
    }

    /// Released tasks' offsets are no longer this loop's to commit (their
    /// next owner's would be moved back).
    pub fn forget(&mut self, tasks: &[i32]) {
        self.owed.retain(|(_, p), _| !tasks.contains(p));
        if let Some((_, sent)) = &mut self.pending {
            sent.retain(|(_, p), _| !tasks.contains(p));
        }
    }

    /// Owes `offsets` and commits what is owed unless a commit is under
    /// way or started less than `COMMIT_GAP` ago. `wait`: commits now and
    /// waits for the outcome (before a handoff, or stopping).
    pub fn commit(
        &mut self,
        consumer: &BaseConsumer,
        offsets: &Offsets,
        wait: bool,
    ) -> Result<(), Failure> {
        self.owed
            .extend(offsets.iter().map(|(tp, o)| (tp.clone(), *o)));
        if wait {
            self.settle()?;
            self.last_failure = None;
        } else {
            self.check(Duration::ZERO)?;
            let recent = self.last_started.is_some_and(|t| t.elapsed() < COMMIT_GAP);
            if self.pending.is_some() || recent {
                return Ok(());
            }
        }
        if self.owed.is_empty() {
            return Ok(());
        }
        let owed = std::mem::take(&mut self.owed);
        let (list, group) =
            Core::commit_arguments(consumer, &owed).map_err(|e| Failure::Fenced(e.to_string()))?;
        self.producer
            .begin_transaction()
            .map_err(|e| Failure::Fenced(format!("beginning an offset commit: {e}")))?;
        let pending = self.committer.commit(&self.producer, list, group);
        self.pending = Some((pending, owed));
        self.last_started = Some(Instant::now());
        if wait {
            self.settle()?;
            if let Some(e) = self.last_failure.take() {
                return Err(Failure::Failed(e));
            }
        }
        Ok(())
    }

    /// Waits for the commit under way, if any.
    fn settle(&mut self) -> Result<(), Failure> {
        while self.pending.is_some() {
            self.check(Duration::from_millis(100))?;
        }
        Ok(())
    }

    /// Picks up the outcome of the commit under way if it comes within
    /// `wait`. A failure other than a fence is aborted and its offsets are
    /// owed again (unless newer ones are), for the next commit.
    fn check(&mut self, wait: Duration) -> Result<(), Failure> {
        let Some((pending, _)) = &self.pending else {
            return Ok(());
        };
        let outcome = match pending.poll(wait) {
            Progress::Waiting => return Ok(()),
            Progress::Hung => {
                return Err(Failure::Fenced(
                    "an offset commit got no outcome past its deadline".into(),
                ))
            }
            Progress::Done(outcome) => outcome,
        };
        let (_, sent) = self.pending.take().expect("checked above");
        let Err(e) = outcome else {
            return Ok(());
        };
        let fatal = matches!(&e, KafkaError::Transaction(rd) if rd.is_fatal());
        if fatal || self.producer.abort_transaction(ABORT_TIMEOUT).is_err() {
            return Err(Failure::Fenced(e.to_string()));
        }
        tracing::warn!("offset commit failed: {e}; its offsets go with the next one");
        for (tp, offset) in sent {
            self.owed.entry(tp).or_insert(offset);
        }
        self.last_failure = Some(e);
        Ok(())
    }
}

impl Core {
    /// A placed at-least-once loop's fence still has offsets to commit.
    pub(super) fn fence_owes(&self) -> bool {
        matches!(&self.guarantee, super::Guarantee::AtLeastOnce { fence: Some(f) } if f.owes())
    }

    /// Released tasks: their offsets are not committed by this loop again.
    pub(super) fn fence_forget(&mut self, tasks: &[i32]) {
        if let super::Guarantee::AtLeastOnce { fence: Some(f) } = &mut self.guarantee {
            f.forget(tasks);
        }
    }

    /// Commits at-least-once offsets (`wait`: and waits for the outcome):
    /// in a placed pod through the loop's fence, otherwise as the
    /// consumer's offsets.
    pub(super) fn commit_offsets(
        &mut self,
        consumer: &BaseConsumer,
        offsets: &Offsets,
        wait: bool,
    ) -> Result<(), EngineError> {
        let super::Guarantee::AtLeastOnce { fence: Some(fence) } = &mut self.guarantee else {
            if !offsets.is_empty() {
                let mode = match wait {
                    true => CommitMode::Sync,
                    false => CommitMode::Async,
                };
                consumer.commit(&Self::offset_list(offsets)?, mode)?;
            }
            return Ok(());
        };
        let why = match fence.commit(consumer, offsets, wait) {
            Ok(()) => return Ok(()),
            Err(Failure::Failed(e)) => return Err(e.into()),
            Err(Failure::Fenced(why)) => why,
        };
        // A new fence producer fences the old one (which may still hold an
        // open offset transaction); the loop then reads the placement and
        // every owned task's committed offset afresh before processing.
        tracing::warn!(
            "offset commit fenced or failed for good ({why}): another worker may own these \
             tasks now; reading the placement again before processing"
        );
        self.metrics.fenced.inc();
        *fence = OffsetFence::start(
            &self.config,
            &self.worker_id,
            (&self.shutdown, &self.heartbeat),
        )?;
        self.placement_stale = true;
        Ok(())
    }
}
