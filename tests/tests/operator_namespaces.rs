//! The operator restricted to a list of namespaces (chart value
//! `watchNamespaces`): a Role in each, no cluster-wide grant but the CRD,
//! apps elsewhere left alone; and workers' admin port limited by their
//! NetworkPolicy (`workers.restrictAdminPort`, `workers.adminFrom`).
//!
//! The cluster-wide release the other tests install would serve every
//! namespace too: it is uninstalled for this test and installed again after.

use std::time::{Duration, Instant};

use millrace_tests::{
    example_topics, helm, install_chart, kubectl, repo_root, wait_until, TestNamespace,
    OPERATOR_NAMESPACE,
};

const RELEASE: &str = "scoped";
const RELEASE_NAMESPACE: &str = "millrace-scoped";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:millrace-scoped:scoped-millrace";
const MONITORING: &str =
    r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#;

/// Puts the cluster-wide release back, also when the test fails.
struct ClusterWideAgain;

impl Drop for ClusterWideAgain {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait"]);
        install_chart(&[]);
    }
}

fn can_i(verb: &str, what: &str, namespace: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb, what, "--as", SERVICE_ACCOUNT];
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    kubectl(&args).is_ok_and(|answer| answer.trim() == "yes")
}

fn get(ns: &str, what: &str, jsonpath: &str) -> String {
    kubectl(&["-n", ns, "get", what, "-o", &format!("jsonpath={jsonpath}")]).unwrap_or_default()
}

#[test]
fn an_operator_given_namespaces_serves_them_and_holds_nothing_elsewhere() {
    example_topics();
    let served = TestNamespace::create("served");
    let other = TestNamespace::create("other");
    let (served, other) = (served.0.as_str(), other.0.as_str());
    let _after = ClusterWideAgain;
    let _ = helm(&["uninstall", "millrace", "-n", OPERATOR_NAMESPACE, "--wait"]);
    let namespaces = format!(r#"watchNamespaces=["{served}"]"#);
    let admin_from = format!("workers.adminFrom={MONITORING}");
    helm(&[
        "upgrade",
        "--install",
        RELEASE,
        "charts/millrace",
        "-n",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        "--set-json",
        &namespaces,
        "--set",
        "workers.restrictAdminPort=true",
        "--set-json",
        &admin_from,
    ])
    .expect("helm install of the namespaced operator");

    // Its rights: everything it needs in the served namespace, nothing in
    // another, nothing across namespaces.
    for (verb, what) in [
        ("list", "streamapps.millrace.dev"),
        ("get", "secrets"),
        ("create", "statefulsets.apps"),
        ("create", "roles.rbac.authorization.k8s.io"),
    ] {
        assert!(can_i(verb, what, Some(served)), "{verb} {what} in {served}");
        assert!(!can_i(verb, what, Some(other)), "{verb} {what} in {other}");
        assert!(!can_i(verb, what, None), "{verb} {what} across namespaces");
    }

    let example = repo_root().join("examples/orders-router.yaml");
    for ns in [served, other] {
        kubectl(&["-n", ns, "apply", "-f", example.to_str().unwrap()]).unwrap();
    }
    wait_until(
        "the served namespace's app reconciled",
        Duration::from_secs(90),
        || (get(served, "streamapp/orders-router", "{.status.tasks}") == "4").then_some(()),
    );
    assert!(!get(served, "statefulset/orders-router", "{.metadata.name}").is_empty());

    // The other namespace's app is never touched: no finalizer, no
    // status, no workers, while the served one is reconciled again.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let untouched = get(
            other,
            "streamapp/orders-router",
            "{.metadata.finalizers}{.status}",
        );
        assert_eq!(
            untouched, "",
            "an app outside watchNamespaces was reconciled"
        );
        assert_eq!(get(other, "statefulsets", "{.items[*].metadata.name}"), "");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The admin port admits the operator's namespace and the peers given.
    let from = get(
        served,
        "networkpolicy/orders-router",
        "{.spec.ingress[0].from[*].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name}",
    );
    assert_eq!(from, format!("{RELEASE_NAMESPACE} monitoring"));
    kubectl(&[
        "-n",
        served,
        "delete",
        "streamapp",
        "orders-router",
        "--wait=true",
    ])
    .unwrap();
}
