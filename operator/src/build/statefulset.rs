//! The workers' StatefulSet: stable pod names are the worker identities
//! (transactional id `<appId>-<pod name>`), a claim per worker holds state.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, SecretKeySelector,
    SecretProjection, SecurityContext, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use millrace_crds::worker_config::CONFIG_DIR;
use millrace_crds::SecretKeyRef;

use super::config::{config_path, SASL_PASSWORD_ENV, SASL_USERNAME_ENV, TLS_DIR};
use super::{config_map_name, meta, service_account_name};
use crate::model::{labels, selector_labels, AppModel, Workload};

/// The query API's port (`spec.query.port`), on stateful pipelines.
pub const QUERY_PORT_NAME: &str = "query";
pub const ADMIN_PORT_NAME: &str = "admin";
pub const CONFIG_HASH_ANNOTATION: &str = "millrace.dev/config-hash";
pub const STATE_MOUNT: &str = "/var/lib/millrace/state";
const STATE_VOLUME: &str = "state";
/// Non-root uid/gid of the runtime image.
const RUNTIME_UID: i64 = 65532;

pub fn stateful_set(model: &AppModel, replicas: i32, config_hash: &str) -> StatefulSet {
    let mut pod_labels = model.template.labels.clone();
    pod_labels.extend(labels(model));
    let mut annotations = model.template.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    StatefulSet {
        metadata: meta(model, &model.name),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(model.name.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&model.name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec(model)),
            },
            volume_claim_templates: model.state.as_ref().map(|state| {
                vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(STATE_VOLUME.into()),
                        labels: Some(labels(model)),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        storage_class_name: state.storage_class_name.clone(),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([(
                                "storage".to_string(),
                                state.size.clone(),
                            )])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_spec(model: &AppModel) -> PodSpec {
    let t = &model.template;
    PodSpec {
        service_account_name: Some(service_account_name(&model.name)),
        // Workers commit and release their tasks on SIGTERM; give them time.
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNTIME_UID),
            run_as_group: Some(RUNTIME_UID),
            fs_group: Some(RUNTIME_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container(model)],
        volumes: Some(volumes(model)),
        node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
        tolerations: (!t.tolerations.is_empty()).then(|| t.tolerations.clone()),
        affinity: Some(
            t.affinity
                .clone()
                .unwrap_or_else(|| spread_across_nodes(&model.name)),
        ),
        priority_class_name: t.priority_class_name.clone(),
        ..Default::default()
    }
}

/// Default affinity: prefer one worker per node, so losing a node loses as
/// few active tasks as possible.
fn spread_across_nodes(name: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(name)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(model: &AppModel) -> Container {
    let mut env = vec![
        field_env("MILLRACE_POD_NAME", "metadata.name"),
        field_env("MILLRACE_POD_NAMESPACE", "metadata.namespace"),
        field_env("MILLRACE_POD_IP", "status.podIP"),
        EnvVar {
            name: "MILLRACE_CONFIG".into(),
            value: Some(config_path()),
            ..Default::default()
        },
    ];
    if let Some(sasl) = &model.kafka.sasl {
        let c = &sasl.credentials;
        env.push(secret_env(
            SASL_USERNAME_ENV,
            &c.secret_name,
            &c.username_key,
        ));
        env.push(secret_env(
            SASL_PASSWORD_ENV,
            &c.secret_name,
            &c.password_key,
        ));
    }
    env.extend(model.template.env.iter().cloned());

    let (command, args) = match &model.workload {
        Workload::Pipeline { .. } => (
            Some(vec!["millrace-runtime".to_string()]),
            Some(vec!["worker".to_string()]),
        ),
        Workload::Custom { command, args, .. } => (command.clone(), args.clone()),
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if tls_sources(model).is_some() {
        mounts.push(VolumeMount {
            name: "kafka-tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if model.state.is_some() {
        mounts.push(VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: STATE_MOUNT.into(),
            ..Default::default()
        });
    }
    Container {
        name: "worker".into(),
        image: Some(model.image.clone()),
        image_pull_policy: Some(model.image_pull_policy.clone()),
        command,
        args,
        env: Some(env),
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: model.admin_port.into(),
                ..Default::default()
            })
            .chain(model.query.as_ref().map(|q| ContainerPort {
                name: Some(QUERY_PORT_NAME.into()),
                container_port: q.port.into(),
                ..Default::default()
            }))
            .collect(),
        ),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 2, 3)),
        resources: model.template.resources.clone(),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The TLS files, each from its own Secret key, projected into one directory.
fn tls_sources(model: &AppModel) -> Option<Vec<VolumeProjection>> {
    let tls = model.kafka.tls.as_ref().filter(|t| t.enabled)?;
    let project = |r: &Option<SecretKeyRef>, file: &str| {
        r.as_ref().map(|r| VolumeProjection {
            secret: Some(SecretProjection {
                name: r.name.clone(),
                items: Some(vec![KeyToPath {
                    key: r.key.clone(),
                    path: file.into(),
                    mode: None,
                }]),
                optional: Some(false),
            }),
            ..Default::default()
        })
    };
    let sources: Vec<VolumeProjection> = [
        project(&tls.ca, "ca.crt"),
        project(&tls.client_cert, "client.crt"),
        project(&tls.client_key, "client.key"),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!sources.is_empty()).then_some(sources)
}

fn volumes(model: &AppModel) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&model.name),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    if let Some(sources) = tls_sources(model) {
        volumes.push(Volume {
            name: "kafka-tls".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: Some(0o440),
            }),
            ..Default::default()
        });
    }
    volumes
}
