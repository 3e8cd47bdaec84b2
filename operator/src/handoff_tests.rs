use super::*;
use crate::placement::{next_placement, Inputs, Worker};

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn target_for(doc: &PlacementDoc, tasks: i32, available: &BTreeSet<String>) -> Placement {
    let workers: Vec<Worker> = available.iter().map(|n| Worker::ready(n)).collect();
    next_placement(&Inputs {
        tasks,
        workers: &workers,
        current: &intended(doc),
        standby_replicas: 0,
        stateful: false,
        caught_up: &BTreeMap::new(),
        isolated: &[],
        max_warmups: 8,
    })
}

fn observe<'a>(
    acknowledged: &'a BTreeMap<String, u64>,
    available: &'a BTreeSet<String>,
    now_ms: u64,
) -> Observation<'a> {
    Observation {
        acknowledged,
        available,
        now_ms,
        ack_timeout_ms: 10_000,
    }
}

#[test]
fn first_placement_grants_directly() {
    let available = set(&["a", "b"]);
    let doc = PlacementDoc::default();
    let s = step(
        &doc,
        &target_for(&doc, 4, &available),
        4,
        &observe(&BTreeMap::new(), &available, 0),
    )
    .unwrap();
    assert!(s.fence.is_empty());
    assert_eq!(s.doc.epoch, 1);
    assert!(s.doc.moves.is_empty());
    assert_eq!(s.doc.active_of("a").len() + s.doc.active_of("b").len(), 4);
}

#[test]
fn a_move_waits_for_the_acknowledgement_then_grants() {
    let one = set(&["a"]);
    let doc = PlacementDoc::default();
    let doc = step(
        &doc,
        &target_for(&doc, 4, &one),
        4,
        &observe(&BTreeMap::new(), &one, 0),
    )
    .unwrap()
    .doc;
    let two = set(&["a", "b"]);
    let target = target_for(&doc, 4, &two);
    let revoke = step(&doc, &target, 4, &observe(&BTreeMap::new(), &two, 0)).unwrap();
    assert_eq!(revoke.doc.moves.len(), 2, "two tasks leave a");
    assert!(
        revoke.doc.active_of("b").is_empty(),
        "nothing granted before a lets go"
    );
    let revoked = revoke.doc;
    // a has not acknowledged yet: nothing to do.
    let acks = BTreeMap::from([("a".to_string(), revoked.epoch - 1)]);
    assert_eq!(
        step(
            &revoked,
            &target_for(&revoked, 4, &two),
            4,
            &observe(&acks, &two, 5_000)
        ),
        None
    );
    let acks = BTreeMap::from([("a".to_string(), revoked.epoch)]);
    let grant = step(
        &revoked,
        &target_for(&revoked, 4, &two),
        4,
        &observe(&acks, &two, 6_000),
    )
    .unwrap();
    assert!(grant.fence.is_empty());
    assert_eq!(grant.doc.active_of("b").len(), 2);
    assert!(grant.doc.moves.is_empty());
    assert!(grant.happenings.iter().any(|h| matches!(
        h,
        Happening::Moved {
            fenced: false,
            handoff_ms: 6_000,
            ..
        }
    )));
}

#[test]
fn a_silent_owner_is_fenced_after_the_timeout_and_a_lost_one_at_once() {
    let two = set(&["a", "b"]);
    let doc = PlacementDoc::default();
    let doc = step(
        &doc,
        &target_for(&doc, 2, &two),
        2,
        &observe(&BTreeMap::new(), &two, 0),
    )
    .unwrap()
    .doc;
    // b is lost: its task is revoked, then b is fenced right away.
    let only_a = set(&["a"]);
    let revoked = step(
        &doc,
        &target_for(&doc, 2, &only_a),
        2,
        &observe(&BTreeMap::new(), &only_a, 0),
    )
    .unwrap()
    .doc;
    assert_eq!(revoked.moves.len(), 1);
    let s = step(
        &revoked,
        &target_for(&revoked, 2, &only_a),
        2,
        &observe(&BTreeMap::new(), &only_a, 1),
    )
    .unwrap();
    assert_eq!(s.fence, set(&["b"]));
    assert_eq!(s.doc.active_of("a").len(), 2);
    // An available owner that does not acknowledge is fenced after the timeout.
    let doc = s.doc;
    let back = set(&["a", "b"]);
    let revoked = step(
        &doc,
        &target_for(&doc, 2, &back),
        2,
        &observe(&BTreeMap::new(), &back, 100),
    )
    .unwrap()
    .doc;
    let early = step(
        &revoked,
        &target_for(&revoked, 2, &back),
        2,
        &observe(&BTreeMap::new(), &back, 9_000),
    );
    assert_eq!(early, None, "still within the timeout");
    let late = step(
        &revoked,
        &target_for(&revoked, 2, &back),
        2,
        &observe(&BTreeMap::new(), &back, 10_100),
    )
    .unwrap();
    assert_eq!(late.fence, set(&["a"]));
    assert_eq!(late.doc.active_of("b").len(), 1);
}

/// A worker process as the protocol sees it.
#[derive(Default, Clone)]
struct Proc {
    alive: bool,
    stopped: bool,
    ready: bool,
    /// The producer epoch its transactional id had when it initialised.
    producer: u64,
    applied: u64,
    tasks: BTreeSet<i32>,
}

struct World {
    tasks: i32,
    /// The broker: current producer epoch per transactional id.
    broker: BTreeMap<String, u64>,
    procs: BTreeMap<String, Proc>,
    /// Every document written, by epoch (the watch replays them in order).
    history: Vec<PlacementDoc>,
    acknowledged: BTreeMap<String, u64>,
    /// Fences done, document not written yet.
    pending: Option<Step>,
    now_ms: u64,
}

impl World {
    fn doc(&self) -> &PlacementDoc {
        self.history.last().unwrap()
    }

    fn available(&self) -> BTreeSet<String> {
        self.procs
            .iter()
            .filter(|(_, p)| p.alive && !p.stopped && p.ready)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// init_transactions, then re-read the placement before processing.
    fn initialise(&mut self, w: &str) {
        let epoch = self.broker.entry(w.to_string()).or_default();
        *epoch += 1;
        let epoch = *epoch;
        let doc = self.doc().clone();
        let p = self.procs.get_mut(w).unwrap();
        p.producer = epoch;
        p.tasks = doc.active_of(w);
        p.applied = doc.epoch;
    }

    /// A commit: fails as fenced when another producer took the id.
    fn commit(&mut self, w: &str) {
        if self.procs[w].producer != self.broker[w] {
            self.initialise(w);
        }
    }

    fn apply(&mut self, w: &str, doc: &PlacementDoc) {
        if doc.epoch <= self.procs[w].applied {
            return;
        }
        // Releases commit first; a fenced commit re-reads instead.
        self.commit(w);
        let p = self.procs.get_mut(w).unwrap();
        if doc.epoch > p.applied {
            p.tasks = doc.active_of(w);
            p.applied = doc.epoch;
        }
    }

    fn check(&self) {
        for t in 0..self.tasks {
            let live: Vec<&String> = self
                .procs
                .iter()
                .filter(|(n, p)| p.alive && p.tasks.contains(&t) && p.producer == self.broker[*n])
                .map(|(n, _)| n)
                .collect();
            assert!(live.len() <= 1, "task {t} can be committed by {live:?}");
        }
    }
}

/// Random interleavings of operator steps (fence and write apart), watch
/// deliveries (in order or jumping to the newest), commits, crashes,
/// SIGSTOP/SIGCONT, readiness flips and time: at no point can two workers
/// with live producers commit one task. Then, left alone, every task ends up
/// owned by exactly one worker.
#[test]
fn no_interleaving_lets_two_live_producers_commit_a_task() {
    let mut seed: u64 = 0xfe11ce;
    let mut rand = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let names: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    for _history in 0..300 {
        let tasks = 1 + rand(8) as i32;
        let mut world = World {
            tasks,
            broker: BTreeMap::new(),
            procs: BTreeMap::new(),
            history: vec![PlacementDoc::default()],
            acknowledged: BTreeMap::new(),
            pending: None,
            now_ms: 0,
        };
        for n in &names {
            world.procs.insert(n.clone(), Proc::default());
        }
        let start = |world: &mut World, n: &str| {
            let p = world.procs.get_mut(n).unwrap();
            (p.alive, p.stopped, p.ready) = (true, false, true);
            world.initialise(n);
        };
        start(&mut world, &names[0]);
        for _event in 0..400 {
            let n = names[rand(names.len() as u64) as usize].clone();
            match rand(10) {
                // The operator polls the workers that answer.
                0 => {
                    for a in world.available() {
                        world
                            .acknowledged
                            .insert(a.clone(), world.procs[&a].applied);
                    }
                }
                // The operator plans and fences...
                1 if world.pending.is_none() => {
                    let available = world.available();
                    let doc = world.doc().clone();
                    let target = target_for(&doc, tasks, &available);
                    let obs = Observation {
                        acknowledged: &world.acknowledged,
                        available: &available,
                        now_ms: world.now_ms,
                        ack_timeout_ms: 10_000,
                    };
                    if let Some(s) = step(&doc, &target, tasks, &obs) {
                        for f in &s.fence {
                            *world.broker.entry(f.clone()).or_default() += 1;
                        }
                        world.pending = Some(s);
                    }
                }
                // ...and writes later.
                2 => {
                    if let Some(s) = world.pending.take() {
                        world.history.push(s.doc);
                    }
                }
                // A watch event reaches a running worker.
                3 | 4 if world.procs[&n].alive && !world.procs[&n].stopped => {
                    let applied = world.procs[&n].applied as usize;
                    let doc = if rand(2) == 0 {
                        world.history.get(applied + 1).cloned()
                    } else {
                        world.history.last().cloned()
                    };
                    if let Some(doc) = doc {
                        world.apply(&n, &doc);
                    }
                }
                5 if world.procs[&n].alive && !world.procs[&n].stopped => world.commit(&n),
                6 => match rand(3) {
                    0 => world.procs.get_mut(&n).unwrap().alive = false,
                    _ => start(&mut world, &n),
                },
                7 if world.procs[&n].alive => {
                    let p = world.procs.get_mut(&n).unwrap();
                    p.stopped = !p.stopped;
                }
                8 => {
                    let p = world.procs.get_mut(&n).unwrap();
                    p.ready = !p.ready;
                }
                _ => world.now_ms += 3_000,
            }
            world.check();
        }
        // Left alone with every worker healthy, the placement converges.
        if let Some(s) = world.pending.take() {
            world.history.push(s.doc);
        }
        for n in &names {
            if !world.procs[n].alive {
                start(&mut world, n);
            }
            let p = world.procs.get_mut(n).unwrap();
            (p.stopped, p.ready) = (false, true);
        }
        for _round in 0..10 {
            for n in &names {
                let doc = world.doc().clone();
                world.apply(n, &doc);
            }
            for a in world.available() {
                world
                    .acknowledged
                    .insert(a.clone(), world.procs[&a].applied);
            }
            let available = world.available();
            let doc = world.doc().clone();
            let target = target_for(&doc, tasks, &available);
            let obs = observe(&world.acknowledged, &available, world.now_ms);
            if let Some(s) = step(&doc, &target, tasks, &obs) {
                for f in &s.fence {
                    *world.broker.entry(f.clone()).or_default() += 1;
                }
                world.history.push(s.doc);
            }
            world.check();
        }
        let doc = world.doc();
        assert!(doc.moves.is_empty(), "moves left: {:?}", doc.moves);
        for t in 0..tasks {
            assert!(doc.active_owner(t).is_some(), "task {t} unplaced");
        }
    }
}
