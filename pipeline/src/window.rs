//! Event-time windows over a task's [`State`]: which windows a record
//! falls in, stream time, closing windows and dropping their state.
//!
//! Semantics (docs/pipelines.md, "Windows"):
//! - Stream time is the largest event time the task has seen; it is kept
//!   in the store, so a restart (or a move) resumes with it.
//! - A time window is `[start, end)`; tumbling and hopping windows are
//!   aligned to the epoch. A session is `[first, last]` of its records'
//!   times (both inclusive); records at most `gap` apart share one.
//! - A window closes when stream time reaches its end plus `grace` (for a
//!   session, when it passes its last record's time plus `gap` plus
//!   `grace`). A record whose every window is closed is late. Closed
//!   windows' state is deleted, so the store holds only open windows.
//!
//! Store layout, one store per step (all of it goes to the changelog, so a
//! restore is a plain copy):
//! - `s` → stream time;
//! - `a` len(group) group start → `{"end": ms, "acc": accumulator}`;
//! - `c` closeTime len(group) group start → nothing: the open windows in
//!   the order they close.

use serde_json::{json, Value as Json};

use crate::aggregation::{self, Accumulator, AggregationKind, Input};
use crate::stateful::{time_bytes, time_of, State};

/// Event times a window accepts, in epoch milliseconds: years 1970 to
/// 9999, so window arithmetic (plus a year of size and 30 days of grace)
/// never overflows, and a time in microseconds by mistake is refused, not
/// taken as a stream time that would close every window for good.
pub const EVENT_TIMES: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

const STREAM_TIME: &[u8] = b"s";
pub(crate) const WINDOW: u8 = b'a';
const CLOSING: u8 = b'c';
/// Closed windows handled per pass; passes repeat until none is left.
const CLOSED_PER_PASS: usize = 512;
/// More open sessions of one group than this means a runaway key.
const MAX_SESSIONS_PER_GROUP: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Hopping windows of `size` every `advance`; tumbling when equal.
    Time {
        size: i64,
        advance: i64,
    },
    Session {
        gap: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    pub kind: WindowKind,
    pub grace: i64,
    /// Emit only closed windows (`emit: WindowClose`), not every update.
    pub on_close: bool,
}

/// One window's aggregate, updated or closed.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub group: Vec<u8>,
    pub start: i64,
    /// Exclusive for time windows, the last record's time for sessions.
    pub end: i64,
    pub acc: Accumulator,
    /// Sessions this one replaces (it grew, or joined them): `(start, end)`.
    pub replaces: Vec<(i64, i64)>,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Every window of the record had closed: it changed nothing.
    Late { stream_time: i64 },
    /// The windows to emit: the record's updates (`EveryUpdate`) or the
    /// windows its stream time closed (`WindowClose`), in closing order.
    Emit(Vec<WindowResult>),
}

pub(crate) fn window_key(group: &[u8], start: i64) -> Vec<u8> {
    let len = (group.len() as u32).to_be_bytes();
    [&[WINDOW][..], &len, group, &time_bytes(start)].concat()
}

/// `(group, start)` of a window's key.
pub(crate) fn parse_window_key(key: &[u8]) -> Option<(Vec<u8>, i64)> {
    let len = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?) as usize;
    let group = key.get(5..5 + len)?.to_vec();
    let start = time_of(key.get(5 + len..)?)?;
    Some((group, start))
}

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A window as outputs and queries show it: RFC 3339 and epoch
/// milliseconds.
pub(crate) fn window_json(start: i64, end: i64) -> Json {
    json!({"start": rfc3339(start), "end": rfc3339(end), "startMs": start, "endMs": end})
}

fn closing_key(close_at: i64, group: &[u8], start: i64) -> Vec<u8> {
    let len = (group.len() as u32).to_be_bytes();
    [
        &[CLOSING][..],
        &time_bytes(close_at),
        &len,
        group,
        &time_bytes(start),
    ]
    .concat()
}

/// `(group, start)` of a closing key.
fn parse_closing(key: &[u8]) -> Option<(Vec<u8>, i64)> {
    let len = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?) as usize;
    let group = key.get(13..13 + len)?.to_vec();
    let start = time_of(key.get(13 + len..)?)?;
    Some((group, start))
}

impl Windowing {
    /// The stream time at which a window ending at `end` is closed. A
    /// time window's end is exclusive; a session's is its last record,
    /// and a record exactly `gap` after it still joins it (as in Kafka
    /// Streams), so it closes 1 ms later.
    fn close_at(&self, end: i64) -> i64 {
        let after = match self.kind {
            WindowKind::Session { gap } => gap.saturating_add(1),
            WindowKind::Time { .. } => 0,
        };
        end.saturating_add(after).saturating_add(self.grace)
    }

    /// Starts of the time windows holding `ts`, oldest first.
    fn starts(size: i64, advance: i64, ts: i64) -> Vec<i64> {
        let last = ts - ts.rem_euclid(advance);
        let mut starts: Vec<i64> = (0..)
            .map(|i| last - i * advance)
            .take_while(|start| start + size > ts)
            .collect();
        starts.reverse();
        starts
    }
}

/// Adds a record at event time `ts` to its group's windows, advances stream
/// time, and closes (and forgets) the windows it passed. `what` names the
/// group in errors.
#[allow(clippy::too_many_arguments)]
pub fn update(
    state: &mut dyn State,
    store: usize,
    w: &Windowing,
    group: &[u8],
    ts: i64,
    inputs: &[Input<'_>],
    kinds: &[(&str, AggregationKind)],
    what: &str,
) -> Result<Outcome, String> {
    let before = state.get(store, STREAM_TIME).as_deref().and_then(time_of);
    let stream_time = before.map_or(ts, |t| t.max(ts));
    if before != Some(stream_time) {
        state.put(store, STREAM_TIME, Some(&time_bytes(stream_time)));
    }
    let updated = match w.kind {
        WindowKind::Time { size, advance } => {
            let mut updated = Vec::new();
            for start in Windowing::starts(size, advance, ts) {
                let end = start + size;
                if w.close_at(end) <= stream_time {
                    continue;
                }
                let key = window_key(group, start);
                let mut acc = match read_window(state, store, &key, what)? {
                    Some((_, acc)) => acc,
                    None => {
                        state.put(
                            store,
                            &closing_key(w.close_at(end), group, start),
                            Some(b""),
                        );
                        Accumulator::new()
                    }
                };
                aggregation::add(&mut acc, inputs, ts, what)?;
                write_window(state, store, &key, end, &acc);
                updated.push(WindowResult {
                    group: group.to_vec(),
                    start,
                    end,
                    acc,
                    replaces: Vec::new(),
                });
            }
            updated
        }
        WindowKind::Session { gap } => session(
            state,
            store,
            w,
            gap,
            group,
            ts,
            stream_time,
            inputs,
            kinds,
            what,
        )?
        .into_iter()
        .collect(),
    };
    if updated.is_empty() {
        return Ok(Outcome::Late { stream_time });
    }
    let closed = close(state, store, w, stream_time, what)?;
    Ok(Outcome::Emit(if w.on_close { closed } else { updated }))
}

/// The record's session: itself, joined with every open session of its
/// group that it is within `gap` of. `None` when that session is closed.
#[allow(clippy::too_many_arguments)]
fn session(
    state: &mut dyn State,
    store: usize,
    w: &Windowing,
    gap: i64,
    group: &[u8],
    ts: i64,
    stream_time: i64,
    inputs: &[Input<'_>],
    kinds: &[(&str, AggregationKind)],
    what: &str,
) -> Result<Option<WindowResult>, String> {
    let prefix = window_key(group, i64::MIN)[..5 + group.len()].to_vec();
    let upto = [&prefix[..], &[0xff; 9]].concat();
    let mut joined = Vec::new();
    let (mut start, mut end) = (ts, ts);
    let sessions = state.keys_in(store, &prefix, &upto, MAX_SESSIONS_PER_GROUP + 1);
    if sessions.len() > MAX_SESSIONS_PER_GROUP {
        return Err(format!(
            "{what} has more than {MAX_SESSIONS_PER_GROUP} open sessions; a shorter gap or \
             grace keeps fewer open"
        ));
    }
    for key in sessions {
        let Some(s) = key.get(prefix.len()..).and_then(time_of) else {
            continue;
        };
        let Some((e, acc)) = read_window(state, store, &key, what)? else {
            continue;
        };
        if s.saturating_sub(gap) <= ts && ts <= e.saturating_add(gap) {
            start = start.min(s);
            end = end.max(e);
            joined.push((s, e, key, acc));
        }
    }
    if joined.is_empty() && w.close_at(ts) <= stream_time {
        return Ok(None);
    }
    let mut acc = Accumulator::new();
    let mut replaces = Vec::new();
    for (s, e, key, old) in joined {
        aggregation::merge(&mut acc, &old, kinds, what)?;
        state.put(store, &key, None);
        state.put(store, &closing_key(w.close_at(e), group, s), None);
        replaces.push((s, e));
    }
    aggregation::add(&mut acc, inputs, ts, what)?;
    write_window(state, store, &window_key(group, start), end, &acc);
    state.put(
        store,
        &closing_key(w.close_at(end), group, start),
        Some(b""),
    );
    Ok(Some(WindowResult {
        group: group.to_vec(),
        start,
        end,
        acc,
        replaces,
    }))
}

/// Every window whose close time stream time has reached, oldest first,
/// deleted from the store.
fn close(
    state: &mut dyn State,
    store: usize,
    w: &Windowing,
    stream_time: i64,
    what: &str,
) -> Result<Vec<WindowResult>, String> {
    let upto = [&[CLOSING][..], &time_bytes(stream_time.saturating_add(1))].concat();
    let mut closed = Vec::new();
    loop {
        let keys = state.keys_in(store, &[CLOSING], &upto, CLOSED_PER_PASS);
        let done = keys.len() < CLOSED_PER_PASS;
        for key in keys {
            state.put(store, &key, None);
            let Some((group, start)) = parse_closing(&key) else {
                continue;
            };
            let window = window_key(&group, start);
            let Some((end, acc)) = read_window(state, store, &window, what)? else {
                continue;
            };
            state.put(store, &window, None);
            if w.on_close {
                closed.push(WindowResult {
                    group,
                    start,
                    end,
                    acc,
                    replaces: Vec::new(),
                });
            }
        }
        if done {
            return Ok(closed);
        }
    }
}

fn read_window(
    state: &mut dyn State,
    store: usize,
    key: &[u8],
    what: &str,
) -> Result<Option<(i64, Accumulator)>, String> {
    let Some(bytes) = state.get(store, key) else {
        return Ok(None);
    };
    let mut stored = aggregation::read(Some(&bytes), what)?;
    let end = stored.get("end").and_then(Json::as_i64);
    match (end, stored.remove("acc")) {
        (Some(end), Some(Json::Object(acc))) => Ok(Some((end, acc))),
        _ => Err(format!(
            "the stored window of {what} has no end and accumulator; was the step's window \
             changed without renaming the step?"
        )),
    }
}

fn write_window(state: &mut dyn State, store: usize, key: &[u8], end: i64, acc: &Accumulator) {
    let bytes = serde_json::to_vec(&json!({"end": end, "acc": acc})).expect("JSON serialises");
    state.put(store, key, Some(&bytes));
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
