//! How long a stateful task pauses when it moves (#17), on the test bed.
//! The state verifier's app (`dedup`, then a running count and sum) runs
//! twice, on two pods each, with steady input:
//!
//! - `warm` keeps a standby of every task (`standbyReplicas: 1`) and is
//!   scaled 2 → 1 → 2 again and again: every move goes to a caught-up copy
//!   (the leaving pod keeps its tasks until the copies on the staying one
//!   are caught up; the returning pod warms copies up before it takes any).
//! - Then each app loses a pod (deleted, as in a rolling restart or a node
//!   drain): `warm`'s tasks go to their standbys, `cold`'s (no standbys) to
//!   a pod with no copy, which restores them in full first.
//!
//! A task's pause is its last commit on the old worker → its first on the
//! new, from the operator's TaskResumed Events. The pauses are reported,
//! not asserted: timed targets belong to benchmarks on a quiet machine, and
//! this one shares two cores with the broker, the control plane and every
//! pod (docs/state-store.md quotes the runs). What is asserted: enough warm
//! moves measured, none of them a full restore, and every count exact.
//!
//! Sizes: `MILLRACE_MOVE_CYCLES` (default 6: 48 moves, at least 30
//! measured) and
//! `MILLRACE_MOVE_RECORDS` (default 30,000 per app).

use std::time::Duration;

use millrace_tests::state_verifier::{generate, manifest, verify};
use millrace_tests::verifier::{drained, env_or, Topics};
use millrace_tests::workers::{apply_yaml, get, scale, standby_lags, task_pauses, wait_settled};
use millrace_tests::{install_chart, kubectl, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 8;

struct App {
    name: &'static str,
    app_id: String,
    topics: Topics,
}

impl App {
    fn apply(ns: &str, name: &'static str, standbys: u32) -> Self {
        let prefix = unique(&format!("mv{name}"));
        let topics = Topics::new(&prefix, PARTITIONS);
        topics.create();
        let app_id = format!("{prefix}-app");
        let spec = format!(
            "  commitInterval: 200ms\n  transactionTimeout: 30s\n  replicas: 2\n  state: {{standbyReplicas: {standbys}}}\n"
        );
        apply_yaml(ns, name, &manifest(name, &app_id, &topics, &spec));
        Self {
            name,
            app_id,
            topics,
        }
    }

    /// The pauses of moves to `worker` measured since `before` were (as
    /// [`task_pauses`] lists them), once there are at least `at_least`
    /// (a move's pause is known at the new worker's first commit, a moment
    /// after the move), sorted.
    fn pauses_since(
        &self,
        ns: &str,
        before: &[(String, u64)],
        worker: Option<&str>,
        at_least: usize,
    ) -> Vec<u64> {
        wait_until(
            &format!("{at_least} pauses of {}'s moves", self.name),
            Duration::from_secs(120),
            || {
                let mut new = task_pauses(ns, self.name);
                for old in before {
                    if let Some(i) = new.iter().position(|p| p == old) {
                        new.remove(i);
                    }
                }
                let mut ms: Vec<u64> = new
                    .into_iter()
                    .filter(|(to, _)| worker.is_none_or(|w| w == to))
                    .map(|(_, ms)| ms)
                    .collect();
                ms.sort_unstable();
                (ms.len() >= at_least).then_some(ms)
            },
        )
    }

    /// Deletes the app's second pod: a restart, as a rolling update or a
    /// node drain does it; its tasks move to the other pod at once.
    fn lose_a_pod(&self, ns: &str) {
        let pod = format!("{}-1", self.name);
        kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]).unwrap();
        eprintln!("deleted {pod}");
    }

    fn verify(&self, records: u64) {
        wait_until(
            &format!("{} to commit the whole input", self.name),
            Duration::from_secs(600),
            || drained(&self.app_id, &self.topics).then_some(()),
        );
        let summary = verify(&self.topics.outputs[0], PARTITIONS, records);
        println!("{}: {summary}", self.name);
        assert!(summary.wrong.is_empty(), "{}: {summary}", self.name);
    }
}

/// The distribution of sorted pauses.
fn describe(pauses: &[u64]) -> String {
    if pauses.is_empty() {
        return "none measured".into();
    }
    let at = |p: f64| pauses[((pauses.len() - 1) as f64 * p).round() as usize];
    format!(
        "{} moves, p50 {} ms, p99 {} ms, max {} ms",
        pauses.len(),
        at(0.5),
        at(0.99),
        pauses[pauses.len() - 1]
    )
}

/// Full restores an app's Restored Events announce.
fn full_restores(ns: &str, app: &str) -> Vec<String> {
    get(
        ns,
        "events",
        "{range .items[?(@.reason==\"Restored\")]}{.message}{\"\\n\"}{end}",
    )
    .lines()
    .filter(|m| m.contains(&format!(" on {app}-")) && m.contains("full:"))
    .map(String::from)
    .collect()
}

#[test]
fn warm_moves_pause_briefly_and_a_lost_pod_fails_over_to_its_standbys() {
    install_chart(&[]);
    let cycles = env_or("MILLRACE_MOVE_CYCLES", 6);
    let records = env_or("MILLRACE_MOVE_RECORDS", 30_000);
    let ns = TestNamespace::create("moves");
    let ns = ns.0.as_str();
    let warm = App::apply(ns, "warm", 1);
    let cold = App::apply(ns, "cold", 0);
    for app in [&warm, &cold] {
        wait_settled(ns, app.name, 2, PARTITIONS);
    }
    let over = Duration::from_secs(40 + 30 * cycles);
    let generators: Vec<_> = [&warm, &cold]
        .iter()
        .map(|app| {
            let input = app.topics.input.clone();
            std::thread::spawn(move || generate(&input, records, over))
        })
        .collect();
    let caught_up = |app: &str| {
        wait_until(
            &format!("every task of {app} to have a caught-up standby"),
            Duration::from_secs(120),
            || {
                let lags = standby_lags(ns, app);
                (lags.len() == PARTITIONS as usize && lags.values().all(|(r, _)| *r < 2000))
                    .then_some(())
            },
        )
    };
    caught_up(warm.name);

    for _ in 0..cycles {
        scale(ns, warm.name, 1);
        wait_settled(ns, warm.name, 1, PARTITIONS);
        scale(ns, warm.name, 2);
        wait_settled(ns, warm.name, 2, PARTITIONS);
    }
    // Each cycle moves 4 tasks away from the second pod and 4 back; a
    // move is measured at the task's first commit on its new worker, and
    // the verifier's keys leave one of the 8 partitions without input (a
    // task that never commits): at least 5 moves a cycle are measured.
    let moves = warm.pauses_since(ns, &[], None, 5 * cycles as usize);
    println!(
        "warm moves (scale 2 → 1 → 2 x{cycles}): {}",
        describe(&moves)
    );
    // The target of issue #17, reported (not asserted: see above).
    let p99 = moves[((moves.len() - 1) as f64 * 0.99).round() as usize];
    println!(
        "warm move pause p99 < 1 s (a target for release builds): {}",
        if p99 < 1000 { "met" } else { "not met" }
    );
    let full = full_restores(ns, warm.name);
    assert!(
        full.is_empty(),
        "a warm move restores no task in full: {full:#?}"
    );

    caught_up(warm.name);
    let before = [task_pauses(ns, warm.name), task_pauses(ns, cold.name)];
    for app in [&warm, &cold] {
        app.lose_a_pod(ns);
    }
    for app in [&warm, &cold] {
        wait_settled(ns, app.name, 2, PARTITIONS);
    }
    // The lost pod's tasks resume on the other one (and later move back).
    let failover = |app: &App, before| {
        let survivor = format!("{}-0", app.name);
        describe(&app.pauses_since(ns, before, Some(&survivor), 1))
    };
    println!(
        "pod lost, its tasks to their standbys (warm): {}",
        failover(&warm, &before[0])
    );
    println!(
        "pod lost, its tasks restored with no copy (cold): {}; full restores: {:#?}",
        failover(&cold, &before[1]),
        full_restores(ns, cold.name)
    );

    for g in generators {
        g.join().unwrap();
    }
    for app in [&warm, &cold] {
        app.verify(records);
    }
}
