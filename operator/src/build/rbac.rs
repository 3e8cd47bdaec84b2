//! The workers' identity: they may read their own configuration and
//! placement, and the Secrets the app names, and nothing else.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::statefulset::referenced_secrets;
use super::{config_map_name, meta, service_account_name};
use crate::model::AppModel;

pub fn role(model: &AppModel) -> Role {
    let mut rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        resource_names: Some(vec![
            config_map_name(&model.name),
            millrace_crds::placement::placement_config_map(&model.name),
        ]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    }];
    let secrets = referenced_secrets(model);
    if !secrets.is_empty() {
        rules.push(PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(secrets),
            verbs: vec!["get".into()],
            ..Default::default()
        });
    }
    Role {
        metadata: meta(model, &service_account_name(&model.name)),
        rules: Some(rules),
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
