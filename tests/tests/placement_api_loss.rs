//! A worker that loses the API server keeps processing the tasks it owns
//! (issue 6): the worker reaches the API server through a TCP proxy this
//! test cuts; records produced while it is cut are still processed and
//! committed, exactly once.

use std::process::{Child, Command};
use std::time::Duration;

use millrace_tests::proxy::Proxy;
use millrace_tests::verifier::{self, drained, generate_seqs, verify, Topics};
use millrace_tests::{kubeconfig, kubectl, unique, wait_until, workspace_binary, TestNamespace};

const PARTITIONS: i32 = 4;
const ADMIN_PORT: u16 = 18097;

fn start_worker(config: &std::path::Path, kubeconfig: &std::path::Path, ns: &str) -> Child {
    Command::new(workspace_binary("millrace-runtime"))
        .args(["worker", "--config", config.to_str().unwrap()])
        .env("MILLRACE_POD_NAME", "apiloss-0")
        .env("MILLRACE_POD_NAMESPACE", ns)
        .env("MILLRACE_POD_IP", "127.0.0.1")
        .env("MILLRACE_LOOPS", "2")
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

#[test]
fn a_worker_cut_off_from_the_api_server_keeps_processing_its_tasks() {
    let ns = TestNamespace::create("apiloss");
    let ns = ns.0.as_str();
    let run = unique("apiloss");
    let topics = Topics::new(&run, PARTITIONS);
    topics.create();
    let app_id = format!("{run}-app");

    // The placement the operator would write: every task on this worker.
    let doc = r#"{"epoch": 1, "workers": {"apiloss-0": {"active": [0, 1, 2, 3]}}}"#;
    kubectl(&[
        "-n",
        ns,
        "create",
        "configmap",
        "apiloss-placement",
        &format!("--from-literal=placement.json={doc}"),
    ])
    .unwrap();

    // The worker's configuration, as the operator renders it.
    let manifest = verifier::manifest(
        "apiloss",
        &app_id,
        &topics,
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 200ms\n",
        "",
    );
    let app: millrace_crds::StreamApp = serde_saphyr::from_str(&manifest).unwrap();
    let mut config =
        millrace_runtime::manifest::worker_config(&app, None, ADMIN_PORT, None).unwrap();
    config.placement_config_map = Some("apiloss-placement".into());
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    // Its kubeconfig points at the proxy.
    let original = std::fs::read_to_string(kubeconfig()).unwrap();
    let server = original
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .to_string();
    let proxy = Proxy::start(server.clone());
    let proxied = dir.join("kubeconfig");
    std::fs::write(
        &proxied,
        original.replace(&server, &format!("127.0.0.1:{}", proxy.port)),
    )
    .unwrap();

    let mut worker = start_worker(&config_path, &proxied, ns);
    generate_seqs(&topics, 0..2_000, Duration::ZERO);
    wait_until(
        "the first records committed",
        Duration::from_secs(90),
        || drained(&app_id, &topics).then_some(()),
    );

    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    generate_seqs(&topics, 2_000..4_000, Duration::from_secs(3));
    wait_until(
        "records produced while the API server is unreachable committed",
        Duration::from_secs(60),
        || drained(&app_id, &topics).then_some(()),
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker keeps running without the API server"
    );
    println!("processed and committed 2,000 records while cut off from the API server");

    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    verify(&topics, 4_000).assert_exactly_once("API-loss verifier");
}
