//! Server-side apply of the desired objects, in the written-down order.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::Desired;
use crate::error::Result;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "millrace-operator";

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
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
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?)
}

/// Applies everything an app owns, in the written-down order: identity and
/// permissions before the pods that use them; configuration before the pods
/// that read it; the StatefulSet last, so a pod never starts without what
/// it needs. Returns the StatefulSet as the API server stored it (its
/// status tells how the workers are doing).
pub async fn apply_all(client: &Client, namespace: &str, d: &Desired) -> Result<StatefulSet> {
    apply(client, namespace, &d.service_account).await?;
    apply(client, namespace, &d.role).await?;
    apply(client, namespace, &d.role_binding).await?;
    apply(client, namespace, &d.config_map).await?;
    apply(client, namespace, &d.service).await?;
    apply(client, namespace, &d.pod_disruption_budget).await?;
    apply(client, namespace, &d.stateful_set).await
}
