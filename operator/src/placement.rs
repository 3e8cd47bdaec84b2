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
//!   once that copy has caught up.
//!
//! This is the function only; the handoffs it implies (revoke, wait for the
//! acknowledgement or fence, then place) are sequenced by [`crate::handoff`]
//! and driven by [`crate::placement_driver`].

use std::collections::{BTreeMap, BTreeSet};

/// A worker pod as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    pub ready: bool,
    pub zone: Option<String>,
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
        let mut r: Vec<&Worker> = i.workers.iter().filter(|w| w.ready).collect();
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

    // 1. Sticky: keep each active on its ready worker while within share.
    let mut unplaced: Vec<i32> = Vec::new();
    let mut over: Vec<(i32, String)> = Vec::new();
    for task in (0..i.tasks).filter(|t| !is_isolated(*t)) {
        match i
            .current
            .active_owner(task)
            .filter(|w| next.contains_key(*w))
        {
            Some(owner) if next[owner].active.len() < capacity[owner] => {
                next.get_mut(owner).unwrap().active.insert(task);
            }
            Some(owner) => over.push((task, owner.to_string())),
            None => unplaced.push(task),
        }
    }
    let spare = |next: &BTreeMap<String, Assignment>, w: &str| {
        capacity[w].saturating_sub(next[w].active.len())
    };
    // Prefer a target that already has a caught-up copy, then the emptiest.
    let pick = |next: &BTreeMap<String, Assignment>, task: i32| -> Option<String> {
        let mut candidates: Vec<&String> = next.keys().filter(|w| spare(next, w) > 0).collect();
        candidates.sort_by_key(|w| {
            (
                !caught_up(task, w),
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
    // 3. Over-share tasks of live workers: move to a caught-up copy, or keep
    //    them where they are while the target warms up (stateful only).
    for (task, owner) in over {
        let Some(target) = pick(&next, task) else {
            next.get_mut(&owner).unwrap().active.insert(task);
            continue;
        };
        if !i.stateful || caught_up(task, &target) {
            next.get_mut(&target).unwrap().active.insert(task);
        } else {
            next.get_mut(&owner).unwrap().active.insert(task);
            next.get_mut(&target).unwrap().warmup.insert(task);
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
mod tests {
    use super::*;

    fn workers(names: &[&str]) -> Vec<Worker> {
        names
            .iter()
            .map(|n| Worker {
                name: n.to_string(),
                ready: true,
                zone: None,
            })
            .collect()
    }

    fn place(tasks: i32, ws: &[Worker], current: &Placement, standbys: usize) -> Placement {
        place_isolating(tasks, ws, current, standbys, &[])
    }

    fn place_isolating(
        tasks: i32,
        ws: &[Worker],
        current: &Placement,
        standbys: usize,
        isolated: &[i32],
    ) -> Placement {
        next_placement(&Inputs {
            tasks,
            workers: ws,
            current,
            standby_replicas: standbys,
            stateful: false,
            caught_up: &BTreeMap::new(),
            isolated,
        })
    }

    #[test]
    fn a_heavy_task_gets_its_worker_to_itself() {
        let ws = workers(&["a", "b", "c"]);
        let p = place(16, &ws, &Placement::default(), 0);
        let owner = p.active_owner(3).unwrap().to_string();
        let q = place_isolating(16, &ws, &p, 0, &[3]);
        assert_eq!(q.active_owner(3), Some(owner.as_str()), "it does not move");
        assert_eq!(q.workers[&owner].active, BTreeSet::from([3]));
        let others: Vec<usize> = q
            .workers
            .iter()
            .filter(|(w, _)| **w != owner)
            .map(|(_, a)| a.active.len())
            .collect();
        assert_eq!(others, [8, 7], "the other 15 share the other workers");
        assert!((0..16).all(|t| q.active_owner(t).is_some()));
        // Released: counts balance again.
        let r = place(16, &ws, &q, 0);
        assert_eq!(actives(&r), [6, 5, 5]);
    }

    #[test]
    fn isolation_leaves_the_others_a_worker_and_prefers_an_empty_one() {
        let one = workers(&["a"]);
        let p = place_isolating(4, &one, &Placement::default(), 0, &[0]);
        assert_eq!(actives(&p), [4], "one worker: nothing to isolate onto");
        let ab = workers(&["a", "b"]);
        let p = place_isolating(4, &ab, &Placement::default(), 0, &[0, 1, 2]);
        assert_eq!(p.workers["a"].active, BTreeSet::from([0]), "only n − 1");
        assert_eq!(p.workers["b"].active.len(), 3);
        // Two heavy tasks on one worker: the second goes to the new pod.
        let p = place(4, &ab, &Placement::default(), 0);
        let abc = workers(&["a", "b", "c"]);
        let (x, y) = {
            let mut on_a = p.workers["a"].active.iter();
            (*on_a.next().unwrap(), *on_a.next().unwrap())
        };
        let q = place_isolating(4, &abc, &p, 0, &[x, y]);
        assert_eq!(q.workers["a"].active, BTreeSet::from([x]));
        assert_eq!(q.workers["c"].active, BTreeSet::from([y]));
        assert_eq!(q.workers["b"].active.len(), 2);
    }

    fn actives(p: &Placement) -> Vec<usize> {
        p.workers.values().map(|a| a.active.len()).collect()
    }

    #[test]
    fn balanced_within_one_and_every_task_once() {
        let p = place(16, &workers(&["a", "b", "c"]), &Placement::default(), 0);
        assert_eq!(actives(&p), [6, 5, 5]);
        assert!((0..16).all(|t| p.active_owner(t).is_some()));
        assert_eq!(p.epoch, 1);
        assert_eq!(
            place(16, &workers(&["a", "b", "c"]), &p, 0).epoch,
            1,
            "no change, same epoch"
        );
    }

    #[test]
    fn scaling_moves_the_minimum() {
        let p3 = place(12, &workers(&["a", "b", "c"]), &Placement::default(), 0);
        let p4 = place(12, &workers(&["a", "b", "c", "d"]), &p3, 0);
        let moved = (0..12)
            .filter(|t| p3.active_owner(*t) != p4.active_owner(*t))
            .count();
        assert_eq!(moved, 3, "only d's share moves");
        let p2 = place(12, &workers(&["a", "b"]), &p4, 0);
        let moved = (0..12)
            .filter(|t| p4.active_owner(*t) != p2.active_owner(*t))
            .count();
        assert_eq!(moved, 6, "only c's and d's tasks move");
    }

    #[test]
    fn stateful_moves_wait_for_a_warm_copy() {
        let p1 = place(4, &workers(&["a"]), &Placement::default(), 0);
        let ws = workers(&["a", "b"]);
        let none = BTreeMap::new();
        let cold = next_placement(&Inputs {
            tasks: 4,
            workers: &ws,
            current: &p1,
            standby_replicas: 0,
            stateful: true,
            caught_up: &none,
            isolated: &[],
        });
        assert_eq!(
            cold.workers["a"].active.len(),
            4,
            "a keeps its tasks while b warms up"
        );
        assert_eq!(cold.workers["b"].warmup.len(), 2);
        let warm: BTreeMap<i32, BTreeSet<String>> = cold.workers["b"]
            .warmup
            .iter()
            .map(|t| (*t, BTreeSet::from(["b".to_string()])))
            .collect();
        let moved = next_placement(&Inputs {
            tasks: 4,
            workers: &ws,
            current: &cold,
            standby_replicas: 0,
            stateful: true,
            caught_up: &warm,
            isolated: &[],
        });
        assert_eq!(actives(&moved), [2, 2]);
        assert!(moved.workers["b"].warmup.is_empty());
    }

    #[test]
    fn standbys_avoid_the_active_and_prefer_other_zones() {
        let ws = vec![
            Worker {
                name: "a".into(),
                ready: true,
                zone: Some("z1".into()),
            },
            Worker {
                name: "b".into(),
                ready: true,
                zone: Some("z1".into()),
            },
            Worker {
                name: "c".into(),
                ready: true,
                zone: Some("z2".into()),
            },
        ];
        let p = place(3, &ws, &Placement::default(), 1);
        for t in 0..3 {
            let active = p.active_owner(t).unwrap();
            let standby: Vec<&String> = p
                .workers
                .iter()
                .filter(|(_, a)| a.standby.contains(&t))
                .map(|(w, _)| w)
                .collect();
            assert_eq!(standby.len(), 1);
            assert_ne!(standby[0], active);
            if active != "c" {
                assert_eq!(
                    standby[0], "c",
                    "task {t}: the standby goes to the other zone"
                );
            }
        }
    }

    #[test]
    fn leaving_pods_stay_while_they_hold_or_owe_a_task() {
        use millrace_crds::placement::{Move, PlacementDoc};
        assert_eq!(ordinal("orders", "orders-3"), Some(3));
        assert_eq!(ordinal("orders", "orders-eu-3"), None);
        let mut doc = PlacementDoc::default();
        doc.workers.insert(
            "orders-0".into(),
            Assignment {
                active: [0, 1].into(),
                ..Default::default()
            },
        );
        doc.workers.insert("orders-4".into(), Assignment::default());
        assert_eq!(
            holding_ordinals(&doc, "orders"),
            Some(0),
            "an empty entry holds nothing"
        );
        doc.moves.push(Move {
            task: 2,
            from: "orders-2".into(),
            to: "orders-0".into(),
            revoked_epoch: 1,
            since_ms: 0,
        });
        assert_eq!(
            holding_ordinals(&doc, "orders"),
            Some(2),
            "orders-2 owes a handoff"
        );
    }

    /// Random histories of scaling and pod loss; the invariants hold after
    /// every step.
    #[test]
    fn invariants_hold_over_random_histories() {
        let mut seed: u64 = 0x5eed;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _history in 0..200 {
            let tasks = 1 + rand(24) as i32;
            let standbys = rand(3) as usize;
            let mut ws: Vec<Worker> = Vec::new();
            let mut current = Placement::default();
            for step in 0..30 {
                let isolated: Vec<i32> = (0..rand(3)).map(|_| rand(tasks as u64) as i32).collect();
                match rand(3) {
                    0 if ws.len() < 8 => ws.push(Worker {
                        name: format!("w{step}"),
                        ready: true,
                        zone: Some(format!("z{}", rand(2))),
                    }),
                    1 if !ws.is_empty() => {
                        let k = rand(ws.len() as u64) as usize;
                        ws.remove(k);
                    }
                    _ if !ws.is_empty() => {
                        let k = rand(ws.len() as u64) as usize;
                        ws[k].ready = !ws[k].ready;
                    }
                    _ => {}
                }
                let previous = current.clone();
                current = place_isolating(tasks, &ws, &previous, standbys, &isolated);
                let ready: BTreeSet<&str> = ws
                    .iter()
                    .filter(|w| w.ready)
                    .map(|w| w.name.as_str())
                    .collect();
                for t in 0..tasks {
                    let owners: Vec<&String> = current
                        .workers
                        .iter()
                        .filter(|(_, a)| a.active.contains(&t))
                        .map(|(w, _)| w)
                        .collect();
                    if ready.is_empty() {
                        assert!(owners.is_empty());
                        continue;
                    }
                    assert_eq!(owners.len(), 1, "task {t} has one active");
                    assert!(ready.contains(owners[0].as_str()), "on a ready worker");
                    for (w, a) in &current.workers {
                        assert!(
                            !(a.standby.contains(&t) && a.active.contains(&t)),
                            "{w}: standby beside its own active"
                        );
                    }
                    // Sticky: a task whose worker is still ready and within
                    // share, and not given to a heavy task, does not move.
                    if let Some(old) = previous.active_owner(t) {
                        let taken = isolated
                            .iter()
                            .any(|i| current.active_owner(*i) == Some(old));
                        if ready.contains(old) && owners[0] != old && !taken {
                            assert!(
                                previous.workers[old].active.len()
                                    > current.workers.get(old).map_or(0, |a| a.active.len()),
                                "task {t} moved off {old} without reason"
                            );
                        }
                    }
                }
                // The first n − 1 distinct heavy tasks are alone; the other
                // workers are balanced within one.
                let mut alone = BTreeSet::new();
                for t in &isolated {
                    if alone.len() + 1 < ready.len() && !alone.contains(t) {
                        let owner = current.active_owner(*t).unwrap();
                        assert_eq!(current.workers[owner].active, BTreeSet::from([*t]));
                        alone.insert(*t);
                    }
                }
                if !ready.is_empty() {
                    let counts: Vec<usize> = current
                        .workers
                        .values()
                        .filter(|a| !a.active.iter().any(|t| alone.contains(t)))
                        .map(|a| a.active.len())
                        .collect();
                    assert!(
                        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
                        "balanced within one: {counts:?}"
                    );
                }
                assert!(current.epoch >= previous.epoch);
            }
        }
    }
}
