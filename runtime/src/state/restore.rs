//! Restore: before a task's first record, each of its stores catches up
//! with its changelog, from the offset the store recorded (a tail after a
//! crash with the volume intact, everything when the volume is new). Never
//! a wipe, except when the store cannot be trusted: its offset is past the
//! changelog's end (the topic was recreated) or before its start, or it is
//! older than the changelog keeps tombstones (a delete it missed may be
//! gone).
//!
//! Read with read_committed until the consumer's position reaches the end
//! read_uncommitted sees: right after the previous owner's commit, its
//! markers may not all be written yet, and the last stable offset is then
//! short of records the committed input offsets already count.
//!
//! A join's store has no changelog of its own: its table topic is one, read
//! to its last stable offset (the table's writers are not the app's, and
//! the task reads on from where the store stands).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::store::{Applied, Store, StoreError};
use super::writes::Writes;
use super::{changelog_positions, changelog_reader, dispose, store_of};
use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::worker_status::{unix_ms, RestoreState, TaskRestore};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replay waits for a record before it looks whether its
/// position has passed the end.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Changelog records applied per store batch while restoring.
const RESTORE_BATCH: usize = 10_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restoring state: {0}")]
    Kafka(#[from] KafkaError),
    #[error("restoring state: {0}")]
    Store(#[from] StoreError),
    #[error("restoring state: {0}")]
    Client(String),
    #[error("stopped while restoring state")]
    Stopped,
}

/// What restoring some tasks took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Stores replayed from their start (new or untrusted).
    pub full: u32,
}

/// Where a store's replay starts (`None`: it is up to date), and whether it
/// is emptied first, given what it recorded and the changelog partition's
/// `[low, high)`.
pub fn replay_from(
    applied: Option<Applied>,
    (low, high): (i64, i64),
    tombstone_retention_ms: u64,
    now_ms: u64,
) -> (Option<i64>, bool) {
    let trusted = applied.filter(|a| {
        let in_log = (low..=high).contains(&a.next_offset);
        // A store's recorded offset is one past its last changelog record,
        // and the transaction's marker follows that record: with only the
        // marker left (a partition always ends in one), nothing was missed.
        let up_to_date = a.next_offset + 1 >= high;
        let fresh = now_ms.saturating_sub(a.written_at_ms) < tombstone_retention_ms / 2;
        in_log && (up_to_date || fresh)
    });
    // A full restore starts from an empty store: one with no recorded offset
    // may hold keys still (a crash inside a wipe).
    let wipe = trusted.is_none();
    let from = trusted.map_or(low, |a| a.next_offset);
    ((from < high).then_some(from), wipe)
}

/// One changelog partition to replay.
struct Replay {
    topic: String,
    task: i32,
    store: usize,
    next: i64,
    end: i64,
    restored: u64,
    full: bool,
}

pub struct Restorer<'a> {
    pub config: &'a WorkerConfig,
    pub store: &'a Store,
    /// Store `i`'s changelog is `changelogs[i]`.
    pub changelogs: &'a [String],
    /// The stores whose changelog is a join's table.
    pub tables: &'a BTreeSet<usize>,
    pub tombstone_retention_ms: u64,
    /// Called while waiting: a restore is not a stuck loop.
    pub beat: &'a dyn Fn(),
    /// Each task's progress, as it starts, every few seconds, and at the end.
    pub report: &'a dyn Fn(i32, TaskRestore),
    pub shutdown: &'a AtomicBool,
}

impl Restorer<'_> {
    /// Brings the stores of `tasks` up to their changelogs' ends.
    pub fn restore(&self, tasks: &[i32]) -> Result<Restored, RestoreError> {
        if tasks.is_empty() || self.changelogs.is_empty() {
            return Ok(Restored::default());
        }
        let client = |isolation: &str| {
            // At the end of each partition the replay hears it at once
            // instead of after a poll's timeout.
            changelog_reader(self.config, isolation, true)
                .map_err(|e| RestoreError::Client(e.to_string()))
        };
        let probe = client("read_uncommitted")?;
        // A table's end is its last stable offset: its writers are not
        // fenced by this restore, and a transaction of theirs still open
        // is read once it commits, by the task.
        let table_probe = match self.tables.is_empty() {
            true => None,
            false => Some(client("read_committed")?),
        };
        let mut restored = Restored::default();
        let mut replays = Vec::new();
        for &task in tasks {
            for (store, topic) in self.changelogs.iter().enumerate() {
                let probe = match &table_probe {
                    Some(p) if self.tables.contains(&store) => p,
                    _ => &probe,
                };
                let bounds = self.watermarks(probe, topic, task)?;
                let applied = self.store.applied(task, store)?;
                let (from, wipe) =
                    replay_from(applied, bounds, self.tombstone_retention_ms, unix_ms());
                if wipe && applied.is_some() {
                    tracing::warn!(task, topic, ?applied, ?bounds, "the local store cannot be trusted (changelog recreated, truncated or too long ago); restoring it in full");
                }
                if wipe {
                    self.store.wipe(task, store)?;
                }
                let full = wipe && from.is_some();
                restored.full += u32::from(full);
                if let Some(next) = from {
                    replays.push(Replay {
                        topic: topic.clone(),
                        task,
                        store,
                        next,
                        end: bounds.1,
                        restored: 0,
                        full,
                    });
                }
            }
        }
        dispose(probe);
        table_probe.into_iter().for_each(dispose);
        let started_ms = unix_ms();
        self.report_progress(tasks, &replays, started_ms);
        if !replays.is_empty() {
            let consumer = client("read_committed")?;
            let replayed = self.replay(&consumer, &mut replays, started_ms);
            dispose(consumer);
            restored.records = replayed?;
        }
        self.report_progress(tasks, &replays, started_ms);
        Ok(restored)
    }

    /// Per task, its stores' replays summed.
    fn report_progress(&self, tasks: &[i32], replays: &[Replay], since_ms: u64) {
        let seconds = (unix_ms().saturating_sub(since_ms) as f64 / 1000.0).max(0.001);
        for &task in tasks {
            let mut progress = TaskRestore {
                since_ms,
                ..TaskRestore::default()
            };
            for r in replays.iter().filter(|r| r.task == task) {
                progress.records_restored += r.restored;
                progress.records_remaining += (r.end - r.next).max(0) as u64;
                progress.full |= r.full;
            }
            progress.rate = (progress.records_restored as f64 / seconds) as u64;
            if progress.records_remaining == 0 {
                progress.state = RestoreState::Active;
            }
            (self.report)(task, progress);
        }
    }

    fn watermarks(
        &self,
        probe: &BaseConsumer,
        topic: &str,
        task: i32,
    ) -> Result<(i64, i64), RestoreError> {
        loop {
            match probe.fetch_watermarks(topic, task, TIMEOUT) {
                Ok(bounds) => return Ok(bounds),
                Err(e) if !self.shutdown.load(Ordering::Relaxed) => {
                    tracing::warn!(topic, task, "changelog end: {e}; retrying");
                    (self.beat)();
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn replay(
        &self,
        consumer: &BaseConsumer,
        replays: &mut [Replay],
        since_ms: u64,
    ) -> Result<u64, RestoreError> {
        let mut tpl = TopicPartitionList::new();
        for r in replays.iter() {
            tpl.add_partition_offset(&r.topic, r.task, Offset::Offset(r.next))?;
        }
        consumer.assign(&tpl)?;
        // By (store, task): no topic name is allocated per record.
        let index: BTreeMap<(usize, i32), usize> = replays
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.store, r.task), i))
            .collect();
        let tasks: Vec<i32> = replays.iter().map(|r| r.task).collect();
        let remaining =
            |replays: &[Replay]| -> i64 { replays.iter().map(|r| (r.end - r.next).max(0)).sum() };
        let started = Instant::now();
        let mut logged = Instant::now();
        let mut records = 0u64;
        let mut writes = Writes::default();
        tracing::info!(
            partitions = replays.len(),
            records = remaining(replays),
            "restoring state from the changelogs"
        );
        while replays.iter().any(|r| r.next < r.end) {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(RestoreError::Stopped);
            }
            (self.beat)();
            // A short wait: the end is found by the position once nothing
            // is left to read, and a moving task waits for it.
            match consumer.poll(IDLE_POLL) {
                Some(Ok(m)) => {
                    let of = store_of(self.changelogs, m.topic(), m.partition());
                    let Some(&i) = of.and_then(|of| index.get(&of)) else {
                        continue;
                    };
                    let r = &mut replays[i];
                    if let Some(key) = m.key() {
                        writes.put(r.task, r.store, key, m.payload());
                    }
                    r.next = r.next.max(m.offset() + 1);
                    r.restored += 1;
                    records += 1;
                }
                // At a partition's end, or nothing more to read: the rest
                // up to the end is markers or aborted records, which the
                // position has passed.
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    for (of, p) in changelog_positions(consumer, self.changelogs) {
                        if let Some(&i) = index.get(&of) {
                            replays[i].next = replays[i].next.max(p);
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!("restoring state: {e}"),
            }
            if writes.len() >= RESTORE_BATCH {
                self.store.apply(&writes, &reached(replays))?;
                writes.clear();
            }
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                let rate = records as f64 / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    records,
                    remaining = remaining(replays),
                    rate = rate as u64,
                    "restoring state"
                );
                self.report_progress(&tasks, replays, since_ms);
            }
        }
        // At the end, each store stands at its partition's end (past any
        // trailing markers).
        for r in replays.iter_mut() {
            r.next = r.next.max(r.end);
        }
        self.store.apply(&writes, &reached(replays))?;
        tracing::info!(
            records,
            seconds = started.elapsed().as_secs_f64(),
            "state restored"
        );
        Ok(records)
    }
}

fn reached(replays: &[Replay]) -> Vec<(i32, usize, i64)> {
    replays.iter().map(|r| (r.task, r.store, r.next)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn at(next_offset: i64, written_at_ms: u64) -> Option<Applied> {
        Some(Applied {
            next_offset,
            written_at_ms,
        })
    }

    #[test]
    fn an_intact_store_replays_only_the_tail() {
        assert_eq!(
            replay_from(at(90, 1000), (0, 100), DAY, 2000),
            (Some(90), false)
        );
        assert_eq!(
            replay_from(at(100, 1000), (0, 100), DAY, 2000),
            (None, false),
            "up to date"
        );
    }

    #[test]
    fn a_new_store_replays_everything_and_an_empty_changelog_nothing() {
        assert_eq!(replay_from(None, (5, 100), DAY, 0), (Some(5), true));
        assert_eq!(
            replay_from(None, (0, 0), DAY, 0),
            (None, true),
            "emptied all the same"
        );
    }

    #[test]
    fn an_untrusted_store_is_wiped_and_replayed_in_full() {
        // Past the end: the changelog was recreated.
        assert_eq!(
            replay_from(at(500, 1000), (0, 100), DAY, 2000),
            (Some(0), true)
        );
        // Before the start: records it needs were deleted.
        assert_eq!(
            replay_from(at(3, 1000), (10, 100), DAY, 2000),
            (Some(10), true)
        );
        // Behind, and older than half the tombstone retention.
        assert_eq!(replay_from(at(90, 0), (0, 100), DAY, DAY), (Some(0), true));
        // Old but up to date: nothing was missed (past the marker, or the
        // marker is all that is left).
        assert_eq!(replay_from(at(100, 0), (0, 100), DAY, DAY), (None, false));
        assert_eq!(
            replay_from(at(99, 0), (0, 100), DAY, DAY),
            (Some(99), false)
        );
    }
}
