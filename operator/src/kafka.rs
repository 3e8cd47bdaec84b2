//! Talking to the app's Kafka cluster: client properties (pure, from the
//! spec and its Secrets), topic metadata (I/O), and the task check (pure).

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use millrace_crds::identity::is_internal_topic;
use millrace_crds::{KafkaSpec, ProcessingGuarantee, SecretKeyRef, TopicName};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::conditions::Degradation;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Secrets named by the spec, by name.
pub type Secrets = BTreeMap<String, Secret>;

fn secret_value(
    secrets: &Secrets,
    name: &str,
    key: &str,
    field: &str,
) -> Result<String, Degradation> {
    let secret = secrets.get(name).ok_or_else(|| Degradation {
        reason: "SecretMissing",
        message: format!("{field}: Secret '{name}' not found"),
    })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone());
    bytes
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .ok_or_else(|| Degradation {
            reason: "SecretMissing",
            message: format!("{field}: Secret '{name}' has no key '{key}'"),
        })
}

/// Names of the Secrets the operator must read to connect.
pub fn secret_names(kafka: &KafkaSpec) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(tls) = kafka.tls.as_ref().filter(|t| t.enabled) {
        names.extend(
            [&tls.ca, &tls.client_cert, &tls.client_key]
                .into_iter()
                .flatten()
                .map(|r| r.name.clone()),
        );
    }
    if let Some(sasl) = &kafka.sasl {
        names.push(sasl.credentials.secret_name.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// librdkafka properties for the operator's own admin connection: PEM
/// contents in memory, never written to disk.
pub fn admin_properties(
    kafka: &KafkaSpec,
    secrets: &Secrets,
) -> Result<BTreeMap<String, String>, Degradation> {
    let mut props = kafka.properties.clone();
    props.insert("bootstrap.servers".into(), kafka.bootstrap_servers.clone());
    let tls = kafka.tls.as_ref().filter(|t| t.enabled);
    let protocol = millrace_crds::kafka::security_protocol(tls.is_some(), kafka.sasl.is_some());
    props.insert("security.protocol".into(), protocol.to_lowercase());
    if let Some(tls) = tls {
        let pem = |r: &Option<SecretKeyRef>, field: &str| {
            r.as_ref()
                .map(|r| secret_value(secrets, &r.name, &r.key, field))
                .transpose()
        };
        if let Some(ca) = pem(&tls.ca, "spec.kafka.tls.ca")? {
            props.insert("ssl.ca.pem".into(), ca);
        }
        if let Some(cert) = pem(&tls.client_cert, "spec.kafka.tls.clientCert")? {
            props.insert("ssl.certificate.pem".into(), cert);
        }
        if let Some(key) = pem(&tls.client_key, "spec.kafka.tls.clientKey")? {
            props.insert("ssl.key.pem".into(), key);
        }
    }
    if let Some(sasl) = &kafka.sasl {
        let c = &sasl.credentials;
        props.insert("sasl.mechanism".into(), sasl.mechanism.as_str().into());
        props.insert(
            "sasl.username".into(),
            secret_value(
                secrets,
                &c.secret_name,
                &c.username_key,
                "spec.kafka.sasl.credentials",
            )?,
        );
        props.insert(
            "sasl.password".into(),
            secret_value(
                secrets,
                &c.secret_name,
                &c.password_key,
                "spec.kafka.sasl.credentials",
            )?,
        );
    }
    Ok(props)
}

pub(crate) fn client_config(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in props {
        config.set(k, v);
    }
    config.set("socket.timeout.ms", "10000");
    config
}

/// Fences a worker: initialises a transactional producer with each of its
/// loops' transactional ids. The broker aborts the transactions the worker
/// left open and bumps each id's epoch, so the worker's producers can
/// commit nothing more. Blocking; call from `spawn_blocking`.
pub fn fence_worker(
    props: &BTreeMap<String, String>,
    application_id: &str,
    worker: &str,
) -> Result<(), String> {
    use millrace_crds::identity::{loop_transactional_ids, MAX_LOOPS};
    use rdkafka::producer::{BaseProducer, Producer};
    let threads: Vec<_> = loop_transactional_ids(application_id, worker, 0..MAX_LOOPS)
        .into_iter()
        .map(|id| {
            let mut config = client_config(props);
            config.set("transactional.id", &id);
            std::thread::spawn(move || -> Result<(), String> {
                let producer: BaseProducer = config.create().map_err(|e| format!("{id}: {e}"))?;
                producer
                    .init_transactions(std::time::Duration::from_secs(30))
                    .map_err(|e| format!("{id}: {e}"))
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a fencing thread panicked".to_string())??;
    }
    Ok(())
}

/// Partition count of each topic (`None`: the topic does not exist).
/// Blocking; call from `spawn_blocking`.
pub fn partition_counts(
    props: &BTreeMap<String, String>,
    topics: &[TopicName],
) -> Result<BTreeMap<TopicName, Option<i32>>, String> {
    let client = crate::kafka_clients::client(props)?;
    forget_earlier_errors(&client);
    let mut counts = BTreeMap::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(&topic.0), METADATA_TIMEOUT)
            .map_err(|e| {
                crate::kafka_clients::forget(props, &client);
                why(&client, e)
            })?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.0)
            .and_then(|t| match t.error() {
                None => Some(t.partitions().len() as i32),
                Some(_) => None,
            });
        counts.insert(topic.clone(), count);
    }
    Ok(counts)
}

/// Serves and forgets the errors a shared client met before this request
/// (perhaps another app's), so a failure names its own cause.
fn forget_earlier_errors(client: &BaseConsumer<LastError>) {
    let _ = client.poll(Duration::ZERO);
    *client.context().0.lock().unwrap() = None;
}

/// Remembers librdkafka's last error, which names why the brokers cannot
/// be used (an authentication failure, a failed TLS handshake and why):
/// the failed request itself says only "broker transport failure".
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // "All broker connections are down" follows the error that says why.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.0.lock().unwrap() = Some(reason.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// A failed request's error, with the cause librdkafka reported meanwhile
/// and what to check; never a credential (librdkafka's messages carry none).
fn why(consumer: &BaseConsumer<LastError>, e: rdkafka::error::KafkaError) -> String {
    // Error callbacks are served when the client is polled.
    let _ = consumer.poll(Duration::from_millis(100));
    let Some(cause) = consumer.context().0.lock().unwrap().clone() else {
        return e.to_string();
    };
    match millrace_crds::kafka::explain_connection_error(&cause) {
        Some(hint) => format!("{cause} ({hint})"),
        None => format!("{e}: {cause}"),
    }
}

/// How long a broker's `transaction.max.timeout.ms` is remembered: it
/// changes with a broker restart at most, and every reconcile of every
/// exactly-once app checks against it.
const TRANSACTION_MAX_KEPT: Duration = Duration::from_secs(600);
const TRANSACTION_MAX_RETRY: Duration = Duration::from_secs(30);

type TransactionMaxes = HashMap<BTreeMap<String, String>, (Option<u64>, Instant)>;
static TRANSACTION_MAXES: LazyLock<Mutex<TransactionMaxes>> = LazyLock::new(Mutex::default);

/// The broker's `transaction.max.timeout.ms`, when it says (this client
/// may not be allowed to describe the broker's configuration: then the
/// worker's own check at start is what is left), read at most every
/// `TRANSACTION_MAX_KEPT`. Blocking; call from `spawn_blocking`.
pub fn transaction_max_timeout_ms(props: &BTreeMap<String, String>) -> Option<u64> {
    if let Some((max, at)) = crate::supervise::lock(&TRANSACTION_MAXES).get(props) {
        // An unknown answer (the broker unreachable a moment) is asked
        // again soon, so the check is not skipped for long.
        let kept = match max {
            Some(_) => TRANSACTION_MAX_KEPT,
            None => TRANSACTION_MAX_RETRY,
        };
        if at.elapsed() < kept {
            return *max;
        }
    }
    let max = read_transaction_max_timeout_ms(props);
    crate::supervise::lock(&TRANSACTION_MAXES).insert(props.clone(), (max, Instant::now()));
    max
}

fn read_transaction_max_timeout_ms(props: &BTreeMap<String, String>) -> Option<u64> {
    let client = crate::kafka_clients::client(props).ok()?;
    let metadata = client.fetch_metadata(None, METADATA_TIMEOUT).ok()?;
    let broker = metadata.brokers().first()?.id();
    let admin: AdminClient<DefaultClientContext> = client_config(props).create().ok()?;
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let resources = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Broker(broker)], &options),
    )
    .ok()?;
    let resource = resources.into_iter().next()?.ok()?;
    resource
        .get("transaction.max.timeout.ms")?
        .value
        .as_deref()?
        .parse()
        .ok()
}

/// Under exactly-once the transaction timeout must be one the broker takes:
/// above `transaction.max.timeout.ms` every `init_transactions` fails.
pub fn check_transaction_timeout(
    guarantee: ProcessingGuarantee,
    timeout: Duration,
    broker_max_ms: Option<u64>,
) -> Result<(), Degradation> {
    match broker_max_ms {
        Some(max) if guarantee == ProcessingGuarantee::ExactlyOnce && timeout.as_millis() > max as u128 => {
            Err(Degradation {
                reason: "TransactionTimeoutTooLong",
                message: format!(
                    "spec.transactionTimeout ({timeout:?}) is above the broker's transaction.max.timeout.ms ({max} ms): it would refuse every transaction; lower spec.transactionTimeout (or raise the broker's limit)"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Tasks = the source topics' common partition count; every output topic
/// must exist (Millrace creates nothing the user did not ask for).
pub fn check_topics(
    source_field: &str,
    sources: &[TopicName],
    outputs: &[TopicName],
    counts: &BTreeMap<TopicName, Option<i32>>,
) -> Result<Option<i32>, Degradation> {
    let missing: Vec<String> = sources
        .iter()
        .chain(outputs)
        .filter(|t| counts.get(*t).copied().flatten().is_none())
        .map(|t| format!("'{t}'"))
        .collect();
    if !missing.is_empty() {
        let role = |t: &str| {
            if sources.iter().any(|s| format!("'{s}'") == t) {
                "source"
            } else {
                "output"
            }
        };
        let listed: Vec<String> = missing
            .iter()
            .map(|t| format!("{} topic {t}", role(t)))
            .collect();
        return Err(Degradation {
            reason: "TopicMissing",
            message: format!(
                "{} does not exist; create it (Millrace creates no topics you did not ask for)",
                listed.join(", ")
            ),
        });
    }
    let mut partitions: Vec<(String, i32)> = sources
        .iter()
        .map(|t| (t.0.clone(), counts[t].unwrap_or(0)))
        .collect();
    partitions.sort_by_key(|(_, n)| *n);
    if let (Some(first), Some(last)) = (partitions.first(), partitions.last()) {
        if first.1 != last.1 {
            let listed: Vec<String> = partitions.iter().map(|(t, n)| format!("{t}={n}")).collect();
            return Err(Degradation {
                reason: "PartitionMismatch",
                message: format!(
                    "{source_field} must have the same partition count (partition N of each is one task): {}",
                    listed.join(", ")
                ),
            });
        }
    }
    Ok(partitions.first().map(|(_, n)| *n))
}

/// The recorded internal topics `deletionPolicy: Delete` may delete: those
/// named as internal topics of the app's own `steps`. Any other recorded
/// name (a status edited by hand) is left alone.
pub fn deletable_topics(
    application_id: &str,
    steps: &[String],
    recorded: &[String],
) -> Vec<String> {
    recorded
        .iter()
        .filter(|t| is_internal_topic(application_id, steps, t))
        .cloned()
        .collect()
}

/// Deletes `internal` (see [`deletable_topics`]) and the app's consumer
/// group: what `deletionPolicy: Delete` promises. Topics already gone are
/// fine.
pub async fn delete_app_data(
    props: &BTreeMap<String, String>,
    application_id: &str,
    internal: &[String],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(props).create().map_err(|e| e.to_string())?;
    // Bounded both ways: with Kafka out of reach an attempt fails in
    // seconds and the finalizer retries (or gives up), instead of holding
    // this app's reconcile for librdkafka's default minute.
    let options = AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(METADATA_TIMEOUT));
    if !internal.is_empty() {
        let names: Vec<&str> = internal.iter().map(String::as_str).collect();
        for result in admin
            .delete_topics(&names, &options)
            .await
            .map_err(|e| e.to_string())?
        {
            if let Err((topic, code)) = result {
                if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(format!("deleting topic {topic}: {code}"));
                }
            }
        }
    }
    for result in admin
        .delete_groups(&[application_id], &options)
        .await
        .map_err(|e| e.to_string())?
    {
        if let Err((group, code)) = result {
            if code != RDKafkaErrorCode::GroupIdNotFound {
                return Err(format!("deleting consumer group {group}: {code}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn t(name: &str) -> TopicName {
        TopicName(name.into())
    }

    #[test]
    fn a_transaction_timeout_above_the_brokers_limit_is_refused_under_exactly_once() {
        let eos = ProcessingGuarantee::ExactlyOnce;
        let two_minutes = Duration::from_secs(120);
        let refused = check_transaction_timeout(eos, two_minutes, Some(60_000)).unwrap_err();
        assert_eq!(refused.reason, "TransactionTimeoutTooLong");
        assert!(
            refused.message.contains("spec.transactionTimeout (120s) is above the broker's transaction.max.timeout.ms (60000 ms)"),
            "{}",
            refused.message
        );
        assert!(check_transaction_timeout(eos, Duration::from_secs(60), Some(60_000)).is_ok());
        assert!(
            check_transaction_timeout(eos, two_minutes, None).is_ok(),
            "the broker did not say"
        );
        let alo = ProcessingGuarantee::AtLeastOnce;
        assert!(check_transaction_timeout(alo, two_minutes, Some(60_000)).is_ok());
    }

    #[test]
    fn tasks_are_the_common_partition_count() {
        let counts = BTreeMap::from([(t("a"), Some(8)), (t("b"), Some(8)), (t("out"), Some(1))]);
        assert_eq!(
            check_topics(
                "spec.pipeline.source.topics",
                &[t("a"), t("b")],
                &[t("out")],
                &counts
            ),
            Ok(Some(8))
        );
    }

    #[test]
    fn missing_topics_are_named_with_their_role() {
        let counts = BTreeMap::from([(t("a"), None), (t("out"), None)]);
        let d = check_topics(
            "spec.pipeline.source.topics",
            &[t("a")],
            &[t("out")],
            &counts,
        )
        .unwrap_err();
        assert_eq!(d.reason, "TopicMissing");
        assert!(
            d.message.contains("source topic 'a'") && d.message.contains("output topic 'out'"),
            "{}",
            d.message
        );
    }

    #[test]
    fn different_partition_counts_are_refused() {
        let counts = BTreeMap::from([(t("a"), Some(8)), (t("b"), Some(4))]);
        let d = check_topics(
            "spec.pipeline.source.topics",
            &[t("a"), t("b")],
            &[],
            &counts,
        )
        .unwrap_err();
        assert_eq!(d.reason, "PartitionMismatch");
        assert!(
            d.message.contains("b=4") && d.message.contains("a=8"),
            "{}",
            d.message
        );
    }

    #[test]
    fn admin_properties_read_credentials_from_secrets() {
        let kafka: KafkaSpec = serde_json::from_value(serde_json::json!({
            "bootstrapServers": "k:9093",
            "tls": {"ca": {"name": "ca", "key": "ca.crt"}},
            "sasl": {"mechanism": "SCRAM-SHA-256", "credentials": {"secretName": "user"}},
            "properties": {"compression.type": "zstd"}
        }))
        .unwrap();
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let mut secrets = Secrets::new();
        secrets.insert("ca".into(), secret(&[("ca.crt", "PEM")]));
        assert!(admin_properties(&kafka, &secrets)
            .unwrap_err()
            .message
            .contains("Secret 'user' not found"));
        secrets.insert(
            "user".into(),
            secret(&[("username", "app"), ("password", "pw")]),
        );
        let props = admin_properties(&kafka, &secrets).unwrap();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["ssl.ca.pem"], "PEM");
        assert_eq!(
            (
                props["sasl.username"].as_str(),
                props["sasl.password"].as_str()
            ),
            ("app", "pw")
        );
        assert_eq!(props["compression.type"], "zstd");
        assert_eq!(secret_names(&kafka), ["ca", "user"]);
    }
}
