//! How the Kafka Streams contenders run: one JVM command line with the heap
//! and every setting the harness passes (as trailing `key=value` arguments,
//! bench/kstreams `Overrides`), so the reports list exactly what ran.

use std::process::Command;

use crate::harness::Setup;

/// Kafka Streams' `-Xmx` in every comparison unless `--kstreams-heap` says
/// otherwise: the smallest heap within 5 % of the unbounded JVM's
/// exactly-once throughput in the sweep (`millrace-bench heap`,
/// bench/README.md).
pub const SIZED_HEAP: &str = "192m";

/// The producer batching every Kafka Streams contender runs with. Kafka
/// Streams already lingers 100 ms (its producer default); 16 KB batches
/// (the client's default) held a few dozen of the benchmark's records, so
/// with 64 output partitions a commit interval's outputs went out in many
/// small requests. 128 KB holds an interval's outputs per partition at
/// these rates; set by that arithmetic, not by a sweep (none was run).
pub const PRODUCER_BATCHING: [(&str, &str); 2] = [
    ("producer.batch.size", "131072"),
    ("producer.linger.ms", "100"),
];

/// The orders router's settings under `guarantee` (`exactly_once_v2` or
/// `at_least_once`): everything not listed is Kafka Streams' default,
/// including `commit.interval.ms` (100 under exactly_once_v2, 30000 under
/// at_least_once).
pub fn router_settings(setup: &Setup, guarantee: &str) -> Vec<(String, String)> {
    let mut settings = vec![
        ("processing.guarantee".to_string(), guarantee.to_string()),
        ("num.stream.threads".to_string(), setup.threads.to_string()),
        (
            "consumer.auto.offset.reset".to_string(),
            "earliest".to_string(),
        ),
    ];
    settings.extend(
        PRODUCER_BATCHING
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    with_overrides(settings, &setup.kstreams.settings)
}

/// `settings` with the user's `--kstreams-setting` values put over them.
pub fn with_overrides(
    mut settings: Vec<(String, String)>,
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    for (key, value) in overrides {
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.clone(),
            None => settings.push((key.clone(), value.clone())),
        }
    }
    settings
}

/// What the Kafka Streams JVMs run with, from the command line.
#[derive(Clone, Debug, Default)]
pub struct KafkaStreams {
    /// `-Xmx`, e.g. `512m`; `None` leaves the JVM's default (a quarter of
    /// the machine's memory).
    pub heap: Option<String>,
    /// Settings put over the harness's own (`--kstreams-setting k=v`).
    pub settings: Vec<(String, String)>,
}

impl KafkaStreams {
    /// The JVM options, as passed and as reports show them. A JVM out of
    /// memory exits (as containers run them) instead of limping on with
    /// dead threads: a heap too small fails its run.
    pub fn jvm_options(&self) -> Vec<String> {
        self.heap
            .iter()
            .map(|h| format!("-Xmx{h}"))
            .chain(std::iter::once("-XX:+ExitOnOutOfMemoryError".to_string()))
            .collect()
    }

    /// The JVM options as a report shows them.
    pub fn options_described(&self) -> String {
        let options = self.jvm_options().join(" ");
        if self.heap.is_none() {
            format!("{options}, no -Xmx (the JVM's default limit: a quarter of the memory)")
        } else {
            options
        }
    }
}

/// `java <options> -cp <app> <class> <args> <key=value settings>`.
pub fn command(
    setup: &Setup,
    class: &str,
    args: &[&str],
    settings: &[(String, String)],
) -> anyhow::Result<Command> {
    let dir = setup.repo.join("bench/kstreams/target");
    let jar = dir.join("kstreams-orders-router-1.jar");
    anyhow::ensure!(
        jar.exists(),
        "the Kafka Streams app is not built: run `make bench` (mvn package in bench/kstreams)"
    );
    let mut cmd = Command::new("java");
    cmd.args(setup.kstreams.jvm_options())
        .arg("-cp")
        .arg(format!("{}:{}/*", jar.display(), dir.join("lib").display()))
        .arg(class)
        .args(args)
        .args(settings.iter().map(|(k, v)| format!("{k}={v}")));
    Ok(cmd)
}

/// A settings list as a report shows it.
pub fn listed(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_or_add() {
        let base = vec![("a".to_string(), "1".to_string())];
        let merged = with_overrides(
            base,
            &[
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "3".to_string()),
            ],
        );
        assert_eq!(
            merged,
            vec![
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "3".to_string())
            ]
        );
    }
}
