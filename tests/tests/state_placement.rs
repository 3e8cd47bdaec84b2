//! State on the test bed: the state verifier's app (`dedup`, then a running
//! count and sum per key) in worker pods with `standbyReplicas: 1`, while
//! replicas go 1 → 3 → 2 → 1 and pods are SIGKILLed and deleted: tasks
//! move between pods and restore from their changelogs (a tail where the
//! pod's volume has an older copy). Every update must be exact. Then the
//! last pod's volume is lost: a full restore, with Events, and the counts
//! go on exactly. The changelogs the workers created are recorded in the
//! status, for deletion to find.
//!
//! Sizes: `MILLRACE_STATE_RECORDS` (default 20,000) and
//! `MILLRACE_STATE_FAULTS` (default 3).

use std::time::Duration;

use millrace_tests::state_verifier::{generate, generate_seqs, manifest, verify};
use millrace_tests::verifier::{drained, end_offset, env_or, Topics};
use millrace_tests::workers::{
    apply_yaml, get, rescale_with_faults, scale, standby_lags, wait_settled,
};
use millrace_tests::{install_chart, kubectl, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 8;

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
    let done = rescale_with_faults(ns, app, &[3, 2], PARTITIONS, faults, 0x5747_e5ee);
    // Two pods, one standby each task: the pod not running a task keeps
    // its copy warm, a few batches behind at most.
    let standbys = wait_until(
        "every task's standby to catch up",
        Duration::from_secs(60),
        || {
            let lags = standby_lags(ns, app);
            let caught_up = |(records, seconds): &(u64, u64)| *records < 2000 && *seconds < 10;
            (lags.len() == PARTITIONS as usize && lags.values().all(caught_up)).then_some(lags)
        },
    );
    eprintln!("standby lag per task (changelog records, seconds): {standbys:?}");
    let column = wait_until("the State column", Duration::from_secs(30), || {
        let state = get(ns, &format!("streamapp/{app}"), "{.status.placement.state}");
        state.contains("standbys").then_some(state)
    });
    eprintln!("kubectl get streamapps, State: {column}");
    scale(ns, app, 1);
    wait_settled(ns, app, 1, PARTITIONS);
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(600),
        || drained(&app_id, &topics).then_some(()),
    );
    let moved = verify(&topics.outputs[0], PARTITIONS, records);
    println!("state on the test bed: {moved}; {done} faults, replicas 1→3→2→1");
    assert!(moved.wrong.is_empty(), "{moved}");

    // The last pod's volume lost (claim and pod deleted): a new volume and
    // a full restore of every task that has state, announced by Events,
    // then more input on the restored counts.
    let pod = format!("{app}-0");
    let claim = format!("state-{pod}");
    let old_claim = get(ns, &format!("pvc/{claim}"), "{.metadata.uid}");
    assert!(!old_claim.is_empty(), "{pod} has a state volume");
    kubectl(&["-n", ns, "delete", "pvc", &claim, "--wait=false"]).unwrap();
    kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]).unwrap();
    wait_until("a new state volume", Duration::from_secs(180), || {
        let uid = get(ns, &format!("pvc/{claim}"), "{.metadata.uid}");
        (!uid.is_empty() && uid != old_claim).then_some(())
    });
    let more = records / 4;
    generate_seqs(
        &topics.input,
        records..records + more,
        Duration::from_secs(5),
    );
    // A task whose partition got no input has an empty changelog: nothing
    // to restore, and no Event.
    let with_state = (0..PARTITIONS)
        .filter(|p| end_offset(&topics.input, *p) > 0)
        .count();
    let restored = wait_until("full restores announced", Duration::from_secs(180), || {
        let full: Vec<String> = get(
            ns,
            "events",
            "{range .items[?(@.reason==\"Restored\")]}{.message}{\"\\n\"}{end}",
        )
        .lines()
        .filter(|n| n.contains(&format!("on {pod}:")) && n.contains("full:"))
        .map(String::from)
        .collect();
        (full.len() >= with_state).then_some(full)
    });
    eprintln!("after the volume was lost: {restored:#?}");
    wait_until(
        "the app to commit the new input",
        Duration::from_secs(600),
        || drained(&app_id, &topics).then_some(()),
    );
    let summary = verify(&topics.outputs[0], PARTITIONS, records + more);
    println!("state on the test bed after a lost volume: {summary}");
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
