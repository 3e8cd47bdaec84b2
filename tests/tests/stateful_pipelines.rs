//! Windows and repartitioning on the test bed (#18): the windowed
//! verifier's app (`emit: WindowClose`) and the repartition verifier's
//! (orders counted per region) run on two pods each, with standbys, while
//! input flows; each is scaled 2 → 1 → 2 and then loses a pod. Every
//! closed window comes out once with its exact count and sum, every late
//! record is dead-lettered once, and each region's counts are exactly
//! 1…n: across moves, fail-overs and the repartition topic between the
//! sub-topologies.
//!
//! Size: `MILLRACE_PIPELINE_RECORDS` (default 6,000 per app).

use std::collections::BTreeMap;
use std::time::Duration;

use millrace_tests::repartition_verifier as regions;
use millrace_tests::verifier::{drained, env_or, topic_drained, Topics};
use millrace_tests::window_verifier as windows;
use millrace_tests::workers::{apply_yaml, get, scale, wait_settled};
use millrace_tests::{install_chart, kubectl, unique, wait_until, TestNamespace};

const PARTITIONS: i32 = 4;
const SPEC: &str =
    "  commitInterval: 200ms\n  transactionTimeout: 30s\n  replicas: 2\n  state: {standbyReplicas: 1}\n";

struct App {
    name: &'static str,
    app_id: String,
    topics: Topics,
}

impl App {
    fn new(name: &'static str) -> Self {
        let prefix = unique(name);
        let topics = Topics::new(&prefix, PARTITIONS);
        topics.create();
        Self {
            name,
            app_id: format!("{prefix}-app"),
            topics,
        }
    }

    /// Scales 2 → 1 → 2, then deletes the second pod.
    fn move_around(&self, ns: &str) {
        scale(ns, self.name, 1);
        wait_settled(ns, self.name, 1, PARTITIONS);
        scale(ns, self.name, 2);
        wait_settled(ns, self.name, 2, PARTITIONS);
        let pod = format!("{}-1", self.name);
        kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]).unwrap();
        eprintln!("deleted {pod}");
        wait_settled(ns, self.name, 2, PARTITIONS);
    }

    fn drained(&self, internal: Option<&str>) {
        wait_until(
            &format!("{} to commit the whole input", self.name),
            Duration::from_secs(600),
            || {
                let internal = internal.is_none_or(|t| topic_drained(&self.app_id, t, PARTITIONS));
                (drained(&self.app_id, &self.topics) && internal).then_some(())
            },
        );
    }
}

#[test]
fn windows_and_repartitioned_counts_are_exact_across_moves_and_a_lost_pod() {
    install_chart(&[]);
    let records = env_or("MILLRACE_PIPELINE_RECORDS", 6_000);
    let ns = TestNamespace::create("pipelines");
    let ns = ns.0.as_str();
    let win = App::new("windows");
    let sinks = win.topics.sinks();
    apply_yaml(
        ns,
        win.name,
        &windows::manifest(win.name, &win.app_id, sinks, "WindowClose", SPEC),
    );
    let reg = App::new("regions");
    let text = regions::manifest(reg.name, &reg.app_id, reg.topics.sinks(), SPEC);
    apply_yaml(ns, reg.name, &text);
    for app in [&win, &reg] {
        wait_settled(ns, app.name, 2, PARTITIONS);
    }
    let over = Duration::from_secs(90);
    let generators = [
        {
            let input = win.topics.input.clone();
            std::thread::spawn(move || windows::generate(&input, 0..records, records, over))
        },
        {
            let input = reg.topics.input.clone();
            std::thread::spawn(move || regions::generate(&input, 0..records, over))
        },
    ];
    for app in [&win, &reg] {
        app.move_around(ns);
    }
    for g in generators {
        g.join().unwrap();
    }
    // The flush closes every window the records opened.
    windows::generate(
        &win.topics.input,
        records..records + windows::KEYS,
        records,
        Duration::ZERO,
    );
    win.drained(None);
    let repartition = regions::repartition_topic(&reg.app_id);
    reg.drained(Some(&repartition));
    // Recorded for deletion with the app, beside the changelog.
    wait_until(
        "the repartition topic in status.internalTopics",
        Duration::from_secs(60),
        || {
            get(
                ns,
                &format!("streamapp/{}", reg.name),
                "{.status.internalTopics}",
            )
            .contains(&repartition)
            .then_some(())
        },
    );

    let want = windows::expected(records);
    let finals = windows::read_windows(&win.topics.outputs[0], PARTITIONS);
    let want_finals: BTreeMap<String, Vec<(i64, i64)>> = want
        .finals
        .iter()
        .map(|(k, v)| (k.clone(), vec![*v]))
        .collect();
    let wrong = windows::differences(&want_finals, &finals, 5);
    let mut dead = windows::read_dead_letters(&win.topics.dlq, PARTITIONS);
    dead.sort_unstable();
    println!(
        "windows on the test bed: {} closed windows, {} wrong {wrong:?}; {} late records dead-lettered",
        finals.len(),
        wrong.len(),
        dead.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(
        dead,
        want.late.iter().copied().collect::<Vec<_>>(),
        "every late record dead-lettered once"
    );

    let got = regions::read_regions(&reg.topics.outputs[0], PARTITIONS);
    let wrong = regions::wrong(records, &got);
    println!(
        "regions on the test bed: {} updates, {} wrong {wrong:?}",
        got.values().map(|(c, _)| c.len()).sum::<usize>(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
}
