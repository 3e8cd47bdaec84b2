//! Compiling and running the stateful steps.

use std::sync::Arc;

use millrace_crds::{PipelineSpec, ProcessingGuarantee};

use crate::eval::Evaluator;
use crate::record::InputRecord;
use crate::stateful::memory::MemoryState;
use crate::{compile, CompiledPipeline};

fn spec(yaml: &str) -> PipelineSpec {
    serde_saphyr::from_str(yaml).expect("test pipeline parses")
}

pub(crate) fn compiled(yaml: &str) -> CompiledPipeline {
    compile(&spec(yaml)).unwrap()
}

pub(crate) fn errors(yaml: &str) -> Vec<String> {
    match compile(&spec(yaml)) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const COUNTS: &str = r#"
source: {topics: [orders]}
steps:
- {name: once, dedup: {id: value.id, within: 1m}}
- name: totals
  aggregate:
    groupBy: key
    aggregations:
      n: {count: {}}
      amount: {sum: value.amount}
- {name: out, route: {rules: [{when: "value.n > 0", to: counts}]}}
"#;

fn record<'a>(key: &'a str, value: &'a str, ts: i64) -> InputRecord<'a> {
    InputRecord {
        topic: "orders",
        partition: 0,
        offset: 0,
        timestamp: Some(ts),
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        headers: vec![],
    }
}

#[test]
fn stateful_steps_get_stores_in_order_and_need_exactly_once() {
    let p = compiled(COUNTS);
    assert_eq!(p.stores(), ["once", "totals"]);
    assert_eq!(p.steps[0].store(), Some(0));
    assert_eq!(p.steps[1].store(), Some(1));
    assert!(p
        .guarantee_problem(ProcessingGuarantee::ExactlyOnce)
        .is_none());
    let problem = p
        .guarantee_problem(ProcessingGuarantee::AtLeastOnce)
        .unwrap();
    assert!(
        problem.contains("need processingGuarantee ExactlyOnce"),
        "{problem}"
    );
    let stateless = compiled("source: {topics: [a]}\nsteps:\n- route: {default: b}\n");
    assert!(stateless.stores().is_empty());
    assert!(stateless
        .guarantee_problem(ProcessingGuarantee::AtLeastOnce)
        .is_none());
}

#[test]
fn counts_and_sums_per_key_dropping_duplicates() {
    let e = Evaluator::new(Arc::new(compiled(COUNTS)));
    let mut state = MemoryState::default();
    let mut run = |key: &str, value: &str, ts: i64| {
        let p = e.process_with(&record(key, value, ts), &mut state).unwrap();
        match p.outputs.as_slice() {
            [] => {
                assert!(p.duplicate && p.filtered);
                None
            }
            [out] => {
                assert_eq!(out.topic, "counts");
                assert_eq!(out.key.as_deref(), Some(key.as_bytes()));
                let v: serde_json::Value =
                    serde_json::from_slice(out.value.as_ref().unwrap()).unwrap();
                Some(v)
            }
            more => panic!("{more:?}"),
        }
    };
    assert_eq!(
        run("a", r#"{"id": 1, "amount": 5}"#, 1_000),
        Some(serde_json::json!({"key": "a", "n": 1, "amount": 5}))
    );
    assert_eq!(
        run("a", r#"{"id": 1, "amount": 5}"#, 2_000),
        None,
        "a duplicate"
    );
    assert_eq!(
        run("b", r#"{"id": 2, "amount": 1}"#, 2_000),
        Some(serde_json::json!({"key": "b", "n": 1, "amount": 1}))
    );
    assert_eq!(
        run("a", r#"{"id": 3, "amount": 7}"#, 3_000),
        Some(serde_json::json!({"key": "a", "n": 2, "amount": 12}))
    );
    assert_eq!(
        run("a", r#"{"id": 1, "amount": 5}"#, 70_000),
        Some(serde_json::json!({"key": "a", "n": 3, "amount": 17})),
        "an id seen more than a minute before is new again"
    );
}

#[test]
fn later_steps_see_the_update_and_map_writes_it_as_json() {
    let yaml = "source: {topics: [o], valueFormat: String}\nsteps:\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- map: {value: \"{'group': key, 'twice': value.n * 2}\"}\n- route: {default: out}\n";
    let e = Evaluator::new(Arc::new(compiled(yaml)));
    let mut state = MemoryState::default();
    e.process_with(&record("k", "plain text", 1), &mut state)
        .unwrap();
    let p = e
        .process_with(&record("k", "more text", 2), &mut state)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(p.outputs[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"group": "k", "twice": 4}));
}

#[test]
fn bad_stateful_steps_are_refused_naming_the_field() {
    let errs = errors("source: {topics: [a]}\nsteps:\n- {name: 'my step', dedup: {id: value.id, within: soon}}\n- route: {default: b}\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.pipeline.steps[0].name") && e.contains("changelog topic")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.pipeline.steps[0].dedup.within") && e.contains("'soon'")),
        "{errs:?}"
    );
    let errs = errors("source: {topics: [a]}\nsteps:\n- {name: t, aggregate: {groupBy: 'value.', aggregations: {n: {count: {}}}}}\n- {name: 'by id', rekey: value.id}\n- {name: u, dedup: {id: value.id, within: 1m}}\n- route: {default: b}\n");
    assert!(
        errs[0].starts_with("spec.pipeline.steps[0].aggregate.groupBy"),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(
            |e| e.starts_with("spec.pipeline.steps[1].name") && e.contains("repartition topic")
        ),
        "{errs:?}"
    );
    let errs = errors("source: {topics: [a]}\nsteps:\n- {name: t, aggregate: {groupBy: key, aggregations: {key: {count: {}}, s: {sum: value.x, max: value.x}, m: {min: 'value.'}}}}\n- route: {default: b}\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.pipeline.steps[0].aggregate.aggregations['key']")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(
            |e| e.starts_with("spec.pipeline.steps[0].aggregate.aggregations['s']")
                && e.contains("exactly one of count, sum, min, max, avg, latest or first")
        ),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.pipeline.steps[0].aggregate.aggregations['m'].min")),
        "{errs:?}"
    );
}

#[test]
fn a_record_without_a_key_or_timestamp_is_the_records_error() {
    let e = Evaluator::new(Arc::new(compiled(COUNTS)));
    let mut state = MemoryState::default();
    let mut r = record("a", r#"{"id": 1, "amount": 5}"#, -1);
    let err = e.process_with(&r, &mut state).unwrap_err();
    assert_eq!(err.step, "once");
    assert!(err.message.contains("no timestamp"), "{}", err.message);
    r.timestamp = Some(5);
    r.key = None;
    let err = e.process_with(&r, &mut state).unwrap_err();
    assert_eq!(err.step, "totals");
    assert!(err.message.contains("no key"), "{}", err.message);
}
