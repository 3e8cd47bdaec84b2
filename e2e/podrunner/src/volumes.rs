//! Pod volumes as host directories, and the bind mounts a container gets.
//!
//! Each volume becomes one directory: ConfigMap, Secret, downward API and
//! projected volumes (the service-account token among them) are written under
//! the pod's state directory; emptyDir is a fresh directory; a claim is the
//! directory of the PersistentVolume it is bound to. Files are replaced by
//! rename so a running process never reads a half-written file, and a bind
//! mount of the directory sees updates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::env::{field_value, Sources};

/// One bind mount into a container's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything volume preparation needs besides the API client.
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    pub sources: &'a Sources,
    pub pod_dir: &'a Path,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

/// Writes or locates every volume of the pod; returns name → host directory.
/// Called again periodically so ConfigMap changes and token renewals land.
pub async fn prepare(
    client: &Client,
    ctx: &PodContext<'_>,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut dirs = BTreeMap::new();
    let spec = ctx
        .pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("pod has no spec"))?;
    for volume in spec.volumes.iter().flatten() {
        let dir = prepare_one(client, ctx, volume)
            .await
            .with_context(|| format!("volume '{}'", volume.name))?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

async fn prepare_one(
    client: &Client,
    ctx: &PodContext<'_>,
    volume: &Volume,
) -> anyhow::Result<PathBuf> {
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(claim) = &volume.persistent_volume_claim {
        let dir = claim_dir(client, namespace, &claim.claim_name).await?;
        give_to_fs_group(&dir, fs_group(ctx.pod))?;
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) {
            std::fs::create_dir_all(&path)?;
        }
        return Ok(path);
    }
    let dir = ctx.pod_dir.join("volumes").join(&volume.name);
    std::fs::create_dir_all(&dir)?;
    if volume.empty_dir.is_some() {
        give_to_fs_group(&dir, fs_group(ctx.pod))?;
        return Ok(dir);
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(cm) = &volume.config_map {
        add_config_map(
            &mut files,
            ctx.sources,
            &cm.name,
            cm.items.as_deref(),
            cm.optional,
        )?;
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        add_secret(
            &mut files,
            ctx.sources,
            &name,
            secret.items.as_deref(),
            secret.optional,
        )?;
    } else if let Some(downward) = &volume.downward_api {
        add_downward(&mut files, ctx, downward.items.as_deref())?;
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                add_config_map(
                    &mut files,
                    ctx.sources,
                    &cm.name,
                    cm.items.as_deref(),
                    cm.optional,
                )?;
            } else if let Some(secret) = &source.secret {
                add_secret(
                    &mut files,
                    ctx.sources,
                    &secret.name,
                    secret.items.as_deref(),
                    secret.optional,
                )?;
            } else if let Some(downward) = &source.downward_api {
                add_downward(&mut files, ctx, downward.items.as_deref())?;
            } else if let Some(sat) = &source.service_account_token {
                let token = request_token(
                    client,
                    ctx.pod,
                    sat.audience.clone(),
                    sat.expiration_seconds,
                )
                .await?;
                files.insert(sat.path.clone(), token.into_bytes());
            } else {
                bail!("a projected source other than configMap, secret, downwardAPI or serviceAccountToken");
            }
        }
    } else {
        bail!("unsupported volume type (the pod runner serves emptyDir, configMap, secret, downwardAPI, projected, hostPath and persistentVolumeClaim)");
    }
    let mode = [
        volume.config_map.as_ref().and_then(|v| v.default_mode),
        volume.secret.as_ref().and_then(|v| v.default_mode),
        volume.downward_api.as_ref().and_then(|v| v.default_mode),
        volume.projected.as_ref().and_then(|v| v.default_mode),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or(DEFAULT_MODE);
    // With fsGroup the kubelet makes the files group-readable.
    let group = fs_group(ctx.pod);
    let mode = mode as u32 | if group.is_some() { 0o440 } else { 0 };
    write_files(&dir, &files, (mode, group))?;
    Ok(dir)
}

/// Kubernetes' `defaultMode` when a volume sets none.
const DEFAULT_MODE: i32 = 0o644;

fn fs_group(pod: &Pod) -> Option<u32> {
    let group = pod.spec.as_ref()?.security_context.as_ref()?.fs_group?;
    u32::try_from(group).ok()
}

/// A writable volume with `fsGroup` set, as the kubelet leaves it: owned by
/// the group, group-writable, new files inheriting the group (setgid
/// directories). Done once per volume (its top directory tells), over what
/// earlier pods left in it.
fn give_to_fs_group(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(group) = group else { return Ok(()) };
    if std::fs::metadata(dir)?.gid() == group {
        return Ok(());
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::lchown(&path, None, Some(group))
            .with_context(|| format!("chown of {}", path.display()))?;
        let extra = if meta.is_dir() { 0o2070 } else { 0o060 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() | extra))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The host directory of the PersistentVolume a claim is bound to.
async fn claim_dir(client: &Client, namespace: &str, claim: &str) -> anyhow::Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(claim)
        .await?
        .ok_or_else(|| anyhow!("PersistentVolumeClaim '{claim}' not found"))?;
    let volume_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("PersistentVolumeClaim '{claim}' is not bound yet"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume_name)
        .await?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| anyhow!("PersistentVolume '{volume_name}' is neither hostPath nor local"))?;
    std::fs::create_dir_all(&path)?;
    Ok(PathBuf::from(path))
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> anyhow::Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: expiration.or(Some(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount '{account}'"))?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest answered without a token"))
}

fn select_items(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    what: &str,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let Some(items) = items else { return Ok(all) };
    let mut out = BTreeMap::new();
    for item in items {
        let value = all
            .get(&item.key)
            .ok_or_else(|| anyhow!("{what} has no key '{}'", item.key))?;
        out.insert(item.path.clone(), value.clone());
    }
    Ok(out)
}

/// Adds the files of a ConfigMap or Secret (`data` is `None` when it does
/// not exist, which only an optional source may).
fn add_object_files(
    files: &mut BTreeMap<String, Vec<u8>>,
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<()> {
    match data {
        Some(all) => files.extend(select_items(all, items, what)?),
        None if optional == Some(true) => {}
        None => bail!("{what} not found"),
    }
    Ok(())
}

fn add_config_map(
    files: &mut BTreeMap<String, Vec<u8>>,
    sources: &Sources,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<()> {
    let what = format!("ConfigMap '{name}'");
    add_object_files(
        files,
        &what,
        config_map_data(sources, name),
        items,
        optional,
    )
}

fn add_secret(
    files: &mut BTreeMap<String, Vec<u8>>,
    sources: &Sources,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<()> {
    add_object_files(
        files,
        &format!("Secret '{name}'"),
        secret_data(sources, name),
        items,
        optional,
    )
}

fn config_map_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let cm = sources.config_maps.get(name)?;
    let text = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
    let binary = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    Some(text.chain(binary).collect())
}

fn secret_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = sources.secrets.get(name)?;
    Some(
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    )
}

fn add_downward(
    files: &mut BTreeMap<String, Vec<u8>>,
    ctx: &PodContext<'_>,
    items: Option<&[DownwardAPIVolumeFile]>,
) -> anyhow::Result<()> {
    for item in items.into_iter().flatten() {
        let field = item
            .field_ref
            .as_ref()
            .ok_or_else(|| anyhow!("downwardAPI item '{}' needs a fieldRef", item.path))?;
        let value = if field.field_path == "metadata.labels"
            || field.field_path == "metadata.annotations"
        {
            let map = if field.field_path == "metadata.labels" {
                &ctx.pod.metadata.labels
            } else {
                &ctx.pod.metadata.annotations
            };
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect()
        } else {
            field_value(ctx.pod, ctx.pod_ip, ctx.host_ip, &field.field_path)?
        };
        files.insert(item.path.clone(), value.into_bytes());
    }
    Ok(())
}

/// Writes each file by rename, with `mode` and the pod's `fsGroup` as its
/// group, as the kubelet does; paths may not escape `dir`.
fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    (mode, group): (u32, Option<u32>),
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (relative, bytes) in files {
        if relative
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            bail!("file path '{relative}' must be relative and stay inside the volume");
        }
        let path = dir.join(relative);
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("millrace-tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if group.is_some() {
            std::os::unix::fs::chown(&tmp, None, group)?;
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The bind mounts of one container, in the order they must be made (a
/// shorter target first, so a nested mount is not hidden by its parent).
pub fn container_mounts(
    container: &Container,
    volume_dirs: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .ok_or_else(|| anyhow!("volumeMount '{}' names no volume of the pod", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|p| p == "..") => bail!(
                "volumeMount '{}': subPath '{sub}' escapes the volume",
                m.name
            ),
            Some(sub) => dir.join(sub),
            None => dir.clone(),
        };
        mounts.push(Mount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mounts_resolve_sub_paths_and_sort_parents_first() {
        let container: Container = serde_json::from_value(json!({
            "name": "c",
            "volumeMounts": [
                {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                {"name": "data", "mountPath": "/var"},
                {"name": "cfg", "mountPath": "/etc/app.yaml", "subPath": "app.yaml"}
            ]
        }))
        .unwrap();
        let dirs: BTreeMap<String, PathBuf> = [
            ("token", "/s/token"),
            ("data", "/s/data"),
            ("cfg", "/s/cfg"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
        let mounts = container_mounts(&container, &dirs).unwrap();
        assert_eq!(mounts[0].target, PathBuf::from("/var"));
        assert!(mounts
            .iter()
            .any(|m| m.source == Path::new("/s/cfg/app.yaml")
                && m.target == Path::new("/etc/app.yaml")));
        assert!(mounts.last().unwrap().read_only);
    }

    #[test]
    fn unknown_volume_and_escaping_sub_path_are_named() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}),
        )
        .unwrap();
        assert!(container_mounts(&c, &BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("'x'"));
        let c: Container =
            serde_json::from_value(json!({"name": "c", "volumeMounts": [{"name": "x", "mountPath": "/x", "subPath": "../etc"}]})).unwrap();
        let dirs = [("x".to_string(), PathBuf::from("/s"))]
            .into_iter()
            .collect();
        assert!(container_mounts(&c, &dirs)
            .unwrap_err()
            .to_string()
            .contains("escapes"));
    }

    #[test]
    fn files_are_written_under_the_volume_and_items_select_keys() {
        let dir = std::env::temp_dir().join(format!("podrunner-vol-{}", std::process::id()));
        let all: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: None,
        }];
        let files = select_items(all.clone(), Some(&items), "ConfigMap 'x'").unwrap();
        write_files(&dir, &files, (0o644, None)).unwrap();
        assert_eq!(std::fs::read(dir.join("sub/b.txt")).unwrap(), b"2");
        assert!(write_files(
            &dir,
            &[("../evil".to_string(), vec![])].into(),
            (0o644, None)
        )
        .is_err());
        let missing = [KeyToPath {
            key: "zz".into(),
            path: "z".into(),
            mode: None,
        }];
        assert!(select_items(all, Some(&missing), "ConfigMap 'x'")
            .unwrap_err()
            .to_string()
            .contains("'zz'"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
