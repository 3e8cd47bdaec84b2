//! Pod status from container states: phase, conditions, container statuses.
//! Pure, so the phase rules are unit-tested.

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::container::{ContainerState, RunState, Termination};

pub struct Observed<'a> {
    pub init: &'a [ContainerState],
    pub main: &'a [ContainerState],
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub start_time: Timestamp,
}

pub fn phase(o: &Observed<'_>) -> &'static str {
    let init_done = o
        .init
        .iter()
        .all(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0));
    let init_failed = o
        .init
        .iter()
        .any(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code != 0));
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    if !o.main.is_empty() && o.main.iter().all(ContainerState::is_finished) {
        let all_ok = o
            .main
            .iter()
            .all(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    let ever_ran = o
        .main
        .iter()
        .any(|c| !matches!(c.state, RunState::Waiting { .. }) || c.restart_count > 0);
    if ever_ran {
        "Running"
    } else {
        "Pending"
    }
}

pub fn pod_status(previous: &Pod, o: &Observed<'_>) -> PodStatus {
    let previous_conditions = previous
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let initialized = o
        .init
        .iter()
        .all(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0));
    let ready = !o.main.is_empty() && o.main.iter().all(|c| c.ready);
    let condition = |type_: &str, value: bool| {
        let status = if value { "True" } else { "False" };
        // Keep the transition time while the value is unchanged, so the
        // status is stable and re-patching is not needed.
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(Timestamp::now()));
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(since),
            ..Default::default()
        }
    };
    let mut conditions = vec![
        condition("PodReadyToStartContainers", true),
        condition("Initialized", initialized),
        condition("ContainersReady", ready),
        condition("Ready", ready),
    ];
    conditions.extend(
        previous_conditions
            .iter()
            .filter(|c| c.type_ == "PodScheduled")
            .cloned(),
    );
    PodStatus {
        phase: Some(phase(o).into()),
        conditions: Some(conditions),
        host_ip: Some(o.host_ip.into()),
        pod_ip: Some(o.pod_ip.into()),
        pod_ips: Some(vec![PodIP {
            ip: o.pod_ip.into(),
        }]),
        start_time: Some(Time(o.start_time)),
        init_container_statuses: (!o.init.is_empty())
            .then(|| o.init.iter().map(container_status).collect()),
        container_statuses: Some(o.main.iter().map(container_status).collect()),
        qos_class: previous.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: Some(t.message.clone()).filter(|m| !m.is_empty()),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        ..Default::default()
    }
}

fn container_status(c: &ContainerState) -> ContainerStatus {
    let state = match &c.state {
        RunState::Waiting { reason, message } => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => K8sState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(t) => K8sState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("millrace-local://{}", crate::images::image_name(&c.image)),
        container_id: matches!(c.state, RunState::Running { .. })
            .then(|| format!("millrace://{}/{}", c.name, c.restart_count)),
        ready: c.ready,
        started: Some(matches!(c.state, RunState::Running { .. }) && c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_termination.as_ref().map(|t| K8sState {
            terminated: Some(terminated(t)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(run: RunState, ready: bool, restarts: i32) -> ContainerState {
        ContainerState {
            name: "c".into(),
            image: "img".into(),
            restart_count: restarts,
            state: run,
            last_termination: None,
            ready,
            started: true,
        }
    }

    fn done(code: i32) -> RunState {
        let now = Timestamp::now();
        RunState::Terminated(Termination {
            exit_code: code,
            signal: None,
            reason: String::new(),
            message: String::new(),
            started_at: now,
            finished_at: now,
        })
    }

    fn observed<'a>(init: &'a [ContainerState], main: &'a [ContainerState]) -> Observed<'a> {
        Observed {
            init,
            main,
            pod_ip: "127.1.0.2",
            host_ip: "127.0.0.1",
            start_time: Timestamp::now(),
        }
    }

    #[test]
    fn phases() {
        let waiting = RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        };
        let running = RunState::Running {
            started_at: Timestamp::now(),
        };
        assert_eq!(
            phase(&observed(&[], &[state(waiting.clone(), false, 0)])),
            "Pending"
        );
        assert_eq!(
            phase(&observed(
                &[state(running.clone(), false, 0)],
                &[state(waiting.clone(), false, 0)]
            )),
            "Pending"
        );
        assert_eq!(
            phase(&observed(
                &[state(done(1), false, 0)],
                &[state(waiting.clone(), false, 0)]
            )),
            "Failed"
        );
        assert_eq!(
            phase(&observed(
                &[state(done(0), false, 0)],
                &[state(running, true, 0)]
            )),
            "Running"
        );
        // Crash-looping is still Running, as in Kubernetes.
        assert_eq!(
            phase(&observed(&[], &[state(waiting, false, 3)])),
            "Running"
        );
        assert_eq!(
            phase(&observed(&[], &[state(done(0), false, 0)])),
            "Succeeded"
        );
        assert_eq!(
            phase(&observed(
                &[],
                &[state(done(0), false, 0), state(done(2), false, 0)]
            )),
            "Failed"
        );
    }

    #[test]
    fn ready_needs_every_container_and_transition_time_is_kept() {
        let running = RunState::Running {
            started_at: Timestamp::now(),
        };
        let main = [state(running.clone(), true, 0), state(running, false, 0)];
        let status = pod_status(&Pod::default(), &observed(&[], &main));
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        let previous = Pod {
            status: Some(status.clone()),
            ..Default::default()
        };
        let again = pod_status(&previous, &observed(&[], &main));
        assert_eq!(again.conditions, status.conditions);
    }
}
