//! Starting a container as a local process, and stopping it.
//!
//! Each container runs in its own session (so its whole process group can be
//! signalled), its own mount namespace (so volume bind mounts are private to
//! it) and its own UTS namespace (so `hostname` is the pod name, as in a
//! real pod). Network is shared: the pod binds its own loopback address.
//! A container of an image runs in the image's root: an overlay mounted in
//! its mount namespace, /proc, /dev and /sys bound from the host, its
//! volumes bound into it, then `pivot_root` into it (the host's root is
//! detached; a test bed, not a sandbox: the host's /proc, /dev and /sys
//! stay reachable to a root container). Mount points are made in the
//! overlay following the image's symlinks: fine for images built here,
//! which have none.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{sethostname, Pid};
use tokio::process::{Child, Command};

use crate::confine::Confinement;
use crate::image_root::Root;
use crate::volumes::Mount;

/// Environment variable every pod process carries, so processes left by a
/// runner that died can be found and killed (see [`kill_orphans`]).
pub const POD_MARKER_ENV: &str = "MILLRACE_PODRUNNER_POD_UID";

pub struct Spec<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub working_dir: Option<&'a str>,
    pub hostname: &'a str,
    pub mounts: &'a [Mount],
    pub confinement: &'a Confinement,
    pub log_file: &'a Path,
    pub pod_uid: &'a str,
    pub root: Option<&'a Root>,
}

/// An image root, as the child mounts it: only C strings, made before fork.
struct ChildRoot {
    merged: CString,
    overlay_options: CString,
    /// Mount points to make in the overlay, parents first (true: a file).
    points: Vec<(CString, bool)>,
    /// Host file systems bound in: (source, target under merged).
    system: Vec<(CString, CString)>,
    working_dir: CString,
    read_only: bool,
}

impl ChildRoot {
    fn new(root: &Root, mounts: &[Mount]) -> anyhow::Result<Self> {
        root.prepare()?;
        let mut points: Vec<(PathBuf, bool)> = Vec::new();
        let mut add = |inside: &Path, file: bool| {
            let target = root.host_path(inside);
            for dir in target.ancestors().skip(1) {
                if dir == root.merged || !dir.starts_with(&root.merged) {
                    break;
                }
                points.push((dir.to_path_buf(), false));
            }
            points.push((target, file));
        };
        let system = ["/proc", "/dev", "/sys"];
        for dir in system {
            add(Path::new(dir), false);
        }
        for m in mounts {
            // Under /proc, /dev or /sys the point is in the host's tree
            // bound there: it must exist (making it would write the host's).
            if system.iter().any(|d| m.target.starts_with(d)) {
                anyhow::ensure!(
                    m.target.exists(),
                    "mount path {} under /proc, /dev or /sys does not exist on the test bed's host",
                    m.target.display()
                );
                continue;
            }
            add(&m.target, !m.source.is_dir());
        }
        // Parents first (a parent's path is a prefix, so it sorts before).
        points.sort();
        points.dedup_by(|a, b| a.0 == b.0);
        Ok(Self {
            merged: path_cstring(&root.merged)?,
            overlay_options: CString::new(root.overlay_options())?,
            points: points
                .iter()
                .map(|(p, file)| Ok((path_cstring(p)?, *file)))
                .collect::<anyhow::Result<_>>()?,
            system: system
                .iter()
                .map(|d| {
                    Ok((
                        CString::new(*d)?,
                        path_cstring(&root.host_path(Path::new(d)))?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
            working_dir: CString::new(root.working_dir.as_str())?,
            read_only: false,
        })
    }

    /// In the child, before the volume binds: the overlay, its mount
    /// points, and the host's /proc, /dev and /sys (first, as a runtime
    /// mounts them: a volume under one of them is bound over it, not
    /// hidden by it).
    fn mount_overlay(&self) -> std::io::Result<()> {
        mount(
            Some(c"overlay"),
            self.merged.as_c_str(),
            Some(c"overlay"),
            MsFlags::empty(),
            Some(self.overlay_options.as_c_str()),
        )?;
        for (point, file) in &self.points {
            // SAFETY: plain system calls on NUL-terminated paths.
            unsafe {
                if *file {
                    let fd = libc::open(
                        point.as_ptr(),
                        // Read-only: an image file there is not copied up.
                        libc::O_CREAT | libc::O_RDONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                } else if libc::mkdir(point.as_ptr(), 0o755) != 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        for (source, target) in &self.system {
            mount(
                Some(source.as_c_str()),
                target.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
        }
        Ok(())
    }

    /// In the child, after the volume binds: the switch into the root (the
    /// old root detached), made read-only if asked, and the working
    /// directory.
    fn enter(&self) -> std::io::Result<()> {
        nix::unistd::chdir(self.merged.as_c_str())?;
        // pivot_root(".", "."): the old root ends up on top of the new one
        // and is detached at once (what runc does).
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")?;
        if self.read_only {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )?;
        }
        nix::unistd::chdir(self.working_dir.as_c_str())?;
        Ok(())
    }
}

pub fn spawn(spec: &Spec<'_>) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_file)?;
    let child_root = match spec.root {
        Some(root) => Some(ChildRoot {
            read_only: spec.confinement.read_only_root,
            ..ChildRoot::new(root, spec.mounts)?
        }),
        None => {
            for m in spec.mounts {
                prepare_mount_point(m)?;
            }
            None
        }
    };
    // A mount can hide the source of a later one, or the executable (an
    // emptyDir at /tmp over a checkout in /tmp). So in the child, after
    // entering the new mount namespace and before any bind, every source and
    // the executable are opened and parked at fixed descriptor numbers; binds
    // and exec then go through /proc/self/fd/N, which names the original
    // file whatever is mounted over its path. The paths are prepared here:
    // the child must not allocate.
    let program = Path::new(&spec.argv[0]);
    // Parked too when the container runs as another user: the executable
    // (in a build directory) need only be executable, not reachable by path.
    let hidden = spec.root.is_none()
        && program.is_absolute()
        && (spec.confinement.user.is_some()
            || spec.mounts.iter().any(|m| program.starts_with(&m.target)));
    let binds: Vec<(CString, CString, CString, bool)> = spec
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let target = match spec.root {
                Some(root) => root.host_path(&m.target),
                None => m.target.clone(),
            };
            Ok((
                path_cstring(&m.source)?,
                parked(FIRST_PARKED_FD + i as i32)?,
                path_cstring(&target)?,
                m.read_only,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let executable_source = if hidden {
        Some(path_cstring(program)?)
    } else {
        None
    };
    let executable = if hidden {
        format!("/proc/self/fd/{EXECUTABLE_FD}")
    } else {
        spec.argv[0].clone()
    };
    let hostname = spec.hostname.to_string();
    let read_only: Vec<(CString, MsFlags)> = spec
        .confinement
        .read_only
        .iter()
        .map(|(point, flags)| Ok((path_cstring(point)?, MsFlags::from_bits_truncate(*flags))))
        .collect::<anyhow::Result<_>>()?;
    let user = spec.confinement.user.clone();
    let no_new_privileges = spec.confinement.no_new_privileges;

    let mut command = Command::new(&executable);
    command
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env)
        .env(POD_MARKER_ENV, spec.pod_uid)
        // An image's root: its working directory is entered in the child,
        // after the switch (std changes directory before pre_exec runs).
        .current_dir(match spec.root {
            Some(_) => "/",
            None => spec.working_dir.unwrap_or("/"),
        })
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
            // Private propagation: the binds below must not leak to the host.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            for (i, (source, _, _, _)) in binds.iter().enumerate() {
                park(source, FIRST_PARKED_FD + i as i32, false)?;
            }
            if let Some(source) = &executable_source {
                park(source, EXECUTABLE_FD, true)?;
            }
            if let Some(root) = &child_root {
                root.mount_overlay()?;
            }
            for (i, (_, via_fd, target, read_only)) in binds.iter().enumerate() {
                mount(
                    Some(via_fd.as_c_str()),
                    target.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
                if *read_only {
                    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    mount(
                        None::<&str>,
                        target.as_c_str(),
                        None::<&str>,
                        flags,
                        None::<&str>,
                    )?;
                }
                // A descriptor this child parked itself (inside pre_exec's unsafe block).
                libc::close(FIRST_PARKED_FD + i as i32);
            }
            sethostname(&hostname)?;
            if let Some(root) = &child_root {
                root.enter()?;
            }
            // readOnlyRootFilesystem: after the volume binds, which stay as
            // they are (separate mount points).
            for (point, kept) in &read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | *kept;
                mount(
                    None::<&str>,
                    point.as_c_str(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                )?;
            }
            if no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Last: everything above needs root. A non-root uid loses every
            // capability at setuid.
            if let Some((uid, gid, groups)) = &user {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting '{}'", spec.argv[0]))
}

/// Descriptor numbers the child parks mount sources and the executable at.
const EXECUTABLE_FD: i32 = 900;
const FIRST_PARKED_FD: i32 = 901;

fn parked(fd: i32) -> anyhow::Result<CString> {
    Ok(CString::new(format!("/proc/self/fd/{fd}"))?)
}

/// In the child: opens `path` (O_PATH) and moves the descriptor to `at`.
/// Only system calls: safe between fork and exec.
fn park(path: &CString, at: i32, close_on_exec: bool) -> std::io::Result<()> {
    // SAFETY: plain system calls on a NUL-terminated path and our own fds.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_PATH);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(fd, at) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(fd);
        if close_on_exec {
            libc::fcntl(at, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// A bind mount needs an existing target of the same kind as its source.
fn prepare_mount_point(m: &Mount) -> anyhow::Result<()> {
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target)
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !m.target.exists() {
            std::fs::write(&m.target, b"")?;
        }
        Ok(())
    }
    .with_context(|| format!("creating mount point {}", m.target.display()))
}

fn path_cstring(p: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(p.as_os_str().as_encoded_bytes())?)
}

/// Signals the container's whole process group; a vanished group is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// Kills processes that carry [`POD_MARKER_ENV`] but whose pod this runner
/// does not run: leftovers of a runner that was killed. Returns their pids.
pub fn kill_orphans(keep: &dyn Fn(&str) -> bool) -> Vec<u32> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(uid) = pod_uid_of(&entry.path()) else {
            continue;
        };
        if !keep(&uid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    killed
}

fn pod_uid_of(proc_dir: &Path) -> Option<String> {
    let environ = std::fs::read(proc_dir.join("environ")).ok()?;
    let prefix = format!("{POD_MARKER_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|uid| String::from_utf8_lossy(uid).into_owned())
}

/// Where a container's stdout and stderr go.
pub fn log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}
