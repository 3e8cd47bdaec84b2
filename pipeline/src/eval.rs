//! Running a compiled pipeline on one record.
//!
//! A record is decoded once, into CEL values that borrow its bytes; each
//! expression sees `key`, `value`, `headers`, `topic`, `partition`, `offset`
//! and `timestamp`, resolved by reference when it reads them (nothing is
//! copied into a context). Keys and values that no `map` step changed are
//! written out as the original bytes.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{CelInt, CelMap, CelMapKey, CelString};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env, Value};
use millrace_crds::{Format, RouteMode, TopicName, TopicPattern};

use super::stateful::{seen_before, State, Stateless};
use super::value::{bind, decode, decode_fields, encode, Bound};
use super::{CompiledPipeline, CompiledStep, Destination, Expr};
use crate::record::{InputRecord, OutputRecord, Processed, RecordError};

mod aggregate;
mod join;
mod repartition;

/// Evaluates a pipeline; one per processing thread.
pub struct Evaluator {
    pipeline: Arc<CompiledPipeline>,
    env: Arc<Env>,
}

/// The variables expressions see, resolved by reference on access: a
/// `map` step replaces only what it changed, and a variable no expression
/// reads (the headers, say) is never built.
struct Vars<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Bound<'a>,
    value: Bound<'a>,
    headers: Vec<(String, Vec<u8>)>,
    /// Values join steps bound, by their `as` names.
    joined: Vec<(String, Bound<'static>)>,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        Some(match variable {
            "key" => CowVal::Borrowed(self.key.as_ref()),
            "value" => CowVal::Borrowed(self.value.as_ref()),
            "topic" => CowVal::owned(CelString::from(self.topic)),
            "partition" => CowVal::owned(CelInt::from(i64::from(self.partition))),
            "offset" => CowVal::owned(CelInt::from(self.offset)),
            "timestamp" => CowVal::owned(CelInt::from(self.timestamp.unwrap_or(-1))),
            "headers" => {
                let map: HashMap<CelMapKey<'b>, Bound<'b>> = self
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let text = String::from_utf8_lossy(v);
                        (
                            CelMapKey::from(k.as_str()),
                            Box::new(CelString::from(text)) as Bound<'b>,
                        )
                    })
                    .collect();
                CowVal::owned(CelMap::from(map))
            }
            name => {
                let (_, value) = self.joined.iter().find(|(n, _)| n == name)?;
                CowVal::Borrowed(value.as_ref())
            }
        })
    }
}

/// The record's current variables, and its key and value bytes: the
/// original bytes until a map step replaces them.
struct Current<'a> {
    vars: Vars<'a>,
    key_bytes: Option<std::borrow::Cow<'a, [u8]>>,
    value_bytes: Option<std::borrow::Cow<'a, [u8]>>,
    /// How a map step writes the key and value: the source's formats, and
    /// after an aggregate a string key and a JSON value.
    key_format: Format,
    value_format: Format,
}

impl<'a> Current<'a> {
    /// The record replaced by an aggregate's update: a string key and a
    /// JSON value, the rest (headers, coordinates) as they were.
    fn updated(&self, key: Vec<u8>, value: Vec<u8>) -> Result<Current<'a>, String> {
        let text = String::from_utf8_lossy(&key).into_owned();
        let parsed: Value = decode(Some(&value), Format::Json)?
            .as_ref()
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        Ok(Current {
            vars: Vars {
                topic: self.vars.topic,
                partition: self.vars.partition,
                offset: self.vars.offset,
                timestamp: self.vars.timestamp,
                key: bind(Value::String(Arc::new(text)))?,
                value: bind(parsed)?,
                headers: self.vars.headers.clone(),
                joined: Vec::new(),
            },
            key_bytes: Some(std::borrow::Cow::Owned(key)),
            value_bytes: Some(std::borrow::Cow::Owned(value)),
            key_format: Format::String,
            value_format: Format::Json,
        })
    }
}

impl Evaluator {
    pub fn new(pipeline: Arc<CompiledPipeline>) -> Self {
        Self {
            pipeline,
            env: Arc::new(Env::stdlib()),
        }
    }

    pub fn pipeline(&self) -> &CompiledPipeline {
        &self.pipeline
    }

    /// Runs a stateless pipeline (a stateful one would keep nothing).
    pub fn process(&self, record: &InputRecord<'_>) -> Result<Processed, RecordError> {
        self.process_with(record, &mut Stateless)
    }

    /// Runs the pipeline on one record, its stateful steps over `state`
    /// (the record's task's).
    pub fn process_with(
        &self,
        record: &InputRecord<'_>,
        state: &mut dyn State,
    ) -> Result<Processed, RecordError> {
        let p = &self.pipeline;
        if let Some(store) = self.table_store(record.topic) {
            return Ok(Self::materialize(store, record, state));
        }
        // A record read back from a repartition topic resumes after it.
        let (from, key_format, value_format) = self.resume_point(record.topic);
        let source_error = |what: &str, m: String| RecordError {
            step: "source".into(),
            message: format!("{what} {m}"),
        };
        let current = Current {
            vars: Vars {
                topic: record.topic,
                partition: record.partition,
                offset: record.offset,
                timestamp: record.timestamp,
                key: decode(record.key, key_format).map_err(|m| source_error("key", m))?,
                value: decode_fields(record.value, value_format, p.value_fields.as_deref())
                    .map_err(|m| source_error("value", m))?,
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
                joined: Vec::new(),
            },
            key_bytes: record.key.map(std::borrow::Cow::Borrowed),
            value_bytes: record.value.map(std::borrow::Cow::Borrowed),
            key_format,
            value_format,
        };
        let mut processed = Processed::default();
        self.run(from, current, record, state, &mut processed)?;
        Ok(processed)
    }

    /// Steps `from..` on the record as `current` has it. An aggregate may
    /// turn one record into several (windows closing) or none: each goes
    /// on through the following steps on its own.
    fn run<'a>(
        &self,
        from: usize,
        mut current: Current<'a>,
        record: &InputRecord<'_>,
        state: &mut dyn State,
        processed: &mut Processed,
    ) -> Result<(), RecordError> {
        for (index, step) in self.pipeline.steps.iter().enumerate().skip(from) {
            let vars = &current.vars;
            match step {
                CompiledStep::Filter { name, condition } => {
                    if !self.truth(name, condition, vars)? {
                        processed.filtered = true;
                        return Ok(());
                    }
                }
                CompiledStep::Map {
                    name,
                    key,
                    value,
                    headers,
                } => {
                    let err = |m: String| RecordError {
                        step: name.clone(),
                        message: m,
                    };
                    // Every expression of the step sees the record as it came
                    // in; the changes apply together afterwards.
                    let new_key = key.as_ref().map(|e| self.eval(name, e, vars)).transpose()?;
                    let new_value = value
                        .as_ref()
                        .map(|e| self.eval(name, e, vars))
                        .transpose()?;
                    let mut new_headers = Vec::with_capacity(headers.len());
                    for (header, e) in headers {
                        let v = self.eval(name, e, vars)?;
                        let bytes = encode(&v, Format::String)
                            .map_err(|m| err(format!("header '{header}': {m}")))?
                            .unwrap_or_default();
                        new_headers.push((header.clone(), bytes));
                    }
                    for (header, bytes) in new_headers {
                        current.vars.headers.retain(|(k, _)| *k != header);
                        current.vars.headers.push((header, bytes));
                    }
                    if let Some(k) = new_key {
                        current.key_bytes = encode(&k, current.key_format)
                            .map_err(|m| err(format!("key: {m}")))?
                            .map(std::borrow::Cow::Owned);
                        current.vars.key = bind(k).map_err(|m| err(format!("key: {m}")))?;
                    }
                    if let Some(v) = new_value {
                        current.value_bytes = encode(&v, current.value_format)
                            .map_err(|m| err(format!("value: {m}")))?
                            .map(std::borrow::Cow::Owned);
                        current.vars.value = bind(v).map_err(|m| err(format!("value: {m}")))?;
                    }
                }
                CompiledStep::Route {
                    name,
                    mode,
                    rules,
                    default,
                    allowed,
                } => {
                    let mut topics: Vec<String> = Vec::new();
                    for rule in rules {
                        let matched = match &rule.when {
                            Some(when) => self.truth(name, when, vars)?,
                            None => true,
                        };
                        if !matched {
                            continue;
                        }
                        topics.push(match &rule.to {
                            Destination::Topic(t) => t.0.clone(),
                            Destination::Computed(e) => self.topic(name, e, allowed, vars)?,
                        });
                        if *mode == RouteMode::FirstMatch {
                            break;
                        }
                    }
                    if topics.is_empty() {
                        match default {
                            Some(TopicName(t)) => topics.push(t.clone()),
                            None => processed.unrouted = true,
                        }
                    }
                    topics.dedup();
                    processed
                        .outputs
                        .extend(topics.into_iter().map(|topic| OutputRecord {
                            topic,
                            key: current.key_bytes.as_deref().map(<[u8]>::to_vec),
                            value: current.value_bytes.as_deref().map(<[u8]>::to_vec),
                            headers: current.vars.headers.clone(),
                            timestamp: None,
                        }));
                    return Ok(());
                }
                CompiledStep::Dedup {
                    name,
                    store,
                    id,
                    within_ms,
                } => {
                    let id = self.key_of(name, id, vars, "an id")?;
                    let ts = Self::timestamp(name, record)?;
                    if seen_before(state, *store, &id, ts, *within_ms) {
                        processed.filtered = true;
                        processed.duplicate = true;
                        return Ok(());
                    }
                }
                CompiledStep::Rekey { name, key } => {
                    let key = self.key_of(name, key, vars, "a key")?;
                    current.rekey(key).map_err(|m| RecordError {
                        step: name.clone(),
                        message: m,
                    })?;
                }
                CompiledStep::Join { .. } => {
                    if !self.join(step, &mut current, state)? {
                        processed.filtered = true;
                        return Ok(());
                    }
                }
                CompiledStep::Repartition { .. } => {
                    processed
                        .outputs
                        .push(self.repartitioned(step, &current, record)?);
                    return Ok(());
                }
                CompiledStep::Aggregate { windowing, .. } => {
                    let closed = windowing.is_some_and(|w| w.on_close);
                    for (key, value) in self.aggregate(step, &current, record, state, processed)? {
                        let next = current.updated(key.clone(), value.clone()).map_err(|m| {
                            RecordError {
                                step: step.name().into(),
                                message: m,
                            }
                        })?;
                        let sent = processed.outputs.len();
                        let Err(e) = self.run(index + 1, next, record, state, processed) else {
                            continue;
                        };
                        // A closed window is not this record's: failing the
                        // record would undo the close, and every later
                        // record would close it and fail again. Under
                        // DeadLetter the window goes there on its own (its
                        // key and value), and the record goes on. (State a
                        // stateful step after this one wrote for it stays.)
                        match (closed, self.window_dead_letter(&e, record, key, value)) {
                            (true, Some(dead)) => {
                                processed.outputs.truncate(sent);
                                processed.outputs.push(dead);
                            }
                            _ => return Err(e),
                        }
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A key or id, as bytes: a string's or bytes' own, an integer's
    /// decimal text.
    fn key_of(
        &self,
        step: &str,
        e: &Expr,
        vars: &Vars<'_>,
        what: &str,
    ) -> Result<Vec<u8>, RecordError> {
        match self.eval(step, e, vars)? {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Bytes(b) => Ok(b.to_vec()),
            Value::Int(i) => Ok(i.to_string().into_bytes()),
            Value::UInt(u) => Ok(u.to_string().into_bytes()),
            other => Err(RecordError {
                step: step.into(),
                message: format!(
                    "`{}` gave {other:?}, not {what} (a string, bytes or an integer)",
                    e.source
                ),
            }),
        }
    }

    /// Windows go by record time: a record without one cannot be placed.
    pub(crate) fn timestamp(step: &str, record: &InputRecord<'_>) -> Result<i64, RecordError> {
        record
            .timestamp
            .filter(|t| crate::window::EVENT_TIMES.contains(t))
            .ok_or_else(|| RecordError {
                step: step.into(),
                message: "the record has no timestamp (or one outside years 1970–9999), and the \
                          step's window goes by record time"
                    .into(),
            })
    }

    fn eval(&self, step: &str, e: &Expr, vars: &Vars<'_>) -> Result<Value, RecordError> {
        // A context is an `Arc` clone and empty maps: cheap per expression.
        let mut ctx = Context::with_env(self.env.clone());
        ctx.set_variable_resolver(vars);
        e.program.execute(&ctx).map_err(|err| RecordError {
            step: step.into(),
            message: format!("`{}`: {err:?}", e.source),
        })
    }

    fn truth(&self, step: &str, e: &Expr, vars: &Vars<'_>) -> Result<bool, RecordError> {
        match self.eval(step, e, vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(RecordError {
                step: step.into(),
                message: format!("`{}` gave {other:?}, not true or false", e.source),
            }),
        }
    }

    /// A computed destination. One Kafka would refuse (a bad name) or one
    /// that is a source of this app (its records would be read again, a
    /// feedback loop) is the record's error, which follows `onError`.
    fn topic(
        &self,
        step: &str,
        e: &Expr,
        allowed: &[TopicPattern],
        vars: &Vars<'_>,
    ) -> Result<String, RecordError> {
        let error = |message: String| RecordError {
            step: step.into(),
            message,
        };
        let name = match self.eval(step, e, vars)? {
            Value::String(s) => s.to_string(),
            other => {
                return Err(error(format!(
                    "`{}` gave {other:?}, not a topic name",
                    e.source
                )))
            }
        };
        if let Some(problem) = TopicName::problem(&name) {
            return Err(error(format!(
                "`{}` gave topic name '{name}', which {problem}",
                e.source
            )));
        }
        if self.pipeline.source_topics.iter().any(|t| t.0 == name) {
            return Err(error(format!(
                "`{}` gave '{name}', a source topic of this app: its records would be read again",
                e.source
            )));
        }
        if self.pipeline.reserved_topics.contains(&name) {
            return Err(error(format!(
                "`{}` gave '{name}', a changelog, repartition or table topic of this app: \
                 records written there would corrupt its state",
                e.source
            )));
        }
        if !allowed.is_empty() && !allowed.iter().any(|p| p.matches(&name)) {
            let allowed: Vec<&str> = allowed.iter().map(|p| p.0.as_str()).collect();
            return Err(error(format!(
                "`{}` gave '{name}', which is not one of the route's allowedTopics {allowed:?}",
                e.source
            )));
        }
        Ok(name)
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
