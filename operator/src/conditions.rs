//! Status conditions from what was observed. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use millrace_crds::worker_status::StoppedTask;

/// Why the app cannot run as specified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degradation {
    pub reason: &'static str,
    pub message: String,
}

/// The workers as the StatefulSet reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workers {
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    pub rolled_out: bool,
}

pub struct Observed<'a> {
    pub app_name: &'a str,
    pub generation: i64,
    pub desired: i32,
    pub workers: Option<&'a Workers>,
    pub degraded: Option<&'a Degradation>,
    /// Why `desired` is below what the spec asks, if it is.
    pub capped: Option<String>,
    /// With autoscaling on: why more workers would not help, if they would
    /// not (the `ScalingLimited` condition).
    pub scaling_limited: Option<Option<String>>,
}

/// Tasks stopped at a failing record: the app runs, but not all of it.
pub fn stopped_tasks(stopped: &[StoppedTask]) -> Option<Degradation> {
    let first = stopped.first()?;
    let more = match stopped.len() {
        1 => String::new(),
        n => format!(
            " (and {} more task(s); status.stoppedTasks lists them)",
            n - 1
        ),
    };
    Some(Degradation {
        reason: "TaskStopped",
        message: format!(
            "{first}{more}; the other tasks go on. To go on: fix the pipeline, switch spec.onError (or spec.pipeline.onError) to DeadLetter, or add the record to its skip list (docs/streamapp.md, \"A task stopped at a record\")"
        ),
    })
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    // The transition time moves only when the status does.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

pub fn conditions(previous: &[Condition], o: &Observed<'_>) -> Vec<Condition> {
    let g = o.generation;
    let none = Workers::default();
    let w = o.workers.unwrap_or(&none);
    let pods_hint = format!("kubectl get pods -l millrace.dev/app={}", o.app_name);

    let degraded = match o.degraded {
        Some(d) => condition(previous, "Degraded", true, d.reason, d.message.clone(), g),
        None => condition(
            previous,
            "Degraded",
            false,
            "AsExpected",
            "the spec is valid and its topics are usable".into(),
            g,
        ),
    };

    let degraded_idle = o.degraded.filter(|_| w.ready == 0);
    let ready = if let Some(d) = degraded_idle {
        condition(
            previous,
            "Ready",
            false,
            d.reason,
            format!("no workers run: {}", d.message),
            g,
        )
    } else if o.workers.is_none() {
        condition(
            previous,
            "Ready",
            false,
            "WorkersNotCreated",
            "the worker StatefulSet does not exist yet".into(),
            g,
        )
    } else if o.desired == 0 && w.replicas == 0 {
        condition(
            previous,
            "Ready",
            true,
            "ScaledToZero",
            "no workers are wanted".into(),
            g,
        )
    } else if w.ready >= o.desired && w.rolled_out {
        condition(
            previous,
            "Ready",
            true,
            "WorkersReady",
            format!("{}/{} workers ready", w.ready, o.desired),
            g,
        )
    } else {
        condition(
            previous,
            "Ready",
            false,
            "WorkersNotReady",
            format!("{}/{} workers ready; see `{pods_hint}`", w.ready, o.desired),
            g,
        )
    };

    let progressing = if o.workers.is_some() && !w.rolled_out {
        condition(
            previous,
            "Progressing",
            true,
            "RollingOut",
            format!("{}/{} workers run the current spec", w.updated, o.desired),
            g,
        )
    } else if o.workers.is_some() && w.replicas != o.desired {
        condition(
            previous,
            "Progressing",
            true,
            "Scaling",
            format!("scaling from {} to {} workers", w.replicas, o.desired),
            g,
        )
    } else {
        let message = o
            .capped
            .clone()
            .unwrap_or_else(|| "workers match the spec".into());
        condition(previous, "Progressing", false, "Stable", message, g)
    };
    let mut all = vec![ready, progressing, degraded];
    if let Some(limited) = &o.scaling_limited {
        all.push(match limited {
            Some(why) => condition(
                previous,
                "ScalingLimited",
                true,
                "MoreWorkersWouldNotHelp",
                why.clone(),
                g,
            ),
            None => condition(
                previous,
                "ScalingLimited",
                false,
                "AsExpected",
                "more workers would help if lag grew".into(),
                g,
            ),
        });
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_tasks_degrade_the_app_naming_the_first_record_and_how_to_go_on() {
        let stop = |task| StoppedTask {
            task,
            topic: "orders".into(),
            partition: task,
            offset: 41,
            step: "parse".into(),
            error: "no field amount".into(),
            since_ms: 0,
        };
        assert_eq!(stopped_tasks(&[]), None);
        let one = stopped_tasks(&[stop(3)]).unwrap();
        assert_eq!(one.reason, "TaskStopped");
        assert!(
            one.message.starts_with("task 3 stopped at record orders/3@41 in step 'parse': no field amount; the other tasks go on"),
            "{}",
            one.message
        );
        assert!(one.message.contains("skip list"), "{}", one.message);
        let two = stopped_tasks(&[stop(3), stop(5)]).unwrap();
        assert!(
            two.message.contains("(and 1 more task(s)"),
            "{}",
            two.message
        );
    }

    fn find<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    fn observed<'a>(
        desired: i32,
        workers: Option<&'a Workers>,
        degraded: Option<&'a Degradation>,
    ) -> Observed<'a> {
        Observed {
            app_name: "orders",
            generation: 3,
            desired,
            workers,
            degraded,
            capped: None,
            scaling_limited: None,
        }
    }

    #[test]
    fn ready_when_all_workers_ready_and_rolled_out() {
        let w = Workers {
            replicas: 2,
            ready: 2,
            updated: 2,
            rolled_out: true,
        };
        let cs = conditions(&[], &observed(2, Some(&w), None));
        assert_eq!(
            (
                find(&cs, "Ready").status.as_str(),
                find(&cs, "Ready").reason.as_str()
            ),
            ("True", "WorkersReady")
        );
        assert_eq!(find(&cs, "Progressing").status, "False");
        assert_eq!(find(&cs, "Degraded").status, "False");
        assert!(cs.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn not_ready_names_the_pods_to_look_at() {
        let w = Workers {
            replicas: 2,
            ready: 0,
            updated: 2,
            rolled_out: true,
        };
        let cs = conditions(&[], &observed(2, Some(&w), None));
        let ready = find(&cs, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WorkersNotReady")
        );
        assert!(
            ready.message.contains("0/2") && ready.message.contains("millrace.dev/app=orders"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn degraded_without_workers_is_not_ready_with_the_same_reason() {
        let d = Degradation {
            reason: "TopicMissing",
            message: "topic 'orders' does not exist".into(),
        };
        let cs = conditions(&[], &observed(1, None, Some(&d)));
        assert_eq!(find(&cs, "Degraded").reason, "TopicMissing");
        assert_eq!(
            (
                find(&cs, "Ready").status.as_str(),
                find(&cs, "Ready").reason.as_str()
            ),
            ("False", "TopicMissing")
        );
    }

    #[test]
    fn scaling_and_rollout_are_progressing() {
        let w = Workers {
            replicas: 1,
            ready: 1,
            updated: 1,
            rolled_out: true,
        };
        assert_eq!(
            find(
                &conditions(&[], &observed(3, Some(&w), None)),
                "Progressing"
            )
            .reason,
            "Scaling"
        );
        let w = Workers {
            replicas: 3,
            ready: 3,
            updated: 1,
            rolled_out: false,
        };
        assert_eq!(
            find(
                &conditions(&[], &observed(3, Some(&w), None)),
                "Progressing"
            )
            .reason,
            "RollingOut"
        );
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let w = Workers {
            replicas: 1,
            ready: 1,
            updated: 1,
            rolled_out: true,
        };
        let first = conditions(&[], &observed(1, Some(&w), None));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = conditions(&first, &observed(1, Some(&w), None));
        assert_eq!(first, second);
    }
}

#[cfg(test)]
mod scaling_limited_tests {
    use super::*;

    #[test]
    fn the_condition_appears_only_with_autoscaling_and_carries_the_reason() {
        let w = Workers {
            replicas: 2,
            ready: 2,
            updated: 2,
            rolled_out: true,
        };
        let mut o = Observed {
            app_name: "a",
            generation: 1,
            desired: 2,
            workers: Some(&w),
            degraded: None,
            capped: None,
            scaling_limited: None,
        };
        assert!(!conditions(&[], &o)
            .iter()
            .any(|c| c.type_ == "ScalingLimited"));
        o.scaling_limited = Some(Some("partition 3 is stuck".into()));
        let cs = conditions(&[], &o);
        let c = cs.iter().find(|c| c.type_ == "ScalingLimited").unwrap();
        assert_eq!(
            (c.status.as_str(), c.message.as_str()),
            ("True", "partition 3 is stuck")
        );
    }
}
