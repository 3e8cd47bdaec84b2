//! The processing engine (design brief D2): consume with `read_committed`
//! from assigned tasks, process, produce, and every commit interval commit
//! the outputs together with the input offsets in one Kafka transaction.
//! At-least-once is the same loop with a flush and an offset commit instead.

mod assignment;
mod broker_limits;
mod checkpoint;
pub mod clients;
mod closing;
mod committer;
mod counters;
mod destinations;
mod failures;
mod fence;
mod flusher;
mod in_flight;
pub mod rate_limit;
mod record_size;
mod refusals;
mod stash;
mod stateful;
mod transaction;

use checkpoint::Checkpoint;
use counters::TopicCounters;
use refusals::{Origin, Refused, Sources};

/// The commit threads, for the broker tests in `tests/` only: they are
/// adapters over librdkafka, tested against a real broker there.
#[cfg(feature = "broker-tests")]
pub mod broker_tests {
    pub use super::committer::{Committer, Progress};
    pub use super::flusher::Flusher;
}

use transaction::new_producer;
pub use transaction::DeliveryCounter;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_crds::ProcessingGuarantee;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::metrics::{Metrics, Status};
use crate::placement::TaskSource;
use crate::processor::{InputRecord, Io, OutputRecord, Processor};
use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::worker_status::{unix_ms, StoppedTask};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an abort may take before the producer is re-initialised
/// instead. Either ends the transaction safely (a new producer with the
/// same transactional id fences the old one and the coordinator aborts what
/// it left open); a producer whose transaction the broker already aborted
/// (a worker stalled past its timeout) can hang in the abort for all of
/// `KAFKA_TIMEOUT`, and processing with it.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(5);
/// Longest a loop goes without serving delivery reports and closing work.
const SERVICE_INTERVAL: Duration = Duration::from_millis(5);

/// How often the source topics' partition counts are read again: partitions
/// added to a running app's sources become tasks without a restart.
const TASK_COUNT_REFRESH: Duration = Duration::from_secs(30);

/// A loop's heartbeat for `/healthz`: it beats once per commit interval and
/// in every wait for the broker.
pub(crate) struct Heartbeat {
    status: Arc<Status>,
    index: usize,
}

impl Heartbeat {
    /// Silent this long, a loop is stuck: longer than any wait of a healthy
    /// one (a commit waits for Kafka at most three times `KAFKA_TIMEOUT`),
    /// and than two transactions.
    fn start(status: &Arc<Status>, config: &WorkerConfig) -> Self {
        let floor = 3 * KAFKA_TIMEOUT + Duration::from_secs(30);
        let transactions = 2 * config.transaction_timeout_ms + config.commit_interval_ms;
        let limit_ms = (floor.as_millis() as u64).max(transactions);
        Self {
            index: status.register_loop(unix_ms(), limit_ms),
            status: status.clone(),
        }
    }

    fn beat(&self) {
        self.status.beat(self.index, unix_ms());
    }
}

/// Why the engine stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad configuration or topics: exits 2 with this line.
    #[error("{0}")]
    Config(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A processing loop panicked (a bug, or a custom processor's); the
    /// worker stops (exit 1) with what the other loops processed committed.
    #[error("a processing loop panicked: {0}")]
    Panicked(String),
    /// At-least-once: records of the batch failed to deliver (total failed
    /// deliveries so far); the batch is replayed, its offsets not committed.
    #[error("{0} deliveries have failed so far; replaying the batch")]
    Undelivered(u64),
    /// The state store failed (a disk error) or could not be restored: the
    /// worker stops (exit 1); on restart the store is restored from the
    /// changelog, so nothing committed is lost.
    #[error("{0}")]
    State(String),
}

impl From<crate::state::StoreError> for EngineError {
    fn from(e: crate::state::StoreError) -> Self {
        EngineError::State(e.to_string())
    }
}

type Tp = (String, i32);

/// How a loop commits, with what only that guarantee needs.
enum Guarantee {
    /// Each batch is one transaction, closed at the commit interval and
    /// committed on a helper thread while the loop goes on (`closing`).
    ExactlyOnce {
        /// Sends a closed batch's last records without lingering.
        flusher: flusher::Flusher<DeliveryCounter>,
        /// Commits a closed batch while the loop goes on.
        committer: committer::Committer<DeliveryCounter>,
    },
    /// A batch's offsets are committed once its outputs are acknowledged
    /// (`in_flight`); in a placed pod through the loop's fence, so the
    /// operator can stop it processing revoked tasks (`fence`).
    AtLeastOnce { fence: Option<fence::OffsetFence> },
}

impl Guarantee {
    fn of(
        config: &WorkerConfig,
        worker_id: &str,
        guard: (&AtomicBool, &Heartbeat),
    ) -> Result<Self, EngineError> {
        Ok(match config.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => Guarantee::ExactlyOnce {
                flusher: flusher::Flusher::spawn(),
                committer: committer::Committer::spawn(KAFKA_TIMEOUT),
            },
            // Only the operator moves tasks between workers, and fences.
            ProcessingGuarantee::AtLeastOnce => Guarantee::AtLeastOnce {
                fence: match config.placement_config_map {
                    Some(_) => Some(fence::OffsetFence::start(config, worker_id, guard)?),
                    None => None,
                },
            },
        })
    }

    fn transactional(&self) -> bool {
        matches!(self, Guarantee::ExactlyOnce { .. })
    }

    /// What a loop of this guarantee keeps between a batch's end and its
    /// commit.
    fn checkpoint(&self) -> Checkpoint<committer::Pending> {
        match self {
            Guarantee::ExactlyOnce { .. } => Checkpoint::exactly_once(),
            Guarantee::AtLeastOnce { .. } => Checkpoint::at_least_once(),
        }
    }
}

/// What a worker's loops share: its metrics, its `/tasks` status and the
/// shutdown flag its signal handler sets.
#[derive(Clone, Default)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub shutdown: Arc<AtomicBool>,
    /// The worker's state store, when the app has stateful steps.
    pub state: Option<crate::state::State>,
}

pub struct Engine<P> {
    /// Apart from the rest: a consumed record borrows the consumer while the
    /// rest of the engine processes it.
    consumer: BaseConsumer,
    processor: P,
    core: Core,
    tasks: Box<dyn TaskSource>,
    /// Fraction of a commit interval this loop's cycle is shifted by.
    phase: f64,
}

struct Core {
    config: WorkerConfig,
    worker_id: String,
    io: Io,
    producer: Arc<BaseProducer<DeliveryCounter>>,
    guarantee: Guarantee,
    /// Resume points, the open batch and what waits for its commit: the
    /// commit order (`checkpoint.rs`).
    checkpoint: Checkpoint<committer::Pending>,
    /// The producer was re-initialised (fenced): the placement must be read
    /// again before anything more is processed.
    placement_stale: bool,
    /// `maxRecordsPerSecond`, shared by the worker's loops.
    rate_limit: Option<Arc<rate_limit::RateLimit>>,
    /// Partitions per source topic (and join table).
    source_partitions: i32,
    /// Tasks: the sources' partitions, or more with a set repartition
    /// count (`Partitioning::task_count`).
    task_count: i32,
    /// The producer's `message.max.bytes`: larger outputs are record errors.
    max_message_bytes: usize,
    /// How often every owned partition's committed offset is committed
    /// again, idle or not (`Checkpoint::refresh_committed`): well inside
    /// the broker's `offsets.retention.minutes` (`broker_limits`).
    offset_refresh: Duration,
    /// Output topics known to exist: others are looked up before sending.
    destinations: destinations::Destinations,
    /// The partitions records came from, numbered for delivery opaques.
    sources: Sources,
    /// Records whose outputs the broker refused: errors when replayed.
    refused: Refused,
    /// Topics' `max.message.bytes`, asked after a size refusal.
    topic_limits: Vec<(String, Option<usize>)>,
    /// Tasks stopped at a failing record (`onError: Stop`): not consumed
    /// until the worker restarts (the user acts), their offsets committed
    /// up to the record.
    stopped: Vec<StoppedTask>,
    /// The loop rewound to its resume points (`replay`) while handling a
    /// record: that record is read again, so it must not count as
    /// processed now.
    rewound: bool,
    /// Commits failed since the last one that succeeded: replays back off.
    failures_in_a_row: u32,
    heartbeat: Heartbeat,
    failed_at_last_commit: u64,
    metrics: Arc<Metrics>,
    records_in: TopicCounters,
    records_out: TopicCounters,
    /// Partitions this loop last published in `Status::committed`.
    published: Vec<Tp>,
    /// The state store and changelogs (`state`), for stateful apps.
    state: Option<crate::state::State>,
    /// How long the changelogs keep tombstones (`Restorer`).
    tombstone_retention_ms: u64,
    /// The record being processed's state writes: kept with its offset if
    /// it succeeds (`Checkpoint::keep_writes`), dropped if it fails.
    record_writes: crate::state::Writes,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
}

impl<P: Processor> Engine<P> {
    /// Connects and, under ExactlyOnce, initialises transactions (fencing a
    /// previous incarnation of this worker and aborting its open
    /// transaction) BEFORE reading committed offsets: only then are they final.
    pub fn start(
        config: WorkerConfig,
        worker_id: String,
        (io, processor): (Io, P),
        mut tasks: Box<dyn TaskSource>,
        shared: Shared,
    ) -> Result<Self, EngineError> {
        let Shared {
            metrics,
            status,
            shutdown,
            state,
        } = shared;
        let consumer: BaseConsumer = clients::consumer(&config)
            .map_err(|e| EngineError::Config(e.to_string()))?
            .create()?;
        let heartbeat = Heartbeat::start(&status, &config);
        let guarantee = Guarantee::of(&config, &worker_id, (&shutdown, &heartbeat))?;
        let limits = broker_limits::read(&config, &consumer);
        limits.check(&config)?;
        let changelogs = state
            .as_ref()
            .map(|s| s.changelogs.clone())
            .unwrap_or_default();
        let producer = Arc::new(new_producer(
            &config,
            &worker_id,
            &changelogs,
            (&shutdown, &heartbeat),
        )?);
        let max_message_bytes = record_size::max_message_bytes(&config.kafka.properties);
        let destinations = destinations::Destinations::new(
            io.output_topics
                .iter()
                .chain(&io.dead_letter_topic)
                .map(|t| t.0.clone()),
        );
        let mut core = Core {
            config,
            worker_id,
            io,
            producer,
            checkpoint: guarantee.checkpoint(),
            guarantee,
            placement_stale: false,
            rate_limit: None,
            task_count: 0,
            source_partitions: 0,
            max_message_bytes,
            offset_refresh: limits.offset_refresh(),
            destinations,
            sources: Sources::default(),
            refused: Refused::default(),
            topic_limits: Vec::new(),
            stopped: Vec::new(),
            rewound: false,
            failures_in_a_row: 0,
            heartbeat,
            failed_at_last_commit: 0,
            published: Vec::new(),
            state,
            tombstone_retention_ms: crate::state::changelog::DEFAULT_TOMBSTONE_RETENTION_MS,
            record_writes: crate::state::Writes::default(),
            records_in: TopicCounters::new(&metrics.records_in),
            records_out: TopicCounters::new(&metrics.records_out),
            metrics,
            status,
            shutdown,
        };
        core.source_partitions = core.check_topics(&consumer)?;
        core.task_count = core.io.partitioning.task_count(core.source_partitions);
        core.publish_layout();
        let ensured = core
            .ensure_internal_topics(core.task_count)
            .map_err(EngineError::Config)?;
        core.tombstone_retention_ms = ensured.tombstone_retention_ms;
        if let Some(state) = &core.state {
            state
                .tombstone_retention_ms
                .store(ensured.tombstone_retention_ms, Ordering::Relaxed);
        }
        // Created now or found: reported again after a crash either way.
        let own = core.state.as_ref().map(crate::state::State::own_changelogs);
        core.status.internal_topics(&own.unwrap_or_default());
        core.status.internal_topics(&core.io.repartition_names());
        core.assign(&consumer, tasks.as_mut())?;
        Ok(Self {
            consumer,
            processor,
            core,
            tasks,
            phase: 0.0,
        })
    }

    /// Shifts this loop's commit cycle: loop `index` of `of` by `index/of`
    /// of an interval.
    pub fn stagger(&mut self, index: usize, of: usize) {
        self.phase = index as f64 / of.max(1) as f64;
    }

    /// Shares a worker-wide records-per-second limit.
    pub fn limit(&mut self, limit: Option<Arc<rate_limit::RateLimit>>) {
        self.core.rate_limit = limit;
    }

    /// Processes until shutdown (then commits and returns) or a failing
    /// record under `onError: Stop`.
    pub fn run(&mut self) -> Result<(), EngineError> {
        let Self {
            consumer,
            processor,
            core,
            tasks,
            phase,
        } = self;
        let interval = Duration::from_millis(core.config.commit_interval_ms.max(1));
        // Loops of one worker start their commit cycles out of step, so one
        // processes while another waits for its commit.
        let mut first = Some(interval.mul_f64(*phase));
        let mut refreshed = Instant::now();
        let mut counted = Instant::now();
        loop {
            let deadline = Instant::now() + interval + first.take().unwrap_or_default();
            let mut now = Instant::now();
            let mut served: u32 = 0;
            let mut next_service = now + SERVICE_INTERVAL;
            // Time processing (not waiting for records), summed here and
            // published once per commit: no shared counter per record.
            let mut busy = Duration::ZERO;
            while now < deadline {
                if core.placement_stale {
                    // Fenced: start over from a fresh read of the placement
                    // and the committed offsets of every task, before
                    // processing anything. A task this loop still holds may
                    // have been processed by another worker meanwhile (the
                    // fence is how it moved), so no local offset is trusted.
                    core.placement_stale = false;
                    core.reassign(consumer, tasks.as_mut())?;
                }
                if core.shutdown.load(Ordering::Relaxed) {
                    core.commit(consumer)?;
                    tracing::info!("shut down cleanly");
                    return Ok(());
                }
                let wait = core.poll_wait(deadline.saturating_duration_since(now));
                let polled = consumer.poll(wait);
                let idle = polled.is_none();
                match polled {
                    Some(Ok(message)) => {
                        let record = InputRecord {
                            topic: message.topic(),
                            partition: message.partition(),
                            offset: message.offset(),
                            timestamp: message.timestamp().to_millis(),
                            key: message.key(),
                            value: message.payload(),
                            headers: message
                                .headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|Header { key, value }| {
                                            (key, value.unwrap_or_default())
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        };
                        let started = Instant::now();
                        core.handle(consumer, processor, &record)?;
                        // One clock read serves the busy time and the deadline.
                        now = Instant::now();
                        busy += now - started;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("consume: {e}");
                        now = Instant::now();
                    }
                    None => now = Instant::now(),
                }
                // Serving delivery reports takes librdkafka's queue lock:
                // every 64 records is often enough, and when idle (the next
                // record may be far off) at once. At least every few ms too:
                // a rate-limited loop takes 64 records a long time, and a
                // closing batch's commit (and the lag the autoscaler sees)
                // would wait that long.
                served = served.wrapping_add(1);
                if idle || served.is_multiple_of(64) || now >= next_service {
                    next_service = now + SERVICE_INTERVAL;
                    core.serve_deliveries();
                    core.commit_acknowledged(consumer)?;
                    core.advance_closing(consumer)?;
                }
            }
            core.heartbeat.beat();
            if refreshed.elapsed() >= core.offset_refresh {
                core.checkpoint.refresh_committed();
                refreshed = Instant::now();
            }
            if counted.elapsed() >= TASK_COUNT_REFRESH {
                core.recount_tasks(consumer, tasks.as_mut())?;
                counted = Instant::now();
            }
            let started = Instant::now();
            core.end_batch(consumer)?;
            // A fenced commit leaves the changes to the fresh read above.
            if !core.placement_stale {
                apply_changes(core, consumer, tasks.as_mut())?;
            }
            core.status.add_busy(busy + started.elapsed());
        }
    }
}

/// Placement changes apply between commits: nothing of a released task is
/// left uncommitted (or it was aborted) when the epoch is acknowledged.
fn apply_changes(
    core: &mut Core,
    consumer: &BaseConsumer,
    tasks: &mut dyn TaskSource,
) -> Result<(), EngineError> {
    let mut settled = false;
    while let Some(change) = tasks.poll_change() {
        if !settled {
            core.settle_offsets(consumer)?;
            settled = true;
        }
        if core.placement_stale {
            // Fenced while settling: nothing is applied or acknowledged;
            // the loop reads the placement afresh instead.
            return Ok(());
        }
        let epoch = core.apply(consumer, change)?;
        tasks.acknowledge(epoch);
    }
    Ok(())
}

impl Core {
    fn handle(
        &mut self,
        consumer: &BaseConsumer,
        processor: &mut impl Processor,
        record: &InputRecord<'_>,
    ) -> Result<(), EngineError> {
        if self.guarantee.transactional()
            && !self.checkpoint.transaction_begun()
            && !self.begin()?
        {
            // Re-initialised: rewind and let the loop re-read the placement
            // before this record (or any other) is processed. What the open
            // batch holds (records processed while a batch closed, with no
            // outputs to begin a transaction for) goes too: committed by the
            // new producer it could overwrite what another owner did since.
            self.checkpoint.discard();
            return self.assign_resume_points(consumer);
        }
        if let Some(limit) = &self.rate_limit {
            limit.acquire();
        }
        self.records_in.inc(record.topic);
        self.rewound = false;
        if self.skipped(record) {
            self.metrics.skipped.inc();
            tracing::info!(
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                "skipped (spec onError.skip)"
            );
            self.checkpoint
                .processed(record.topic, record.partition, record.offset + 1);
            return Ok(());
        }
        let origin = self
            .sources
            .origin(record.topic, record.partition, record.offset);
        let refused = self
            .refused
            .get(record.topic, record.partition, record.offset)
            .cloned();
        let outcome = match refused {
            // Refused by the broker before: sent again it would be refused
            // again (and fail its transaction, forever).
            Some(refused) => self.refused_again(consumer, record, origin, refused),
            None => match self.process(processor, record)? {
                Ok(processed) => self.processed(consumer, record, origin, processed),
                Err(error) => self.failed(consumer, record, origin, error),
            },
        };
        match outcome {
            // Stopped at this record (its task resumes here), or rewound
            // (the record comes again): its writes are not kept.
            Ok(()) if self.rewound || self.is_stopped(record.partition) => {
                self.record_writes.clear();
                Ok(())
            }
            Ok(()) => {
                self.checkpoint
                    .processed(record.topic, record.partition, record.offset + 1);
                self.checkpoint.keep_writes(&mut self.record_writes);
                Ok(())
            }
            Err(e) => {
                self.record_writes.clear();
                self.send_failed(consumer, e)
            }
        }
    }

    fn send_now(&mut self, out: &OutputRecord, origin: Origin) -> Result<(), EngineError> {
        let record = stash::HeldRecord {
            topic: &out.topic,
            partition: None,
            origin,
            key: out.key.as_deref(),
            value: out.value.as_deref(),
            headers: &out.headers,
            timestamp: out.timestamp,
        };
        self.send_record(record)
    }

    fn send_record(&mut self, out: stash::HeldRecord<'_>) -> Result<(), EngineError> {
        let stash::HeldRecord {
            topic,
            partition,
            origin,
            key,
            value,
            headers,
            timestamp,
        } = out;
        let batch = self.checkpoint.batch_number();
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, origin.opaque(batch));
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                owned = owned.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            record = record.headers(owned);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        // Counted before it is sent: its delivery report may come first.
        self.producer.context().unacknowledged.sent(batch);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve deliveries, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    self.producer.context().unacknowledged.acknowledged(batch);
                    return Err(e.into());
                }
            }
        }
        self.records_out.inc(topic);
        Ok(())
    }
}
