//! Windowed aggregates in whole pipelines: what later steps and topics
//! see, late records, and what the compiler refuses.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::eval::Evaluator;
use crate::record::{InputRecord, Processed};
use crate::stateful::memory::MemoryState;
use crate::stateful_tests::{compiled, errors};

const PER_MINUTE: &str = r#"
source: {topics: [clicks]}
steps:
- name: per-minute
  aggregate:
    groupBy: key
    window: {tumbling: 1m}
    grace: 10s
    emit: WindowClose
    lateRecords: DeadLetter
    aggregations:
      n: {count: {}}
      total: {sum: value.amount}
      mean: {avg: value.amount}
      page: {latest: value.page}
- {name: busy, filter: "value.n >= 2"}
- route: {default: minutes}
onError: {policy: DeadLetter, deadLetterTopic: late}
"#;

fn click(key: &str, ts: i64, amount: i64) -> (String, String, i64) {
    (
        key.to_string(),
        format!(r#"{{"amount": {amount}, "page": "p{amount}"}}"#),
        ts,
    )
}

fn run(
    e: &Evaluator,
    state: &mut MemoryState,
    (key, value, ts): &(String, String, i64),
) -> Processed {
    let record = InputRecord {
        topic: "clicks",
        partition: 0,
        offset: 0,
        timestamp: Some(*ts),
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        headers: vec![],
    };
    e.process_with(&record, state).unwrap()
}

fn values(p: &Processed) -> Vec<(String, String, Json)> {
    p.outputs
        .iter()
        .map(|o| {
            (
                o.topic.clone(),
                String::from_utf8(o.key.clone().unwrap()).unwrap(),
                serde_json::from_slice(o.value.as_ref().unwrap()).unwrap_or(Json::Null),
            )
        })
        .collect()
}

#[test]
fn closed_windows_go_through_the_later_steps_once_each() {
    let e = Evaluator::new(Arc::new(compiled(PER_MINUTE)));
    let mut s = MemoryState::default();
    for c in [
        click("a", 1_000, 2),
        click("a", 59_999, 4),
        click("b", 30_000, 1),
    ] {
        assert!(run(&e, &mut s, &c).outputs.is_empty(), "nothing closes yet");
    }
    // Within grace of [0, 60 s): still counted.
    assert!(run(&e, &mut s, &click("a", 65_000, 9)).outputs.is_empty());
    assert!(run(&e, &mut s, &click("a", 50_000, 6)).outputs.is_empty());
    // Stream time 70 s closes [0, 60 s): `a` passes the filter, `b` (one
    // click) does not.
    let p = run(&e, &mut s, &click("b", 70_000, 1));
    assert_eq!(
        values(&p),
        vec![(
            "minutes".to_string(),
            "a@0/60000".to_string(),
            json!({
                "key": "a",
                "window": {"start": "1970-01-01T00:00:00.000Z", "end": "1970-01-01T00:01:00.000Z",
                           "startMs": 0, "endMs": 60_000},
                "n": 3, "total": 12, "mean": 4.0, "page": "p4"
            })
        )]
    );
    assert!(p.filtered, "b's window was filtered");
    assert!(!p.late);
}

#[test]
fn late_records_are_dead_lettered_with_the_reason_and_change_nothing() {
    let e = Evaluator::new(Arc::new(compiled(PER_MINUTE)));
    let mut s = MemoryState::default();
    run(&e, &mut s, &click("a", 1_000, 1));
    run(&e, &mut s, &click("a", 120_000, 1));
    let before = s.0.clone();
    let p = run(&e, &mut s, &click("a", 59_000, 5));
    assert!(p.late);
    assert_eq!(s.0, before, "a late record changes no state");
    let [dead] = &p.outputs[..] else {
        panic!("{:?}", p.outputs)
    };
    assert_eq!(dead.topic, "late");
    assert_eq!(
        dead.value.as_deref(),
        Some(&br#"{"amount": 5, "page": "p5"}"#[..])
    );
    let reason = dead
        .headers
        .iter()
        .find(|(k, _)| k == "millrace.error")
        .unwrap();
    let reason = String::from_utf8_lossy(&reason.1);
    assert!(
        reason.contains("late") && reason.contains("stream time 120000"),
        "{reason}"
    );
    // Dropped (not dead-lettered) by default.
    let dropped = PER_MINUTE.replace("lateRecords: DeadLetter", "");
    let e = Evaluator::new(Arc::new(compiled(&dropped)));
    let mut s = MemoryState::default();
    run(&e, &mut s, &click("a", 120_000, 1));
    let p = run(&e, &mut s, &click("a", 59_000, 5));
    assert!(p.late && p.outputs.is_empty());
}

#[test]
fn every_update_emits_each_windows_running_result_keyed_by_window() {
    let yaml = "source: {topics: [clicks]}\nsteps:\n- {name: w, aggregate: {groupBy: key, window: {hopping: {size: 2m, advance: 1m}}, timestamp: value.at, aggregations: {n: {count: {}}}}}\n- route: {default: out}\n";
    let e = Evaluator::new(Arc::new(compiled(yaml)));
    let mut s = MemoryState::default();
    let record = ("k".to_string(), r#"{"at": 90000}"#.to_string(), 0);
    let keys: Vec<String> = values(&run(&e, &mut s, &record))
        .into_iter()
        .map(|(_, k, _)| k)
        .collect();
    assert_eq!(
        keys,
        ["k@0/120000", "k@60000/180000"],
        "by the value's time, not the record's"
    );
}

#[test]
fn bad_windows_are_refused_naming_the_field() {
    let step = |aggregate: &str| {
        errors(&format!(
            "source: {{topics: [a]}}\nsteps:\n- {{name: t, aggregate: {{groupBy: key, aggregations: {{n: {{count: {{}}}}}}, {aggregate}}}}}\n- route: {{default: b}}\n"
        ))
    };
    let has = |errs: &[String], field: &str, text: &str| {
        assert!(
            errs.iter().any(|e| e
                .starts_with(&format!("spec.pipeline.steps[0].aggregate.{field}"))
                && e.contains(text)),
            "{field} / {text}: {errs:?}"
        )
    };
    has(&step("emit: WindowClose"), "emit", "needs a window");
    has(&step("grace: 1s"), "grace", "needs a window");
    has(
        &step("window: {tumbling: 0s}"),
        "window.tumbling",
        "from 1ms",
    );
    has(
        &step("window: {tumbling: 400d}"),
        "window.tumbling",
        "'400d'",
    );
    has(
        &step("window: {tumbling: 1m}, grace: 31d"),
        "grace",
        "to 720h",
    );
    has(
        &step("window: {tumbling: 1m, session: {gap: 1s}}"),
        "window",
        "exactly one of",
    );
    has(
        &step("window: {hopping: {size: 1m, advance: 2m}}"),
        "window.hopping.advance",
        "at most size",
    );
    has(
        &step("window: {hopping: {size: 1h, advance: 1s}}"),
        "window.hopping.advance",
        "size / 100",
    );
    has(
        &step("window: {session: {gap: soon}}"),
        "window.session.gap",
        "'soon'",
    );
    has(
        &step("window: {tumbling: 1m}, lateRecords: DeadLetter"),
        "lateRecords",
        "deadLetterTopic",
    );
    has(
        &step("window: {tumbling: 1m}, timestamp: \"'noon'\""),
        "timestamp",
        "epoch milliseconds",
    );
    let errs = errors("source: {topics: [a]}\nsteps:\n- {name: t, aggregate: {groupBy: key, aggregations: {s: {sum: \"'x'\"}, w: {count: {}}, window: {count: {}}}}}\n- route: {default: b}\n");
    has(&errs, "aggregations['s'].sum", "needs a number");
    has(&errs, "aggregations['window']", "field of every update");
}

#[test]
fn a_closed_window_failing_later_is_dead_lettered_alone_and_closes_once() {
    let yaml = PER_MINUTE.replace(
        "- {name: busy, filter: \"value.n >= 2\"}",
        "- {name: ratio, map: {value: \"{'r': 10 / (value.n - 2)}\"}}",
    );
    let e = Evaluator::new(Arc::new(compiled(&yaml)));
    let mut s = MemoryState::default();
    run(&e, &mut s, &click("a", 1_000, 1));
    run(&e, &mut s, &click("a", 2_000, 1));
    run(&e, &mut s, &click("b", 3_000, 1));
    // Stream time 70 s closes [0, 60 s): a's window (n = 2) fails in the
    // map, b's goes on; the record that closed them is fine.
    let p = run(&e, &mut s, &click("c", 70_000, 1));
    let topics: Vec<(String, String)> = values(&p).into_iter().map(|(t, k, _)| (t, k)).collect();
    assert_eq!(
        topics,
        [
            ("late".to_string(), "a@0/60000".to_string()),
            ("minutes".to_string(), "b@0/60000".to_string())
        ]
    );
    let reason = &p.outputs[0]
        .headers
        .iter()
        .find(|(k, _)| k == "millrace.error")
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(reason).contains("a closed window"));
    let next = run(&e, &mut s, &click("c", 71_000, 1));
    assert!(next.outputs.is_empty(), "closed once: nothing fails again");
}

#[test]
fn event_times_outside_years_1970_to_9999_are_the_records_error() {
    let e = Evaluator::new(Arc::new(compiled(PER_MINUTE)));
    let mut s = MemoryState::default();
    let record = |ts| InputRecord {
        topic: "clicks",
        partition: 0,
        offset: 0,
        timestamp: Some(ts),
        key: Some(b"a"),
        value: Some(br#"{"amount": 1, "page": "p"}"#),
        headers: vec![],
    };
    // Microseconds by mistake: the year 55,000.
    let err = e
        .process_with(&record(1_733_500_000_000_000), &mut s)
        .unwrap_err();
    assert_eq!(err.step, "per-minute");
    assert!(err.message.contains("1970–9999"), "{}", err.message);
    assert!(s.0.is_empty(), "stream time untouched");
    assert!(e.process_with(&record(1_733_500_000_000), &mut s).is_ok());
}
