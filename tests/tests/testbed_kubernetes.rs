//! The Kubernetes half of the test bed, end to end: the local API server,
//! the controller manager making StatefulSet pods, the scheduler, and the
//! pod runner running each pod as a local process.

use std::time::Duration;

use millrace_tests::{kubeconfig, kubectl, pod_processes, unique, wait_until};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/web-statefulset.yaml");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/trivial-chart");
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn get(ns: &str, what: &str, jsonpath: &str) -> String {
    kubectl(&["-n", ns, "get", what, "-o", &format!("jsonpath={jsonpath}")]).unwrap_or_default()
}

fn pod_uid(ns: &str, pod: &str) -> String {
    get(ns, &format!("pod/{pod}"), "{.metadata.uid}")
}

fn ready_replicas(ns: &str) -> String {
    get(ns, "statefulset/web", "{.status.readyReplicas}")
}

fn pod_ready(ns: &str, pod: &str) -> bool {
    get(
        ns,
        &format!("pod/{pod}"),
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    ) == "True"
}

fn http_get(ip: &str, path: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{ip}:8080/{path}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

#[test]
fn statefulset_pods_run_restart_and_scale_as_local_processes() {
    let ns = Namespace(unique("testbed"));
    let ns = ns.0.as_str();
    kubectl(&["create", "namespace", ns]).unwrap();
    kubectl(&[
        "-n",
        ns,
        "create",
        "configmap",
        "plain",
        "--from-literal=k=v",
    ])
    .unwrap();
    assert_eq!(get(ns, "configmap/plain", "{.data.k}"), "v");

    kubectl(&["-n", ns, "apply", "-f", FIXTURE]).unwrap();
    wait_until("3/3 ready replicas", READY_TIMEOUT, || {
        (ready_replicas(ns) == "3").then_some(())
    });

    let mut ips = Vec::new();
    for ordinal in 0..3 {
        let pod = format!("web-{ordinal}");
        let uid = pod_uid(ns, &pod);
        assert!(!pod_processes(&uid).is_empty(), "{pod} has a local process");
        let ip = get(ns, &format!("pod/{pod}"), "{.status.podIP}");
        assert!(
            ip.starts_with("127.1."),
            "{pod} has its own loopback address, got {ip}"
        );
        assert_eq!(
            http_get(&ip, "hello.txt").trim(),
            format!("hello from {pod} at {ip}"),
            "env from ConfigMap and downward API"
        );
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "pod IPs are distinct");

    // The service-account volume is materialised and the token is the pod's:
    // the API server knows who it is and RBAC refuses it.
    let ip0 = get(ns, "pod/web-0", "{.status.podIP}");
    let files = http_get(&ip0, "sa-files.txt");
    for f in ["ca.crt", "namespace", "token"] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} in the service-account volume: {files}"
        );
    }
    let rbac = http_get(&ip0, "rbac.txt");
    assert!(
        rbac.contains("Forbidden") && rbac.contains(&format!("system:serviceaccount:{ns}:default")),
        "{rbac}"
    );

    // kill -9 of the container's process is a container crash: restart count,
    // exit code 137, same pod, Ready again.
    let uid0 = pod_uid(ns, "web-0");
    for pid in pod_processes(&uid0) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    wait_until("web-0 restart recorded", READY_TIMEOUT, || {
        (get(
            ns,
            "pod/web-0",
            "{.status.containerStatuses[0].restartCount}",
        ) == "1")
            .then_some(())
    });
    assert_eq!(
        get(
            ns,
            "pod/web-0",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "137"
    );
    assert_eq!(
        pod_uid(ns, "web-0"),
        uid0,
        "a crash restarts the container, not the pod"
    );
    wait_until("web-0 ready after its crash", READY_TIMEOUT, || {
        pod_ready(ns, "web-0").then_some(())
    });

    // Deleting a pod stops its process; the StatefulSet's replacement comes
    // back Ready with the same claim, so its data survived. Not `kubectl
    // delete --wait`: it waits for the name to go, and the StatefulSet
    // recreates it at once (twice in CI it timed out with the old pod long
    // gone); the waits below check the old process and the new pod's uid.
    let uid1 = pod_uid(ns, "web-1");
    kubectl(&["-n", ns, "delete", "pod", "web-1", "--wait=false"]).unwrap();
    wait_until("web-1's process to exit", READY_TIMEOUT, || {
        pod_processes(&uid1).is_empty().then_some(())
    });
    wait_until("a new web-1", READY_TIMEOUT, || {
        let uid = pod_uid(ns, "web-1");
        (!uid.is_empty() && uid != uid1 && pod_ready(ns, "web-1")).then_some(())
    });
    let ip1 = get(ns, "pod/web-1", "{.status.podIP}");
    assert_eq!(
        http_get(&ip1, "starts.log").lines().count(),
        2,
        "the claim's data outlived the pod"
    );

    // Scaling to one leaves one process.
    let uids: Vec<String> = (0..3).map(|o| pod_uid(ns, &format!("web-{o}"))).collect();
    kubectl(&["-n", ns, "scale", "statefulset/web", "--replicas=1"]).unwrap();
    wait_until("web-1 and web-2 processes to exit", READY_TIMEOUT, || {
        (pod_processes(&uids[1]).is_empty() && pod_processes(&uids[2]).is_empty()).then_some(())
    });
    wait_until("one pod left", READY_TIMEOUT, || {
        (kubectl(&["-n", ns, "get", "pods", "-o", "name"])
            .unwrap_or_default()
            .lines()
            .count()
            == 1)
            .then_some(())
    });
    assert_eq!(
        pod_processes(&uids[0]).len(),
        1,
        "web-0 still runs exactly one process"
    );
}

#[test]
fn helm_renders_a_chart_and_reports_its_version() {
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let version = std::process::Command::new(&helm)
        .arg("version")
        .arg("--short")
        .output()
        .expect("helm on PATH (make stack-up builds it)");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("v3."),
        "{version:?}"
    );
    let out = std::process::Command::new(&helm)
        .args([
            "template",
            "demo",
            CHART,
            "--set",
            "greeting=hi there",
            "--kubeconfig",
            &kubeconfig(),
        ])
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rendered.contains("name: demo-greeting") && rendered.contains("greeting: \"hi there\""),
        "{rendered}"
    );
}
