//! The query API on the test bed (#19): a running count per customer on
//! worker pods scaled 1 → 3, losing a pod, then back to 1, while orders
//! flow and a client asks random pods for random customers (half of the
//! time allowing a standby's staleness). Every answer is a 200 carrying a
//! value the output topic committed for that key, or a retryable 503; an
//! answer that allowed no staleness never goes back from an earlier one; pods answer for keys they do not
//! hold (forwarded); and once the input stops, every pod answers every
//! key with its final count.
//!
//! Size: `MILLRACE_QUERY_ORDERS` (default 4,000, written over 40 s).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use millrace_tests::runtime::http_get;
use millrace_tests::verifier::{drained, env_or, pipeline_manifest, read_all, write_paced, Topics};
use millrace_tests::workers::{apply_yaml, get, scale, wait_settled};
use millrace_tests::{install_chart, kubectl, unique, wait_until, workspace_binary, TestNamespace};

const PARTITIONS: i32 = 4;
const CUSTOMERS: u64 = 40;
const APP: &str = "counts";
const SPEC: &str =
    "  commitInterval: 200ms\n  transactionTimeout: 30s\n  replicas: 1\n  state: {standbyReplicas: 1}\n";
const STEPS: &str = "    - name: per-customer
      aggregate:
        groupBy: key
        aggregations: {orders: {count: {}}, total: {sum: value.amount}}
";

/// Each pod's query address (`ip:port`).
fn pod_addresses(ns: &str) -> Vec<(String, String)> {
    let out = get(
        ns,
        "pods",
        "{range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, ip)| name.starts_with(&format!("{APP}-")) && !ip.is_empty())
        .map(|(name, ip)| (name.to_string(), ip.to_string()))
        .collect()
}

/// One answer: the pod asked, the staleness allowed, the HTTP status, and
/// the body.
type Seen = (String, u64, u16, Value);

fn ask(ip: &str, customer: u64, max_lag: u64) -> Option<(u16, Value)> {
    let path = format!("/v1/stores/per-customer/keys/c{customer}?maxLag={max_lag}");
    let (status, _, body) = http_get(ip, 8081, &path)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

#[test]
fn any_pod_answers_any_key_with_committed_values_while_the_app_scales() {
    install_chart(&[]);
    let orders = env_or("MILLRACE_QUERY_ORDERS", 4_000);
    let ns = TestNamespace::create("queries");
    let ns = ns.0.as_str();
    let prefix = unique("qbed");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    apply_yaml(
        ns,
        APP,
        &pipeline_manifest((APP, &app_id), SPEC, topics.sinks(), STEPS),
    );
    wait_settled(ns, APP, 1, PARTITIONS);
    let endpoint = get(
        ns,
        &format!("streamapp/{APP}"),
        "{.status.queryEndpoint.service}:{.status.queryEndpoint.port}",
    );
    assert_eq!(
        endpoint,
        format!("{APP}:8081"),
        "the status names the endpoint"
    );
    let policy = get(
        ns,
        &format!("networkpolicy/{APP}"),
        "{.spec.ingress[1].ports[0].port} from {.spec.ingress[1].from[0]}",
    );
    assert_eq!(
        policy, "query from {\"podSelector\":{}}",
        "queries from this namespace only"
    );

    let input = topics.input.clone();
    let writer = std::thread::spawn(move || {
        write_paced(&input, 0..orders, Duration::from_secs(40), None, |seq| {
            let customer = seq % CUSTOMERS;
            (format!("c{customer}"), format!(r#"{{"amount": {seq}}}"#))
        })
    });
    let done = Arc::new(AtomicBool::new(false));
    let asker = {
        let (done, ns) = (done.clone(), ns.to_string());
        std::thread::spawn(move || {
            let mut seen: Vec<Seen> = Vec::new();
            let (mut pods, mut looked) = (Vec::new(), std::time::Instant::now());
            let mut customer = 0u64;
            while !done.load(Ordering::Relaxed) {
                if pods.is_empty() || looked.elapsed() > Duration::from_secs(2) {
                    (pods, looked) = (pod_addresses(&ns), std::time::Instant::now());
                }
                // One key of every pod back to back, so that a stale copy
                // answering as if current would show as a count going
                // back; then once allowing staleness.
                customer = (customer + 1) % CUSTOMERS;
                for (i, (pod, ip)) in pods.iter().enumerate() {
                    for max_lag in [0, 1_000].into_iter().take(1 + usize::from(i == 0)) {
                        if let Some((status, body)) = ask(ip, customer, max_lag) {
                            seen.push((pod.clone(), max_lag, status, body));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    scale(ns, APP, 3);
    wait_settled(ns, APP, 3, PARTITIONS);
    let pod = format!("{APP}-1");
    kubectl(&["-n", ns, "delete", "pod", &pod, "--wait=false"]).unwrap();
    eprintln!("deleted {pod}");
    wait_settled(ns, APP, 3, PARTITIONS);
    scale(ns, APP, 1);
    wait_settled(ns, APP, 1, PARTITIONS);
    writer.join().unwrap();
    wait_until(
        "the app to read every order",
        Duration::from_secs(300),
        || drained(&app_id, &topics).then_some(()),
    );
    done.store(true, Ordering::Relaxed);
    let seen = asker.join().unwrap();

    // What the output topic committed per customer: (count, sum) pairs.
    let mut committed: BTreeMap<String, BTreeSet<(u64, u64)>> = BTreeMap::new();
    for (_, key, value, _) in read_all(&topics.outputs[0], PARTITIONS) {
        let v: Value = serde_json::from_slice(&value).unwrap();
        committed
            .entry(String::from_utf8(key).unwrap())
            .or_default()
            .insert((v["orders"].as_u64().unwrap(), v["total"].as_u64().unwrap()));
    }
    let (mut answered, mut forwarded, mut retry, mut wrong) = (0, 0, 0, Vec::new());
    // Per key, the newest count an active copy answered: asked in time
    // order, active answers never go back.
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for (pod, max_lag, status, body) in &seen {
        match status {
            200 => {
                answered += 1;
                forwarded += usize::from(body["worker"] != pod.as_str());
                let key = body["key"].as_str().unwrap_or_default();
                let value = (
                    body["value"]["orders"].as_u64().unwrap_or_default(),
                    body["value"]["total"].as_u64().unwrap_or_default(),
                );
                if !committed.get(key).is_some_and(|c| c.contains(&value)) {
                    wrong.push(format!("{pod}: not committed: {body}"));
                }
                if *max_lag == 0 {
                    let before = newest.entry(key.to_string()).or_default();
                    if value.0 < *before {
                        wrong.push(format!("{pod}: went back from {before}: {body}"));
                    }
                    *before = (*before).max(value.0);
                }
            }
            503 => retry += 1,
            // A customer not seen yet.
            404 if body["found"] == false => {}
            _ => wrong.push(format!("{pod}: {status} {body}")),
        }
    }
    println!(
        "queries on the test bed: {} answers, {answered} with a value ({forwarded} forwarded), \
         {retry} retryable 503s, {} wrong {:?}",
        seen.len(),
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(20)]);
    assert!(
        answered > 100,
        "{answered} answers: the client barely asked"
    );
    assert!(forwarded > 0, "no pod answered for a key it does not hold");

    // Once the input has stopped, every pod answers every key with its
    // final count (the last commit's writes are applied just after it).
    let per_customer = orders / CUSTOMERS;
    // And the CLI finds it, and shows the app in one view.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(workspace_binary("millrace"))
            .args(args)
            .args(["-n", ns])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let answer = wait_until("millrace query", Duration::from_secs(30), || {
        let (ok, text) = cli(&["query", APP, "per-customer", "c7"]);
        let body: Value = serde_json::from_str(&text).ok()?;
        (ok && body["value"]["orders"] == per_customer).then_some(body)
    });
    assert_eq!(answer["key"], "c7", "{answer}");
    let (ok, view) = cli(&["status", APP]);
    assert!(ok, "{view}");
    for expected in [
        "Workers 1/1 ready",
        "tasks 4",
        "Queries  service counts port 8081",
        "counts-0",
    ] {
        assert!(view.contains(expected), "'{expected}' in:\n{view}");
    }
    let (ok, missing) = cli(&["query", APP, "nope", "c7"]);
    assert!(
        !ok && missing.contains("no stateful step 'nope'"),
        "{missing}"
    );
    for (pod, ip) in pod_addresses(ns) {
        for customer in 0..CUSTOMERS {
            wait_until(
                &format!("{pod} to answer c{customer}'s final count"),
                Duration::from_secs(30),
                || {
                    let (status, body) = ask(&ip, customer, 0)?;
                    (status == 200 && body["value"]["orders"] == per_customer).then_some(())
                },
            );
        }
    }
}
