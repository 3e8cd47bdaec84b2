//! Runs the autoscaler for every StreamApp with `spec.autoscaling.mode`
//! `Lag` or `DryRun`: each poll interval it measures lag, decides, and
//! writes the decision to the status (`status.autoscaling`, `status.lag`).
//! Under `Lag` the reconcile applies it (scale-up: pods first, then the
//! placement moves tasks to them; scale-down: the placement moves tasks off
//! the leaving pods first, then the reconcile removes them). Only the
//! leader runs it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{EventType, Reporter};
use kube::{Client, ResourceExt};
use millrace_crds::{AutoscalingMode, AutoscalingStatus, StreamApp};

use crate::error::{Error, Result};
use crate::supervise::{guarded, lock};

use super::measure::{self, Reading};
use super::policy::{decide, Memory, Mode, Sample};
use crate::metrics::Metrics;
use crate::model;
use crate::per_app::PerApp;
use crate::workers::{Observations, WorkerObservation};

pub struct Autoscaler {
    pub client: Client,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// The placement driver's latest observation of the workers, reused.
    workers: Arc<Observations>,
    /// The previous reading per app (namespace, name): rates need two.
    readings: Mutex<HashMap<(String, String), Reading>>,
    /// Per worker pod (namespace, pod): its busy counter at the previous poll.
    busy: Mutex<HashMap<(String, String), BusyMark>>,
    /// Lag readings at once: each makes a client of its app's group, and a
    /// thousand apps due together must not make a thousand clients.
    kafka_reads: tokio::sync::Semaphore,
}

/// Lag readings in flight at once (each takes tens of milliseconds).
const KAFKA_READS: usize = 4;

impl Autoscaler {
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        workers: Arc<Observations>,
    ) -> Self {
        Self {
            client,
            reporter,
            metrics,
            workers,
            readings: Mutex::default(),
            busy: Mutex::default(),
            kafka_reads: tokio::sync::Semaphore::new(KAFKA_READS),
        }
    }
}

/// (time s, busy ns, loops) of one worker at one poll.
type BusyMark = (f64, u64, u32);

/// Polls every StreamApp forever, each apart ([`PerApp`]), as the
/// controllers' watches last saw them: listing a thousand apps every second
/// cost the API server more than everything else the operator asks.
pub async fn run(autoscaler: Arc<Autoscaler>, apps: crate::scope::Apps) {
    let per_app = PerApp::default();
    loop {
        per_app.start_each(apps.state(), |app| {
            let autoscaler = autoscaler.clone();
            async move {
                if let Err(e) = guarded(poll(&autoscaler, &app)).await {
                    autoscaler.metrics.driver_failed("autoscaling", &e);
                    tracing::warn!(app = %app.name_any(), kind = e.metric_label(), "autoscaling: {e}");
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn now_s() -> f64 {
    millrace_crds::worker_status::unix_ms() as f64 / 1000.0
}

/// Lag of apps without autoscaling is measured this often (for
/// `kubectl get streamapps` and the metrics).
const OFF_INTERVAL_S: f64 = 10.0;

async fn poll(a: &Autoscaler, app: &StreamApp) -> Result<()> {
    let Some(tasks) = app.status.as_ref().and_then(|s| s.tasks) else {
        return Ok(());
    };
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let spec = app
        .spec
        .autoscaling
        .as_ref()
        .filter(|s| s.mode != AutoscalingMode::Off);
    let mut problems = Vec::new();
    let settings = spec.map(|s| {
        let mut settings = model::autoscaling_settings(&mut problems, s);
        settings.policy.rate_limit = app
            .spec
            .pipeline
            .as_ref()
            .and_then(|p| p.max_records_per_second)
            .map(|r| r as f64);
        settings
    });
    if !problems.is_empty() {
        // The reconcile reports them as Degraded.
        return Ok(());
    }
    let status = app.status.clone().unwrap_or_default();
    let previous = status.autoscaling.clone();
    let now = now_s();
    let key = (app.namespace().unwrap_or_default(), app.name_any());
    let last = match &settings {
        Some(_) => previous
            .as_ref()
            .and_then(|p| p.last_poll_time.as_ref())
            .map(|t| t.0.as_millisecond() as f64 / 1000.0),
        None => lock(&a.readings).get(&key).map(|r| r.at_s),
    };
    let interval = settings
        .as_ref()
        .map_or(OFF_INTERVAL_S, |s| s.poll_interval.as_secs_f64());
    if last.is_some_and(|l| now - l < interval) {
        return Ok(());
    }

    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let name = app.name_any();
    let props = crate::reconcile::read::kafka_properties(&a.client, &namespace, &app.spec.kafka)
        .await
        .map_err(|d| Error::App(d.message))?;
    let group = model::application_id(app);
    let topics: Vec<String> = app
        .spec
        .source_topics()
        .iter()
        .map(|t| t.0.clone())
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    // Join tables exist (checked like the sources); repartition topics only
    // once a worker has created them.
    let (tables, internal) = crate::state_reports::read_topics(app, &group);
    let topics: Vec<String> = topics.into_iter().chain(tables).collect();
    let _reading_slot = a
        .kafka_reads
        .acquire()
        .await
        .map_err(|e| Error::Other(format!("measuring lag: {e}")))?;
    let reading = tokio::task::spawn_blocking(move || {
        measure::read(&props, &group, (&topics, &internal), tasks, now)
    })
    .await
    .map_err(|e| Error::Other(format!("measuring lag: {e}")))?
    .map_err(Error::Kafka)?;
    let before = lock(&a.readings).insert(key, reading.clone());
    let Some(settings) = settings else {
        // No autoscaling: report the lag only.
        let lag = reading.lag.iter().sum::<i64>();
        let label = crate::metrics::AppLabels {
            app: format!("{namespace}/{name}"),
        };
        a.metrics.lag.get_or_create(&label).set(lag);
        if status.lag != Some(lag) {
            crate::events::patch_status(&a.client, app, serde_json::json!({ "lag": lag })).await?;
        }
        return Ok(());
    };
    let busy = busy_fraction(a, &namespace, &name).await;
    let current = previous
        .as_ref()
        .map_or(status.desired_replicas, |p| p.decided);
    // Rates need two readings. A first reading decides only a wake from
    // zero (lag alone says enough); anything else waits one interval.
    let Some(before) = before else {
        if current != 0 {
            return Ok(());
        }
        return decide_and_report(
            a,
            app,
            &settings.policy,
            (&reading, None),
            None,
            current,
            previous,
        )
        .await;
    };
    decide_and_report(
        a,
        app,
        &settings.policy,
        (&reading, Some(&before)),
        busy,
        current,
        previous,
    )
    .await
}

/// The workers' mean busy fraction since the previous poll, from the busy
/// time each reports on `/tasks` (pods that restarted or did not answer
/// are left out). Rates are taken between the observations' own times, so
/// reusing the placement driver's observation does not skew them; one
/// already used gives no rate, so a fresh one is taken instead.
async fn busy_fraction(a: &Autoscaler, namespace: &str, app: &str) -> Option<f64> {
    let mut observation = a
        .workers
        .recent(namespace, app, a.workers.reuse_within())
        .await
        .ok()?;
    if already_used(a, namespace, &observation) {
        observation = a.workers.fresh(namespace, app).await.ok()?;
    }
    let now = observation.at_s;
    let (mut busy_ns, mut capacity_ns) = (0.0f64, 0.0f64);
    for pod in &observation.pods {
        let Some(report) = pod.status() else {
            continue;
        };
        let key = (namespace.to_string(), pod.name.clone());
        let entry = (now, report.busy_nanos, report.loops.max(1));
        let before = lock(&a.busy).insert(key, entry);
        if let Some((t, b, loops)) = before {
            if report.busy_nanos >= b && now > t {
                busy_ns += (report.busy_nanos - b) as f64;
                capacity_ns += (now - t) * 1e9 * loops as f64;
            }
        }
    }
    (capacity_ns > 0.0).then(|| (busy_ns / capacity_ns).min(1.0))
}

fn already_used(a: &Autoscaler, namespace: &str, observation: &WorkerObservation) -> bool {
    let busy = lock(&a.busy);
    observation.pods.iter().any(|pod| {
        busy.get(&(namespace.to_string(), pod.name.clone()))
            .is_some_and(|(t, _, _)| *t >= observation.at_s)
    })
}

async fn decide_and_report(
    a: &Autoscaler,
    app: &StreamApp,
    policy: &super::policy::Policy,
    (reading, before): (&Reading, Option<&Reading>),
    busy: Option<f64>,
    current: i32,
    previous: Option<AutoscalingStatus>,
) -> Result<()> {
    let n = reading.lag.len();
    let (input_rate, processing_rate) = match before {
        Some(b) => measure::rates(b, reading),
        None => (vec![0.0; n], vec![0.0; n]),
    };
    let sample = Sample {
        now_s: reading.at_s,
        tasks: n as i32,
        current,
        lag: reading.lag.clone(),
        input_rate,
        processing_rate,
        busy,
    };
    let mut memory: Memory = previous
        .as_ref()
        .and_then(|p| p.memory.as_deref())
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let decision = decide(policy, &sample, &mut memory);
    let total_lag = sample.total_lag();
    let input: f64 = sample.input_rate.iter().sum();
    let processed: f64 = sample.processing_rate.iter().sum();
    let app_label = format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any());
    a.metrics.record_autoscaling(
        &app_label,
        total_lag,
        input,
        processed,
        memory.capacity,
        decision.desired,
    );

    let mode = match policy.mode {
        Mode::DryRun => "DryRun",
        _ => "Lag",
    };
    let report = AutoscalingStatus {
        mode: mode.into(),
        decided: decision.desired,
        recommended: decision.recommended,
        reason: decision.reason.clone(),
        limited: decision.limited.clone(),
        input_rate: (input * 10.0).round() / 10.0,
        processing_rate: (processed * 10.0).round() / 10.0,
        capacity_per_replica: memory.capacity.map(|c| (c * 10.0).round() / 10.0),
        last_poll_time: Some(Time(Timestamp::now())),
        isolated_tasks: decision.isolated.clone(),
        memory: serde_json::to_string(&memory).ok(),
    };
    crate::events::patch_status(
        &a.client,
        app,
        serde_json::json!({ "autoscaling": merge_patch_of(&report), "lag": total_lag }),
    )
    .await?;

    if decision.desired != current {
        let (reason, verb) = match (policy.mode, decision.desired > current) {
            (Mode::DryRun, _) => ("WouldScale", "would scale"),
            (_, true) => ("ScaledUp", "scaling"),
            (_, false) => ("ScaledDown", "scaling"),
        };
        let note = format!(
            "{verb} {current} → {}: {} (lag {total_lag}, input {input:.0}/s, processed {processed:.0}/s, {})",
            decision.desired,
            decision.reason,
            memory
                .capacity
                .map_or("capacity not learned yet".into(), |c| format!("capacity {c:.0}/s per worker")),
        );
        tracing::info!(app = %app.name_any(), "{note}");
        publish(a, app, EventType::Normal, reason, note).await;
    }
    let was_limited = previous.as_ref().and_then(|p| p.limited.clone());
    if decision.limited.is_some() && decision.limited != was_limited {
        publish(
            a,
            app,
            EventType::Warning,
            "ScalingLimited",
            decision.limited.clone().unwrap_or_default(),
        )
        .await;
    }
    Ok(())
}

/// A merge patch keeps every field it does not mention: fields that are
/// empty now are named as null, so a cleared `limited` (and with it the
/// ScalingLimited condition) or `isolatedTasks` does not linger.
fn merge_patch_of(report: &AutoscalingStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for key in ["limited", "capacityPerReplica", "isolatedTasks"] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    value
}

async fn publish(a: &Autoscaler, app: &StreamApp, type_: EventType, reason: &str, note: String) {
    crate::events::publish(
        &a.client,
        &a.reporter,
        app,
        type_,
        (reason, "Autoscale"),
        note,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_patch_clears_what_is_no_longer_set() {
        let cleared = merge_patch_of(&AutoscalingStatus::default());
        assert_eq!(cleared["limited"], serde_json::Value::Null);
        assert_eq!(cleared["isolatedTasks"], serde_json::Value::Null);
        assert!(cleared.as_object().unwrap().contains_key("limited"));
        let set = merge_patch_of(&AutoscalingStatus {
            limited: Some("stuck".into()),
            isolated_tasks: vec![3],
            ..Default::default()
        });
        assert_eq!(set["limited"], "stuck");
        assert_eq!(set["isolatedTasks"], serde_json::json!([3]));
    }
}
