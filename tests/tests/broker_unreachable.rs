//! The broker unreachable from a worker (issue 20): a standalone worker
//! bootstraps at the single node's proxied listener (`e2e/kafka/kafka.sh`:
//! it listens on 9094 and advertises 9095), through a TCP proxy on 9095
//! this test cuts and restores while input flows (written directly to the
//! broker). A cut shorter than the transaction timeout: processing resumes
//! by itself. A cut longer: the broker aborts the open transaction, the
//! worker re-initialises its producer and starts over from the committed
//! offsets. Afterwards the verifier holds: nothing lost, duplicated or
//! misrouted.

use std::time::{Duration, Instant};

use millrace_tests::proxy::Proxy;
use millrace_tests::runtime::log_path;
use millrace_tests::standalone::App;
use millrace_tests::verifier::{self, drained, generate, verify, Topics};
use millrace_tests::{unique, wait_until};

const PARTITIONS: i32 = 4;
/// The single node's proxied listener and the address it advertises.
const LISTENER: &str = "127.0.0.1:9094";
const ADVERTISED_PORT: u16 = 9095;
const TRANSACTION_TIMEOUT_S: u64 = 15;

#[test]
fn a_worker_cut_off_from_the_broker_resumes_exactly_once() {
    let proxy = Proxy::on(ADVERTISED_PORT, LISTENER.into());
    let records = 30_000;
    let prefix = unique("cutoff");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let spec = format!(
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 1s\n  transactionTimeout: {TRANSACTION_TIMEOUT_S}s\n"
    );
    let mut app = App::new(
        &app_id,
        &verifier::manifest("cutoff", &app_id, &topics, &spec, ""),
        18098,
    );
    // Overrides the manifest's bootstrap (and the test bed's): the worker
    // knows the broker only through the proxy.
    app.envs
        .push(("KAFKA_BOOTSTRAP", format!("127.0.0.1:{ADVERTISED_PORT}")));
    let mut worker = app.start();
    let flowing = Duration::from_secs(75);
    let generator = {
        let topics = Topics::new(&prefix, PARTITIONS);
        std::thread::spawn(move || generate(&topics, records, flowing))
    };
    let commits = || app.counter("commits").unwrap_or(0);
    wait_until("a first commit", Duration::from_secs(60), || {
        (commits() > 0).then_some(())
    });

    let short = Duration::from_secs(5);
    proxy.cut();
    std::thread::sleep(short); // the cut's length, not a wait for readiness
    let before = commits();
    proxy.restore();
    let restored = Instant::now();
    wait_until(
        "commits again after a short cut",
        Duration::from_secs(60),
        || (commits() > before).then_some(()),
    );
    println!(
        "cut for {short:?}: committing again {:.1} s after the proxy was restored",
        restored.elapsed().as_secs_f64()
    );

    // Past the timeout and the broker's 5 s check for timed-out transactions.
    let long = Duration::from_secs(TRANSACTION_TIMEOUT_S + 15);
    proxy.cut();
    std::thread::sleep(long);
    let before = commits();
    proxy.restore();
    let restored = Instant::now();
    wait_until(
        "commits again after a long cut",
        Duration::from_secs(120),
        || (commits() > before).then_some(()),
    );
    println!(
        "cut for {long:?}: committing again {:.1} s after the proxy was restored",
        restored.elapsed().as_secs_f64()
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
        "after the long cut the worker starts its transactions over: {log}"
    );
    verify(&topics, records).assert_exactly_once("broker unreachable");
}
