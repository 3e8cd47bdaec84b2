//! What an aggregate keeps per group (or per window) and what it emits.
//!
//! The stored accumulator is a JSON object, one field per aggregation:
//! `count`, `sum`, `min` and `max` as plain numbers (so a running aggregate
//! stored by an earlier version reads unchanged), `avg` as its sum and
//! count, `latest` and `first` as the value and the event time it came
//! with. Accumulators merge (session windows join), and the output is
//! derived from them: the average divided out, times dropped.

use cel::Value;
use serde_json::{json, Map, Value as Json};

use crate::value::cel_to_json;

/// What an aggregation keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregationKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Latest,
    First,
}

impl AggregationKind {
    /// Whether its expression must give a number.
    pub fn numeric(self) -> bool {
        matches!(self, Self::Sum | Self::Min | Self::Max | Self::Avg)
    }

    pub fn field(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Avg => "avg",
            Self::Latest => "latest",
            Self::First => "first",
        }
    }
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

    fn of_json(v: &Json) -> Option<Number> {
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

    fn json(self) -> Result<Json, String> {
        match self {
            Number::Int(i) => Ok(i.into()),
            Number::Float(f) => serde_json::Number::from_f64(f)
                .map(Json::Number)
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

/// One record's contribution to one aggregation: its name, kind and (but
/// for `Count`) the value its expression gave.
pub type Input<'a> = (&'a str, AggregationKind, Option<Value>);

/// A group's accumulator, as stored.
pub type Accumulator = Map<String, Json>;

/// Reads a stored accumulator; `what` names it in the error.
pub fn read(bytes: Option<&[u8]>, what: &str) -> Result<Accumulator, String> {
    match bytes {
        None => Ok(Map::new()),
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| format!("the stored aggregate of {what} is not a JSON object: {e}")),
    }
}

/// `acc` with one more record, at event time `ts`. Errors name the
/// aggregation and the group (`what`).
pub fn add(acc: &mut Accumulator, inputs: &[Input<'_>], ts: i64, what: &str) -> Result<(), String> {
    for (name, kind, value) in inputs {
        let one = match (kind, value) {
            (AggregationKind::Count, _) => json!(1),
            (kind, Some(value)) if kind.numeric() => {
                let n = Number::of_cel(value).ok_or_else(|| {
                    format!(
                        "aggregation '{name}': {value:?} is not a number to {}",
                        kind.field()
                    )
                })?;
                let n = n.json().map_err(|m| format!("aggregation '{name}': {m}"))?;
                match kind {
                    AggregationKind::Avg => json!({"sum": n, "count": 1}),
                    _ => n,
                }
            }
            (_, Some(value)) => {
                let v = cel_to_json(value).map_err(|m| format!("aggregation '{name}': {m}"))?;
                json!({"at": ts, "value": v})
            }
            (_, None) => unreachable!("the evaluator gives every aggregation but count a value"),
        };
        let merged = match acc.get(*name) {
            Some(old) => merge_one(*kind, old, &one)
                .map_err(|m| format!("aggregation '{name}' of {what}: {m}"))?,
            None => one,
        };
        acc.insert((*name).to_string(), merged);
    }
    Ok(())
}

/// Two accumulators of one group as one (session windows that join).
pub fn merge(
    into: &mut Accumulator,
    other: &Accumulator,
    kinds: &[(&str, AggregationKind)],
    what: &str,
) -> Result<(), String> {
    for (name, kind) in kinds {
        let merged = match (into.get(*name), other.get(*name)) {
            (Some(a), Some(b)) => merge_one(*kind, a, b)
                .map_err(|m| format!("aggregation '{name}' of {what}: {m}"))?,
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => continue,
        };
        into.insert((*name).to_string(), merged);
    }
    Ok(())
}

/// `new` folded into `old`, both as stored. For `latest`, an equal time
/// takes `new` (the later processed); for `first`, it keeps `old`.
fn merge_one(kind: AggregationKind, old: &Json, new: &Json) -> Result<Json, String> {
    let number = |v: &Json| {
        Number::of_json(v).ok_or_else(|| {
            format!(
                "the stored {v} is not a number; was the step's aggregation changed \
                 without renaming the step?"
            )
        })
    };
    let at = |v: &Json| {
        v.get("at").and_then(Json::as_i64).ok_or_else(|| {
            format!("the stored {v} has no time; was the step's aggregation changed?")
        })
    };
    Ok(match kind {
        AggregationKind::Count | AggregationKind::Sum => number(old)?.add(number(new)?)?.json()?,
        AggregationKind::Min | AggregationKind::Max => {
            let (o, n) = (number(old)?, number(new)?);
            let take_new = if kind == AggregationKind::Min {
                n.less(o)
            } else {
                o.less(n)
            };
            if take_new {
                new.clone()
            } else {
                old.clone()
            }
        }
        AggregationKind::Avg => {
            let part = |v: &Json, f: &str| number(v.get(f).unwrap_or(&Json::Null));
            json!({
                "sum": part(old, "sum")?.add(part(new, "sum")?)?.json()?,
                "count": part(old, "count")?.add(part(new, "count")?)?.json()?,
            })
        }
        AggregationKind::Latest => {
            if at(new)? >= at(old)? {
                new.clone()
            } else {
                old.clone()
            }
        }
        AggregationKind::First => {
            if at(new)? < at(old)? {
                new.clone()
            } else {
                old.clone()
            }
        }
    })
}

/// The output fields of an accumulator, in the aggregations' order.
pub fn output(
    acc: &Accumulator,
    kinds: &[(&str, AggregationKind)],
    out: &mut Map<String, Json>,
) -> Result<(), String> {
    for (name, kind) in kinds {
        let Some(stored) = acc.get(*name) else {
            continue;
        };
        let value = match kind {
            AggregationKind::Avg => {
                let part = |f: &str| stored.get(f).and_then(Number::of_json);
                match (part("sum"), part("count")) {
                    (Some(sum), Some(count)) if count.float() > 0.0 => {
                        Number::Float(sum.float() / count.float()).json()?
                    }
                    _ => {
                        return Err(format!(
                            "the stored average {stored} is not a sum and count"
                        ))
                    }
                }
            }
            AggregationKind::Latest | AggregationKind::First => {
                stored.get("value").cloned().unwrap_or(Json::Null)
            }
            _ => stored.clone(),
        };
        out.insert((*name).to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [(&str, AggregationKind); 7] = [
        ("n", AggregationKind::Count),
        ("sum", AggregationKind::Sum),
        ("low", AggregationKind::Min),
        ("high", AggregationKind::Max),
        ("mean", AggregationKind::Avg),
        ("last", AggregationKind::Latest),
        ("opening", AggregationKind::First),
    ];

    fn inputs(amount: Value, status: &str) -> Vec<Input<'static>> {
        KINDS
            .iter()
            .map(|(name, kind)| {
                let v = match kind {
                    AggregationKind::Count => None,
                    AggregationKind::Latest | AggregationKind::First => Some(Value::from(status)),
                    _ => Some(amount.clone()),
                };
                (*name, *kind, v)
            })
            .collect()
    }

    fn out(acc: &Accumulator) -> Json {
        let mut m = Map::new();
        output(acc, &KINDS, &mut m).unwrap();
        Json::Object(m)
    }

    #[test]
    fn aggregates_every_kind_exactly() {
        let mut acc = Accumulator::new();
        add(&mut acc, &inputs(Value::Int(5), "new"), 100, "g").unwrap();
        assert_eq!(
            out(&acc),
            json!({"n": 1, "sum": 5, "low": 5, "high": 5, "mean": 5.0, "last": "new", "opening": "new"})
        );
        // Stored and read back between records, as the store does.
        let mut acc = read(Some(&serde_json::to_vec(&acc).unwrap()), "g").unwrap();
        add(&mut acc, &inputs(Value::Int(-2), "paid"), 300, "g").unwrap();
        add(&mut acc, &inputs(Value::Float(0.5), "late"), 50, "g").unwrap();
        assert_eq!(
            out(&acc),
            json!({"n": 3, "sum": 3.5, "low": -2, "high": 5, "mean": 3.5 / 3.0,
                   "last": "paid", "opening": "late"})
        );
    }

    #[test]
    fn merged_accumulators_equal_one_fed_all_records() {
        let records = [
            (Value::Int(4), "a", 10),
            (Value::Int(9), "b", 30),
            (Value::Int(1), "c", 20),
        ];
        let mut whole = Accumulator::new();
        for (v, s, ts) in &records {
            add(&mut whole, &inputs(v.clone(), s), *ts, "g").unwrap();
        }
        let (mut left, mut right) = (Accumulator::new(), Accumulator::new());
        add(&mut left, &inputs(records[0].0.clone(), "a"), 10, "g").unwrap();
        for (v, s, ts) in &records[1..] {
            add(&mut right, &inputs(v.clone(), s), *ts, "g").unwrap();
        }
        merge(&mut left, &right, &KINDS, "g").unwrap();
        assert_eq!(out(&left), out(&whole));
    }

    #[test]
    fn overflow_non_numbers_and_changed_aggregations_are_errors() {
        let mut acc = read(Some(br#"{"sum": 9223372036854775807}"#), "g").unwrap();
        let err = add(
            &mut acc,
            &[("sum", AggregationKind::Sum, Some(Value::Int(1)))],
            0,
            "'g'",
        )
        .unwrap_err();
        assert!(err.contains("overflows") && err.contains("'g'"), "{err}");
        let err = add(
            &mut Accumulator::new(),
            &[("sum", AggregationKind::Sum, Some(Value::from("x")))],
            0,
            "g",
        )
        .unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let mut acc = read(Some(br#"{"m": 3}"#), "g").unwrap();
        let err = add(
            &mut acc,
            &[("m", AggregationKind::Latest, Some(Value::Int(1)))],
            0,
            "g",
        )
        .unwrap_err();
        assert!(err.contains("changed"), "{err}");
        assert!(read(Some(b"[1]"), "'g'").unwrap_err().contains("'g'"));
    }
}
