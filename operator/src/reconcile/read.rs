//! What a reconcile reads, gathered into one [`Observed`] value: the
//! StatefulSet, the partition counts (through the Secrets the Kafka spec
//! names) and the placement document. Everything after it (scale, build,
//! conditions) is pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use millrace_crds::placement::{placement_config_map, PlacementDoc, PLACEMENT_KEY};
use millrace_crds::{KafkaSpec, ProcessingGuarantee};

use crate::conditions::Degradation;
use crate::error::Result;
use crate::kafka;
use crate::model::AppModel;

/// One reconcile's view of the cluster and Kafka.
pub struct Observed {
    pub statefulset: Option<StatefulSet>,
    /// The task count (`None`: the app has no source topics), or why Kafka
    /// does not give one: the app is degraded, not the reconcile failed.
    pub tasks: Result<Option<i32>, Degradation>,
    /// The placement document, when there is one that parses.
    pub placement: Option<PlacementDoc>,
}

pub async fn read(client: &Client, model: &AppModel) -> Result<Observed> {
    let (statefulset, tasks, placement) = tokio::join!(
        statefulset(client, &model.namespace, &model.name),
        check_kafka(client, model),
        placement(client, model),
    );
    Ok(Observed {
        statefulset: statefulset?,
        tasks,
        placement: placement?,
    })
}

pub async fn statefulset(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<StatefulSet>> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?)
}

/// The placement document. Not reading it fails the reconcile (retried):
/// taken as none, the drain floor would let a scale-down remove pods that
/// still hold tasks, which would then be fenced instead of handed over. A
/// document that does not parse (edited by hand) counts as none: the
/// placement driver cannot move tasks by it either, and reports it as its
/// error on every poll.
async fn placement(client: &Client, model: &AppModel) -> Result<Option<PlacementDoc>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &model.namespace);
    let Some(cm) = api.get_opt(&placement_config_map(&model.name)).await? else {
        return Ok(None);
    };
    Ok(cm
        .data
        .as_ref()
        .and_then(|d| d.get(PLACEMENT_KEY))
        .and_then(|json| PlacementDoc::parse(json).ok()))
}

/// The source topics exist and agree on their partition count; output
/// topics exist. The task count: that count, or more with a set
/// `repartitionPartitions`.
async fn check_kafka(client: &Client, model: &AppModel) -> Result<Option<i32>, Degradation> {
    let sources = model.source_topics();
    if sources.is_empty() {
        return Ok(None);
    }
    let props = kafka_properties(client, &model.namespace, &model.kafka).await?;
    let mut topics = sources.clone();
    topics.extend(model.output_topics());
    let exactly_once = model.guarantee == ProcessingGuarantee::ExactlyOnce;
    let (counts, transaction_max) = tokio::task::spawn_blocking(move || {
        let counts = kafka::partition_counts(&props, &topics);
        let max = exactly_once
            .then(|| kafka::transaction_max_timeout_ms(&props))
            .flatten();
        (counts, max)
    })
    .await
    .map_err(|e| Degradation {
        reason: "KafkaUnavailable",
        message: e.to_string(),
    })?;
    kafka::check_transaction_timeout(model.guarantee, model.transaction_timeout, transaction_max)?;
    let counts = counts.map_err(|e| Degradation {
        reason: "KafkaUnavailable",
        message: format!(
            "cannot reach Kafka at {}: {e}; retrying",
            model.kafka.bootstrap_servers
        ),
    })?;
    let source_partitions = kafka::check_topics(
        model.source_field(),
        &sources,
        &model.output_topics(),
        &counts,
    )?;
    Ok(source_partitions.map(|n| model.task_count(n)))
}

/// The admin client properties of `spec`, with the Secrets it names read
/// from `namespace`.
pub(crate) async fn kafka_properties(
    client: &Client,
    namespace: &str,
    spec: &KafkaSpec,
) -> Result<BTreeMap<String, String>, Degradation> {
    let secrets = read_secrets(client, namespace, &kafka::secret_names(spec)).await?;
    kafka::admin_properties(spec, &secrets)
}

async fn read_secrets(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<kafka::Secrets, Degradation> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    for name in names {
        match api.get_opt(name).await {
            Ok(Some(s)) => {
                secrets.insert(name.clone(), s);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Degradation {
                    reason: "SecretUnreadable",
                    message: format!("reading Secret '{name}': {e}"),
                })
            }
        }
    }
    Ok(secrets)
}
