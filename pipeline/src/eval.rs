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
mod tests {
    use super::*;
    use crate::compile;
    use crate::record::dead_letter_headers;

    fn evaluator(yaml: &str) -> Evaluator {
        let spec = serde_saphyr::from_str(yaml).unwrap();
        Evaluator::new(Arc::new(compile(&spec).unwrap()))
    }

    fn record(value: &'static str) -> InputRecord<'static> {
        InputRecord {
            topic: "orders",
            partition: 3,
            offset: 42,
            timestamp: Some(1000),
            key: Some(b"k1"),
            value: Some(value.as_bytes()),
            headers: vec![("trace", b"abc".as_slice())],
        }
    }

    const ROUTER: &str = r#"
source: {topics: [orders]}
steps:
- {name: paid, filter: "value.status == 'paid'"}
- name: by-size
  route:
    rules:
    - {when: "value.amount >= 1000", to: large}
    - {when: "value.region == 'eu'", to: eu}
    default: other
"#;

    fn topics(p: &Processed) -> Vec<&str> {
        p.outputs.iter().map(|o| o.topic.as_str()).collect()
    }

    #[test]
    fn first_match_routes_to_one_topic_and_keeps_bytes() {
        let e = evaluator(ROUTER);
        let input = r#"{"status":"paid","amount":5000,"region":"eu"}"#;
        let p = e.process(&record(input)).unwrap();
        assert_eq!(topics(&p), ["large"]);
        assert_eq!(
            p.outputs[0].value.as_deref(),
            Some(input.as_bytes()),
            "unchanged values are passed through byte for byte"
        );
        assert_eq!(p.outputs[0].key.as_deref(), Some(b"k1".as_slice()));
        assert_eq!(
            p.outputs[0].headers,
            [("trace".to_string(), b"abc".to_vec())]
        );
        assert_eq!(
            topics(
                &e.process(&record(r#"{"status":"paid","amount":5,"region":"eu"}"#))
                    .unwrap()
            ),
            ["eu"]
        );
        assert_eq!(
            topics(
                &e.process(&record(r#"{"status":"paid","amount":5,"region":"us"}"#))
                    .unwrap()
            ),
            ["other"]
        );
    }

    #[test]
    fn filtered_records_produce_nothing() {
        let p = evaluator(ROUTER)
            .process(&record(r#"{"status":"open","amount":5}"#))
            .unwrap();
        assert!(p.filtered && p.outputs.is_empty());
    }

    #[test]
    fn all_matches_fans_out_and_unrouted_is_reported() {
        let e = evaluator(
            "source: {topics: [o]}\nsteps:\n- route:\n    mode: AllMatches\n    rules:\n    - {when: 'value.a', to: a}\n    - {when: 'value.b', to: b}\n",
        );
        assert_eq!(
            topics(&e.process(&record(r#"{"a":true,"b":true}"#)).unwrap()),
            ["a", "b"]
        );
        let none = e.process(&record(r#"{"a":false,"b":false}"#)).unwrap();
        assert!(none.unrouted && none.outputs.is_empty());
    }

    #[test]
    fn map_rewrites_value_key_and_headers_and_later_steps_see_it() {
        let e = evaluator(
            "source: {topics: [o]}\nsteps:\n- map: {value: \"{'id': value.id, 'double': value.n * 2}\", key: 'string(value.id)', headers: {origin: 'topic'}}\n- route: {rules: [{when: 'value.double > 10', to: big}], default: small}\n",
        );
        let p = e.process(&record(r#"{"id":7,"n":6}"#)).unwrap();
        assert_eq!(topics(&p), ["big"]);
        let out: serde_json::Value =
            serde_json::from_slice(p.outputs[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"id": 7, "double": 12}));
        assert_eq!(p.outputs[0].key.as_deref(), Some(b"7".as_slice()));
        assert!(p.outputs[0]
            .headers
            .contains(&("origin".to_string(), b"orders".to_vec())));
    }

    #[test]
    fn computed_topics_and_record_coordinates() {
        let e = evaluator("source: {topics: [o]}\nsteps:\n- route: {rules: [{topicExpression: \"topic + '-' + string(partition) + '-' + string(offset)\"}]}\n");
        assert_eq!(topics(&e.process(&record("{}")).unwrap()), ["orders-3-42"]);
    }

    #[test]
    fn a_computed_topic_kafka_would_refuse_or_that_is_a_source_is_the_records_error() {
        let e = evaluator("source: {topics: [orders]}\nsteps:\n- {name: pick, route: {rules: [{topicExpression: 'value.to'}]}}\n");
        for (to, expect) in [
            ("orders", "'orders', a source topic of this app"),
            ("a/b", "which contains '/'"),
            ("", "which is empty"),
            ("..", "which is reserved"),
        ] {
            let input = serde_json::json!({ "to": to }).to_string();
            let err = e
                .process(&record(Box::leak(input.into_boxed_str())))
                .unwrap_err();
            assert_eq!(err.step, "pick");
            assert!(err.message.contains(expect), "{to:?}: {}", err.message);
        }
        let long = serde_json::json!({ "to": "t".repeat(250) }).to_string();
        let err = e
            .process(&record(Box::leak(long.into_boxed_str())))
            .unwrap_err();
        assert!(
            err.message.contains("250 characters long"),
            "{}",
            err.message
        );
        let fine = e.process(&record(r#"{"to": "orders.v2-eu_1"}"#)).unwrap();
        assert_eq!(topics(&fine), ["orders.v2-eu_1"]);
    }

    #[test]
    fn a_computed_topic_outside_the_allowed_topics_is_the_records_error() {
        let e = evaluator("source: {topics: [orders]}\nsteps:\n- {name: pick, route: {rules: [{topicExpression: 'value.to'}], allowedTopics: ['orders-*', audit]}}\n");
        for fine in ["orders-eu", "orders-", "audit"] {
            let input = serde_json::json!({ "to": fine }).to_string();
            let p = e
                .process(&record(Box::leak(input.into_boxed_str())))
                .unwrap();
            assert_eq!(topics(&p), [fine]);
        }
        for refused in ["payments", "audit-2", "order-eu"] {
            let input = serde_json::json!({ "to": refused }).to_string();
            let err = e
                .process(&record(Box::leak(input.into_boxed_str())))
                .unwrap_err();
            assert_eq!(err.step, "pick");
            assert!(
                err.message
                    .contains("not one of the route's allowedTopics [\"orders-*\", \"audit\"]"),
                "{refused}: {}",
                err.message
            );
        }
    }

    #[test]
    fn errors_name_the_step_and_dead_letter_headers_carry_coordinates() {
        let e = evaluator(ROUTER);
        let err = e.process(&record("not json")).unwrap_err();
        assert_eq!(err.step, "source");
        assert!(err.message.starts_with("value not JSON"), "{}", err.message);
        let missing = e.process(&record(r#"{"amount": 1}"#)).unwrap_err();
        assert_eq!(missing.step, "paid");
        assert!(missing.message.contains("status"), "{}", missing.message);
        let r = record("not json");
        let headers = dead_letter_headers(&err, &r);
        let get = |k: &str| {
            headers
                .iter()
                .find(|(h, _)| h == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("millrace.error.step").as_deref(), Some("source"));
        assert_eq!(get("millrace.source.topic").as_deref(), Some("orders"));
        assert_eq!(get("millrace.source.partition").as_deref(), Some("3"));
        assert_eq!(get("millrace.source.offset").as_deref(), Some("42"));
        assert_eq!(
            get("trace").as_deref(),
            Some("abc"),
            "the record's own headers are kept"
        );
    }

    #[test]
    fn a_non_boolean_condition_at_run_time_is_an_error() {
        let e = evaluator(
            "source: {topics: [o]}\nsteps:\n- filter: 'value.flag'\n- route: {default: x}\n",
        );
        let err = e.process(&record(r#"{"flag": "yes"}"#)).unwrap_err();
        assert!(err.message.contains("not true or false"), "{}", err.message);
    }

    /// Evaluation cost per record (a figure, not a timed test):
    /// `cargo test --release -p millrace-runtime cost_per_record -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost_per_record() {
        let e = evaluator(ROUTER);
        let values: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"status":"paid","amount":{},"region":"{}","id":{i},"pad":"{}"}}"#,
                    i * 3,
                    if i % 2 == 0 { "eu" } else { "us" },
                    "x".repeat(40)
                )
            })
            .collect();
        let rounds = 200;
        let started = std::time::Instant::now();
        let mut produced = 0;
        for _ in 0..rounds {
            for v in &values {
                let r = InputRecord {
                    topic: "orders",
                    partition: 0,
                    offset: 0,
                    timestamp: None,
                    key: Some(b"k"),
                    value: Some(v.as_bytes()),
                    headers: vec![],
                };
                produced += e.process(&r).unwrap().outputs.len();
            }
        }
        let n = rounds * values.len();
        let per = started.elapsed() / n as u32;
        println!("orders router: {per:?} per record over {n} records ({produced} outputs), decode + filter + 2 route conditions");
    }
}
