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
