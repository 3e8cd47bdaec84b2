//! The chart's Grafana dashboard and alert rules against real metrics:
//! every series they use is exposed by a real worker's or the operator's
//! `/metrics` (the chart's operator pod and a stateful app's worker pods
//! on the test bed, while records flow),
//! and every family follows Prometheus' naming conventions. A renamed
//! metric fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use millrace_tests::runtime::http_get;
use millrace_tests::state_verifier::{generate, manifest};
use millrace_tests::verifier::Topics;
use millrace_tests::workers::{apply_yaml, get, wait_settled, worker_pods};
use millrace_tests::{install_chart, repo_root, unique, TestNamespace};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The files whose expressions name series.
const USERS: [&str; 2] = [
    "charts/millrace/dashboards/millrace.json",
    "charts/millrace/templates/prometheusrule.yaml",
];

/// Every `millrace_…` series name in `text`.
fn series_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("millrace_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Family name → type, from an exposition's `# TYPE` lines.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Whether series `name` belongs to one of `families` (a counter's samples
/// end in `_total`, a histogram's in `_bucket`, `_sum`, `_count`).
fn exposed(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.iter().any(|(family, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes.iter().any(|s| name == format!("{family}{s}"))
    })
}

/// Prometheus' naming conventions, as far as names show them: snake case
/// under the `millrace` prefix, no `_total` on a family (the exposition
/// adds it to counters), histograms in base units, and help on each.
fn convention_breaks(exposition: &str) -> Vec<String> {
    let mut breaks = Vec::new();
    for (name, kind) in families(exposition) {
        let snake = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !snake || !name.starts_with("millrace_") || name.ends_with('_') {
            breaks.push(format!("{name}: not snake_case under millrace_"));
        }
        if name.ends_with("_total") {
            breaks.push(format!("{name}: a family named _total"));
        }
        if kind == "histogram" && !name.ends_with("_seconds") {
            breaks.push(format!("{name}: a histogram not in seconds"));
        }
        let help = format!("# HELP {name} ");
        if !exposition
            .lines()
            .any(|l| l.starts_with(&help) && l.len() > help.len())
        {
            breaks.push(format!("{name}: no help text"));
        }
    }
    breaks
}

fn scrape(ip: &str, port: &str) -> Option<String> {
    match http_get(ip, port.parse().ok()?, "/metrics")? {
        (200, _, body) => Some(body),
        _ => None,
    }
}

/// The operator's and every worker's exposition, as of now.
fn expositions(ns: &str, app: &str) -> Vec<String> {
    let operator = millrace_tests::OPERATOR_NAMESPACE;
    let mut targets = vec![(
        get(operator, "pods", "{.items[0].status.podIP}"),
        get(
            operator,
            "pods",
            "{.items[0].spec.containers[0].ports[?(@.name==\"metrics\")].containerPort}",
        ),
    )];
    for pod in worker_pods(ns, app) {
        let pod = format!("pod/{pod}");
        targets.push((
            get(ns, &pod, "{.status.podIP}"),
            get(
                ns,
                &pod,
                "{.spec.containers[0].ports[?(@.name==\"admin\")].containerPort}",
            ),
        ));
    }
    targets
        .iter()
        .filter_map(|(ip, port)| scrape(ip, port))
        .collect()
}

#[test]
fn every_series_the_dashboard_and_alerts_use_is_exposed() {
    install_chart(&[]);
    let mut used = BTreeSet::new();
    for file in USERS {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let found = series_in(&text);
        assert!(!found.is_empty(), "{file} names no millrace_ series");
        used.extend(found);
    }

    // What the dashboard shows, happening: a stateful app on two workers
    // with a standby of every task, autoscaling deciding (DryRun), a burst
    // of records (a few malformed, dead-lettered) faster than the workers
    // drain it, so the autoscaler learns their capacity under backlog.
    let ns = TestNamespace::create("observe");
    let ns = ns.0.as_str();
    let prefix = unique("obs");
    let topics = Topics::new(&prefix, 4);
    topics.create();
    let app = "observed";
    let spec = "  replicas: 2\n  state: {standbyReplicas: 1}\n  autoscaling: {mode: DryRun, minReplicas: 1, pollInterval: 2s}\n";
    apply_yaml(
        ns,
        app,
        &manifest(app, &format!("{prefix}-app"), &topics, spec),
    );
    wait_settled(ns, app, 2, 4);
    let input = topics.input.clone();
    let generator = std::thread::spawn(move || generate(&input, 20_000, Duration::from_secs(3)));

    // Series of a family appear with its first sample (a lag reading, a
    // standby's first change): wait for all of them.
    let (expositions, missing) = wait_until_or_last(TIMEOUT, || {
        let expositions = expositions(ns, app);
        let exposed_families: BTreeMap<String, String> =
            expositions.iter().flat_map(|e| families(e)).collect();
        let missing: Vec<String> = used
            .iter()
            .filter(|n| !exposed(n, &exposed_families))
            .cloned()
            .collect();
        (expositions, missing)
    });
    generator.join().unwrap();
    assert!(
        missing.is_empty(),
        "series the dashboard or alert rules use that neither the operator nor a worker exposes: {missing:?} (exposed families: {:?})",
        expositions.iter().flat_map(|e| families(e)).map(|(f, _)| f).collect::<BTreeSet<_>>()
    );
    let breaks: Vec<String> = expositions
        .iter()
        .flat_map(|e| convention_breaks(e))
        .collect();
    assert!(
        breaks.is_empty(),
        "metric names against Prometheus conventions: {breaks:?}"
    );
}

/// Polls `check` until its list comes back empty or `timeout` passes;
/// returns the last answer either way.
fn wait_until_or_last<T>(
    timeout: Duration,
    check: impl Fn() -> (T, Vec<String>),
) -> (T, Vec<String>) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (value, missing) = check();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            return (value, missing);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_renamed_or_misnamed_metric_is_caught() {
    let exposition = "# HELP millrace_records_in Records consumed.\n# TYPE millrace_records_in counter\nmillrace_records_in_total{topic=\"a\"} 1\n# HELP millrace_commit_seconds Commit time.\n# TYPE millrace_commit_seconds histogram\n# HELP millrace_task_lag Lag.\n# TYPE millrace_task_lag gauge\n";
    let f = families(exposition);
    assert!(exposed("millrace_records_in_total", &f));
    assert!(exposed("millrace_commit_seconds_bucket", &f));
    assert!(exposed("millrace_task_lag", &f));
    assert!(
        !exposed("millrace_records_in", &f),
        "a counter's samples end in _total"
    );
    assert!(!exposed("millrace_records_input_total", &f));
    assert!(!exposed("millrace_task_lag_total", &f));
    assert!(convention_breaks(exposition).is_empty());
    let bad = "# HELP millrace_commitTime t\n# TYPE millrace_commitTime histogram\n# TYPE millrace_x_total counter\n";
    let breaks = convention_breaks(bad);
    assert_eq!(breaks.len(), 4, "{breaks:?}");
    assert_eq!(
        series_in(
            r#"rate(millrace_records_in_total{app=~"$app"}[5m]) / millrace_operator_app_lag"#
        ),
        BTreeSet::from([
            "millrace_records_in_total".into(),
            "millrace_operator_app_lag".into()
        ])
    );
}
