//! Running a container from its image, as a container runtime would: the
//! argv from the image's entrypoint and cmd under Kubernetes' command and
//! args, the image's environment under the pod's, its user and working
//! directory unless the pod sets them, and a root filesystem of its own:
//! the unpacked image (shared, never written) under an overlay with a
//! fresh writable layer per start. Pure planning here; `process` mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use millrace_images::RunConfig;

/// Where a container's root comes from and how it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The unpacked image (overlay lower layer).
    pub image: PathBuf,
    /// This start's writable layer and overlay work directory (emptied
    /// before each start, as a restarted container gets a fresh layer).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is mounted, in the container's mount namespace only.
    pub merged: PathBuf,
    /// In the container (the image's, or the pod's workingDir).
    pub working_dir: String,
}

impl Root {
    /// The layers of `container_dir` (under the pod's directory) over `image`.
    pub fn new(image: &Path, container_dir: &Path, working_dir: String) -> Self {
        Self {
            image: image.to_path_buf(),
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
            merged: container_dir.join("root"),
            working_dir,
        }
    }

    /// Empties the writable layer and makes the directories the overlay needs.
    pub fn prepare(&self) -> anyhow::Result<()> {
        for dir in [&self.upper, &self.work] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("emptying {}", dir.display()))?;
            }
        }
        for dir in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// The overlay's mount options.
    pub fn overlay_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.image.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// A path in the container, seen from the host side of the overlay.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.merged.join(inside.strip_prefix("/").unwrap_or(inside))
    }
}

/// Kubernetes' rule: `command` replaces the entrypoint (and drops the
/// image's cmd), `args` replace the cmd.
pub fn argv(run: &RunConfig, command: &[String], args: &[String]) -> Vec<String> {
    let (program, default_args) = if command.is_empty() {
        (run.entrypoint.clone(), &run.cmd[..])
    } else {
        (command.to_vec(), &[][..])
    };
    let rest = if args.is_empty() { default_args } else { args };
    program.into_iter().chain(rest.iter().cloned()).collect()
}

/// The image's environment (`NAME=value` entries) as a map.
pub fn env(run: &RunConfig) -> BTreeMap<String, String> {
    run.env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `program` as an absolute path in the image: as given when it has a
/// slash, else the first match in `path` (the container's PATH), as
/// execvp would look it up inside the container.
pub fn resolve(rootfs: &Path, program: &str, path: &str) -> anyhow::Result<String> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(program);
        if rootfs
            .join(candidate.strip_prefix("/").unwrap_or(&candidate))
            .is_file()
        {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    bail!("executable '{program}' not found in the image (PATH {path})")
}

/// The image's `User`: `uid` or `uid:gid`, numeric (names would need the
/// image's /etc/passwd; set `runAsUser` instead).
pub fn user(image_user: &str) -> anyhow::Result<(u32, Option<u32>)> {
    let (uid, gid) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let number = |v: &str| {
        v.parse::<u32>().with_context(|| {
            format!("the image's user '{image_user}' is not numeric; set runAsUser in the pod")
        })
    };
    Ok((number(uid)?, gid.map(number).transpose()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/usr/local/bin/tool".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/usr/local/bin:/bin".into(), "A=b=c".into()],
            ..RunConfig::default()
        }
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd_as_in_kubernetes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&run(), &[], &[]), s(&["/usr/local/bin/tool", "serve"]));
        assert_eq!(
            argv(&run(), &[], &s(&["run"])),
            s(&["/usr/local/bin/tool", "run"])
        );
        assert_eq!(argv(&run(), &s(&["tool"]), &[]), s(&["tool"]));
        assert_eq!(
            argv(&run(), &s(&["tool"]), &s(&["worker"])),
            s(&["tool", "worker"])
        );
    }

    #[test]
    fn image_env_users_and_programs() {
        let e = env(&run());
        assert_eq!(e["A"], "b=c");
        assert_eq!(user("65532:65532").unwrap(), (65532, Some(65532)));
        assert_eq!(user("1000").unwrap(), (1000, None));
        assert!(user("nonroot")
            .unwrap_err()
            .to_string()
            .contains("runAsUser"));

        let dir = std::env::temp_dir().join(format!("podrunner-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("usr/local/bin")).unwrap();
        std::fs::write(dir.join("usr/local/bin/tool"), b"").unwrap();
        assert_eq!(
            resolve(&dir, "tool", "/bin:/usr/local/bin").unwrap(),
            "/usr/local/bin/tool"
        );
        assert_eq!(resolve(&dir, "/x/y", "").unwrap(), "/x/y");
        let missing = resolve(&dir, "sh", "/bin").unwrap_err().to_string();
        assert!(missing.contains("'sh' not found in the image"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
