//! Purging repartition topics: records before a task's committed offset
//! have been processed for good (their outputs, state and the offset
//! committed in one transaction), so they are deleted (Kafka's
//! DeleteRecords), as Kafka Streams does every
//! `repartition.purge.interval.ms`. The topics keep records until then
//! (`retention.ms=-1`): nothing in flight is ever lost to retention, and
//! what was read does not pile up. Its own thread and client: the
//! processing loop never waits for it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::clients;
use crate::metrics::Status;
use millrace_crds::worker_config::WorkerConfig;

/// Kafka Streams' `repartition.purge.interval.ms` default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Overrides [`DEFAULT_INTERVAL`] (milliseconds): tests purge sooner.
pub const INTERVAL_ENV: &str = "MILLRACE_REPARTITION_PURGE_MS";

/// The offsets to purge up to: the committed offsets of `topics` past
/// what was purged already.
pub fn due(
    committed: &BTreeMap<(String, i32), i64>,
    topics: &[String],
    purged: &BTreeMap<(String, i32), i64>,
) -> Vec<((String, i32), i64)> {
    committed
        .iter()
        .filter(|((topic, _), _)| topics.contains(topic))
        .filter(|(tp, offset)| purged.get(*tp).is_none_or(|p| p < *offset))
        .map(|(tp, offset)| (tp.clone(), *offset))
        .collect()
}

pub fn spawn(
    config: &WorkerConfig,
    topics: Vec<String>,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let interval = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_INTERVAL, Duration::from_millis);
    let admin: AdminClient<DefaultClientContext> = clients::admin(config)?.create()?;
    std::thread::Builder::new()
        .name("purge".into())
        .spawn(move || {
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let mut purged = BTreeMap::new();
            let mut last = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() < interval {
                    continue;
                }
                last = Instant::now();
                let committed = status.committed.lock().unwrap().clone();
                let due = due(&committed, &topics, &purged);
                if due.is_empty() {
                    continue;
                }
                let mut offsets = TopicPartitionList::new();
                for ((topic, partition), offset) in &due {
                    let _ =
                        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset));
                }
                // A partition that failed is tried again at the next
                // interval; its records only wait longer.
                match futures::executor::block_on(admin.delete_records(&offsets, &options)) {
                    Ok(result) => {
                        for e in result.elements() {
                            let tp = (e.topic().to_string(), e.partition());
                            match e.error() {
                                Ok(()) => {
                                    if let Some((_, offset)) = due.iter().find(|(d, _)| *d == tp) {
                                        purged.insert(tp, *offset);
                                    }
                                }
                                Err(err) => {
                                    tracing::warn!(topic = tp.0, partition = tp.1, "purging: {err}")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("purging the repartition topics: {e}"),
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repartition_offsets_that_moved_are_purged() {
        let committed: BTreeMap<(String, i32), i64> = [
            (("in".to_string(), 0), 50),
            (("r".to_string(), 0), 10),
            (("r".to_string(), 1), 7),
        ]
        .into();
        let purged: BTreeMap<(String, i32), i64> = [(("r".to_string(), 1), 7)].into();
        assert_eq!(
            due(&committed, &["r".to_string()], &purged),
            vec![(("r".to_string(), 0), 10)]
        );
    }
}
