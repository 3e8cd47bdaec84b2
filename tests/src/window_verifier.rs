//! The windowed verifier's data side: keyed input with event times in its
//! values, a tumbling-window count and sum per key, and a model of what
//! must come out.
//!
//! Event times rise with the sequence number, so which records are late
//! does not depend on how keys share partitions:
//! - most records are on time;
//! - every [`SLIGHTLY_LATE_EVERY`]th is [`SLIGHTLY_LATE_MS`] behind, often
//!   in the window before, which grace keeps open: it counts;
//! - every [`LATE_EVERY`]th (from [`LATE_FROM`]) is three windows behind,
//!   long closed whichever partition it lands in (its key's previous
//!   record, [`KEYS`] sequence numbers earlier, moved stream time past):
//!   it must be dead-lettered and counted nowhere.
//!
//! The last [`KEYS`] records ("flush") are far ahead in time, one per key,
//! so every window before them closes in every partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::verifier::{pipeline_manifest, read_all, write_paced};

pub const KEYS: u64 = 20;
pub const STEP_MS: i64 = 10;
/// A window boundary (a multiple of [`WINDOW_MS`]).
pub const BASE_MS: i64 = 1_800_000_000_000;
pub const WINDOW_MS: i64 = 2_000;
pub const GRACE_MS: i64 = 400;
pub const SLIGHTLY_LATE_EVERY: u64 = 30;
pub const SLIGHTLY_LATE_MS: i64 = 200;
pub const LATE_EVERY: u64 = 50;
pub const LATE_FROM: u64 = 1_000;

pub fn key_of(seq: u64) -> String {
    format!("w{}", seq % KEYS)
}

pub fn amount_of(seq: u64) -> i64 {
    (seq % 7) as i64 + 1
}

/// Whether record `seq` of an input of `records` is late (the flush is not).
pub fn is_late(seq: u64, records: u64) -> bool {
    (LATE_FROM..records).contains(&seq) && seq % LATE_EVERY == 7
}

/// Event time of record `seq` of an input of `records` (plus the flush).
pub fn event_time(seq: u64, records: u64) -> i64 {
    let on_time = BASE_MS + seq as i64 * STEP_MS;
    if seq >= records {
        // The flush: past every window's close.
        on_time + 100 * WINDOW_MS
    } else if is_late(seq, records) {
        on_time - 3 * WINDOW_MS
    } else if seq % SLIGHTLY_LATE_EVERY == 11 {
        on_time - SLIGHTLY_LATE_MS
    } else {
        on_time
    }
}

/// The output key of `key`'s window holding `at`.
pub fn window_key(key: &str, at: i64) -> String {
    let start = at - at.rem_euclid(WINDOW_MS);
    format!("{key}@{start}/{}", start + WINDOW_MS)
}

/// A StreamApp counting and summing per key and window into `output`,
/// late records to `dlq`; `emit` is `EveryUpdate` or `WindowClose`; `spec`
/// is more YAML under `spec:` (two spaces).
pub fn manifest(
    name: &str,
    app_id: &str,
    (input, output, dlq): (&str, &str, &str),
    emit: &str,
    spec: &str,
) -> String {
    let steps = format!(
        "    - name: per-window
      aggregate:
        groupBy: key
        window: {{tumbling: {WINDOW_MS}ms}}
        grace: {GRACE_MS}ms
        emit: {emit}
        timestamp: value.at
        lateRecords: DeadLetter
        aggregations:
          count: {{count: {{}}}}
          total: {{sum: value.n}}
"
    );
    pipeline_manifest((name, app_id), spec, (input, output, dlq), &steps)
}

/// Writes records `seqs` of an input of `records` (`records..records +
/// KEYS` is the flush) over about `over`.
pub fn generate(topic: &str, seqs: std::ops::Range<u64>, records: u64, over: Duration) {
    write_paced(topic, seqs, over, None, |seq| {
        let value = format!(
            r#"{{"seq":{seq},"at":{},"n":{}}}"#,
            event_time(seq, records),
            amount_of(seq)
        );
        (key_of(seq), value)
    });
}

/// What must come out of an input of `records` (and the flush).
pub struct Expected {
    /// Per window key, every update's (count, sum) in order (`EveryUpdate`).
    pub updates: BTreeMap<String, Vec<(i64, i64)>>,
    /// Per window key, its final (count, sum): the windows that close
    /// (`WindowClose`); the flush's windows never do.
    pub finals: BTreeMap<String, (i64, i64)>,
    pub late: BTreeSet<u64>,
}

pub fn expected(records: u64) -> Expected {
    let mut updates: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let mut late = BTreeSet::new();
    for seq in 0..records + KEYS {
        if is_late(seq, records) {
            late.insert(seq);
            continue;
        }
        let runs = updates
            .entry(window_key(&key_of(seq), event_time(seq, records)))
            .or_default();
        let (count, sum) = runs.last().copied().unwrap_or((0, 0));
        runs.push((count + 1, sum + amount_of(seq)));
    }
    let flush_from = event_time(records, records) - WINDOW_MS;
    let finals = updates
        .iter()
        .filter(|(key, _)| window_start(key) < flush_from)
        .map(|(key, runs)| (key.clone(), *runs.last().unwrap()))
        .collect();
    Expected {
        updates,
        finals,
        late,
    }
}

fn window_start(window_key: &str) -> i64 {
    let (_, window) = window_key.rsplit_once('@').unwrap();
    window.split('/').next().unwrap().parse().unwrap()
}

/// Every committed output as window key → (count, sum) in order; the value
/// must name the key and window its record key does.
pub fn read_windows(output: &str, partitions: i32) -> BTreeMap<String, Vec<(i64, i64)>> {
    let mut got: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (_, key, value, _) in read_all(output, partitions) {
        let key = String::from_utf8(key).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let named = format!(
            "{}@{}/{}",
            v["key"].as_str().unwrap(),
            v["window"]["startMs"],
            v["window"]["endMs"]
        );
        assert_eq!(named, key, "the value names the window its key does: {v}");
        got.entry(key)
            .or_default()
            .push((v["count"].as_i64().unwrap(), v["total"].as_i64().unwrap()));
    }
    got
}

/// The sequence numbers of the committed dead letters, repeats included.
pub fn read_dead_letters(dlq: &str, partitions: i32) -> Vec<u64> {
    read_all(dlq, partitions)
        .iter()
        .map(|(_, _, value, _)| {
            let v: serde_json::Value = serde_json::from_slice(value).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

/// The first difference between what was expected and what came, per
/// window key (at most `limit`).
pub fn differences<T: PartialEq + std::fmt::Debug>(
    want: &BTreeMap<String, T>,
    got: &BTreeMap<String, T>,
    limit: usize,
) -> Vec<String> {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    keys.into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .take(limit)
        .map(|k| format!("{k}: expected {:?}, got {:?}", want.get(k), got.get(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_records_are_three_windows_behind_and_slightly_late_ones_count() {
        let e = expected(2_000);
        assert_eq!(e.late.len(), 20, "1007, 1057, ..., 1957");
        assert!(e.late.contains(&1_007));
        // Slightly late: 1211 is 200 ms behind, in the window before.
        assert_eq!(event_time(1_211, 2_000), BASE_MS + 12_110 - 200);
        let counted: i64 = e.finals.values().map(|(n, _)| n).sum();
        assert_eq!(
            counted,
            2_000 - 20,
            "every on-time record, in a closed window"
        );
        assert_eq!(
            e.updates.len(),
            e.finals.len() + KEYS as usize,
            "the flush's windows stay open"
        );
    }
}
