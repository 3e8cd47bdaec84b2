//! The handoff protocol (design brief D2): how the operator turns a target
//! placement into a sequence of placement documents so that no task is ever
//! processed by two workers whose producers can both commit.
//!
//! Moving task T from worker A to worker B takes two documents:
//! 1. **revoke**: epoch r drops T from A's actives and records a [`Move`];
//!    T belongs to nobody.
//! 2. **grant**: once A has acknowledged an epoch ≥ r (it committed its
//!    open transaction, stopped consuming T, then acknowledged), or once A
//!    has been fenced (a producer with each of A's transactional ids was
//!    initialised, which aborts A's open transaction and makes every later
//!    commit of A's old producers fail), a later epoch puts T on B.
//!
//! Why no interleaving lets two unfenced producers commit T:
//! - The operator writes a grant only in [`step`], only for a task with no
//!   owner in the document and no pending move, and a task only loses its
//!   owner through a revoke that stays pending until the old owner
//!   acknowledged or was fenced. Fences are done (by the caller) before the
//!   document that relies on them is written, and the revoke they rely on
//!   was written before the fence. So when B may take T, A can no longer
//!   commit T with the producer it had.
//! - A worker re-reads the document from the API server after every
//!   `init_transactions`, before processing: a fenced A that starts a new
//!   producer sees at least the revoke (written before the fence) and drops
//!   T. Documents only grow in epoch and a worker ignores older ones, so a
//!   delayed watch event cannot hand T back.
//! - Writes are compare-and-swap on the ConfigMap's `resourceVersion`: two
//!   operator replicas in a leadership overlap cannot interleave documents.
//!
//! The randomized test at the bottom plays workers, the broker's producer
//! epochs and the operator in random orders and checks the claim after every
//! event.

use std::collections::{BTreeMap, BTreeSet};

use millrace_crds::placement::{Move, PlacementDoc};

use crate::placement::Placement;

/// What the operator sees of the workers at one moment.
pub struct Observation<'a> {
    /// Per worker that answered, the last epoch it has fully applied.
    pub acknowledged: &'a BTreeMap<String, u64>,
    /// Workers that are ready, not terminating, and answered the last poll.
    pub available: &'a BTreeSet<String>,
    pub now_ms: u64,
    /// How long an available worker may take to acknowledge a revoke.
    pub ack_timeout_ms: u64,
}

/// Something the step did, for Events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// A task without a previous owner was placed.
    Placed { task: i32, worker: String },
    /// A revoke was written: the move waits for `from`.
    Revoked { task: i32, from: String, to: String },
    /// The move finished: the task is on `to`.
    Moved {
        task: i32,
        from: String,
        to: String,
        fenced: bool,
        handoff_ms: u64,
    },
    /// `worker` must be fenced before the new document is written.
    Fenced { worker: String, reason: String },
}

/// One transition: fence these workers first, then write `doc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fence: BTreeSet<String>,
    pub doc: PlacementDoc,
    pub happenings: Vec<Happening>,
}

/// The placement the document is heading to: its actives plus the pending
/// moves at their destinations. The placement function plans from this, so
/// an in-flight move counts as done and is not planned twice.
pub fn intended(doc: &PlacementDoc) -> Placement {
    let mut workers = doc.workers.clone();
    for m in &doc.moves {
        workers
            .entry(m.to.clone())
            .or_default()
            .active
            .insert(m.task);
    }
    Placement {
        epoch: doc.epoch,
        workers,
    }
}

/// The next document towards `target`, or `None` when there is nothing to do
/// now (everything placed, or every move still waiting for its worker).
pub fn step(
    doc: &PlacementDoc,
    target: &Placement,
    tasks: i32,
    o: &Observation<'_>,
) -> Option<Step> {
    let mut next = doc.clone();
    next.epoch = doc.epoch + 1;
    let mut fence = BTreeSet::new();
    let mut happenings = Vec::new();

    // 1. Finish the moves whose old owner let go, or fence it when it is
    //    gone or too slow. The grant goes where the target wants the task
    //    now, which may differ from the move's plan.
    next.moves.clear();
    for m in &doc.moves {
        let released = o
            .acknowledged
            .get(&m.from)
            .is_some_and(|e| *e >= m.revoked_epoch);
        let waited = o.now_ms.saturating_sub(m.since_ms);
        let gone = !o.available.contains(&m.from);
        let fenced = !released && (gone || waited >= o.ack_timeout_ms);
        if !released && !fenced {
            next.moves.push(m.clone());
            continue;
        }
        if fenced && fence.insert(m.from.clone()) {
            let reason = if gone {
                "not ready or not answering".to_string()
            } else {
                format!(
                    "no acknowledgement of epoch {} within {} ms",
                    m.revoked_epoch, o.ack_timeout_ms
                )
            };
            happenings.push(Happening::Fenced {
                worker: m.from.clone(),
                reason,
            });
        }
        match target.active_owner(m.task) {
            Some(to) if o.available.contains(to) => {
                next.workers
                    .entry(to.to_string())
                    .or_default()
                    .active
                    .insert(m.task);
                happenings.push(Happening::Moved {
                    task: m.task,
                    from: m.from.clone(),
                    to: to.to_string(),
                    fenced,
                    handoff_ms: waited,
                });
            }
            // Nowhere to go yet: the task stays free (its old owner is out).
            _ => {}
        }
    }

    // 2. Start the moves the target asks for; place free tasks directly.
    let pending: BTreeSet<i32> = next.moves.iter().map(|m| m.task).collect();
    for task in 0..tasks {
        if pending.contains(&task) {
            continue;
        }
        let Some(to) = target
            .active_owner(task)
            .filter(|w| o.available.contains(*w))
        else {
            continue;
        };
        match next.active_owner(task).map(str::to_string) {
            None => {
                next.workers
                    .entry(to.to_string())
                    .or_default()
                    .active
                    .insert(task);
                happenings.push(Happening::Placed {
                    task,
                    worker: to.to_string(),
                });
            }
            Some(from) if from != to => {
                next.workers.get_mut(&from).unwrap().active.remove(&task);
                next.moves.push(Move {
                    task,
                    from: from.clone(),
                    to: to.to_string(),
                    revoked_epoch: next.epoch,
                    since_ms: o.now_ms,
                });
                happenings.push(Happening::Revoked {
                    task,
                    from,
                    to: to.to_string(),
                });
            }
            Some(_) => {}
        }
    }

    // 3. Standbys and warm-ups follow the target: they never process, so
    //    they need no handoff.
    for (name, a) in next.workers.iter_mut() {
        let wanted = target.workers.get(name);
        a.standby = wanted.map(|w| w.standby.clone()).unwrap_or_default();
        a.warmup = wanted.map(|w| w.warmup.clone()).unwrap_or_default();
    }
    for (name, w) in &target.workers {
        if !(w.standby.is_empty() && w.warmup.is_empty()) {
            let a = next.workers.entry(name.clone()).or_default();
            a.standby = w.standby.clone();
            a.warmup = w.warmup.clone();
        }
    }
    // 4. Forget workers that hold nothing and owe nothing.
    let owing: BTreeSet<&String> = next.moves.iter().map(|m| &m.from).collect();
    let keep: BTreeSet<String> = next
        .workers
        .iter()
        .filter(|(w, a)| {
            !a.active.is_empty()
                || !a.standby.is_empty()
                || !a.warmup.is_empty()
                || owing.contains(w)
        })
        .map(|(w, _)| w.clone())
        .collect();
    next.workers.retain(|w, _| keep.contains(w));

    let unchanged = next.workers == doc.workers && next.moves == doc.moves;
    if unchanged && fence.is_empty() {
        return None;
    }
    Some(Step {
        fence,
        doc: next,
        happenings,
    })
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
