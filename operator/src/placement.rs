//! The placement function (design brief D1): which worker runs each task as
//! active, which keep standby copies, and which warm a copy up before a move.
//! Pure: the operator feeds it what it read; tests feed it random histories.
//!
//! Properties (checked by the randomized tests below):
//! - every task has exactly one active worker, and it is ready, whenever a
//!   worker is ready;
//! - actives are balanced within one once no move is waiting for a warm-up;
//! - sticky: a task stays where it is unless its worker left or holds more
//!   than its share;
//! - a standby never sits on its task's active worker, and standbys prefer
//!   other zones;
//! - a stateful task whose worker is still alive moves only to a caught-up
//!   copy; otherwise the target first gets a warm-up copy and the task moves
//!   once that copy has caught up; at most `max_warmups` copies warm up at
//!   once, and a warm-up keeps its target;
//! - a leaving worker (past the desired replica count) takes nothing new;
//!   while it answers it keeps its stateful tasks until copies elsewhere
//!   catch up, so a scale-down moves them warm; one that fails loses them
//!   at once, to a caught-up copy when there is one.
//!
//! This is the function only; the handoffs it implies (revoke, wait for the
//! acknowledgement or fence, then place) are sequenced by [`crate::handoff`]
//! and driven by [`crate::placement_driver`].

use std::collections::{BTreeMap, BTreeSet};

/// A worker pod as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    /// It answers and can run tasks.
    pub ready: bool,
    /// Past the desired replica count: it takes nothing new, and its tasks
    /// move away (a stateful one once a copy elsewhere is caught up).
    pub leaving: bool,
    pub zone: Option<String>,
}

impl Worker {
    /// A ready worker that stays, in no known zone.
    pub fn ready(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ready: true,
            leaving: false,
            zone: None,
        }
    }
}

pub use millrace_crds::placement::Assignment;

/// An epoch-numbered placement: worker name → tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub epoch: u64,
    pub workers: BTreeMap<String, Assignment>,
}

impl Placement {
    pub fn active_owner(&self, task: i32) -> Option<&str> {
        self.workers
            .iter()
            .find(|(_, a)| a.active.contains(&task))
            .map(|(w, _)| w.as_str())
    }

    fn has_copy(&self, task: i32, worker: &str) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|a| a.standby.contains(&task) || a.warmup.contains(&task))
    }
}

/// The pod ordinal of a worker named `<app>-<ordinal>`.
pub fn ordinal(app: &str, worker: &str) -> Option<i32> {
    worker.strip_prefix(app)?.strip_prefix('-')?.parse().ok()
}

/// The highest ordinal whose worker holds an active task or owes a handoff.
pub fn holding_ordinals(doc: &millrace_crds::placement::PlacementDoc, app: &str) -> Option<i32> {
    doc.workers
        .iter()
        .filter(|(_, a)| !a.active.is_empty())
        .map(|(w, _)| w)
        .chain(doc.moves.iter().map(|m| &m.from))
        .filter_map(|w| ordinal(app, w))
        .max()
}

pub struct Inputs<'a> {
    pub tasks: i32,
    pub workers: &'a [Worker],
    pub current: &'a Placement,
    pub standby_replicas: usize,
    /// Tasks have local state: moving one to a cold copy means a restore.
    pub stateful: bool,
    /// Per task, the workers whose copy of its state is caught up.
    pub caught_up: &'a BTreeMap<i32, BTreeSet<String>>,
    /// Tasks to give a worker of their own, most loaded first: the
    /// autoscaler's heavy tasks (one that alone needs half a worker).
    pub isolated: &'a [i32],
    /// Most warm-up copies at once (`spec.state.maxWarmups`).
    pub max_warmups: usize,
}

/// Which ready worker each isolated task gets to itself: its owner when
/// that is free, else the worker holding fewest tasks, so that the heavy
/// task (whose backlog is the one that matters) is not paused by a move.
/// At most `n − 1`: the other tasks keep at least one worker.
fn dedicate(i: &Inputs<'_>, ready: &[&Worker]) -> BTreeMap<String, i32> {
    let mut dedicated: BTreeMap<String, i32> = BTreeMap::new();
    let limit = ready.len().saturating_sub(1);
    let mut seen = BTreeSet::new();
    for &task in i.isolated {
        if dedicated.len() == limit {
            break;
        }
        if !(0..i.tasks).contains(&task) || !seen.insert(task) {
            continue;
        }
        let free = |w: &str| !dedicated.contains_key(w) && ready.iter().any(|r| r.name == w);
        let worker = match i.current.active_owner(task).filter(|w| free(w)) {
            Some(owner) => owner.to_string(),
            None => {
                let held = |w: &str| i.current.workers.get(w).map_or(0, |a| a.active.len());
                let Some(w) = ready
                    .iter()
                    .filter(|w| free(&w.name))
                    .min_by_key(|w| (held(&w.name), w.name.clone()))
                else {
                    break;
                };
                w.name.clone()
            }
        };
        dedicated.insert(worker, task);
    }
    dedicated
}

pub fn next_placement(i: &Inputs<'_>) -> Placement {
    let ready: Vec<&Worker> = {
        let mut r: Vec<&Worker> = i.workers.iter().filter(|w| w.ready && !w.leaving).collect();
        r.sort_by(|a, b| a.name.cmp(&b.name));
        r
    };
    let mut next: BTreeMap<String, Assignment> = ready
        .iter()
        .map(|w| (w.name.clone(), Assignment::default()))
        .collect();
    if ready.is_empty() || i.tasks <= 0 {
        return finish(i.current, next);
    }
    // Isolated tasks first, each alone on its worker; the others share the
    // rest: the first `shared_tasks % n` of those workers (by name) take one
    // more.
    let dedicated = dedicate(i, &ready);
    for (worker, task) in &dedicated {
        next.get_mut(worker).unwrap().active.insert(*task);
    }
    let shared: Vec<&&Worker> = ready
        .iter()
        .filter(|w| !dedicated.contains_key(&w.name))
        .collect();
    let n = shared.len() as i32;
    let shared_tasks = i.tasks - dedicated.len() as i32;
    let mut capacity: BTreeMap<&str, usize> = shared
        .iter()
        .enumerate()
        .map(|(k, w)| {
            (
                w.name.as_str(),
                (shared_tasks / n + i32::from((k as i32) < shared_tasks % n)) as usize,
            )
        })
        .collect();
    capacity.extend(dedicated.keys().map(|w| (w.as_str(), 1)));
    let is_isolated = |task: i32| dedicated.values().any(|t| *t == task);
    let caught_up =
        |task: i32, worker: &str| i.caught_up.get(&task).is_some_and(|s| s.contains(worker));

    // A leaving worker that still answers keeps a stateful task until a
    // copy elsewhere is caught up, so a scale-down hands tasks to warm
    // copies instead of restoring them cold.
    let leaving: BTreeSet<&str> = i
        .workers
        .iter()
        .filter(|w| w.ready && w.leaving && i.stateful)
        .map(|w| w.name.as_str())
        .collect();
    let mut held: BTreeMap<String, Assignment> = BTreeMap::new();

    // 1. Sticky: keep each active on its ready worker while within share.
    let mut unplaced: Vec<i32> = Vec::new();
    let mut over: Vec<(i32, String)> = Vec::new();
    for task in (0..i.tasks).filter(|t| !is_isolated(*t)) {
        match i.current.active_owner(task) {
            Some(owner)
                if next.contains_key(owner) && next[owner].active.len() < capacity[owner] =>
            {
                next.get_mut(owner).unwrap().active.insert(task);
            }
            Some(owner) if next.contains_key(owner) || leaving.contains(owner) => {
                over.push((task, owner.to_string()))
            }
            _ => unplaced.push(task),
        }
    }
    // A warm-up takes a place on its target as an active would.
    let spare = |next: &BTreeMap<String, Assignment>, w: &str| {
        capacity[w].saturating_sub(next[w].active.len() + next[w].warmup.len())
    };
    // Prefer a target that already has a caught-up copy, then one with a
    // copy under way (a warm-up does not hop), then the emptiest.
    let pick = |next: &BTreeMap<String, Assignment>, task: i32| -> Option<String> {
        let mut candidates: Vec<&String> = next.keys().filter(|w| spare(next, w) > 0).collect();
        candidates.sort_by_key(|w| {
            (
                !caught_up(task, w),
                !i.current.has_copy(task, w),
                std::cmp::Reverse(spare(next, w)),
                (*w).clone(),
            )
        });
        candidates.first().map(|w| (*w).to_string())
    };
    // 2. Orphans (their worker left): place now, on a caught-up copy if any.
    for task in unplaced {
        if let Some(target) = pick(&next, task) {
            next.get_mut(&target).unwrap().active.insert(task);
        }
    }
    // 3. Tasks over their live worker's share, or on a leaving one: move to
    //    a caught-up copy, or (stateful) stay while the target warms up, at
    //    most `max_warmups` at once. Those already warming keep their turn.
    let warming = |task: i32| i.current.workers.values().any(|a| a.warmup.contains(&task));
    over.sort_by_key(|(task, _)| !warming(*task));
    let mut warmups_left = i.max_warmups;
    for (task, owner) in over {
        let mut stay = |next: &mut BTreeMap<String, Assignment>| match next.get_mut(&owner) {
            Some(a) => a.active.insert(task),
            None => held.entry(owner.clone()).or_default().active.insert(task),
        };
        match pick(&next, task) {
            Some(target) if !i.stateful || caught_up(task, &target) => {
                next.get_mut(&target).unwrap().active.insert(task);
            }
            Some(target) if warmups_left > 0 => {
                stay(&mut next);
                next.get_mut(&target).unwrap().warmup.insert(task);
                warmups_left -= 1;
            }
            _ => {
                stay(&mut next);
            }
        }
    }
    // 4. Standbys: sticky, never on the active's worker, other zones first.
    let zone_of = |w: &str| {
        ready
            .iter()
            .find(|r| r.name == w)
            .and_then(|r| r.zone.clone())
    };
    let wanted = i.standby_replicas.min(ready.len() - 1);
    for task in 0..i.tasks {
        let Some(active) = next
            .iter()
            .chain(&held)
            .find(|(_, a)| a.active.contains(&task))
            .map(|(w, _)| w.clone())
        else {
            continue;
        };
        let mut chosen: Vec<String> = Vec::new();
        let previous: Vec<String> = i
            .current
            .workers
            .iter()
            .filter(|(w, a)| a.standby.contains(&task) && next.contains_key(*w) && **w != active)
            .map(|(w, _)| w.clone())
            .collect();
        for w in previous.into_iter().take(wanted) {
            chosen.push(w);
        }
        while chosen.len() < wanted {
            let used_zones: BTreeSet<Option<String>> =
                chosen.iter().chain([&active]).map(|w| zone_of(w)).collect();
            let mut candidates: Vec<&String> = next
                .keys()
                .filter(|w| **w != active && !chosen.contains(w))
                .collect();
            candidates.sort_by_key(|w| {
                (
                    used_zones.contains(&zone_of(w)),
                    next[*w].standby.len(),
                    (*w).clone(),
                )
            });
            match candidates.first() {
                Some(w) => chosen.push((*w).clone()),
                None => break,
            }
        }
        for w in chosen {
            next.get_mut(&w).unwrap().standby.insert(task);
        }
    }
    next.extend(held);
    finish(i.current, next)
}

/// A new epoch only when something changed.
fn finish(current: &Placement, workers: BTreeMap<String, Assignment>) -> Placement {
    let epoch = if workers == current.workers {
        current.epoch
    } else {
        current.epoch + 1
    };
    Placement { epoch, workers }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
