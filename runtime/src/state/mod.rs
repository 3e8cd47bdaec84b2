//! The runtime's state layer (design brief D3): per-task stores on the
//! worker's volume, their changelogs, and restore. The order in which a
//! batch's writes become durable is the checkpoint's (`engine/checkpoint.rs`);
//! this module holds the parts: [`Writes`] (pure), the [`View`] a record's
//! steps read through, the [`Store`], the changelog topics and the
//! [`restore::Restorer`].

pub mod changelog;
pub mod restore;
pub mod standby;
mod store;
mod view;
mod writes;

use std::path::Path;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;

use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::TopicName;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use store::{Applied, Store, StoreError, DEFAULT_MEMORY_MB};
pub use view::View;
pub use writes::Writes;

/// A consumer of the changelogs (restore, standbys) at `isolation`; with
/// `partition_eof` it says when it has read a partition to its end.
pub(crate) fn changelog_reader(
    config: &WorkerConfig,
    isolation: &str,
    partition_eof: bool,
) -> anyhow::Result<BaseConsumer> {
    let mut c = crate::engine::clients::consumer(config)?;
    c.set("isolation.level", isolation)
        .set("enable.partition.eof", partition_eof.to_string());
    Ok(c.create()?)
}

/// Drops a client on a thread of its own: librdkafka's destroy waits for
/// its threads to stop (about 100 ms here), which a task about to take its
/// first record need not wait for.
pub(crate) fn dispose(consumer: BaseConsumer) {
    let _ = std::thread::Builder::new()
        .name("dispose".into())
        .spawn(move || drop(consumer));
}

/// A changelog record's (store, task): its topic's store and its partition.
pub(crate) fn store_of(changelogs: &[String], topic: &str, partition: i32) -> Option<(usize, i32)> {
    Some((changelogs.iter().position(|c| c == topic)?, partition))
}

/// The consumer's position in each changelog partition it reads, by
/// (store, task): past the markers and aborted records it skipped, which
/// no record shows.
pub(crate) fn changelog_positions(
    consumer: &BaseConsumer,
    changelogs: &[String],
) -> Vec<((usize, i32), i64)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    positions
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(p) => Some((store_of(changelogs, e.topic(), e.partition())?, p)),
            _ => None,
        })
        .collect()
}

/// What a loop needs of its worker's state: the store (shared by the
/// worker's loops, each with its own tasks), and the changelog of each of
/// the pipeline's stateful steps.
#[derive(Clone)]
pub struct State {
    pub store: Arc<Store>,
    /// Store `i` is restored from `changelogs[i]`: its own
    /// `<applicationId>-<step>-changelog`, or a join's table topic.
    pub changelogs: Vec<String>,
    /// The stores whose changelog is a join's table: the engine writes no
    /// changelog records for them (the table's records are their
    /// changes); a committed batch records the table offsets it read.
    pub tables: BTreeSet<usize>,
    /// The changelogs' shortest `delete.retention.ms`, once a loop has
    /// checked them (`changelog::ensure`); Kafka's default until then.
    pub tombstone_retention_ms: Arc<AtomicU64>,
}

impl State {
    /// Opens the worker's store in `dir` for the app's `stores` (stateful
    /// step names, in order), `tables[i]` the join table of store `i`.
    pub fn open(
        dir: &Path,
        application_id: &str,
        stores: &[String],
        tables: &[Option<TopicName>],
        memory_mb: u64,
    ) -> Result<Self, StoreError> {
        let own = changelog::names(application_id, stores);
        let table = |i: usize| tables.get(i).and_then(Option::as_ref);
        // A table store's keyspaces are named apart from the changelog
        // copy a join kept before (its offsets count another topic's
        // records): such a store restores from its table instead.
        let keyspaces = stores
            .iter()
            .enumerate()
            .map(|(i, name)| match table(i) {
                Some(_) => format!("{name}@table"),
                None => name.clone(),
            })
            .collect();
        Ok(Self {
            store: Arc::new(Store::open(dir, keyspaces, memory_mb)?),
            changelogs: own
                .into_iter()
                .enumerate()
                .map(|(i, topic)| table(i).map_or(topic, |t| t.0.clone()))
                .collect(),
            tables: (0..stores.len()).filter(|i| table(*i).is_some()).collect(),
            tombstone_retention_ms: Arc::new(AtomicU64::new(
                changelog::DEFAULT_TOMBSTONE_RETENTION_MS,
            )),
        })
    }

    /// The changelogs the app writes (not the join tables).
    pub fn own_changelogs(&self) -> Vec<String> {
        self.topics(false)
    }

    /// The join tables that are stores' changelogs.
    pub fn table_changelogs(&self) -> Vec<String> {
        self.topics(true)
    }

    fn topics(&self, tables: bool) -> Vec<String> {
        self.changelogs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.tables.contains(i) == tables)
            .map(|(_, t)| t.clone())
            .collect()
    }
}
