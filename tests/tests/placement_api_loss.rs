//! Workers cut off from the API server (a TCP proxy this test cuts).
//! Exactly-once (issue 6): a worker keeps processing the tasks it owns, and
//! what is produced meanwhile is committed exactly once. At-least-once
//! (issue 20): a worker that cannot see the revoke of its tasks stops
//! processing them once the operator fenced it, although its outputs are
//! not transactional.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use millrace_crds::identity::{loop_transactional_ids, MAX_LOOPS};
use millrace_tests::proxy::Proxy;
use millrace_tests::runtime::counter;
use millrace_tests::verifier::{self, drained, generate_seqs, verify, Topics};
use millrace_tests::{
    kafka_bootstrap, kubeconfig, kubectl, unique, wait_until, workspace_binary, TestNamespace,
};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 4;
const ADMIN_PORT: u16 = 18097;
/// The at-least-once test's two workers.
const FENCED_PORT: u16 = 18146;
const NEW_OWNER_PORT: u16 = 18147;

/// One app's topics, placement ConfigMap and worker configurations, with a
/// kubeconfig that reaches the API server through a proxy.
struct Setup {
    ns: TestNamespace,
    topics: Topics,
    app_id: String,
    dir: PathBuf,
    proxy: Proxy,
    proxied_kubeconfig: PathBuf,
    manifest: String,
}

impl Setup {
    fn new(prefix: &str, spec: &str) -> Self {
        let ns = TestNamespace::create(prefix);
        let run = unique(prefix);
        let topics = Topics::new(&run, PARTITIONS);
        topics.create();
        let app_id = format!("{run}-app");
        let manifest = verifier::manifest(prefix, &app_id, &topics, spec, "");
        let dir = std::env::temp_dir().join(&run);
        std::fs::create_dir_all(&dir).unwrap();
        let original = std::fs::read_to_string(kubeconfig()).unwrap();
        let server = original
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .unwrap()
            .to_string();
        let proxy = Proxy::start(server.clone());
        let proxied_kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &proxied_kubeconfig,
            original.replace(&server, &format!("127.0.0.1:{}", proxy.port)),
        )
        .unwrap();
        Self {
            ns,
            topics,
            app_id,
            dir,
            proxy,
            proxied_kubeconfig,
            manifest,
        }
    }

    fn namespace(&self) -> &str {
        &self.ns.0
    }

    /// Writes the placement the operator would: `doc` (JSON).
    fn place(&self, doc: &str) {
        let ns = self.namespace();
        let data = format!("--from-literal=placement.json={doc}");
        let cm = kubectl(&[
            "-n",
            ns,
            "create",
            "configmap",
            "apiloss-placement",
            &data,
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
        let path = self.dir.join("placement.yaml");
        std::fs::write(&path, cm).unwrap();
        kubectl(&["-n", ns, "apply", "-f", path.to_str().unwrap()]).unwrap();
    }

    /// Starts worker `pod` as the operator would configure it, reaching the
    /// API server through the proxy if `proxied`.
    fn start_worker(&self, pod: &str, admin_port: u16, proxied: bool) -> Child {
        let app: millrace_crds::StreamApp = serde_saphyr::from_str(&self.manifest).unwrap();
        let mut config =
            millrace_runtime::manifest::worker_config(&app, None, admin_port, None).unwrap();
        config.placement_config_map = Some("apiloss-placement".into());
        let config_path = self.dir.join(format!("{pod}.json"));
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let kubeconfig = match proxied {
            true => self.proxied_kubeconfig.clone(),
            false => PathBuf::from(kubeconfig()),
        };
        Command::new(workspace_binary("millrace-runtime"))
            .args(["worker", "--config", config_path.to_str().unwrap()])
            .env("MILLRACE_POD_NAME", pod)
            .env("MILLRACE_POD_NAMESPACE", self.namespace())
            .env("MILLRACE_POD_IP", "127.0.0.1")
            .env("MILLRACE_LOOPS", "2")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap()
    }
}

fn terminate(mut worker: Child) {
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
}

#[test]
fn a_worker_cut_off_from_the_api_server_keeps_processing_its_tasks() {
    let setup = Setup::new(
        "apiloss",
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 200ms\n",
    );
    let (topics, app_id) = (&setup.topics, &setup.app_id);
    setup.place(r#"{"epoch": 1, "workers": {"apiloss-0": {"active": [0, 1, 2, 3]}}}"#);
    let worker = setup.start_worker("apiloss-0", ADMIN_PORT, true);
    generate_seqs(topics, 0..2_000, Duration::ZERO);
    wait_until(
        "the first records committed",
        Duration::from_secs(90),
        || drained(app_id, topics).then_some(()),
    );

    setup.proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    generate_seqs(topics, 2_000..4_000, Duration::from_secs(3));
    wait_until(
        "records produced while the API server is unreachable committed",
        Duration::from_secs(60),
        || drained(app_id, topics).then_some(()),
    );
    let mut worker = worker;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker keeps running without the API server"
    );
    println!("processed and committed 2,000 records while cut off from the API server");
    terminate(worker);
    verify(topics, 4_000).assert_exactly_once("API-loss verifier");
}

/// What the operator does when a worker does not acknowledge a revoke:
/// a producer initialised with each of its transactional ids.
fn fence(app_id: &str, worker: &str) {
    for id in loop_transactional_ids(app_id, worker, 0..MAX_LOOPS) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("transactional.id", &id)
            .create()
            .unwrap();
        producer.init_transactions(Duration::from_secs(30)).unwrap();
    }
}

/// `port`'s records consumed so far (0 before it answers).
fn records_in(port: u16) -> u64 {
    counter(port, "records_in").unwrap_or(0)
}

#[test]
fn an_at_least_once_worker_that_missed_its_revoke_stops_once_fenced() {
    let setup = Setup::new(
        "alofence",
        "  processingGuarantee: AtLeastOnce\n  commitInterval: 1s\n",
    );
    let (topics, app_id) = (&setup.topics, &setup.app_id);
    setup.place(r#"{"epoch": 1, "workers": {"alofence-0": {"active": [0, 1, 2, 3]}}}"#);
    let zombie = setup.start_worker("alofence-0", FENCED_PORT, true);
    const RECORDS: u64 = 12_000;
    let input = {
        let topics = topics.clone();
        std::thread::spawn(move || generate_seqs(&topics, 0..RECORDS, Duration::from_secs(40)))
    };
    wait_until("the worker committing", Duration::from_secs(60), || {
        (counter(FENCED_PORT, "commits").unwrap_or(0) >= 3).then_some(())
    });

    // Cut off, the worker misses the move of its tasks: the operator,
    // without an acknowledgement, fences it and grants them to another.
    setup.proxy.cut();
    fence(app_id, "alofence-0");
    let fenced_at = Instant::now();
    setup.place(r#"{"epoch": 2, "workers": {"alofence-1": {"active": [0, 1, 2, 3]}}}"#);
    let new_owner = setup.start_worker("alofence-1", NEW_OWNER_PORT, false);

    // Stopped: its count stays put for 3 s while records keep coming.
    let mut last = (records_in(FENCED_PORT), Instant::now());
    let stopped = wait_until("the fenced worker to stop", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = records_in(FENCED_PORT);
        if now != last.0 {
            last = (now, Instant::now());
        }
        (last.1.elapsed() >= Duration::from_secs(3)).then_some(last)
    });
    println!(
        "the fenced worker's last record {:?} after the fence ({} records in all)",
        stopped.1.duration_since(fenced_at),
        stopped.0
    );
    let owner_before = records_in(NEW_OWNER_PORT);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        records_in(FENCED_PORT),
        stopped.0,
        "the fenced worker processes nothing more"
    );
    assert!(
        records_in(NEW_OWNER_PORT) > owner_before,
        "the new owner processes meanwhile"
    );
    assert!(counter(FENCED_PORT, "fenced").unwrap_or(0) >= 1);

    input.join().unwrap();
    wait_until("the new owner drained", Duration::from_secs(60), || {
        drained(app_id, topics).then_some(())
    });
    setup.proxy.restore();
    terminate(new_owner);
    terminate(zombie);
    let s = verify(topics, RECORDS);
    println!("at-least-once, fenced worker: {s}");
    assert_eq!((s.lost, s.misrouted), (0, 0), "{s}");
}
