use super::*;

fn sample(now_s: f64, tasks: i32, current: i32, lag: i64, input: f64, processed: f64) -> Sample {
    let n = tasks.max(1) as usize;
    Sample {
        now_s,
        tasks,
        current,
        lag: vec![lag / n as i64; n],
        input_rate: vec![input / n as f64; n],
        processing_rate: vec![processed / n as f64; n],
        busy: None,
    }
}

fn learned(capacity: f64) -> Memory {
    Memory {
        capacity: Some(capacity),
        ..Default::default()
    }
}

#[test]
fn a_backlog_scales_up_at_once_to_drain_within_the_target() {
    let p = Policy::default();
    let mut m = learned(500.0);
    // 1000/s in, 60,000 behind: 1000 + 60000/60 = 2000/s, 125/s per task:
    // a 500/s worker carries 4 tasks, so 4 workers.
    let d = decide(&p, &sample(0.0, 16, 1, 60_000, 1000.0, 500.0), &mut m);
    assert_eq!(d.desired, 4, "{}", d.reason);
    assert!(d.reason.contains("need 2000/s"), "{}", d.reason);
}

#[test]
fn the_step_limit_and_the_task_cap_hold() {
    let p = Policy {
        up_max_step: Some(2),
        ..Default::default()
    };
    let mut m = learned(100.0);
    let d = decide(&p, &sample(0.0, 16, 1, 600_000, 1000.0, 100.0), &mut m);
    assert_eq!(d.desired, 3, "at most 2 more at a time");
    let mut m = learned(100.0);
    let p = Policy {
        max_replicas: Some(50),
        up_max_step: Some(100),
        ..Default::default()
    };
    let d = decide(&p, &sample(0.0, 4, 1, 600_000, 1000.0, 100.0), &mut m);
    assert_eq!(
        d.desired, 4,
        "never more workers than tasks, even when maxReplicas is higher"
    );
}

#[test]
fn scale_down_waits_for_its_window_then_steps() {
    let p = Policy {
        down_window_s: 300.0,
        down_max_step: Some(1),
        cooldown_s: 0.0,
        ..Default::default()
    };
    let mut m = learned(500.0);
    // Busy: 4 replicas are right.
    decide(&p, &sample(0.0, 16, 4, 60_000, 1000.0, 2000.0), &mut m);
    // Quiet from t=10: the recommendation drops but the window holds.
    for t in (10..300).step_by(10) {
        let d = decide(&p, &sample(t as f64, 16, 4, 0, 400.0, 400.0), &mut m);
        assert_eq!(d.desired, 4, "t={t}: {}", d.reason);
    }
    let d = decide(&p, &sample(310.0, 16, 4, 0, 400.0, 400.0), &mut m);
    assert_eq!(d.desired, 3, "one step down once the window has passed");
}

#[test]
fn the_cooldown_holds_reversals_but_not_a_second_scale_up() {
    let p = Policy {
        cooldown_s: 30.0,
        down_window_s: 0.0,
        ..Default::default()
    };
    let mut m = learned(500.0);
    assert_eq!(
        decide(&p, &sample(0.0, 16, 1, 60_000, 1000.0, 500.0), &mut m).desired,
        4
    );
    let d = decide(&p, &sample(10.0, 16, 4, 200_000, 3000.0, 2000.0), &mut m);
    assert!(
        d.desired > 4,
        "a backlog still growing is not flapping: {}",
        d.reason
    );
    let up = d.desired;
    let d = decide(&p, &sample(20.0, 16, up, 0, 100.0, 100.0), &mut m);
    assert_eq!(d.desired, up, "{}", d.reason);
    assert!(d.reason.contains("cooling down"));
    let d = decide(&p, &sample(50.0, 16, up, 0, 100.0, 100.0), &mut m);
    assert!(d.desired < up, "after the cooldown: {}", d.reason);
}

#[test]
fn min_equal_max_pins_the_count() {
    let p = Policy {
        min_replicas: 3,
        max_replicas: Some(3),
        ..Default::default()
    };
    let mut m = learned(100.0);
    assert_eq!(
        decide(&p, &sample(0.0, 16, 3, 900_000, 5000.0, 300.0), &mut m).desired,
        3
    );
    let mut m = learned(100.0);
    assert_eq!(
        decide(&p, &sample(0.0, 16, 3, 0, 0.0, 0.0), &mut m).desired,
        3
    );
}

#[test]
fn min_zero_goes_to_zero_when_idle_and_wakes_on_activation_lag() {
    let p = Policy {
        min_replicas: 0,
        activation_lag: 10,
        down_window_s: 60.0,
        cooldown_s: 0.0,
        ..Default::default()
    };
    let mut m = learned(500.0);
    let mut current = 1;
    for t in (0..=70).step_by(10) {
        current = decide(&p, &sample(t as f64, 16, current, 0, 0.0, 0.0), &mut m).desired;
    }
    assert_eq!(current, 0, "idle past the window: zero");
    let d = decide(&p, &sample(80.0, 16, 0, 5, 0.1, 0.0), &mut m);
    assert_eq!(d.desired, 0, "below the activation lag: {}", d.reason);
    let d = decide(&p, &sample(90.0, 16, 0, 16, 1.0, 0.0), &mut m);
    assert_eq!(d.desired, 1, "woken: {}", d.reason);
}

#[test]
fn zero_lag_means_no_scaling_even_while_markers_move_the_high_watermark() {
    // Transaction markers move the high watermark, not the last stable
    // offset: the sample's lag is 0, so nothing happens.
    let p = Policy::default();
    let mut m = learned(500.0);
    let d = decide(&p, &sample(0.0, 16, 2, 0, 0.0, 0.0), &mut m);
    assert_eq!(
        d.desired, 1,
        "idle: down to the minimum, with nothing higher in the window"
    );
}

#[test]
fn more_tasks_raise_the_cap() {
    let p = Policy {
        up_max_step: Some(16),
        ..Default::default()
    };
    let mut m = learned(100.0);
    assert_eq!(
        decide(&p, &sample(0.0, 4, 1, 100_000, 1000.0, 100.0), &mut m).desired,
        4
    );
    let mut m = learned(100.0);
    assert_eq!(
        decide(&p, &sample(0.0, 8, 4, 100_000, 1000.0, 400.0), &mut m).desired,
        8,
        "partitions were added: the cap follows"
    );
}

#[test]
fn capacity_is_learned_only_under_backlog_and_probes_until_then() {
    let p = Policy::default();
    let mut m = Memory::default();
    let d = decide(&p, &sample(0.0, 16, 2, 0, 300.0, 300.0), &mut m);
    assert_eq!(m.capacity, None, "keeping up says nothing of capacity");
    assert_eq!(
        d.desired, 2,
        "without a capacity there is no basis to scale down"
    );
    let mut m = Memory::default();
    let d = decide(&p, &sample(0.0, 16, 2, 50_000, 1000.0, 800.0), &mut m);
    assert_eq!(m.capacity, Some(400.0));
    assert_eq!(
        d.desired, 6,
        "1000 + 50000/60 = 1833/s, 115/s per task: a 400/s worker carries 3 tasks, so 6 workers"
    );
}

#[test]
fn a_stuck_partition_is_reported_not_scaled_for() {
    let p = Policy::default();
    let mut m = learned(500.0);
    let mut s = sample(0.0, 4, 2, 0, 400.0, 400.0);
    s.lag = vec![90_000, 0, 0, 0];
    s.processing_rate = vec![0.0, 100.0, 100.0, 100.0];
    let d = decide(&p, &s, &mut m);
    assert_eq!(
        d.limited, None,
        "not yet: stuck for less than the reaction time"
    );
    s.now_s = p.reaction_s;
    let d = decide(&p, &s, &mut m);
    assert_eq!(d.desired, 2);
    assert!(d.limited.unwrap().contains("stuck consumer"));
}

#[test]
fn a_hot_partition_with_its_own_worker_is_reported() {
    let p = Policy::default();
    let mut m = learned(500.0);
    let mut s = sample(0.0, 4, 4, 0, 0.0, 0.0);
    s.lag = vec![90_000, 0, 0, 0];
    s.input_rate = vec![2000.0, 10.0, 10.0, 10.0];
    s.processing_rate = vec![500.0, 10.0, 10.0, 10.0];
    let d = decide(&p, &s, &mut m);
    assert!(d.desired <= 4, "never up for it");
    assert!(d.limited.unwrap().contains("partition 0 receives 2000/s"));
}

#[test]
fn an_ineffective_scale_up_is_detected_and_held() {
    let p = Policy {
        cooldown_s: 30.0,
        ..Default::default()
    };
    let mut m = learned(500.0);
    assert_eq!(
        decide(&p, &sample(0.0, 16, 1, 60_000, 1000.0, 500.0), &mut m).desired,
        4
    );
    // 4 workers later, processing has not moved (a shared bottleneck).
    let d = decide(&p, &sample(40.0, 16, 4, 90_000, 1000.0, 520.0), &mut m);
    assert_eq!(d.desired, 4);
    assert!(d.limited.unwrap().contains("ineffective"), "{}", d.reason);
    let d = decide(&p, &sample(80.0, 16, 4, 120_000, 1000.0, 520.0), &mut m);
    assert_eq!(d.desired, 4, "held");
}

#[test]
fn busy_time_teaches_capacity_without_a_backlog() {
    let p = Policy::default();
    let mut m = Memory::default();
    let mut s = sample(0.0, 16, 4, 0, 400.0, 400.0);
    s.busy = Some(0.2);
    let d = decide(&p, &s, &mut m);
    assert_eq!(
        m.capacity,
        Some(500.0),
        "400/s at 20 % busy over 4 replicas"
    );
    assert_eq!(d.desired, 1, "one replica absorbs 400/s");
}

#[test]
fn the_busiest_worker_decides_not_the_sum() {
    // 2400/s over 16 equal tasks at 500/s per worker: 5 workers sum to
    // 2500/s, but one carries 4 tasks (600/s). 6 workers carry 3 at most.
    let p = Policy::default();
    let mut m = learned(500.0);
    let d = decide(&p, &sample(0.0, 16, 6, 0, 2400.0, 2400.0), &mut m);
    assert_eq!(d.desired, 6, "{}", d.reason);
}

#[test]
fn a_small_shortfall_is_carried_in_the_backlog_budget() {
    let p = Policy::default();
    // Budget: half of 60 s of one 500/s worker = 15,000 records; reaction
    // 20 s. Two workers process 1000/s against 1100/s in: 100/s short.
    let d = decide(
        &p,
        &sample(0.0, 16, 2, 0, 1100.0, 1000.0),
        &mut learned(500.0),
    );
    assert_eq!(d.desired, 2, "2,000 more in 20 s fits: {}", d.reason);
    let d = decide(
        &p,
        &sample(0.0, 16, 2, 14_000, 1100.0, 1000.0),
        &mut learned(500.0),
    );
    assert_eq!(
        d.desired, 3,
        "14,000 + 2,000 would not fit; 3 workers keep up: {}",
        d.reason
    );
    // Over the budget: drain within the target, as without one.
    // 1100 + 40000/60 = 1767/s, 110/s per task: 4 tasks per worker.
    let d = decide(
        &p,
        &sample(0.0, 16, 2, 40_000, 1100.0, 1000.0),
        &mut learned(500.0),
    );
    assert_eq!(d.desired, 4, "{}", d.reason);
}

#[test]
fn scale_down_returns_to_a_count_that_just_keeps_up_and_noise_does_not_flap() {
    let p = Policy {
        cooldown_s: 0.0,
        down_window_s: 0.0,
        ..Default::default()
    };
    let mut m = learned(500.0);
    // 990/s in: two workers (1000/s) just keep up.
    let d = decide(&p, &sample(0.0, 16, 3, 0, 990.0, 990.0), &mut m);
    assert_eq!(d.desired, 2, "{}", d.reason);
    // Input wobbles above what two process: the backlog absorbs it.
    for (t, input, lag) in [
        (10.0, 1050.0, 500),
        (20.0, 1080.0, 1300),
        (30.0, 960.0, 900),
    ] {
        let d = decide(&p, &sample(t, 16, 2, lag, input, 1000.0), &mut m);
        assert_eq!(d.desired, 2, "t={t}: {}", d.reason);
    }
}

/// 16 tasks at 40/s each; task 3 has `lag` behind it and commits `rate`.
fn one_heavy(now_s: f64, current: i32, lag: i64, rate: f64) -> Sample {
    let mut s = sample(now_s, 16, current, 0, 640.0, 600.0);
    s.lag[3] = lag;
    s.processing_rate[3] = rate;
    s
}

#[test]
fn a_heavy_task_gets_a_worker_of_its_own_and_the_others_are_sized_apart() {
    let p = Policy::default();
    let mut m = learned(500.0);
    // Task 3 needs 40 + 48000/60 = 840/s: heavy. The other 15 need 600/s:
    // two workers. The app's backlog is over budget, so they may not fall
    // behind: 1 + 2 = 3.
    let d = decide(&p, &one_heavy(0.0, 2, 48_000, 300.0), &mut m);
    assert_eq!(d.isolated, [3]);
    assert_eq!(d.desired, 3, "{}", d.reason);
    assert!(
        d.reason.contains("tasks [3] each on a worker"),
        "{}",
        d.reason
    );
    // Still heavy at a third of a worker (under half: it would not enter).
    let d = decide(&p, &one_heavy(10.0, 3, 6_600, 480.0), &mut m);
    assert_eq!(d.isolated, [3], "{}", d.reason);
    // Under a quarter: released.
    let d = decide(&p, &one_heavy(20.0, 3, 3_000, 480.0), &mut m);
    assert!(d.isolated.is_empty(), "{}", d.reason);
    // One worker holding a heavy task: the others still need one of their
    // own, however little they need.
    let mut idle_rest = one_heavy(0.0, 1, 48_000, 300.0);
    idle_rest.input_rate = vec![0.0; 16];
    let d = decide(&p, &idle_rest, &mut learned(500.0));
    assert_eq!(d.isolated, [3]);
    assert!(d.desired >= 2, "{}", d.reason);
}

#[test]
fn a_stuck_task_or_a_uniformly_busy_app_isolates_nothing() {
    let p = Policy::default();
    let d = decide(&p, &one_heavy(0.0, 2, 48_000, 0.0), &mut learned(500.0));
    assert!(d.isolated.is_empty(), "a stuck task needs no worker");
    // Every task needs 300/s of a 500/s worker: balancing by count is right.
    let d = decide(
        &p,
        &sample(0.0, 16, 8, 0, 4800.0, 4000.0),
        &mut learned(500.0),
    );
    assert!(d.isolated.is_empty(), "{:?}", d.isolated);
    let d = decide(&p, &one_heavy(0.0, 0, 48_000, 0.0), &mut learned(500.0));
    assert!(d.isolated.is_empty(), "nothing to isolate at zero workers");
}

#[test]
fn tasks_just_placed_are_not_stuck_and_a_spread_backlog_is_not_heavy() {
    let p = Policy::default();
    let mut m = learned(100.0);
    m.last_change_s = Some(0.0);
    // 5 s after a scale-up, seven of eight tasks have not committed yet.
    let mut s = sample(5.0, 8, 2, 6_000, 0.0, 150.0);
    s.processing_rate = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 150.0];
    let d = decide(&p, &s, &mut m);
    assert_eq!(d.limited, None, "a pause after a change: {}", d.reason);
    // 750 behind each task needs 37.5/s over 20 s, over half of a 70/s
    // worker, but every task does: counted whether moving or not, none is
    // isolated.
    let p20 = Policy {
        target_drain_s: 20.0,
        ..Default::default()
    };
    let d = decide(&p20, &s, &mut learned(70.0));
    assert!(d.isolated.is_empty(), "{:?}", d.isolated);
    // Later, the same picture held for the reaction time is a stuck consumer.
    let mut late = s.clone();
    for now_s in [100.0, 100.0 + p.reaction_s] {
        late.now_s = now_s;
        let d = decide(&p, &late, &mut m);
        assert_eq!(d.limited.is_some(), now_s > 100.0, "{}", d.reason);
    }
    let d = decide(&p, &late, &mut m);
    assert!(d.limited.is_some_and(|l| l.contains("stuck")));
}

#[test]
fn capacity_never_exceeds_the_rate_limit() {
    let p = Policy {
        rate_limit: Some(100.0),
        ..Default::default()
    };
    let mut m = Memory::default();
    // One of two loops busy: busy time alone says 200/s.
    let mut s = sample(0.0, 8, 1, 5_000, 0.0, 100.0);
    s.busy = Some(0.5);
    decide(&p, &s, &mut m);
    assert_eq!(m.capacity, Some(100.0));
}
