//! Which partitions a loop consumes and from where: the tasks its source
//! gives it, resumed at their committed offsets (read with require_stable),
//! and placement changes applied between commits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Core, EngineError, KAFKA_TIMEOUT, MISSING_TOPIC_GRACE};

/// How long a recount may hold the loop (between commits).
const RECOUNT_TIMEOUT: Duration = Duration::from_secs(5);
use crate::placement::{PlacementChange, TaskSource};

impl Core {
    /// Source topics and join tables exist with one partition count;
    /// static outputs exist.
    pub(super) fn check_topics(&self, consumer: &BaseConsumer) -> Result<i32, EngineError> {
        let mut counts = Vec::new();
        for topic in self.io.co_partitioned() {
            counts.push((topic.0.clone(), self.partition_count(consumer, &topic.0)?));
        }
        for topic in &self.io.output_topics {
            self.partition_count(consumer, &topic.0)?;
        }
        let first = counts.first().map(|(_, n)| *n).unwrap_or(0);
        if let Some((t, n)) = counts.iter().find(|(_, n)| *n != first) {
            return Err(EngineError::Config(format!(
                "source topics (and join tables) must have the same partition count, partition N \
                 of each being task N: {} has {first}, {t} has {n}",
                counts[0].0
            )));
        }
        Ok(first)
    }

    /// Partitions added to the source topics become tasks: the task source
    /// hands out the new ones of this loop as a change (taken between
    /// commits, from their beginning). A count that cannot be read now is
    /// read at the next look; a count never shrinks (Kafka cannot remove
    /// partitions), and sources that disagree count as their smallest.
    pub(super) fn recount_tasks(
        &mut self,
        consumer: &BaseConsumer,
        tasks: &mut dyn TaskSource,
    ) -> Result<(), EngineError> {
        let mut smallest: Option<i32> = None;
        for topic in self.io.co_partitioned() {
            let Ok(md) = consumer.fetch_metadata(Some(&topic.0), RECOUNT_TIMEOUT) else {
                return Ok(());
            };
            let Some(t) = md.topics().iter().find(|t| t.name() == topic.0) else {
                return Ok(());
            };
            if t.error().is_some() {
                return Ok(());
            }
            let count = t.partitions().len() as i32;
            smallest = Some(smallest.map_or(count, |s| s.min(count)));
        }
        let Some(count) = smallest.filter(|c| *c > self.source_partitions) else {
            return Ok(());
        };
        let task_count = self.io.partitioning.task_count(count);
        tracing::info!(
            from = self.source_partitions,
            to = count,
            tasks = task_count,
            "the source topics have more partitions"
        );
        // The internal topics first: a new task's restore reads its
        // changelog partition, and records go to its repartition ones.
        if let Err(e) = self.ensure_internal_topics(task_count) {
            tracing::warn!("{e}; the new tasks wait for the next look");
            return Ok(());
        }
        self.source_partitions = count;
        self.task_count = task_count;
        self.publish_layout();
        if self.io.partitioning.repartition.is_none() {
            tasks.task_count_changed(task_count);
            return Ok(());
        }
        // With a set repartition count, tasks that already run (reading
        // only their repartition partition) gain source partitions too:
        // what they processed is committed, then every task is assigned
        // afresh from its committed offsets.
        self.commit(consumer)?;
        self.reassign(consumer, tasks)
    }

    /// Queries route keys by the task layout: published for them.
    pub(super) fn publish_layout(&self) {
        *self.status.layout.lock().unwrap() = crate::query::route::Layout {
            source_partitions: self.source_partitions,
            tasks: self.task_count,
            repartition_partitions: self.io.partitioning.repartition_count(self.task_count),
        };
    }

    /// The partitions of `tasks` the loop reads: partition N of each topic
    /// it consumes that has one.
    fn partitions_of_tasks(&self, tasks: &[i32]) -> TopicPartitionList {
        let mut wanted = TopicPartitionList::new();
        for t in self.io.consumed_topics() {
            let count = self
                .io
                .partitions_of(&t.0, self.source_partitions, self.task_count);
            for p in tasks.iter().filter(|p| **p < count) {
                wanted.add_partition(&t.0, *p);
            }
        }
        wanted
    }

    pub(super) fn partition_count(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
    ) -> Result<i32, EngineError> {
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
                            self.heartbeat.beat();
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
                    self.heartbeat.beat();
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Assigns the owned tasks at their committed offsets (the broker
    /// answers only once no transaction on them is pending: require_stable).
    pub(super) fn assign(
        &mut self,
        consumer: &BaseConsumer,
        tasks: &mut dyn TaskSource,
    ) -> Result<(), EngineError> {
        let owned = tasks.tasks(self.task_count);
        let wanted = self.partitions_of_tasks(&owned);
        let committed = self.committed_offsets(consumer, &wanted)?;
        // A stopped task still owned stays stopped (its committed offset is
        // the record's), and says so again: `reassign` released its report.
        self.stopped.retain(|s| owned.contains(&s.task));
        for stopped in &self.stopped {
            self.status.stop(stopped.clone());
        }
        self.checkpoint.forget();
        self.resume_from(&committed);
        self.restore(&owned)?;
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
        tracing::info!(partitions = self.checkpoint.owned_partitions().len(), placement = %tasks.describe(), "tasks assigned");
        Ok(())
    }

    /// Forgets every task and offset of this loop and assigns afresh.
    pub(super) fn reassign(
        &mut self,
        consumer: &BaseConsumer,
        tasks: &mut dyn TaskSource,
    ) -> Result<(), EngineError> {
        let owned = self.checkpoint.owned_partitions();
        self.status.release(&owned);
        self.unclaim(&owned);
        self.assign(consumer, tasks)
    }

    /// Applies a placement change; returns its epoch for the acknowledgement.
    pub(super) fn apply(
        &mut self,
        consumer: &BaseConsumer,
        change: PlacementChange,
    ) -> Result<u64, EngineError> {
        let (epoch, taken) = match change {
            PlacementChange::Release { epoch, tasks } => {
                self.checkpoint.release(&tasks);
                self.fence_forget(&tasks);
                self.unclaim(&tasks);
                self.stopped.retain(|s| !tasks.contains(&s.task));
                self.status.release(&tasks);
                self.publish_committed();
                tracing::info!(epoch, ?tasks, "released tasks");
                (epoch, Vec::new())
            }
            PlacementChange::Take { epoch, tasks } => (epoch, tasks),
        };
        if !taken.is_empty() {
            let wanted = self.partitions_of_tasks(&taken);
            let committed = self.committed_offsets(consumer, &wanted)?;
            self.resume_from(&committed);
            self.restore(&taken)?;
            self.status.take(&taken);
            tracing::info!(epoch, tasks = ?taken, "took tasks");
        }
        self.assign_resume_points(consumer)?;
        Ok(epoch)
    }

    /// Partitions resume at their committed offset, or from the beginning
    /// when the group has none (`committed_offsets` has ruled out errors).
    pub(super) fn resume_from(&mut self, committed: &TopicPartitionList) {
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            self.checkpoint
                .resume_at((e.topic().to_string(), e.partition()), offset);
        }
    }

    /// The group's committed offsets, retried while the broker is away.
    pub(super) fn committed_offsets(
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
                    self.heartbeat.beat();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// (Re)assigns every owned partition at its resume point, but those of
    /// stopped tasks. Unassigning first drops records already fetched past
    /// it, so a replay starts exactly at the last committed offset.
    pub(super) fn assign_resume_points(&self, consumer: &BaseConsumer) -> Result<(), EngineError> {
        consumer.unassign()?;
        let mut tpl = TopicPartitionList::new();
        let running = self
            .checkpoint
            .resume_points()
            .filter(|((_, p), _)| !self.is_stopped(*p));
        for ((topic, partition), offset) in running {
            tpl.add_partition_offset(topic, *partition, *offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(())
    }
}
