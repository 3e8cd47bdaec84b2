//! Zero-code pipelines: a source, CEL steps, an error policy.
//!
//! Expressions are CEL over `key`, `value` (parsed per the source's format),
//! `headers`, `topic`, `partition`, `offset` and `timestamp`. The operator
//! compiles and checks them before any worker starts.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stateful_steps::{AggregateStep, DedupStep, JoinStep};

/// A pipeline: read the source topics, run the steps in order, write to the
/// topics the route step chooses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// The topics records come from.
    pub source: SourceSpec,
    /// Steps applied to each record in order. Records reach topics only
    /// through a `route` step, which must come last.
    #[schemars(length(min = 1, max = 64))]
    pub steps: Vec<Step>,
    /// What happens to a record that cannot be parsed or whose expression
    /// fails. Default: `Stop`, so nothing is skipped silently.
    #[serde(default)]
    pub on_error: OnError,
    /// Most records per second each worker processes (all its tasks
    /// together). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_records_per_second: Option<i64>,
    /// Partition count of the app's repartition topics (Kafka Streams'
    /// `Repartitioned.withNumberOfPartitions`). Unset: the sources'
    /// partition count, grown with them. Set, it stays fixed when the
    /// sources grow, and the app runs as many tasks as the larger of the
    /// two counts: task N reads partition N of each topic that has one.
    /// Not allowed with a `join` step (its table and the records looked up
    /// in it must share the sources' count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub repartition_partitions: Option<i32>,
}

/// Source topics and how their keys and values are read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Topics to consume. All must exist and have the same partition count:
    /// partition N of every topic is one task.
    #[schemars(length(min = 1, max = 16))]
    pub topics: Vec<TopicName>,
    /// How record keys are read: `String` (default), `Json` or `Bytes`.
    #[serde(default = "Format::string")]
    pub key_format: Format,
    /// How record values are read: `Json` (default), `String` or `Bytes`.
    #[serde(default = "Format::json")]
    pub value_format: Format,
    /// The partitioner the topics' producers use, so a query finds the
    /// task holding a key: `Murmur2` (default: Java clients, Kafka
    /// Streams) or `Crc32` (librdkafka's default `consistent_random`:
    /// Python, Go, .NET, kcat). A query that misses asks the other's task
    /// too.
    #[serde(default)]
    pub partitioner: Partitioner,
}

/// How producers map a record key to a partition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Partitioner {
    /// murmur2 of the key, as Java clients and Kafka Streams.
    #[default]
    Murmur2,
    /// CRC32 of the key, as librdkafka's default (`consistent_random`).
    Crc32,
}

/// A Kafka topic name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct TopicName(pub String);

impl JsonSchema for TopicName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TopicName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A Kafka topic name: 1-249 letters, digits, '.', '_' or '-'.",
            "minLength": 1,
            "maxLength": MAX_TOPIC_NAME,
            "pattern": "^[a-zA-Z0-9._-]+$"
        })
    }
}

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME: usize = 249;

impl TopicName {
    /// Why `name` is not a topic Kafka accepts (the schema's rule, for names
    /// computed at run time), or `None`.
    pub fn problem(name: &str) -> Option<String> {
        if name.is_empty() {
            return Some("is empty".into());
        }
        if name.len() > MAX_TOPIC_NAME {
            return Some(format!(
                "is {} characters long; Kafka allows {MAX_TOPIC_NAME}",
                name.len()
            ));
        }
        if name == "." || name == ".." {
            return Some("is reserved ('.' and '..' are not topic names)".into());
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Some(format!(
                "contains {c:?}; only letters, digits, '.', '_' and '-'"
            ));
        }
        None
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encoding of a record key or value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Format {
    /// Parsed as JSON: fields are reachable as `value.field`.
    #[default]
    Json,
    /// UTF-8 text, as a CEL string.
    String,
    /// Raw bytes, as CEL bytes.
    Bytes,
}

impl Format {
    fn string() -> Self {
        Self::String
    }
    fn json() -> Self {
        Self::Json
    }
}

/// One step. Set exactly one of `filter`, `map`, `rekey`, `route`, `dedup`,
/// `aggregate` or `join`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.filter), has(self.map), has(self.rekey), has(self.route), has(self.dedup), has(self.aggregate), has(self.join)].filter(x, x).size() == 1").message("a step sets exactly one of filter, map, rekey, route, dedup, aggregate or join"))]
pub struct Step {
    /// Name used in errors, metrics and dead-letter headers. Default
    /// `step-<index>` (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Keep the record when this CEL expression is true, e.g.
    /// `value.status == 'paid'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// Replace the record's value (and optionally key and headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapStep>,
    /// A new key for the record, as a CEL expression giving a string, bytes
    /// or an integer, e.g. `value.customerId`. When a later step keeps state
    /// (`aggregate`, `dedup`, `join`), records are repartitioned by it through the
    /// internal topic `<applicationId>-<step>-repartition`, so each key's
    /// records meet in one task; otherwise it only sets the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub rekey: Option<String>,
    /// Send the record to topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteStep>,
    /// Drop a record whose id was seen recently (stateful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupStep>,
    /// An aggregate per group, running or per window (stateful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateStep>,
    /// Look the record up in a table topic (stateful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinStep>,
}

/// New key, value and headers computed from the record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) || has(self.key) || has(self.headers)").message("a map step sets at least one of value, key or headers"))]
pub struct MapStep {
    /// CEL expression for the new value, e.g.
    /// `{'id': value.id, 'total': value.amount * 2}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub value: Option<String>,
    /// CEL expression for the new key (a string or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,
    /// Headers to set: name → CEL expression giving a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Route records to topics by ordered rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.rules) > 0 || has(self.default)").message("a route needs at least one rule or a default topic"))]
pub struct RouteStep {
    /// `FirstMatch` (default): the first rule whose `when` is true wins.
    /// `AllMatches`: the record goes to every matching rule's topic.
    #[serde(default)]
    pub mode: RouteMode,
    /// Rules in order.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rules: Vec<RouteRule>,
    /// Topic for records no rule matched. Without it such records are
    /// dropped (and counted in the `unrouted` metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TopicName>,
    /// The topics a `topicExpression` may compute: names, or prefixes
    /// ending in `*` (`orders-*`). A computed topic outside them is the
    /// record's error, so data can never be written to another team's
    /// topic by a crafted field. Empty: any existing topic but the sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_topics: Vec<TopicPattern>,
}

/// A topic name, or a prefix ending in `*`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct TopicPattern(pub String);

impl JsonSchema for TopicPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TopicPattern".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A topic name, or a prefix ending in '*' (orders-*).",
            "minLength": 1,
            "maxLength": MAX_TOPIC_NAME,
            "pattern": "^[a-zA-Z0-9._-]+\\*?$"
        })
    }
}

impl TopicPattern {
    /// Whether `topic` is this name, or starts with this prefix.
    pub fn matches(&self, topic: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => self.0 == topic,
        }
    }
}

/// How many rules a record may match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RouteMode {
    #[default]
    FirstMatch,
    AllMatches,
}

/// `when` → `to` (or a computed topic).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.to) != has(self.topicExpression)").message("a route rule sets exactly one of to or topicExpression"))]
pub struct RouteRule {
    /// CEL condition, e.g. `value.amount > 1000`. Always true when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
    /// Destination topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<TopicName>,
    /// CEL expression computing the destination topic, e.g.
    /// `'orders-' + value.region`. The topic must exist, and be one of the
    /// route's `allowedTopics` when it has them; a record whose topic is
    /// not fails (and follows `onError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub topic_expression: Option<String>,
}

/// Error policy for records that fail to parse or evaluate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy != 'DeadLetter' || has(self.deadLetterTopic)").message("onError.policy DeadLetter needs onError.deadLetterTopic"))]
pub struct OnError {
    /// `Stop` (default): the app stops at the record, naming it, and commits
    /// nothing past it. `DeadLetter`: the record goes to `deadLetterTopic`
    /// with the error in its headers, in the same transaction.
    #[serde(default)]
    pub policy: ErrorPolicy,
    /// Topic for failed records when `policy` is `DeadLetter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<TopicName>,
    /// Records passed over without being processed (counted in the
    /// `skipped` metric): how a task stopped at a record (`Stop`) goes on
    /// without it. Entries the committed offsets have passed do nothing
    /// and may be removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub skip: Vec<RecordCoordinates>,
}

/// One input record: where it is in Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordCoordinates {
    pub topic: TopicName,
    #[schemars(range(min = 0))]
    pub partition: i32,
    #[schemars(range(min = 0))]
    pub offset: i64,
}

impl std::fmt::Display for RecordCoordinates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// What to do with a record that fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ErrorPolicy {
    #[default]
    Stop,
    DeadLetter,
}
