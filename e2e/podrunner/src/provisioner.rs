//! A local volume provisioner: every claim of the `local` StorageClass (or of
//! no class) gets a PersistentVolume on a directory of its own, so pods with
//! claims (StatefulSet volumeClaimTemplates) schedule, and their data
//! survives restarts of the same pod name. Released volumes are deleted with
//! their directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

pub const PROVISIONER: &str = "millrace.dev/local";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const LOCAL_CLASS: &str = "local";

/// The PersistentVolume that satisfies `claim`, or `None` if this
/// provisioner should leave the claim alone.
pub fn volume_for(claim: &PersistentVolumeClaim, volumes_dir: &Path) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let class = spec.storage_class_name.clone().unwrap_or_default();
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
        == "Pending";
    if !pending
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || !(class.is_empty() || class == LOCAL_CLASS)
    {
        return None;
    }
    let namespace = claim.metadata.namespace.clone()?;
    let name = claim.metadata.name.clone()?;
    let uid = claim.metadata.uid.clone()?;
    let size = spec
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .clone();
    let path: PathBuf = volumes_dir
        .join(&namespace)
        .join(format!("{name}-{}", &uid[..8.min(uid.len())]));
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{uid}")),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            access_modes: spec.access_modes.clone(),
            storage_class_name: Some(class),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace),
                name: Some(name),
                uid: Some(uid),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub async fn run(client: Client, volumes_dir: PathBuf) -> anyhow::Result<()> {
    let claims = Api::<PersistentVolumeClaim>::all(client.clone());
    let volumes = Api::<PersistentVolume>::all(client.clone());
    let claim_events = watcher(claims, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let volume_events = watcher(volumes.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut events = futures::stream::select(
        claim_events
            .map(|e| e.map(|c| Either::Claim(Box::new(c))))
            .boxed(),
        volume_events
            .map(|e| e.map(|v| Either::Volume(Box::new(v))))
            .boxed(),
    );
    while let Some(event) = events.next().await {
        match event {
            Ok(Either::Claim(claim)) => {
                if let Some(pv) = volume_for(&claim, &volumes_dir) {
                    match volumes.create(&PostParams::default(), &pv).await {
                        Ok(_) => {
                            tracing::info!(claim = ?claim.metadata.name, pv = ?pv.metadata.name, "provisioned volume")
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => tracing::warn!("provisioning {:?}: {e}", claim.metadata.name),
                    }
                }
            }
            Ok(Either::Volume(pv)) => delete_if_released(&volumes, &pv, &volumes_dir).await,
            Err(e) => tracing::warn!("volume watch: {e}"),
        }
    }
    Ok(())
}

enum Either {
    Claim(Box<PersistentVolumeClaim>),
    Volume(Box<PersistentVolume>),
}

async fn delete_if_released(
    volumes: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    volumes_dir: &Path,
) {
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(String::as_str)
        == Some(PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let policy_delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if !(ours && released && policy_delete) || pv.metadata.deletion_timestamp.is_some() {
        return;
    }
    if let Some(path) = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
    {
        // Only ever remove directories this provisioner made.
        if path.starts_with(volumes_dir) {
            std::fs::remove_dir_all(&path).ok();
        }
    }
    let name = pv.metadata.name.clone().unwrap_or_default();
    match volumes.delete(&name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(pv = %name, "deleted released volume"),
        Err(e) => tracing::warn!(pv = %name, "deleting released volume: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(class: Option<&str>, phase: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "state-app-0", "uid": "0123456789abcdef"},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn pending_local_or_classless_claims_get_a_prebound_volume() {
        let pv = volume_for(&claim(Some("local"), "Pending"), Path::new("/v")).unwrap();
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/v/ns/state-app-0-01234567");
        assert_eq!(
            spec.claim_ref.unwrap().uid.as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert!(volume_for(&claim(None, "Pending"), Path::new("/v")).is_some());
    }

    #[test]
    fn other_classes_and_bound_claims_are_left_alone() {
        assert!(volume_for(&claim(Some("fast-ssd"), "Pending"), Path::new("/v")).is_none());
        assert!(volume_for(&claim(Some("local"), "Bound"), Path::new("/v")).is_none());
    }
}
