//! The state verifier's data side: keyed input with known duplicates goes
//! through `dedup` (by id) and a running `aggregate` (count and sum per
//! key); every update is read back under read_committed and checked
//! against what the input dictates. For each key the updates must be
//! exactly the running count 1, 2, …, n with the running sum of the ids
//! seen so far: a gap is a lost update, a repeat a duplicate, a drop back
//! state lost or wrongly restored, a count past n a duplicate the dedup
//! let through.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::verifier::{pipeline_manifest, read_all, write_paced, Topics};

pub const KEYS: u64 = 50;
/// Every `DUPLICATE_EVERY`th record (from the third on) repeats the id of
/// the record three before it: the dedup step must drop it.
pub const DUPLICATE_EVERY: u64 = 7;

/// The id record `seq` carries.
pub fn id_of(seq: u64) -> u64 {
    if seq % DUPLICATE_EVERY == 3 {
        seq - 3
    } else {
        seq
    }
}

/// Every `MALFORMED_EVERY`th record carries an amount that is not a
/// number: it fails in `aggregate` after `dedup` has seen its id, and is
/// dead-lettered. Its id is not seen: the duplicate three records later
/// (these are all first sightings, `seq % 7 == 0`) counts as the first.
pub const MALFORMED_EVERY: u64 = 35;

pub fn malformed(seq: u64) -> bool {
    seq.is_multiple_of(MALFORMED_EVERY)
}

/// The key and amount follow the id, so a duplicate lands on its
/// original's partition and adds the same amount.
pub fn key_of(id: u64) -> String {
    format!("k{}", id % KEYS)
}

pub fn amount_of(id: u64) -> i64 {
    (id % 10) as i64 + 1
}

/// A StreamApp deduplicating and counting the verifier's input into
/// `topics.outputs[0]`; `spec` is more YAML under `spec:` (two spaces).
pub fn manifest(name: &str, app_id: &str, topics: &Topics, spec: &str) -> String {
    let steps = "    - name: once
      dedup: {id: value.id, within: 1h}
    - name: totals
      aggregate:
        groupBy: key
        aggregations:
          count: {count: {}}
          total: {sum: value.n}
";
    pipeline_manifest((name, app_id), spec, topics.sinks(), steps)
}

/// Writes records `0..records` spread over about `over`.
pub fn generate(topic: &str, records: u64, over: Duration) {
    generate_seqs(topic, 0..records, over)
}

/// Writes records `seqs` spread over about `over`.
pub fn generate_seqs(topic: &str, seqs: std::ops::Range<u64>, over: Duration) {
    write_paced(topic, seqs, over, None, |seq| {
        let id = id_of(seq);
        let value = if malformed(seq) {
            format!(r#"{{"id":"id-{id}","n":"not a number"}}"#)
        } else {
            format!(r#"{{"id":"id-{id}","n":{}}}"#, amount_of(id))
        };
        (key_of(id), value)
    });
}

/// Per key, the (count, sum) every update must carry, in order.
pub fn expected(records: u64) -> BTreeMap<String, Vec<(i64, i64)>> {
    let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for seq in 0..records {
        let id = id_of(seq);
        if malformed(seq) || !seen.insert(id) {
            continue;
        }
        let updates = out.entry(key_of(id)).or_default();
        let (count, sum) = updates.last().copied().unwrap_or((0, 0));
        updates.push((count + 1, sum + amount_of(id)));
    }
    out
}

/// What the check found.
#[derive(Debug, Default)]
pub struct StateSummary {
    pub updates: u64,
    /// Keys whose updates are not exactly the expected ones, with the first
    /// difference.
    pub wrong: BTreeMap<String, String>,
}

impl std::fmt::Display for StateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} updates, {} keys wrong",
            self.updates,
            self.wrong.len()
        )?;
        for (key, why) in self.wrong.iter().take(5) {
            write!(f, "; {key}: {why}")?;
        }
        Ok(())
    }
}

/// Reads every committed update of `output` and compares each key's with
/// [`expected`].
pub fn verify(output: &str, partitions: i32, records: u64) -> StateSummary {
    let mut got: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let read = read_all(output, partitions);
    for (_, key, value, _) in &read {
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let key = String::from_utf8_lossy(key).into_owned();
        assert_eq!(
            v["key"],
            serde_json::json!(key),
            "the value names its group"
        );
        got.entry(key)
            .or_default()
            .push((v["count"].as_i64().unwrap(), v["total"].as_i64().unwrap()));
    }
    let mut summary = StateSummary {
        updates: read.len() as u64,
        ..StateSummary::default()
    };
    let want = expected(records);
    for key in want.keys().chain(got.keys()) {
        let (w, g) = (&want.get(key), &got.get(key));
        let (w, g) = (w.map_or(&[][..], |v| v), g.map_or(&[][..], |v| v));
        if w == g {
            continue;
        }
        let at = w
            .iter()
            .zip(g)
            .position(|(a, b)| a != b)
            .unwrap_or(w.len().min(g.len()));
        summary.wrong.insert(
            key.clone(),
            format!(
                "update {at}: expected {:?}, got {:?} ({} expected, {} got)",
                w.get(at),
                g.get(at),
                w.len(),
                g.len()
            ),
        );
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_repeat_an_earlier_id_and_count_once() {
        assert_eq!(id_of(10), 7);
        assert_eq!(id_of(11), 11);
        let want = expected(14);
        // ids 0..14 but 3 and 10 (duplicates of 0 and 7): 12 distinct.
        let updates: usize = want.values().map(Vec::len).sum();
        assert_eq!(updates, 12);
        assert_eq!(
            want["k0"],
            vec![(1, 1)],
            "id 0 (malformed at 0, counted at 3), once"
        );
        let long = expected(71);
        assert_eq!(long["k35"].len(), 1, "35 malformed, 38 its first sighting");
    }
}
