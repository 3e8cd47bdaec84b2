//! Each spec field's effect on the built objects.

use super::*;
use crate::model::{validate, Defaults};
use millrace_crds::StreamApp;

fn app(spec_yaml: &str) -> StreamApp {
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: orders, namespace: shop, uid: u-1}}\nspec:\n{}",
        spec_yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

const PIPELINE_ONLY: &str =
    "pipeline:\n  source: {topics: [orders]}\n  steps: [{route: {default: out}}]\n";
const PIPELINE: &str = "kafka: {bootstrapServers: 'k:9092'}\npipeline:\n  source: {topics: [orders]}\n  steps: [{route: {default: out}}]\n";

fn build(spec_yaml: &str) -> Desired {
    let model = validate(&app(spec_yaml), &Defaults::default()).unwrap_or_else(|e| panic!("{e:?}"));
    let replicas = model.replicas;
    desired(&model, replicas)
}

fn pod(d: &Desired) -> &k8s_openapi::api::core::v1::PodSpec {
    d.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn env_names(d: &Desired) -> Vec<String> {
    pod(d).containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

#[test]
fn every_object_is_owned_by_the_app_and_labelled() {
    let d = build(PIPELINE);
    let metas = [
        &d.service_account.metadata,
        &d.role.metadata,
        &d.role_binding.metadata,
        &d.config_map.metadata,
        &d.service.metadata,
        &d.pod_disruption_budget.metadata,
        &d.network_policy.metadata,
        &d.stateful_set.metadata,
    ];
    for m in metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("StreamApp", "u-1", Some(true))
        );
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.labels.as_ref().unwrap()["millrace.dev/app"], "orders");
    }
}

#[test]
fn statefulset_defaults() {
    let d = build(PIPELINE);
    let sts = d.stateful_set.spec.as_ref().unwrap();
    assert_eq!(sts.replicas, Some(1));
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(sts.service_name.as_deref(), Some("orders"));
    assert!(sts.volume_claim_templates.is_none(), "no state, no claim");
    let p = pod(&d);
    assert_eq!(p.service_account_name.as_deref(), Some("orders-worker"));
    assert_eq!(
        p.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let c = &p.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(Defaults::default().runtime_image.as_str())
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&["millrace-runtime".to_string()][..])
    );
    assert_eq!(
        c.security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    for name in [
        "MILLRACE_POD_NAME",
        "MILLRACE_POD_NAMESPACE",
        "MILLRACE_POD_IP",
        "MILLRACE_CONFIG",
    ] {
        assert!(env_names(&d).contains(&name.to_string()), "{name}");
    }
    assert!(
        p.affinity.as_ref().unwrap().pod_anti_affinity.is_some(),
        "spread across nodes by default"
    );
}

#[test]
fn replicas_and_image_and_command() {
    let d = build("kafka: {bootstrapServers: 'k:9092'}\nimage: registry/me/custom:1\nsource: {topics: [in]}\noutputs: [out]\ncommand: [/app]\nargs: [--fast]\nreplicas: 3\n");
    assert_eq!(d.stateful_set.spec.as_ref().unwrap().replicas, Some(3));
    let c = &pod(&d).containers[0];
    assert_eq!(c.image.as_deref(), Some("registry/me/custom:1"));
    assert_eq!(c.command.as_deref(), Some(&["/app".to_string()][..]));
    assert_eq!(c.args.as_deref(), Some(&["--fast".to_string()][..]));
    let config: serde_json::Value =
        serde_json::from_str(&d.config_map.data.as_ref().unwrap()["config.json"]).unwrap();
    assert!(
        config.get("pipeline").is_none(),
        "custom images bring their own processing"
    );
    assert_eq!(
        config["custom"],
        serde_json::json!({"source": {"topics": ["in"], "keyFormat": "String", "valueFormat": "Json", "partitioner": "Murmur2"}, "outputs": ["out"], "onError": {"policy": "Stop"}}),
        "their topics reach the worker"
    );
    let model = validate(
        &app("kafka: {bootstrapServers: 'k:9092'}\nimage: x\nsource: {topics: [in]}\noutputs: [out]\nonError: {policy: DeadLetter, deadLetterTopic: dlq}\n"),
        &Defaults::default(),
    )
    .unwrap();
    let names =
        |topics: Vec<millrace_crds::TopicName>| topics.into_iter().map(|t| t.0).collect::<Vec<_>>();
    assert_eq!(
        names(model.source_topics()),
        ["in"],
        "its tasks come from its source"
    );
    assert_eq!(
        names(model.output_topics()),
        ["dlq", "out"],
        "its outputs and dead-letter topic are checked to exist like a pipeline's"
    );
}

#[test]
fn join_tables_are_read_like_sources_so_checked_with_them() {
    let model = validate(
        &app("kafka: {bootstrapServers: 'k:9092'}\nstate: {}\npipeline:\n  source: {topics: [orders]}\n  steps:\n  - {name: j, join: {table: customers, as: c}}\n  - route: {default: out}\n"),
        &Defaults::default(),
    )
    .unwrap();
    let sources: Vec<String> = model.source_topics().into_iter().map(|t| t.0).collect();
    assert_eq!(
        sources,
        ["orders", "customers"],
        "one partition count: the task count"
    );
    assert_eq!(
        model.source_field(),
        "spec.pipeline.source.topics and the join tables"
    );
    let counts = std::collections::BTreeMap::from([
        (millrace_crds::TopicName("orders".into()), Some(8)),
        (millrace_crds::TopicName("customers".into()), Some(4)),
        (millrace_crds::TopicName("out".into()), Some(8)),
    ]);
    let refused = crate::kafka::check_topics(
        model.source_field(),
        &model.source_topics(),
        &model.output_topics(),
        &counts,
    )
    .unwrap_err();
    assert_eq!(refused.reason, "PartitionMismatch");
    assert!(
        refused.message.contains("customers=4"),
        "{}",
        refused.message
    );
}

#[test]
fn state_adds_a_claim_template_and_mount() {
    let d = build(&format!(
        "{PIPELINE}state: {{standbyReplicas: 1, size: 5Gi, storageClassName: fast}}\n"
    ));
    let claim = &d
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .as_ref()
        .unwrap()[0];
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "5Gi"
    );
    let mounts = pod(&d).containers[0].volume_mounts.as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == STATE_MOUNT));
}

/// The query port: on the container, the Service, the worker's
/// configuration and the NetworkPolicy (this namespace only), for a
/// stateful pipeline unless turned off.
#[test]
fn a_stateful_pipeline_serves_queries_to_its_own_namespace_only() {
    let stateful = format!("{PIPELINE}state: {{}}\nquery: {{port: 9090, scan: true}}\n");
    let d = build(&stateful);
    let ports = |d: &Desired| -> Vec<(String, i32)> {
        let c = &pod(d).containers[0];
        let s = d.service.spec.as_ref().unwrap().ports.clone().unwrap();
        c.ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .chain(
                s.iter()
                    .map(|p| (format!("svc-{}", p.name.clone().unwrap()), p.port)),
            )
            .collect()
    };
    assert!(
        ports(&d).contains(&("query".into(), 9090)),
        "{:?}",
        ports(&d)
    );
    assert!(ports(&d).contains(&("svc-query".into(), 9090)));
    let config: serde_json::Value =
        serde_json::from_str(&d.config_map.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(
        config["query"],
        serde_json::json!({"port": 9090, "scan": true, "maxConcurrent": 64})
    );
    let rules = d.network_policy.spec.clone().unwrap().ingress.unwrap();
    let rule = |name: &str| {
        rules.iter().find(|r| {
            r.ports.as_ref().is_some_and(|p| {
                p[0].port
                    == Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                            name.into(),
                        ),
                    )
            })
        })
    };
    assert_eq!(
        rule("admin").unwrap().from,
        None,
        "metrics and health from anywhere"
    );
    let from = rule("query").unwrap().from.clone().unwrap();
    assert_eq!(
        from[0].pod_selector,
        Some(Default::default()),
        "pods of this namespace"
    );
    assert!(from[0].namespace_selector.is_none(), "and no other");

    let off = build(&format!(
        "{PIPELINE}state: {{}}\nquery: {{enabled: false}}\n"
    ));
    assert!(!ports(&off).iter().any(|(n, _)| n.contains("query")));
    let rules = off.network_policy.spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 1, "admin only: {rules:?}");
    assert!(
        !ports(&build(PIPELINE))
            .iter()
            .any(|(n, _)| n.contains("query")),
        "stateless"
    );
}

#[test]
fn config_carries_guarantee_intervals_and_app_id() {
    let d = build(&format!(
        "{PIPELINE}processingGuarantee: AtLeastOnce\ntransactionTimeout: 30s\n"
    ));
    let config: serde_json::Value =
        serde_json::from_str(&d.config_map.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(config["applicationId"], "shop.orders");
    assert_eq!(config["processingGuarantee"], "AtLeastOnce");
    assert_eq!(
        config["commitIntervalMs"], 5000,
        "AtLeastOnce commits every 5s by default"
    );
    assert_eq!(config["transactionTimeoutMs"], 30000);
    let eos = build(&format!("{PIPELINE}applicationId: orders-v2\n"));
    let config: serde_json::Value =
        serde_json::from_str(&eos.config_map.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(
        (
            config["applicationId"].as_str(),
            config["commitIntervalMs"].as_u64()
        ),
        (Some("orders-v2"), Some(100))
    );
}

#[test]
fn a_spec_change_rolls_the_pods_and_the_same_spec_does_not() {
    let hash = |d: &Desired| {
        d.stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(hash(&build(PIPELINE)), hash(&build(PIPELINE)));
    assert_ne!(
        hash(&build(PIPELINE)),
        hash(&build(&format!("{PIPELINE}commitInterval: 200ms\n")))
    );
}

#[test]
fn tls_and_sasl_come_from_secrets_the_workers_may_not_read() {
    let d = build(&format!(
        "{PIPELINE_ONLY}kafka:\n  bootstrapServers: 'k:9093'\n  tls: {{ca: {{name: kafka-ca, key: ca.crt}}}}\n  sasl: {{mechanism: SCRAM-SHA-512, credentials: {{secretName: kafka-user}}}}\n"
    ));
    let config: serde_json::Value =
        serde_json::from_str(&d.config_map.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(config["kafka"]["securityProtocol"], "SASL_SSL");
    assert_eq!(config["kafka"]["saslMechanism"], "SCRAM-SHA-512");
    assert_eq!(config["kafka"]["sslCaLocation"], "/etc/millrace/tls/ca.crt");
    assert!(
        !d.config_map.data.as_ref().unwrap()["config.json"].contains("password\":"),
        "no secret in the ConfigMap"
    );
    let c = &pod(&d).containers[0];
    let user = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MILLRACE_SASL_USERNAME")
        .unwrap();
    assert_eq!(
        user.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "kafka-user"
    );
    // The kubelet reads the Secrets for the pod; the workers may not.
    let rules = d.role.rules.as_ref().unwrap();
    assert!(
        rules
            .iter()
            .all(|r| r.resources.as_deref() == Some(&["configmaps".to_string()][..])),
        "{rules:?}"
    );
}

#[test]
fn the_role_reads_only_the_placement() {
    let d = build(PIPELINE);
    let rules = d.role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["orders-placement".to_string()][..])
    );
    assert!(!rules[0]
        .verbs
        .iter()
        .any(|v| v == "create" || v == "update" || v == "delete"));
}

#[test]
fn template_overrides_reach_the_pod() {
    let d = build(&format!(
        "{PIPELINE}template:\n  resources: {{requests: {{cpu: 250m}}, limits: {{memory: 256Mi}}}}\n  nodeSelector: {{disk: ssd}}\n  tolerations: [{{key: dedicated, operator: Exists}}]\n  env: [{{name: RUST_LOG, value: debug}}]\n  annotations: {{team: shop}}\n  labels: {{tier: gold}}\n  priorityClassName: high\n"
    ));
    let template = &d.stateful_set.spec.as_ref().unwrap().template;
    let meta = template.metadata.as_ref().unwrap();
    assert_eq!(meta.labels.as_ref().unwrap()["tier"], "gold");
    assert_eq!(meta.annotations.as_ref().unwrap()["team"], "shop");
    let p = pod(&d);
    assert_eq!(p.node_selector.as_ref().unwrap()["disk"], "ssd");
    assert_eq!(
        p.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
    let c = &p.containers[0];
    assert_eq!(
        c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "250m"
    );
    assert!(env_names(&d).contains(&"RUST_LOG".to_string()));
}

#[test]
fn service_is_headless_and_pdb_allows_one_down() {
    let d = build(PIPELINE);
    assert_eq!(
        d.service.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(
        d.pod_disruption_budget
            .spec
            .as_ref()
            .unwrap()
            .max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

/// `workers.restrictAdminPort`: the admin port answers the given peers only.
#[test]
fn a_restricted_admin_port_answers_the_given_peers_only() {
    use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
    let operator_namespace = NetworkPolicyPeer {
        namespace_selector: Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("kubernetes.io/metadata.name".into(), "ops".into())].into()),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let defaults = Defaults {
        admin_from: Some(vec![operator_namespace.clone()]),
        ..Defaults::default()
    };
    let model = validate(&app(PIPELINE), &defaults).unwrap();
    let d = desired(&model, model.replicas);
    let rules = d.network_policy.spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].from, Some(vec![operator_namespace]));
}
