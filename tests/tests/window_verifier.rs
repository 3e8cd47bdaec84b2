//! The windowed verifier (`millrace_tests::window_verifier`) against two
//! standalone workers reading one input: a tumbling-window count and sum
//! per key, one app emitting every update, the other only each window's
//! final result (`emit: WindowClose`). Both are SIGKILLed at random moments
//! and restarted on their state directories (once each on an empty one: a
//! full restore, stream time included) while input flows.
//!
//! Exactly once, window by window: every update 1…n with its running sum
//! (`EveryUpdate`); every closed window once with its exact count and sum
//! (`WindowClose`); every late record dead-lettered once and counted in no
//! window.
//!
//! Sizes: `MILLRACE_WINDOW_RECORDS` (default 6,000) and
//! `MILLRACE_WINDOW_KILLS` (default 6).

use std::time::Duration;

use millrace_tests::runtime::Running;
use millrace_tests::standalone::{kill_in_turn, App, SPEC};
use millrace_tests::verifier::{drained, env_or, Topics};
use millrace_tests::window_verifier::{
    differences, expected, generate, is_late, manifest, read_dead_letters, read_windows, KEYS,
};
use millrace_tests::{unique, wait_until};

const PARTITIONS: i32 = 4;

/// The app emitting `emit` to `output`, late records to `dlq`.
fn windowed(prefix: &str, input: &str, emit: &str, (output, dlq): (&str, &str), port: u16) -> App {
    let app_id = format!("{prefix}-{}", emit.to_lowercase());
    App::new(
        &app_id,
        &manifest("window-verifier", &app_id, (input, output, dlq), emit, SPEC),
        port,
    )
}

#[test]
fn windows_are_exact_and_late_records_dead_lettered_once_across_sigkills_and_lost_volumes() {
    let prefix = unique("windows");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    // (output, dead-letter topic) of each app.
    let sinks = [
        (topics.outputs[0].as_str(), topics.outputs[2].as_str()),
        (topics.outputs[1].as_str(), topics.dlq.as_str()),
    ];
    let apps = [
        windowed(&prefix, &topics.input, "EveryUpdate", sinks[0], 18130),
        windowed(&prefix, &topics.input, "WindowClose", sinks[1], 18131),
    ];
    let records = env_or("MILLRACE_WINDOW_RECORDS", 6_000);
    let kills = env_or("MILLRACE_WINDOW_KILLS", 6);
    let mut workers: Vec<Running> = apps.iter().map(App::start).collect();
    // The last records (and the flush) come after the last starts, for
    // them to process: the late metric is read from them.
    let last = records - 1_000;
    let input = topics.input.clone();
    let generator = std::thread::spawn(move || {
        generate(
            &input,
            0..last,
            records,
            Duration::from_millis(1_500 * kills + 1_000),
        )
    });
    // Each app loses its volume once, midway.
    kill_in_turn(&apps, &mut workers, kills, kills / 4);
    generator.join().unwrap();
    generate(&topics.input, last..records + KEYS, records, Duration::ZERO);
    let want = expected(records);
    let late_after_last_start = (last..records).filter(|s| is_late(*s, records)).count() as u64;
    for ((app, worker), (_, dlq)) in apps.iter().zip(workers).zip(sinks) {
        wait_until(
            &format!("{} to commit the whole input", app.app_id),
            Duration::from_secs(300),
            || drained(&app.app_id, &topics).then_some(()),
        );
        let late = app.counter("late_records");
        worker.terminate();
        assert!(
            late.is_some_and(|n| n >= late_after_last_start),
            "{}: late records counted in the metric: {late:?}, at least {late_after_last_start}",
            app.app_id
        );
        let mut dead: Vec<u64> = read_dead_letters(dlq, PARTITIONS);
        dead.sort_unstable();
        let want_dead: Vec<u64> = want.late.iter().copied().collect();
        assert_eq!(
            dead, want_dead,
            "{}: every late record dead-lettered once",
            app.app_id
        );
    }
    let updates = read_windows(sinks[0].0, PARTITIONS);
    let wrong = differences(&want.updates, &updates, 5);
    println!(
        "window verifier, EveryUpdate: {} updates of {} windows, {} wrong{wrong:?}",
        updates.values().map(Vec::len).sum::<usize>(),
        updates.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "EveryUpdate: {wrong:?}");
    let finals: std::collections::BTreeMap<String, Vec<(i64, i64)>> =
        read_windows(sinks[1].0, PARTITIONS);
    let want_finals = want
        .finals
        .iter()
        .map(|(k, v)| (k.clone(), vec![*v]))
        .collect();
    let wrong = differences(&want_finals, &finals, 5);
    println!(
        "window verifier, WindowClose: {} closed windows, {} wrong{wrong:?}; {} late records \
         dead-lettered ({kills} SIGKILLs, one lost volume per app)",
        finals.len(),
        wrong.len(),
        want.late.len()
    );
    assert!(wrong.is_empty(), "WindowClose: {wrong:?}");
}
