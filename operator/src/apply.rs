//! Server-side apply of the desired objects, in the written-down order,
//! after a dry run of them all.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::Desired;
use crate::conditions::Degradation;
use crate::error::{Error, Result};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "millrace-operator";

pub const APPLY_REJECTED: &str = "ApplyRejected";

async fn apply<K>(client: &Client, namespace: &str, object: &K, dry_run: bool) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    // force: the operator owns these objects; a field another manager set
    // (a stray `kubectl edit`) is taken back rather than failing the reconcile.
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    if !dry_run {
        crate::leader::ensure_leading("applying an object");
    }
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| match rejection(&e) {
            Some(message) => Error::Rejected {
                object: format!("{} {name}", K::kind(&())),
                message,
            },
            None => Error::Kube(e),
        })
}

/// The API server refused the object itself (invalid, an immutable field
/// changed, forbidden): trying again will not help until the spec changes.
/// Not a rejection: credentials (401), a conflict or throttling (409, 429),
/// and a dry run an admission webhook cannot take part in (it has side
/// effects), which says nothing about the object.
fn rejection(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(status)
            if [400, 403, 422].contains(&status.code) && !dry_run_unsupported(e) =>
        {
            Some(status.message.clone())
        }
        _ => None,
    }
}

/// An admission webhook with side effects answers a dry run so.
fn dry_run_unsupported(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 400
        && (s.message.to_lowercase().contains("dry run") || s.message.contains("dryRun")))
}

/// Applies everything an app owns, in the written-down order: identity and
/// permissions before the pods that use them; configuration before the pods
/// that read it; the StatefulSet last, so a pod never starts without what
/// it needs. Returns the StatefulSet as the API server stored it (its
/// status tells how the workers are doing).
///
/// A dry run of the objects made from the user's spec comes first: when the
/// API server refuses one (a change it does not allow, such as adding
/// `spec.state` to a running app, which changes the StatefulSet's volume
/// claims), nothing is written, so running workers never see a
/// configuration their StatefulSet does not match. That comes back as the
/// app's degradation, naming the object. The RBAC objects have one fixed
/// shape and are not dry-run: a RoleBinding's dry run looks up its Role,
/// which a dry run does not create, so a new app's would always fail.
pub async fn apply_all(
    client: &Client,
    namespace: &str,
    d: &Desired,
) -> Result<Result<StatefulSet, Degradation>> {
    match dry_run(client, namespace, d).await {
        Ok(_) => {}
        Err(Error::Rejected { object, message }) => {
            return Ok(Err(Degradation {
                reason: APPLY_REJECTED,
                message: format!("the API server refused {object}: {message}"),
            }))
        }
        Err(Error::Kube(e)) if dry_run_unsupported(&e) => {
            tracing::debug!("a webhook does not take dry runs ({e}); applying without one")
        }
        Err(e) => return Err(e),
    }
    apply_each(client, namespace, d).await.map(Ok)
}

async fn dry_run(client: &Client, namespace: &str, d: &Desired) -> Result<()> {
    apply(client, namespace, &d.config_map, true).await?;
    apply(client, namespace, &d.service, true).await?;
    apply(client, namespace, &d.pod_disruption_budget, true).await?;
    apply(client, namespace, &d.network_policy, true).await?;
    apply(client, namespace, &d.stateful_set, true).await?;
    Ok(())
}

async fn apply_each(client: &Client, namespace: &str, d: &Desired) -> Result<StatefulSet> {
    apply(client, namespace, &d.service_account, false).await?;
    apply(client, namespace, &d.role, false).await?;
    apply(client, namespace, &d.role_binding, false).await?;
    apply(client, namespace, &d.config_map, false).await?;
    apply(client, namespace, &d.service, false).await?;
    apply(client, namespace, &d.pod_disruption_budget, false).await?;
    // Before the pods: a query port is never open to other namespaces.
    apply(client, namespace, &d.network_policy, false).await?;
    apply(client, namespace, &d.stateful_set, false).await
}
