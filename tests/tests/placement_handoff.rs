//! Task placement end to end (issue 6): worker pods run by the pod runner,
//! the operator placing 16 tasks on them while replicas go 1 → 4 → 2 → 3 →
//! 1 and pods are SIGKILLed and deleted; the exactly-once verifier then
//! checks every output record. A second test SIGSTOPs a worker: it must be
//! fenced, lose its tasks, and after SIGCONT commit nothing it lost.
//!
//! Sizes: `MILLRACE_PLACEMENT_RECORDS` (default 40,000) and
//! `MILLRACE_PLACEMENT_FAULTS` (default 4). The full run is
//! `MILLRACE_PLACEMENT_RECORDS=200000 MILLRACE_PLACEMENT_FAULTS=10`.

use std::time::{Duration, Instant};

use millrace_tests::verifier::{self, drained, env_or, generate, verify, Topics};
use millrace_tests::workers::{
    apply_yaml, events, pod_log, pod_pids, rescale_with_faults, scale, signal, task_pauses,
    tasks_per_worker, wait_settled,
};
use millrace_tests::{install_chart, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 16;
const HANDOFF_TIMEOUT: &str = "6s";

fn chart() {
    install_chart(&[
        "--set",
        &format!("placement.handoffTimeout={HANDOFF_TIMEOUT}"),
    ]);
}

fn manifest(name: &str, app_id: &str, topics: &Topics, replicas: i32) -> String {
    verifier::manifest(
        name,
        app_id,
        topics,
        &format!(
            "  processingGuarantee: ExactlyOnce\n  commitInterval: 200ms\n  transactionTimeout: 30s\n  replicas: {replicas}\n"
        ),
        "",
    )
}

fn apply_app(ns: &str, name: &str, topics: &Topics, app_id: &str, replicas: i32) {
    apply_yaml(ns, name, &manifest(name, app_id, topics, replicas));
}

#[test]
fn exactly_once_holds_while_rescaling_and_losing_pods() {
    chart();
    let records = env_or("MILLRACE_PLACEMENT_RECORDS", 40_000);
    let faults = env_or("MILLRACE_PLACEMENT_FAULTS", 4);
    let ns = TestNamespace::create("place");
    let ns = ns.0.as_str();
    let prefix = unique("place");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let app = "verifier";
    apply_app(ns, app, &topics, &app_id, 1);
    wait_settled(ns, app, 1, PARTITIONS);

    let started = Instant::now();
    let generating = Duration::from_secs(20 + 8 * faults);
    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, generating))
    };
    // Replicas 1 → 4 → 2 → 3 → 1, with the faults spread over the middle.
    let done = rescale_with_faults(ns, app, &[4, 2, 3], PARTITIONS, faults, 0x51ac_e5ee);
    scale(ns, app, 1);
    wait_settled(ns, app, 1, PARTITIONS);
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(600),
        || drained(&app_id, &topics).then_some(()),
    );
    let s = verify(&topics, records);
    let mut pauses: Vec<u64> = task_pauses(ns, app).into_iter().map(|(_, ms)| ms).collect();
    pauses.sort_unstable();
    let median = pauses.get(pauses.len() / 2).copied().unwrap_or(0);
    println!(
        "placement verifier: {s}; {done} faults, replicas 1→4→2→3→1, {} moves, {} fences, in {:.0?}",
        events(ns, app, "Moved"),
        events(ns, app, "Fenced"),
        started.elapsed()
    );
    println!(
        "task pause (last commit on the old worker → first on the new): {} measured, median {median} ms, max {} ms",
        pauses.len(),
        pauses.last().copied().unwrap_or(0)
    );
    s.assert_exactly_once("placement verifier");
}

#[test]
fn a_stopped_worker_is_fenced_and_commits_nothing_it_lost() {
    chart();
    let ns = TestNamespace::create("fence");
    let ns = ns.0.as_str();
    let prefix = unique("fence");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let app = "stopped";
    apply_app(ns, app, &topics, &app_id, 2);
    wait_settled(ns, app, 2, PARTITIONS);

    let records = 30_000;
    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, Duration::from_secs(40)))
    };
    std::thread::sleep(Duration::from_secs(3));
    let victim = format!("{app}-1");
    let pids = pod_pids(ns, &victim);
    assert!(!pids.is_empty(), "{victim} runs");
    let log_before = pod_log(ns, &victim).len();
    signal(&pids, "STOP");
    let stopped = Instant::now();
    wait_until(
        "the stopped worker's tasks to move",
        Duration::from_secs(60),
        || {
            let per = tasks_per_worker(ns, app);
            (per.len() == 1 && per.get(&format!("{app}-0")) == Some(&PARTITIONS)).then_some(())
        },
    );
    let moved_after = stopped.elapsed();
    assert!(
        events(ns, app, "Fenced") >= 1,
        "the operator fenced {victim}"
    );
    println!("SIGSTOP → fenced and all tasks on {app}-0 in {moved_after:.1?}");
    std::thread::sleep(Duration::from_secs(2));
    signal(&pids, "CONT");

    // Resumed, it finds itself fenced at its next commit, starts a new
    // producer, and takes its tasks afresh from a new read of the placement
    // and the committed offsets, before processing anything.
    wait_until(
        "the resumed worker to notice the fence",
        Duration::from_secs(60),
        || {
            let log = pod_log(ns, &victim);
            let after = log.get(log_before..).unwrap_or_default();
            let reinit = after.find("re-initialising")?;
            after[reinit..].contains("tasks assigned").then_some(())
        },
    );
    generator.join().unwrap();
    wait_settled(ns, app, 2, PARTITIONS);
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(300),
        || drained(&app_id, &topics).then_some(()),
    );
    verify(&topics, records).assert_exactly_once("fencing verifier");
}

/// Re-checks the topics of an earlier run (kept with
/// MILLRACE_KEEP_NAMESPACES=1): `MILLRACE_VERIFY_PREFIX=<prefix>
/// MILLRACE_VERIFY_RECORDS=<n> cargo test ... reverify -- --ignored`.
#[test]
#[ignore]
fn reverify() {
    let prefix = std::env::var("MILLRACE_VERIFY_PREFIX").expect("MILLRACE_VERIFY_PREFIX");
    let records = env_or("MILLRACE_VERIFY_RECORDS", 30_000);
    println!("{}", verify(&Topics::new(&prefix, PARTITIONS), records));
}
