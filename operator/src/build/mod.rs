//! Build: the objects an app owns, from its model. Pure; applied by the
//! reconciler in the order written down in [`crate::apply::apply_all`].

mod config;
mod network;
mod rbac;
mod statefulset;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{labels, selector_labels, AppModel};

pub use config::{config_hash, worker_config};
pub use statefulset::{ADMIN_PORT_NAME, CONFIG_HASH_ANNOTATION, QUERY_PORT_NAME, STATE_MOUNT};

/// Names of the objects of app `name`.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}
pub fn service_account_name(name: &str) -> String {
    format!("{name}-worker")
}

/// Everything an app owns.
#[derive(Debug, Clone)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub stateful_set: StatefulSet,
}

pub fn desired(model: &AppModel, replicas: i32) -> Desired {
    let config = worker_config(model);
    Desired {
        service_account: ServiceAccount {
            metadata: meta(model, &service_account_name(&model.name)),
            ..Default::default()
        },
        role: rbac::role(model),
        role_binding: rbac::role_binding(model),
        config_map: config::config_map(model, &config),
        service: service(model),
        pod_disruption_budget: pdb(model),
        network_policy: network::policy(model),
        stateful_set: statefulset::stateful_set(model, replicas, &config_hash(&config)),
    }
}

/// Metadata of an owned object: labels and the controller reference that
/// lets garbage collection delete it with the StreamApp.
pub fn meta(model: &AppModel, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(model.namespace.clone()),
        labels: Some(labels(model)),
        owner_references: Some(vec![owner_reference(model)]),
        ..Default::default()
    }
}

pub fn owner_reference(model: &AppModel) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", millrace_crds::GROUP, millrace_crds::VERSION),
        kind: "StreamApp".into(),
        name: model.name.clone(),
        uid: model.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Headless: gives each worker a stable DNS name for its admin endpoint,
/// and names the app's query port (any worker answers for any key).
fn service(model: &AppModel) -> Service {
    let query = model.query.as_ref().map(|q| ServicePort {
        name: Some(QUERY_PORT_NAME.into()),
        port: q.port.into(),
        target_port: Some(IntOrString::String(QUERY_PORT_NAME.into())),
        ..Default::default()
    });
    Service {
        metadata: meta(model, &model.name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&model.name)),
            publish_not_ready_addresses: Some(true),
            ports: Some(
                std::iter::once(ServicePort {
                    name: Some(ADMIN_PORT_NAME.into()),
                    port: model.admin_port.into(),
                    target_port: Some(IntOrString::String(ADMIN_PORT_NAME.into())),
                    ..Default::default()
                })
                .chain(query)
                .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One worker down at a time for voluntary disruptions: its tasks move to
/// standbys while the rest keep processing.
fn pdb(model: &AppModel) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(model, &model.name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&model.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
