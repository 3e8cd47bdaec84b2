//! The chart and the operator on the local API server: `helm install`, the
//! operator running as the chart's pod with only the chart's RBAC, a
//! StreamApp reconciled into every owned object, scaling through `/scale`,
//! garbage collection, and the bad-manifest corpus.

use std::time::Duration;

use millrace_tests::{
    confinement, ensure_topics, example_topics, helm, install_chart, kubectl, repo_root,
    wait_until, TestNamespace,
};

const TIMEOUT: Duration = Duration::from_secs(90);

fn get(ns: &str, what: &str, jsonpath: &str) -> String {
    kubectl(&["-n", ns, "get", what, "-o", &format!("jsonpath={jsonpath}")]).unwrap_or_default()
}

fn condition(ns: &str, app: &str, type_: &str, field: &str) -> String {
    get(
        ns,
        &format!("streamapp/{app}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    )
}

/// The operator's pods with their restart counts (not `helm test`'s pod,
/// which another test here may run meanwhile).
fn operator_pods() -> String {
    kubectl(&[
        "-n",
        millrace_tests::OPERATOR_NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=millrace-operator",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}",
    ])
    .unwrap_or_default()
}

#[test]
fn example_app_is_reconciled_into_owned_objects_scaled_and_collected() {
    install_chart(&[]);
    // `helm test`: a pod of the operator's image checks that the operator
    // answers and one replica leads (the chart's test hook).
    let tested = helm(&[
        "test",
        "millrace",
        "-n",
        millrace_tests::OPERATOR_NAMESPACE,
        "--timeout",
        "120s",
    ])
    .unwrap();
    assert!(
        tested.contains("Phase:          Succeeded") || tested.contains("Succeeded"),
        "{tested}"
    );
    example_topics();
    let ns = TestNamespace::create("orders");
    let ns = ns.0.as_str();
    let example = repo_root().join("examples/orders-router.yaml");
    kubectl(&["-n", ns, "apply", "-f", example.to_str().unwrap()]).unwrap();

    wait_until("status.tasks = 4", TIMEOUT, || {
        (get(ns, "streamapp/orders-router", "{.status.tasks}") == "4").then_some(())
    });
    assert_eq!(
        condition(ns, "orders-router", "Degraded", "status"),
        "False"
    );
    // The workers read their rendered configuration and the placement, take
    // their tasks and report ready.
    wait_until("Ready=True WorkersReady", TIMEOUT, || {
        (condition(ns, "orders-router", "Ready", "reason") == "WorkersReady").then_some(())
    });
    assert_eq!(
        condition(ns, "orders-router", "Ready", "message"),
        "2/2 workers ready"
    );
    // As the built pod specs say: uid 65532, a read-only root, writable only
    // where a volume is declared writable; the operator's pod too.
    for worker in ["orders-router-0", "orders-router-1"] {
        confinement::check(ns, worker, 65532).unwrap();
    }
    for operator in operator_pods().split_whitespace() {
        let operator = operator.split('=').next().unwrap();
        confinement::check(millrace_tests::OPERATOR_NAMESPACE, operator, 65532).unwrap();
    }

    // Real records through the worker pods: a large paid order is routed to
    // orders-large, a malformed one to the dead-letter topic.
    let marker = millrace_tests::unique("order");
    millrace_tests::produce(
        "orders",
        &marker,
        &format!(r#"{{"id":"{marker}","status":"paid","amount":5000,"region":"eu"}}"#),
    );
    millrace_tests::produce("orders", &marker, &format!("not json {marker}"));
    wait_until("the order routed to orders-large", TIMEOUT, || {
        millrace_tests::committed_values("orders-large")
            .iter()
            .any(|v| v.contains(&marker))
            .then_some(())
    });
    wait_until("the malformed order in orders-dlq", TIMEOUT, || {
        millrace_tests::committed_values("orders-dlq")
            .iter()
            .any(|v| v.contains(&marker))
            .then_some(())
    });

    // Every owned object, owned and with the expected fields.
    let owner = |kind_name: &str| {
        get(
            ns,
            kind_name,
            "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        )
    };
    for object in [
        "statefulset/orders-router",
        "configmap/orders-router-config",
        "service/orders-router",
        "poddisruptionbudget/orders-router",
        "serviceaccount/orders-router-worker",
        "role/orders-router-worker",
        "rolebinding/orders-router-worker",
    ] {
        assert_eq!(
            owner(object),
            "StreamApp/orders-router",
            "{object} is owned by the app"
        );
    }
    assert_eq!(
        get(
            ns,
            "statefulset/orders-router",
            "{.spec.replicas} {.spec.podManagementPolicy} {.spec.serviceName}"
        ),
        "2 Parallel orders-router"
    );
    assert_eq!(
        get(
            ns,
            "statefulset/orders-router",
            "{.spec.template.spec.serviceAccountName}"
        ),
        "orders-router-worker"
    );
    assert_eq!(
        get(
            ns,
            "statefulset/orders-router",
            "{.spec.template.spec.securityContext.runAsNonRoot}"
        ),
        "true"
    );
    assert_eq!(
        get(
            ns,
            "statefulset/orders-router",
            "{.spec.template.spec.containers[0].readinessProbe.httpGet.path}"
        ),
        "/readyz"
    );
    assert_eq!(
        get(ns, "service/orders-router", "{.spec.clusterIP}"),
        "None"
    );
    assert_eq!(
        get(
            ns,
            "poddisruptionbudget/orders-router",
            "{.spec.maxUnavailable}"
        ),
        "1"
    );
    let config = get(
        ns,
        "configmap/orders-router-config",
        "{.data.config\\.json}",
    );
    assert!(
        config.contains(&format!("\"applicationId\": \"{ns}.orders-router\"")),
        "{config}"
    );
    assert_eq!(
        get(ns, "role/orders-router-worker", "{.rules[*].resourceNames}"),
        "[\"orders-router-placement\"]",
        "the workers read their placement and nothing else"
    );
    let managers = get(
        ns,
        "statefulset/orders-router",
        "{.metadata.managedFields[*].manager}",
    );
    assert!(
        managers.split(' ').any(|m| m == "millrace-operator"),
        "server-side applied by the operator: {managers}"
    );

    // Printer columns.
    let table = kubectl(&["-n", ns, "get", "streamapps"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REPLICAS", "TASKS", "LAG", "STATE", "AGE"]
    );
    assert!(table.lines().nth(1).unwrap().contains(" 4 "), "{table}");

    // The /scale subresource drives the StatefulSet.
    kubectl(&["-n", ns, "scale", "streamapp/orders-router", "--replicas=3"]).unwrap();
    wait_until("StatefulSet scaled to 3", TIMEOUT, || {
        (get(ns, "statefulset/orders-router", "{.spec.replicas}") == "3").then_some(())
    });
    let events = kubectl(&[
        "-n",
        ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=orders-router,involvedObject.kind=StreamApp",
    ])
    .unwrap();
    assert!(
        events.contains("Created") && events.contains("Scaled"),
        "{events}"
    );
    // More workers than tasks would own nothing: capped at 4.
    kubectl(&["-n", ns, "scale", "streamapp/orders-router", "--replicas=9"]).unwrap();
    wait_until("capped at the task count", TIMEOUT, || {
        (get(ns, "statefulset/orders-router", "{.spec.replicas}") == "4").then_some(())
    });
    wait_until("the cap reported once the workers settle", TIMEOUT, || {
        condition(ns, "orders-router", "Progressing", "message")
            .contains("capped at the 4 task(s)")
            .then_some(())
    });

    // Deleting the app removes everything it owned.
    kubectl(&[
        "-n",
        ns,
        "delete",
        "streamapp",
        "orders-router",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    wait_until("owned objects garbage-collected", TIMEOUT, || {
        let left = kubectl(&[
            "-n",
            ns,
            "get",
            "statefulsets,configmaps,services,poddisruptionbudgets,roles,rolebindings",
            "-l",
            "millrace.dev/app=orders-router",
            "-o",
            "name",
        ])
        .unwrap_or_default();
        let sa = kubectl(&[
            "-n",
            ns,
            "get",
            "serviceaccount",
            "orders-router-worker",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .unwrap_or_default();
        (left.trim().is_empty() && sa.trim().is_empty()).then_some(())
    });
}

/// Every manifest in tests/fixtures/bad-manifests names its expected
/// outcome on its first line: `# expect: rejected: <message>` (the API
/// server refuses it) or `# expect: degraded: <message>` (the operator
/// reports it and starts no workers).
#[test]
fn bad_manifests_are_refused_or_degraded_with_the_field_named() {
    install_chart(&[]);
    example_topics();
    ensure_topics(&[("millrace-mismatch-a", 2), ("millrace-mismatch-b", 3)]);
    let ns = TestNamespace::create("bad");
    let ns = ns.0.as_str();
    let dir = repo_root().join("tests/fixtures/bad-manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let operator_before = operator_pods();
    assert!(
        files.len() >= 15,
        "the corpus has {} manifests",
        files.len()
    );
    let mut degraded = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("first line is '# expect: ...'");
        let (kind, message) = expect.split_once(": ").unwrap();
        let applied = kubectl(&["-n", ns, "apply", "-f", file.to_str().unwrap()]);
        match kind {
            "rejected" => {
                let err = applied
                    .expect_err(&format!("{} was accepted", file.display()))
                    .to_string();
                assert!(
                    err.contains(message),
                    "{}: expected '{message}' in: {err}",
                    file.display()
                );
            }
            "degraded" => {
                applied.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let name = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("name: "))
                    .unwrap()
                    .to_string();
                degraded.push((file.clone(), name, message.to_string()));
            }
            other => panic!("{}: unknown expectation '{other}'", file.display()),
        }
    }
    for (file, name, message) in &degraded {
        let found = wait_until(&format!("{name} Degraded"), TIMEOUT, || {
            let status = condition(ns, name, "Degraded", "status");
            (status == "True").then(|| condition(ns, name, "Degraded", "message"))
        });
        assert!(
            found.contains(message),
            "{}: expected '{message}' in: {found}",
            file.display()
        );
        assert_eq!(condition(ns, name, "Ready", "status"), "False");
    }
    let workers = kubectl(&["-n", ns, "get", "statefulsets", "-o", "name"]).unwrap();
    assert!(
        workers.trim().is_empty(),
        "no workers start for a degraded app: {workers}"
    );

    // With every hostile manifest applied, a good app is still served, and
    // no manifest restarted the operator (a panic would have).
    let good = format!("apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: good-neighbour, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '127.0.0.1:9092'}}\n  replicas: 0\n  pipeline: {{source: {{topics: [orders]}}, steps: [{{route: {{default: orders-other}}}}]}}\n");
    millrace_tests::workers::apply_yaml(ns, "good-neighbour", &good);
    wait_until("the good app reconciled", TIMEOUT, || {
        (get(ns, "streamapp/good-neighbour", "{.status.tasks}") == "4").then_some(())
    });
    assert_eq!(
        operator_pods(),
        operator_before,
        "the operator pod and its restart count are unchanged"
    );

    // applicationId is immutable once set.
    let app = |id: &str| {
        format!("apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: fixed-id, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '127.0.0.1:9092'}}\n  applicationId: {id}\n  pipeline: {{source: {{topics: [orders]}}, steps: [{{route: {{default: orders-other}}}}]}}\n")
    };
    let path = std::env::temp_dir().join(format!("{ns}-fixed-id.yaml"));
    std::fs::write(&path, app("orders-v1")).unwrap();
    kubectl(&["apply", "-f", path.to_str().unwrap()]).unwrap();
    std::fs::write(&path, app("orders-v2")).unwrap();
    let err = kubectl(&["apply", "-f", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.applicationId is immutable"), "{err}");
}

#[test]
fn chart_lints_clean_and_renders_the_golden_output() {
    let lint = helm(&["lint", "charts/millrace"]).unwrap();
    assert!(
        lint.contains("0 chart(s) failed")
            && !lint.contains("[WARNING]")
            && !lint.contains("[ERROR]"),
        "{lint}"
    );
    // The defaults, and every optional template on (the ServiceMonitor,
    // the PodMonitor, the dashboard, the alert rules).
    let optional = [
        "serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
        "dashboard.enabled=true",
        "prometheusRule.enabled=true",
    ];
    let mut all_on = vec![
        "template",
        "millrace",
        "charts/millrace",
        "-n",
        "millrace-system",
    ];
    for value in &optional {
        all_on.extend(["--set", value]);
    }
    for (args, file) in [
        (&all_on[..5], "chart-default.yaml"),
        (&all_on[..], "chart-all-optional.yaml"),
    ] {
        let rendered = helm(args).unwrap();
        let golden = repo_root().join("tests/fixtures/golden").join(file);
        if std::env::var_os("MILLRACE_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &rendered).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(
            rendered == expected,
            "helm template differs from {}; review and run with MILLRACE_UPDATE_GOLDEN=1",
            golden.display()
        );
    }
    let rendered = helm(&all_on).unwrap();
    for kind in [
        "kind: ServiceMonitor",
        "kind: PodMonitor",
        "kind: PrometheusRule",
        "grafana_dashboard: \"1\"",
        "\"uid\": \"millrace\"",
        "helm.sh/hook: test",
    ] {
        assert!(
            rendered.contains(kind),
            "no {kind} among the optional templates"
        );
    }
    let default = helm(&all_on[..5]).unwrap();
    for kind in [
        "kind: ServiceMonitor",
        "kind: PodMonitor",
        "kind: PrometheusRule",
        "grafana_dashboard",
    ] {
        assert!(!default.contains(kind), "{kind} rendered by default");
    }
    let too_many = helm(&[
        "template",
        "millrace",
        "charts/millrace",
        "--set",
        "replicaCount=3",
    ])
    .unwrap_err()
    .to_string();
    assert!(too_many.contains("/replicaCount"), "{too_many}");
    let no_election = helm(&[
        "template",
        "millrace",
        "charts/millrace",
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        no_election.contains("/leaderElection/enabled"),
        "{no_election}"
    );
}
