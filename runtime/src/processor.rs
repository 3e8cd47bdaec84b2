//! What a worker runs on each record: a [`Processor`]. The zero-code
//! pipeline's evaluator is one; a custom image brings its own and keeps
//! everything else of the worker (exactly-once commits, placement and
//! fencing, `/tasks`, metrics, autoscaling, the error policy).
//!
//! A processor never commits, produces or seeks: it turns one record into
//! the records to produce. The engine sends them inside the loop's open
//! transaction, so under exactly-once a record's outputs appear exactly once
//! whatever crashes or moves, and under at-least-once at least once.

use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::{ErrorPolicy, OnError, Partitioner, RecordCoordinates, TopicName};

use crate::pipeline::eval::Evaluator;
use crate::pipeline::query::Queryable;
pub use crate::pipeline::record::{InputRecord, OutputRecord, Processed, RecordError};
pub use crate::pipeline::stateful::State;
use crate::pipeline::{CompiledPipeline, Partitioning};

/// Record in, outputs out. One instance per processing loop (a loop is one
/// thread), so a processor may keep caches without locks; it must not keep
/// state that has to survive a crash, since replayed records after a crash
/// reach a fresh instance (durable state stores come with the runtime's
/// state layer).
pub trait Processor: Send + 'static {
    /// The records to produce for `record` (none drops it). An `Err` is a
    /// record failure: the app's `onError` policy applies (dead-lettered
    /// with the error in headers, or the record's task stops at it with
    /// everything before it committed while the other tasks go on).
    fn process(&mut self, record: &InputRecord<'_>) -> Result<Processed, RecordError>;

    /// [`Processor::process`] with the record's task's state: reads see
    /// every write before this record's (committed or not), writes count
    /// only if the record succeeds, and reach the store and its changelog
    /// with the record's offset, exactly once. Called instead of `process`
    /// when the app has state stores; a processor without state keeps the
    /// default.
    fn process_with_state(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut dyn State,
    ) -> Result<Processed, RecordError> {
        let _ = state;
        self.process(record)
    }
}

impl Processor for Evaluator {
    fn process(&mut self, record: &InputRecord<'_>) -> Result<Processed, RecordError> {
        Evaluator::process(self, record)
    }

    fn process_with_state(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut dyn State,
    ) -> Result<Processed, RecordError> {
        self.process_with(record, state)
    }
}

/// What the engine needs to know of an app besides its processor: the
/// topics it reads and may write, and what to do with a failed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Io {
    pub source_topics: Vec<TopicName>,
    /// Topics checked to exist at start (computed destinations are not known
    /// in advance).
    pub output_topics: Vec<TopicName>,
    pub error_policy: ErrorPolicy,
    pub dead_letter_topic: Option<TopicName>,
    /// Records passed over unprocessed (`onError.skip`).
    pub skip: Vec<RecordCoordinates>,
    /// `maxRecordsPerSecond` of the worker, over its loops.
    pub max_records_per_second: Option<u64>,
    /// The stateful steps' names, store by store: each has a store per
    /// task and a changelog (none: the app keeps no state).
    pub stores: Vec<String>,
    /// Internal topics the app writes records to and reads them back from,
    /// partition N in task N (`CompiledStep::Repartition`).
    pub repartition_topics: Vec<TopicName>,
    /// Each store's join table (`None`: the store has a changelog of its
    /// own). Tables are read like the sources (partition N in task N) into
    /// the joins' stores, and restore those stores: a table is its own
    /// changelog.
    pub store_tables: Vec<Option<TopicName>>,
    /// The task count and the repartition topics' partition count.
    pub partitioning: Partitioning,
    /// The stateful steps a query can read, and the input producers'
    /// partitioner it routes keys by.
    pub queryables: Vec<Queryable>,
    pub partitioner: Partitioner,
}

impl Io {
    /// Every topic a task reads a partition of: the sources, the join
    /// tables, then the repartition topics.
    pub fn consumed_topics(&self) -> impl Iterator<Item = &TopicName> {
        self.co_partitioned().chain(&self.repartition_topics)
    }

    /// The topics that must have one partition count, the task count:
    /// the sources and the join tables.
    pub fn co_partitioned(&self) -> impl Iterator<Item = &TopicName> {
        self.source_topics
            .iter()
            .chain(self.store_tables.iter().flatten())
    }

    /// How many partitions `topic`, one the app reads, has when the
    /// sources have `source_partitions` (and the app `tasks` tasks).
    pub fn partitions_of(&self, topic: &str, source_partitions: i32, tasks: i32) -> i32 {
        match self.repartition_topics.iter().any(|t| t.0 == topic) {
            true => self.partitioning.repartition_count(tasks),
            false => source_partitions,
        }
    }

    pub fn repartition_names(&self) -> Vec<String> {
        self.repartition_topics
            .iter()
            .map(|t| t.0.clone())
            .collect()
    }

    pub fn of_pipeline(pipeline: &CompiledPipeline, max_records_per_second: Option<i64>) -> Self {
        Self {
            source_topics: pipeline.source_topics.clone(),
            output_topics: pipeline.static_output_topics(),
            error_policy: pipeline.error_policy,
            dead_letter_topic: pipeline.dead_letter_topic.clone(),
            skip: pipeline.skip.clone(),
            max_records_per_second: max_records_per_second.map(|n| n.max(1) as u64),
            stores: pipeline.stores(),
            repartition_topics: pipeline.repartition_topics(),
            store_tables: pipeline.store_tables(),
            partitioning: pipeline.partitioning,
            queryables: pipeline.queryables(),
            partitioner: pipeline.partitioner,
        }
    }

    /// A custom image's topics, from its configuration (`spec.source`,
    /// `spec.outputs`, `spec.onError`).
    pub fn of_custom(config: &WorkerConfig) -> Result<Self, String> {
        let custom = config.custom.as_ref().ok_or(
            "the configuration has no spec.source: this is a custom image, and its StreamApp must \
             name the topics it reads in spec.source (a pipeline runs on the millrace-runtime image)",
        )?;
        let OnError {
            policy,
            dead_letter_topic,
            skip,
        } = custom.on_error.clone();
        Ok(Self {
            source_topics: custom.source.topics.clone(),
            output_topics: custom.output_topics(),
            error_policy: policy,
            dead_letter_topic,
            skip,
            max_records_per_second: None,
            stores: Vec::new(),
            repartition_topics: Vec::new(),
            store_tables: Vec::new(),
            partitioning: Partitioning::default(),
            queryables: Vec::new(),
            partitioner: Partitioner::default(),
        })
    }
}
