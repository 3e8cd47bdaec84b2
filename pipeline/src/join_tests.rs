//! Stream–table joins: the table kept from its topic, lookups, and what
//! the compiler refuses.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::eval::Evaluator;
use crate::record::InputRecord;
use crate::stateful::memory::MemoryState;
use crate::stateful_tests::{compiled, errors};

const ENRICH: &str = r#"
source: {topics: [orders]}
steps:
- name: with-customer
  join: {table: customers, key: value.customer, as: customer, type: Left}
- map: {value: "{'order': value.id, 'name': customer == null ? null : customer.name}"}
- route: {default: enriched}
"#;

fn record<'a>(topic: &'a str, key: &'a str, value: Option<&'a str>) -> InputRecord<'a> {
    InputRecord {
        topic,
        partition: 0,
        offset: 0,
        timestamp: Some(1),
        key: Some(key.as_bytes()),
        value: value.map(str::as_bytes),
        headers: vec![],
    }
}

#[test]
fn records_see_the_tables_current_value_and_tombstones_delete() {
    let p = compiled(ENRICH).for_application("shop");
    assert_eq!(p.table_topics()[0].0, "customers");
    assert_eq!(
        p.store_tables(),
        vec![Some(crate::TopicName("customers".into()))],
        "the table is the join store's changelog"
    );
    assert_eq!(
        p.repartition_topics()[0].0,
        "shop-with-customer-repartition",
        "joined by a value"
    );
    let e = Evaluator::new(Arc::new(p));
    let mut s = MemoryState::default();
    let table = |s: &mut MemoryState, key: &str, value: Option<&str>| {
        let p = e.process_with(&record("customers", key, value), s).unwrap();
        assert!(p.outputs.is_empty(), "a table record produces nothing");
    };
    // The order as read back from the repartition topic: keyed by customer.
    let order = |s: &mut MemoryState, id: i64| -> Json {
        let value = format!(r#"{{"id": {id}, "customer": "c1"}}"#);
        let p = e
            .process_with(
                &record("shop-with-customer-repartition", "c1", Some(&value)),
                s,
            )
            .unwrap();
        serde_json::from_slice(p.outputs[0].value.as_ref().unwrap()).unwrap()
    };
    assert_eq!(
        order(&mut s, 1),
        json!({"order": 1, "name": null}),
        "left: no customer yet"
    );
    table(&mut s, "c1", Some(r#"{"name": "Ada"}"#));
    assert_eq!(order(&mut s, 2), json!({"order": 2, "name": "Ada"}));
    table(&mut s, "c1", Some(r#"{"name": "Ada L."}"#));
    assert_eq!(
        order(&mut s, 3),
        json!({"order": 3, "name": "Ada L."}),
        "the latest value"
    );
    table(&mut s, "c1", None);
    assert_eq!(
        order(&mut s, 4),
        json!({"order": 4, "name": null}),
        "a tombstone deletes"
    );
}

#[test]
fn an_inner_join_by_the_key_drops_records_without_a_match() {
    let yaml = "source: {topics: [orders]}\nsteps:\n- {name: j, join: {table: customers, as: c}}\n- route: {default: out}\n";
    let p = compiled(yaml).for_application("shop");
    assert!(
        p.repartition_topics().is_empty(),
        "joined by the key: no repartition"
    );
    let e = Evaluator::new(Arc::new(p));
    let mut s = MemoryState::default();
    let p = e
        .process_with(&record("orders", "c1", Some("{}")), &mut s)
        .unwrap();
    assert!(p.filtered && p.outputs.is_empty());
    e.process_with(&record("customers", "c1", Some("{}")), &mut s)
        .unwrap();
    let p = e
        .process_with(&record("orders", "c1", Some("{}")), &mut s)
        .unwrap();
    assert_eq!(p.outputs.len(), 1);
}

#[test]
fn bad_joins_are_refused_naming_the_field() {
    let join = |j: &str| {
        errors(&format!(
            "source: {{topics: [orders]}}\nsteps:\n- {{name: j, join: {{{j}}}}}\n- route: {{default: out}}\n"
        ))
    };
    let has = |errs: Vec<String>, field: &str, text: &str| {
        assert!(
            errs.iter().any(
                |e| e.starts_with(&format!("spec.pipeline.steps[0].join.{field}"))
                    && e.contains(text)
            ),
            "{field}: {errs:?}"
        )
    };
    has(join("table: orders, as: c"), "table", "source topic");
    has(join("table: t, as: 9c"), "as", "not a variable name");
    has(join("table: t, as: value"), "as", "already a variable");
    has(join("table: t, as: c, key: \"value.x +\""), "key", "");
    let later = errors("source: {topics: [orders]}\nsteps:\n- {name: j, join: {table: t, as: c}}\n- {name: n, aggregate: {groupBy: key, aggregations: {n: {count: {}}}}}\n- {filter: 'c.vip'}\n- route: {default: out}\n");
    assert!(
        later.iter().any(|e| e.contains("unknown variable 'c'")),
        "an aggregate replaces the record, joined values too: {later:?}"
    );
}

#[test]
fn tables_are_read_once_and_never_written() {
    let two = errors("source: {topics: [orders]}\nsteps:\n- {name: a, join: {table: t, as: c}}\n- {name: b, join: {table: t, as: d}}\n- route: {default: out}\n");
    assert!(
        two.iter()
            .any(|e| e.starts_with("spec.pipeline.steps[1].join.table")
                && e.contains("earlier join")),
        "{two:?}"
    );
    let routed = errors("source: {topics: [orders]}\nsteps:\n- {name: a, join: {table: t, as: c}}\n- route: {default: t}\nonError: {policy: DeadLetter, deadLetterTopic: t}\n");
    assert!(
        routed
            .iter()
            .any(|e| e.starts_with("spec.pipeline.steps[1].route.default")
                && e.contains("join table")),
        "{routed:?}"
    );
    assert!(
        routed
            .iter()
            .any(|e| e.starts_with("spec.pipeline.onError.deadLetterTopic")),
        "{routed:?}"
    );
    let skip = "source: {topics: [orders]}\nsteps:\n- {name: a, join: {table: t, key: value.c, as: c}}\n- route: {default: out}\nonError: {skip: [{topic: t, partition: 0, offset: 5}, {topic: shop-a-repartition, partition: 1, offset: 2}]}\n";
    assert!(errors(skip).is_empty(), "{:?}", errors(skip));
    // A computed route to the app's own internal topics is the record's error.
    let yaml = "source: {topics: [orders]}\nsteps:\n- {name: a, join: {table: t, as: c}}\n- route: {rules: [{topicExpression: value.to}]}\n";
    let e = Evaluator::new(Arc::new(compiled(yaml).for_application("shop")));
    for to in ["t", "shop-a-changelog"] {
        let value = format!(r#"{{"to": "{to}"}}"#);
        let mut s = MemoryState::default();
        e.process_with(&record("t", "k", Some("{}")), &mut s)
            .unwrap();
        let err = e
            .process_with(&record("orders", "k", Some(&value)), &mut s)
            .unwrap_err();
        assert!(
            err.message.contains("corrupt its state"),
            "{to}: {}",
            err.message
        );
    }
}
