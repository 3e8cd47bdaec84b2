//! The reconcile loop: validate ([`model`], pure) → read ([`read`]: the
//! StatefulSet, Kafka's partition counts, the placement document) → decide
//! ([`crate::scale`], pure) → build ([`crate::build`], pure) → apply →
//! status ([`conditions`], pure), plus the finalizer that honours
//! `deletionPolicy: Delete`.

mod finalize;
pub mod read;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::{Api, Client, ResourceExt};
use millrace_crds::{QueryEndpoint, StreamApp, StreamAppStatus};

use crate::apply::apply_all;
use crate::claims::{self, Claim};

use crate::conditions::{self, Degradation, Workers};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{self, Defaults};
use crate::scale;

pub use finalize::{step_names, FINALIZER, KEEP_DATA_ANNOTATION};
const REFRESH: Duration = Duration::from_secs(60);
const KAFKA_RETRY: Duration = Duration::from_secs(15);

pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Every StreamApp, as the controller's watch last saw it: whether the
    /// holder of an application id still exists.
    pub apps: crate::scope::Apps,
    /// Where the Leases recording who holds each application id live: the
    /// operator's own namespace.
    pub lease_namespace: String,
    /// How long `deletionPolicy: Delete` retries before it leaves the data
    /// and lets the deletion finish.
    pub finalizer_timeout: Duration,
    /// Per app, how long a failed reconcile waits.
    pub backoff: crate::backoff::Backoff,
}

fn backoff_key(app: &StreamApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

pub async fn reconcile(app: Arc<StreamApp>, ctx: Arc<Context>) -> Result<Action> {
    let key = backoff_key(&app);
    let result = reconcile_app(app, ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

async fn reconcile_app(app: Arc<StreamApp>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let apps: Api<StreamApp> = Api::namespaced(ctx.client.clone(), &namespace);

    if app.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_app(&backoff_key(&app));
        return finalize::finalize(&apps, &app, &ctx).await;
    }
    finalize::sync_finalizer(&apps, &app).await?;

    let previous = app.status.clone().unwrap_or_default();

    // Until the watch has listed every app, a holder of this app's id may
    // be missing from the store and its claim taken over.
    ctx.apps
        .wait_until_ready(&namespace)
        .await
        .map_err(|e| Error::Other(format!("the StreamApp watch stopped: {e}")))?;
    let model = match admit(&app, &ctx).await {
        Ok(m) => m,
        Err(Err(e)) => return Err(e),
        Err(Ok(d)) => {
            let existing = read::statefulset(&ctx.client, &namespace, &app.name_any()).await?;
            if d.reason == ID_IN_USE {
                // Workers from before the id was claimed (an operator
                // without claims) would fence the holder's: stopped.
                stop_workers(&ctx.client, &namespace, existing.as_ref()).await?;
            }
            let held = Held {
                existing: existing.as_ref(),
                tasks: None,
            };
            hold(&ctx, &apps, &app, &previous, held, &d, "Validate").await?;
            // A held id frees up without a change to this app.
            return Ok(match d.reason {
                ID_IN_USE => Action::requeue(REFRESH),
                _ => Action::await_change(),
            });
        }
    };

    let observed = read::read(&ctx.client, &model).await?;
    let existing = observed.statefulset;
    let tasks = match observed.tasks {
        Ok(tasks) => tasks,
        Err(d) => {
            let held = Held {
                existing: existing.as_ref(),
                tasks: previous.tasks,
            };
            hold(&ctx, &apps, &app, &previous, held, &d, "CheckKafka").await?;
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
    let applied = match apply_all(&ctx.client, &namespace, &objects).await? {
        Ok(applied) => applied,
        Err(d) => {
            let held = Held {
                existing: existing.as_ref(),
                tasks,
            };
            hold(&ctx, &apps, &app, &previous, held, &d, "Apply").await?;
            // Nothing will apply until the spec changes; a look now and
            // then rather than a retry every few seconds.
            return Ok(Action::requeue(REFRESH));
        }
    };

    match &existing {
        None => {
            publish(
                &ctx,
                &app,
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
                publish(&ctx, &app, EventType::Normal, "Scaled", "Scale", note).await;
            }
            if config_hash(old) != config_hash(&applied) {
                publish(
                    &ctx,
                    &app,
                    EventType::Normal,
                    "Updated",
                    "Apply",
                    "the spec changed; rolling the workers".into(),
                )
                .await;
            }
        }
    }
    // Stopped tasks degrade the app, though it runs as specified (their
    // Events come from the placement driver, which sees them first).
    let stopped = conditions::stopped_tasks(&previous.stopped_tasks);
    if stopped.is_none() && was_degraded(&previous, "") {
        publish(
            &ctx,
            &app,
            EventType::Normal,
            "Recovered",
            "Reconcile",
            "the app is no longer degraded".into(),
        )
        .await;
    }
    ctx.metrics
        .app_degraded(&backoff_key(&app), stopped.is_some());
    write_status(
        &apps,
        &app,
        &previous,
        Some(&applied),
        tasks,
        stopped.as_ref(),
        replicas.desired,
        replicas.capped,
    )
    .await?;
    Ok(Action::requeue(REFRESH))
}

const ID_IN_USE: &str = "ApplicationIdInUse";

/// Scales `sts` to zero workers, when it runs any.
pub(crate) async fn stop_workers(
    client: &Client,
    namespace: &str,
    sts: Option<&StatefulSet>,
) -> Result<()> {
    let Some(sts) = sts else { return Ok(()) };
    if sts.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
        return Ok(());
    }
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let zero = serde_json::json!({ "spec": { "replicas": 0 } });
    api.patch(
        &sts.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&zero),
    )
    .await?;
    Ok(())
}

/// What a degraded app's status reports of what runs.
struct Held<'a> {
    /// The StatefulSet of the last spec that applied, left as it is.
    existing: Option<&'a StatefulSet>,
    tasks: Option<i32>,
}

/// The app is degraded: its workers are left as they are (a bad edit must
/// not take a working app down), and the status and, once, an Event say
/// why.
async fn hold(
    ctx: &Context,
    apps: &Api<StreamApp>,
    app: &StreamApp,
    previous: &StreamAppStatus,
    held: Held<'_>,
    d: &Degradation,
    action: &str,
) -> Result<()> {
    ctx.metrics.app_degraded(&backoff_key(app), true);
    if !was_degraded(previous, d.reason) {
        publish(
            ctx,
            app,
            EventType::Warning,
            d.reason,
            action,
            d.message.clone(),
        )
        .await;
    }
    write_status(
        apps,
        app,
        previous,
        held.existing,
        held.tasks,
        Some(d),
        previous.desired_replicas,
        None,
    )
    .await
}

/// Publishes an Event about the app; failing to is only logged.
pub(crate) async fn publish(
    ctx: &Context,
    app: &StreamApp,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::events::publish(
        &ctx.client,
        &ctx.reporter,
        app,
        type_,
        (reason, action),
        note,
    )
    .await
}

/// The app's typed model, when its spec is valid and its application id is
/// its own (`Err(Ok(..))`: why it gets no new workers); `Err(Err(..))` when
/// the claim could not be checked.
async fn admit(
    app: &StreamApp,
    ctx: &Context,
) -> Result<model::AppModel, Result<Degradation, Error>> {
    let model = model::validate(app, &ctx.defaults).map_err(|problems| {
        Ok(Degradation {
            reason: "InvalidSpec",
            message: problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    })?;
    let claim = claims::claim(
        &ctx.client,
        &ctx.lease_namespace,
        &model.application_id,
        app,
        &ctx.apps,
    )
    .await
    .map_err(Err)?;
    if let Claim::HeldBy(holder) = claim {
        return Err(Ok(Degradation {
            reason: ID_IN_USE,
            message: format!(
                "the application id '{}' (spec.applicationId, or <namespace>.<name> when unset) is held by StreamApp {holder}, which claimed it first; two apps with one id would skip each other's records and fence each other. Re-create this app with another spec.applicationId",
                model.application_id
            ),
        }));
    }
    Ok(model)
}

pub fn error_policy(app: Arc<StreamApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let wait = ctx.backoff.failed(&backoff_key(&app));
    tracing::warn!(app = %backoff_key(&app), "reconcile failed: {error}; retrying in {wait:?}");
    Action::requeue(wait)
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
        // Recorded where internal topics are created.
        internal_topics: previous.internal_topics.clone(),
        // Written by the placement driver.
        stopped_tasks: previous.stopped_tasks.clone(),
        query_endpoint: app.spec.query_config().map(|q| QueryEndpoint {
            service: app.name_any(),
            port: q.port.into(),
        }),
    };
    if &status == previous {
        return Ok(());
    }
    let status = StreamAppStatus {
        placement: None,
        autoscaling: None,
        lag: None,
        internal_topics: Vec::new(),
        stopped_tasks: Vec::new(),
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
