//! The reconcile loop: validate ([`model`], pure) → read ([`read`]: the
//! StatefulSet, Kafka's partition counts, the placement document) → decide
//! ([`crate::scale`], pure) → build ([`crate::build`], pure) → apply →
//! status ([`conditions`], pure), plus the finalizer that honours
//! `deletionPolicy: Delete`.

pub mod read;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use millrace_crds::{DeletionPolicy, StreamApp, StreamAppStatus};

use crate::apply::{apply_all, FIELD_MANAGER};
use crate::conditions::{self, Degradation, Workers};
use crate::error::{Error, Result};
use crate::kafka;
use crate::metrics::Metrics;
use crate::model::{self, Defaults};
use crate::scale;

pub const FINALIZER: &str = "millrace.dev/kafka-data";
const REFRESH: Duration = Duration::from_secs(60);
const KAFKA_RETRY: Duration = Duration::from_secs(15);

pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
}

pub async fn reconcile(app: Arc<StreamApp>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let apps: Api<StreamApp> = Api::namespaced(ctx.client.clone(), &namespace);
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let reference = app.object_ref(&());
    let event = |type_: EventType, reason: &str, action: &str, note: String| {
        let recorder = recorder.clone();
        let reference = reference.clone();
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!("publishing event: {e}");
            }
        }
    };

    if app.metadata.deletion_timestamp.is_some() {
        return finalize(&apps, &app, &ctx).await;
    }
    sync_finalizer(&apps, &app).await?;

    let previous = app.status.clone().unwrap_or_default();

    let model = match model::validate(&app, &ctx.defaults) {
        Ok(m) => m,
        Err(problems) => {
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let d = Degradation {
                reason: "InvalidSpec",
                message,
            };
            if !was_degraded(&previous, d.reason) {
                event(
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    d.message.clone(),
                )
                .await;
            }
            // Workers of the last valid spec keep running: a bad edit must
            // not take a working app down.
            let existing = read::statefulset(&ctx.client, &namespace, &app.name_any()).await?;
            write_status(
                &apps,
                &app,
                &previous,
                existing.as_ref(),
                None,
                Some(&d),
                previous.desired_replicas,
                None,
            )
            .await?;
            return Ok(Action::await_change());
        }
    };

    let observed = read::read(&ctx.client, &model).await?;
    let existing = observed.statefulset;
    let tasks = match observed.tasks {
        Ok(tasks) => tasks,
        Err(d) => {
            if !was_degraded(&previous, d.reason) {
                event(
                    EventType::Warning,
                    d.reason,
                    "CheckKafka",
                    d.message.clone(),
                )
                .await;
            }
            write_status(
                &apps,
                &app,
                &previous,
                existing.as_ref(),
                previous.tasks,
                Some(&d),
                previous.desired_replicas,
                None,
            )
            .await?;
            return Ok(Action::requeue(KAFKA_RETRY));
        }
    };

    let decided = previous.autoscaling.as_ref().map(|a| a.decided);
    let replicas = scale::replicas(&scale::Inputs::new(
        &model,
        decided,
        tasks,
        observed.placement.as_ref(),
    ));
    let objects = crate::build::desired(&model, replicas.running);
    let applied = apply_all(&ctx.client, &namespace, &objects).await?;

    match &existing {
        None => {
            event(
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created {} worker(s) for {} task(s)",
                    replicas.desired,
                    tasks.unwrap_or(0)
                ),
            )
            .await
        }
        Some(old) => {
            let old_replicas = old.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if let Some(note) = replicas.scaled_note(old_replicas) {
                event(EventType::Normal, "Scaled", "Scale", note).await;
            }
            if config_hash(old) != config_hash(&applied) {
                event(
                    EventType::Normal,
                    "Updated",
                    "Apply",
                    "the spec changed; rolling the workers".into(),
                )
                .await;
            }
        }
    }
    if was_degraded(&previous, "") {
        event(
            EventType::Normal,
            "Recovered",
            "Reconcile",
            "the app is no longer degraded".into(),
        )
        .await;
    }
    write_status(
        &apps,
        &app,
        &previous,
        Some(&applied),
        tasks,
        None,
        replicas.desired,
        replicas.capped,
    )
    .await?;
    Ok(Action::requeue(REFRESH))
}

pub fn error_policy(_app: Arc<StreamApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    tracing::warn!("reconcile failed: {error}");
    Action::requeue(Duration::from_secs(10))
}

fn was_degraded(status: &StreamAppStatus, reason: &str) -> bool {
    status.conditions.iter().any(|c| {
        c.type_ == "Degraded" && c.status == "True" && (reason.is_empty() || c.reason == reason)
    })
}

fn config_hash(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(crate::build::CONFIG_HASH_ANNOTATION)
        .cloned()
}

#[allow(clippy::too_many_arguments)]
async fn write_status(
    apps: &Api<StreamApp>,
    app: &StreamApp,
    previous: &StreamAppStatus,
    sts: Option<&StatefulSet>,
    tasks: Option<i32>,
    degraded: Option<&Degradation>,
    desired: i32,
    capped: Option<String>,
) -> Result<()> {
    let workers = sts.map(workers_of);
    let observed = conditions::Observed {
        app_name: &app.name_any(),
        generation: app.metadata.generation.unwrap_or(0),
        desired,
        workers: workers.as_ref(),
        degraded,
        capped,
        scaling_limited: app
            .spec
            .autoscaling
            .as_ref()
            .filter(|a| a.mode != millrace_crds::AutoscalingMode::Off)
            .map(|_| {
                previous
                    .autoscaling
                    .as_ref()
                    .and_then(|a| a.limited.clone())
            }),
    };
    let w = workers.clone().unwrap_or_default();
    let status = StreamAppStatus {
        observed_generation: app.metadata.generation,
        conditions: conditions::conditions(&previous.conditions, &observed),
        replicas: w.replicas,
        ready_replicas: w.ready,
        desired_replicas: desired,
        replica_summary: Some(format!("{}/{}", w.ready, desired)),
        tasks,
        // Written by the autoscaler.
        lag: previous.lag,
        selector: Some(model::selector_string(&app.name_any())),
        application_id: Some(model::application_id(app)),
        last_scale_time: if previous.desired_replicas != desired
            && previous.observed_generation.is_some()
        {
            Some(Time(Timestamp::now()))
        } else {
            previous.last_scale_time.clone()
        },
        // Written by the placement driver and the autoscaler: compared,
        // never patched from here (this copy may be older than theirs).
        placement: previous.placement.clone(),
        autoscaling: previous.autoscaling.clone(),
    };
    if &status == previous {
        return Ok(());
    }
    let status = StreamAppStatus {
        placement: None,
        autoscaling: None,
        lag: None,
        ..status
    };
    let status = serde_json::to_value(&status).expect("status serialises");
    crate::events::merge_status(apps, &app.name_any(), status).await?;
    Ok(())
}

fn workers_of(sts: &StatefulSet) -> Workers {
    let status = sts.status.clone().unwrap_or_default();
    let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let generation_seen =
        status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let revisions_match =
        status.update_revision.is_some() && status.update_revision == status.current_revision;
    Workers {
        replicas: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        updated,
        rolled_out: generation_seen && (revisions_match || updated >= desired),
    }
}

/// Keeps the finalizer only while it has work to do: with `Retain` nothing
/// must happen on deletion, so deletion is not held up by the operator.
async fn sync_finalizer(apps: &Api<StreamApp>, app: &StreamApp) -> Result<()> {
    let has = app.finalizers().iter().any(|f| f == FINALIZER);
    let wants = app.spec.deletion_policy == DeletionPolicy::Delete;
    if has == wants {
        return Ok(());
    }
    let mut finalizers: Vec<String> = app
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if wants {
        finalizers.push(FINALIZER.into());
    }
    let patch = serde_json::json!({ "metadata": { "finalizers": finalizers, "resourceVersion": app.resource_version() } });
    apps.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// `deletionPolicy: Delete`: remove the app's internal topics and committed
/// offsets, then let the deletion finish. Owned objects go by garbage
/// collection either way.
async fn finalize(apps: &Api<StreamApp>, app: &StreamApp, ctx: &Context) -> Result<Action> {
    if !app.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = app.namespace().unwrap_or_default();
    let props = read::kafka_properties(&ctx.client, &namespace, &app.spec.kafka)
        .await
        .map_err(|d| Error::Finalizer(d.message))?;
    let application_id = model::application_id(app);
    let deleted = kafka::delete_app_data(&props, &application_id)
        .await
        .map_err(Error::Kafka)?;
    tracing::info!(app = %app.name_any(), ?deleted, "deleted the app's internal topics and consumer group");
    let finalizers: Vec<String> = app
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({ "metadata": { "finalizers": finalizers } });
    apps.patch(
        &app.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Action::await_change())
}
