//! Pipelines split by repartitions: where the split goes, what the
//! upstream part writes, and the downstream part run on it read back.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::eval::Evaluator;
use crate::record::{InputRecord, OutputRecord};
use crate::stateful::memory::MemoryState;
use crate::stateful_tests::compiled;
use crate::{CompiledPipeline, CompiledStep};

fn for_app(yaml: &str) -> CompiledPipeline {
    compiled(yaml).for_application("shop")
}

fn shape(p: &CompiledPipeline) -> Vec<String> {
    p.steps
        .iter()
        .map(|s| match s {
            CompiledStep::Repartition {
                name, key, topic, ..
            } => format!(
                "repartition {name} by {} to {topic}",
                key.as_ref().map_or("key", |k| k.source.as_str())
            ),
            CompiledStep::Rekey { name, .. } => format!("rekey {name}"),
            other => other.name().to_string(),
        })
        .collect()
}

fn input<'a>(topic: &'a str, key: &'a [u8], value: &'a [u8], ts: i64) -> InputRecord<'a> {
    InputRecord {
        topic,
        partition: 0,
        offset: 0,
        timestamp: Some(ts),
        key: Some(key),
        value: Some(value),
        headers: vec![("trace", b"t1")],
    }
}

/// Runs `out` (a repartition output) as the record read back from it.
fn read_back(e: &Evaluator, s: &mut MemoryState, out: &OutputRecord) -> Vec<OutputRecord> {
    let mut record = input(
        &out.topic,
        out.key.as_deref().unwrap(),
        out.value.as_deref().unwrap(),
        -1,
    );
    record.timestamp = out.timestamp;
    record.headers = out
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    e.process_with(&record, s).unwrap().outputs
}

const BY_REGION: &str = r#"
source: {topics: [orders]}
steps:
- {name: paid, filter: "value.status == 'paid'"}
- name: per-region
  aggregate:
    groupBy: value.region
    aggregations: {n: {count: {}}, total: {sum: value.amount}}
- {name: big, filter: "value.total > 10"}
- route: {default: regions}
"#;

#[test]
fn grouping_by_a_value_splits_the_pipeline_at_a_repartition_named_after_the_step() {
    let p = for_app(BY_REGION);
    assert_eq!(
        shape(&p),
        [
            "paid",
            "repartition per-region by value.region to shop-per-region-repartition",
            "per-region",
            "big",
            "step-3"
        ]
        .map(String::from)
    );
    assert_eq!(p.repartition_topics()[0].0, "shop-per-region-repartition");
    assert_eq!(p.stores(), ["per-region"]);
    let e = Evaluator::new(Arc::new(p));
    let mut s = MemoryState::default();
    let value = br#"{"status": "paid", "region": "eu", "amount": 7}"#;
    let up = e
        .process_with(&input("orders", b"order-1", value, 1_000), &mut s)
        .unwrap();
    let [out] = &up.outputs[..] else {
        panic!("{:?}", up.outputs)
    };
    assert_eq!(out.topic, "shop-per-region-repartition");
    assert_eq!(out.key.as_deref(), Some(&b"eu"[..]), "keyed by the group");
    assert_eq!(
        out.value.as_deref(),
        Some(&value[..]),
        "the value as it was"
    );
    assert_eq!(
        out.timestamp,
        Some(1_000),
        "the input's time, for windows downstream"
    );
    assert_eq!(out.headers, vec![("trace".to_string(), b"t1".to_vec())]);
    assert!(s.0.is_empty(), "the upstream part keeps no state");
    assert!(
        read_back(&e, &mut s, out).is_empty(),
        "total 7: filtered downstream"
    );
    let down = read_back(&e, &mut s, out);
    let [update] = &down[..] else {
        panic!("{down:?}")
    };
    assert_eq!(update.topic, "regions");
    let v: Json = serde_json::from_slice(update.value.as_ref().unwrap()).unwrap();
    assert_eq!(v, json!({"key": "eu", "n": 2, "total": 14}));
    let unpaid = br#"{"status": "new", "region": "eu", "amount": 7}"#;
    let up = e
        .process_with(&input("orders", b"order-2", unpaid, 1_000), &mut s)
        .unwrap();
    assert!(
        up.outputs.is_empty() && up.filtered,
        "filtered upstream, never written"
    );
}

#[test]
fn a_rekey_repartitions_only_when_a_stateful_step_follows() {
    let plain = for_app("source: {topics: [a]}\nsteps:\n- {name: by-customer, rekey: value.customer}\n- route: {default: b}\n");
    assert_eq!(shape(&plain), ["rekey by-customer", "step-1"]);
    assert!(plain.repartition_topics().is_empty());
    let e = Evaluator::new(Arc::new(plain));
    let p = e
        .process(&input("a", b"k", br#"{"customer": 42}"#, 1))
        .unwrap();
    assert_eq!(
        p.outputs[0].key.as_deref(),
        Some(&b"42"[..]),
        "an integer key as text"
    );

    let counted = for_app("source: {topics: [a]}\nsteps:\n- {name: by-customer, rekey: value.customer}\n- {name: f, filter: 'true'}\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- route: {default: b}\n");
    assert_eq!(
        shape(&counted),
        [
            "repartition by-customer by value.customer to shop-by-customer-repartition",
            "f",
            "n",
            "step-3"
        ]
    );
}

#[test]
fn a_key_set_by_map_or_a_dedup_across_keys_repartitions_before_the_stateful_step() {
    let mapped = for_app("source: {topics: [a]}\nsteps:\n- map: {key: value.customer}\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- route: {default: b}\n");
    assert_eq!(
        shape(&mapped),
        [
            "step-0",
            "repartition n by key to shop-n-repartition",
            "n",
            "step-2"
        ]
    );
    let dedup = for_app("source: {topics: [a]}\nsteps:\n- {name: once, dedup: {id: value.id, within: 1m, repartition: true}}\n- route: {default: b}\n");
    assert_eq!(
        shape(&dedup),
        [
            "repartition once by value.id to shop-once-repartition",
            "once",
            "step-1"
        ]
    );
    let e = Evaluator::new(Arc::new(dedup));
    let mut s = MemoryState::default();
    let up = e.process(&input("a", b"k1", br#"{"id": "x"}"#, 5)).unwrap();
    let again = e.process(&input("a", b"k2", br#"{"id": "x"}"#, 6)).unwrap();
    assert_eq!(
        up.outputs[0].key, again.outputs[0].key,
        "one id, one partition, whatever the key"
    );
    assert_eq!(read_back(&e, &mut s, &up.outputs[0]).len(), 1);
    assert!(
        read_back(&e, &mut s, &again.outputs[0]).is_empty(),
        "the duplicate"
    );
    let unchanged = for_app("source: {topics: [a]}\nsteps:\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- route: {default: b}\n");
    assert!(
        unchanged.repartition_topics().is_empty(),
        "grouped by the key written: no repartition"
    );
}

#[test]
fn a_key_that_is_not_text_cannot_cross_a_repartition() {
    let p = for_app("source: {topics: [a]}\nsteps:\n- {name: by-raw, rekey: \"b'\\\\xff'\"}\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- route: {default: b}\n");
    let e = Evaluator::new(Arc::new(p));
    let err = e.process(&input("a", b"k", b"{}", 1)).unwrap_err();
    assert_eq!(err.step, "by-raw");
    assert!(err.message.contains("not UTF-8"), "{}", err.message);
}

#[test]
fn set_repartition_partitions_fix_the_topics_count_and_may_add_tasks() {
    let p = for_app(&format!("repartitionPartitions: 12\n{BY_REGION}")).partitioning;
    assert_eq!(p.repartition_count(4), 12, "fixed, whatever the sources");
    assert_eq!(
        p.task_count(4),
        12,
        "tasks 4..12 read only the repartition topic"
    );
    assert_eq!(
        p.task_count(16),
        16,
        "no fewer tasks than source partitions"
    );
    let unset = for_app(BY_REGION).partitioning;
    assert_eq!(
        (unset.repartition_count(4), unset.task_count(4)),
        (4, 4),
        "one partition per task"
    );
}

#[test]
fn repartition_partitions_need_a_repartition_and_no_join() {
    let errors = crate::stateful_tests::errors(
        "repartitionPartitions: 8\nsource: {topics: [orders]}\nsteps:\n- route: {default: out}\n",
    );
    assert!(
        errors[0].starts_with("spec.pipeline.repartitionPartitions")
            && errors[0].contains("no repartition topic"),
        "{errors:?}"
    );
    let errors = crate::stateful_tests::errors(
        r#"
repartitionPartitions: 8
source: {topics: [orders]}
steps:
- name: with-customer
  join: {table: customers, key: value.customer, as: customer}
- route: {default: out}
"#,
    );
    assert!(
        errors.len() == 1 && errors[0].contains("cannot be set with a join step ('with-customer')"),
        "{errors:?}"
    );
}
