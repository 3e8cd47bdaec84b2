//! The stateful steps of a pipeline: `dedup` and `aggregate` (running or
//! over event-time windows). Their state lives in the task's store and a
//! changelog topic `<applicationId>-<step>-changelog`.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Drops a record whose id was already seen within `within` of its
/// timestamp. Ids are forgotten once records `within` newer arrive, so the
/// state stays bounded. Its state is kept in the task's store and its
/// changelog topic `<applicationId>-<step>-changelog`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupStep {
    /// CEL expression for the record's id (a string, bytes or a number),
    /// e.g. `value.orderId`.
    #[schemars(length(min = 1, max = 4096))]
    pub id: String,
    /// How long an id is remembered, by record timestamp: `10m`, `24h`.
    pub within: String,
    /// Repartition by the id first (through the internal topic
    /// `<applicationId>-<step>-repartition`), so duplicates written with
    /// different keys still meet in one task; the records go on keyed by
    /// their id. Default `false`: duplicates must share a partition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repartition: bool,
}

/// An aggregate per group: running (every record updates its group), or per
/// event-time window. Every update (or, with `emit: WindowClose`, every
/// closed window) replaces the record for the following steps: key = the
/// group (with the window: `<group>@<startMs>/<endMs>`), value = a JSON
/// object with `key`, `window` when windowed, and one field per
/// aggregation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.window) || (!has(self.grace) && !has(self.emit) && !has(self.lateRecords))").message("grace, emit and lateRecords need a window"))]
pub struct AggregateStep {
    /// CEL expression of the group (a string, bytes or an integer): `key`,
    /// the record's key, or any value, e.g. `value.region`. Grouping by
    /// anything but the key the records were written with repartitions them
    /// by the group first (through the internal topic
    /// `<applicationId>-<step>-repartition`); the records go on keyed by it.
    #[schemars(length(min = 1, max = 4096))]
    pub group_by: String,
    /// Output field name → aggregation.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 32))]
    pub aggregations: BTreeMap<String, Aggregation>,
    /// Aggregate per event-time window instead of forever. Unset: a running
    /// aggregate per group, kept forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// How long after a window's end records for it are still accepted, by
    /// stream time: `10s`, `5m`. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// `EveryUpdate` (default): every record's update goes on. `WindowClose`:
    /// only each window's final result, once, when it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<Emit>,
    /// Event time as a CEL expression giving epoch milliseconds (an int) or
    /// a `timestamp`, e.g. `value.ts`. Default: the record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub timestamp: Option<String>,
    /// Records too late for any open window: `Drop` (default, counted in the
    /// `late` metric) or `DeadLetter` (to `onError.deadLetterTopic`, with
    /// the reason in its headers, also counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_records: Option<LatePolicy>,
}

/// Set exactly one of `tumbling`, `hopping` or `session`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.tumbling), has(self.hopping), has(self.session)].filter(x, x).size() == 1").message("a window sets exactly one of tumbling, hopping or session"))]
pub struct Window {
    /// Fixed, non-overlapping windows of this size, aligned to the epoch:
    /// `1m` gives [00:00, 00:01), [00:01, 00:02), ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<String>,
    /// Fixed windows of `size` starting every `advance`, so a record is in
    /// `size / advance` of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hopping: Option<Hopping>,
    /// A window per burst of activity: records of a group at most `gap`
    /// apart share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hopping {
    /// Each window's length: `5m`.
    pub size: String,
    /// Time between window starts: `1m`. At most `size`.
    pub advance: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Inactivity that ends a session: `30s`.
    pub gap: String,
}

/// When a windowed aggregate's results go on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Emit {
    #[default]
    EveryUpdate,
    WindowClose,
}

/// What becomes of a record too late for any open window.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LatePolicy {
    #[default]
    Drop,
    DeadLetter,
}

/// One aggregation: set exactly one of `count`, `sum`, `min`, `max`, `avg`,
/// `latest` or `first`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.count), has(self.sum), has(self.min), has(self.max), has(self.avg), has(self.latest), has(self.first)].filter(x, x).size() == 1").message("an aggregation sets exactly one of count, sum, min, max, avg, latest or first"))]
pub struct Aggregation {
    /// Records in the group: `count: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Count>,
    /// Sum of a CEL number expression, e.g. `value.amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub sum: Option<String>,
    /// Smallest value of a CEL number expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub min: Option<String>,
    /// Largest value of a CEL number expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub max: Option<String>,
    /// Mean of a CEL number expression (a double).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub avg: Option<String>,
    /// A CEL value of the group's record with the latest event time (the
    /// last one processed among equal times), e.g. `value.status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub latest: Option<String>,
    /// A CEL value of the group's record with the earliest event time (the
    /// first one processed among equal times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub first: Option<String>,
}

/// A stream–table join: the table topic (usually compacted: the latest
/// value per key, a tombstone deleting it) is kept in a store per task, and
/// each record is looked up in it by `key`; the following steps see the
/// match as the variable named by `as`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinStep {
    /// The table topic. It must have as many partitions as the sources,
    /// its records keyed as the lookups are (partition N of it is read by
    /// task N).
    pub table: crate::TopicName,
    /// CEL expression of the lookup key (a string, bytes or an integer),
    /// e.g. `value.customerId`. Default: the record's key. Any other key
    /// repartitions the records by it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,
    /// The variable later steps see the table's value as, e.g. `customer`
    /// (`customer.name`); null under `Left` when the key is not in the
    /// table.
    #[serde(rename = "as")]
    #[schemars(length(min = 1, max = 63))]
    pub as_name: String,
    /// `Inner` (default): a record whose key is not in the table is
    /// dropped (counted in the `filtered` metric). `Left`: it goes on with
    /// the variable null.
    #[serde(default)]
    pub r#type: JoinType,
    /// How the table's values are read: `Json` (default), `String` or
    /// `Bytes`.
    #[serde(default = "json_format")]
    pub value_format: crate::Format,
}

fn json_format() -> crate::Format {
    crate::Format::Json
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum JoinType {
    #[default]
    Inner,
    Left,
}

/// `count: {}` takes no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Count {}
