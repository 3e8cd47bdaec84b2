//! A container's environment, resolved the way the kubelet does: downward
//! API fields, ConfigMap and Secret references, `$(VAR)` expansion.
//!
//! Pure: the ConfigMaps and Secrets a pod references are fetched first (see
//! [`referenced_objects`]) and passed in, so resolution is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// The objects a pod's env and volumes read, by name in the pod's namespace.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

impl Sources {
    pub fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        let cm = self.config_maps.get(name)?;
        if let Some(v) = cm.data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.clone());
        }
        let bytes = cm.binary_data.as_ref()?.get(key)?;
        Some(String::from_utf8_lossy(&bytes.0).into_owned())
    }

    pub fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.secrets.get(name)?;
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(String::from_utf8_lossy(&v.0).into_owned());
        }
        secret.string_data.as_ref()?.get(key).cloned()
    }
}

/// Names of the ConfigMaps and Secrets a pod needs (env, envFrom, volumes).
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return (config_maps, secrets);
    };
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for e in c.env.iter().flatten() {
            if let Some(src) = &e.value_from {
                if let Some(r) = &src.config_map_key_ref {
                    config_maps.insert(r.name.clone());
                }
                if let Some(r) = &src.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            config_maps.insert(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

/// Values the downward API exposes: `metadata.name`, `status.podIP`, ...
pub fn field_value(pod: &Pod, pod_ip: &str, host_ip: &str, path: &str) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let label_or_annotation =
        |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
            let key = path
                .strip_prefix(prefix)?
                .strip_prefix("['")?
                .strip_suffix("']")?;
            Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
        };
    if let Some(v) = label_or_annotation("metadata.labels", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = label_or_annotation("metadata.annotations", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        other => bail!("downward API field '{other}' is not supported by the pod runner"),
    })
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; unknown references
/// stay as written (Kubernetes semantics).
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            Some((_, '(')) => {
                let rest = &input[i + 2..];
                match rest.find(')') {
                    Some(end) if vars.contains_key(&rest[..end]) => {
                        out.push_str(&vars[&rest[..end]]);
                        for _ in 0..end + 2 {
                            chars.next();
                        }
                    }
                    _ => out.push('$'),
                }
            }
            _ => out.push('$'),
        }
    }
    out
}

/// The container's environment in order: envFrom, then env (later wins), each
/// value expanded against what came before it.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    pod_ip: &str,
    host_ip: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        vars.insert(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("envFrom: ConfigMap '{}' not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        vars.insert(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("envFrom: Secret '{}' not found", r.name),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand(v, &vars)),
            (None, Some(src)) => {
                if let Some(f) = &src.field_ref {
                    Some(field_value(pod, pod_ip, host_ip, &f.field_path)?)
                } else if let Some(r) = &src.config_map_key_ref {
                    let v = sources.config_map_value(&r.name, &r.key);
                    if v.is_none() && r.optional != Some(true) {
                        return Err(anyhow!(
                            "env {}: key '{}' of ConfigMap '{}' not found",
                            e.name,
                            r.key,
                            r.name
                        ));
                    }
                    v
                } else if let Some(r) = &src.secret_key_ref {
                    let v = sources.secret_value(&r.name, &r.key);
                    if v.is_none() && r.optional != Some(true) {
                        return Err(anyhow!(
                            "env {}: key '{}' of Secret '{}' not found",
                            e.name,
                            r.key,
                            r.name
                        ));
                    }
                    v
                } else {
                    src.resource_field_ref
                        .as_ref()
                        .map(|r| resource_value(container, &r.resource))
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            vars.insert(e.name.clone(), v);
        }
    }
    Ok(vars)
}

/// `limits.cpu` and friends; unset limits report the node's generous
/// capacity, as the kubelet reports node allocatable.
fn resource_value(container: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = container.resources.as_ref();
    let map = if kind == "requests" {
        res.and_then(|r| r.requests.as_ref())
    } else {
        res.and_then(|r| r.limits.as_ref())
    };
    match map.and_then(|m| m.get(name)) {
        Some(q) => q.0.clone(),
        None if name == "cpu" => crate::node::CPU_CAPACITY.to_string(),
        None => crate::node::MEMORY_CAPACITY_BYTES.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "app-0", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"nodeName": "n", "containers": [{
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "URL", "value": "http://$(IP):8080/$(NOPE)/$$(POD)"},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
                ]
            }]}
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cfg".into(),
            serde_json::from_value(json!({"data": {"a": "1"}})).unwrap(),
        );
        s.secrets.insert(
            "creds".into(),
            serde_json::from_value(json!({"data": {"password": "aHVudGVyMg=="}})).unwrap(),
        );
        s
    }

    #[test]
    fn resolves_downward_api_refs_and_expansion() {
        let p = pod();
        let env = container_env(
            &p,
            &p.spec.as_ref().unwrap().containers[0],
            &sources(),
            "127.1.0.2",
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(env["POD"], "app-0");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["CFG_a"], "1");
        assert_eq!(env["URL"], "http://127.1.0.2:8080/$(NOPE)/$(POD)");
        assert_eq!(env["PW"], "hunter2");
    }

    #[test]
    fn missing_secret_key_names_env_var_and_secret() {
        let p = pod();
        let mut s = sources();
        s.secrets.clear();
        let err = container_env(&p, &p.spec.as_ref().unwrap().containers[0], &s, "", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("env PW") && err.contains("Secret 'creds'"),
            "{err}"
        );
    }

    #[test]
    fn lists_referenced_objects() {
        let (cms, secrets) = referenced_objects(&pod());
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cfg"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["creds"]);
    }
}
