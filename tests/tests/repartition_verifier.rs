//! The repartition verifier (`millrace_tests::repartition_verifier`)
//! against one standalone worker: orders keyed by order id, counted per
//! region (a value field), so every record goes through the repartition
//! topic. The worker is SIGKILLed at random moments and restarted on its
//! state directory (once on an empty one) while orders flow.
//!
//! Exactly once across the two sub-topologies: each region's updates are
//! exactly the counts 1…n and the last carries the exact sum. The
//! repartition topic is purged as it is read: what it holds is sampled
//! during the run, and it is empty once the app has read it all.
//!
//! The app sets `repartitionPartitions: 6` over 4-partition sources: it
//! runs 6 tasks, tasks 4 and 5 reading only the repartition topic, which
//! keeps its 6 partitions. (The test bed's `stateful_pipelines` runs a
//! repartition with the count unset, through rescaling.)
//!
//! Sizes: `MILLRACE_REPARTITION_RECORDS` (default 10,000, written while
//! the worker is killed), `MILLRACE_REPARTITION_KILLS` (default 5) and
//! `MILLRACE_REPARTITION_STEADY_S` (default 10: seconds of steady flow at
//! 1,000 records/s, during which the topic's size is sampled; the long run
//! quoted in docs/stateful-pipelines.md used 600).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace_tests::repartition_verifier::{
    generate, manifest, read_regions, repartition_topic, wrong,
};
use millrace_tests::standalone::{kill_in_turn, App, SPEC};
use millrace_tests::verifier::{
    drained, end_offset, env_or, partition_count, retained, topic_drained, Topics,
};
use millrace_tests::{unique, wait_until};

const PARTITIONS: i32 = 4;
/// `spec.pipeline.repartitionPartitions`: more than the sources have.
const REPARTITIONS: i32 = 6;

#[test]
fn region_counts_are_exact_across_the_repartition_and_sigkills_and_the_topic_is_purged() {
    let prefix = unique("regions");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let text = manifest("repartition-verifier", &app_id, topics.sinks(), SPEC).replace(
        "  pipeline:\n",
        &format!("  pipeline:\n    repartitionPartitions: {REPARTITIONS}\n"),
    );
    let mut app = App::new(&app_id, &text, 18132);
    app.envs
        .push(("MILLRACE_REPARTITION_PURGE_MS", "1000".into()));
    let repartition = repartition_topic(&app_id);
    let kills = env_or("MILLRACE_REPARTITION_KILLS", 5);
    let mut workers = vec![app.start()];
    // Orders flow while the worker is killed, then steadily (1,000/s) once
    // it has caught up: what the repartition topic holds is sampled then.
    let steady_s = env_or("MILLRACE_REPARTITION_STEADY_S", 10);
    let steady = steady_s * 1_000;
    let records = env_or("MILLRACE_REPARTITION_RECORDS", 10_000) + steady;
    let input = topics.input.clone();
    let over = Duration::from_millis(1_500 * kills + 1_000);
    let generator = std::thread::spawn(move || generate(&input, 0..records - steady, over));
    let apps = [app];
    kill_in_turn(&apps, &mut workers, kills, kills / 2);
    generator.join().unwrap();
    let caught_up = || {
        wait_until(
            "the app to read the whole input and repartition topic",
            Duration::from_secs(300),
            || {
                (drained(&app_id, &topics) && topic_drained(&app_id, &repartition, REPARTITIONS))
                    .then_some(())
            },
        )
    };
    // The backlog the kills left is read first: then only the steady flow
    // is in the samples.
    caught_up();
    let done = Arc::new(AtomicBool::new(false));
    // The most the topic held, per minute of the steady flow: flat if it
    // is purged as read, growing with time if not.
    let sampler = {
        let (done, topic) = (done.clone(), repartition.clone());
        std::thread::spawn(move || {
            let (started, mut per_minute) = (std::time::Instant::now(), Vec::<i64>::new());
            while !done.load(Ordering::Relaxed) {
                let minute = (started.elapsed().as_secs() / 60) as usize;
                per_minute.resize(minute + 1, 0);
                per_minute[minute] = per_minute[minute].max(retained(&topic, REPARTITIONS));
                std::thread::sleep(Duration::from_millis(250));
            }
            per_minute
        })
    };
    generate(
        &topics.input,
        records - steady..records,
        Duration::from_secs(steady_s),
    );
    caught_up();
    done.store(true, Ordering::Relaxed);
    let per_minute = sampler.join().unwrap();
    let purged = wait_until(
        "the repartition topic to be purged",
        Duration::from_secs(30),
        || {
            let left = retained(&repartition, REPARTITIONS);
            // A transaction's commit marker may stay past the last purge.
            (left <= REPARTITIONS as i64).then_some(left)
        },
    );
    workers.pop().unwrap().terminate();
    let got = read_regions(&topics.outputs[0], PARTITIONS);
    let wrong = wrong(records, &got);
    let most = per_minute.iter().copied().max().unwrap_or(0);
    println!(
        "repartition verifier: {} updates over {} regions, {} wrong {wrong:?}; the repartition topic \
         held at most {most} records (per minute: {per_minute:?}) while {steady} more flowed \
         steadily (1,000/s), {purged} once read ({kills} SIGKILLs, one lost volume)",
        got.values().map(|(c, _)| c.len()).sum::<usize>(),
        got.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    // Six tasks: the repartition topic kept its set count, the changelog
    // has a partition per task, and the tasks past the sources' four read
    // the regions that hash there.
    let changelog = format!(
        "{app_id}-{}-changelog",
        millrace_tests::repartition_verifier::STEP
    );
    assert_eq!(partition_count(&repartition), REPARTITIONS);
    assert_eq!(partition_count(&changelog), REPARTITIONS);
    let beyond: i64 = (PARTITIONS..REPARTITIONS)
        .map(|p| end_offset(&repartition, p))
        .sum();
    assert!(
        beyond > 0,
        "no region hashed to tasks 4..6: nothing shows they ran"
    );
    // Never purged, it would hold every record written to it: those of the
    // kill phase and then of the steady one, more than `steady`.
    // Purged, it holds what is in flight (1,508 and 3,713 records in two
    // runs, the second beside the whole test bed).
    assert!(
        most < steady as i64,
        "the repartition topic held {most} records while {steady} flowed: not purged as read"
    );
}

/// With `repartitionPartitions` set, sources that gain partitions keep the
/// task count (4 here) and the repartition topic's count: the running
/// tasks take their new source partitions (the worker commits and assigns
/// afresh), and every region's counts stay exact.
#[test]
fn sources_that_grow_under_a_set_repartition_count_are_read_and_no_group_moves() {
    let prefix = unique("regrow");
    let topics = Topics::new(&prefix, 2);
    topics.create();
    let app_id = format!("{prefix}-app");
    let text = manifest("repartition-regrow", &app_id, topics.sinks(), SPEC).replace(
        "  pipeline:\n",
        "  pipeline:\n    repartitionPartitions: 4\n",
    );
    let app = App::new(&app_id, &text, 18134);
    let repartition = repartition_topic(&app_id);
    let mut worker = app.start();
    let mut read_all_of = |sources: i32| {
        wait_until(
            "the app to read the input and the repartition topic",
            // The worker looks at the partition count every 30 s.
            Duration::from_secs(120),
            || {
                worker.assert_alive();
                (topic_drained(&app_id, &topics.input, sources)
                    && topic_drained(&app_id, &repartition, 4))
                .then_some(())
            },
        )
    };
    generate(&topics.input, 0..1_000, Duration::from_secs(1));
    read_all_of(2);
    millrace_tests::add_partitions(&topics.input, 3);
    generate(&topics.input, 1_000..2_000, Duration::from_secs(1));
    assert!(
        end_offset(&topics.input, 2) > 0,
        "records went to the new partition"
    );
    read_all_of(3);
    worker.terminate();
    let wrong = wrong(2_000, &read_regions(&topics.outputs[0], 2));
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(partition_count(&repartition), 4, "never grown");
}
