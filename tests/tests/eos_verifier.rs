//! The exactly-once verifier (see `millrace_tests::verifier`) against one
//! standalone worker: an 8-partition input is routed while the worker is
//! SIGKILLed and restarted.
//!
//! Sizes: `MILLRACE_VERIFY_RECORDS` (default 50,000) and
//! `MILLRACE_VERIFY_KILLS` (default 3). The full run of the issue is
//! `MILLRACE_VERIFY_RECORDS=1000000 MILLRACE_VERIFY_KILLS=10`.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use millrace_tests::runtime::log_path;
use millrace_tests::standalone::App;
use millrace_tests::verifier::{self, drained, env_or, generate, verify, Summary, Topics};
use millrace_tests::workers::signal;
use millrace_tests::{committed_offset, unique, wait_until, workspace_binary};

const PARTITIONS: i32 = 8;

fn manifest(app_id: &str, topics: &Topics, guarantee: &str, commit_interval: &str) -> String {
    verifier::manifest(
        "verifier",
        app_id,
        topics,
        &format!(
            "  processingGuarantee: {guarantee}\n  commitInterval: {commit_interval}\n  transactionTimeout: 30s\n"
        ),
        "",
    )
}

fn start(manifest: &std::path::Path, port: u16) -> Child {
    Command::new(workspace_binary("millrace-runtime"))
        .args([
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

/// Fresh topics and a manifest for one run: (topics, application id, manifest path).
fn prepare(
    prefix: &str,
    guarantee: &str,
    commit_interval: &str,
) -> (Topics, String, std::path::PathBuf) {
    let topics = Topics::new(prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let path = std::env::temp_dir().join(format!("{prefix}.yaml"));
    std::fs::write(
        &path,
        manifest(&app_id, &topics, guarantee, commit_interval),
    )
    .unwrap();
    (topics, app_id, path)
}

fn run_verifier(guarantee: &str, commit_interval: &str, port: u16) -> Summary {
    let records = env_or("MILLRACE_VERIFY_RECORDS", 50_000);
    let kills = env_or("MILLRACE_VERIFY_KILLS", 3);
    let prefix = unique("eos");
    let (topics, app_id, path) = prepare(&prefix, guarantee, commit_interval);

    let mut child = start(&path, port);
    let generating = Duration::from_millis(1700 * kills + 1000);
    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, generating))
    };
    // Kill at pseudo-random moments while input flows: some land inside
    // open transactions, some between them.
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(700 + (seed >> 33) % 1600);
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("{guarantee}: kill {} after {delay:?}", kill + 1);
        child = start(&path, port);
    }
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(600),
        || drained(&app_id, &topics).then_some(()),
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the worker cleanly: {status}"
    );

    let s = verify(&topics, records);
    println!("{guarantee}: {s} ({kills} SIGKILLs)");
    s
}

#[test]
fn exactly_once_survives_sigkills_with_no_loss_and_no_duplicates() {
    run_verifier("ExactlyOnce", "1s", 18091).assert_exactly_once("ExactlyOnce");
}

#[test]
fn at_least_once_loses_nothing_across_sigkills() {
    let s = run_verifier("AtLeastOnce", "1s", 18092);
    assert_eq!(
        (s.lost, s.misrouted),
        (0, 0),
        "duplicates are allowed under AtLeastOnce, loss is not"
    );
}

/// A worker stalled (SIGSTOP) past its transaction timeout while input
/// flows: the broker aborts the open transaction and bumps the producer's
/// epoch; resumed (SIGCONT), the worker's stale transaction is refused
/// (fenced), it re-initialises and starts over from the committed offsets,
/// and nothing of the stalled batch is committed twice or lost.
#[test]
fn a_worker_stalled_past_its_transaction_timeout_commits_nothing_stale() {
    let records = 20_000;
    let prefix = unique("stall");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let spec =
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 1s\n  transactionTimeout: 10s\n";
    let app = App::new(
        &app_id,
        &verifier::manifest("stall", &app_id, &topics, spec, ""),
        18099,
    );
    let mut worker = app.start();
    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, Duration::from_secs(40)))
    };
    wait_until("a first commit", Duration::from_secs(60), || {
        (app.counter("commits").unwrap_or(0) > 0).then_some(())
    });
    signal(&[worker.pid()], "STOP");
    // The stall: past the 10 s timeout and the broker's 5 s check for timed
    // out transactions (e2e/kafka/server.properties.tmpl).
    std::thread::sleep(Duration::from_secs(25));
    // Caught up once everything written during the stall is committed.
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| verifier::end_offset(&topics.input, p))
        .collect();
    signal(&[worker.pid()], "CONT");
    let resumed = Instant::now();
    wait_until(
        "the stall's backlog committed",
        Duration::from_secs(120),
        || {
            ends.iter()
                .enumerate()
                .all(|(p, end)| {
                    matches!(committed_offset(&app_id, &topics.input, p as i32),
                    rdkafka::Offset::Offset(o) if o >= *end)
                })
                .then_some(())
        },
    );
    println!(
        "stalled 25 s: its backlog committed {:.1} s after SIGCONT",
        resumed.elapsed().as_secs_f64()
    );
    generator.join().unwrap();
    wait_until(
        "the app to commit the whole input",
        Duration::from_secs(300),
        || drained(&app_id, &topics).then_some(()),
    );
    worker.assert_alive();
    worker.terminate();
    let log = std::fs::read_to_string(log_path(app.port)).unwrap();
    assert!(
        log.contains("re-initialising the producer"),
        "the resumed worker found itself fenced: {log}"
    );
    verify(&topics, records).assert_exactly_once("stalled past the transaction timeout");
}

/// Throughput figures (not a timed test): pre-fill the input, then time one
/// worker draining it. Run with
/// `MILLRACE_PROFILE=release cargo test --release -p millrace-tests --test eos_verifier throughput -- --ignored --nocapture`
/// after `cargo build --release -p millrace-runtime`.
#[test]
#[ignore]
fn throughput() {
    let records = env_or("MILLRACE_VERIFY_RECORDS", 500_000);
    for (i, guarantee) in ["AtLeastOnce", "ExactlyOnce", "AtLeastOnce", "ExactlyOnce"]
        .into_iter()
        .enumerate()
    {
        let prefix = unique("tput");
        let (topics, app_id, path) = prepare(&prefix, guarantee, "100ms");
        generate(&topics, records, Duration::ZERO);
        let started = Instant::now();
        let mut child = start(&path, 18093 + i as u16);
        wait_until("drained", Duration::from_secs(600), || {
            drained(&app_id, &topics).then_some(())
        });
        let elapsed = started.elapsed();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        println!(
            "{guarantee}: {records} records in {elapsed:.2?} = {:.0} records/s",
            records as f64 / elapsed.as_secs_f64()
        );
    }
}
