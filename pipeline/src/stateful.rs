//! The stateful steps, `dedup` and `aggregate`, over a task's [`State`].
//!
//! The steps only read and write keys of their own store; where the bytes
//! live, how they reach the changelog and when they become durable is the
//! runtime's business (`runtime/src/state`). A record's writes count only
//! if the whole record succeeds: the runtime drops them when a later step
//! fails, so a dead-lettered or stopped record never updates a count.

use std::collections::BTreeMap;

use cel::Value;

use crate::record::RecordError;

/// One task's state, as the stateful steps see it. `store` numbers the
/// pipeline's stateful steps in order ([`crate::CompiledPipeline::stores`]).
pub trait State {
    fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>>;
    /// `None` deletes.
    fn put(&mut self, store: usize, key: &[u8], value: Option<&[u8]>);
    /// Keys in `[from, to)` in order, at most `limit`.
    fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>>;
}

/// For pipelines without stateful steps: nothing is kept.
pub struct Stateless;

impl State for Stateless {
    fn get(&mut self, _: usize, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn put(&mut self, _: usize, _: &[u8], _: Option<&[u8]>) {}
    fn keys_in(&mut self, _: usize, _: &[u8], _: &[u8], _: usize) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// Expired ids forgotten per record at most: twice what one record adds,
/// so expiry keeps up with any input, and no record pays for a backlog.
const EXPIRED_PER_RECORD: usize = 16;

/// A dedup store holds, per id, `i<id>` → the timestamp it was seen at, and
/// `t<timestamp><id>` → nothing: the ids in time order, to forget the old.
/// Both go to the changelog, so a restore is a plain copy.
const ID: u8 = b'i';
const BY_TIME: u8 = b't';

/// Timestamps as bytes that sort like the numbers (negatives first).
fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

fn id_key(id: &[u8]) -> Vec<u8> {
    [&[ID], id].concat()
}

fn time_key(ts: i64, id: &[u8]) -> Vec<u8> {
    [&[BY_TIME][..], &time_bytes(ts), id].concat()
}

/// Whether the record with `id` at `ts` is a duplicate: the id was seen at
/// most `within_ms` from `ts`. A record that is not becomes the id's latest
/// sighting; ids last seen more than `within_ms` before `ts` are forgotten.
pub fn seen_before(
    state: &mut dyn State,
    store: usize,
    id: &[u8],
    ts: i64,
    within_ms: i64,
) -> bool {
    forget_before(state, store, ts.saturating_sub(within_ms));
    let key = id_key(id);
    let seen = state.get(store, &key).as_deref().and_then(time_of);
    if let Some(at) = seen {
        if ts.abs_diff(at) <= within_ms as u64 {
            return true;
        }
        state.put(store, &time_key(at, id), None);
    }
    state.put(store, &key, Some(&time_bytes(ts)));
    state.put(store, &time_key(ts, id), Some(b""));
    false
}

fn forget_before(state: &mut dyn State, store: usize, cutoff: i64) {
    let to = [&[BY_TIME][..], &time_bytes(cutoff)].concat();
    for key in state.keys_in(store, &[BY_TIME], &to, EXPIRED_PER_RECORD) {
        state.put(store, &key, None);
        let (Some(at), Some(id)) = (time_of(&key[1..]), key.get(9..)) else {
            continue;
        };
        // Seen again since (a later sighting): the id stays.
        let id_key = id_key(id);
        if state.get(store, &id_key).as_deref().and_then(time_of) == Some(at) {
            state.put(store, &id_key, None);
        }
    }
}

/// What an aggregation keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregationKind {
    Count,
    Sum,
    Min,
    Max,
}

/// A number an aggregation keeps: integers stay exact until a double joins.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn of_cel(v: &Value) -> Option<Number> {
        match v {
            Value::Int(i) => Some(Number::Int(*i)),
            Value::UInt(u) => Some(i64::try_from(*u).map_or(Number::Float(*u as f64), Number::Int)),
            Value::Float(f) => Some(Number::Float(*f)),
            _ => None,
        }
    }

    fn of_json(v: &serde_json::Value) -> Option<Number> {
        let n = v.as_number()?;
        n.as_i64()
            .map(Number::Int)
            .or_else(|| n.as_f64().map(Number::Float))
    }

    fn float(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    fn json(self) -> Result<serde_json::Value, String> {
        match self {
            Number::Int(i) => Ok(i.into()),
            Number::Float(f) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("{f} is not a number JSON can hold")),
        }
    }

    fn add(self, other: Number) -> Result<Number, String> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a
                .checked_add(b)
                .map(Number::Int)
                .ok_or_else(|| format!("{a} + {b} overflows a 64-bit integer")),
            (a, b) => Ok(Number::Float(a.float() + b.float())),
        }
    }

    fn less(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a < b,
            (a, b) => a.float() < b.float(),
        }
    }
}

/// The group's aggregate after one more record: `inputs` holds, per
/// aggregation in order, its name, kind and (but for `Count`) the record's
/// value. `previous` is the stored aggregate (the last update's value).
/// Returns the new update: `{"key": group, <name>: <value>, ...}`.
pub fn aggregate(
    step: &str,
    group: &str,
    previous: Option<&[u8]>,
    inputs: &[(&str, AggregationKind, Option<Value>)],
) -> Result<Vec<u8>, RecordError> {
    let error = |message: String| RecordError {
        step: step.into(),
        message,
    };
    let previous: BTreeMap<String, serde_json::Value> = match previous {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            error(format!(
                "the stored aggregate of '{group}' is not JSON: {e}"
            ))
        })?,
        None => BTreeMap::new(),
    };
    let mut out = serde_json::Map::new();
    out.insert("key".into(), group.into());
    for (name, kind, value) in inputs {
        let old = previous.get(*name).and_then(Number::of_json);
        let new = match (kind, value) {
            (AggregationKind::Count, _) => old.unwrap_or(Number::Int(0)).add(Number::Int(1)),
            (kind, Some(value)) => {
                let n = Number::of_cel(value).ok_or_else(|| {
                    error(format!(
                        "aggregation '{name}': {value:?} is not a number to {}",
                        match kind {
                            AggregationKind::Sum => "sum",
                            AggregationKind::Min => "take the minimum of",
                            _ => "take the maximum of",
                        }
                    ))
                })?;
                Ok(match (kind, old) {
                    (_, None) => n,
                    (AggregationKind::Sum, Some(o)) => o.add(n).map_err(|m| {
                        error(format!("aggregation '{name}' of group '{group}': {m}"))
                    })?,
                    (AggregationKind::Min, Some(o)) => {
                        if n.less(o) {
                            n
                        } else {
                            o
                        }
                    }
                    (_, Some(o)) => {
                        if o.less(n) {
                            n
                        } else {
                            o
                        }
                    }
                })
            }
            (_, None) => unreachable!("the evaluator gives every sum, min and max a value"),
        };
        let json = new
            .and_then(Number::json)
            .map_err(|m| error(format!("aggregation '{name}': {m}")))?;
        out.insert((*name).to_string(), json);
    }
    Ok(serde_json::to_vec(&serde_json::Value::Object(out)).expect("a JSON map serialises"))
}

#[cfg(test)]
pub mod memory {
    //! An in-memory [`State`] for the pipeline's unit tests.
    use super::State;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct MemoryState(pub BTreeMap<(usize, Vec<u8>), Vec<u8>>);

    impl State for MemoryState {
        fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>> {
            self.0.get(&(store, key.to_vec())).cloned()
        }
        fn put(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) {
            match value {
                Some(v) => self.0.insert((store, key.to_vec()), v.to_vec()),
                None => self.0.remove(&(store, key.to_vec())),
            };
        }
        fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>> {
            self.0
                .range((store, from.to_vec())..(store, to.to_vec()))
                .take(limit)
                .map(|((_, k), _)| k.clone())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryState;
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_either_side_and_new_after_it() {
        let mut s = MemoryState::default();
        assert!(!seen_before(&mut s, 0, b"a", 1_000, 100));
        assert!(
            seen_before(&mut s, 0, b"a", 1_100, 100),
            "at the window's edge"
        );
        assert!(seen_before(&mut s, 0, b"a", 950, 100), "late, still within");
        assert!(!seen_before(&mut s, 0, b"b", 1_050, 100), "another id");
        assert!(!seen_before(&mut s, 1, b"a", 1_050, 100), "another store");
        assert!(!seen_before(&mut s, 0, b"a", 1_101, 100), "past the window");
        assert!(
            seen_before(&mut s, 0, b"a", 1_150, 100),
            "the new sighting counts"
        );
    }

    #[test]
    fn old_ids_are_forgotten_so_the_state_stays_bounded() {
        let mut s = MemoryState::default();
        for i in 0..10_000i64 {
            assert!(!seen_before(&mut s, 0, &i.to_be_bytes(), i * 10, 100));
        }
        // Each id is two entries; only those within 100 ms (10 ids) of the
        // newest, and a few not yet reached by expiry, are left.
        assert!(s.0.len() <= 2 * 12, "{} entries left", s.0.len());
        // A re-sighted id keeps its newer entry when the old one expires.
        let mut s = MemoryState::default();
        seen_before(&mut s, 0, b"x", 0, 100);
        seen_before(&mut s, 0, b"x", 500, 100);
        seen_before(&mut s, 0, b"y", 550, 100);
        assert!(seen_before(&mut s, 0, b"x", 560, 100));
    }

    #[test]
    fn negative_timestamps_sort_before_positive_ones() {
        assert!(time_bytes(-5) < time_bytes(3));
        assert_eq!(time_of(&time_bytes(-5)), Some(-5));
    }

    fn update(previous: Option<&[u8]>, amount: Value) -> serde_json::Value {
        let out = aggregate(
            "totals",
            "k1",
            previous,
            &[
                ("n", AggregationKind::Count, None),
                ("sum", AggregationKind::Sum, Some(amount.clone())),
                ("low", AggregationKind::Min, Some(amount.clone())),
                ("high", AggregationKind::Max, Some(amount)),
            ],
        )
        .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn aggregates_count_sum_min_and_max_exactly() {
        let first = update(None, Value::Int(5));
        assert_eq!(
            first,
            serde_json::json!({"key": "k1", "n": 1, "sum": 5, "low": 5, "high": 5})
        );
        let bytes = serde_json::to_vec(&first).unwrap();
        let second = update(Some(&bytes), Value::Int(-2));
        assert_eq!(
            second,
            serde_json::json!({"key": "k1", "n": 2, "sum": 3, "low": -2, "high": 5})
        );
        let bytes = serde_json::to_vec(&second).unwrap();
        let third = update(Some(&bytes), Value::Float(0.5));
        assert_eq!(
            third,
            serde_json::json!({"key": "k1", "n": 3, "sum": 3.5, "low": -2, "high": 5})
        );
    }

    #[test]
    fn overflow_and_non_numbers_are_the_records_errors() {
        let big = serde_json::to_vec(&serde_json::json!({"sum": i64::MAX})).unwrap();
        let err = aggregate(
            "totals",
            "k1",
            Some(&big),
            &[("sum", AggregationKind::Sum, Some(Value::Int(1)))],
        )
        .unwrap_err();
        assert_eq!(err.step, "totals");
        assert!(err.message.contains("overflows"), "{}", err.message);
        let err = aggregate(
            "totals",
            "k1",
            None,
            &[("sum", AggregationKind::Sum, Some(Value::from("x")))],
        )
        .unwrap_err();
        assert!(err.message.contains("not a number"), "{}", err.message);
    }
}
