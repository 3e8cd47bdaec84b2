//! The engine's side of state (docs/state-store.md): a closing batch's
//! writes to the changelogs, a committed batch's writes to the store, and
//! a task's restore before its first record. The order is the
//! checkpoint's (`checkpoint.rs`).

use rdkafka::producer::Producer;

use super::checkpoint::Offsets;
use super::refusals::Origin;
use super::{stash, Core, EngineError};
use crate::processor::{InputRecord, Processed, Processor, RecordError};
use crate::state::restore::Restorer;

impl Core {
    /// Runs the processor over the record's task's state: its writes
    /// collect in `record_writes`. A store that fails to read stops the
    /// loop rather than let a step act on a wrong answer.
    pub(super) fn process(
        &mut self,
        processor: &mut impl Processor,
        record: &InputRecord<'_>,
    ) -> Result<Result<Processed, RecordError>, EngineError> {
        self.record_writes.clear();
        let Some(state) = &self.state else {
            return Ok(processor.process(record));
        };
        let mut view = crate::state::View {
            task: record.partition,
            record: &mut self.record_writes,
            pending: self.checkpoint.pending_writes(),
            store: Some(&state.store),
            error: None,
        };
        let result = processor.process_with_state(record, &mut view);
        match view.error {
            Some(e) => Err(e.into()),
            None => Ok(result),
        }
    }

    /// The changelog topics, store by store (none for a stateless app),
    /// join tables included.
    pub(super) fn changelogs(&self) -> &[String] {
        self.state.as_ref().map_or(&[], |s| &s.changelogs)
    }

    /// Creates or checks the changelogs and repartition topics for `tasks`
    /// tasks, and reads the join tables' settings.
    pub(super) fn ensure_internal_topics(
        &self,
        tasks: i32,
    ) -> Result<crate::state::changelog::Ensured, String> {
        let (own, tables) = self.state.as_ref().map_or_else(Default::default, |s| {
            (s.own_changelogs(), s.table_changelogs())
        });
        let topics = crate::state::changelog::Internal {
            changelogs: &own,
            repartitions: &self.io.repartition_names(),
            repartition_partitions: self.io.partitioning.repartition,
            tables: &tables,
        };
        crate::state::changelog::ensure(&self.config, topics, tasks)
    }

    /// One changelog record per key the open batch changed (its last value;
    /// a delete is a tombstone), to the task's partition, into the open
    /// transaction.
    pub(super) fn send_changelog(&mut self) -> Result<(), EngineError> {
        let Some(state) = self.state.clone() else {
            return Ok(());
        };
        // Lent out while sent (sending needs the whole core). A failed send
        // discards the batch, and these with it.
        let writes = self.checkpoint.lend_writes();
        let own = writes
            .iter()
            .filter(|(_, store, _, _)| !state.tables.contains(store));
        for (task, store, key, value) in own {
            self.send_record(stash::HeldRecord {
                topic: &state.changelogs[store],
                partition: Some(task),
                origin: Origin::UNKNOWN,
                key: Some(key),
                value,
                headers: &[],
                timestamp: None,
            })?;
        }
        self.checkpoint.give_back_writes(writes);
        Ok(())
    }

    /// The committed batch's writes, and the changelog offsets they reach,
    /// in one store batch: for a join's store, the table offsets the batch
    /// read (`offsets`, its committed input offsets).
    pub(super) fn apply_committed(
        &mut self,
        writes: &crate::state::Writes,
        offsets: &Offsets,
    ) -> Result<(), EngineError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let mut reached = self.producer.context().take_changelog_ends();
        for &store in &state.tables {
            let table = &state.changelogs[store];
            reached.extend(
                offsets
                    .iter()
                    .filter(|((topic, _), _)| topic == table)
                    .map(|((_, task), next)| (*task, store, *next)),
            );
        }
        if writes.is_empty() && reached.is_empty() {
            return Ok(());
        }
        Ok(state.store.apply(writes, &reached)?)
    }

    /// Released tasks' stores stay (a tail to replay if they come back),
    /// and a standby may keep them warm.
    pub(super) fn unclaim(&self, tasks: &[i32]) {
        if let Some(state) = &self.state {
            state.store.unclaim(tasks);
        }
    }

    /// Brings the stores of `tasks` up to their changelogs. Called once
    /// their committed input offsets have been read (stable): the previous
    /// owner's last transaction is over, its changelog records final.
    pub(super) fn restore(&mut self, tasks: &[i32]) -> Result<(), EngineError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        // Before anything is read: a standby copy here stops writing them.
        state.store.claim(tasks);
        let (heartbeat, status) = (&self.heartbeat, &self.status);
        let restorer = Restorer {
            config: &self.config,
            store: &state.store,
            changelogs: &state.changelogs,
            tables: &state.tables,
            tombstone_retention_ms: self.tombstone_retention_ms,
            beat: &|| heartbeat.beat(),
            report: &|task, progress| status.restore_progress(task, progress),
            shutdown: &self.shutdown,
        };
        let restored = restorer
            .restore(tasks)
            .map_err(|e| EngineError::State(e.to_string()))?;
        // A join's table is read on from where its store stands (it is
        // that store's changelog: restored up to the table's last stable
        // offset, past the group's committed offset when the store was
        // ahead). The offset joins the next commit, so lag counts from it.
        for &store in &state.tables {
            let table = &state.changelogs[store];
            for &task in tasks {
                if let Some(applied) = state.store.applied(task, store)? {
                    let next = applied.next_offset;
                    self.checkpoint
                        .resume_at((table.clone(), task), rdkafka::Offset::Offset(next));
                    self.checkpoint.processed(table, task, next);
                }
            }
        }
        self.metrics.restored_records.inc_by(restored.records);
        if restored.records > 0 {
            tracing::info!(
                ?tasks,
                records = restored.records,
                full = restored.full,
                "tasks restored"
            );
        }
        Ok(())
    }
}
