//! How workers reach Kafka.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Connection to the Kafka cluster the app reads from and writes to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of brokers to bootstrap from, e.g.
    /// `kafka-0.kafka:9092,kafka-1.kafka:9092`.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// TLS to the brokers. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// SASL authentication. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// Extra librdkafka client properties (e.g. `compression.type: zstd`),
    /// applied to the workers' consumers and producers. Settings Millrace
    /// owns for correctness are refused by the operator with a Degraded
    /// condition naming them: `enable.auto.commit`, `isolation.level`,
    /// `transactional.id`, `group.id`, `enable.idempotence`, `bootstrap.servers`,
    /// and the security settings set through `tls` and `sasl`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub properties: BTreeMap<String, String>,
}

/// TLS settings; certificates and keys come only from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientCert) == has(self.clientKey)").message("spec.kafka.tls: set both clientCert and clientKey, or neither"))]
pub struct TlsSpec {
    /// Use TLS for every broker connection.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CA certificate (PEM) that signed the brokers' certificates. The
    /// system trust store is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<SecretKeyRef>,
    /// Private key (PEM) of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<SecretKeyRef>,
}

/// librdkafka's `security.protocol` for TLS and SASL on or off.
pub fn security_protocol(tls: bool, sasl: bool) -> &'static str {
    match (tls, sasl) {
        (false, false) => "PLAINTEXT",
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (true, true) => "SASL_SSL",
    }
}

fn default_true() -> bool {
    true
}

/// One key of a Secret in the StreamApp's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// SASL mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL authentication with credentials from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// Secret in the StreamApp's namespace holding the credentials.
    pub credentials: SaslCredentials,
}

/// Where the SASL username and password are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SaslCredentials {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the username in the Secret.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// librdkafka properties Millrace sets itself; a user value would break
/// exactly-once, fencing or the credential handling.
pub const OWNED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "transaction.timeout.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
];

/// Every `spec.kafka.properties` key Millrace owns, as a problem each.
pub fn owned_property_problems(kafka: &KafkaSpec) -> Vec<crate::Invalid> {
    kafka
        .properties
        .keys()
        .filter(|key| OWNED_KAFKA_PROPERTIES.contains(&key.as_str()))
        .map(|key| {
            crate::Invalid::new(
                &format!("spec.kafka.properties['{key}']"),
                "is set by Millrace and cannot be overridden",
            )
        })
        .collect()
}
