//! Queries of a task's committed state (docs/queries.md): which steps'
//! stores can be read, how their keys spread over tasks, and their entries
//! rendered as the step's outputs render them (an aggregate's value is the
//! one its last update carried). Pure: the runtime reads through a
//! [`State`] over the committed store only.

use base64::Engine;
use millrace_crds::Format;
use serde_json::{json, Map, Value as Json};

use crate::aggregation::{self, AggregationKind};
use crate::stateful::{time_of, State};
use crate::window::{self, rfc3339, window_json};
use crate::{CompiledPipeline, CompiledStep};

/// Entries a window lookup or a scan page returns at most.
pub const MAX_PAGE: usize = 1_000;

/// What a step keeps, as a query sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoreKind {
    /// A running aggregate per group.
    Aggregate,
    /// An aggregate per group and event-time window.
    WindowedAggregate,
    /// Ids seen, with when.
    Dedup,
    /// A join's copy of its table.
    Join,
}

/// Which task holds a key of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Spread {
    /// The task of the source partition records with that key were written
    /// to: by the input's producers' partitioner (a join table's too).
    Source,
    /// The task of the repartition partition Millrace wrote the key to
    /// (murmur2 over the repartition topic's partitions).
    Repartition,
    /// Any task: the store is keyed by something the records were not
    /// partitioned by (a dedup id without `repartition: true`).
    AnyTask,
}

/// A step whose store can be queried.
#[derive(Debug, Clone, PartialEq)]
pub struct Queryable {
    pub step: String,
    pub store: usize,
    pub kind: StoreKind,
    pub spread: Spread,
    aggregations: Vec<(String, AggregationKind)>,
    value_format: Format,
}

impl CompiledPipeline {
    /// The stateful steps, in order, with how a query reads them.
    pub fn queryables(&self) -> Vec<Queryable> {
        let mut out = Vec::new();
        // Whether the current key is still the one the task's records were
        // partitioned by (the source's, or the last repartition's).
        let mut spread = Spread::Source;
        let mut previous: Option<&CompiledStep> = None;
        for step in &self.steps {
            let query = |kind, spread, aggregations, value_format| Queryable {
                step: step.name().to_string(),
                store: step.store().expect("a stateful step"),
                kind,
                spread,
                aggregations,
                value_format,
            };
            match step {
                CompiledStep::Repartition { .. } => spread = Spread::Repartition,
                CompiledStep::Map { key: Some(_), .. } | CompiledStep::Rekey { .. } => {
                    spread = Spread::AnyTask
                }
                CompiledStep::Aggregate {
                    aggregations,
                    windowing,
                    ..
                } => {
                    let kinds = aggregations
                        .iter()
                        .map(|(n, k, _)| (n.clone(), *k))
                        .collect();
                    let kind = match windowing {
                        Some(_) => StoreKind::WindowedAggregate,
                        None => StoreKind::Aggregate,
                    };
                    out.push(query(kind, spread, kinds, Format::Json));
                    // A window's output key is `<group>@<start>/<end>`.
                    if windowing.is_some() {
                        spread = Spread::AnyTask;
                    }
                }
                CompiledStep::Dedup { name, .. } => {
                    // Keyed by its id: partitioned by it only when its own
                    // repartition (by the id, `repartition: true`) came
                    // right before.
                    let by_id = matches!(previous,
                        Some(CompiledStep::Repartition { name: by, .. }) if by == name);
                    let by = if by_id {
                        Spread::Repartition
                    } else {
                        Spread::AnyTask
                    };
                    out.push(query(StoreKind::Dedup, by, Vec::new(), Format::Json));
                }
                CompiledStep::Join { value_format, .. } => {
                    out.push(query(
                        StoreKind::Join,
                        Spread::Source,
                        Vec::new(),
                        *value_format,
                    ));
                }
                _ => {}
            }
            previous = Some(step);
        }
        out
    }

    pub fn queryable(&self, step: &str) -> Option<Queryable> {
        self.queryables().into_iter().find(|q| q.step == step)
    }
}

/// One entry of a store, rendered.
pub type Entry = Json;

impl Queryable {
    /// The entry for `key`, if the task holds one: an aggregate's current
    /// value, a dedup id's last sighting, a table's value. A windowed
    /// aggregate's windows are [`Queryable::windows`].
    pub fn get(&self, key: &[u8], state: &mut dyn State) -> Result<Option<Entry>, String> {
        match self.kind {
            StoreKind::WindowedAggregate => Ok(self
                .windows(key, (i64::MIN, i64::MAX), MAX_PAGE, state)?
                .into_iter()
                .next_back()),
            StoreKind::Dedup => {
                let at = state.get(self.store, &crate::stateful::id_key(key));
                Ok(at.as_deref().and_then(time_of).map(|ms| seen(key, ms)))
            }
            _ => match state.get(self.store, key) {
                Some(bytes) => self.render(key, &bytes).map(Some),
                None => Ok(None),
            },
        }
    }

    /// A windowed aggregate's windows of `key` starting in `[from, to)`,
    /// oldest first, at most `limit`.
    pub fn windows(
        &self,
        key: &[u8],
        (from, to): (i64, i64),
        limit: usize,
        state: &mut dyn State,
    ) -> Result<Vec<Entry>, String> {
        if self.kind != StoreKind::WindowedAggregate {
            return Err(format!("step '{}' is not a windowed aggregate", self.step));
        }
        let (low, high) = (window::window_key(key, from), window::window_key(key, to));
        let keys = state.keys_in(self.store, &low, &high, limit.min(MAX_PAGE));
        keys.iter()
            .map(|k| {
                let bytes = state.get(self.store, k).unwrap_or_default();
                self.render(k, &bytes)
            })
            .collect()
    }

    /// Up to `limit` entries after `after` (a key a previous page ended
    /// at), in key order, and the key to ask after next (none at the end).
    pub fn scan(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        state: &mut dyn State,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>), String> {
        let (low, high): (Vec<u8>, Vec<u8>) = match self.kind {
            StoreKind::WindowedAggregate => (vec![window::WINDOW], vec![window::WINDOW + 1]),
            StoreKind::Dedup => (vec![crate::stateful::ID], vec![crate::stateful::ID + 1]),
            _ => (Vec::new(), vec![0xff; 64]),
        };
        let from = match after {
            Some(k) => [k, &[0][..]].concat().max(low),
            None => low,
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let keys = state.keys_in(self.store, &from, &high, limit + 1);
        let more = keys.len() > limit;
        let mut entries = Vec::with_capacity(limit);
        for k in keys.iter().take(limit) {
            let bytes = state.get(self.store, k).unwrap_or_default();
            entries.push(match self.kind {
                StoreKind::Dedup => seen(&k[1..], time_of(&bytes).unwrap_or_default()),
                _ => self.render(k, &bytes)?,
            });
        }
        let next = more.then(|| keys[limit - 1].clone());
        Ok((entries, next))
    }

    /// A stored value as the step's output renders it. `key` is the store
    /// key (a window's carries its group and start).
    fn render(&self, key: &[u8], bytes: &[u8]) -> Result<Entry, String> {
        let what = format!("the stored entry of step '{}'", self.step);
        let kinds: Vec<(&str, AggregationKind)> = self
            .aggregations
            .iter()
            .map(|(n, k)| (n.as_str(), *k))
            .collect();
        match self.kind {
            StoreKind::Aggregate => {
                let acc = aggregation::read(Some(bytes), &what)?;
                let mut out = Map::new();
                out.insert("key".into(), text(key).into());
                aggregation::output(&acc, &kinds, &mut out)?;
                Ok(Json::Object(out))
            }
            StoreKind::WindowedAggregate => {
                let (group, start) = window::parse_window_key(key)
                    .ok_or_else(|| format!("{what}: not a window's key"))?;
                let mut stored = aggregation::read(Some(bytes), &what)?;
                let end = stored.get("end").and_then(Json::as_i64).unwrap_or(start);
                let Some(Json::Object(acc)) = stored.remove("acc") else {
                    return Err(format!("{what}: a window without its accumulator"));
                };
                let mut out = Map::new();
                out.insert("key".into(), text(&group).into());
                out.insert("window".into(), window_json(start, end));
                aggregation::output(&acc, &kinds, &mut out)?;
                Ok(Json::Object(out))
            }
            StoreKind::Join => {
                Ok(json!({"key": text(key), "value": value_json(bytes, self.value_format)?}))
            }
            StoreKind::Dedup => Ok(seen(key, time_of(bytes).unwrap_or_default())),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn seen(id: &[u8], ms: i64) -> Entry {
    json!({"id": text(id), "seenAt": rfc3339(ms), "seenAtMs": ms})
}

/// A table value in its declared format: JSON as is, a string, or bytes
/// as base64.
fn value_json(bytes: &[u8], format: Format) -> Result<Json, String> {
    match format {
        Format::Json => {
            serde_json::from_slice(bytes).map_err(|e| format!("the table's value is not JSON: {e}"))
        }
        Format::String => Ok(Json::String(text(bytes))),
        Format::Bytes => Ok(Json::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
    }
}
