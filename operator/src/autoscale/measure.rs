//! Lag per task against the last stable offset (Kafka I/O, blocking).
//!
//! Two clients: the shared `read_committed` one ([`crate::kafka_clients`]),
//! whose watermarks end at the last stable offset (so transaction markers
//! and aborted records are not lag, KEDA #5675), and a `read_uncommitted`
//! one of the app's group for its committed offsets (`read_committed` would
//! ask with `require_stable` and wait out every open transaction of the
//! workers).

use std::collections::BTreeMap;
use std::time::Duration;

use millrace_crds::worker_status::partition_lag;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One reading, per task (summed over the source topics).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Seconds (Unix time) of the reading.
    pub at_s: f64,
    pub lag: Vec<i64>,
    /// Σ last stable offsets: its growth is the input.
    pub end: Vec<i64>,
    /// Σ committed offsets (log start without one): its growth is the
    /// processing.
    pub done: Vec<i64>,
}

/// Per-task records/s between two readings: (input, processing).
pub fn rates(before: &Reading, after: &Reading) -> (Vec<f64>, Vec<f64>) {
    let dt = (after.at_s - before.at_s).max(0.001);
    let per = |a: &[i64], b: &[i64]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((y - x).max(0)) as f64 / dt)
            .collect()
    };
    if before.end.len() != after.end.len() {
        // Partitions were added: no rate across the change.
        return (vec![0.0; after.end.len()], vec![0.0; after.end.len()]);
    }
    (per(&before.end, &after.end), per(&before.done, &after.done))
}

fn client(props: &BTreeMap<String, String>, group: &str) -> Result<BaseConsumer, String> {
    let mut config = ClientConfig::new();
    for (k, v) in props {
        config.set(k, v);
    }
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| e.to_string())
}

/// Reads lag for `tasks` partitions of each of `topics` for the app's group.
/// `internal` topics (repartition topics, partition N in task N) count
/// like `topics`, but may not exist yet: the workers create them.
pub fn read(
    props: &BTreeMap<String, String>,
    group: &str,
    (topics, internal): (&[String], &[String]),
    tasks: i32,
    at_s: f64,
) -> Result<Reading, String> {
    // A failing shared client is dropped by the reconcile's next metadata
    // read; a reading's failure may be the group client's or a deleted
    // topic's, no reason to drop it.
    let stable = crate::kafka_clients::client(props)?;
    let offsets = client(props, group)?;
    // Task N reads partition N of each topic that has one: with a set
    // `repartitionPartitions` there may be more tasks than a topic has
    // partitions (or fewer). A topic whose count is unknown (not created
    // yet) counts as having one per task.
    let partitions = |topic: &str| -> Result<i32, String> {
        let metadata = stable
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map_or(tasks, |t| (t.partitions().len() as i32).min(tasks)))
    };
    let mut wanted = TopicPartitionList::new();
    let mut read: Vec<(&String, i32)> = Vec::new();
    for t in topics.iter().chain(internal) {
        let count = partitions(t)?;
        read.push((t, count));
        for p in 0..count {
            wanted.add_partition(t, p);
        }
    }
    let committed = offsets
        .committed_offsets(wanted, TIMEOUT)
        .map_err(|e| format!("committed offsets of group {group}: {e}"))?;
    let n = tasks.max(0) as usize;
    let mut reading = Reading {
        at_s,
        lag: vec![0; n],
        end: vec![0; n],
        done: vec![0; n],
    };
    for (t, count) in read {
        for p in 0..count {
            let (log_start, lso) = match stable.fetch_watermarks(t, p, TIMEOUT) {
                Ok(marks) => marks,
                Err(_) if internal.contains(t) => continue,
                Err(e) => return Err(format!("watermarks of {t}/{p}: {e}")),
            };
            let c = committed
                .find_partition(t, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let i = p as usize;
            reading.lag[i] += partition_lag(lso, log_start, c);
            reading.end[i] += lso;
            reading.done[i] += c.unwrap_or(log_start).min(lso);
        }
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_growth_over_time_and_reset_when_partitions_change() {
        let a = Reading {
            at_s: 10.0,
            lag: vec![0, 0],
            end: vec![100, 200],
            done: vec![100, 150],
        };
        let b = Reading {
            at_s: 20.0,
            lag: vec![0, 0],
            end: vec![300, 200],
            done: vec![200, 200],
        };
        assert_eq!(rates(&a, &b), (vec![20.0, 0.0], vec![10.0, 5.0]));
        let c = Reading {
            end: vec![0; 4],
            done: vec![0; 4],
            lag: vec![0; 4],
            at_s: 30.0,
        };
        assert_eq!(rates(&b, &c).0, vec![0.0; 4]);
    }
}
