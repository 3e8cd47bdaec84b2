//! The reconcile loop: read → validate → check Kafka → build → apply →
//! status, plus the finalizer that honours `deletionPolicy: Delete`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use millrace_crds::{DeletionPolicy, KafkaSpec, StreamApp, StreamAppStatus};

use crate::apply::{apply_all, FIELD_MANAGER};
use crate::autoscale::policy::Mode;
use crate::conditions::{self, Degradation, Workers};
use crate::error::{Error, Result};
use crate::kafka;
use crate::metrics::Metrics;
use crate::model::{self, AppModel, Defaults};

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
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);

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
            let existing = sts_api.get_opt(&app.name_any()).await?;
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

    let tasks = match check_kafka(&ctx.client, &model).await {
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
            let existing = sts_api.get_opt(&model.name).await?;
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
    let (replicas, capped) = desired_replicas(&model, tasks, decided);
    let existing = sts_api.get_opt(&model.name).await?;
    // Pods leaving keep running until their tasks have moved (the placement
    // driver stops placing on them first): no task waits for a fence.
    let running = replicas.max(drain_floor(&ctx.client, &model, replicas).await);
    let objects = crate::build::desired(&model, running);
    let applied = apply_all(&ctx.client, &namespace, &objects).await?;

    match &existing {
        None => {
            event(
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created {replicas} worker(s) for {} task(s)",
                    tasks.unwrap_or(0)
                ),
            )
            .await
        }
        Some(old) => {
            let old_replicas = old.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            // Once per change of the StatefulSet: while leaving pods hand
            // their tasks over, it stays above the desired count.
            if old_replicas != running {
                let note = if running == replicas {
                    format!("workers {old_replicas} → {running}")
                } else {
                    format!("workers {old_replicas} → {running} (→ {replicas} once the leaving workers' tasks have moved)")
                };
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
        replicas,
        capped,
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

/// Workers wanted: the spec's count, or under `Lag` autoscaling the
/// autoscaler's last decision (`status.desiredReplicas`, the spec's count
/// within the bounds before the first one), never more than there are
/// tasks: an extra worker would own nothing.
pub fn desired_replicas(
    model: &AppModel,
    tasks: Option<i32>,
    decided: Option<i32>,
) -> (i32, Option<String>) {
    let wanted = match &model.autoscaling {
        Some(a) if a.policy.mode == Mode::Lag => {
            let max = a.policy.max_replicas.unwrap_or(i32::MAX);
            decided
                .unwrap_or(model.replicas)
                .clamp(a.policy.min_replicas.min(max), max)
        }
        _ => model.replicas,
    };
    match tasks {
        Some(t) if wanted > t => (
            t,
            Some(format!(
                "{wanted} workers requested, capped at the {t} task(s) of the source topics"
            )),
        ),
        _ => (wanted, None),
    }
}

/// Workers that must stay while tasks leave them: one past the highest
/// ordinal that still holds a task (or owes a handoff) in the placement.
/// 0 when there is nowhere for tasks to go (scaling to zero).
async fn drain_floor(client: &Client, model: &AppModel, replicas: i32) -> i32 {
    if replicas == 0 {
        return 0;
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &model.namespace);
    let name = millrace_crds::placement::placement_config_map(&model.name);
    let Ok(Some(cm)) = api.get_opt(&name).await else {
        return 0;
    };
    let Some(doc) = cm
        .data
        .as_ref()
        .and_then(|d| d.get(millrace_crds::placement::PLACEMENT_KEY))
        .and_then(|j| millrace_crds::placement::PlacementDoc::parse(j).ok())
    else {
        return 0;
    };
    crate::placement::holding_ordinals(&doc, &model.name).map_or(0, |o| o + 1)
}

async fn check_kafka(client: &Client, model: &AppModel) -> Result<Option<i32>, Degradation> {
    let sources = model.source_topics();
    if sources.is_empty() {
        return Ok(None);
    }
    let props = kafka_properties(client, &model.namespace, &model.kafka).await?;
    let mut topics = sources.clone();
    topics.extend(model.output_topics());
    let counts = tokio::task::spawn_blocking(move || kafka::partition_counts(&props, &topics))
        .await
        .map_err(|e| Degradation {
            reason: "KafkaUnavailable",
            message: e.to_string(),
        })?
        .map_err(|e| Degradation {
            reason: "KafkaUnavailable",
            message: format!(
                "cannot reach Kafka at {}: {e}; retrying",
                model.kafka.bootstrap_servers
            ),
        })?;
    kafka::check_topics(
        model.source_field(),
        &sources,
        &model.output_topics(),
        &counts,
    )
}

/// The admin client properties of `spec`, with the Secrets it names read
/// from `namespace`.
pub(crate) async fn kafka_properties(
    client: &Client,
    namespace: &str,
    spec: &KafkaSpec,
) -> Result<BTreeMap<String, String>, Degradation> {
    let secrets = read_secrets(client, namespace, &kafka::secret_names(spec)).await?;
    kafka::admin_properties(spec, &secrets)
}

pub(crate) async fn read_secrets(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<kafka::Secrets, Degradation> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    for name in names {
        match api.get_opt(name).await {
            Ok(Some(s)) => {
                secrets.insert(name.clone(), s);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Degradation {
                    reason: "SecretUnreadable",
                    message: format!("reading Secret '{name}': {e}"),
                })
            }
        }
    }
    Ok(secrets)
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
    let props = kafka_properties(&ctx.client, &namespace, &app.spec.kafka)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model(replicas: i32, autoscaling: Option<model::Autoscaling>) -> AppModel {
        let app: StreamApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "millrace.dev/v1alpha1", "kind": "StreamApp",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"kafka": {"bootstrapServers": "k:9092"}, "image": "x", "source": {"topics": ["in"]}, "replicas": replicas}
        }))
        .unwrap();
        let mut m = model::validate(&app, &Defaults::default()).unwrap();
        m.autoscaling = autoscaling;
        m
    }

    #[test]
    fn replicas_are_capped_at_the_task_count() {
        assert_eq!(desired_replicas(&model(3, None), Some(8), None), (3, None));
        let (n, why) = desired_replicas(&model(10, None), Some(4), None);
        assert_eq!(n, 4);
        assert!(why.unwrap().contains("capped at the 4 task(s)"));
        assert_eq!(
            desired_replicas(&model(4, None), Some(4), None),
            (4, None),
            "no off-by-one at the cap"
        );
        assert_eq!(
            desired_replicas(&model(2, None), None, None),
            (2, None),
            "unknown tasks: no cap"
        );
    }

    #[test]
    fn autoscaling_bounds_apply() {
        let lag = |min, max| model::Autoscaling {
            policy: crate::autoscale::policy::Policy {
                min_replicas: min,
                max_replicas: max,
                ..Default::default()
            },
            poll_interval: Duration::from_secs(10),
        };
        assert_eq!(
            desired_replicas(&model(1, Some(lag(2, Some(5)))), Some(8), None).0,
            2,
            "before a decision: the spec's count within the bounds"
        );
        assert_eq!(
            desired_replicas(&model(1, Some(lag(2, Some(5)))), Some(8), Some(4)).0,
            4
        );
        assert_eq!(
            desired_replicas(&model(1, Some(lag(2, Some(5)))), Some(8), Some(9)).0,
            5
        );
        assert_eq!(
            desired_replicas(&model(1, Some(lag(0, None))), Some(8), Some(0)).0,
            0,
            "scaled to zero"
        );
        let (n, why) = desired_replicas(&model(1, Some(lag(1, None))), Some(3), Some(6));
        assert_eq!(n, 3, "never above the task count: {why:?}");
        let mut dry = lag(2, Some(5));
        dry.policy.mode = Mode::DryRun;
        assert_eq!(
            desired_replicas(&model(1, Some(dry)), Some(8), Some(4)).0,
            1,
            "DryRun acts on nothing"
        );
    }
}
