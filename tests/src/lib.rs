//! Helpers for tests that run against the local stack (`make stack-up`):
//! where the broker and API server are, unique names, polling, and the
//! processes the pod runner started for a pod.
//!
//! These tests never fall back to mocks: without the stack they fail and say
//! how to start it.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Bootstrap servers of the single-node broker.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The kubeconfig of the local API server; panics with the fix when unset.
pub fn kubeconfig() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(path) if !path.is_empty() => path,
        _ => {
            let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack/kubeconfig");
            assert!(
                std::path::Path::new(default).exists(),
                "KUBECONFIG is not set and {default} does not exist: run `make stack-up` first"
            );
            default.into()
        }
    }
}

/// A name no earlier run used: tests share one broker and one API server.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// Runs kubectl against the local API server; an error carries its stderr.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Some`, or fails naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pids of the live processes the pod runner started for the pod `uid`.
pub fn pod_processes(uid: &str) -> Vec<u32> {
    let marker = format!("MILLRACE_PODRUNNER_POD_UID={uid}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if !zombie && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}
