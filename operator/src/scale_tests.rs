use std::time::Duration;

use millrace_crds::placement::{Assignment, PlacementDoc};
use millrace_crds::StreamApp;

use super::*;
use crate::autoscale::policy::Policy;
use crate::model::{self, Defaults};

fn fixed(spec_replicas: i32, tasks: Option<i32>) -> Inputs {
    Inputs {
        spec_replicas,
        tasks,
        ..Default::default()
    }
}

fn autoscaled(min: i32, max: Option<i32>, decided: Option<i32>, tasks: i32) -> Inputs {
    Inputs {
        spec_replicas: 1,
        bounds: Some(Bounds { min, max }),
        decided,
        tasks: Some(tasks),
        highest_holding: None,
    }
}

/// `desired` workers of 8 tasks while the highest pod holding a task is
/// `holding`.
fn draining(desired: i32, holding: Option<i32>) -> Replicas {
    replicas(&Inputs {
        spec_replicas: desired,
        tasks: Some(8),
        highest_holding: holding,
        ..Default::default()
    })
}

#[test]
fn replicas_are_capped_at_the_task_count() {
    assert_eq!(replicas(&fixed(3, Some(8))).desired, 3);
    assert_eq!(replicas(&fixed(3, Some(8))).capped, None);
    let r = replicas(&fixed(10, Some(4)));
    assert_eq!(r.desired, 4);
    assert_eq!(r.running, 4);
    assert!(r.capped.unwrap().contains("capped at the 4 task(s)"));
    let r = replicas(&fixed(4, Some(4)));
    assert_eq!((r.desired, r.capped), (4, None), "no off-by-one at the cap");
    let r = replicas(&fixed(2, None));
    assert_eq!((r.desired, r.capped), (2, None), "unknown tasks: no cap");
}

#[test]
fn autoscaling_bounds_apply() {
    assert_eq!(
        replicas(&autoscaled(2, Some(5), None, 8)).desired,
        2,
        "before a decision: the spec's count within the bounds"
    );
    assert_eq!(replicas(&autoscaled(2, Some(5), Some(4), 8)).desired, 4);
    assert_eq!(replicas(&autoscaled(2, Some(5), Some(9), 8)).desired, 5);
    assert_eq!(
        replicas(&autoscaled(0, None, Some(0), 8)).desired,
        0,
        "scaled to zero"
    );
    let r = replicas(&autoscaled(1, None, Some(6), 3));
    assert_eq!(r.desired, 3, "never above the task count: {:?}", r.capped);
    assert_eq!(
        replicas(&autoscaled(6, Some(4), None, 8)).desired,
        4,
        "a minimum above the maximum gives way to it"
    );
}

#[test]
fn only_lag_mode_applies_the_autoscalers_decision() {
    let settings = |mode| model::Autoscaling {
        policy: Policy {
            mode,
            min_replicas: 2,
            max_replicas: Some(5),
            ..Default::default()
        },
        poll_interval: Duration::from_secs(10),
    };
    assert_eq!(
        Bounds::acting(Some(&settings(Mode::Lag))),
        Some(Bounds {
            min: 2,
            max: Some(5)
        })
    );
    assert_eq!(
        Bounds::acting(Some(&settings(Mode::DryRun))),
        None,
        "DryRun acts on nothing"
    );
    assert_eq!(Bounds::acting(None), None);
    let dry_run = Inputs {
        spec_replicas: 1,
        bounds: Bounds::acting(Some(&settings(Mode::DryRun))),
        decided: Some(4),
        tasks: Some(8),
        highest_holding: None,
    };
    assert_eq!(replicas(&dry_run).desired, 1);
}

#[test]
fn alignment_drops_pods_that_do_not_lower_the_busiest_pod() {
    assert_eq!(align(16, 5), 4, "5 pods still leave one with 4 tasks");
    assert_eq!(align(16, 7), 6);
    assert_eq!(align(16, 9), 8);
    assert_eq!(align(16, 16), 16);
    assert_eq!(align(12, 5), 4);
    assert_eq!(align(3, 2), 2);
    assert_eq!(align(16, 0), 0);
}

#[test]
fn the_drain_floor_holds_leaving_pods_until_their_tasks_have_moved() {
    // 4 → 2: pods 2 and 3 leave; each poll of the placement moves tasks off.
    let steps = [(Some(3), 4), (Some(2), 3), (Some(1), 2), (None, 2)];
    for (holding, running) in steps {
        let r = draining(2, holding);
        assert_eq!(r.desired, 2);
        assert_eq!(r.running, running, "highest holding {holding:?}");
    }
    let held = draining(2, Some(3));
    assert_eq!(
        held.scaled_note(4),
        None,
        "no Scaled event while the StatefulSet is held"
    );
    assert_eq!(
        held.scaled_note(5).unwrap(),
        "workers 5 → 4 (→ 2 once the leaving workers' tasks have moved)"
    );
    assert_eq!(
        draining(2, Some(1)).scaled_note(4).unwrap(),
        "workers 4 → 2",
        "released"
    );
}

#[test]
fn scaling_up_is_not_held_and_scaling_to_zero_does_not_wait() {
    assert_eq!(draining(4, Some(1)).running, 4);
    let zero = draining(0, Some(3));
    assert_eq!(
        (zero.desired, zero.running),
        (0, 0),
        "no worker left to take the tasks: nothing to wait for"
    );
    assert_eq!(drain_floor(0, Some(3)), 0);
    assert_eq!(drain_floor(2, None), 0);
}

#[test]
fn pods_at_or_past_the_desired_count_leave() {
    assert!(stays("orders", "orders-0", Some(2)));
    assert!(stays("orders", "orders-1", Some(2)));
    assert!(!stays("orders", "orders-2", Some(2)));
    assert!(!stays("orders", "orders-0", Some(0)), "scaled to zero");
    assert!(
        stays("orders", "orders-eu-3", Some(1)),
        "not one of this app's ordinals"
    );
    assert!(
        stays("orders", "orders-7", None),
        "desired count unknown: nobody leaves"
    );
}

#[test]
fn inputs_come_from_the_model_and_the_placement_document() {
    let app: StreamApp = serde_json::from_value(serde_json::json!({
        "apiVersion": "millrace.dev/v1alpha1", "kind": "StreamApp",
        "metadata": {"name": "a", "namespace": "n"},
        "spec": {"kafka": {"bootstrapServers": "k:9092"}, "image": "x", "source": {"topics": ["in"]}, "replicas": 3}
    }))
    .unwrap();
    let model = model::validate(&app, &Defaults::default()).unwrap();
    let mut doc = PlacementDoc::default();
    doc.workers.insert(
        "a-4".into(),
        Assignment {
            active: [1].into(),
            ..Default::default()
        },
    );
    let inputs = Inputs::new(&model, Some(7), Some(8), Some(&doc));
    assert_eq!(
        inputs,
        Inputs {
            spec_replicas: 3,
            bounds: None,
            decided: Some(7),
            tasks: Some(8),
            highest_holding: Some(4),
        }
    );
    let r = replicas(&inputs);
    assert_eq!((r.desired, r.running), (3, 5));
    assert_eq!(Inputs::new(&model, None, None, None).highest_holding, None);
}
