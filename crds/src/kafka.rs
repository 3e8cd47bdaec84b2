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

/// What `spec.kafka` may not do, as a problem each: override a setting
/// Millrace owns; carry a credential in `properties` (they are written into
/// the worker's ConfigMap, readable by anyone who may read ConfigMaps;
/// credentials come from Secrets through `tls` and `sasl`); turn off the
/// brokers' certificate verification; or send a SASL PLAIN password in
/// cleartext (the operator would send a namespace's Secret to whatever
/// host the manifest names).
pub fn kafka_spec_problems(kafka: &KafkaSpec) -> Vec<crate::Invalid> {
    let property =
        |key: &str, why: &str| crate::Invalid::new(&format!("spec.kafka.properties['{key}']"), why);
    let mut problems: Vec<crate::Invalid> = kafka
        .properties
        .iter()
        .filter_map(|(key, value)| {
            if OWNED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                Some(property(key, "is set by Millrace and cannot be overridden"))
            } else if is_credential(key) {
                Some(property(key, "is a credential, and properties are stored in a ConfigMap: give credentials through spec.kafka.tls and spec.kafka.sasl, which read Secrets"))
            } else if disables_verification(key, value) {
                Some(property(key, "turns off the verification of the brokers' certificates; refused: give the CA that signed them in spec.kafka.tls.ca"))
            } else {
                None
            }
        })
        .collect();
    let tls = kafka.tls.as_ref().is_some_and(|t| t.enabled);
    if kafka
        .sasl
        .as_ref()
        .is_some_and(|s| s.mechanism == SaslMechanism::Plain)
        && !tls
    {
        problems.push(crate::Invalid::new(
            "spec.kafka.sasl.mechanism",
            "PLAIN without TLS sends the password in cleartext; refused: enable spec.kafka.tls, or use SCRAM-SHA-256 or SCRAM-SHA-512",
        ));
    }
    problems
}

fn is_credential(key: &str) -> bool {
    key.ends_with(".password")
        || key.contains("secret")
        || key.ends_with("jaas.config")
        || key == "sasl.oauthbearer.config"
        || key.starts_with("ssl.keystore.")
}

fn disables_verification(key: &str, value: &str) -> bool {
    (key == "enable.ssl.certificate.verification" && value.trim().eq_ignore_ascii_case("false"))
        || (key == "ssl.endpoint.identification.algorithm"
            && value.trim().eq_ignore_ascii_case("none"))
}

#[cfg(test)]
mod problem_tests {
    use super::*;

    fn spec(properties: &[(&str, &str)], sasl: Option<SaslMechanism>, tls: bool) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: "k:9092".into(),
            tls: tls.then(|| TlsSpec {
                enabled: true,
                ..Default::default()
            }),
            sasl: sasl.map(|mechanism| SaslSpec {
                mechanism,
                ..Default::default()
            }),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn fields(kafka: &KafkaSpec) -> Vec<String> {
        kafka_spec_problems(kafka)
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn credentials_and_turning_verification_off_are_refused_in_properties() {
        let problems = fields(&spec(
            &[
                ("ssl.keystore.password", "x"),
                ("sasl.oauthbearer.client.secret", "x"),
                ("sasl.jaas.config", "x"),
                ("enable.ssl.certificate.verification", "false"),
                ("ssl.endpoint.identification.algorithm", "none"),
                ("group.id", "g"),
                ("compression.type", "zstd"),
            ],
            None,
            true,
        ));
        assert_eq!(problems.len(), 6, "{problems:?}");
        for key in [
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(key) && p.contains("is a credential")),
                "{key}: {problems:?}"
            );
        }
        assert!(problems
            .iter()
            .any(|p| p.contains("group.id") && p.contains("set by Millrace")));
    }

    #[test]
    fn sasl_plain_needs_tls_and_scram_does_not() {
        let plain = fields(&spec(&[], Some(SaslMechanism::Plain), false));
        assert!(
            plain.len() == 1 && plain[0].contains("spec.kafka.sasl.mechanism"),
            "{plain:?}"
        );
        assert!(fields(&spec(&[], Some(SaslMechanism::Plain), true)).is_empty());
        assert!(fields(&spec(&[], Some(SaslMechanism::ScramSha512), false)).is_empty());
    }
}

/// What to check, for the causes librdkafka words in TLS or SASL terms.
pub fn explain_connection_error(cause: &str) -> Option<&'static str> {
    let has = |text: &str| cause.contains(text);
    if has("SASL authentication error") || has("Authentication failed") {
        Some("the brokers refused the SASL credentials: check the username and password in spec.kafka.sasl.credentials and the mechanism")
    } else if has("certificate verify failed") {
        Some("the brokers' certificate is not signed by the CA of spec.kafka.tls.ca (or, without it, the system's)")
    } else if has("alert certificate unknown")
        || has("alert bad certificate")
        || has("alert certificate expired")
    {
        Some("the brokers refused the client certificate of spec.kafka.tls.clientCert: expired, or not signed by a CA they trust")
    } else if has("Disconnected while requesting ApiVersion") {
        Some("the listener may expect another security protocol: check spec.kafka.tls and spec.kafka.sasl")
    } else {
        None
    }
}

#[cfg(test)]
mod explain_tests {
    use super::explain_connection_error as explain;

    #[test]
    fn tls_and_sasl_failures_are_explained_in_terms_of_the_spec() {
        for (cause, field) in [
            ("SASL authentication error: Authentication failed during authentication due to invalid credentials", "spec.kafka.sasl.credentials"),
            ("SSL handshake failed: error:0A000086:SSL routines::certificate verify failed", "spec.kafka.tls.ca"),
            ("Receive failed: error:0A000416:SSL routines::sslv3 alert certificate unknown: SSL alert number 46", "spec.kafka.tls.clientCert"),
            ("Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol", "spec.kafka.tls"),
        ] {
            assert!(explain(cause).is_some_and(|h| h.contains(field)), "{cause}");
        }
        assert_eq!(explain("Connection refused"), None);
    }
}
