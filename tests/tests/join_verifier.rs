//! The join verifier (`millrace_tests::join_verifier`) against one
//! standalone worker: orders joined with a customers table topic that is
//! updated and tombstoned between phases of orders, while the worker is
//! SIGKILLed at random moments and restarted on its state directory (once
//! on an empty one: the join's store is restored from the table topic,
//! which is its changelog; no changelog of its own is written). Every
//! order comes out once, with the customer's version current when it was
//! processed (or null after a tombstone).
//!
//! Size: `MILLRACE_JOIN_PHASES` (default 8).

use std::time::Duration;

use millrace_tests::join_verifier::{
    manifest, read_orders, write_orders, write_table, wrong, CUSTOMERS,
};
use millrace_tests::standalone::App;
use millrace_tests::verifier::{drained, env_or, topic_drained, topic_exists, Topics};
use millrace_tests::{ensure_topics, unique, wait_until};

const PARTITIONS: i32 = 4;

#[test]
fn every_order_is_joined_once_with_the_table_value_current_at_its_processing() {
    let prefix = unique("join");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let customers = format!("{prefix}-customers");
    ensure_topics(&[(&customers, PARTITIONS)]);
    let app_id = format!("{prefix}-app");
    let repartition = format!("{app_id}-with-customer-repartition");
    let text = manifest("join-verifier", &app_id, topics.sinks(), &customers);
    let app = App::new(&app_id, &text, 18133);
    let phases = env_or("MILLRACE_JOIN_PHASES", 8);
    let kills = phases.min(6);
    let mut worker = app.start();
    let read_up_to = |topic: &str| {
        wait_until(
            &format!("the app to commit all of {topic}"),
            Duration::from_secs(300),
            || topic_drained(&app_id, topic, PARTITIONS).then_some(()),
        )
    };
    for phase in 0..phases {
        // Phases 1..=kills kill the worker: odd ones while it reads the
        // table's records, even ones while orders flow; the middle one
        // loses its volume.
        let kill = (1..=kills).contains(&phase);
        write_table(&customers, phase);
        if kill && phase % 2 == 1 {
            app.restart(&mut worker, phase == kills / 2);
        }
        read_up_to(&customers);
        let commits = app.counter("commits").unwrap_or(0);
        let input = topics.input.clone();
        let orders =
            std::thread::spawn(move || write_orders(&input, phase, Duration::from_millis(800)));
        if kill && phase % 2 == 0 {
            std::thread::sleep(Duration::from_millis(400));
            // The commit that took the table's records is in the store
            // too (the worker counts a commit once its writes are
            // applied): the restart's restore is the store's tail only.
            wait_until("a commit", Duration::from_secs(60), || {
                (app.counter("commits").unwrap_or(0) > commits).then_some(())
            });
            app.restart(&mut worker, phase == kills / 2);
        }
        orders.join().unwrap();
        read_up_to(&topics.input);
        read_up_to(&repartition);
        eprintln!("phase {phase} done");
    }
    assert!(drained(&app_id, &topics));
    // The last start (on an intact volume, after the table's phase had
    // committed) replayed only the table's tail: the store recorded the
    // table offsets it reached, so a crash does not mean a full restore.
    let restored = app.counter("state_restored_records");
    worker.terminate();
    let got = read_orders(&topics.outputs[0], PARTITIONS);
    let wrong = wrong(phases, &got);
    println!(
        "join verifier: {} orders over {phases} phases of table updates and tombstones, {} wrong \
         {:?} ({kills} SIGKILLs, one lost volume)",
        got.len(),
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(20)]);
    println!("the last restart restored {restored:?} table records");
    assert!(
        restored.is_some_and(|r| r < CUSTOMERS),
        "a restart on an intact volume restored {restored:?} records, more than one phase of \
         the table ({CUSTOMERS})"
    );
    let copy = format!("{app_id}-with-customer-changelog");
    assert!(
        !topic_exists(&copy),
        "the table is the join's changelog: no copy of it in {copy}"
    );
}
