//! Queries over state built by running records through whole pipelines:
//! what each kind of store answers, how its keys spread over tasks, and
//! that an aggregate's answer is the value of its last update.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::eval::Evaluator;
use crate::query::{Spread, StoreKind};
use crate::record::InputRecord;
use crate::stateful::memory::MemoryState;
use crate::stateful_tests::compiled;

const SHOP: &str = r#"
source: {topics: [orders]}
steps:
- name: once
  dedup: {id: value.id, within: 1h}
- name: per-customer
  aggregate:
    groupBy: key
    aggregations: {n: {count: {}}, total: {sum: value.amount}, region: {latest: value.region}}
- name: per-region
  aggregate:
    groupBy: value.region
    window: {tumbling: 1m}
    grace: 10m
    aggregations: {n: {count: {}}}
- route: {default: out}
"#;

fn order(id: i64, customer: &str, region: &str, ts: i64) -> (String, String, i64) {
    let value = format!(r#"{{"id": {id}, "region": "{region}", "amount": {id}}}"#);
    (customer.into(), value, ts)
}

/// Runs `records` through the pipeline in one task, feeding the
/// repartitioned records back as the repartition topic would; returns the
/// values of every output (repartition topic and route), in order.
fn run(yaml: &str, records: &[(String, String, i64)], s: &mut MemoryState) -> Vec<Json> {
    let e = Evaluator::new(Arc::new(compiled(yaml).for_application("shop")));
    let mut last = Vec::new();
    let mut queue: Vec<(String, String, String, i64)> = records
        .iter()
        .map(|(k, v, ts)| ("orders".to_string(), k.clone(), v.clone(), *ts))
        .collect();
    while let Some((topic, key, value, ts)) = (!queue.is_empty()).then(|| queue.remove(0)) {
        let record = InputRecord {
            topic: &topic,
            partition: 0,
            offset: 0,
            timestamp: Some(ts),
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            headers: vec![],
        };
        for out in e.process_with(&record, s).unwrap().outputs {
            let (k, v) = (
                String::from_utf8(out.key.unwrap()).unwrap(),
                String::from_utf8(out.value.unwrap()).unwrap(),
            );
            last.push(serde_json::from_str(&v).unwrap());
            if out.topic.ends_with("-repartition") {
                queue.push((out.topic, k, v, out.timestamp.unwrap_or(ts)));
            }
        }
    }
    last
}

#[test]
fn each_stateful_step_is_queryable_with_how_its_keys_spread() {
    let p = compiled(SHOP);
    let q: Vec<(String, StoreKind, Spread)> = p
        .queryables()
        .into_iter()
        .map(|q| (q.step, q.kind, q.spread))
        .collect();
    assert_eq!(
        q,
        vec![
            ("once".into(), StoreKind::Dedup, Spread::AnyTask),
            ("per-customer".into(), StoreKind::Aggregate, Spread::Source),
            (
                "per-region".into(),
                StoreKind::WindowedAggregate,
                Spread::Repartition
            ),
        ]
    );
    assert!(p.queryable("route").is_none());
}

#[test]
fn an_aggregate_answers_with_its_last_update_and_windows_by_range() {
    let p = compiled(SHOP);
    let mut s = MemoryState::default();
    let outputs = run(
        SHOP,
        &[
            order(1, "c1", "eu", 1_000),
            order(2, "c1", "eu", 61_000),
            order(3, "c2", "us", 62_000),
            order(3, "c2", "us", 63_000), // a duplicate id: not counted
        ],
        &mut s,
    );
    let per_customer = p.queryable("per-customer").unwrap();
    let c1 = per_customer.get(b"c1", &mut s).unwrap().unwrap();
    assert_eq!(c1, json!({"key": "c1", "n": 2, "total": 3, "region": "eu"}));
    let last_c1 = outputs
        .iter()
        .rfind(|o| o["key"] == "c1" && o.get("window").is_none());
    assert_eq!(Some(&c1), last_c1, "the value of the last update");
    assert_eq!(per_customer.get(b"nobody", &mut s).unwrap(), None);

    let per_region = p.queryable("per-region").unwrap();
    let eu = per_region
        .windows(b"eu", (0, i64::MAX), 10, &mut s)
        .unwrap();
    assert_eq!(eu.len(), 2, "{eu:?}");
    assert_eq!(eu[0]["window"]["startMs"], 0);
    assert_eq!(eu[1]["window"]["startMs"], 60_000);
    assert_eq!(eu[1]["n"], 1);
    let later = per_region
        .windows(b"eu", (60_000, 120_000), 10, &mut s)
        .unwrap();
    assert_eq!(later, eu[1..].to_vec(), "windows starting in the range");
    assert_eq!(per_region.get(b"eu", &mut s).unwrap().as_ref(), eu.last());
    assert!(per_customer.windows(b"c1", (0, 1), 1, &mut s).is_err());

    let once = p.queryable("once").unwrap();
    let seen = once.get(b"3", &mut s).unwrap().unwrap();
    assert_eq!(seen["seenAtMs"], 62_000, "{seen}");
}

#[test]
fn a_scan_pages_through_a_store_in_key_order() {
    let p = compiled(SHOP);
    let mut s = MemoryState::default();
    let records: Vec<_> = (0..5)
        .map(|i| order(i, &format!("c{i}"), "eu", 1_000))
        .collect();
    run(SHOP, &records, &mut s);
    let per_customer = p.queryable("per-customer").unwrap();
    let (first, next) = per_customer.scan(None, 2, &mut s).unwrap();
    assert_eq!(
        first.iter().map(|e| e["key"].clone()).collect::<Vec<_>>(),
        [json!("c0"), json!("c1")]
    );
    let (second, next) = per_customer.scan(next.as_deref(), 2, &mut s).unwrap();
    assert_eq!(second[0]["key"], "c2");
    let (third, end) = per_customer.scan(next.as_deref(), 2, &mut s).unwrap();
    assert_eq!((third.len(), end), (1, None));
    let (ids, _) = p.queryable("once").unwrap().scan(None, 10, &mut s).unwrap();
    assert_eq!(ids.len(), 5, "ids only, not the time index: {ids:?}");
    let (windows, _) = p
        .queryable("per-region")
        .unwrap()
        .scan(None, 10, &mut s)
        .unwrap();
    assert_eq!(
        windows.len(),
        1,
        "windows only, not stream time or closings: {windows:?}"
    );
}

#[test]
fn a_join_answers_with_its_tables_value_and_a_repartitioned_dedup_by_its_id() {
    let p = compiled(
        r#"
source: {topics: [orders]}
steps:
- name: once
  dedup: {id: value.id, within: 1h, repartition: true}
- name: with-customer
  join: {table: customers, as: customer}
- route: {default: out}
"#,
    );
    let q: Vec<(String, Spread)> = p
        .queryables()
        .into_iter()
        .map(|q| (q.step, q.spread))
        .collect();
    assert_eq!(
        q,
        [
            ("once".into(), Spread::Repartition),
            ("with-customer".into(), Spread::Source)
        ]
    );
    let mut s = MemoryState::default();
    let join = p.queryable("with-customer").unwrap();
    s.0.insert((join.store, b"c1".to_vec()), br#"{"name": "Ada"}"#.to_vec());
    assert_eq!(
        join.get(b"c1", &mut s).unwrap(),
        Some(json!({"key": "c1", "value": {"name": "Ada"}}))
    );
}
