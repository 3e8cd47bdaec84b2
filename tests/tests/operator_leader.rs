//! Two operator replicas: one leader through the Lease, the other writes
//! nothing; the standby takes over when the leader dies, and when it is
//! paused past its lease (the paused one, resumed, stops at its renew
//! deadline before writing); `helm uninstall` leaves no operator object
//! behind; the lease is renewed while the operator's runtime is busy.

use std::time::Duration;

use millrace_operator::leader::{self, Leadership, LEASE_NAME, RENEW_DEADLINE};
use millrace_tests::workers::{pod_log, pod_pids, signal};
use millrace_tests::{
    ensure_topics, helm, install_chart, kubeconfig, kubectl, repo_root, wait_until, TestNamespace,
    OPERATOR_NAMESPACE,
};

const TIMEOUT: Duration = Duration::from_secs(90);

fn operator_pods() -> Vec<(String, String)> {
    let out = kubectl(&[
        "-n",
        OPERATOR_NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=millrace-operator",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{end}{range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
    ])
    .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, ip)| (n.to_string(), ip.to_string()))
        .collect()
}

fn lease_holder() -> String {
    lease_field(OPERATOR_NAMESPACE, "holderIdentity")
}

fn lease_field(namespace: &str, field: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "get",
        "lease",
        LEASE_NAME,
        "-o",
        &format!("jsonpath={{.spec.{field}}}"),
    ])
    .unwrap_or_default()
}

/// A thousand reconciles once kept the runtime that also renewed the lease
/// busy past the renew deadline, and the loaded operator exited. The lease
/// is held from a thread of its own: with this runtime's only thread
/// blocked longer than the deadline, renewals go on.
#[tokio::test(flavor = "current_thread")]
async fn the_lease_is_renewed_while_the_operators_runtime_is_blocked() {
    std::env::set_var("KUBECONFIG", kubeconfig());
    let ns = TestNamespace::create("lease");
    let leadership = Leadership::acquire(ns.0.clone(), "busy-replica".into())
        .await
        .unwrap();
    let acquired = lease_field(&ns.0, "renewTime");
    assert_eq!(lease_field(&ns.0, "holderIdentity"), "busy-replica");

    std::thread::sleep(RENEW_DEADLINE + Duration::from_secs(2));

    let renewed = lease_field(&ns.0, "renewTime");
    // RFC 3339 times with microseconds in UTC: text order is time order.
    assert!(
        renewed > acquired,
        "no renewal while the runtime was blocked: renewTime {renewed}, acquired at {acquired}"
    );
    assert!(leader::leading_within_deadline());
    leadership.release().await;
    assert_eq!(lease_field(&ns.0, "holderIdentity"), "");
}

/// A metric of one operator pod, read from its /metrics endpoint.
fn metric(ip: &str, name: &str) -> Option<f64> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}:8080/metrics"),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

#[test]
fn two_replicas_elect_one_leader_that_alone_writes_and_uninstall_is_clean() {
    install_chart(&["--set", "replicaCount=2"]);
    let pods = wait_until("two running operator pods", TIMEOUT, || {
        let pods = operator_pods();
        (pods.len() == 2
            && pods
                .iter()
                .all(|(_, ip)| metric(ip, "millrace_operator_leader").is_some()))
        .then_some(pods)
    });
    let holder = wait_until("a lease holder", TIMEOUT, || {
        let h = lease_holder();
        pods.iter().any(|(n, _)| *n == h).then_some(h)
    });
    let leader_ip = &pods.iter().find(|(n, _)| *n == holder).unwrap().1;
    let (_, follower_ip) = pods.iter().find(|(n, _)| *n != holder).unwrap().clone();
    assert_eq!(metric(leader_ip, "millrace_operator_leader"), Some(1.0));
    assert_eq!(metric(&follower_ip, "millrace_operator_leader"), Some(0.0));

    ensure_topics(&[("input", 2), ("output", 2)]);
    let ns = TestNamespace::create("leader");
    let ns = ns.0.as_str();
    kubectl(&[
        "-n",
        ns,
        "apply",
        "-f",
        repo_root()
            .join("examples/passthrough.yaml")
            .to_str()
            .unwrap(),
    ])
    .unwrap();
    wait_until("the app reconciled", TIMEOUT, || {
        (kubectl(&[
            "-n",
            ns,
            "get",
            "streamapp",
            "passthrough",
            "-o",
            "jsonpath={.status.tasks}",
        ])
        .unwrap_or_default()
            == "2")
            .then_some(())
    });
    assert_eq!(
        metric(&follower_ip, "millrace_operator_reconciles_total"),
        Some(0.0),
        "the standby reconciles nothing"
    );
    assert!(metric(leader_ip, "millrace_operator_reconciles_total").unwrap_or(0.0) >= 1.0);

    // The leader dies; a standby (the old one, or the Deployment's
    // replacement pod) takes the lease and carries on.
    kubectl(&[
        "-n",
        OPERATOR_NAMESPACE,
        "delete",
        "pod",
        &holder,
        "--grace-period=0",
        "--force",
    ])
    .unwrap();
    let new_leader_ip = wait_until(
        "another replica to take the lease",
        Duration::from_secs(60),
        || {
            let h = lease_holder();
            (h != holder)
                .then(|| {
                    operator_pods()
                        .into_iter()
                        .find(|(n, _)| *n == h)
                        .map(|(_, ip)| ip)
                })
                .flatten()
        },
    );
    wait_until("the new leader to reconcile", TIMEOUT, || {
        (metric(&new_leader_ip, "millrace_operator_reconciles_total").unwrap_or(0.0) >= 1.0)
            .then_some(())
    });
    assert_eq!(
        metric(&new_leader_ip, "millrace_operator_leader"),
        Some(1.0)
    );

    // The leader paused past its lease (a frozen process or node): another
    // replica takes the lease, and the paused one, resumed, stops before
    // writing anything, at its renew deadline (shorter than the lease),
    // rather than acting until its next renewal finds the lease taken.
    let paused = lease_holder();
    let pids = pod_pids(OPERATOR_NAMESPACE, &paused);
    assert!(!pids.is_empty(), "the leader's processes");
    signal(&pids, "STOP");
    wait_until(
        "another replica to take the paused leader's lease",
        Duration::from_secs(90),
        || {
            let h = lease_holder();
            (!h.is_empty() && h != paused).then_some(())
        },
    );
    signal(&pids, "CONT");
    let log = wait_until(
        "the resumed leader to stop",
        Duration::from_secs(30),
        || {
            let log = pod_log(OPERATOR_NAMESPACE, &paused);
            log.contains("renew deadline").then_some(log)
        },
    );
    assert!(
        !log.contains("lost the leader lease"),
        "it stopped at its deadline, not at a renewal: {log}"
    );

    helm(&[
        "uninstall",
        "millrace",
        "-n",
        OPERATOR_NAMESPACE,
        "--wait",
        "--timeout",
        "60s",
    ])
    .unwrap();
    let left = kubectl(&[
        "get",
        "deployments,serviceaccounts,services,roles,rolebindings,clusterroles,clusterrolebindings",
        "-A",
        "-l",
        "app.kubernetes.io/instance=millrace,app.kubernetes.io/name=millrace-operator",
        "-o",
        "name",
    ])
    .unwrap();
    assert!(left.trim().is_empty(), "helm uninstall left: {left}");
    wait_until("operator pods gone", TIMEOUT, || {
        operator_pods().is_empty().then_some(())
    });
}
