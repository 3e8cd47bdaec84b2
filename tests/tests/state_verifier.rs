//! The state verifier (see `millrace_tests::state_verifier`) against one
//! standalone worker: `dedup` then a running `aggregate` over a 4-partition
//! input, the worker crashing and restarting on its state directory.
//!
//! - SIGKILLs at random moments; once the directory is deleted before the
//!   restart (a lost volume: a full restore from the changelogs), and the
//!   last start, its volume intact, replays no more than a tail.
//! - Crashes at each step of a batch's commit (`runtime/src/failpoint.rs`):
//!   after its changelog records are sent and before the commit (the
//!   transaction aborts, the store never saw the writes); after the commit
//!   and before the store write (the store is behind: the tail is
//!   replayed); right after the store write.
//!
//! Sizes: `MILLRACE_STATE_RECORDS` (default 20,000) and
//! `MILLRACE_STATE_KILLS` (default 5).

use std::path::{Path, PathBuf};

use millrace_tests::state_verifier::manifest;
use std::time::Duration;

use millrace_tests::runtime::{admin_get, log_path, start_logging_with, tasks, Running};
use millrace_tests::state_verifier::{generate_seqs, verify, StateSummary};
use millrace_tests::verifier::{drained, env_or, Topics};
use millrace_tests::{committed_offset, unique, wait_until};

const PARTITIONS: i32 = 4;

/// One app's run: its topics, manifest, state directory and admin port.
struct Run {
    topics: Topics,
    app_id: String,
    manifest: PathBuf,
    state_dir: PathBuf,
    port: u16,
    records: u64,
}

impl Run {
    fn prepare(port: u16) -> Self {
        let prefix = unique("state");
        let topics = Topics::new(&prefix, PARTITIONS);
        topics.create();
        let app_id = format!("{prefix}-app");
        let manifest = std::env::temp_dir().join(format!("{prefix}.yaml"));
        let spec = "  commitInterval: 500ms\n  transactionTimeout: 30s\n  state: {}\n";
        std::fs::write(
            &manifest,
            self::manifest("state-verifier", &app_id, &topics, spec),
        )
        .unwrap();
        let _ = std::fs::remove_file(log_path(port));
        eprintln!("worker log: {}", log_path(port).display());
        Self {
            topics,
            app_id,
            manifest,
            state_dir: std::env::temp_dir().join(format!("{prefix}-state")),
            port,
            records: env_or("MILLRACE_STATE_RECORDS", 20_000),
        }
    }

    fn start(&self, envs: &[(&str, &str)]) -> Running {
        let dir = self.state_dir.to_str().unwrap();
        let mut envs = envs.to_vec();
        envs.push(("RUST_LOG", "info"));
        // Each worker its own query port: two on the default one, the
        // second stops (tests of this binary run side by side).
        let query = (self.port + 1000).to_string();
        let args = ["--state-dir", dir, "--query-port", &query];
        start_logging_with(&self.manifest, self.port, &args, &envs)
    }

    /// Writes the input's records `seqs` over about `over`, in the
    /// background.
    fn generate(&self, seqs: std::ops::Range<u64>, over: Duration) -> std::thread::JoinHandle<()> {
        let input = self.topics.input.clone();
        std::thread::spawn(move || generate_seqs(&input, seqs, over))
    }

    /// Once every task is restored and active (`/tasks`): the records
    /// restored over them, and whether a store was restored in full (one
    /// whose changelog partition is still empty has nothing to restore).
    fn restored(&self) -> Option<(u64, bool)> {
        let tasks = tasks(self.port)?;
        let restores = tasks["restores"].as_object()?;
        let active = restores.values().filter(|r| r["state"] == "Active").count();
        if active < PARTITIONS as usize {
            return None;
        }
        let records = restores
            .values()
            .filter_map(|r| r["recordsRestored"].as_u64())
            .sum();
        let full = restores.values().any(|r| r["full"] == true);
        // The metric says the same once the last loop has counted its
        // restore (a moment after reporting it).
        let metric: u64 = admin_get(self.port, "/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix("millrace_state_restored_records_total "))
            .and_then(|v| v.trim().parse().ok())?;
        (metric == records).then_some((records, full))
    }

    /// Input records committed so far, over every partition.
    fn committed_input(&self) -> i64 {
        (0..PARTITIONS)
            .map(
                |p| match committed_offset(&self.app_id, &self.topics.input, p) {
                    rdkafka::Offset::Offset(o) => o,
                    _ => 0,
                },
            )
            .sum()
    }

    /// Waits for the whole input to be committed, stops the worker cleanly
    /// and checks every update.
    fn finish(&self, worker: Running) -> StateSummary {
        wait_until(
            "the app to commit the whole input",
            Duration::from_secs(300),
            || drained(&self.app_id, &self.topics).then_some(()),
        );
        worker.terminate();
        verify(&self.topics.outputs[0], PARTITIONS, self.records)
    }
}

fn remove(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn counts_and_sums_are_exact_and_dedup_holds_across_sigkills_and_a_lost_volume() {
    let run = Run::prepare(18095);
    let kills = env_or("MILLRACE_STATE_KILLS", 5);
    let mut worker = run.start(&[]);
    // The last records come after the last start, for it to commit.
    let last = run.records - 1000;
    let generator = run.generate(0..last, Duration::from_millis(1500 * kills + 1000));
    let mut last_start = millrace_crds::worker_status::unix_ms();
    let lost_volume_at = kills / 2;
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut full_restore = None;
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(600 + (seed >> 33) % 1400);
        std::thread::sleep(delay);
        let lose = kill == lost_volume_at;
        if lose {
            // Something committed, so there is state to lose.
            wait_until("a first commit", Duration::from_secs(60), || {
                (run.committed_input() > 0).then_some(())
            });
        }
        worker.kill();
        if lose {
            remove(&run.state_dir);
        }
        eprintln!(
            "kill {} after {delay:?}{}",
            kill + 1,
            if lose { ", volume deleted" } else { "" }
        );
        last_start = millrace_crds::worker_status::unix_ms();
        worker = run.start(&[]);
        if lose {
            // Restored in full before anything is processed.
            full_restore = Some(wait_until(
                "the restarted worker to restore its tasks",
                Duration::from_secs(60),
                || run.restored(),
            ));
        }
    }
    generator.join().unwrap();
    let (tail, tail_full) = wait_until("the last start's restore", Duration::from_secs(60), || {
        run.restored()
    });
    run.generate(last..run.records, Duration::ZERO)
        .join()
        .unwrap();
    let first_commit = wait_until(
        "the last start's first commit",
        Duration::from_secs(60),
        || {
            let tasks = tasks(run.port)?;
            tasks["commits"]
                .as_object()?
                .values()
                .filter_map(|c| c["firstMs"].as_u64())
                .min()
        },
    ) - last_start;
    // The last start found its changelogs (an earlier one created them):
    // it reports them all the same, for the operator to record.
    let reported = tasks(run.port).map(|t| t["internalTopics"].to_string());
    for step in ["once", "totals"] {
        let changelog = format!("{}-{step}-changelog", run.app_id);
        assert!(
            reported.as_deref().is_some_and(|r| r.contains(&changelog)),
            "{changelog} in /tasks internalTopics: {reported:?}"
        );
    }
    let summary = run.finish(worker);
    println!(
        "state verifier: {summary} ({kills} SIGKILLs; full restore after the lost volume: \
         {full_restore:?} records; tail replayed by the last start: {tail}, its first commit \
         {first_commit} ms after it started)"
    );
    assert!(summary.wrong.is_empty(), "{summary}");
    let (full, in_full) = full_restore.unwrap_or_default();
    assert!(
        full > 0 && in_full,
        "a lost volume is restored in full from the changelogs"
    );
    assert!(!tail_full, "an intact volume is not restored in full");
    // The last start had its volume: it replays at most the tail a kill
    // left between a commit and its store write.
    assert!(
        tail < full,
        "an intact volume replays a tail ({tail}), not everything ({full})"
    );
    assert!(
        first_commit < 5000,
        "a restart with its volume commits within 5 s, not {first_commit} ms"
    );
}

#[test]
fn a_crash_at_any_step_of_a_commit_leaves_the_state_exact() {
    let run = Run::prepare(18096);
    let points = ["state.changelog-sent", "state.committed", "state.applied"];
    let generator = run.generate(0..run.records, Duration::from_secs(30));
    let mut worker = run.start(&[]);
    for round in 0..2 {
        for point in points {
            // Its 3rd batch: restored and processing by then.
            worker.kill();
            let spec = format!("{point}:3");
            worker = run.start(&[("MILLRACE_FAILPOINT", &spec)]);
            wait_until(
                &format!("the worker to crash at {spec}"),
                Duration::from_secs(60),
                || worker.has_exited().then_some(()),
            );
            eprintln!("round {round}: crashed at {spec}");
        }
    }
    worker = run.start(&[]);
    generator.join().unwrap();
    let summary = run.finish(worker);
    println!("state verifier, crash points: {summary} (6 crashes at {points:?})");
    assert!(summary.wrong.is_empty(), "{summary}");
}
