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

use std::path::PathBuf;
use std::time::Duration;

use millrace_tests::runtime::{admin_get, log_path, start_logging_with, Running};
use millrace_tests::verifier::{drained, env_or, Topics};
use millrace_tests::window_verifier::{
    differences, expected, generate, is_late, manifest, read_dead_letters, read_windows, KEYS,
};
use millrace_tests::{unique, wait_until};

const PARTITIONS: i32 = 4;

/// One app: its manifest, output and dead-letter topics, state directory
/// and admin port.
struct App {
    app_id: String,
    manifest: PathBuf,
    output: String,
    dlq: String,
    state_dir: PathBuf,
    port: u16,
}

impl App {
    fn prepare(
        prefix: &str,
        topics: &Topics,
        emit: &str,
        output: &str,
        dlq: &str,
        port: u16,
    ) -> Self {
        let app_id = format!("{prefix}-{}", emit.to_lowercase());
        let manifest = std::env::temp_dir().join(format!("{app_id}.yaml"));
        let text = self::manifest("window-verifier", &app_id, &topics.input, output, dlq, emit);
        std::fs::write(&manifest, text).unwrap();
        let _ = std::fs::remove_file(log_path(port));
        eprintln!("{emit} worker log: {}", log_path(port).display());
        Self {
            state_dir: std::env::temp_dir().join(format!("{app_id}-state")),
            app_id,
            manifest,
            output: output.into(),
            dlq: dlq.into(),
            port,
        }
    }

    fn start(&self) -> Running {
        let dir = self.state_dir.to_str().unwrap();
        start_logging_with(
            &self.manifest,
            self.port,
            &["--state-dir", dir],
            &[("RUST_LOG", "info")],
        )
    }

    fn late_metric(&self) -> Option<u64> {
        admin_get(self.port, "/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix("millrace_late_records_total "))
            .and_then(|v| v.trim().parse().ok())
    }
}

#[test]
fn windows_are_exact_and_late_records_dead_lettered_once_across_sigkills_and_lost_volumes() {
    let prefix = unique("windows");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let apps = [
        App::prepare(
            &prefix,
            &topics,
            "EveryUpdate",
            &topics.outputs[0],
            &topics.outputs[2],
            18130,
        ),
        App::prepare(
            &prefix,
            &topics,
            "WindowClose",
            &topics.outputs[1],
            &topics.dlq,
            18131,
        ),
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
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(600 + (seed >> 33) % 1400));
        let which = (kill % 2) as usize;
        // Each app loses its volume once, midway.
        let lose = kill / 2 == kills / 4;
        workers[which].kill();
        if lose {
            let _ = std::fs::remove_dir_all(&apps[which].state_dir);
        }
        eprintln!(
            "kill {}: {}{}",
            kill + 1,
            apps[which].app_id,
            if lose { ", volume deleted" } else { "" }
        );
        workers[which] = apps[which].start();
    }
    generator.join().unwrap();
    generate(&topics.input, last..records + KEYS, records, Duration::ZERO);
    let want = expected(records);
    let late_after_last_start = (last..records).filter(|s| is_late(*s, records)).count() as u64;
    for (app, worker) in apps.iter().zip(workers) {
        wait_until(
            &format!("{} to commit the whole input", app.app_id),
            Duration::from_secs(300),
            || drained(&app.app_id, &topics).then_some(()),
        );
        let late = app.late_metric();
        worker.terminate();
        assert!(
            late.is_some_and(|n| n >= late_after_last_start),
            "{}: late records counted in the metric: {late:?}, at least {late_after_last_start}",
            app.app_id
        );
        let mut dead: Vec<u64> = read_dead_letters(&app.dlq, PARTITIONS);
        dead.sort_unstable();
        let want_dead: Vec<u64> = want.late.iter().copied().collect();
        assert_eq!(
            dead, want_dead,
            "{}: every late record dead-lettered once",
            app.app_id
        );
    }
    let updates = read_windows(&apps[0].output, PARTITIONS);
    let wrong = differences(&want.updates, &updates, 5);
    println!(
        "window verifier, EveryUpdate: {} updates of {} windows, {} wrong{wrong:?}",
        updates.values().map(Vec::len).sum::<usize>(),
        updates.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "EveryUpdate: {wrong:?}");
    let finals: std::collections::BTreeMap<String, Vec<(i64, i64)>> =
        read_windows(&apps[1].output, PARTITIONS);
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
