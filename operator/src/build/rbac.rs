//! The workers' identity: they may read their placement, and nothing
//! else. Their configuration and the Secrets the app names reach them as
//! volumes and environment, which the kubelet reads with its own identity,
//! so a worker (or a custom processor's code in it) cannot read any Secret
//! through the API, not even the ones it is given.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{meta, service_account_name};
use crate::model::AppModel;

pub fn role(model: &AppModel) -> Role {
    Role {
        metadata: meta(model, &service_account_name(&model.name)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![millrace_crds::placement::placement_config_map(
                &model.name,
            )]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    }
}

pub fn role_binding(model: &AppModel) -> RoleBinding {
    let name = service_account_name(&model.name);
    RoleBinding {
        metadata: meta(model, &name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(model.namespace.clone()),
            ..Default::default()
        }]),
    }
}
