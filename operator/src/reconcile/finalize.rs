//! `deletionPolicy: Delete`: on deletion, remove the app's internal topics
//! (those Millrace recorded creating and named as internal, never a user's
//! topic) and its committed offsets, then let the deletion finish.
//!
//! A deletion that cannot reach Kafka (its Secret already gone with the
//! namespace, the cluster down) is retried, but not forever: after the
//! operator's finalizer timeout, or at once with the annotation
//! `millrace.dev/keep-kafka-data: "true"`, the data is left, a Warning
//! Event says what was left, and the app goes. Leaving data loses nothing;
//! a finalizer that never ends would hold the namespace forever.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use millrace_crds::{DeletionPolicy, StreamApp};

use super::{publish, read, stop_workers, Context};
use crate::apply::FIELD_MANAGER;
use crate::claims::{self, Claim};
use crate::error::{Error, Result};
use crate::{kafka, model};

pub const FINALIZER: &str = "millrace.dev/kafka-data";

/// Set to `"true"` on a StreamApp being deleted (or before) to let it go
/// without deleting its Kafka data.
pub const KEEP_DATA_ANNOTATION: &str = "millrace.dev/keep-kafka-data";

/// What the finalizer did about the data.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Not tried, and why (the annotation; the id held by another app).
    Skipped(String),
    Tried(Result<(), String>),
}

/// What a deletion attempt leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The data is gone: remove the finalizer.
    Deleted,
    /// Leave the data and remove the finalizer, saying why.
    Leave(String),
    /// Try again later.
    Retry(String),
}

/// `waited`: since the deletion was asked for.
pub fn next(attempt: Attempt, waited: Duration, timeout: Duration) -> Next {
    match attempt {
        Attempt::Skipped(why) => Next::Leave(why),
        Attempt::Tried(Ok(())) => Next::Deleted,
        Attempt::Tried(Err(e)) if waited >= timeout => Next::Leave(format!(
            "deleting failed for {}s, past the operator's finalizer timeout ({}s): {e}",
            waited.as_secs(),
            timeout.as_secs()
        )),
        Attempt::Tried(Err(e)) => Next::Retry(e),
    }
}

/// Keeps the finalizer only while it has work to do: with `Retain` nothing
/// must happen on deletion, so deletion is not held up by the operator.
pub async fn sync_finalizer(apps: &Api<StreamApp>, app: &StreamApp) -> Result<()> {
    let has = app.finalizers().iter().any(|f| f == FINALIZER);
    let wants = app.spec.deletion_policy == DeletionPolicy::Delete;
    if has == wants {
        return Ok(());
    }
    let mut finalizers = others(app);
    if wants {
        finalizers.push(FINALIZER.into());
    }
    set_finalizers(apps, app, finalizers).await
}

/// Writes the app's finalizers at the version read, so a finalizer another
/// controller added meanwhile is not dropped (the write fails and is retried).
async fn set_finalizers(
    apps: &Api<StreamApp>,
    app: &StreamApp,
    finalizers: Vec<String>,
) -> Result<()> {
    let patch = serde_json::json!({ "metadata": {
        "finalizers": finalizers,
        "resourceVersion": app.resource_version(),
    } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    apps.patch(&app.name_any(), &params, &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn others(app: &StreamApp) -> Vec<String> {
    app.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

pub async fn finalize(apps: &Api<StreamApp>, app: &StreamApp, ctx: &Context) -> Result<Action> {
    if !app.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let application_id = model::application_id(app);
    let recorded = app
        .status
        .as_ref()
        .map(|s| s.internal_topics.clone())
        .unwrap_or_default();
    let internal = kafka::deletable_topics(&application_id, &step_names(app), &recorded);
    let keep = app
        .annotations()
        .get(KEEP_DATA_ANNOTATION)
        .is_some_and(|v| v == "true");
    // An app that never held its id (another app did) owns no data under
    // it: deleting the group would delete the holder's offsets.
    let claim = claims::holds(&ctx.client, &ctx.lease_namespace, &application_id, app).await?;
    let attempt = match claim {
        _ if keep => Attempt::Skipped(format!("the {KEEP_DATA_ANNOTATION} annotation is set")),
        Claim::HeldBy(holder) => Attempt::Skipped(format!(
            "the application id is held by StreamApp {holder}: the group and its offsets are that app's"
        )),
        Claim::Mine => Attempt::Tried(delete(app, ctx, &application_id, &internal).await),
    };
    let waited = app
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(Duration::ZERO, |t| {
            Duration::from_secs(Timestamp::now().duration_since(t.0).as_secs().max(0) as u64)
        });
    let what = format!("consumer group '{application_id}' and internal topics {internal:?}");
    let (type_, reason, note) = match next(attempt, waited, ctx.finalizer_timeout) {
        Next::Retry(e) => return Err(Error::Finalizer(e)),
        Next::Deleted => (
            EventType::Normal,
            "KafkaDataDeleted",
            format!("deleted the {what}"),
        ),
        Next::Leave(why) => (
            EventType::Warning,
            "KafkaDataLeft",
            format!("left the {what} in Kafka: {why}"),
        ),
    };
    claims::release(&ctx.client, &ctx.lease_namespace, &application_id, app).await?;
    // The Event once the finalizer is gone, so a failed write does not
    // repeat it.
    set_finalizers(apps, app, others(app)).await?;
    tracing::info!(app = %app.name_any(), reason, "{note}");
    publish(ctx, app, type_, reason, "Finalize", note).await;
    Ok(Action::await_change())
}

/// The names of the app's pipeline steps: internal topics are named by
/// them. A custom image declares none (it has no internal topics yet).
pub fn step_names(app: &StreamApp) -> Vec<String> {
    app.spec
        .pipeline
        .as_ref()
        .map(|p| {
            p.steps
                .iter()
                .enumerate()
                .map(|(i, s)| millrace_pipeline::step_name(i, s))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the app's workers, then deletes its data. Workers still running
/// would commit again right after the group is deleted (and recreate it):
/// until the StatefulSet has no pod left, this is a retry.
async fn delete(
    app: &StreamApp,
    ctx: &Context,
    application_id: &str,
    internal: &[String],
) -> Result<(), String> {
    let namespace = app.namespace().unwrap_or_default();
    let sts = read::statefulset(&ctx.client, &namespace, &app.name_any())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(sts) = sts {
        stop_workers(&ctx.client, &namespace, Some(&sts))
            .await
            .map_err(|e| e.to_string())?;
        let running = sts.status.as_ref().map_or(0, |s| s.replicas);
        if running > 0 {
            return Err(format!(
                "waiting for the app's {running} worker(s) to stop, so that none commits after its offsets are deleted"
            ));
        }
    }
    let props = read::kafka_properties(&ctx.client, &namespace, &app.spec.kafka)
        .await
        .map_err(|d| d.message)?;
    kafka::delete_app_data(&props, application_id, internal).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_deletion_is_retried_until_the_timeout_then_the_data_is_left() {
        let timeout = Duration::from_secs(300);
        let failed = || Attempt::Tried(Err("unreachable".into()));
        assert_eq!(
            next(Attempt::Tried(Ok(())), Duration::ZERO, timeout),
            Next::Deleted
        );
        assert_eq!(
            next(failed(), Duration::from_secs(299), timeout),
            Next::Retry("unreachable".into())
        );
        let Next::Leave(why) = next(failed(), timeout, timeout) else {
            panic!("left at the timeout");
        };
        assert!(
            why.contains("finalizer timeout (300s): unreachable"),
            "{why}"
        );
        assert_eq!(
            next(Attempt::Skipped("kept".into()), Duration::ZERO, timeout),
            Next::Leave("kept".into()),
            "a skipped deletion lets the app go at once"
        );
    }
}
