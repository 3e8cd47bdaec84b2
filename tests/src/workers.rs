//! Worker pods of a StreamApp on the test bed, seen through `kubectl`: the
//! placement summary, their processes (for signals) and their logs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{kubectl, pod_processes, repo_root, unique, wait_until};

/// A JSONPath of one object or list, empty when absent.
pub fn get(ns: &str, what: &str, jsonpath: &str) -> String {
    kubectl(&["-n", ns, "get", what, "-o", &format!("jsonpath={jsonpath}")]).unwrap_or_default()
}

/// Active tasks per worker, from the StreamApp's placement summary.
pub fn tasks_per_worker(ns: &str, app: &str) -> BTreeMap<String, i32> {
    let json = get(ns, &format!("streamapp/{app}"), "{.status.placement}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    v["tasksPerWorker"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0) as i32))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// All `tasks` placed, balanced over exactly `replicas` workers, no move open.
pub fn wait_settled(ns: &str, app: &str, replicas: i32, tasks: i32) {
    let what = format!("{tasks} tasks settled on {replicas} worker(s)");
    wait_until(&what, Duration::from_secs(180), || {
        let per = tasks_per_worker(ns, app);
        let moves = get(
            ns,
            &format!("streamapp/{app}"),
            "{.status.placement.movesInProgress}",
        );
        let total: i32 = per.values().sum();
        let (lo, hi) = (per.values().min().copied(), per.values().max().copied());
        (per.len() == replicas as usize
            && total == tasks
            && moves == "0"
            && hi.zip(lo).is_some_and(|(h, l)| h - l <= 1))
        .then_some(())
    });
}

/// The moved tasks of an app: the worker each resumed on and its pause
/// (ms: its last commit on the old worker → its first on the new), from
/// the operator's TaskResumed Events, as listed.
pub fn task_pauses(ns: &str, app: &str) -> Vec<(String, u64)> {
    let notes = get(
        ns,
        "events",
        "{range .items[?(@.reason==\"TaskResumed\")]}{.note}{.message}{\"\\n\"}{end}",
    );
    notes
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" resumed on ")?;
            let mut words = rest.split_whitespace();
            let to = words.next()?;
            to.starts_with(&format!("{app}-")).then_some(())?;
            Some((to.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// The number of an app's Events of `reason`.
pub fn events(ns: &str, app: &str, reason: &str) -> usize {
    get(
        ns,
        "events",
        &format!(
            "{{range .items[?(@.reason==\"{reason}\")]}}{{.involvedObject.name}}{{\"\\n\"}}{{end}}"
        ),
    )
    .lines()
    .filter(|name| *name == app)
    .count()
}

/// Per task, its standby's lag in changelog records and seconds, from the
/// pods' `/tasks`.
pub fn standby_lags(ns: &str, app: &str) -> BTreeMap<i32, (u64, u64)> {
    let mut lags = BTreeMap::new();
    for pod in worker_pods(ns, app) {
        let ip = get(ns, &format!("pod/{pod}"), "{.status.podIP}");
        let Some(tasks) = crate::runtime::admin_get_at(&ip, 8080, "/tasks") else {
            continue;
        };
        let tasks: serde_json::Value = serde_json::from_str(&tasks).unwrap_or_default();
        for (task, r) in tasks["restores"].as_object().into_iter().flatten() {
            if r["state"] == "Standby" {
                let records = r["recordsRemaining"].as_u64().unwrap_or(u64::MAX);
                let seconds = r["secondsBehind"].as_u64().unwrap_or(u64::MAX);
                lags.insert(task.parse().unwrap(), (records, seconds));
            }
        }
    }
    lags
}

pub fn pod_pids(ns: &str, pod: &str) -> Vec<u32> {
    let uid = get(ns, &format!("pod/{pod}"), "{.metadata.uid}");
    if uid.is_empty() {
        return Vec::new();
    }
    pod_processes(&uid)
}

pub fn signal(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
    }
}

pub fn worker_pods(ns: &str, app: &str) -> Vec<String> {
    get(ns, "pods", "{.items[*].metadata.name}")
        .split_whitespace()
        .filter(|p| p.starts_with(&format!("{app}-")))
        .map(str::to_string)
        .collect()
}

/// Applies a manifest (through a temporary file named after `name`).
pub fn apply_yaml(ns: &str, name: &str, yaml: &str) {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique(name)));
    std::fs::write(&path, yaml).unwrap();
    kubectl(&["-n", ns, "apply", "-f", path.to_str().unwrap()]).unwrap();
}

/// The log of a worker pod's container, as the pod runner writes it.
pub fn pod_log(ns: &str, pod: &str) -> String {
    let stack = std::env::var("MILLRACE_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"));
    let dir = stack.join("logs/pods").join(ns).join(pod);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// Scales the StreamApp (its `/scale` subresource).
pub fn scale(ns: &str, app: &str, replicas: i32) {
    kubectl(&[
        "-n",
        ns,
        "scale",
        &format!("streamapp/{app}"),
        &format!("--replicas={replicas}"),
    ])
    .unwrap();
    eprintln!("scaled to {replicas}");
}

/// A fault on a random live worker: SIGKILL of its process, or deletion of
/// its pod.
pub fn fault(ns: &str, app: &str, n: u64, rand: u64) {
    let pods = worker_pods(ns, app);
    if pods.is_empty() {
        return;
    }
    let pod = &pods[(rand as usize) % pods.len()];
    if n.is_multiple_of(2) {
        let pids = pod_pids(ns, pod);
        signal(&pids, "KILL");
        eprintln!("fault {n}: SIGKILL {pod} {pids:?}");
    } else {
        let _ = kubectl(&["-n", ns, "delete", "pod", pod, "--wait=false"]);
        eprintln!("fault {n}: deleted {pod}");
    }
}

/// Scales through `plan` (waiting each time for the placement to settle),
/// with `faults` ([`fault`]) spread over its steps at pseudo-random moments
/// from `seed`. Returns the faults done.
pub fn rescale_with_faults(
    ns: &str,
    app: &str,
    plan: &[i32],
    tasks: i32,
    faults: u64,
    seed: u64,
) -> u64 {
    let mut seed = std::process::id() as u64 ^ seed;
    let mut rand = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut done = 0;
    for (i, replicas) in plan.iter().enumerate() {
        scale(ns, app, *replicas);
        wait_settled(ns, app, *replicas, tasks);
        let share = (faults - done) / (plan.len() - i) as u64;
        for _ in 0..share {
            std::thread::sleep(Duration::from_millis(500 + rand() % 1500));
            fault(ns, app, done, rand());
            done += 1;
        }
        wait_settled(ns, app, *replicas, tasks);
    }
    done
}
