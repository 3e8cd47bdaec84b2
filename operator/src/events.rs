//! Small shared writes about a StreamApp: Events on it and merge patches of
//! its status (each writer patches only the fields it owns).

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use millrace_crds::StreamApp;

/// Publishes an Event on `app`; a failure is logged, never fatal.
pub async fn publish(
    client: &Client,
    reporter: &Reporter,
    app: &StreamApp,
    type_: EventType,
    (reason, action): (&str, &str),
    note: String,
) {
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &app.object_ref(&())).await {
        tracing::warn!("publishing event: {e}");
    }
}

/// Merge-patches `app`'s status with `status` (a JSON object of fields).
pub async fn patch_status(
    client: &Client,
    app: &StreamApp,
    status: serde_json::Value,
) -> kube::Result<()> {
    let apps: Api<StreamApp> =
        Api::namespaced(client.clone(), &app.namespace().unwrap_or_default());
    crate::leader::ensure_leading("writing a status");
    merge_status(&apps, &app.name_any(), status).await
}

/// Merge-patches the status of the StreamApp `name`.
pub async fn merge_status(
    apps: &Api<StreamApp>,
    name: &str,
    status: serde_json::Value,
) -> kube::Result<()> {
    let patch = serde_json::json!({ "status": status });
    apps.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
