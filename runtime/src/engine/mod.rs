//! The processing engine (design brief D2): consume with `read_committed`
//! from assigned tasks, process, produce, and every commit interval commit
//! the outputs together with the input offsets in one Kafka transaction.
//! At-least-once is the same loop with a flush and an offset commit instead.

pub mod clients;
pub mod kube_tasks;
pub mod rate_limit;
pub mod tasks;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_crds::{ErrorPolicy, ProcessingGuarantee};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::WorkerConfig;
use crate::metrics::{Metrics, Status, TopicLabel};
use crate::pipeline::eval::{
    dead_letter_headers, Evaluator, InputRecord, OutputRecord, RecordError,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tasks::{PlacementChange, TaskSource};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(5);

/// Why the engine stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad configuration or topics: exits 2 with this line.
    #[error("{0}")]
    Config(String),
    /// `onError: Stop` met a failing record.
    #[error("record {topic}/{partition}@{offset} failed in step '{step}': {message}; stopped (onError policy Stop) with everything before it committed")]
    RecordFailed {
        topic: String,
        partition: i32,
        offset: i64,
        step: String,
        message: String,
    },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// At-least-once: records of the batch failed to deliver (total failed
    /// deliveries so far); the batch is replayed, its offsets not committed.
    #[error("{0} deliveries have failed so far; replaying the batch")]
    Undelivered(u64),
}

/// Counts failed deliveries: under at-least-once a failure means the batch's
/// offsets must not be committed (its records are replayed instead).
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!("delivery failed: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Tp = (String, i32);

pub struct Engine {
    /// Apart from the rest: a consumed record borrows the consumer while the
    /// rest of the engine processes it.
    consumer: BaseConsumer,
    core: Core,
    tasks: Box<dyn TaskSource>,
    /// Fraction of a commit interval this loop's cycle is shifted by.
    phase: f64,
}

struct Core {
    config: WorkerConfig,
    worker_id: String,
    evaluator: Evaluator,
    producer: BaseProducer<DeliveryCounter>,
    eos: bool,
    /// Where each assigned partition resumes after a rewind: the last
    /// committed position, or where it started.
    resume: BTreeMap<Tp, Offset>,
    /// Next offset per partition of what this transaction has processed.
    positions: BTreeMap<Tp, i64>,
    in_transaction: bool,
    /// The producer was re-initialised (fenced): the placement must be read
    /// again before anything more is processed.
    placement_stale: bool,
    /// `maxRecordsPerSecond`, shared by the worker's loops.
    rate_limit: Option<Arc<rate_limit::RateLimit>>,
    /// Partitions per source topic.
    task_count: i32,
    failed_at_last_commit: u64,
    metrics: Arc<Metrics>,
    records_in: TopicCounters,
    records_out: TopicCounters,
    /// Partitions this loop last published in `Status::committed`.
    published: Vec<Tp>,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
}

/// Per-topic counters of one family, looked up by `&str`: no label is
/// allocated per record.
struct TopicCounters {
    family: Family<TopicLabel, Counter>,
    by_topic: HashMap<String, Counter>,
}

impl TopicCounters {
    fn new(family: &Family<TopicLabel, Counter>) -> Self {
        Self {
            family: family.clone(),
            by_topic: HashMap::new(),
        }
    }

    fn inc(&mut self, topic: &str) {
        if let Some(c) = self.by_topic.get(topic) {
            c.inc();
            return;
        }
        let counter = self
            .family
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .clone();
        counter.inc();
        self.by_topic.insert(topic.to_string(), counter);
    }
}

impl Engine {
    /// Connects and, under ExactlyOnce, initialises transactions (fencing a
    /// previous incarnation of this worker and aborting its open
    /// transaction) BEFORE reading committed offsets: only then are they final.
    pub fn start(
        config: WorkerConfig,
        worker_id: String,
        evaluator: Evaluator,
        mut tasks: Box<dyn TaskSource>,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, EngineError> {
        let eos = config.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        let consumer: BaseConsumer = clients::consumer(&config)
            .map_err(|e| EngineError::Config(e.to_string()))?
            .create()?;
        let producer = new_producer(&config, &worker_id, &shutdown)?;
        let mut core = Core {
            config,
            worker_id,
            evaluator,
            producer,
            eos,
            resume: BTreeMap::new(),
            positions: BTreeMap::new(),
            in_transaction: false,
            placement_stale: false,
            rate_limit: None,
            task_count: 0,
            failed_at_last_commit: 0,
            published: Vec::new(),
            records_in: TopicCounters::new(&metrics.records_in),
            records_out: TopicCounters::new(&metrics.records_out),
            metrics,
            status,
            shutdown,
        };
        core.task_count = core.check_topics(&consumer)?;
        core.assign(&consumer, tasks.as_mut())?;
        Ok(Self {
            consumer,
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
            core,
            tasks,
            phase,
        } = self;
        let interval = Duration::from_millis(core.config.commit_interval_ms.max(1));
        // Loops of one worker start their commit cycles out of step, so one
        // processes while another waits for its commit.
        let mut first = Some(interval.mul_f64(*phase));
        loop {
            let deadline = Instant::now() + interval + first.take().unwrap_or_default();
            let mut now = Instant::now();
            let mut served: u32 = 0;
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
                let wait = deadline
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(100));
                match consumer.poll(wait) {
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
                        core.handle(consumer, &record)?;
                        core.status.add_busy(started.elapsed());
                    }
                    Some(Err(e)) => tracing::warn!("consume: {e}"),
                    None => {}
                }
                // Serving delivery reports takes librdkafka's queue lock:
                // every 64 records is often enough.
                served = served.wrapping_add(1);
                if served.is_multiple_of(64) {
                    core.producer.poll(Duration::ZERO);
                }
                now = Instant::now();
            }
            let started = Instant::now();
            core.commit(consumer)?;
            // A fenced commit leaves the changes to the fresh read above.
            if !core.placement_stale {
                apply_changes(core, consumer, tasks.as_mut())?;
            }
            core.status.add_busy(started.elapsed());
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
    while let Some(change) = tasks.poll_change() {
        let epoch = core.apply(consumer, change)?;
        tasks.acknowledge(epoch);
    }
    Ok(())
}

impl Core {
    /// Source topics exist with one partition count; static outputs exist.
    fn check_topics(&self, consumer: &BaseConsumer) -> Result<i32, EngineError> {
        let pipeline = self.evaluator.pipeline();
        let mut counts = Vec::new();
        for topic in &pipeline.source_topics {
            counts.push((topic.0.clone(), self.partition_count(consumer, &topic.0)?));
        }
        for topic in pipeline.static_output_topics() {
            self.partition_count(consumer, &topic.0)?;
        }
        let first = counts.first().map(|(_, n)| *n).unwrap_or(0);
        if let Some((t, n)) = counts.iter().find(|(_, n)| *n != first) {
            return Err(EngineError::Config(format!(
                "source topics must have the same partition count: {} has {first}, {t} has {n}",
                counts[0].0
            )));
        }
        Ok(first)
    }

    fn partition_count(&self, consumer: &BaseConsumer, topic: &str) -> Result<i32, EngineError> {
        // A topic created a moment ago may not be in every broker's metadata
        // yet: look again for a few seconds before calling it missing.
        let missing_since = Instant::now();
        loop {
            match consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT) {
                Ok(md) => {
                    let t = md.topics().iter().find(|t| t.name() == topic);
                    match t {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            return Ok(t.partitions().len() as i32)
                        }
                        _ if missing_since.elapsed() < MISSING_TOPIC_GRACE => {
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        _ => {
                            return Err(EngineError::Config(format!(
                                "topic '{topic}' does not exist at {}; create it first",
                                self.config.kafka.bootstrap_servers
                            )))
                        }
                    }
                }
                // Broker unavailable: wait, never skip.
                Err(e) => {
                    tracing::warn!("metadata for {topic}: {e}; retrying");
                    if self.shutdown.load(Ordering::Relaxed) {
                        return Err(e.into());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Assigns the owned tasks at their committed offsets (the broker
    /// answers only once no transaction on them is pending: require_stable).
    fn assign(
        &mut self,
        consumer: &BaseConsumer,
        tasks: &mut dyn TaskSource,
    ) -> Result<(), EngineError> {
        let owned = tasks.tasks(self.task_count);
        let mut wanted = TopicPartitionList::new();
        for t in &self.evaluator.pipeline().source_topics {
            for p in &owned {
                wanted.add_partition(&t.0, *p);
            }
        }
        let committed = self.committed_offsets(consumer, &wanted)?;
        self.resume.clear();
        self.resume_from(&committed);
        self.assign_resume_points(consumer)?;
        let mut detail = self.status.detail.lock().unwrap();
        detail.worker_id = self.worker_id.clone();
        detail.application_id = self.config.application_id.clone();
        if detail.placement.is_empty() {
            detail.placement = tasks.describe();
        }
        // Several loops share one status: merge, do not overwrite.
        detail.tasks.extend(owned);
        detail.tasks.sort_unstable();
        detail.tasks.dedup();
        drop(detail);
        self.status.ready.store(true, Ordering::Relaxed);
        tracing::info!(partitions = self.resume.len(), placement = %tasks.describe(), "tasks assigned");
        Ok(())
    }

    /// Forgets every task and offset of this loop and assigns afresh.
    fn reassign(
        &mut self,
        consumer: &BaseConsumer,
        tasks: &mut dyn TaskSource,
    ) -> Result<(), EngineError> {
        let held: Vec<i32> = self.resume.keys().map(|(_, p)| *p).collect();
        self.status.release(&held);
        self.positions.clear();
        self.resume.clear();
        self.assign(consumer, tasks)
    }

    /// Applies a placement change; returns its epoch for the acknowledgement.
    fn apply(
        &mut self,
        consumer: &BaseConsumer,
        change: PlacementChange,
    ) -> Result<u64, EngineError> {
        let sources: Vec<String> = self
            .evaluator
            .pipeline()
            .source_topics
            .iter()
            .map(|t| t.0.clone())
            .collect();
        let (epoch, taken) = match change {
            PlacementChange::Release { epoch, tasks } => {
                self.resume.retain(|(_, p), _| !tasks.contains(p));
                self.positions.retain(|(_, p), _| !tasks.contains(p));
                self.status.release(&tasks);
                self.publish_committed();
                tracing::info!(epoch, ?tasks, "released tasks");
                (epoch, Vec::new())
            }
            PlacementChange::Take { epoch, tasks } => (epoch, tasks),
        };
        if !taken.is_empty() {
            let mut wanted = TopicPartitionList::new();
            for t in &sources {
                for p in &taken {
                    wanted.add_partition(t, *p);
                }
            }
            let committed = self.committed_offsets(consumer, &wanted)?;
            self.resume_from(&committed);
            self.status.take(&taken);
            tracing::info!(epoch, tasks = ?taken, "took tasks");
        }
        self.assign_resume_points(consumer)?;
        Ok(epoch)
    }

    /// Partitions resume at their committed offset, or from the beginning
    /// when the group has none (`committed_offsets` has ruled out errors).
    fn resume_from(&mut self, committed: &TopicPartitionList) {
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            self.resume
                .insert((e.topic().to_string(), e.partition()), offset);
        }
    }

    /// The group's committed offsets, retried while the broker is away.
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer,
        wanted: &TopicPartitionList,
    ) -> Result<TopicPartitionList, EngineError> {
        loop {
            // A partition-level error (an offset still in a transaction being
            // completed: UNSTABLE_OFFSET_COMMIT; a coordinator moving) must
            // be retried, never read as "no offset": that would replay the
            // partition from its beginning.
            let result = consumer
                .committed_offsets(wanted.clone(), KAFKA_TIMEOUT)
                .and_then(
                    |c| match c.elements().iter().find_map(|e| e.error().err()) {
                        Some(e) => Err(e),
                        None => Ok(c),
                    },
                );
            match result {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!("reading committed offsets: {e}; retrying");
                    if self.shutdown.load(Ordering::Relaxed) {
                        return Err(e.into());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// (Re)assigns every owned partition at its resume point. Unassigning
    /// first drops records already fetched past it, so a replay starts
    /// exactly at the last committed offset.
    fn assign_resume_points(&self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        consumer.unassign()?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.resume {
            tpl.add_partition_offset(topic, *partition, *offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(())
    }

    fn handle(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
    ) -> Result<(), EngineError> {
        if self.eos && !self.in_transaction && !self.begin()? {
            // Re-initialised: rewind and let the loop re-read the placement
            // before this record (or any other) is processed.
            return self.assign_resume_points(consumer);
        }
        if let Some(limit) = &self.rate_limit {
            limit.acquire();
        }
        self.records_in.inc(record.topic);
        let outcome = match self.evaluator.process(record) {
            Ok(processed) => {
                if processed.filtered {
                    self.metrics.filtered.inc();
                }
                if processed.unrouted {
                    self.metrics.unrouted.inc();
                }
                processed.outputs.iter().try_for_each(|out| self.send(out))
            }
            Err(error) => self.failed(consumer, record, error),
        };
        match outcome {
            Ok(()) => {
                self.advance(record.topic, record.partition, record.offset + 1);
                Ok(())
            }
            // Fenced while processing (noticed on a send): the transaction
            // is lost; start over from the committed offsets once the
            // placement has been read again.
            Err(EngineError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal))) => {
                self.reinitialise()?;
                self.positions.clear();
                self.assign_resume_points(consumer)
            }
            Err(e) => Err(e),
        }
    }

    /// Records where a partition's processing got to. Looked up by `&str`
    /// first: allocating the key for every record showed in the profile.
    fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        let known = self
            .positions
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic);
        match known {
            Some((_, offset)) => *offset = next,
            None => {
                self.positions.insert((topic.to_string(), partition), next);
            }
        }
    }

    fn failed(
        &mut self,
        consumer: &BaseConsumer,
        record: &InputRecord<'_>,
        error: RecordError,
    ) -> Result<(), EngineError> {
        let pipeline = self.evaluator.pipeline();
        match (pipeline.error_policy, &pipeline.dead_letter_topic) {
            (ErrorPolicy::DeadLetter, Some(dlq)) => {
                let out = OutputRecord {
                    topic: dlq.0.clone(),
                    key: record.key.map(<[u8]>::to_vec),
                    value: record.value.map(<[u8]>::to_vec),
                    headers: dead_letter_headers(&error, record),
                };
                self.send(&out)?;
                self.metrics.dead_lettered.inc();
                Ok(())
            }
            _ => {
                // Commit what came before the record, nothing past it.
                self.commit_processed(consumer)?;
                Err(EngineError::RecordFailed {
                    topic: record.topic.into(),
                    partition: record.partition,
                    offset: record.offset,
                    step: error.step,
                    message: error.message,
                })
            }
        }
    }

    fn send(&mut self, out: &OutputRecord) -> Result<(), EngineError> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&out.topic).headers(headers);
        if let Some(k) = &out.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &out.value {
            record = record.payload(v.as_slice());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve deliveries, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.records_out.inc(&out.topic);
        Ok(())
    }

    /// Begins a transaction; `false` when the producer had to be
    /// re-initialised instead (nothing begun).
    fn begin(&mut self) -> Result<bool, EngineError> {
        if let Err(e) = self.producer.begin_transaction() {
            tracing::warn!("begin_transaction: {e}; re-initialising the producer");
            self.reinitialise()?;
            return Ok(false);
        }
        self.in_transaction = true;
        Ok(true)
    }

    fn offsets(&self) -> Result<TopicPartitionList, EngineError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(tpl)
    }

    /// Commits the batch. On failure the batch is undone (aborted, or not
    /// acknowledged) and its records are consumed again from the last
    /// committed offsets: output and offsets move together or not at all.
    fn commit(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        self.absorb_positions(consumer);
        self.commit_processed(consumer)
    }

    /// Moves each partition's offset to the consumer's position where that
    /// is further: past transaction markers and aborted records, which the
    /// consumer skips. Committed offsets then reach the last stable offset
    /// and an idle app shows lag 0, not 1 per marker (KEDA #5675).
    fn absorb_positions(&mut self, consumer: &BaseConsumer) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let tp = (e.topic().to_string(), e.partition());
            let known = self
                .positions
                .get(&tp)
                .copied()
                .or(match self.resume.get(&tp) {
                    Some(Offset::Offset(o)) => Some(*o),
                    _ => None,
                });
            if known.is_none_or(|k| position > k)
                && (known.is_some() || self.positions.contains_key(&tp))
            {
                self.positions.insert(tp, position);
            }
        }
    }

    /// Commits exactly what was processed (no position absorbed): used when
    /// stopping at a failed record, which the consumer's position has passed.
    fn commit_processed(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        if self.positions.is_empty() {
            return Ok(());
        }
        if self.eos && !self.in_transaction && !self.begin()? {
            self.positions.clear();
            return self.assign_resume_points(consumer);
        }
        let started = Instant::now();
        let outcome = if self.eos {
            self.commit_transaction(consumer)
        } else {
            self.commit_at_least_once(consumer)
        };
        match outcome {
            Ok(()) => {
                self.status
                    .record_commit(self.positions.keys().map(|(_, p)| *p), unix_ms());
                for (tp, offset) in std::mem::take(&mut self.positions) {
                    self.resume.insert(tp, Offset::Offset(offset));
                }
                self.metrics.commits.inc();
                self.publish_committed();
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "commit failed: {e}; replaying the batch from the last committed offsets"
                );
                self.metrics.aborts.inc();
                self.positions.clear();
                self.assign_resume_points(consumer)
            }
        }
    }

    fn commit_transaction(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        let offsets = self.offsets()?;
        let group = consumer
            .group_metadata()
            .ok_or_else(|| EngineError::Config("the consumer has no group metadata".into()))?;
        let result = self
            .producer
            .send_offsets_to_transaction(&offsets, &group, KAFKA_TIMEOUT)
            .and_then(|()| self.producer.commit_transaction(KAFKA_TIMEOUT));
        self.in_transaction = false;
        if let Err(e) = result {
            let fatal = matches!(&e, KafkaError::Transaction(rd) if rd.is_fatal());
            if fatal || self.producer.abort_transaction(KAFKA_TIMEOUT).is_err() {
                // Fenced (another incarnation of this worker took over) or
                // the producer is unusable: start a new one, which aborts
                // whatever this one left open.
                self.reinitialise()?;
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn commit_at_least_once(&mut self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        self.producer.flush(KAFKA_TIMEOUT)?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed != self.failed_at_last_commit {
            self.failed_at_last_commit = failed;
            return Err(EngineError::Undelivered(failed));
        }
        consumer.commit(&self.offsets()?, CommitMode::Sync)?;
        Ok(())
    }

    fn reinitialise(&mut self) -> Result<(), EngineError> {
        tracing::warn!("re-initialising the producer (fenced or unusable); the placement is read again before processing");
        self.producer = new_producer(&self.config, &self.worker_id, &self.shutdown)?;
        self.in_transaction = false;
        self.placement_stale = true;
        Ok(())
    }

    /// Publishes the committed offsets for the lag watcher and `/tasks`.
    fn publish_committed(&mut self) {
        let committed: BTreeMap<Tp, i64> = self
            .resume
            .iter()
            .filter_map(|(tp, o)| match o {
                Offset::Offset(o) => Some((tp.clone(), *o)),
                _ => None,
            })
            .collect();
        let mut shared = self.status.committed.lock().unwrap();
        // Only this loop's partitions: other loops publish theirs.
        for tp in &self.published {
            shared.remove(tp);
        }
        self.published = committed.keys().cloned().collect();
        shared.extend(committed);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A producer ready to work: under ExactlyOnce, `init_transactions` has
/// succeeded (retried while the broker is unavailable, never skipped).
fn new_producer(
    config: &WorkerConfig,
    worker_id: &str,
    shutdown: &AtomicBool,
) -> Result<BaseProducer<DeliveryCounter>, EngineError> {
    let producer: BaseProducer<DeliveryCounter> = clients::producer(config, worker_id)
        .map_err(|e| EngineError::Config(e.to_string()))?
        .create_with_context(DeliveryCounter::default())?;
    if config.processing_guarantee != ProcessingGuarantee::ExactlyOnce {
        return Ok(producer);
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        match producer.init_transactions(KAFKA_TIMEOUT) {
            Ok(()) => return Ok(producer),
            Err(e) if !shutdown.load(Ordering::Relaxed) => {
                tracing::warn!("init_transactions: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
