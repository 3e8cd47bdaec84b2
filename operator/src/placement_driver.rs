//! Drives task placement for every StreamApp (design brief D1, D2): every
//! poll it observes the worker pods and their `/tasks` reports (shared with
//! the autoscaler, [`crate::workers`]), reads the placement ConfigMap, runs
//! the placement function ([`crate::placement`]) and the handoff state
//! machine ([`crate::handoff`]), fences workers when a step asks for it,
//! and only then writes the next document.
//!
//! Separate from the reconcile: placement reacts to pods and progress every
//! second, while the reconcile reacts to the spec; neither re-triggers the
//! other. Only the leader runs it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::runtime::events::{EventType, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use millrace_crds::placement::{placement_config_map, PlacementDoc, ENDPOINTS_KEY, PLACEMENT_KEY};
use millrace_crds::worker_status::unix_ms;
use millrace_crds::worker_status::{StoppedTask, WorkerStatus};
use millrace_crds::{AutoscalingMode, PlacementSummary, StreamApp};

use crate::error::{Error, Result};
use crate::handoff::{self, Happening, Observation};
use crate::metrics::Metrics;
use crate::per_app::PerApp;
use crate::placement::{next_placement, Inputs, Worker};
use crate::supervise::{guarded, lock};
use crate::workers::{Observations, ObservedPod};
use crate::{kafka, model, state_reports};

pub struct Driver {
    pub client: Client,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// How long an available worker may take to acknowledge a revoke
    /// before it is fenced.
    pub ack_timeout: Duration,
    /// Where each poll's observation is left for the autoscaler.
    workers: Arc<Observations>,
    memory: Mutex<Memory>,
}

/// What the driver remembers between polls (lost on restart: it only
/// feeds the pause figures).
#[derive(Default)]
struct Memory {
    /// The last report of each worker pod (namespace, pod).
    reports: HashMap<(String, String), WorkerStatus>,
    /// Moved tasks whose first commit on the new worker is awaited.
    pauses: Vec<Pause>,
    /// Apps (namespace, name) whose last poll saw no worker pod and a
    /// placement with no worker and no move: nothing to place, revoke or
    /// fence until a pod appears, so their placement is not even read (a
    /// thousand apps scaled to zero cost a thousand reads a second).
    idle: HashSet<(String, String)>,
}

struct Pause {
    namespace: String,
    /// Apps of one namespace each measure only their own moves: another's
    /// poll would drop them as moved to a pod it does not see.
    app: String,
    task: i32,
    from: String,
    to: String,
    /// The epoch that granted the task to `to`.
    epoch: u64,
    /// The old owner's last commit of the task (Unix ms), when known.
    last_commit_ms: Option<u64>,
}

impl Driver {
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        ack_timeout: Duration,
        workers: Arc<Observations>,
    ) -> Self {
        Self {
            client,
            reporter,
            metrics,
            ack_timeout,
            workers,
            memory: Mutex::default(),
        }
    }
}

/// While a task is between workers, polls come this often: a moved task
/// waits for the poll that sees its old owner's acknowledgement.
const MOVING_INTERVAL: Duration = Duration::from_millis(200);

/// Polls every StreamApp forever, each apart ([`PerApp`]).
pub async fn run(driver: Arc<Driver>, interval: Duration, apps: crate::scope::Apps) {
    let per_app = PerApp::default();
    // Set by any app's poll with moves in flight since the last round.
    let moving = Arc::new(AtomicBool::new(false));
    loop {
        per_app.start_each(apps.state(), |app| {
            let (driver, moving) = (driver.clone(), moving.clone());
            async move {
                match guarded(drive(&driver, &app)).await {
                    Ok(m) => {
                        moving.fetch_or(m, Ordering::Relaxed);
                    }
                    Err(e) => {
                        driver.metrics.driver_failed("placement", &e);
                        tracing::warn!(app = %app.name_any(), kind = e.metric_label(), "placement: {e}")
                    }
                }
            }
        });
        let pauses_awaited = !lock(&driver.memory).pauses.is_empty();
        let wait = if moving.swap(false, Ordering::Relaxed) || pauses_awaited {
            MOVING_INTERVAL.min(interval)
        } else {
            interval
        };
        tokio::time::sleep(wait).await;
    }
}

/// One poll of one app; `true` while moves are in flight.
async fn drive(driver: &Driver, app: &StreamApp) -> Result<bool> {
    let Some(tasks) = app.status.as_ref().and_then(|s| s.tasks) else {
        return Ok(false);
    };
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let name = app.name_any();
    // Always a fresh observation: moves wait on what workers acknowledge.
    let observation = driver.workers.fresh(&namespace, &name).await?;
    let seen = &observation.pods;
    let app_key = (namespace.clone(), name.clone());
    if seen.is_empty() && lock(&driver.memory).idle.contains(&app_key) {
        return Ok(false);
    }
    for (reason, note) in remember_reports(driver, &namespace, seen) {
        publish(driver, app, EventType::Normal, reason, note).await;
    }
    report_stopped(driver, app, seen).await?;
    state_reports::record_internal_topics(&driver.client, app, seen).await?;
    let available: BTreeSet<String> = seen
        .iter()
        .filter(|s| s.ready && s.status().is_some())
        .map(|s| s.name.clone())
        .collect();
    let acknowledged: BTreeMap<String, u64> = seen
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.status()?.applied_epoch?)))
        .collect();
    // Pods past the desired count are leaving: nothing new is placed on
    // them and their tasks move away while they still answer (stateful
    // ones to caught-up copies), so a scale-down hands tasks over instead
    // of fencing or restoring.
    let desired = app.status.as_ref().map(|s| s.desired_replicas);
    let workers: Vec<Worker> = seen
        .iter()
        .map(|s| Worker {
            name: s.name.clone(),
            ready: available.contains(&s.name),
            leaving: !crate::scale::stays(&name, &s.name, desired),
            zone: None,
        })
        .collect();
    let state = app.spec.state.clone().unwrap_or_default();
    let standbys = state.standby_replicas.max(0) as usize;

    let isolated = isolated_tasks(app);
    // A stateful task moves to a live worker only once that worker's copy
    // of its state is caught up: a warm-up first, many at once.
    let stateful = state_reports::has_state_stores(app);
    let caught_up = state_reports::caught_up_copies(
        state.acceptable_lag(),
        seen.iter()
            .filter_map(|s| Some((s.name.as_str(), s.status()?))),
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(driver.client.clone(), &namespace);
    let cm_name = placement_config_map(&name);
    // Where each worker answers queries, as seen now: written with the
    // document, or alone when only an address changed.
    let endpoints = query_endpoints(seen);
    let (mut doc, mut version, written_endpoints) = match config_maps.get_opt(&cm_name).await? {
        Some(cm) => {
            let data = |key: &str| cm.data.as_ref().and_then(|d| d.get(key)).cloned();
            let doc = PlacementDoc::parse(&data(PLACEMENT_KEY).unwrap_or_default())
                .map_err(|e| Error::Placement(format!("ConfigMap {cm_name}: {e}")))?;
            let written: Option<BTreeMap<String, String>> =
                data(ENDPOINTS_KEY).and_then(|j| serde_json::from_str(&j).ok());
            (doc, cm.resource_version(), written.unwrap_or_default())
        }
        None => (adopt(seen), None, BTreeMap::new()),
    };
    let mut endpoints_stale = written_endpoints != endpoints;
    let idle =
        seen.is_empty() && doc.workers.is_empty() && doc.moves.is_empty() && !endpoints_stale;
    {
        let mut memory = lock(&driver.memory);
        match idle {
            true => memory.idle.insert(app_key),
            false => memory.idle.remove(&app_key),
        };
    }

    // A few steps per poll: a revoke of a lost worker, its fence and the
    // grant can all happen in one poll.
    for _ in 0..4 {
        let target = next_placement(&Inputs {
            tasks,
            workers: &workers,
            current: &handoff::intended(&doc),
            standby_replicas: standbys,
            stateful,
            caught_up: &caught_up,
            isolated: &isolated,
            max_warmups: state.max_warmups(),
        });
        let observation = Observation {
            acknowledged: &acknowledged,
            available: &available,
            now_ms: unix_ms(),
            ack_timeout_ms: driver.ack_timeout.as_millis() as u64,
        };
        let Some(step) = handoff::step(&doc, &target, tasks, &observation) else {
            break;
        };
        if !step.fence.is_empty() {
            fence(driver, app, &namespace, &step.fence).await?;
        }
        // Only after the fences: the document relies on them.
        version = Some(
            write(
                &config_maps,
                app,
                &cm_name,
                (&step.doc, &endpoints),
                version,
            )
            .await?,
        );
        endpoints_stale = false;
        record(driver, app, &namespace, &step.doc, &step.happenings).await;
        doc = step.doc;
    }
    if endpoints_stale && version.is_some() {
        write(&config_maps, app, &cm_name, (&doc, &endpoints), version).await?;
    }
    measure_pauses(driver, app, &namespace, seen).await;
    let state = state_reports::state_summary(seen.iter().filter_map(|s| s.status()));
    write_summary(driver, app, &doc, state).await?;
    Ok(!doc.moves.is_empty())
}

/// The last report of each worker: a task's pause is measured from its
/// last commit there, even when the worker no longer answers. Returns the
/// restore Events the change since the previous reports makes.
fn remember_reports(
    driver: &Driver,
    namespace: &str,
    seen: &[ObservedPod],
) -> Vec<(&'static str, String)> {
    let mut memory = lock(&driver.memory);
    let mut events = Vec::new();
    for s in seen {
        if let Some(r) = s.status() {
            let key = (namespace.to_string(), s.name.clone());
            let previous = memory.reports.get(&key);
            events.extend(state_reports::restore_events(
                &s.name,
                previous,
                r,
                unix_ms(),
            ));
            memory.reports.insert(key, r.clone());
        }
    }
    events
}

/// Tasks the workers report stopped at a record go to `status.stoppedTasks`
/// (the reconcile makes them a Degraded condition), each newly stopped one
/// with an Event. A task whose worker does not answer now keeps its last
/// report; one an answering worker runs and does not report is running.
async fn report_stopped(driver: &Driver, app: &StreamApp, seen: &[ObservedPod]) -> Result<()> {
    let previous = app
        .status
        .as_ref()
        .map(|s| s.stopped_tasks.as_slice())
        .unwrap_or_default();
    let stopped = stopped_tasks(previous, seen.iter().filter_map(|s| s.status()));
    if stopped == previous {
        return Ok(());
    }
    for s in stopped.iter().filter(|s| !previous.contains(s)) {
        publish(
            driver,
            app,
            EventType::Warning,
            "TaskStopped",
            s.to_string(),
        )
        .await;
    }
    crate::events::patch_status(
        &driver.client,
        app,
        serde_json::json!({ "stoppedTasks": stopped }),
    )
    .await?;
    Ok(())
}

/// What the workers that answered report stopped, and what `previous`
/// says of tasks none of them runs.
fn stopped_tasks<'a>(
    previous: &[StoppedTask],
    reports: impl Iterator<Item = &'a WorkerStatus>,
) -> Vec<StoppedTask> {
    let mut running = BTreeSet::new();
    let mut stopped: Vec<StoppedTask> = Vec::new();
    for report in reports {
        running.extend(report.tasks.iter().copied());
        stopped.extend(report.stopped.iter().cloned());
    }
    let unknown = previous
        .iter()
        .filter(|p| !running.contains(&p.task) && !stopped.iter().any(|s| s.task == p.task));
    stopped.extend(unknown.cloned().collect::<Vec<_>>());
    stopped.sort_by_key(|s| s.task);
    stopped.dedup_by_key(|s| s.task);
    stopped
}

/// Each worker's query address, of those that serve one.
fn query_endpoints(seen: &[ObservedPod]) -> BTreeMap<String, String> {
    seen.iter()
        .filter_map(|s| Some((s.name.clone(), s.query_address.clone()?)))
        .collect()
}

/// Without a document (first placement, or the ConfigMap was deleted), the
/// workers' own reports are the truth: what they process stays theirs, and
/// the epoch starts past any they have seen, so they accept what follows.
fn adopt(seen: &[ObservedPod]) -> PlacementDoc {
    let mut doc = PlacementDoc::default();
    for s in seen {
        let Some(report) = s.status() else { continue };
        doc.epoch = doc.epoch.max(report.applied_epoch.unwrap_or(0));
        let free: BTreeSet<i32> = report
            .tasks
            .iter()
            .copied()
            .filter(|t| doc.active_owner(*t).is_none())
            .collect();
        if !free.is_empty() {
            doc.workers.entry(s.name.clone()).or_default().active = free;
        }
    }
    doc
}

async fn fence(
    driver: &Driver,
    app: &StreamApp,
    namespace: &str,
    workers: &BTreeSet<String>,
) -> Result<()> {
    let props =
        crate::reconcile::read::kafka_properties(&driver.client, namespace, &app.spec.kafka)
            .await
            .map_err(|d| Error::App(d.message))?;
    let application_id = model::application_id(app);
    for worker in workers {
        let (props, id, w) = (props.clone(), application_id.clone(), worker.clone());
        let started = std::time::Instant::now();
        crate::leader::ensure_leading("fencing a worker");
        tokio::task::spawn_blocking(move || kafka::fence_worker(&props, &id, &w))
            .await
            .map_err(|e| Error::Other(format!("fencing {worker}: {e}")))?
            .map_err(|e| Error::Kafka(format!("fencing {worker}: {e}")))?;
        driver.metrics.fences.inc();
        tracing::info!(app = %app.name_any(), %worker, ms = started.elapsed().as_millis() as u64, "fenced");
    }
    Ok(())
}

/// Creates the ConfigMap, or replaces it only if nobody wrote it since we
/// read it (compare-and-swap on `resourceVersion`).
async fn write(
    api: &Api<ConfigMap>,
    app: &StreamApp,
    name: &str,
    (doc, endpoints): (&PlacementDoc, &BTreeMap<String, String>),
    version: Option<String>,
) -> Result<String> {
    let mut cm = ConfigMap {
        data: Some(BTreeMap::from([
            (
                PLACEMENT_KEY.to_string(),
                serde_json::to_string_pretty(doc)?,
            ),
            (ENDPOINTS_KEY.to_string(), serde_json::to_string(endpoints)?),
        ])),
        ..Default::default()
    };
    cm.metadata.name = Some(name.to_string());
    cm.metadata.labels = Some(BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            "placement".to_string(),
        ),
    ]));
    cm.metadata.owner_references = app.controller_owner_ref(&()).map(|mut o| {
        // Not the controller: placement writes must not trigger reconciles.
        o.controller = Some(false);
        vec![o]
    });
    crate::leader::ensure_leading("writing a placement");
    let written = match version {
        None => api.create(&PostParams::default(), &cm).await?,
        Some(v) => {
            cm.metadata.resource_version = Some(v);
            api.replace(name, &PostParams::default(), &cm).await?
        }
    };
    written.resource_version().ok_or_else(|| {
        Error::Placement(format!(
            "ConfigMap {name} written without a resourceVersion"
        ))
    })
}

/// Events, metrics and pause tracking for one step.
async fn record(
    driver: &Driver,
    app: &StreamApp,
    namespace: &str,
    doc: &PlacementDoc,
    happenings: &[Happening],
) {
    let mut notes: Vec<(EventType, &str, String)> = Vec::new();
    let mut placed: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for h in happenings {
        match h {
            Happening::Placed { task, worker } => placed.entry(worker).or_default().push(*task),
            Happening::Revoked { task, from, to } => {
                tracing::info!(app = %app.name_any(), task, %from, %to, epoch = doc.epoch, "revoked");
            }
            Happening::Moved {
                task,
                from,
                to,
                fenced,
                handoff_ms,
            } => {
                driver.metrics.moves.inc();
                driver
                    .metrics
                    .handoff_seconds
                    .observe(*handoff_ms as f64 / 1000.0);
                let how = if *fenced {
                    "after fencing"
                } else {
                    "acknowledged"
                };
                notes.push((
                    EventType::Normal,
                    "Moved",
                    format!(
                        "task {task} moved {from} → {to} in {handoff_ms} ms ({how}), epoch {}",
                        doc.epoch
                    ),
                ));
                let memory = &mut lock(&driver.memory);
                let report = memory.reports.get(&(namespace.to_string(), from.clone()));
                let last_commit_ms = report.and_then(|r| {
                    r.released
                        .get(task)
                        .copied()
                        .or_else(|| r.commits.get(task).map(|c| c.last_ms))
                });
                memory.pauses.push(Pause {
                    namespace: namespace.to_string(),
                    app: app.name_any(),
                    task: *task,
                    from: from.clone(),
                    to: to.clone(),
                    epoch: doc.epoch,
                    last_commit_ms,
                });
            }
            Happening::Fenced { worker, reason } => notes.push((
                EventType::Warning,
                "Fenced",
                format!("fenced {worker} ({reason}); its tasks move"),
            )),
        }
    }
    for (worker, tasks) in placed {
        notes.push((
            EventType::Normal,
            "Placed",
            format!("tasks {tasks:?} placed on {worker}, epoch {}", doc.epoch),
        ));
    }
    for (type_, reason, note) in notes {
        publish(driver, app, type_, reason, note).await;
    }
}

/// Pause of a moved task: its last commit on the old worker → its first
/// commit on the new one.
async fn measure_pauses(driver: &Driver, app: &StreamApp, namespace: &str, seen: &[ObservedPod]) {
    let mut measured = Vec::new();
    let name = app.name_any();
    {
        let mut memory = lock(&driver.memory);
        memory.pauses.retain(|p| {
            if p.namespace != namespace || p.app != name {
                return true;
            }
            let Some(s) = seen.iter().find(|s| s.name == p.to) else {
                return false;
            };
            let Some(report) = s.status() else {
                return true;
            };
            if report.applied_epoch.unwrap_or(0) < p.epoch {
                return true;
            }
            if !report.tasks.contains(&p.task) {
                // Moved on before committing anything here.
                return false;
            }
            match (report.commits.get(&p.task), p.last_commit_ms) {
                (Some(c), Some(last)) => {
                    measured.push((
                        p.task,
                        p.from.clone(),
                        p.to.clone(),
                        c.first_ms.saturating_sub(last),
                    ));
                    false
                }
                (Some(_), None) => false,
                (None, _) => true,
            }
        });
    }
    for (task, from, to, pause_ms) in measured {
        driver
            .metrics
            .task_pause_seconds
            .observe(pause_ms as f64 / 1000.0);
        tracing::info!(app = %app.name_any(), task, %from, %to, pause_ms, "task resumed");
        publish(
            driver,
            app,
            EventType::Normal,
            "TaskResumed",
            format!("task {task} resumed on {to} {pause_ms} ms after its last commit on {from}"),
        )
        .await;
    }
}

async fn write_summary(
    driver: &Driver,
    app: &StreamApp,
    doc: &PlacementDoc,
    state: Option<String>,
) -> Result<()> {
    let summary = PlacementSummary {
        epoch: doc.epoch as i64,
        tasks_per_worker: doc
            .workers
            .iter()
            .map(|(w, a)| (w.clone(), a.active.len() as i32))
            .collect(),
        moves_in_progress: doc.moves.len() as i32,
        state,
    };
    let previous = app.status.as_ref().and_then(|s| s.placement.as_ref());
    if previous == Some(&summary) {
        return Ok(());
    }
    let mut json = serde_json::to_value(&summary)?;
    // A merge patch merges maps: a worker that left needs an explicit null.
    for gone in previous
        .iter()
        .flat_map(|p| p.tasks_per_worker.keys())
        .filter(|w| !summary.tasks_per_worker.contains_key(*w))
    {
        json["tasksPerWorker"][gone] = serde_json::Value::Null;
    }
    crate::events::patch_status(
        &driver.client,
        app,
        serde_json::json!({ "placement": json }),
    )
    .await?;
    Ok(())
}

async fn publish(driver: &Driver, app: &StreamApp, type_: EventType, reason: &str, note: String) {
    crate::events::publish(
        &driver.client,
        &driver.reporter,
        app,
        type_,
        (reason, "Place"),
        note,
    )
    .await;
}

/// The autoscaler's heavy tasks, which get a worker each; only under
/// `Lag`, since `DryRun` changes nothing.
fn isolated_tasks(app: &StreamApp) -> Vec<i32> {
    let acting = app
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| a.mode == AutoscalingMode::Lag);
    match app.status.as_ref().and_then(|s| s.autoscaling.as_ref()) {
        Some(a) if acting => a.isolated_tasks.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(task: i32, offset: i64) -> StoppedTask {
        StoppedTask {
            task,
            topic: "orders".into(),
            partition: task,
            offset,
            step: "parse".into(),
            error: "bad".into(),
            since_ms: 1,
        }
    }

    fn report(tasks: &[i32], stopped: &[StoppedTask]) -> WorkerStatus {
        WorkerStatus {
            tasks: tasks.to_vec(),
            stopped: stopped.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn stopped_tasks_come_from_the_workers_that_answer_and_last_reports_of_the_rest() {
        let previous = [stop(1, 5), stop(4, 9)];
        // Task 1's worker answers and runs it again; task 4's is silent.
        let answering = [report(&[0, 1], &[]), report(&[2, 3], &[stop(2, 7)])];
        assert_eq!(
            stopped_tasks(&previous, answering.iter()),
            [stop(2, 7), stop(4, 9)]
        );
        assert!(stopped_tasks(&[], std::iter::empty()).is_empty());
    }
}
