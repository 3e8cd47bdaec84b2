//! The replica decision (issue #15): how many workers an app wants, how
//! many run while tasks leave, and which pods keep their tasks. Pure: the
//! reconcile and the placement driver read the cluster and feed it plain
//! values, so each rule exists once and is tested here.
//!
//! The autoscaler's own recommendation (`autoscale::policy::decide`) is an
//! input: another loop writes it to `status.autoscaling.decided`, already
//! capped and aligned ([`align`], which lives here with the other rules);
//! this module bounds and applies it. `spec.replicas` is applied as
//! written, capped at the task count but not aligned.

use millrace_crds::placement::PlacementDoc;

use crate::autoscale::policy::Mode;
use crate::model::{AppModel, Autoscaling};
use crate::placement::{holding_ordinals, ordinal};

/// `spec.autoscaling`'s replica bounds, when the autoscaler acts (`Lag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: i32,
    /// `None`: no bound but the task count.
    pub max: Option<i32>,
}

impl Bounds {
    /// `None` unless the autoscaler's decisions are applied: `DryRun`
    /// reports and acts on nothing.
    pub fn acting(autoscaling: Option<&Autoscaling>) -> Option<Bounds> {
        let a = autoscaling.filter(|a| a.policy.mode == Mode::Lag)?;
        Some(Bounds {
            min: a.policy.min_replicas,
            max: a.policy.max_replicas,
        })
    }
}

/// Everything the decision depends on, read by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inputs {
    /// `spec.replicas`.
    pub spec_replicas: i32,
    pub bounds: Option<Bounds>,
    /// The autoscaler's last decision (`status.autoscaling.decided`).
    pub decided: Option<i32>,
    /// Tasks of the source topics, when Kafka told.
    pub tasks: Option<i32>,
    /// The highest pod ordinal that still holds a task or owes a handoff
    /// in the placement document.
    pub highest_holding: Option<i32>,
}

impl Inputs {
    pub fn new(
        model: &AppModel,
        decided: Option<i32>,
        tasks: Option<i32>,
        placement: Option<&PlacementDoc>,
    ) -> Self {
        Self {
            spec_replicas: model.replicas,
            bounds: Bounds::acting(model.autoscaling.as_ref()),
            decided,
            tasks,
            highest_holding: placement.and_then(|doc| holding_ordinals(doc, &model.name)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas {
    /// Workers wanted (`status.desiredReplicas`): pods from this ordinal
    /// up are leaving.
    pub desired: i32,
    /// Workers the StatefulSet runs now: `desired`, or more while leaving
    /// pods still hold tasks.
    pub running: i32,
    /// Why `desired` is below what was asked for.
    pub capped: Option<String>,
}

/// The replica count to apply.
pub fn replicas(inputs: &Inputs) -> Replicas {
    let (desired, capped) = cap_at_tasks(wanted(inputs), inputs.tasks);
    Replicas {
        desired,
        running: desired.max(drain_floor(desired, inputs.highest_holding)),
        capped,
    }
}

/// The spec's count, or under `Lag` autoscaling the autoscaler's last
/// decision (the spec's count before the first one), within the bounds.
fn wanted(inputs: &Inputs) -> i32 {
    match inputs.bounds {
        Some(b) => {
            let max = b.max.unwrap_or(i32::MAX);
            inputs
                .decided
                .unwrap_or(inputs.spec_replicas)
                .clamp(b.min.min(max), max)
        }
        None => inputs.spec_replicas,
    }
}

/// Never more workers than tasks: an extra worker would own nothing.
fn cap_at_tasks(wanted: i32, tasks: Option<i32>) -> (i32, Option<String>) {
    match tasks {
        Some(t) if wanted > t => (
            t,
            Some(format!(
                "{wanted} workers requested, capped at the {t} task(s) of the source topics"
            )),
        ),
        _ => (wanted, None),
    }
}

/// Workers that must stay while tasks leave them: one past the highest
/// ordinal that still holds a task, so a scale-down hands tasks over
/// (the placement driver moves them off first) instead of fencing. 0 when
/// there is nowhere for tasks to go (scaling to zero).
pub fn drain_floor(desired: i32, highest_holding: Option<i32>) -> i32 {
    if desired == 0 {
        return 0;
    }
    highest_holding.map_or(0, |o| o + 1)
}

/// Whether `pod` keeps (and may get) tasks: pods at or past the desired
/// count are leaving. Unknown desired counts and pods without an ordinal
/// stay.
pub fn stays(app: &str, pod: &str, desired: Option<i32>) -> bool {
    match (ordinal(app, pod), desired) {
        (Some(o), Some(d)) => o < d,
        _ => true,
    }
}

impl Replicas {
    /// The `Scaled` event's note when the StatefulSet, now at `current`,
    /// changes: once per change, and saying when it stays above the
    /// desired count for the leaving pods' handoffs.
    pub fn scaled_note(&self, current: i32) -> Option<String> {
        let (running, desired) = (self.running, self.desired);
        if current == running {
            return None;
        }
        Some(if running == desired {
            format!("workers {current} → {running}")
        } else {
            format!(
                "workers {current} → {running} (→ {desired} once the leaving workers' tasks have moved)"
            )
        })
    }
}

/// Fewest replicas with the same busiest-pod task count as `r`: a pod that
/// does not lower it adds nothing.
pub fn align(tasks: i32, r: i32) -> i32 {
    if r <= 0 || tasks <= 0 {
        return r.max(0);
    }
    let per_pod = (tasks + r - 1) / r;
    (tasks + per_pod - 1) / per_pod
}

#[cfg(test)]
#[path = "scale_tests.rs"]
mod tests;
