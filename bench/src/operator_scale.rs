//! The operator at scale (`millrace-bench operator`): many StreamApps on the
//! test bed's API server, each pointing at the real broker with a small
//! topic of its own, and what the operator costs and how fast it answers:
//! its RSS and CPU while it holds them, the API server's request rate with
//! and without it, the time to reconcile them all, and the time a spec
//! change takes to reach its StatefulSet. Apps run `replicas: 0`: the
//! control plane's work is all there (StatefulSet, Services, ConfigMaps,
//! RBAC, placement, conditions), but no worker process is started for them
//! (a thousand workers would not fit this machine).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Setup};
use crate::{kafka, process};

#[derive(clap::Args)]
pub struct Args {
    /// StreamApps to create.
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Namespace they go to (created, and deleted at the end).
    #[arg(long, default_value = "millrace-scale")]
    namespace: String,
    /// Seconds of each steady-state sample (operator CPU, API requests).
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// Spec changes timed (one app each).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The operator's Deployment (namespace/name), scaled to 0 and back for
    /// the API server's baseline.
    #[arg(long, default_value = "millrace-system/millrace")]
    operator: String,
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
}

pub(crate) fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn kubectl_apply(namespace: &str, yaml: &str) -> anyhow::Result<()> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "kubectl apply failed");
    Ok(())
}

/// App `i`'s manifest: its own one-partition input topic, one shared output.
fn app(setup: &Setup, i: usize, commit_ms: u64) -> String {
    format!(
        r#"apiVersion: millrace.dev/v1alpha1
kind: StreamApp
metadata: {{name: app-{i}}}
spec:
  kafka: {{bootstrapServers: "{bootstrap}"}}
  processingGuarantee: ExactlyOnce
  commitInterval: {commit_ms}ms
  replicas: 0
  pipeline:
    source: {{topics: [{id}-in-{i}]}}
    steps:
    - {{name: paid, filter: "value.status == 'paid'"}}
    - route: {{default: {id}-out}}
"#,
        bootstrap = setup.bootstrap,
        id = setup.run_id
    )
}

/// The operator's process: the one whose executable is `millrace-operator`.
fn operator_pid() -> anyhow::Result<(u32, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            if exe.file_name().is_some_and(|n| n == "millrace-operator") {
                found.push((pid, exe));
            }
        }
    }
    anyhow::ensure!(
        found.len() == 1,
        "expected one millrace-operator process, found {}: install the chart on the test bed (bench/README.md)",
        found.len()
    );
    Ok(found.remove(0))
}

/// The operator must not have restarted since `pid` was read: its figures
/// would be a fresh process's, and a restart under load is the finding.
fn still_running(pid: u32, doing: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the operator (pid {pid}) exited while {doing}: see its pod's log (`kubectl -n millrace-system logs deploy/millrace --previous`)"
    );
    Ok(())
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The API server's requests served so far (all clients), from its metrics.
fn api_requests() -> anyhow::Result<f64> {
    let metrics = kubectl(&["get", "--raw", "/metrics"])?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// API requests per second over `seconds`, and the operator's CPU cores
/// (if it runs) over the same span.
fn sample(seconds: u64, operator: Option<u32>) -> anyhow::Result<(f64, Option<f64>)> {
    let (requests, cpu) = (
        api_requests()?,
        operator.map(|p| process::process_usage(p).0),
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let rate = (api_requests()? - requests) / elapsed;
    let cores = operator
        .zip(cpu)
        .map(|(p, before)| (process::process_usage(p).0 - before) / elapsed);
    Ok((rate, cores))
}

/// Deletes the apps' namespace and topics however the run ends.
struct Leftovers<'a> {
    namespace: &'a str,
    bootstrap: &'a str,
    topics: Vec<String>,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", self.namespace, "--wait=false"]);
        let _ = kafka::delete_topics(self.bootstrap, &self.topics);
    }
}

fn count_statefulsets(namespace: &str) -> anyhow::Result<usize> {
    Ok(
        kubectl(&["get", "statefulsets", "-n", namespace, "-o", "name"])?
            .lines()
            .count(),
    )
}

fn config_hash(namespace: &str, app: usize) -> Option<String> {
    kubectl(&[
        "get",
        "statefulset",
        &format!("app-{app}"),
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.template.metadata.annotations.millrace\\.dev/config-hash}",
    ])
    .ok()
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let (pid, exe) = operator_pid()?;
    let ns = args.namespace.as_str();
    let _ = kubectl(&["create", "namespace", ns]);
    let topics: Vec<String> = (0..args.apps)
        .map(|i| format!("{}-in-{i}", setup.run_id))
        .chain(std::iter::once(format!("{}-out", setup.run_id)))
        .collect();
    let leftovers = Leftovers {
        namespace: ns,
        bootstrap: &setup.bootstrap,
        topics,
    };
    kafka::create_topics(&setup.bootstrap, &leftovers.topics, 1)?;
    let rss_before = rss_mb(pid);
    let idle_seconds = args.sample_seconds.min(20);
    let (idle_rate, idle_cores) = sample(idle_seconds, Some(pid))?;

    let started = Instant::now();
    for chunk in (0..args.apps).collect::<Vec<_>>().chunks(100) {
        let yaml: Vec<String> = chunk.iter().map(|i| app(setup, *i, 100)).collect();
        kubectl_apply(ns, &yaml.join("---\n"))?;
    }
    let applied = started.elapsed().as_secs_f64();
    loop {
        let made = count_statefulsets(ns)?;
        if made >= args.apps {
            break;
        }
        still_running(
            pid,
            &format!("reconciling {} apps ({made} StatefulSets made)", args.apps),
        )?;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the operator did not make {} StatefulSets in 30 minutes",
            args.apps
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let reconciled = started.elapsed().as_secs_f64();
    eprintln!(
        "{} apps applied in {applied:.1} s, all StatefulSets after {reconciled:.1} s",
        args.apps
    );

    let (busy_rate, busy_cores) = sample(args.sample_seconds, Some(pid))?;
    still_running(pid, &format!("holding {} apps", args.apps))?;
    let rss_holding = rss_mb(pid);
    eprintln!(
        "holding {} apps: {rss_holding:.0} MB, {:.3} cores, {busy_rate:.1} API requests/s",
        args.apps,
        busy_cores.unwrap_or(0.0)
    );

    // Spec changes: each to a different app, timed until its StatefulSet's
    // config hash moves (polled by kubectl: ~0.1 s resolution).
    let mut change_seconds = Vec::new();
    for k in 0..args.changes {
        let i = (k * args.apps / args.changes.max(1)) % args.apps;
        let before = config_hash(ns, i);
        let changed_at = Instant::now();
        kubectl_apply(ns, &app(setup, i, 200 + k as u64))?;
        loop {
            // Only a hash read, and different, is the change arriving (a
            // failed kubectl call reads as none).
            if matches!((config_hash(ns, i), &before), (Some(now), Some(was)) if &now != was) {
                break;
            }
            anyhow::ensure!(
                changed_at.elapsed() < Duration::from_secs(300),
                "app-{i}'s change did not reach its StatefulSet in 5 minutes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        change_seconds.push(changed_at.elapsed().as_secs_f64());
    }
    still_running(pid, "timing spec changes")?;
    change_seconds.sort_by(|a, b| a.total_cmp(b));

    // The API server's baseline without the operator (the controller
    // manager, the pod runner and this harness keep talking to it).
    let (op_ns, op_name) = args
        .operator
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--operator is namespace/name"))?;
    kubectl(&["scale", "deployment", op_name, "-n", op_ns, "--replicas=0"])?;
    while operator_pid().is_ok() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let baseline_rate = sample(args.sample_seconds, None).map(|(rate, _)| rate);
    kubectl(&["scale", "deployment", op_name, "-n", op_ns, "--replicas=1"])?;
    drop(leftovers);

    let mut out = String::new();
    let _ = writeln!(out, "# The operator at scale, {}\n", harness::utc_now());
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(out, "{} StreamApps (`replicas: 0`, exactly-once, a filter and a route, each reading a one-partition topic of its own on the real broker) applied with `kubectl apply` in chunks of 100 to namespace `{ns}` on the test bed's API server; operator `{}` (pid {pid}). Samples of {} s ({idle_seconds} s before the apps).\n", args.apps, exe.display(), args.sample_seconds);
    let _ = writeln!(out, "| measure | value |\n|---|---:|");
    let rows = [
        ("operator RSS before, MB", format!("{rss_before:.0}")),
        (
            &*format!("operator RSS holding {} apps, MB", args.apps),
            format!("{rss_holding:.0}"),
        ),
        (
            "operator CPU idle, cores",
            format!("{:.3}", idle_cores.unwrap_or(0.0)),
        ),
        (
            &*format!("operator CPU holding {} apps, cores", args.apps),
            format!("{:.3}", busy_cores.unwrap_or(0.0)),
        ),
        ("all apps applied after, s", format!("{applied:.1}")),
        (
            "every StatefulSet made after, s",
            format!("{reconciled:.1}"),
        ),
        (
            "spec change → StatefulSet, p50 / max, s",
            format!(
                "{:.2} / {:.2}",
                harness::median(change_seconds.clone()),
                change_seconds.last().copied().unwrap_or(0.0)
            ),
        ),
        ("API requests/s, before the apps", format!("{idle_rate:.1}")),
        (
            "API requests/s, holding the apps",
            format!("{busy_rate:.1}"),
        ),
        (
            "API requests/s, operator stopped (baseline)",
            baseline_rate.map_or_else(|e| format!("not measured: {e}"), |r| format!("{r:.1}")),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    std::fs::create_dir_all(&args.results)?;
    let file = args.results.join(format!("{}-operator.md", setup.run_id));
    std::fs::write(&file, &out)?;
    println!("{out}");
    eprintln!("written to {}", file.display());
    Ok(())
}
