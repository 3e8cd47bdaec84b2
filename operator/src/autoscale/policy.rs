//! The replica decision (design brief D5). Pure: the operator feeds it one
//! poll's measurements and the memory it keeps in the StreamApp's status;
//! the simulator feeds it traces.
//!
//! Desired replicas = enough learned per-replica capacity to absorb the
//! input rate and drain the backlog within `targetDrainTime`, capped at the
//! task count, then aligned down to the fewest replicas that give the same
//! busiest-pod task count (`ceil(tasks / r)`): a pod that does not lower it
//! adds nothing. Scale-ups take the lowest and scale-downs the highest
//! recommendation of their stabilisation windows (as the HPA does), move at
//! most `maxStep` at a time, and wait a cooldown after each change. An app
//! at zero wakes as soon as its lag reaches `activationLag`.
//!
//! It also says when more replicas cannot help, instead of adding them:
//! lag held by a partition that does not move while its worker has room (a
//! stuck consumer), a partition whose own input exceeds one worker's
//! capacity (a hot partition), or a scale-up after which processing did not
//! speed up (as Flink's autoscaler detects ineffective scaling).

use serde::{Deserialize, Serialize};

use crate::scale::align;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Lag,
    DryRun,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub min_replicas: i32,
    /// Defaults to (and is always capped at) the task count.
    pub max_replicas: Option<i32>,
    pub target_drain_s: f64,
    pub activation_lag: i64,
    pub up_window_s: f64,
    /// Most replicas added at once; `None`: max(4, 100 %), as the HPA.
    pub up_max_step: Option<i32>,
    pub down_window_s: f64,
    /// Most replicas removed at once; `None`: no limit beyond the window.
    pub down_max_step: Option<i32>,
    pub cooldown_s: f64,
    /// Seconds from a decision to new workers processing: the poll
    /// interval, the scale-up window and a pod's start.
    pub reaction_s: f64,
    /// A worker's rate limit (`spec.pipeline.maxRecordsPerSecond`): no
    /// worker processes more, whatever its busy time suggests.
    pub rate_limit: Option<f64>,
}

/// What a pod takes to start and take tasks, when nothing better is known.
pub const POD_START_S: f64 = 10.0;

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Lag,
            min_replicas: 1,
            max_replicas: None,
            target_drain_s: 60.0,
            activation_lag: 1,
            up_window_s: 0.0,
            up_max_step: None,
            // Shorter than the HPA's 300 s: a Millrace scale-down moves only
            // the leaving pods' tasks, each paused for about a second, not a
            // consumer-group rebalance of every partition.
            down_window_s: 60.0,
            down_max_step: None,
            cooldown_s: 30.0,
            reaction_s: 10.0 + POD_START_S,
            rate_limit: None,
        }
    }
}

/// One poll's measurements. Lag is against the last stable offset, so
/// transaction markers and aborted records are not lag.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub now_s: f64,
    pub tasks: i32,
    /// Workers running now.
    pub current: i32,
    /// Per partition: records behind the last stable offset.
    pub lag: Vec<i64>,
    /// Per partition: records/s arriving (smoothed).
    pub input_rate: Vec<f64>,
    /// Per partition: records/s committed (smoothed).
    pub processing_rate: Vec<f64>,
    /// The workers' mean busy fraction (time processing rather than
    /// waiting for records), when they report it.
    pub busy: Option<f64>,
}

impl Sample {
    pub fn total_lag(&self) -> i64 {
        self.lag.iter().sum()
    }
    fn total(v: &[f64]) -> f64 {
        v.iter().sum()
    }
}

/// What the policy remembers between polls; the operator keeps it in the
/// StreamApp's status so a restarted operator does not relearn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Records/s one replica processes when it has a backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// (time, recommendation) within the longest window.
    #[serde(default)]
    pub recommendations: Vec<(f64, i32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_s: Option<f64>,
    /// The last scale-up: (time, from, to, total processing rate before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_up: Option<(f64, i32, i32, f64)>,
    /// Since when the stuck-looking partitions have looked stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_since_s: Option<f64>,
    /// Scale-ups are held until this time after an ineffective one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineffective_until_s: Option<f64>,
    /// Heavy tasks, each to get a worker of its own, most loaded first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: i32,
    /// The recommendation before stabilisation, step limits and cooldown.
    pub recommended: i32,
    /// Why, with the numbers.
    pub reason: String,
    /// Set when more replicas would not help.
    pub limited: Option<String>,
    /// Tasks that each get a worker of their own (most loaded first).
    pub isolated: Vec<i32>,
}

pub fn decide(p: &Policy, s: &Sample, m: &mut Memory) -> Decision {
    let cap = p.max_replicas.unwrap_or(s.tasks).min(s.tasks).max(0);
    let floor = p.min_replicas.clamp(0, cap);
    let lag = s.total_lag();
    let input = Sample::total(&s.input_rate);
    let processed = Sample::total(&s.processing_rate);
    learn(s, m, processed);
    if let (Some(limit), Some(c)) = (p.rate_limit, m.capacity) {
        // Busy time counts a loop waiting for records as idle, but under a
        // worker-wide rate limit an idle loop adds no capacity.
        m.capacity = Some(c.min(limit));
    }
    m.isolated = match m.capacity {
        Some(c) if s.current > 0 => heavy_tasks(p, s, c, &m.isolated),
        _ => Vec::new(),
    };
    let isolated = m.isolated.len() as i32;
    let mut limited = None;

    // 1. The raw recommendation.
    let (mut raw, mut reason) = if s.current == 0 {
        if lag >= p.activation_lag.max(1) {
            let want = m
                .capacity
                .map_or(1, |c| within_budget(p, s, lag, c, 1, needed(p, s, c)))
                .max(1);
            (
                want,
                format!("waking: lag {lag} ≥ activation {}", p.activation_lag),
            )
        } else {
            (
                0,
                format!("idle at zero: lag {lag} < activation {}", p.activation_lag),
            )
        }
    } else if lag == 0 && input < 0.5 {
        m.isolated.clear();
        (floor, "idle: no lag and no input".to_string())
    } else if let Some(c) = m.capacity {
        // Heavy tasks take a worker each; the others share the rest, and
        // keep at least one.
        let rest = without(s, &m.isolated);
        let least = i32::from(isolated > 0);
        let rest_want = within_budget(
            p,
            &rest,
            lag,
            c,
            rest.current.max(least),
            needed(p, &rest, c).max(least),
        );
        let want = isolated + rest_want;
        let have = effective(rest.tasks, rest.current, c) + f64::from(isolated) * c;
        let need = need_rate(p, s, c);
        if want == s.current {
            (s.current, format!("need {need:.0}/s, have {have:.0}/s"))
        } else {
            (
                want,
                format!(
                    "need {need:.0}/s (input {input:.0}/s + lag {lag} over {:.0} s) at {c:.0}/s per replica",
                    p.target_drain_s
                ),
            )
        }
    } else if lag > p.activation_lag && processed < input + lag as f64 / p.target_drain_s {
        // Capacity not learned yet: probe one step up while behind.
        (
            s.current + 1,
            format!("lag {lag} and capacity not learned yet: one more"),
        )
    } else {
        (s.current, format!("lag {lag}, keeping up"))
    };

    // 2. Cases where more replicas cannot help: reported whenever they
    //    hold, and they stop a scale-up.
    if lag > 0 && s.current > 0 {
        if let Some(why) = cannot_help(p, s, m) {
            limited = Some(why);
            raw = raw.min(s.current);
        }
    }
    let align = |r: i32| {
        if isolated > 0 && r > isolated {
            isolated + align(s.tasks - isolated, r - isolated)
        } else {
            align(s.tasks, r)
        }
    };
    raw = align(raw.clamp(floor, cap.max(floor)));
    let recommended = raw;

    // 3. Stabilise, limit the step, respect the cooldown.
    let window = p.up_window_s.max(p.down_window_s);
    m.recommendations.retain(|(t, _)| s.now_s - t < window);
    m.recommendations.push((s.now_s, raw));
    let in_window = |w: f64| {
        m.recommendations
            .iter()
            .filter(move |(t, _)| s.now_s - t < w.max(0.001))
    };
    let mut desired = s.current;
    if s.current == 0 && raw > 0 {
        desired = raw;
    } else if raw > s.current {
        let lowest = in_window(p.up_window_s)
            .map(|(_, r)| *r)
            .min()
            .unwrap_or(raw);
        if lowest > s.current {
            let step = p.up_max_step.unwrap_or(s.current.max(4)).max(1);
            desired = align(lowest.min(s.current + step));
        }
    } else if raw < s.current {
        let highest = in_window(p.down_window_s)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(raw);
        if highest < s.current {
            let stepped = highest.max(s.current - p.down_max_step.unwrap_or(s.current).max(1));
            desired = if stepped == 0 { 0 } else { align(stepped) };
        } else {
            reason = format!(
                "{reason}; holding for the scale-down window ({:.0} s)",
                p.down_window_s
            );
        }
    }
    // The cooldown stops reversals and scale-downs; a scale-up right after
    // a scale-up (a backlog still growing, capacity just learned) is not
    // flapping, and waiting would only let the backlog grow.
    let after_up = m
        .last_scale_up
        .is_some_and(|(t, ..)| Some(t) == m.last_change_s);
    let cooling = m.last_change_s.is_some_and(|t| s.now_s - t < p.cooldown_s)
        && !(desired > s.current && after_up);
    if desired != s.current && cooling && s.current != 0 {
        reason = format!("{reason}; cooling down after the last change");
        desired = s.current;
    }
    if desired != s.current {
        m.last_change_s = Some(s.now_s);
        if desired > s.current {
            m.last_scale_up = Some((s.now_s, s.current, desired, processed));
        }
    }
    if !m.isolated.is_empty() {
        reason = format!(
            "{reason}; tasks {:?} each on a worker of their own",
            m.isolated
        );
    }
    Decision {
        desired,
        recommended,
        reason,
        limited,
        isolated: m.isolated.clone(),
    }
}

/// Tasks that alone need half a worker or more (their input plus draining
/// their backlog within the target) and are moving: a stuck partition needs
/// no worker, but a busy one needs its worker to itself, since a worker
/// shares its time among its tasks and balancing by count would give the
/// heavy task's worker as many others as the rest. A task stays heavy until
/// it needs under a quarter, so one near the line does not move back and
/// forth. Most loaded first; none when more than half the tasks are heavy,
/// because then balancing by count is already right.
fn heavy_tasks(p: &Policy, s: &Sample, capacity: f64, before: &[i32]) -> Vec<i32> {
    let over_the_line: Vec<(f64, i32, bool)> = (0..s.lag.len())
        .filter_map(|i| {
            let input = s.input_rate.get(i).copied().unwrap_or(0.0);
            let moving = s.lag[i] == 0 || s.processing_rate.get(i).is_some_and(|r| *r >= 0.5);
            let load = input + s.lag[i] as f64 / p.target_drain_s.max(1.0);
            let line = if before.contains(&(i as i32)) {
                0.25
            } else {
                0.5
            };
            (load >= line * capacity).then_some((load, i as i32, moving))
        })
        .collect();
    // Counted moving or not: a backlog spread over every task, some of
    // them not started yet, is not a few heavy tasks.
    if over_the_line.len() * 2 > s.lag.len() {
        return Vec::new();
    }
    let mut heavy: Vec<(f64, i32)> = over_the_line
        .into_iter()
        .filter(|(_, _, moving)| *moving)
        .map(|(load, i, _)| (load, i))
        .collect();
    heavy.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    heavy.into_iter().map(|(_, i)| i).collect()
}

/// The sample without the isolated tasks and their workers.
fn without(s: &Sample, isolated: &[i32]) -> Sample {
    let keep = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| !isolated.contains(&(*i as i32)))
            .map(|(_, x)| *x)
            .collect()
    };
    Sample {
        tasks: s.tasks - isolated.len() as i32,
        current: (s.current - isolated.len() as i32).max(0),
        lag: s
            .lag
            .iter()
            .enumerate()
            .filter(|(i, _)| !isolated.contains(&(*i as i32)))
            .map(|(_, x)| *x)
            .collect(),
        input_rate: keep(&s.input_rate),
        processing_rate: keep(&s.processing_rate),
        ..s.clone()
    }
}

/// Records/s needed to absorb the input and drain the lag within the
/// target. A partition never needs more than one worker's capacity: it is
/// processed by one worker at a time, so more cannot help it.
fn need_rate(p: &Policy, s: &Sample, capacity: f64) -> f64 {
    (0..s.lag.len())
        .map(|i| {
            let input = s.input_rate.get(i).copied().unwrap_or(0.0);
            (input + s.lag[i] as f64 / p.target_drain_s.max(1.0)).min(capacity)
        })
        .sum()
}

/// Replicas to absorb the input and drain the lag within the target. The
/// busiest worker is the bottleneck: with tasks of equal load, `r` workers
/// process `tasks × capacity / ceil(tasks / r)` records/s, so the answer is
/// the fewest workers whose busiest one carries few enough tasks.
fn needed(p: &Policy, s: &Sample, capacity: f64) -> i32 {
    let need = need_rate(p, s, capacity);
    if need <= 0.0 || s.tasks <= 0 {
        return 0;
    }
    let per_task = need / s.tasks as f64;
    let carry = ((capacity / per_task).floor() as i32).clamp(1, s.tasks);
    (s.tasks + carry - 1) / carry
}

/// The backlog the app may carry: half of what one worker drains within
/// the target. The other half is margin for the reaction time and for
/// rates that change while new workers start.
fn backlog_budget(p: &Policy, capacity: f64) -> f64 {
    0.5 * capacity * p.target_drain_s
}

/// The fewest workers from `from` up to `want` that keep the backlog within
/// its budget until more workers could be processing. A shortfall that
/// grows the backlog slowly is carried rather than answered with a worker
/// at once: a brief peak then costs no pod at all, and a lasting one adds
/// the pod `reaction_s` before the budget runs out. This budget is also the
/// hysteresis of the scale-down: a count that only just keeps up is safe to
/// return to, because noise above it grows the backlog, not the replicas.
///
/// `backlog` is the whole app's: the isolated tasks' backlog uses the
/// budget too, so the others may only add to it while it has room.
fn within_budget(p: &Policy, s: &Sample, backlog: i64, capacity: f64, from: i32, want: i32) -> i32 {
    if want <= from {
        return want;
    }
    let lag = backlog as f64;
    let input = Sample::total(&s.input_rate);
    let budget = backlog_budget(p, capacity);
    (from..want)
        .find(|r| {
            let shortfall = (input - effective(s.tasks, *r, capacity)).max(0.0);
            lag + shortfall * p.reaction_s <= budget
        })
        .unwrap_or(want)
}

/// Records/s `replicas` workers process when every task has the same load.
fn effective(tasks: i32, replicas: i32, capacity: f64) -> f64 {
    if replicas <= 0 || tasks <= 0 {
        return 0.0;
    }
    let busiest = (tasks + replicas - 1) / replicas;
    tasks as f64 * capacity / busiest as f64
}

/// Capacity is learned only while there is a backlog: otherwise workers
/// process what arrives, which says nothing of what they could do.
/// "Backlog" means most partitions that receive input are behind and
/// moving: one stuck or hot partition says nothing about what a worker can
/// do, and learning from it would spiral (fewer records per replica → more
/// replicas → fewer records per replica).
fn learn(s: &Sample, m: &mut Memory, processed: f64) {
    // Busy time, as Flink's autoscaler uses it: what the replicas would
    // process if they were busy all the time. Needs no backlog.
    if let Some(busy) = s
        .busy
        .filter(|b| *b >= 0.1 && processed > 0.0 && s.current > 0)
    {
        let per_replica = processed / (s.current as f64 * busy.min(1.0));
        m.capacity = Some(
            m.capacity
                .map_or(per_replica, |c| 0.7 * c + 0.3 * per_replica),
        );
        return;
    }
    let backlog = s.total_lag() as f64 > processed.max(1.0) && s.current > 0;
    let fed = s.input_rate.iter().filter(|r| **r > 0.0).count().max(1);
    let moving = s
        .lag
        .iter()
        .zip(&s.processing_rate)
        .filter(|(l, r)| **l > 0 && **r >= 0.5)
        .count();
    if !backlog || moving * 2 < fed || processed <= 0.0 {
        return;
    }
    let per_replica = processed / s.current as f64;
    m.capacity = Some(match m.capacity {
        None => per_replica,
        // Smoothed, and quick to rise: a slow poll must not pin it low.
        Some(c) if per_replica > c => 0.5 * c + 0.5 * per_replica,
        Some(c) => 0.8 * c + 0.2 * per_replica,
    });
}

fn cannot_help(p: &Policy, s: &Sample, m: &mut Memory) -> Option<String> {
    let lag = s.total_lag().max(1) as f64;
    // A stuck partition: it holds most of the lag, commits nothing, and
    // others are moving, so its worker is not short of capacity.
    let stuck: Vec<usize> = (0..s.lag.len())
        .filter(|&i| s.lag[i] > 0 && s.processing_rate.get(i).copied().unwrap_or(0.0) < 0.5)
        .collect();
    let stuck_lag: i64 = stuck.iter().map(|&i| s.lag[i]).sum();
    let others_moving = s.processing_rate.iter().any(|r| *r > 0.0);
    // Right after a change, moved and newly placed tasks have not
    // committed yet: that is a pause, not a stuck consumer.
    let settled = m
        .last_change_s
        .is_none_or(|t| s.now_s - t >= p.cooldown_s.max(p.reaction_s));
    // And for the reaction time: a worker draining a fetched batch of one
    // partition leaves its others uncommitted for a poll or two.
    let looks_stuck = !stuck.is_empty() && stuck_lag as f64 >= 0.8 * lag && others_moving;
    if !(looks_stuck && settled) {
        m.stuck_since_s = None;
    } else if s.now_s - *m.stuck_since_s.get_or_insert(s.now_s) >= p.reaction_s {
        return Some(format!(
            "partitions {stuck:?} hold {stuck_lag} of the lag and commit nothing while others progress: a stuck consumer, not a lack of workers"
        ));
    }
    // A hot partition: its own input exceeds what one worker processes.
    if let Some(c) = m.capacity {
        if let Some((i, rate)) = s
            .input_rate
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .filter(|(_, r)| **r > c)
        {
            let hot_lag = s.lag.get(i).copied().unwrap_or(0) as f64;
            if hot_lag >= 0.5 * lag {
                return Some(format!(
                    "partition {i} receives {rate:.0}/s, more than one worker processes ({c:.0}/s): no worker count keeps up with it"
                ));
            }
        }
    }
    // The last scale-up did not speed processing up.
    if let Some(until) = m.ineffective_until_s {
        if s.now_s < until {
            return Some("the last scale-up did not speed processing up; holding".into());
        }
        m.ineffective_until_s = None;
    }
    if let (Some((t, from, to, before)), Some(c)) = (m.last_scale_up, m.capacity) {
        let settled = s.now_s - t >= p.cooldown_s.max(1.0);
        if settled && s.current == to && to > from {
            let expected = (to - from) as f64 * c;
            let gained = Sample::total(&s.processing_rate) - before;
            m.last_scale_up = None;
            if gained < 0.1 * expected {
                m.ineffective_until_s = Some(s.now_s + p.down_window_s.max(p.cooldown_s));
                return Some(format!(
                    "scaling {from} → {to} raised processing by {gained:.0}/s of {expected:.0}/s expected: ineffective"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
