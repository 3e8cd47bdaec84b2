//! The evaluator on single records: routes, maps, errors and their
//! coordinates.

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
    let e =
        evaluator("source: {topics: [o]}\nsteps:\n- filter: 'value.flag'\n- route: {default: x}\n");
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
