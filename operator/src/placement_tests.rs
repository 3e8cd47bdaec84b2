use super::*;

fn workers(names: &[&str]) -> Vec<Worker> {
    names.iter().map(|n| Worker::ready(n)).collect()
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
        max_warmups: 8,
    })
}

/// A stateful app's next placement, standbys 0.
fn place_stateful(
    tasks: i32,
    ws: &[Worker],
    current: &Placement,
    caught_up: &BTreeMap<i32, BTreeSet<String>>,
    max_warmups: usize,
) -> Placement {
    next_placement(&Inputs {
        tasks,
        workers: ws,
        current,
        standby_replicas: 0,
        stateful: true,
        caught_up,
        isolated: &[],
        max_warmups,
    })
}

/// Every warm-up copy of `p` counted caught up.
fn warmed(p: &Placement) -> BTreeMap<i32, BTreeSet<String>> {
    let mut caught_up: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for (w, a) in &p.workers {
        for t in a.warmup.iter().chain(&a.standby) {
            caught_up.entry(*t).or_default().insert(w.clone());
        }
    }
    caught_up
}

fn leaving(mut w: Worker) -> Worker {
    w.leaving = true;
    w
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
    let cold = place_stateful(4, &ws, &p1, &BTreeMap::new(), 8);
    assert_eq!(
        cold.workers["a"].active.len(),
        4,
        "a keeps its tasks while b warms up"
    );
    assert_eq!(cold.workers["b"].warmup.len(), 2);
    let moved = place_stateful(4, &ws, &cold, &warmed(&cold), 8);
    assert_eq!(actives(&moved), [2, 2]);
    assert!(moved.workers["b"].warmup.is_empty());
}

#[test]
fn standbys_avoid_the_active_and_prefer_other_zones() {
    let ws = vec![
        Worker {
            name: "a".into(),
            ready: true,
            leaving: false,
            zone: Some("z1".into()),
        },
        Worker {
            name: "b".into(),
            ready: true,
            leaving: false,
            zone: Some("z1".into()),
        },
        Worker {
            name: "c".into(),
            ready: true,
            leaving: false,
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
                    leaving: false,
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

#[test]
fn a_scale_down_hands_stateful_tasks_to_warm_copies_before_the_pod_leaves() {
    let abc = workers(&["a", "b", "c"]);
    let p = place_stateful(6, &abc, &Placement::default(), &BTreeMap::new(), 8);
    assert_eq!(actives(&p), [2, 2, 2]);
    let on_c = p.workers["c"].active.clone();
    let shrinking = vec![abc[0].clone(), abc[1].clone(), leaving(abc[2].clone())];
    let warming = place_stateful(6, &shrinking, &p, &BTreeMap::new(), 8);
    assert_eq!(warming.workers["c"].active, on_c, "c keeps its tasks");
    let warmups: BTreeSet<i32> = ["a", "b"]
        .iter()
        .flat_map(|w| warming.workers[*w].warmup.clone())
        .collect();
    assert_eq!(warmups, on_c, "while a and b warm them up");
    assert_eq!(
        place_stateful(6, &shrinking, &warming, &BTreeMap::new(), 8),
        warming,
        "nothing changes until the copies catch up"
    );
    let moved = place_stateful(6, &shrinking, &warming, &warmed(&warming), 8);
    assert!(
        !moved.workers.contains_key("c"),
        "c holds nothing: it can go"
    );
    assert_eq!(actives(&moved), [3, 3]);
    // Caught-up standbys take the tasks at once, without a warm-up.
    let standbys: BTreeMap<i32, BTreeSet<String>> = on_c
        .iter()
        .zip(["a", "b"])
        .map(|(t, w)| (*t, BTreeSet::from([w.to_string()])))
        .collect();
    let at_once = place_stateful(6, &shrinking, &p, &standbys, 8);
    assert!(!at_once.workers.contains_key("c"));
    for (t, copies) in &standbys {
        assert!(copies.contains(at_once.active_owner(*t).unwrap()));
    }
}

#[test]
fn a_leaving_pod_that_died_or_a_stateless_one_gives_its_tasks_up_at_once() {
    let abc = workers(&["a", "b", "c"]);
    let p = place_stateful(6, &abc, &Placement::default(), &BTreeMap::new(), 8);
    let mut dead = leaving(abc[2].clone());
    dead.ready = false;
    let gone = place_stateful(
        6,
        &[abc[0].clone(), abc[1].clone(), dead],
        &p,
        &BTreeMap::new(),
        8,
    );
    assert_eq!(
        actives(&gone),
        [3, 3],
        "a failed pod's tasks are placed now"
    );
    let shrinking = vec![abc[0].clone(), abc[1].clone(), leaving(abc[2].clone())];
    let stateless = place(6, &shrinking, &p, 0);
    assert_eq!(actives(&stateless), [3, 3], "nothing to warm up");
}

#[test]
fn warm_ups_are_bounded_and_keep_their_targets() {
    let one = workers(&["a"]);
    let p = place_stateful(8, &one, &Placement::default(), &BTreeMap::new(), 3);
    let four = workers(&["a", "b", "c", "d"]);
    let count = |p: &Placement| p.workers.values().map(|a| a.warmup.len()).sum::<usize>();
    let first = place_stateful(8, &four, &p, &BTreeMap::new(), 3);
    assert_eq!(count(&first), 3, "three warm-ups at once");
    assert_eq!(first.workers["a"].active.len(), 8);
    let again = place_stateful(8, &four, &first, &BTreeMap::new(), 3);
    assert_eq!(again, first, "the same three, on the same targets");
    let second = place_stateful(8, &four, &first, &warmed(&first), 3);
    assert_eq!(second.workers["a"].active.len(), 5, "the warm three moved");
    assert_eq!(count(&second), 3, "and the next three warm up");
    let mut p = second;
    for _ in 0..3 {
        p = place_stateful(8, &four, &p, &warmed(&p), 3);
    }
    assert_eq!(actives(&p), [2, 2, 2, 2]);
    assert_eq!(count(&p), 0);
}

/// Random scale-ups, scale-downs and pod losses of a stateful app whose
/// copies catch up at random: one active per task always, never on a new
/// or leaving worker unless it held it, warm-ups within the bound, and a
/// leaving worker empties once its copies are caught up.
#[test]
fn stateful_invariants_hold_over_random_histories() {
    let mut seed: u64 = 0xcafe;
    let mut rand = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _history in 0..200 {
        let tasks = 1 + rand(16) as i32;
        let max_warmups = 1 + rand(4) as usize;
        let standbys = rand(2) as usize;
        let mut ws: Vec<Worker> = vec![Worker::ready("w0")];
        let mut current = Placement::default();
        for step in 1..40 {
            match rand(5) {
                0 if ws.len() < 6 => ws.push(Worker::ready(&format!("w{step}"))),
                1 if ws.len() > 1 => {
                    let k = rand(ws.len() as u64) as usize;
                    ws[k].leaving = true;
                }
                2 if ws.len() > 1 => {
                    let k = rand(ws.len() as u64) as usize;
                    ws.remove(k);
                }
                _ => {}
            }
            // Leaving workers that hold nothing go, as the StatefulSet
            // shrinks only then.
            ws.retain(|w| {
                !w.leaving
                    || current
                        .workers
                        .get(&w.name)
                        .is_some_and(|a| !a.active.is_empty())
            });
            if ws.iter().all(|w| w.leaving) {
                ws.push(Worker::ready(&format!("w{step}")));
            }
            let caught_up = if rand(2) == 0 {
                warmed(&current)
            } else {
                BTreeMap::new()
            };
            let previous = current.clone();
            current = next_placement(&Inputs {
                tasks,
                workers: &ws,
                current: &previous,
                standby_replicas: standbys,
                stateful: true,
                caught_up: &caught_up,
                isolated: &[],
                max_warmups,
            });
            let leaving_names: BTreeSet<&str> = ws
                .iter()
                .filter(|w| w.leaving)
                .map(|w| w.name.as_str())
                .collect();
            let warmups: usize = current.workers.values().map(|a| a.warmup.len()).sum();
            assert!(warmups <= max_warmups, "{warmups} warm-ups > {max_warmups}");
            for t in 0..tasks {
                let owner = current.active_owner(t).expect("every task has an active");
                let owners = current
                    .workers
                    .values()
                    .filter(|a| a.active.contains(&t))
                    .count();
                assert_eq!(owners, 1, "task {t} has one active");
                let old = previous.active_owner(t);
                if leaving_names.contains(owner) {
                    assert_eq!(old, Some(owner), "a leaving worker gains no task");
                }
                if let Some(old) = old.filter(|o| *o != owner && ws.iter().any(|w| w.name == *o)) {
                    assert!(
                        caught_up.get(&t).is_some_and(|c| c.contains(owner))
                            || !previous.workers[old].active.contains(&t),
                        "task {t} moved {old} → {owner} to a cold copy while {old} runs"
                    );
                }
                for w in &leaving_names {
                    if let Some(a) = current.workers.get(*w) {
                        assert!(
                            a.standby.is_empty() && a.warmup.is_empty(),
                            "{w}: copy on a leaving worker"
                        );
                    }
                }
            }
        }
        // Once copies catch up, the leaving workers empty.
        for _ in 0..=tasks {
            current = place_stateful(tasks, &ws, &current, &warmed(&current), max_warmups);
        }
        for w in ws.iter().filter(|w| w.leaving) {
            assert!(
                current
                    .workers
                    .get(&w.name)
                    .is_none_or(|a| a.active.is_empty()),
                "{} still holds tasks",
                w.name
            );
        }
    }
}
