//! State on the test bed: the state verifier's app (`dedup`, then a running
//! count and sum per key) in worker pods with `standbyReplicas: 1`, while
//! replicas go 1 → 3 → 2 → 1 and pods are SIGKILLed and deleted: tasks
//! move between pods and restore from their changelogs (a tail where the
//! pod's volume has an older copy). Every update must be exact. The
//! changelogs the workers created are recorded in the status, for
//! deletion to find.
//!
//! Sizes: `MILLRACE_STATE_RECORDS` (default 20,000) and
//! `MILLRACE_STATE_FAULTS` (default 3).

use std::time::Duration;

use millrace_tests::state_verifier::{generate, manifest, verify};
use millrace_tests::verifier::{drained, env_or, Topics};
use millrace_tests::workers::{apply_yaml, get, pod_pids, signal, wait_settled, worker_pods};
use millrace_tests::{install_chart, kubectl, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 8;

fn scale(ns: &str, app: &str, replicas: i32) {
    kubectl(&[
        "-n",
        ns,
        "scale",
        &format!("streamapp/{app}"),
        &format!("--replicas={replicas}"),
    ])
    .unwrap();
    eprintln!("scaled to {replicas}");
}

#[test]
fn counts_stay_exact_while_stateful_tasks_move_between_pods() {
    install_chart(&[]);
    let records = env_or("MILLRACE_STATE_RECORDS", 20_000);
    let faults = env_or("MILLRACE_STATE_FAULTS", 3);
    let ns = TestNamespace::create("state");
    let ns = ns.0.as_str();
    let prefix = unique("stpl");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let app = "counts";
    let spec = "  commitInterval: 300ms\n  transactionTimeout: 30s\n  replicas: 1\n  state: {standbyReplicas: 1}\n";
    apply_yaml(ns, app, &manifest(app, &app_id, &topics, spec));
    wait_settled(ns, app, 1, PARTITIONS);

    let generator = {
        let input = topics.input.clone();
        std::thread::spawn(move || generate(&input, records, Duration::from_secs(20 + 6 * faults)))
    };
    let mut seed = std::process::id() as u64 ^ 0x5747_e5ee;
    let mut rand = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut done = 0;
    for (i, replicas) in [3, 2].iter().enumerate() {
        scale(ns, app, *replicas);
        wait_settled(ns, app, *replicas, PARTITIONS);
        let share = (faults - done) / (2 - i) as u64;
        for _ in 0..share {
            std::thread::sleep(Duration::from_millis(500 + rand() % 1500));
            let pods = worker_pods(ns, app);
            let pod = &pods[(rand() as usize) % pods.len()];
            if done % 2 == 0 {
                signal(&pod_pids(ns, pod), "KILL");
                eprintln!("fault {done}: SIGKILL {pod}");
            } else {
                let _ = kubectl(&["-n", ns, "delete", "pod", pod, "--wait=false"]);
                eprintln!("fault {done}: deleted {pod}");
            }
            done += 1;
        }
        wait_settled(ns, app, *replicas, PARTITIONS);
    }
    scale(ns, app, 1);
    wait_settled(ns, app, 1, PARTITIONS);
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(600),
        || drained(&app_id, &topics).then_some(()),
    );
    let summary = verify(&topics.outputs[0], PARTITIONS, records);
    println!("state on the test bed: {summary}; {done} faults, replicas 1→3→2→1");
    assert!(summary.wrong.is_empty(), "{summary}");

    let recorded = get(ns, &format!("streamapp/{app}"), "{.status.internalTopics}");
    for step in ["once", "totals"] {
        let changelog = format!("{app_id}-{step}-changelog");
        assert!(
            recorded.contains(&changelog),
            "{changelog} in status.internalTopics: {recorded}"
        );
    }
}
