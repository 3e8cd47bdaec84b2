//! What a pod's processes may do, read from /proc as the pod runner left
//! them: their user, and that nothing is writable but the volume mounts the
//! pod spec declares writable (and the runtime's /proc, /sys, /dev).

use std::path::Path;

use crate::{kubectl, pod_processes};

/// Every process of pod `ns/name` runs as `uid`, with a read-only root and
/// writable mounts only at the pod spec's writable volume mounts; `Err`
/// says what is not so.
pub fn check(ns: &str, name: &str, uid: u32) -> Result<(), String> {
    let json = kubectl(&["-n", ns, "get", "pod", name, "-o", "json"]).map_err(|e| e.to_string())?;
    let pod: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let pod_uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let writable: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .filter(|m| m["readOnly"].as_bool() != Some(true))
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    let pids = pod_processes(pod_uid);
    if pids.is_empty() {
        return Err(format!("pod {ns}/{name} has no running process"));
    }
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or_default();
        if uids.split_whitespace().any(|u| u != uid.to_string()) {
            return Err(format!(
                "pod {name} pid {pid} runs as Uid {uids}, not {uid}"
            ));
        }
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (point, options) = (fields[4], fields[5]);
            let read_only = options.split(',').any(|o| o == "ro");
            let runtime = ["/proc", "/sys", "/dev"]
                .iter()
                .any(|r| Path::new(point).starts_with(r));
            if !read_only && !runtime && !writable.contains(&point) {
                return Err(format!(
                    "pod {name} pid {pid}: {point} is writable ({options}) but no writable volume \
                     mount of the pod spec is there (declared: {writable:?})"
                ));
            }
        }
    }
    Ok(())
}
