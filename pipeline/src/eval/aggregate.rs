//! Running an `aggregate` step: a running aggregate per group, or per
//! event-time window (`window.rs`), and what goes on to the next steps.

use cel::Value;
use millrace_crds::ErrorPolicy;
use serde_json::{Map, Value as Json};

use super::{Current, Evaluator};
use crate::aggregation::{self, AggregationKind};
use crate::record::{dead_letter_headers, InputRecord, OutputRecord, Processed, RecordError};
use crate::stateful::State;
use crate::window::{self, window_json, Outcome, WindowResult};
use crate::CompiledStep;

/// The records an aggregate passes on: key and value bytes.
type Updates = Vec<(Vec<u8>, Vec<u8>)>;

impl Evaluator {
    /// The step's updates for this record: one for a running aggregate,
    /// the record's windows or the windows it closed for a windowed one,
    /// none for a late record (which `processed` then reports).
    pub(super) fn aggregate(
        &self,
        step: &CompiledStep,
        current: &Current<'_>,
        record: &InputRecord<'_>,
        state: &mut dyn State,
        processed: &mut Processed,
    ) -> Result<Updates, RecordError> {
        let CompiledStep::Aggregate {
            name,
            store,
            aggregations,
            windowing,
            event_time,
            late_to_dead_letter,
        } = step
        else {
            unreachable!("called for aggregate steps only")
        };
        let err = |message: String| RecordError {
            step: name.clone(),
            message,
        };
        let vars = &current.vars;
        let group = current
            .key_bytes
            .as_deref()
            .ok_or_else(|| err("the record has no key to group by".into()))?
            .to_vec();
        let mut inputs = Vec::with_capacity(aggregations.len());
        for (output, kind, e) in aggregations {
            let value = e.as_ref().map(|e| self.eval(name, e, vars)).transpose()?;
            inputs.push((output.as_str(), *kind, value));
        }
        let kinds: Vec<(&str, AggregationKind)> = aggregations
            .iter()
            .map(|(n, k, _)| (n.as_str(), *k))
            .collect();
        let text = String::from_utf8_lossy(&group).into_owned();
        let what = format!("group '{text}'");
        // Windows need an event time; a running aggregate only orders
        // `latest` and `first` by it, and takes a record without one as
        // the oldest.
        let ts = match (event_time, windowing) {
            (Some(e), _) => self.event_time(name, e, vars)?,
            (None, Some(_)) => Self::timestamp(name, record)?,
            (None, None) => record.timestamp.unwrap_or(0),
        };
        let Some(windowing) = windowing else {
            let mut acc =
                aggregation::read(state.get(*store, &group).as_deref(), &what).map_err(err)?;
            aggregation::add(&mut acc, &inputs, ts, &what).map_err(err)?;
            state.put(
                *store,
                &group,
                Some(&serde_json::to_vec(&acc).expect("JSON serialises")),
            );
            let mut out = Map::new();
            out.insert("key".into(), text.into());
            aggregation::output(&acc, &kinds, &mut out).map_err(err)?;
            return Ok(vec![(group, to_bytes(out))]);
        };
        match window::update(state, *store, windowing, &group, ts, &inputs, &kinds, &what)
            .map_err(err)?
        {
            Outcome::Late { stream_time } => {
                processed.late = true;
                if *late_to_dead_letter {
                    let dlq = self.pipeline.dead_letter_topic.as_ref();
                    let error = err(format!(
                        "late: event time {ts} is past every window's close (stream time \
                         {stream_time}, grace {} ms)",
                        windowing.grace
                    ));
                    processed.outputs.push(OutputRecord {
                        topic: dlq.expect("checked at compile time").0.clone(),
                        key: record.key.map(<[u8]>::to_vec),
                        value: record.value.map(<[u8]>::to_vec),
                        headers: dead_letter_headers(&error, record),
                        timestamp: None,
                    });
                }
                Ok(Vec::new())
            }
            Outcome::Emit(results) => results
                .into_iter()
                .map(|r| windowed_update(r, &kinds).map_err(err))
                .collect(),
        }
    }

    /// A closed window that failed in a later step, as its dead letter:
    /// `None` unless `onError` dead-letters.
    pub(super) fn window_dead_letter(
        &self,
        error: &RecordError,
        record: &InputRecord<'_>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Option<OutputRecord> {
        let p = &self.pipeline;
        let dlq = p
            .dead_letter_topic
            .as_ref()
            .filter(|_| p.error_policy == ErrorPolicy::DeadLetter)?;
        let error = RecordError {
            step: error.step.clone(),
            message: format!("a closed window: {}", error.message),
        };
        Some(OutputRecord {
            topic: dlq.0.clone(),
            key: Some(key),
            value: Some(value),
            headers: dead_letter_headers(&error, record),
            timestamp: None,
        })
    }

    /// A `timestamp:` expression's value as epoch milliseconds.
    fn event_time(
        &self,
        step: &str,
        e: &crate::Expr,
        vars: &super::Vars<'_>,
    ) -> Result<i64, RecordError> {
        let ms = match self.eval(step, e, vars)? {
            Value::Int(ms) => Some(ms),
            Value::UInt(ms) => i64::try_from(ms).ok(),
            Value::Timestamp(t) => Some(t.timestamp_millis()),
            _ => None,
        };
        ms.filter(|ms| crate::window::EVENT_TIMES.contains(ms))
            .ok_or_else(|| RecordError {
                step: step.into(),
                message: format!(
                    "`{}` is not an event time (epoch milliseconds in years 1970–9999, or a \
                     timestamp)",
                    e.source
                ),
            })
    }
}

/// A window's update: key `<group>@<startMs>/<endMs>`, value with `key`,
/// `window` and the aggregations (and `replaces` when a session grew or
/// joined others).
fn windowed_update(
    r: WindowResult,
    kinds: &[(&str, AggregationKind)],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let text = String::from_utf8_lossy(&r.group).into_owned();
    let mut out = Map::new();
    out.insert("key".into(), text.into());
    out.insert("window".into(), window_json(r.start, r.end));
    aggregation::output(&r.acc, kinds, &mut out)?;
    if !r.replaces.is_empty() {
        let replaced = r
            .replaces
            .iter()
            .map(|(s, e)| window_json(*s, *e))
            .collect();
        out.insert("replaces".into(), Json::Array(replaced));
    }
    let key = [&r.group[..], format!("@{}/{}", r.start, r.end).as_bytes()].concat();
    Ok((key, to_bytes(out)))
}

fn to_bytes(map: Map<String, Json>) -> Vec<u8> {
    serde_json::to_vec(&Json::Object(map)).expect("JSON serialises")
}
