//! Windows over an in-memory store: assignment, closing, lateness, sessions.

use cel::Value;
use serde_json::json;

use super::*;
use crate::stateful::memory::MemoryState;

const KINDS: [(&str, AggregationKind); 2] =
    [("n", AggregationKind::Count), ("sum", AggregationKind::Sum)];

fn inputs(amount: i64) -> Vec<Input<'static>> {
    vec![
        ("n", AggregationKind::Count, None),
        ("sum", AggregationKind::Sum, Some(Value::Int(amount))),
    ]
}

fn tumbling(size: i64, grace: i64, on_close: bool) -> Windowing {
    Windowing {
        kind: WindowKind::Time {
            size,
            advance: size,
        },
        grace,
        on_close,
    }
}

/// `(group, start, end, count, sum)` of an emitted window.
type Emitted = (String, i64, i64, i64, i64);

/// The windows a record emits, or `None` when it is late.
fn add(
    s: &mut MemoryState,
    w: &Windowing,
    group: &str,
    ts: i64,
    amount: i64,
) -> Option<Vec<Emitted>> {
    match update(
        s,
        0,
        w,
        group.as_bytes(),
        ts,
        &inputs(amount),
        &KINDS,
        group,
    )
    .unwrap()
    {
        Outcome::Late { .. } => None,
        Outcome::Emit(results) => Some(
            results
                .into_iter()
                .map(|r| {
                    (
                        String::from_utf8(r.group).unwrap(),
                        r.start,
                        r.end,
                        r.acc["n"].as_i64().unwrap(),
                        r.acc["sum"].as_i64().unwrap(),
                    )
                })
                .collect(),
        ),
    }
}

#[test]
fn hopping_windows_hold_every_record_size_over_advance_times() {
    assert_eq!(Windowing::starts(10, 10, 25), vec![20]);
    assert_eq!(Windowing::starts(10, 10, 20), vec![20], "start inclusive");
    assert_eq!(Windowing::starts(10, 10, 19), vec![10], "end exclusive");
    assert_eq!(Windowing::starts(10, 5, 12), vec![5, 10]);
    assert_eq!(Windowing::starts(10, 3, 12), vec![3, 6, 9, 12]);
    assert_eq!(Windowing::starts(10, 3, 0), vec![-9, -6, -3, 0]);
}

#[test]
fn every_update_emits_running_window_counts_and_closed_state_is_dropped() {
    let w = tumbling(10, 0, false);
    let mut s = MemoryState::default();
    assert_eq!(
        add(&mut s, &w, "k", 1, 5),
        Some(vec![("k".into(), 0, 10, 1, 5)])
    );
    assert_eq!(
        add(&mut s, &w, "k", 9, 2),
        Some(vec![("k".into(), 0, 10, 2, 7)])
    );
    assert_eq!(
        add(&mut s, &w, "j", 3, 1),
        Some(vec![("j".into(), 0, 10, 1, 1)])
    );
    // Stream time 10 closes [0, 10) for both groups: only the new window
    // and the stream time are left.
    assert_eq!(
        add(&mut s, &w, "k", 10, 1),
        Some(vec![("k".into(), 10, 20, 1, 1)])
    );
    assert_eq!(s.0.len(), 3, "{:?}", s.0.keys().collect::<Vec<_>>());
    assert_eq!(add(&mut s, &w, "k", 9, 1), None, "late: its window closed");
}

#[test]
fn window_close_emits_each_window_once_with_its_final_result_after_grace() {
    let w = tumbling(10, 5, true);
    let mut s = MemoryState::default();
    assert_eq!(add(&mut s, &w, "k", 1, 1), Some(vec![]));
    assert_eq!(add(&mut s, &w, "j", 2, 10), Some(vec![]));
    assert_eq!(add(&mut s, &w, "k", 12, 100), Some(vec![]), "within grace");
    assert_eq!(
        add(&mut s, &w, "k", 8, 2),
        Some(vec![]),
        "late but within grace"
    );
    // Stream time 15 = end + grace: [0, 10) closes, in closing order.
    assert_eq!(
        add(&mut s, &w, "j", 15, 1000),
        Some(vec![("j".into(), 0, 10, 1, 10), ("k".into(), 0, 10, 2, 3)])
    );
    assert_eq!(add(&mut s, &w, "k", 9, 1), None, "past grace: late");
    // Windows closing at one time come in group order.
    assert_eq!(
        add(&mut s, &w, "k", 40, 0),
        Some(vec![
            ("j".into(), 10, 20, 1, 1000),
            ("k".into(), 10, 20, 1, 100)
        ])
    );
}

#[test]
fn a_hopping_record_is_late_only_when_all_its_windows_closed() {
    let w = Windowing {
        kind: WindowKind::Time {
            size: 10,
            advance: 5,
        },
        grace: 0,
        on_close: false,
    };
    let mut s = MemoryState::default();
    add(&mut s, &w, "k", 20, 1);
    // 17 is in [10, 20) (closed) and [15, 25) (open).
    assert_eq!(
        add(&mut s, &w, "k", 17, 1),
        Some(vec![("k".into(), 15, 25, 2, 2)])
    );
    assert_eq!(add(&mut s, &w, "k", 14, 1), None);
}

#[test]
fn sessions_grow_join_and_close_after_gap_and_grace() {
    let w = Windowing {
        kind: WindowKind::Session { gap: 10 },
        grace: 50,
        on_close: false,
    };
    let mut s = MemoryState::default();
    assert_eq!(
        add(&mut s, &w, "k", 100, 1),
        Some(vec![("k".into(), 100, 100, 1, 1)])
    );
    assert_eq!(
        add(&mut s, &w, "k", 130, 2),
        Some(vec![("k".into(), 130, 130, 1, 2)])
    );
    // 120 is within 10 of 130 and of nothing else; 110 joins both.
    assert_eq!(
        add(&mut s, &w, "k", 120, 3),
        Some(vec![("k".into(), 120, 130, 2, 5)])
    );
    let joined = update(&mut s, 0, &w, b"k", 110, &inputs(4), &KINDS, "k").unwrap();
    let Outcome::Emit(results) = joined else {
        panic!("late")
    };
    assert_eq!((results[0].start, results[0].end), (100, 130));
    assert_eq!(
        results[0].acc,
        json!({"n": 4, "sum": 10}).as_object().unwrap().clone()
    );
    assert_eq!(results[0].replaces, vec![(100, 100), (120, 130)]);
    // Stream time 191 passes 130 + gap + grace: the session closes and is
    // forgotten.
    assert_eq!(
        add(&mut s, &w, "k", 191, 1),
        Some(vec![("k".into(), 191, 191, 1, 1)])
    );
    assert_eq!(
        s.0.len(),
        3,
        "stream time and one session, with its closing entry"
    );
    assert_eq!(add(&mut s, &w, "k", 125, 1), None, "its session closed");
    assert_eq!(
        add(&mut s, &w, "k", 181, 1),
        Some(vec![("k".into(), 181, 191, 2, 2)]),
        "joins the open one"
    );
}

#[test]
fn a_session_closes_after_gap_and_grace_even_when_no_record_joins() {
    let w = Windowing {
        kind: WindowKind::Session { gap: 10 },
        grace: 0,
        on_close: true,
    };
    let mut s = MemoryState::default();
    assert_eq!(add(&mut s, &w, "k", 100, 1), Some(vec![]));
    assert_eq!(
        add(&mut s, &w, "j", 110, 1),
        Some(vec![]),
        "open while within gap"
    );
    assert_eq!(
        add(&mut s, &w, "j", 111, 1),
        Some(vec![("k".into(), 100, 100, 1, 1)])
    );
}

#[test]
fn a_record_exactly_gap_after_a_session_joins_it_whatever_came_between() {
    let w = Windowing {
        kind: WindowKind::Session { gap: 10 },
        grace: 0,
        on_close: false,
    };
    let mut s = MemoryState::default();
    add(&mut s, &w, "k", 100, 1);
    add(&mut s, &w, "j", 110, 1);
    assert_eq!(
        add(&mut s, &w, "k", 110, 1),
        Some(vec![("k".into(), 100, 110, 2, 2)])
    );
}

#[test]
fn stream_time_and_windows_survive_a_restart() {
    // The state is all there is: a new evaluator over the same store (a
    // restart) sees the same stream time and windows.
    let w = tumbling(10, 0, true);
    let mut s = MemoryState::default();
    add(&mut s, &w, "k", 5, 1);
    add(&mut s, &w, "k", 25, 1);
    let mut restarted = MemoryState(s.0.clone());
    assert_eq!(
        add(&mut restarted, &w, "k", 15, 1),
        None,
        "stream time 25 was kept"
    );
    assert_eq!(
        add(&mut restarted, &w, "k", 30, 1),
        Some(vec![("k".into(), 20, 30, 1, 1)])
    );
}

#[test]
fn many_windows_closing_at_once_all_close() {
    let w = tumbling(10, 0, true);
    let mut s = MemoryState::default();
    for g in 0..(CLOSED_PER_PASS * 2 + 3) {
        add(&mut s, &w, &format!("g{g:04}"), 1, 1);
    }
    let closed = add(&mut s, &w, "x", 100, 1).unwrap();
    assert_eq!(closed.len(), CLOSED_PER_PASS * 2 + 3);
    assert_eq!(
        s.0.len(),
        3,
        "stream time and x's open window, with its closing entry"
    );
}
