//! Transactions: begin, commit with the input offsets, abort and replay,
//! and re-initialise a fenced producer. At-least-once commits a batch's
//! offsets once its outputs are acknowledged instead (see `in_flight`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millrace_crds::ProcessingGuarantee;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::checkpoint::Offsets;
use super::in_flight::Unacknowledged;
use super::refusals::{is_record_refusal, too_large_alone, Origin, Refusal, MAX_KEPT};
use super::{clients, Core, EngineError, Heartbeat, ABORT_TIMEOUT, KAFKA_TIMEOUT};

/// The first wait before a replay after failed commits, doubled each time
/// up to the second.
const REPLAY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REPLAY_BACKOFF: Duration = Duration::from_secs(5);
use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::worker_status::unix_ms;

/// Counts failed deliveries, and each batch's records not yet acknowledged
/// (the opaque of a record is its batch slot and origin, `refusals`):
/// under at-least-once a failure means no later offset may be committed
/// (the records are replayed instead), and a batch's offsets wait for its
/// acknowledgements. Refusals that are a record's own fault are kept, to
/// make that record's replay its error.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
    /// Delivery reports served, failed or not.
    reports: AtomicU64,
    pub unacknowledged: Unacknowledged,
    refused: Mutex<Vec<Refusal>>,
    /// The app's changelog topics, store by store.
    changelogs: Vec<String>,
    /// Next offset past the last delivered changelog record, per (store,
    /// partition): where the committed batch leaves each store.
    changelog_ends: Mutex<BTreeMap<(usize, i32), i64>>,
}

impl DeliveryCounter {
    pub(super) fn with_changelogs(changelogs: Vec<String>) -> Self {
        Self {
            changelogs,
            ..Self::default()
        }
    }

    /// The refusals kept since the last call.
    pub(super) fn take_refusals(&self) -> Vec<Refusal> {
        std::mem::take(&mut *self.refused.lock().unwrap())
    }

    /// The changelog ends delivered since the last call, as (task, store,
    /// next offset). Only one transaction's changelog records are ever in
    /// flight (sent at its close, the next batch's held back until it is
    /// over), so at its commit these are exactly its ends.
    pub(super) fn take_changelog_ends(&self) -> Vec<(i32, usize, i64)> {
        std::mem::take(&mut *self.changelog_ends.lock().unwrap())
            .into_iter()
            .map(|((store, task), next)| (task, store, next))
            .collect()
    }

    fn delivered(&self, topic: &str, partition: i32, offset: i64) {
        if let Some(store) = self.changelogs.iter().position(|c| c == topic) {
            let mut ends = self.changelog_ends.lock().unwrap();
            let end = ends.entry((store, partition)).or_default();
            *end = (*end).max(offset + 1);
        }
    }
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (batch, origin) = Origin::of_opaque(opaque);
        if let (Ok(message), false) = (result, self.changelogs.is_empty()) {
            self.delivered(message.topic(), message.partition(), message.offset());
        }
        if let Err((e, message)) = result {
            tracing::warn!("delivery failed: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
            let code = e.rdkafka_error_code();
            if code.is_some_and(is_record_refusal) {
                let mut refused = self.refused.lock().unwrap();
                if refused.len() < MAX_KEPT {
                    let headers = message.headers().map_or(0, |h| {
                        h.iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum()
                    });
                    let size = message.key_len() + message.payload_len() + headers;
                    refused.push(Refusal {
                        origin,
                        topic: message.topic().to_string(),
                        error: e.to_string(),
                        code: code.unwrap_or(RDKafkaErrorCode::Unknown),
                        size,
                    });
                }
            }
        }
        self.unacknowledged.acknowledged(batch);
        self.reports.fetch_add(1, Ordering::Relaxed);
    }
}

impl Core {
    /// Begins a transaction; `false` when the producer had to be
    /// re-initialised instead (nothing begun).
    pub(super) fn begin(&mut self) -> Result<bool, EngineError> {
        if let Err(e) = self.producer.begin_transaction() {
            tracing::warn!("begin_transaction: {e}; re-initialising the producer");
            self.reinitialise()?;
            return Ok(false);
        }
        self.checkpoint.began();
        Ok(true)
    }

    pub(super) fn offset_list(offsets: &Offsets) -> Result<TopicPartitionList, EngineError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(tpl)
    }

    /// Commits the batch. On failure the batch is undone (aborted, or not
    /// acknowledged) and its records are consumed again from the last
    /// committed offsets: output and offsets move together or not at all.
    pub(super) fn commit(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        self.absorb_positions(consumer);
        self.commit_processed(consumer)
    }

    /// The consumer's positions, past markers it skipped, join the open
    /// batch (`Checkpoint::absorb`).
    pub(super) fn absorb_positions(&mut self, consumer: &BaseConsumer) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        self.checkpoint.absorb(
            positions
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(position) => {
                        Some(((e.topic().to_string(), e.partition()), position))
                    }
                    _ => None,
                }),
        );
    }

    /// Commits exactly what was processed (no position absorbed): used when
    /// stopping at a failed record, which the consumer's position has passed.
    /// Waits for the commit (exactly-once: the closing batch first, then
    /// the rest through the same close).
    pub(super) fn commit_processed(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        if self.guarantee.transactional() {
            self.settle_closing(consumer)?;
            self.close(consumer)?;
            return self.settle_closing(consumer);
        }
        if !self.checkpoint.has_open_offsets()
            && self.checkpoint.nothing_in_flight()
            && !self.fence_owes()
        {
            return Ok(());
        }
        let started = Instant::now();
        match self.commit_at_least_once(consumer) {
            Ok(committed) => {
                if let Some(committed) = committed {
                    self.committed(&committed);
                }
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => self.commit_failed(consumer, e),
        }
    }

    /// A commit failed (and was aborted): the batch is processed again from
    /// the last committed offsets.
    pub(super) fn commit_failed(
        &mut self,
        consumer: &BaseConsumer,
        e: EngineError,
    ) -> Result<(), EngineError> {
        tracing::warn!("commit failed: {e}; replaying the batch from the last committed offsets");
        self.metrics.aborts.inc();
        self.replay(consumer)
    }

    /// At-least-once offsets now committed: where a replay resumes from.
    pub(super) fn committed(&mut self, committed: &Offsets) {
        self.checkpoint.committed(committed);
        self.report_commit(committed);
    }

    /// A commit is done (the checkpoint knows already): `/tasks` and the
    /// metrics say so.
    pub(super) fn report_commit(&mut self, committed: &Offsets) {
        self.failures_in_a_row = 0;
        self.refused.prune(committed);
        self.status
            .record_commit(committed.keys().map(|(_, p)| *p), unix_ms());
        self.metrics.commits.inc();
        self.publish_committed();
    }

    /// Starts over from the committed offsets: what was processed since
    /// (this batch, and under at-least-once the batches in flight) is
    /// processed again. Records whose outputs the broker refused are kept
    /// first, to fail when replayed (`refusals`); a replay that learnt of
    /// none after another failed commit waits first, longer each time, so
    /// a failure that is nobody's record (a broker away) is not hammered.
    pub(super) fn replay(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        // Reports already in are served: a refusal among them is kept now,
        // not after one more failed attempt.
        self.serve_deliveries();
        // Ends of changelog records that were not committed: none of them
        // may be recorded with a later batch.
        self.producer.context().take_changelog_ends();
        let taken = self.producer.context().take_refusals();
        let mut refusals = Vec::with_capacity(taken.len());
        for refusal in taken {
            let limit = self.topic_limit(&refusal.topic);
            if too_large_alone(&refusal, limit) {
                refusals.push(refusal);
            }
        }
        let dead_letter = self.io.dead_letter_topic.as_ref().map(|t| t.0.as_str());
        let traced = self.refused.keep(&self.sources, refusals, dead_letter);
        self.failures_in_a_row += 1;
        if traced == 0 && self.failures_in_a_row > 1 {
            let exponent = (self.failures_in_a_row - 2).min(6);
            let wait = (REPLAY_BACKOFF * 2u32.pow(exponent)).min(MAX_REPLAY_BACKOFF);
            tracing::warn!(
                "{} commits failed in a row; replaying in {wait:?}",
                self.failures_in_a_row
            );
            self.heartbeat.beat();
            std::thread::sleep(wait);
        }
        self.checkpoint.discard();
        self.rewound = true;
        self.assign_resume_points(consumer)
    }

    /// A topic's `max.message.bytes`, asked of the broker once per topic
    /// (only after a size refusal).
    fn topic_limit(&mut self, topic: &str) -> Option<usize> {
        if let Some((_, limit)) = self.topic_limits.iter().find(|(t, _)| t == topic) {
            return *limit;
        }
        let limit = super::broker_limits::topic_max_message_bytes(&self.config, topic);
        self.topic_limits.push((topic.to_string(), limit));
        limit
    }

    /// What a transaction's offsets are sent with.
    pub(super) fn commit_arguments(
        consumer: &BaseConsumer,
        offsets: &Offsets,
    ) -> Result<(TopicPartitionList, ConsumerGroupMetadata), EngineError> {
        let group = consumer
            .group_metadata()
            .ok_or_else(|| EngineError::Config("the consumer has no group metadata".into()))?;
        Ok((Self::offset_list(offsets)?, group))
    }

    /// The open transaction's commit is over: on failure it is aborted (or
    /// the producer re-initialised) and the caller replays.
    pub(super) fn transaction_ended(&mut self, result: KafkaResult<()>) -> Result<(), EngineError> {
        self.checkpoint.transaction_ended();
        if let Err(e) = result {
            let fatal = matches!(&e, KafkaError::Transaction(rd) if rd.is_fatal());
            if fatal || self.producer.abort_transaction(ABORT_TIMEOUT).is_err() {
                // Fenced (another incarnation of this worker took over) or
                // the producer is unusable: start a new one, which aborts
                // whatever this one left open.
                self.reinitialise()?;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Closes the batch and commits the offsets of the batches whose outputs
    /// are all acknowledged, without flushing unless too many wait (or the
    /// worker stops). Returns the offsets committed.
    pub(super) fn commit_at_least_once(
        &mut self,
        consumer: &BaseConsumer,
    ) -> Result<Option<Offsets>, EngineError> {
        let stopping = self.shutdown.load(Ordering::Relaxed);
        self.checkpoint.end_batch();
        if stopping || self.checkpoint.in_flight_full() {
            self.producer.flush(KAFKA_TIMEOUT)?;
        } else {
            self.serve_deliveries();
        }
        self.check_deliveries()?;
        self.commit_acknowledged_batches(consumer, stopping)
    }

    /// Between commits (every few records): commits the batches whose
    /// outputs were acknowledged since, so a crash replays less.
    pub(super) fn commit_acknowledged(
        &mut self,
        consumer: &BaseConsumer,
    ) -> Result<(), EngineError> {
        // Offsets the fence held back go out once the loop is idle too.
        if self.guarantee.transactional()
            || (self.checkpoint.nothing_in_flight() && !self.fence_owes())
        {
            return Ok(());
        }
        let outcome = self
            .check_deliveries()
            .and_then(|()| self.commit_acknowledged_batches(consumer, false));
        match outcome {
            Ok(Some(done)) => {
                self.committed(&done);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!("{e}; replaying from the last committed offsets");
                self.metrics.aborts.inc();
                self.replay(consumer)
            }
        }
    }

    fn commit_acknowledged_batches(
        &mut self,
        consumer: &BaseConsumer,
        stopping: bool,
    ) -> Result<Option<Offsets>, EngineError> {
        let done = self
            .checkpoint
            .acknowledged(&self.producer.context().unacknowledged);
        // The outputs are acknowledged, so these offsets lose nothing; not
        // waiting for the coordinator lets the loop go on processing. A
        // commit that fails is superseded by the next one, and before a
        // task is handed over or the worker stops the offsets are committed
        // again, waiting (`settle_offsets`): at worst records are processed
        // twice, which at-least-once allows. With nothing new the fence
        // still hears how its last commit went (a fenced loop stops soon).
        self.commit_offsets(consumer, done.as_ref().unwrap_or(&Offsets::new()), stopping)?;
        Ok(done)
    }

    /// Serves every delivery report waiting. A poll serves one event (of
    /// one produce response's records), so one poll per few records lets
    /// reports pile up: polled until one serves nothing.
    pub(super) fn serve_deliveries(&self) {
        let reports = &self.producer.context().reports;
        loop {
            let before = reports.load(Ordering::Relaxed);
            self.producer.poll(Duration::ZERO);
            if reports.load(Ordering::Relaxed) == before {
                break;
            }
        }
    }

    /// A failed delivery since the last check: nothing after the last
    /// committed offsets may be committed; the caller replays.
    fn check_deliveries(&mut self) -> Result<(), EngineError> {
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed != self.failed_at_last_commit {
            self.failed_at_last_commit = failed;
            return Err(EngineError::Undelivered(failed));
        }
        Ok(())
    }

    /// Before a task is handed over: under at-least-once, waits for the
    /// batches in flight and commits the owned partitions' offsets, waiting
    /// for the coordinator, so that a task's next owner starts where this
    /// loop finished rather than a few batches earlier. Under exactly-once,
    /// commits the closing batch and whatever was processed since.
    pub(super) fn settle_offsets(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        if self.guarantee.transactional() {
            return self.commit_processed(consumer);
        }
        if !self.checkpoint.nothing_in_flight() {
            self.producer.flush(KAFKA_TIMEOUT)?;
            match self.check_deliveries() {
                Ok(()) => {
                    let acks = &self.producer.context().unacknowledged;
                    if let Some(done) = self.checkpoint.acknowledged(acks) {
                        self.committed(&done);
                    }
                }
                Err(e) => {
                    // The next owner (or this loop) resumes from the last
                    // offsets whose outputs were all acknowledged.
                    tracing::warn!("{e}; replaying from the last committed offsets");
                    self.replay(consumer)?;
                }
            }
        }
        self.commit_offsets(consumer, &self.checkpoint.committed_offsets(), true)
    }

    pub(super) fn reinitialise(&mut self) -> Result<(), EngineError> {
        tracing::warn!("re-initialising the producer (fenced or unusable); the placement is read again before processing");
        self.metrics.fenced.inc();
        self.producer = Arc::new(new_producer(
            &self.config,
            &self.worker_id,
            self.changelogs(),
            (&self.shutdown, &self.heartbeat),
        )?);
        self.checkpoint.transaction_ended();
        self.placement_stale = true;
        Ok(())
    }

    /// Publishes the committed offsets for the lag watcher and `/tasks`.
    pub(super) fn publish_committed(&mut self) {
        let committed = self.checkpoint.committed_offsets();
        let mut shared = self.status.committed.lock().unwrap();
        // Only this loop's partitions: other loops publish theirs.
        for tp in &self.published {
            shared.remove(tp);
        }
        self.published = committed.keys().cloned().collect();
        shared.extend(committed);
    }
}

/// A producer ready to work: under ExactlyOnce, `init_transactions` has
/// succeeded (retried while the broker is unavailable, never skipped).
pub(super) fn new_producer(
    config: &WorkerConfig,
    worker_id: &str,
    changelogs: &[String],
    (shutdown, heartbeat): (&AtomicBool, &Heartbeat),
) -> Result<BaseProducer<DeliveryCounter>, EngineError> {
    let producer: BaseProducer<DeliveryCounter> = clients::producer(config, worker_id)
        .map_err(|e| EngineError::Config(e.to_string()))?
        .create_with_context(DeliveryCounter::with_changelogs(changelogs.to_vec()))?;
    if config.processing_guarantee != ProcessingGuarantee::ExactlyOnce {
        return Ok(producer);
    }
    init_transactions(&producer, (shutdown, heartbeat))?;
    Ok(producer)
}

/// `init_transactions`, retried while the broker is unavailable (never
/// skipped): fences every earlier producer with the same transactional id
/// and aborts what it left open.
pub(super) fn init_transactions<C: ProducerContext>(
    producer: &BaseProducer<C>,
    (shutdown, heartbeat): (&AtomicBool, &Heartbeat),
) -> Result<(), EngineError> {
    // librdkafka looks for the transaction coordinator through a broker it
    // is connected to; called before any connection is up, it retries only
    // after 500 ms, which was most of a worker's start (bench/README.md). A
    // metadata request waits for the first connection. Its error, if any,
    // is init_transactions' to report.
    let _ = producer.client().fetch_metadata(None, KAFKA_TIMEOUT);
    let mut backoff = Duration::from_millis(200);
    loop {
        match producer.init_transactions(KAFKA_TIMEOUT) {
            Ok(()) => return Ok(()),
            // Retrying would not help: the operator's and the user's fix.
            Err(KafkaError::Transaction(e))
                if e.code() == RDKafkaErrorCode::TransactionalIdAuthorizationFailed =>
            {
                return Err(EngineError::Config(format!(
                    "the app's Kafka principal may not use its transactional ids ({e}): grant \
                     Write and Describe on the TransactionalId prefix '<applicationId>-' \
                     (docs/security.md; needed under AtLeastOnce too, for fencing)"
                )));
            }
            Err(e) if !shutdown.load(Ordering::Relaxed) => {
                tracing::warn!("init_transactions: {e}; retrying in {backoff:?}");
                heartbeat.beat();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
