//! A container's security context, enforced as a kubelet and container
//! runtime would: its user, group and supplemental groups (with `fsGroup`),
//! `runAsNonRoot` checked, no new privileges, and a read-only root
//! filesystem: every mount of the host except the container's own volume
//! mounts (and /proc, /sys, /dev, which a runtime mounts itself) is
//! remounted read-only in the container's mount namespace, so a write
//! anywhere the pod spec did not declare a writable volume fails.
//!
//! Pure planning here; `process` applies the plan in the child.

use std::path::PathBuf;

use anyhow::bail;
use k8s_openapi::api::core::v1::{Container, Pod};

/// What the child does after its volume mounts and before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// (uid, gid, supplemental groups); `None`: stays root, as the image
    /// would without a user.
    pub user: Option<(u32, u32, Vec<u32>)>,
    pub no_new_privileges: bool,
    /// Host mount points to remount read-only, with the flags to keep.
    pub read_only: Vec<(PathBuf, u64)>,
    /// In an image's root: remount that root read-only.
    pub read_only_root: bool,
}

/// What a container's files are.
pub enum Filesystem<'a> {
    /// The host's, with the container's volume mounts at `binds`.
    Host { binds: &'a [PathBuf] },
    /// Its image's root, whose configuration may name a user (`uid` or
    /// `uid:gid`), used unless the pod sets runAsUser.
    Image { user: Option<&'a str> },
}

/// Pod-level settings with the container's own over them (and over the
/// image's user).
pub fn plan(pod: &Pod, container: &Container, fs: Filesystem<'_>) -> anyhow::Result<Confinement> {
    let pod_ctx = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let ctx = container.security_context.clone().unwrap_or_default();
    let pod_uid = ctx.run_as_user.or(pod_ctx.run_as_user);
    // The image's user only when the pod names none (as Kubernetes does);
    // its group with it (a uid the pod sets gets group 0 unless runAsGroup).
    let image_user = match (&fs, pod_uid) {
        (Filesystem::Image { user: Some(user) }, None) => Some(crate::image_root::user(user)?),
        _ => None,
    };
    let uid = pod_uid.or(image_user.map(|(uid, _)| uid.into()));
    let gid = ctx
        .run_as_group
        .or(pod_ctx.run_as_group)
        .or(image_user.and_then(|(_, gid)| gid.map(Into::into)));
    let non_root = ctx.run_as_non_root.or(pod_ctx.run_as_non_root) == Some(true);
    if non_root && uid.unwrap_or(0) == 0 {
        bail!(
            "container '{}' has runAsNonRoot and would run as root (set runAsUser)",
            container.name
        );
    }
    let user = match uid {
        Some(uid) => {
            let id = |v: i64, what: &str| {
                u32::try_from(v).map_err(|_| anyhow::anyhow!("{what} {v} is out of range"))
            };
            let mut groups: Vec<u32> = pod_ctx
                .supplemental_groups
                .iter()
                .flatten()
                .chain(pod_ctx.fs_group.iter())
                .map(|g| id(*g, "a supplemental group"))
                .collect::<anyhow::Result<_>>()?;
            groups.sort_unstable();
            groups.dedup();
            Some((
                id(uid, "runAsUser")?,
                id(gid.unwrap_or(0), "runAsGroup")?,
                groups,
            ))
        }
        None => None,
    };
    let read_only_root = ctx.read_only_root_filesystem == Some(true);
    let read_only = match fs {
        Filesystem::Host { binds } if read_only_root => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
            read_only_remounts(&mountinfo, binds)
        }
        _ => Vec::new(),
    };
    Ok(Confinement {
        user,
        // Kubernetes' default is to allow escalation; the built pods say no.
        no_new_privileges: ctx.allow_privilege_escalation == Some(false),
        read_only_root: read_only_root && matches!(fs, Filesystem::Image { .. }),
        read_only,
    })
}

/// The host's writable mount points a read-only root must cover: all but
/// the runtime's own (/proc, /sys, /dev) and those at or under a volume
/// mount of the container (a remount there would hit the volume).
fn read_only_remounts(mountinfo: &str, binds: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    let runtime_owned = ["/proc", "/sys", "/dev"];
    let mut remounts = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        let options: Vec<&str> = options.split(',').collect();
        // A later line mounted over the same path is the one a remount of
        // the path reaches: it replaces the earlier.
        remounts.retain(|(p, _)| *p != point);
        if options.contains(&"ro")
            || runtime_owned.iter().any(|r| point.starts_with(r))
            || binds.iter().any(|b| point.starts_with(b))
        {
            continue;
        }
        remounts.push((point, kept_flags(&options)));
    }
    remounts
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per-mount flags a bind remount must repeat (or the kernel refuses to
/// drop them on a mount it inherited).
fn kept_flags(options: &[&str]) -> u64 {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    for (name, flag) in [
        ("nosuid", MsFlags::MS_NOSUID),
        ("nodev", MsFlags::MS_NODEV),
        ("noexec", MsFlags::MS_NOEXEC),
        ("noatime", MsFlags::MS_NOATIME),
        ("nodiratime", MsFlags::MS_NODIRATIME),
        ("relatime", MsFlags::MS_RELATIME),
    ] {
        if options.contains(&name) {
            flags |= flag;
        }
    }
    flags.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 0:25 / /mnt/tools ro,nosuid,nodev,relatime - tmpfs t ro
29 27 0:26 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
30 27 0:27 / /data rw,noexec,relatime - ext4 /dev/vdb rw
31 27 0:28 / /my\\040disk rw - ext4 /dev/vdc rw
32 27 0:29 / /mnt/tools rw - tmpfs t rw
";

    #[test]
    fn every_writable_host_mount_but_the_runtimes_and_the_volumes_is_remounted() {
        use nix::mount::MsFlags;
        let remounts = read_only_remounts(MOUNTINFO, &[PathBuf::from("/tmp")]);
        let points: Vec<&str> = remounts.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(points, ["/", "/data", "/my disk", "/mnt/tools"]);
        assert_eq!(
            remounts[1].1,
            (MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME).bits()
        );
    }

    #[test]
    fn users_groups_and_run_as_non_root_follow_the_pod_and_container() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 2000},
                     "containers": []}
        }))
        .unwrap();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "securityContext": {"allowPrivilegeEscalation": false}
        }))
        .unwrap();
        let plan = plan(&pod, &container, Filesystem::Host { binds: &[] }).unwrap();
        assert_eq!(plan.user, Some((65532, 65532, vec![2000])));
        assert!(plan.no_new_privileges);
        assert!(plan.read_only.is_empty());

        let root: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": {"runAsNonRoot": true}, "containers": []}
        }))
        .unwrap();
        let refused = super::plan(&root, &container, Filesystem::Host { binds: &[] })
            .unwrap_err()
            .to_string();
        assert!(refused.contains("runAsNonRoot"), "{refused}");

        // The image's user counts, and the pod's overrides it.
        let image = || Filesystem::Image {
            user: Some("65532:65532"),
        };
        let from_image = super::plan(&root, &container, image()).unwrap();
        assert_eq!(from_image.user, Some((65532, 65532, vec![])));
        let overridden = super::plan(&pod, &container, image()).unwrap();
        assert_eq!(overridden.user, Some((65532, 65532, vec![2000])));
        // The pod's user wins; the image's, even a name, is then not read.
        let named = Filesystem::Image {
            user: Some("nonroot"),
        };
        assert_eq!(
            super::plan(&pod, &container, named).unwrap().user,
            Some((65532, 65532, vec![2000]))
        );
    }
}
