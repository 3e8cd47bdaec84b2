//! Who may reach the workers: a NetworkPolicy per app. The query port
//! (state, read-only) answers only pods of the app's own namespace; the
//! admin port (health, metrics, `/tasks`, read-only) is open by default, as
//! the operator, the kubelet and Prometheus may run anywhere, or limited to
//! the peers the operator was given (chart value `workers.adminFrom`, with
//! the operator's own namespace added). A custom image may serve
//! ports of its own: its pods are left open. NetworkPolicies add up, so a
//! team widens access with a policy of its own (docs/queries.md).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, ADMIN_PORT_NAME, QUERY_PORT_NAME};
use crate::model::{selector_labels, AppModel, Workload};

fn port(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub fn policy(model: &AppModel) -> NetworkPolicy {
    let ingress = match &model.workload {
        Workload::Custom { .. } => vec![NetworkPolicyIngressRule::default()],
        Workload::Pipeline { .. } => {
            let admin = NetworkPolicyIngressRule {
                ports: Some(vec![port(ADMIN_PORT_NAME)]),
                from: model.admin_from.clone(),
            };
            let query = model.query.as_ref().map(|_| NetworkPolicyIngressRule {
                ports: Some(vec![port(QUERY_PORT_NAME)]),
                // Any pod of this namespace (the app's own workers forward
                // to each other).
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector::default()),
                    ..Default::default()
                }]),
            });
            std::iter::once(admin).chain(query).collect()
        }
    };
    NetworkPolicy {
        metadata: meta(model, &model.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&model.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}
