//! A trace-driven simulator for replica policies (pure, deterministic): per
//! partition input rates over time, a per-replica capacity, a start-up delay
//! for new pods and a pause for every moved task. It runs Millrace's policy
//! and a KEDA-style formula on the same traces and scores them.
//!
//! Both policies get the same world: sticky balanced placement (the
//! operator's own function), so only the moved tasks pause; the difference
//! is the decision alone. KEDA's Kafka scaler reads lag against the high
//! watermark, so a transactional producer's commit markers count as lag
//! (KEDA issue #5675); Millrace reads it against the last stable offset.

use std::collections::BTreeMap;

use super::policy::{decide, Memory, Policy, Sample};
use crate::placement::{next_placement, Inputs, Placement, Worker};

pub struct World {
    /// Records/s one replica processes.
    pub capacity: f64,
    /// Seconds before a new pod takes tasks.
    pub startup_s: u32,
    /// Seconds a moved task processes nothing.
    pub pause_s: u32,
}

pub const WORLD: World = World {
    capacity: 500.0,
    startup_s: 5,
    pause_s: 2,
};

pub struct Trace {
    pub name: &'static str,
    pub tasks: i32,
    pub seconds: u32,
    pub start_replicas: i32,
    pub min_replicas: i32,
    /// Records/s arriving on partition `p` at second `t`.
    pub input: fn(u32, usize) -> f64,
    /// A partition that commits nothing over [from, to).
    pub stuck: Option<(usize, u32, u32)>,
    /// A transactional producer writes the input: one commit marker sits
    /// past the last record of every partition that has data.
    pub markers: bool,
}

pub fn traces() -> Vec<Trace> {
    vec![
        Trace {
            name: "step burst",
            tasks: 16,
            seconds: 3600,
            start_replicas: 1,
            min_replicas: 1,
            input: |t, _| {
                if (600..1500).contains(&t) {
                    2400.0 / 16.0
                } else {
                    200.0 / 16.0
                }
            },
            stuck: None,
            markers: false,
        },
        Trace {
            name: "diurnal sine",
            tasks: 16,
            seconds: 3600,
            start_replicas: 2,
            min_replicas: 1,
            input: |t, _| {
                let phase = t as f64 / 1800.0 * std::f64::consts::TAU;
                (1000.0 + 800.0 * phase.sin()) / 16.0
            },
            stuck: None,
            markers: false,
        },
        Trace {
            name: "one hot partition",
            tasks: 16,
            seconds: 3600,
            start_replicas: 2,
            min_replicas: 1,
            input: |_, p| if p == 0 { 700.0 } else { 20.0 },
            stuck: None,
            markers: false,
        },
        Trace {
            name: "stuck consumer",
            tasks: 16,
            seconds: 3600,
            start_replicas: 2,
            min_replicas: 1,
            input: |_, _| 40.0,
            stuck: Some((3, 600, 1800)),
            markers: false,
        },
        Trace {
            name: "transaction markers",
            tasks: 16,
            seconds: 3600,
            start_replicas: 1,
            min_replicas: 0,
            input: |t, _| if t < 300 { 5.0 } else { 0.0 },
            stuck: None,
            markers: true,
        },
        Trace {
            name: "idle, wake from zero",
            tasks: 16,
            seconds: 3600,
            start_replicas: 0,
            min_replicas: 0,
            input: |t, _| {
                if (900..1200).contains(&t) {
                    1200.0 / 16.0
                } else {
                    0.0
                }
            },
            stuck: None,
            markers: false,
        },
    ]
}

/// A replica policy under test.
pub trait Scaler {
    fn name(&self) -> &'static str;
    fn interval_s(&self) -> u32;
    fn decide(&mut self, now_s: u32, view: &View<'_>) -> i32;
    /// Tasks the scaler wants on a worker of their own.
    fn isolated(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// What a scaler can measure at a poll.
pub struct View<'a> {
    pub tasks: i32,
    pub current: i32,
    /// Per partition: last stable offset − committed.
    pub lag: &'a [i64],
    /// Per partition: high watermark − committed (markers included).
    pub lag_high_watermark: &'a [i64],
    pub input_rate: &'a [f64],
    pub processing_rate: &'a [f64],
    /// Mean busy fraction of the replicas over the interval (starting pods
    /// count as idle).
    pub busy: Option<f64>,
}

pub struct Millrace {
    pub policy: Policy,
    pub memory: Memory,
}

impl Scaler for Millrace {
    fn name(&self) -> &'static str {
        "Millrace"
    }
    fn interval_s(&self) -> u32 {
        10
    }
    fn decide(&mut self, now_s: u32, v: &View<'_>) -> i32 {
        let sample = Sample {
            now_s: now_s as f64,
            tasks: v.tasks,
            current: v.current,
            lag: v.lag.to_vec(),
            input_rate: v.input_rate.to_vec(),
            processing_rate: v.processing_rate.to_vec(),
            busy: v.busy,
        };
        decide(&self.policy, &sample, &mut self.memory).desired
    }
    fn isolated(&self) -> Vec<i32> {
        self.memory.isolated.clone()
    }
}

/// KEDA's Kafka scaler under the HPA: `ceil(totalLag / lagThreshold)`
/// capped at the partition count, 10 % tolerance, scale-up at most
/// max(4 pods, 100 %) per 15 s, the largest recommendation of the last
/// 300 s for scale-down; at zero, active when lag exceeds the activation
/// threshold, and back to zero after 300 s at or under it.
pub struct Keda {
    pub lag_threshold: f64,
    pub activation_lag: i64,
    pub min_replicas: i32,
    history: Vec<(u32, i32)>,
    inactive_since: Option<u32>,
}

impl Keda {
    pub fn new(lag_threshold: f64, min_replicas: i32) -> Self {
        Self {
            lag_threshold,
            activation_lag: 0,
            min_replicas,
            history: Vec::new(),
            inactive_since: None,
        }
    }
}

impl Scaler for Keda {
    fn name(&self) -> &'static str {
        "KEDA-style"
    }
    fn interval_s(&self) -> u32 {
        15
    }
    fn decide(&mut self, now_s: u32, v: &View<'_>) -> i32 {
        let lag: i64 = v.lag_high_watermark.iter().sum();
        let active = lag > self.activation_lag;
        if self.min_replicas == 0 {
            if !active {
                let since = *self.inactive_since.get_or_insert(now_s);
                if now_s - since >= 300 || v.current == 0 {
                    return 0;
                }
            } else {
                self.inactive_since = None;
                if v.current == 0 {
                    return 1;
                }
            }
        }
        let current = v.current.max(1);
        let ratio = lag as f64 / (current as f64 * self.lag_threshold);
        let mut raw = if (ratio - 1.0).abs() <= 0.1 {
            current
        } else {
            (lag as f64 / self.lag_threshold).ceil() as i32
        };
        raw = raw.clamp(self.min_replicas.max(1), v.tasks);
        self.history.retain(|(t, _)| now_s - t < 300);
        self.history.push((now_s, raw));
        if raw > current {
            raw.min(current + (current).max(4))
        } else {
            self.history
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(raw)
                .min(current)
        }
    }
}

/// Scores of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    pub scale_events: u32,
    pub direction_changes: u32,
    pub peak_lag: i64,
    /// Seconds with more backlog than one replica drains in 60 s.
    pub above_target_s: u32,
    pub replica_seconds: u64,
    pub max_replicas: i32,
}

/// Backlog above which a second counts as "above target".
pub fn target_lag(world: &World) -> i64 {
    (world.capacity * 60.0) as i64
}

pub fn run(trace: &Trace, world: &World, scaler: &mut dyn Scaler) -> Score {
    let n = trace.tasks as usize;
    let mut lso = vec![0.0f64; n];
    let mut committed = vec![0.0f64; n];
    // Rates as a poll measures them: the change since the previous poll.
    let mut input_rate = vec![0.0f64; n];
    let mut processing_rate = vec![0.0f64; n];
    let mut at_last_poll = (vec![0.0f64; n], vec![0.0f64; n], 0u32);
    // Replica-seconds of ready pods and records done since the last poll.
    let mut ready_seconds = 0.0f64;
    // Pods by name with the second they become ready.
    let mut pods: BTreeMap<String, u32> = BTreeMap::new();
    let mut next_pod = 0u32;
    for _ in 0..trace.start_replicas {
        pods.insert(format!("w{next_pod:03}"), 0);
        next_pod += 1;
    }
    let mut placement = Placement::default();
    let mut paused_until = vec![0u32; n];
    let mut isolated: Vec<i32> = Vec::new();
    let mut score = Score::default();
    let mut last_direction = 0i32;
    for t in 0..trace.seconds {
        // Placement over ready pods; moved tasks pause.
        let workers: Vec<Worker> = pods
            .iter()
            .map(|(name, ready_at)| Worker {
                name: name.clone(),
                ready: *ready_at <= t,
                leaving: false,
                zone: None,
            })
            .collect();
        let next = next_placement(&Inputs {
            tasks: trace.tasks,
            workers: &workers,
            current: &placement,
            standby_replicas: 0,
            stateful: false,
            caught_up: &BTreeMap::new(),
            isolated: &isolated,
            max_warmups: 8,
        });
        for (task, until) in paused_until.iter_mut().enumerate() {
            let (before, after) = (
                placement.active_owner(task as i32),
                next.active_owner(task as i32),
            );
            if before.is_some() && before != after {
                *until = t + world.pause_s;
            }
        }
        placement = next;
        // Arrivals, then each worker's capacity over its tasks with a backlog.
        for (p, end) in lso.iter_mut().enumerate() {
            *end += (trace.input)(t, p);
        }
        let mut done = vec![0.0f64; n];
        for a in placement.workers.values() {
            let runnable: Vec<usize> = a
                .active
                .iter()
                .map(|t| *t as usize)
                .filter(|p| paused_until[*p] <= t)
                .filter(|p| {
                    !trace
                        .stuck
                        .is_some_and(|(s, from, to)| s == *p && (from..to).contains(&t))
                })
                .collect();
            let mut budget = world.capacity;
            let mut open: Vec<usize> = runnable
                .into_iter()
                .filter(|p| lso[*p] - committed[*p] > 0.0)
                .collect();
            // Water-filling: equal shares, leftovers to those still behind.
            while budget > 1e-9 && !open.is_empty() {
                let share = budget / open.len() as f64;
                let mut still = Vec::new();
                for p in open {
                    let take = share.min(lso[p] - committed[p] - done[p]);
                    done[p] += take;
                    budget -= take;
                    if lso[p] - committed[p] - done[p] > 1e-9 {
                        still.push(p);
                    }
                }
                if still
                    .iter()
                    .all(|p| lso[*p] - committed[*p] - done[*p] <= 1e-9)
                {
                    break;
                }
                open = still;
            }
        }
        for p in 0..n {
            committed[p] += done[p];
        }
        ready_seconds += pods.len() as f64;
        let lag: Vec<i64> = (0..n)
            .map(|p| (lso[p] - committed[p]).round() as i64)
            .collect();
        let total: i64 = lag.iter().sum();
        score.peak_lag = score.peak_lag.max(total);
        if total > target_lag(world) {
            score.above_target_s += 1;
        }
        score.replica_seconds += pods.len() as u64;
        score.max_replicas = score.max_replicas.max(pods.len() as i32);

        if t % scaler.interval_s() == 0 {
            let elapsed = (t + 1 - at_last_poll.2).max(1) as f64;
            for p in 0..n {
                input_rate[p] = (lso[p] - at_last_poll.0[p]) / elapsed;
                processing_rate[p] = (committed[p] - at_last_poll.1[p]) / elapsed;
            }
            let done_since: f64 = (0..n).map(|p| committed[p] - at_last_poll.1[p]).sum();
            let busy = (ready_seconds > 0.0).then(|| done_since / (ready_seconds * world.capacity));
            ready_seconds = 0.0;
            at_last_poll = (lso.clone(), committed.clone(), t + 1);
            let lag_hw: Vec<i64> = (0..n)
                .map(|p| lag[p] + i64::from(trace.markers && lso[p] > 0.0))
                .collect();
            let view = View {
                tasks: trace.tasks,
                current: pods.len() as i32,
                lag: &lag,
                lag_high_watermark: &lag_hw,
                input_rate: &input_rate,
                processing_rate: &processing_rate,
                busy,
            };
            let desired = scaler.decide(t, &view).max(0);
            isolated = scaler.isolated();
            let current = pods.len() as i32;
            if desired != current {
                score.scale_events += 1;
                let direction = (desired - current).signum();
                if last_direction != 0 && direction != last_direction {
                    score.direction_changes += 1;
                }
                last_direction = direction;
                while (pods.len() as i32) < desired {
                    pods.insert(format!("w{next_pod:03}"), t + world.startup_s);
                    next_pod += 1;
                }
                while (pods.len() as i32) > desired {
                    // The newest pods leave first, as a StatefulSet's do.
                    let last = pods.keys().next_back().unwrap().clone();
                    pods.remove(&last);
                }
            }
        }
    }
    score
}

/// The comparison table (Markdown).
pub fn report() -> String {
    let mut out = String::from(
        "| trace | policy | scale events | direction changes | peak lag | s above target | replica-seconds | max replicas |\n|---|---|---|---|---|---|---|---|\n",
    );
    for trace in traces() {
        for (name, score) in compare(&trace) {
            out.push_str(&format!(
                "| {} | {name} | {} | {} | {} | {} | {} | {} |\n",
                trace.name,
                score.scale_events,
                score.direction_changes,
                score.peak_lag,
                score.above_target_s,
                score.replica_seconds,
                score.max_replicas
            ));
        }
    }
    out
}

/// Both policies on one trace: Millrace with its defaults, KEDA with a lag
/// threshold of 10 s of one replica's capacity.
pub fn compare(trace: &Trace) -> Vec<(&'static str, Score)> {
    let mut millrace = Millrace {
        policy: Policy {
            min_replicas: trace.min_replicas,
            reaction_s: 10.0 + f64::from(WORLD.startup_s),
            ..Policy::default()
        },
        memory: Memory::default(),
    };
    let mut keda = Keda::new(WORLD.capacity * 10.0, trace.min_replicas);
    vec![
        (millrace.name(), run(trace, &WORLD, &mut millrace)),
        (keda.name(), run(trace, &WORLD, &mut keda)),
    ]
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
