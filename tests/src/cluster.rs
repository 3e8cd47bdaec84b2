//! The test bed's three-node Kafka cluster (`e2e/kafka/kafka.sh up
//! cluster`: replication factor 3, `min.insync.replicas=2`, the offsets and
//! transaction state logs replicated alike): started for a test binary, its
//! brokers crashed and restarted one at a time, which broker holds which
//! role, and when committed output arrives.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::verifier::reader;
use crate::{kafka_bootstrap, repo_root, unique, wait_until};

/// Partitions of `__consumer_offsets` and `__transaction_state` on the
/// test bed (`e2e/kafka/server.properties.tmpl`).
const INTERNAL_PARTITIONS: i32 = 10;

/// The cluster, up while this lives: started unless it runs, and this
/// process's clients and the workers it starts pointed at it
/// (`KAFKA_BOOTSTRAP`); stopped when dropped, so the single-node tests that
/// follow have the machine's cores. A binary using it talks to the cluster
/// only, and holds one test (the environment is set for the process).
pub struct Cluster {
    pub bootstrap: String,
}

impl Cluster {
    pub fn up() -> Self {
        kafka_sh(&["up", "cluster"]);
        let bootstrap = kafka_sh(&["bootstrap", "cluster"]).trim().to_string();
        std::env::set_var("KAFKA_BOOTSTRAP", &bootstrap);
        Self { bootstrap }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kafka_sh(&["down", "cluster"]);
    }
}

fn kafka_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/kafka/kafka.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGKILLs node `node` (broker and controller: a crash, no controlled
/// shutdown) and waits until the process is gone.
pub fn kill(node: i32) {
    kafka_sh(&["kill", "cluster", &node.to_string()]);
}

/// Starts node `node` again on its data and waits until the metadata lists
/// every broker.
pub fn restart(node: i32) {
    kafka_sh(&["start", "cluster", &node.to_string()]);
}

/// The node leading the KRaft metadata quorum.
pub fn active_controller() -> i32 {
    kafka_sh(&["controller", "cluster"]).trim().parse().unwrap()
}

/// Java's `String.hashCode`, which places a group or a transactional id
/// on a partition of its coordinator's log.
fn java_hash(text: &str) -> i32 {
    text.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The broker coordinating `key` through the internal topic `log`: the
/// leader of partition `abs(hash(key)) % partitions`, as Kafka's group and
/// transaction coordinators place their keys.
fn coordinator(log: &str, key: &str) -> i32 {
    let partition = (java_hash(key) & 0x7fff_ffff) % INTERNAL_PARTITIONS;
    let probe = probe();
    wait_until(
        &format!("a leader for {log}-{partition}"),
        Duration::from_secs(60),
        || {
            let md = probe
                .fetch_metadata(Some(log), Duration::from_secs(5))
                .ok()?;
            let leader = md
                .topics()
                .first()?
                .partitions()
                .get(partition as usize)?
                .leader();
            (leader >= 0).then_some(leader)
        },
    )
}

/// The broker coordinating the consumer group `group`.
pub fn group_coordinator(group: &str) -> i32 {
    coordinator("__consumer_offsets", group)
}

/// The broker coordinating the transactional id `transactional_id`.
pub fn transaction_coordinator(transactional_id: &str) -> i32 {
    coordinator("__transaction_state", transactional_id)
}

fn probe() -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap()
}

/// Waits until every partition of every topic has all its replicas in
/// sync: a restarted broker has caught up, so the next crash leaves two
/// in-sync replicas everywhere (one at a time, as the issue asks).
pub fn wait_fully_replicated() {
    let probe = probe();
    wait_until(
        "every partition fully replicated",
        Duration::from_secs(180),
        || {
            let md = probe.fetch_metadata(None, Duration::from_secs(5)).ok()?;
            (md.brokers().len() == 3
                && md.topics().iter().all(|t| {
                    t.partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.isr().len() == p.replicas().len())
                }))
            .then_some(())
        },
    );
}

/// When committed records reached some topics, as a `read_committed`
/// consumer saw them, from its start until [`Arrivals::stop`].
pub struct Arrivals {
    stop: Arc<AtomicBool>,
    watcher: JoinHandle<Vec<Instant>>,
}

impl Arrivals {
    /// Watches `topics` (name, partitions) from their current end.
    pub fn watch(topics: &[(&str, i32)]) -> Self {
        let consumer = reader(&unique("arrivals"));
        let mut assignment = TopicPartitionList::new();
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                assignment
                    .add_partition_offset(topic, p, Offset::End)
                    .unwrap();
            }
        }
        consumer.assign(&assignment).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
                        seen.push(Instant::now());
                    }
                }
                seen
            })
        };
        Self { stop, watcher }
    }

    pub fn stop(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.watcher.join().unwrap()
    }
}

/// The longest time between `from` and `to` in which no committed output
/// arrived (counted from the last arrival before `from`).
pub fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    let before = arrivals.iter().rev().find(|a| **a < from).copied();
    let mut last = before.unwrap_or(from);
    let mut longest = Duration::ZERO;
    for a in arrivals.iter().filter(|a| **a >= from && **a <= to) {
        longest = longest.max(*a - last);
        last = *a;
    }
    longest.max(to.saturating_duration_since(last))
}

/// Records written per chunk, and over how long: 250 per second per app.
pub const CHUNK: u64 = 1_000;
pub const CHUNK_TIME: Duration = Duration::from_secs(4);

/// Writes chunks of records (`write(seqs)`) until `stop`; the records
/// written.
pub fn in_chunks(stop: &AtomicBool, write: impl Fn(std::ops::Range<u64>)) -> u64 {
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        write(next..next + CHUNK);
        next += CHUNK;
    }
    next
}

/// Records in `topic` (the sum of its partitions' end offsets).
pub fn written(topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| crate::verifier::end_offset(topic, p))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // "hello".hashCode() in Java.
        assert_eq!(java_hash("hello"), 99162322);
        assert_eq!(java_hash(""), 0);
    }

    #[test]
    fn the_longest_gap_spans_the_kill() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let arrivals = [at(0), at(100), at(200), at(2200), at(2300)];
        assert_eq!(
            longest_gap(&arrivals, at(150), at(2300)),
            Duration::from_millis(2000)
        );
        // Nothing after the kill: the gap runs to the end.
        assert_eq!(
            longest_gap(&arrivals[..3], at(150), at(1000)),
            Duration::from_millis(800)
        );
    }
}
