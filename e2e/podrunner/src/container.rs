//! One container's life: start, probe, restart with back-off, stop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::watch;

use crate::probe;
use crate::process;

/// Where a container is, in the terms of `ContainerStatus`.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting { reason: String, message: String },
    Running { started_at: Timestamp },
    Terminated(Termination),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

/// What the status reporter reads; the supervisor is its only writer.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub restart_count: i32,
    pub state: RunState,
    pub last_termination: Option<Termination>,
    pub ready: bool,
    pub started: bool,
}

impl ContainerState {
    pub fn new(container: &Container) -> Self {
        Self {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            restart_count: 0,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_termination: None,
            ready: false,
            started: false,
        }
    }

    /// Terminated and not going to run again.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, RunState::Terminated(_))
    }
}

/// Everything needed to start the process once; built afresh for every
/// start so ConfigMap and Secret changes reach a restarted container.
pub struct LaunchPlan {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<crate::volumes::Mount>,
    pub confinement: crate::confine::Confinement,
    /// The image's root the container runs in; `None`: the host's files.
    pub root: Option<crate::image_root::Root>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Main,
}

/// Kubernetes' restart rules; init containers run until they succeed.
pub fn should_restart(kind: Kind, restart_policy: &str, exit_code: i32) -> bool {
    match (kind, restart_policy) {
        (_, "Never") => false,
        (Kind::Init, _) => exit_code != 0,
        (Kind::Main, "OnFailure") => exit_code != 0,
        (Kind::Main, _) => true,
    }
}

/// Back-off before the n-th restart: 1 s doubling to 20 s (the kubelet uses
/// 10 s to 5 min; tests need crash loops to recover quickly).
pub fn backoff(consecutive_failures: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive_failures.min(5)).min(Duration::from_secs(20))
}

/// A container that ran this long without exiting resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The stop signal: `Some(grace)` once the pod is being deleted.
pub type StopSignal = watch::Receiver<Option<Duration>>;

/// What the supervisor needs from the pod around it.
pub trait PodHost: Send + Sync {
    fn launch_plan(
        &self,
        container: &Container,
    ) -> impl std::future::Future<Output = anyhow::Result<LaunchPlan>> + Send;
    fn spawn(&self, container: &Container, plan: &LaunchPlan) -> anyhow::Result<Child>;
    fn update(&self, kind: Kind, name: &str, change: &dyn Fn(&mut ContainerState));
    fn pod_ip(&self) -> &str;
}

/// Runs `container` until it finishes for good (per the restart rules) or the
/// pod stops. Returns the last exit code, `None` when stopped first.
pub async fn supervise<H: PodHost>(
    host: &H,
    kind: Kind,
    container: &Container,
    restart_policy: &str,
    mut stop: StopSignal,
) -> Option<i32> {
    let name = container.name.as_str();
    let mut failures = 0u32;
    loop {
        if stop.borrow().is_some() {
            return None;
        }
        let plan = match host.launch_plan(container).await {
            Ok(plan) => plan,
            Err(e) => {
                let message = format!("{e:#}");
                host.update(kind, name, &|s| {
                    s.state = RunState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: message.clone(),
                    }
                });
                if wait_or_stop(&mut stop, Duration::from_secs(2)).await {
                    return None;
                }
                continue;
            }
        };
        let started_at = Timestamp::now();
        let begun = Instant::now();
        let termination = match host.spawn(container, &plan) {
            Ok(child) => {
                host.update(kind, name, &|s| {
                    s.state = RunState::Running { started_at };
                    s.ready = container.readiness_probe.is_none() && kind == Kind::Main;
                    s.started = container.startup_probe.is_none();
                });
                match run_until_exit(host, kind, container, child, &plan, &mut stop).await {
                    Exit::Exited(code, signal) => Termination {
                        exit_code: code,
                        signal,
                        reason: if code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        },
                        message: String::new(),
                        started_at,
                        finished_at: Timestamp::now(),
                    },
                    Exit::Stopped(code, signal) => {
                        let t = Termination {
                            exit_code: code,
                            signal,
                            reason: "Completed".into(),
                            message: String::new(),
                            started_at,
                            finished_at: Timestamp::now(),
                        };
                        host.update(kind, name, &|s| {
                            s.ready = false;
                            s.state = RunState::Terminated(t.clone());
                        });
                        return None;
                    }
                }
            }
            Err(e) => Termination {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: format!("{e:#}"),
                started_at,
                finished_at: Timestamp::now(),
            },
        };
        let code = termination.exit_code;
        if begun.elapsed() >= STABLE_RUN {
            failures = 0;
        }
        if !should_restart(kind, restart_policy, code) {
            host.update(kind, name, &|s| {
                s.ready = false;
                s.state = RunState::Terminated(termination.clone());
            });
            return Some(code);
        }
        let delay = backoff(failures);
        failures += 1;
        host.update(kind, name, &|s| {
            s.ready = false;
            s.restart_count += 1;
            s.last_termination = Some(termination.clone());
            s.state = RunState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={name}",
                    delay.as_secs()
                ),
            };
        });
        if wait_or_stop(&mut stop, delay).await {
            return None;
        }
    }
}

enum Exit {
    /// The process ended by itself (or by a failed liveness probe).
    Exited(i32, Option<i32>),
    /// The pod is being deleted and the process was stopped.
    Stopped(i32, Option<i32>),
}

/// Probe bookkeeping for one probe kind.
struct ProbeRun<'a> {
    probe: &'a Probe,
    timing: probe::Timing,
    next: Instant,
    successes: u32,
    failures: u32,
}

impl<'a> ProbeRun<'a> {
    fn new(probe: Option<&'a Probe>, start: Instant) -> Option<Self> {
        let probe = probe?;
        let timing = probe::timing(probe);
        Some(Self {
            probe,
            timing,
            next: start + timing.initial_delay,
            successes: 0,
            failures: 0,
        })
    }

    /// Runs the probe when due; `Some(true)` when the success threshold is
    /// reached, `Some(false)` when the failure threshold is.
    async fn tick(
        &mut self,
        container: &Container,
        pod_ip: &str,
        env: &BTreeMap<String, String>,
    ) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + self.timing.period;
        if probe::run(self.probe, container, pod_ip, env).await.is_ok() {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.timing.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.timing.failure_threshold).then_some(false)
        }
    }
}

async fn run_until_exit<H: PodHost>(
    host: &H,
    kind: Kind,
    container: &Container,
    mut child: Child,
    plan: &LaunchPlan,
    stop: &mut StopSignal,
) -> Exit {
    let pid = child.id().unwrap_or(0);
    let start = Instant::now();
    let name = container.name.as_str();
    let main = kind == Kind::Main;
    let mut startup = if main {
        ProbeRun::new(container.startup_probe.as_ref(), start)
    } else {
        None
    };
    let mut readiness = if main {
        ProbeRun::new(container.readiness_probe.as_ref(), start)
    } else {
        None
    };
    let mut liveness = if main {
        ProbeRun::new(container.liveness_probe.as_ref(), start)
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            status = child.wait() => {
                let (code, signal) = exit_code(status);
                return Exit::Exited(code, signal);
            }
            _ = stop.changed() => {
                let grace = stop.borrow().unwrap_or_default();
                let (code, signal) = terminate(&mut child, pid, grace).await;
                return Exit::Stopped(code, signal);
            }
            _ = tick.tick() => {
                if let Some(run) = startup.as_mut() {
                    match run.tick(container, host.pod_ip(), &plan.env).await {
                        Some(true) => {
                            startup = None;
                            host.update(kind, name, &|s| s.started = true);
                        }
                        Some(false) => return liveness_kill(&mut child, pid, container).await,
                        None => {}
                    }
                    continue;
                }
                if let Some(run) = readiness.as_mut() {
                    if let Some(ready) = run.tick(container, host.pod_ip(), &plan.env).await {
                        host.update(kind, name, &|s| s.ready = ready);
                    }
                }
                if let Some(run) = liveness.as_mut() {
                    if run.tick(container, host.pod_ip(), &plan.env).await == Some(false) {
                        return liveness_kill(&mut child, pid, container).await;
                    }
                }
            }
        }
    }
}

async fn liveness_kill(child: &mut Child, pid: u32, container: &Container) -> Exit {
    tracing::info!(container = %container.name, "liveness probe failed; restarting the container");
    let (code, signal) = terminate(child, pid, Duration::from_secs(2)).await;
    Exit::Exited(code, signal)
}

/// SIGTERM to the process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> (i32, Option<i32>) {
    process::signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => exit_code(status),
        Err(_) => {
            process::signal_group(pid, Signal::SIGKILL);
            exit_code(child.wait().await)
        }
    }
}

/// Exit codes as a container runtime reports them: 128 + signal number.
fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (1, None),
        },
        Err(_) => (1, None),
    }
}

/// Sleeps `delay`; true when the pod began stopping meanwhile.
async fn wait_or_stop(stop: &mut StopSignal, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => stop.borrow().is_some(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rules_follow_kubernetes() {
        assert!(should_restart(Kind::Main, "Always", 0));
        assert!(!should_restart(Kind::Main, "OnFailure", 0));
        assert!(should_restart(Kind::Main, "OnFailure", 137));
        assert!(!should_restart(Kind::Main, "Never", 1));
        assert!(!should_restart(Kind::Init, "Always", 0));
        assert!(should_restart(Kind::Init, "Always", 1));
        assert!(!should_restart(Kind::Init, "Never", 1));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 20, 20, 20]);
    }

    #[test]
    fn kill_nine_reports_137() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_code(Ok(std::process::ExitStatus::from_raw(9))),
            (137, Some(9))
        );
        assert_eq!(
            exit_code(Ok(std::process::ExitStatus::from_raw(3 << 8))),
            (3, None)
        );
    }
}
