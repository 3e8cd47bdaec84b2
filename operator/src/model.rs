//! Validate: a StreamApp → the typed model the builders use. Pure.
//!
//! The API server already enforced the schema and its CEL rules; this adds
//! what needs code: the pipeline compiler, the Kafka property deny-list,
//! durations, reserved names. Every problem is returned, each naming the
//! field, so one `kubectl describe` shows them all.

use crate::autoscale::policy::{Mode, Policy, POD_START_S};
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use millrace_crds::durations;
use millrace_crds::worker_config::CustomIo;
use millrace_crds::{
    kafka_spec_problems, AutoscalingMode, AutoscalingSpec, DeletionPolicy, KafkaSpec, PipelineSpec,
    ProcessingGuarantee, StreamApp, TopicName, WorkerTemplate,
};

/// Operator-wide settings that shape every app.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Image of pipeline workers: the `millrace-runtime` of this operator's version.
    pub runtime_image: String,
    pub image_pull_policy: String,
    pub admin_port: u16,
    /// Who may reach workers' admin port: anyone when `None` (chart value
    /// `workers.restrictAdminPort` off), else these NetworkPolicy peers.
    pub admin_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            runtime_image: format!(
                "ghcr.io/millrace-dev/millrace-runtime:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".into(),
            admin_port: 8080,
            admin_from: None,
        }
    }
}

pub use millrace_crds::Invalid;

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

/// What the workers run.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Pipeline {
        spec: PipelineSpec,
        outputs: Vec<TopicName>,
        /// Join tables: read like sources, so co-partitioned with them.
        tables: Vec<TopicName>,
        /// The task count for the sources' partition count.
        partitioning: millrace_pipeline::Partitioning,
    },
    Custom {
        command: Option<Vec<String>>,
        args: Option<Vec<String>>,
        io: CustomIo,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateModel {
    pub size: Quantity,
    pub storage_class_name: Option<String>,
    pub standby_replicas: i32,
    /// Changelog records behind within which a copy counts as caught up.
    pub acceptable_lag: u64,
    /// Most warm-up copies at once.
    pub max_warmups: usize,
}

/// A validated StreamApp.
#[derive(Debug, Clone, PartialEq)]
pub struct AppModel {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub application_id: String,
    pub guarantee: ProcessingGuarantee,
    pub commit_interval: Duration,
    pub transaction_timeout: Duration,
    pub kafka: KafkaSpec,
    pub workload: Workload,
    pub image: String,
    pub image_pull_policy: String,
    pub admin_port: u16,
    pub admin_from: Option<Vec<NetworkPolicyPeer>>,
    /// Workers wanted, before the task cap the reconciler applies.
    pub replicas: i32,
    pub autoscaling: Option<Autoscaling>,
    pub state: Option<StateModel>,
    /// The query API (`spec.query`): a stateful pipeline's, unless off.
    pub query: Option<millrace_crds::worker_config::QueryConfig>,
    pub template: WorkerTemplate,
    pub deletion_policy: DeletionPolicy,
}

impl AppModel {
    pub fn source_topics(&self) -> Vec<TopicName> {
        match &self.workload {
            Workload::Pipeline { spec, tables, .. } => {
                spec.source.topics.iter().chain(tables).cloned().collect()
            }
            Workload::Custom { io, .. } => io.source.topics.clone(),
        }
    }

    /// Where the source topics are declared, for messages about them.
    pub fn source_field(&self) -> &'static str {
        match &self.workload {
            Workload::Pipeline { tables, .. } if !tables.is_empty() => {
                "spec.pipeline.source.topics and the join tables"
            }
            Workload::Pipeline { .. } => "spec.pipeline.source.topics",
            Workload::Custom { .. } => "spec.source.topics",
        }
    }

    /// The app's task count when its sources have `source_partitions`
    /// partitions: more with a set `repartitionPartitions`.
    pub fn task_count(&self, source_partitions: i32) -> i32 {
        match &self.workload {
            Workload::Pipeline { partitioning, .. } => partitioning.task_count(source_partitions),
            Workload::Custom { .. } => source_partitions,
        }
    }

    pub fn output_topics(&self) -> Vec<TopicName> {
        match &self.workload {
            Workload::Pipeline { outputs, .. } => outputs.clone(),
            Workload::Custom { io, .. } => io.output_topics(),
        }
    }
}

pub use millrace_crds::application_id;

/// Longest app name: its pods carry `controller-revision-hash:
/// <name>-<10-character hash>`, a label value, which holds 63 characters.
pub const MAX_APP_NAME: usize = 52;

/// Why `name` cannot name the app's objects (its Service needs a DNS-1035
/// label: lowercase letters, digits and '-', starting with a letter), or
/// `None`.
fn app_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_APP_NAME {
        return Some(format!(
            "'{name}' is {} characters long; at most {MAX_APP_NAME} (the workers' pod labels hold the name and a hash)",
            name.len()
        ));
    }
    let label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!label).then(|| {
        format!("'{name}' must be lowercase letters, digits and '-', starting with a letter (it names the app's Service)")
    })
}

pub fn validate(app: &StreamApp, defaults: &Defaults) -> Result<AppModel, Vec<Invalid>> {
    let spec = &app.spec;
    let mut problems = Vec::new();
    if let Some(problem) = app_name_problem(app.metadata.name.as_deref().unwrap_or_default()) {
        problems.push(invalid("metadata.name", problem));
    }

    let bootstrap = spec.kafka.bootstrap_servers.trim();
    if bootstrap.is_empty() {
        problems.push(invalid("spec.kafka.bootstrapServers", "is required"));
    }
    for server in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            problems.push(invalid(
                "spec.kafka.bootstrapServers",
                format!("'{server}' is not host:port"),
            ));
        }
    }
    problems.extend(kafka_spec_problems(&spec.kafka));

    let guarantee = spec.processing_guarantee;
    let timing = durations::timing(spec)
        .map_err(|timing_problems| problems.extend(timing_problems))
        .ok();

    let workload = match (&spec.pipeline, &spec.image) {
        (Some(pipeline), None) => match millrace_pipeline::compile(pipeline) {
            Ok(compiled) => {
                let mut unrunnable = compiled.unrunnable_problems(guarantee);
                let stores = compiled.stores();
                if !stores.is_empty() && spec.state.is_none() {
                    unrunnable.push((
                        "spec.state".to_string(),
                        format!(
                            "the stateful steps {stores:?} keep their state on a volume: add                              `state: {{}}` (a 1Gi volume per worker) or size it"
                        ),
                    ));
                }
                let runnable = unrunnable.is_empty();
                problems.extend(
                    unrunnable
                        .into_iter()
                        .map(|(field, message)| Invalid { field, message }),
                );
                runnable.then(|| Workload::Pipeline {
                    spec: pipeline.clone(),
                    outputs: compiled.static_output_topics(),
                    tables: compiled.table_topics(),
                    partitioning: compiled.partitioning,
                })
            }
            Err(errors) => {
                problems.extend(errors.0.into_iter().map(|e| {
                    let message = e.to_string();
                    let message = message
                        .strip_prefix(&format!("{}: ", e.field))
                        .unwrap_or(&message)
                        .to_string();
                    Invalid {
                        field: e.field,
                        message,
                    }
                }));
                None
            }
        },
        (None, Some(_)) => match CustomIo::from_spec(spec) {
            Some(io) if !io.problems().is_empty() => {
                problems.extend(io.problems());
                None
            }
            Some(io) => Some(Workload::Custom {
                command: spec.command.clone(),
                args: spec.args.clone(),
                io,
            }),
            None => {
                problems.push(invalid(
                    "spec.source",
                    "is required with spec.image: the topics the custom processor reads",
                ));
                None
            }
        },
        _ => {
            problems.push(invalid(
                "spec",
                "set exactly one of spec.pipeline (zero-code) or spec.image (custom runtime)",
            ));
            None
        }
    };
    if spec.pipeline.is_some() && (spec.command.is_some() || spec.args.is_some()) {
        problems.push(invalid(
            "spec.command",
            "spec.command and spec.args apply only with spec.image",
        ));
    }
    if spec.pipeline.is_some() {
        for (field, set) in [
            ("spec.source", spec.source.is_some()),
            ("spec.outputs", spec.outputs.is_some()),
            ("spec.onError", spec.on_error.is_some()),
        ] {
            if set {
                problems.push(invalid(
                    field,
                    "applies only with spec.image (a pipeline declares its source, routes and onError under spec.pipeline)",
                ));
            }
        }
    }

    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 0 {
        problems.push(invalid("spec.replicas", "must not be negative"));
    }
    let autoscaling = spec
        .autoscaling
        .as_ref()
        .map(|a| autoscaling_settings(&mut problems, a));

    let template = spec.template.clone().unwrap_or_default();
    for (i, env) in template.env.iter().enumerate() {
        if env.name.starts_with("MILLRACE_") {
            problems.push(invalid(
                &format!("spec.template.env[{i}].name"),
                format!("'{}' is reserved (MILLRACE_ prefix)", env.name),
            ));
        }
    }

    if let Some(s) = &spec.state {
        if s.acceptable_lag.is_some_and(|l| l < 0) {
            problems.push(invalid(
                "spec.state.acceptableLag",
                "must be 0 or more (changelog records)",
            ));
        }
        if s.max_warmups.is_some_and(|m| m < 1) {
            problems.push(invalid("spec.state.maxWarmups", "must be 1 or more"));
        }
    }
    let state = spec.state.as_ref().map(|s| StateModel {
        size: s.size.clone().unwrap_or_else(|| Quantity("1Gi".into())),
        storage_class_name: s.storage_class_name.clone(),
        standby_replicas: s.standby_replicas,
        acceptable_lag: s.acceptable_lag(),
        max_warmups: s.max_warmups(),
    });

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(AppModel {
        name: app.metadata.name.clone().unwrap_or_default(),
        namespace: app
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        uid: app.metadata.uid.clone().unwrap_or_default(),
        application_id: application_id(app),
        guarantee,
        commit_interval: timing.map(|t| t.commit_interval).unwrap_or_default(),
        transaction_timeout: timing.map(|t| t.transaction_timeout).unwrap_or_default(),
        kafka: spec.kafka.clone(),
        workload: workload.expect("no problems means a workload"),
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| defaults.runtime_image.clone()),
        image_pull_policy: defaults.image_pull_policy.clone(),
        admin_port: defaults.admin_port,
        admin_from: defaults.admin_from.clone(),
        replicas,
        autoscaling,
        state,
        query: spec.query_config(),
        template,
        deletion_policy: spec.deletion_policy,
    })
}

/// Longest `spec.autoscaling.pollInterval`: slower than this is not autoscaling.
const MAX_POLL_S: f64 = 3600.0;

/// The autoscaling settings, checked and with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaling {
    pub policy: Policy,
    pub poll_interval: Duration,
}

/// Checks `spec.autoscaling` and applies its defaults.
pub fn autoscaling_settings(problems: &mut Vec<Invalid>, a: &AutoscalingSpec) -> Autoscaling {
    let defaults = Policy::default();
    if a.min_replicas < 0 {
        problems.push(invalid(
            "spec.autoscaling.minReplicas",
            "must not be negative",
        ));
    }
    if a.max_replicas.is_some_and(|m| a.min_replicas > m) {
        problems.push(invalid(
            "spec.autoscaling.minReplicas",
            "must not exceed spec.autoscaling.maxReplicas",
        ));
    }
    let mut seconds = |field: &str, text: Option<&String>, default: f64| -> f64 {
        match text {
            Some(t) => duration_field(problems, field, t).map_or(default, |d| d.as_secs_f64()),
            None => default,
        }
    };
    let up = a.scale_up.clone().unwrap_or_default();
    let down = a.scale_down.clone().unwrap_or_default();
    let mut policy = Policy {
        mode: match a.mode {
            AutoscalingMode::Off => Mode::Off,
            AutoscalingMode::Lag => Mode::Lag,
            AutoscalingMode::DryRun => Mode::DryRun,
        },
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        target_drain_s: seconds(
            "spec.autoscaling.targetDrainTime",
            a.target_drain_time.as_ref(),
            defaults.target_drain_s,
        ),
        activation_lag: a.activation_lag.unwrap_or(defaults.activation_lag),
        up_window_s: seconds(
            "spec.autoscaling.scaleUp.stabilizationWindow",
            up.stabilization_window.as_ref(),
            defaults.up_window_s,
        ),
        up_max_step: up.max_step,
        down_window_s: seconds(
            "spec.autoscaling.scaleDown.stabilizationWindow",
            down.stabilization_window.as_ref(),
            defaults.down_window_s,
        ),
        down_max_step: down.max_step,
        cooldown_s: seconds(
            "spec.autoscaling.cooldown",
            a.cooldown.as_ref(),
            defaults.cooldown_s,
        ),
        reaction_s: defaults.reaction_s,
        rate_limit: None,
    };
    let poll = seconds(
        "spec.autoscaling.pollInterval",
        a.poll_interval.as_ref(),
        10.0,
    );
    policy.reaction_s = poll + policy.up_window_s + POD_START_S;
    if policy.target_drain_s < 1.0 {
        problems.push(invalid(
            "spec.autoscaling.targetDrainTime",
            "must be at least 1s",
        ));
    }
    if !(1.0..=MAX_POLL_S).contains(&poll) {
        problems.push(invalid(
            "spec.autoscaling.pollInterval",
            "must be between 1s and 1h",
        ));
    }
    Autoscaling {
        policy,
        // Clamped: a refused value must still build (never a panic).
        poll_interval: Duration::from_secs_f64(poll.clamp(1.0, MAX_POLL_S)),
    }
}

fn duration_field(problems: &mut Vec<Invalid>, field: &str, text: &str) -> Option<Duration> {
    durations::duration_field(field, text)
        .map_err(|problem| problems.push(problem))
        .ok()
}

/// Labels on every object of an app, and the subset that selects its pods.
pub fn labels(model: &AppModel) -> BTreeMap<String, String> {
    let mut labels = selector_labels(&model.name);
    labels.insert("app.kubernetes.io/instance".into(), model.name.clone());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "millrace-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "millrace".into());
    labels
}

/// The label every worker pod of every app carries.
pub const WORKER_LABEL: (&str, &str) = ("app.kubernetes.io/name", "millrace-worker");

pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (WORKER_LABEL.0.to_string(), WORKER_LABEL.1.to_string()),
        ("millrace.dev/app".to_string(), name.to_string()),
    ])
}

/// The `/scale` selector string.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(spec: serde_json::Value) -> StreamApp {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "millrace.dev/v1alpha1", "kind": "StreamApp",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u"},
            "spec": spec
        }))
        .unwrap()
    }

    fn pipeline() -> serde_json::Value {
        serde_json::json!({"source": {"topics": ["orders"]}, "steps": [{"route": {"default": "out"}}]})
    }

    fn problems(spec: serde_json::Value) -> Vec<String> {
        validate(&app(spec), &Defaults::default())
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_fill_in() {
        let m = validate(&app(serde_json::json!({"kafka": {"bootstrapServers": "k:9092"}, "pipeline": pipeline()})), &Defaults::default()).unwrap();
        assert_eq!(m.application_id, "shop.orders");
        assert_eq!(m.guarantee, ProcessingGuarantee::ExactlyOnce);
        assert_eq!(
            (m.commit_interval, m.transaction_timeout),
            (Duration::from_millis(100), Duration::from_secs(60))
        );
        assert_eq!(m.replicas, 1);
        assert_eq!(m.output_topics(), [TopicName("out".into())]);
        assert!(m.state.is_none());
    }

    #[test]
    fn stateful_steps_need_exactly_once_and_a_state_volume() {
        let stateful = serde_json::json!({"source": {"topics": ["orders"]}, "steps": [
            {"name": "once", "dedup": {"id": "value.id", "within": "1m"}},
            {"route": {"default": "out"}}
        ]});
        let found = problems(
            serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "processingGuarantee": "AtLeastOnce", "pipeline": stateful}),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("spec.processingGuarantee: ")
                && found[0].contains("need processingGuarantee ExactlyOnce"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("spec.state: the stateful steps [\"once\"]"),
            "{found:?}"
        );
        let runnable = serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": stateful, "state": {}});
        assert_eq!(
            problems(runnable),
            Vec::<String>::new(),
            "ExactlyOnce with a volume runs"
        );
    }

    #[test]
    fn names_the_apps_objects_cannot_carry_are_refused_naming_metadata_name() {
        let named = |name: &str| {
            let mut a = app(
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline()}),
            );
            a.metadata.name = Some(name.into());
            validate(&a, &Defaults::default()).err().map(|p| {
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        };
        assert_eq!(named("orders-v2"), None);
        assert_eq!(named(&"a".repeat(MAX_APP_NAME)), None);
        for bad in [
            "orders.v2",
            "Orders",
            "2orders",
            "orders-",
            &"a".repeat(MAX_APP_NAME + 1),
        ] {
            let problem = named(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.starts_with("metadata.name: "), "{problem}");
        }
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"kafka": {"bootstrapServers": ""}, "pipeline": pipeline()}),
                "spec.kafka.bootstrapServers: is required",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k"}, "pipeline": pipeline()}),
                "spec.kafka.bootstrapServers: 'k' is not host:port",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1", "properties": {"isolation.level": "read_uncommitted"}}, "pipeline": pipeline()}),
                "spec.kafka.properties['isolation.level']: is set by Millrace",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "commitInterval": "1m", "transactionTimeout": "30s"}),
                "spec.commitInterval: must be shorter",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "commitInterval": "soon"}),
                "spec.commitInterval: 'soon' is not a duration",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}}),
                "spec: set exactly one of spec.pipeline",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "args": ["x"]}),
                "spec.command: spec.command and spec.args apply only with spec.image",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "replicas": -2}),
                "spec.replicas: must not be negative",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "autoscaling": {"minReplicas": 3, "maxReplicas": 1}}),
                "spec.autoscaling.minReplicas: must not exceed",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "template": {"env": [{"name": "MILLRACE_CONFIG", "value": "x"}]}}),
                "spec.template.env[0].name: 'MILLRACE_CONFIG' is reserved",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x"}),
                "spec.source: is required with spec.image",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "outputs": ["x"]}),
                "spec.outputs: applies only with spec.image",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "onError": {"policy": "DeadLetter"}}),
                "spec.onError.deadLetterTopic: is required with policy DeadLetter",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "onError": {"policy": "DeadLetter", "deadLetterTopic": "in"}}),
                "spec.onError.deadLetterTopic: 'in' is a source topic",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "image": "x", "source": {"topics": ["in"]}, "outputs": ["out", "in"]}),
                "spec.outputs[1]: 'in' is a source topic",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "commitInterval": "18446744073709551615s1s"}),
                "spec.commitInterval: '18446744073709551615s1s' is not a duration",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "autoscaling": {"pollInterval": "5124095576030431h"}}),
                "spec.autoscaling.pollInterval: must be between 1s and 1h",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": {"source": {"topics": ["a"]}, "steps": [{"filter": "nope == 1"}, {"route": {"default": "b"}}]}}),
                "spec.pipeline.steps[0].filter (step 'step-0'): unknown variable 'nope'",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "state": {"acceptableLag": -1}}),
                "spec.state.acceptableLag: must be 0 or more",
            ),
            (
                serde_json::json!({"kafka": {"bootstrapServers": "k:1"}, "pipeline": pipeline(), "state": {"maxWarmups": 0}}),
                "spec.state.maxWarmups: must be 1 or more",
            ),
        ];
        for (spec, expected) in cases {
            let found = problems(spec.clone());
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(expected) || p.contains(expected)),
                "{spec}: expected '{expected}' in {found:?}"
            );
        }
    }

    #[test]
    fn at_least_once_commits_every_five_seconds_and_state_defaults_to_1gi() {
        let m = validate(
            &app(serde_json::json!({"kafka": {"bootstrapServers": "k:9092"}, "pipeline": pipeline(), "processingGuarantee": "AtLeastOnce", "state": {}})),
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(m.commit_interval, Duration::from_secs(5));
        let state = m.state.unwrap();
        assert_eq!(state.size.0, "1Gi");
        assert_eq!((state.acceptable_lag, state.max_warmups), (10_000, 8));
    }

    #[test]
    fn selector_string_matches_the_pod_labels() {
        assert_eq!(
            selector_string("orders"),
            "app.kubernetes.io/name=millrace-worker,millrace.dev/app=orders"
        );
    }
}
