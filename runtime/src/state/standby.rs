//! Standby copies (design brief D3: "a standby task is a restore that never
//! stops"): one thread per worker follows the changelogs of the tasks the
//! placement gives it as standbys or warm-ups, applying committed records
//! to its store in batches with the offsets they reach, so a task that
//! moves here (or fails over) restores only the last moments. Memory stays
//! bounded whatever the backlog: the consumer's queue and one batch of
//! writes at most.
//!
//! A standby never writes the store of a task a loop of this worker owns
//! (`Store::claim`): a task becoming active here stops its standby writes
//! before its restore reads the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::restore::replay_from;
use super::{changelog_positions, changelog_reader, store_of, State, Writes};
use crate::metrics::Status;
use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::worker_status::{unix_ms, RestoreState, TaskRestore};

const LOOK_AGAIN: Duration = Duration::from_secs(1);
const APPLY_EVERY: Duration = Duration::from_millis(500);
const MAX_BATCH: usize = 10_000;
const REPORT_EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Standby {
    pub config: WorkerConfig,
    pub state: State,
    /// The tasks to keep warm now.
    pub wanted: Box<dyn Fn() -> BTreeSet<i32> + Send>,
    pub status: Arc<Status>,
    pub shutdown: Arc<AtomicBool>,
}

/// One changelog partition followed: (store, task) → next offset.
type Followed = BTreeMap<(usize, i32), i64>;
/// Per task, the timestamp (ms) of the newest changelog record read.
type Newest = BTreeMap<i32, i64>;

impl Standby {
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || {
                while !self.shutdown.load(Ordering::Relaxed) {
                    let Err(e) = self.run() else { break };
                    // Actives are not affected. The copies no longer count as
                    // caught up (their reports go) until they follow again.
                    tracing::warn!("standby copies: {e}; starting over in 5 s");
                    self.status.forget_standbys();
                    std::thread::sleep(Duration::from_secs(5));
                }
            })?;
        Ok(())
    }

    fn run(&self) -> anyhow::Result<()> {
        let consumer = changelog_reader(&self.config, "read_committed", false)?;
        let probe = changelog_reader(&self.config, "read_uncommitted", false)?;
        let store = &self.state.store;
        let mut tasks = BTreeSet::new();
        let mut followed = Followed::new();
        let mut applied: BTreeMap<i32, u64> = BTreeMap::new();
        let mut newest = Newest::new();
        let mut writes = Writes::default();
        let (mut looked, mut flushed, mut reported) =
            (Instant::now() - LOOK_AGAIN, Instant::now(), Instant::now());
        while !self.shutdown.load(Ordering::Relaxed) {
            if looked.elapsed() >= LOOK_AGAIN {
                looked = Instant::now();
                let wanted: BTreeSet<i32> = (self.wanted)()
                    .into_iter()
                    .filter(|t| !store.is_claimed(*t))
                    .collect();
                if wanted != tasks {
                    // What was read for the old set is applied first.
                    store.apply_unclaimed(&mut writes, &reached(&followed))?;
                    writes.clear();
                    followed = self.follow(&consumer, &probe, &wanted)?;
                    for gone in tasks.difference(&wanted) {
                        self.status.forget_standby(*gone);
                        newest.remove(gone);
                    }
                    tasks = wanted;
                }
            }
            if tasks.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let Some((store, task)) =
                        store_of(&self.state.changelogs, m.topic(), m.partition())
                    else {
                        continue;
                    };
                    if let Some(key) = m.key() {
                        writes.put(task, store, key, m.payload());
                    }
                    followed.insert((store, task), m.offset() + 1);
                    *applied.entry(task).or_default() += 1;
                    if let Some(ms) = m.timestamp().to_millis() {
                        let at = newest.entry(task).or_default();
                        *at = (*at).max(ms);
                    }
                }
                Some(Err(e)) => tracing::warn!("standby: {e}"),
                None => {
                    for (of, p) in changelog_positions(&consumer, &self.state.changelogs) {
                        if let Some(next) = followed.get_mut(&of) {
                            *next = (*next).max(p);
                        }
                    }
                }
            }
            if writes.len() >= MAX_BATCH || flushed.elapsed() >= APPLY_EVERY {
                flushed = Instant::now();
                store.apply_unclaimed(&mut writes, &reached(&followed))?;
                writes.clear();
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                self.report(&probe, &tasks, &followed, &applied, &newest);
            }
        }
        Ok(())
    }

    /// Assigns the consumer to the changelog partitions of `tasks`, each
    /// from where its store stands (wiped first where it cannot be trusted).
    fn follow(
        &self,
        consumer: &BaseConsumer,
        probe: &BaseConsumer,
        tasks: &BTreeSet<i32>,
    ) -> anyhow::Result<Followed> {
        let store = &self.state.store;
        let mut tpl = TopicPartitionList::new();
        let mut followed = Followed::new();
        for &task in tasks {
            for (index, topic) in self.state.changelogs.iter().enumerate() {
                let bounds = probe.fetch_watermarks(topic, task, TIMEOUT)?;
                let applied = store.applied(task, index)?;
                let retention = self.state.tombstone_retention_ms.load(Ordering::Relaxed);
                let (from, wipe) = replay_from(applied, bounds, retention, unix_ms());
                if wipe && !store.wipe_unclaimed(task, index)? {
                    continue;
                }
                let next = from.unwrap_or(bounds.1);
                tpl.add_partition_offset(topic, task, Offset::Offset(next))?;
                followed.insert((index, task), next);
            }
        }
        consumer.assign(&tpl)?;
        if !tasks.is_empty() {
            tracing::info!(?tasks, "keeping standby copies warm");
        }
        Ok(followed)
    }

    /// Each standby's lag, on `/tasks`: records behind the changelogs'
    /// ends, and seconds (how old the newest change it holds is, while it
    /// is behind; the end's own timestamp would cost a fetch per report).
    fn report(
        &self,
        probe: &BaseConsumer,
        tasks: &BTreeSet<i32>,
        followed: &Followed,
        applied: &BTreeMap<i32, u64>,
        newest: &Newest,
    ) {
        let now = unix_ms() as i64;
        for &task in tasks {
            let mut lag = 0;
            for ((index, t), next) in followed.range((0, task)..) {
                if *t != task {
                    continue;
                }
                let topic = &self.state.changelogs[*index];
                if let Ok((_, end)) = probe.fetch_watermarks(topic, task, TIMEOUT) {
                    lag += (end - next).max(0) as u64;
                }
            }
            self.status.standby_progress(
                task,
                TaskRestore {
                    state: RestoreState::Standby,
                    records_restored: applied.get(&task).copied().unwrap_or(0),
                    records_remaining: lag,
                    seconds_behind: seconds_behind(lag, newest.get(&task).copied(), now),
                    ..TaskRestore::default()
                },
            );
        }
    }
}

fn seconds_behind(lag: u64, newest_ms: Option<i64>, now_ms: i64) -> Option<u64> {
    match (lag, newest_ms) {
        (0, _) => Some(0),
        (_, Some(ms)) => Some((now_ms - ms).max(0) as u64 / 1000),
        (_, None) => None,
    }
}

fn reached(followed: &Followed) -> Vec<(i32, usize, i64)> {
    followed
        .iter()
        .map(|((store, task), next)| (*task, *store, *next))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_at_the_end_is_zero_seconds_behind_else_the_age_of_its_newest_change() {
        assert_eq!(seconds_behind(0, None, 9_000), Some(0));
        assert_eq!(seconds_behind(0, Some(1_000), 9_000), Some(0));
        assert_eq!(seconds_behind(5, Some(1_000), 9_500), Some(8));
        assert_eq!(seconds_behind(5, None, 9_000), None, "nothing read yet");
        assert_eq!(
            seconds_behind(5, Some(10_000), 9_000),
            Some(0),
            "clock skew"
        );
    }
}
