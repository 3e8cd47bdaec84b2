//! What the placement driver learns from the workers' reports of a
//! stateful app: which copies of a task's state are caught up (for warm
//! moves), the one-line restore and standby summary `kubectl get
//! streamapps` shows, and the internal topics the workers created (for
//! deletion to find). Pure but for the status patch.

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use millrace_crds::identity::is_internal_topic;
use millrace_crds::worker_status::{RestoreState, WorkerStatus};
use millrace_crds::StreamApp;

use crate::error::Result;
use crate::workers::ObservedPod;

/// Whether the app's tasks keep state in stores (its pipeline has a
/// stateful step): their moves wait for warm copies.
pub fn has_state_stores(app: &StreamApp) -> bool {
    app.spec.pipeline.as_ref().is_some_and(|p| {
        p.steps
            .iter()
            .any(|s| s.dedup.is_some() || s.aggregate.is_some() || s.join.is_some())
    })
}

/// The join tables and the repartition topics of the app's pipeline, which
/// its tasks read beside the sources (none if it does not compile: then no
/// worker runs).
pub fn read_topics(app: &StreamApp, application_id: &str) -> (Vec<String>, Vec<String>) {
    let Some(compiled) = app
        .spec
        .pipeline
        .as_ref()
        .and_then(|p| millrace_pipeline::compile(p).ok())
    else {
        return Default::default();
    };
    let compiled = compiled.for_application(application_id);
    let names = |topics: Vec<millrace_crds::TopicName>| topics.into_iter().map(|t| t.0).collect();
    (
        names(compiled.table_topics()),
        names(compiled.repartition_topics()),
    )
}

/// Per task, the workers whose standby or warm-up copy is within
/// `acceptable_lag` records (`spec.state.acceptableLag`) of its
/// changelogs' ends, from their reports: a task moved to one restores that
/// much at most.
pub fn caught_up_copies<'a>(
    acceptable_lag: u64,
    reports: impl Iterator<Item = (&'a str, &'a WorkerStatus)>,
) -> BTreeMap<i32, BTreeSet<String>> {
    let mut caught_up: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for (worker, report) in reports {
        for (task, restore) in &report.restores {
            if restore.state == RestoreState::Standby && restore.records_remaining <= acceptable_lag
            {
                caught_up
                    .entry(*task)
                    .or_default()
                    .insert(worker.to_string());
            }
        }
    }
    caught_up
}

/// Restores older than this when first seen (an operator that restarted)
/// get no Event.
const RECENT_MS: u64 = 10 * 60 * 1000;

/// The restore Events of one worker's report against its previous one:
/// `Restoring` when a restore is first seen under way, `Restored` when one
/// that replayed records is first seen finished (a restore is one
/// `sinceMs`; a task started with nothing to replay gets neither).
pub fn restore_events(
    pod: &str,
    previous: Option<&WorkerStatus>,
    report: &WorkerStatus,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    let mut events = Vec::new();
    for (task, r) in &report.restores {
        let before = previous.and_then(|p| p.restores.get(task));
        let same_restore =
            before.is_some_and(|b| b.since_ms == r.since_ms && b.state != RestoreState::Standby);
        let kind = if r.full {
            "full: no usable local copy"
        } else {
            "from the local copy's offset"
        };
        let recent = now_ms.saturating_sub(r.since_ms) < RECENT_MS;
        match r.state {
            RestoreState::Restoring if !same_restore && recent => events.push((
                "Restoring",
                format!(
                    "task {task} on {pod}: restoring its state, {} changelog records to replay ({kind})",
                    r.records_remaining
                ),
            )),
            RestoreState::Active
                if r.records_restored > 0
                    && recent
                    && !(same_restore && before.is_some_and(|b| b.state == RestoreState::Active)) =>
            {
                let seconds = r.records_restored as f64 / r.rate.max(1) as f64;
                events.push((
                    "Restored",
                    format!(
                        "task {task} on {pod}: restored {} changelog records in {seconds:.1} s ({}/s, {kind})",
                        r.records_restored, r.rate
                    ),
                ));
            }
            _ => {}
        }
    }
    events
}

/// One line for `kubectl get streamapps`: the restores under way (and
/// records left), and how far the standby copies are behind at worst.
pub fn state_summary<'a>(reports: impl Iterator<Item = &'a WorkerStatus>) -> Option<String> {
    let (mut restoring, mut left, mut standbys, mut behind, mut seconds) = (0, 0, 0, 0, 0);
    for restore in reports.flat_map(|r| r.restores.values()) {
        match restore.state {
            RestoreState::Restoring => {
                restoring += 1;
                left += restore.records_remaining;
            }
            RestoreState::Standby => {
                standbys += 1;
                behind = behind.max(restore.records_remaining);
                seconds = seconds.max(restore.seconds_behind.unwrap_or(0));
            }
            RestoreState::Active => {}
        }
    }
    let restores = (restoring > 0).then(|| format!("{restoring} restoring, {left} records left"));
    let copies = (standbys > 0)
        .then(|| format!("{standbys} standbys ≤{behind} records, ≤{seconds}s behind"));
    match (restores, copies) {
        (None, None) => None,
        (Some(r), None) => Some(r),
        (None, Some(c)) => Some(format!("restored; {c}")),
        (Some(r), Some(c)) => Some(format!("{r}; {c}")),
    }
}

/// Internal topics the workers report using go to
/// `status.internalTopics`, where deletion finds them. Only names of the
/// app's own internal topics: a report can never make a user's topic
/// deletable.
pub async fn record_internal_topics(
    client: &Client,
    app: &StreamApp,
    seen: &[ObservedPod],
) -> Result<()> {
    let previous = app
        .status
        .as_ref()
        .map(|s| s.internal_topics.as_slice())
        .unwrap_or_default();
    let application_id = crate::model::application_id(app);
    let steps = crate::reconcile::step_names(app);
    let recorded = recorded_topics(previous, seen.iter().filter_map(|s| s.status()), |t| {
        is_internal_topic(&application_id, &steps, t)
    });
    if recorded == previous {
        return Ok(());
    }
    crate::events::patch_status(
        client,
        app,
        serde_json::json!({ "internalTopics": recorded }),
    )
    .await?;
    Ok(())
}

/// `previous` and what the reports add that `internal` accepts, sorted.
fn recorded_topics<'a>(
    previous: &[String],
    reports: impl Iterator<Item = &'a WorkerStatus>,
    internal: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut topics: BTreeSet<String> = previous.iter().cloned().collect();
    for report in reports {
        topics.extend(
            report
                .internal_topics
                .iter()
                .filter(|t| internal(t))
                .cloned(),
        );
    }
    topics.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_crds::worker_status::TaskRestore;

    #[test]
    fn a_copy_is_caught_up_when_its_standby_lag_is_acceptable() {
        let copy = |state, remaining| TaskRestore {
            state,
            records_remaining: remaining,
            ..TaskRestore::default()
        };
        let report = WorkerStatus {
            restores: [
                (0, copy(RestoreState::Standby, 10)),
                (1, copy(RestoreState::Standby, 1_001)),
                (2, copy(RestoreState::Active, 0)),
            ]
            .into(),
            ..WorkerStatus::default()
        };
        let found = caught_up_copies(1_000, [("w-1", &report)].into_iter());
        assert_eq!(
            found,
            [(0, ["w-1".to_string()].into())].into(),
            "only task 0's copy"
        );
    }

    #[test]
    fn a_restore_gets_one_event_when_seen_under_way_and_one_when_done() {
        let report = |task: i32, r: TaskRestore| WorkerStatus {
            restores: [(task, r)].into(),
            ..WorkerStatus::default()
        };
        let restoring = report(
            3,
            TaskRestore {
                state: RestoreState::Restoring,
                records_remaining: 15_000,
                full: true,
                since_ms: 1_000,
                ..TaskRestore::default()
            },
        );
        let done = report(
            3,
            TaskRestore {
                state: RestoreState::Active,
                records_restored: 15_000,
                full: true,
                since_ms: 1_000,
                rate: 5_000,
                ..TaskRestore::default()
            },
        );
        let now = 5_000;
        let events = restore_events("w-1", None, &restoring, now);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "Restoring");
        assert!(
            events[0].1.starts_with(
                "task 3 on w-1: restoring its state, 15000 changelog records to replay (full"
            ),
            "{}",
            events[0].1
        );
        assert!(
            restore_events("w-1", Some(&restoring), &restoring, now).is_empty(),
            "once"
        );
        let events = restore_events("w-1", Some(&restoring), &done, now);
        assert_eq!(
            events,
            [("Restored", "task 3 on w-1: restored 15000 changelog records in 3.0 s (5000/s, full: no usable local copy)".to_string())]
        );
        assert!(
            restore_events("w-1", Some(&done), &done, now).is_empty(),
            "once"
        );
        assert_eq!(
            restore_events("w-1", None, &done, now).len(),
            1,
            "a quick restore seen done"
        );
        assert!(
            restore_events("w-1", None, &done, 1_000 + RECENT_MS).is_empty(),
            "an old restore (the operator restarted) is not announced"
        );
        let nothing = report(
            3,
            TaskRestore {
                state: RestoreState::Active,
                since_ms: 1_000,
                ..TaskRestore::default()
            },
        );
        assert!(
            restore_events("w-1", None, &nothing, now).is_empty(),
            "nothing replayed"
        );
        let standby = report(
            3,
            TaskRestore {
                state: RestoreState::Standby,
                records_remaining: 9,
                ..TaskRestore::default()
            },
        );
        assert!(restore_events("w-1", Some(&restoring), &standby, now).is_empty());
    }

    #[test]
    fn the_state_column_says_what_restores_and_how_far_standbys_are_behind() {
        let report = |entries: &[(i32, RestoreState, u64)]| WorkerStatus {
            restores: entries
                .iter()
                .map(|(t, state, left)| {
                    let r = TaskRestore {
                        state: *state,
                        records_remaining: *left,
                        seconds_behind: Some(*left / 10),
                        ..TaskRestore::default()
                    };
                    (*t, r)
                })
                .collect(),
            ..WorkerStatus::default()
        };
        let a = report(&[
            (0, RestoreState::Restoring, 500),
            (1, RestoreState::Active, 0),
        ]);
        let b = report(&[
            (0, RestoreState::Standby, 30),
            (1, RestoreState::Standby, 7),
        ]);
        assert_eq!(
            state_summary([&a, &b].into_iter()).as_deref(),
            Some("1 restoring, 500 records left; 2 standbys ≤30 records, ≤3s behind")
        );
        assert_eq!(
            state_summary([&b].into_iter()).as_deref(),
            Some("restored; 2 standbys ≤30 records, ≤3s behind")
        );
        assert_eq!(
            state_summary(std::iter::empty()),
            None,
            "a stateless app shows nothing"
        );
    }

    #[test]
    fn created_internal_topics_are_recorded_once_and_other_names_never() {
        let report = WorkerStatus {
            internal_topics: vec!["app-count-changelog".into(), "users-topic".into()],
            ..WorkerStatus::default()
        };
        let internal = |t: &str| t.ends_with("-changelog");
        let recorded = recorded_topics(
            &["app-once-changelog".into()],
            [&report, &report].into_iter(),
            internal,
        );
        assert_eq!(recorded, vec!["app-count-changelog", "app-once-changelog"]);
        assert_eq!(
            recorded_topics(&recorded, std::iter::empty(), internal),
            recorded,
            "kept when no worker answers"
        );
    }
}
