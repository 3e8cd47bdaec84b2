//! The repartition verifier's data side: orders keyed by order id,
//! counted and summed per region, a value field, so every record crosses
//! the repartition topic to the task its region hashes to. For each
//! region the updates must be exactly the counts 1, 2, …, n (a gap is a
//! lost record, a repeat a duplicate), and the last one must carry the sum
//! of its orders' amounts. The order of a region's updates depends on how
//! the input partitions interleave, so only the last sum is known.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::verifier::{pipeline_manifest, read_all, write_paced};

pub const REGIONS: [&str; 5] = ["eu", "us", "apac", "latam", "mea"];
/// The aggregate step, and so the repartition topic's middle name.
pub const STEP: &str = "per-region";

pub fn region_of(seq: u64) -> &'static str {
    REGIONS[(seq.wrapping_mul(7919) % REGIONS.len() as u64) as usize]
}

pub fn amount_of(seq: u64) -> i64 {
    (seq % 9) as i64 + 1
}

/// A StreamApp counting orders per region from `input` into `output`;
/// `spec` is more YAML under `spec:` (two spaces).
pub fn manifest(
    name: &str,
    app_id: &str,
    (input, output, dlq): (&str, &str, &str),
    spec: &str,
) -> String {
    let steps = format!(
        "    - name: {STEP}
      aggregate:
        groupBy: value.region
        aggregations:
          count: {{count: {{}}}}
          total: {{sum: value.n}}
"
    );
    pipeline_manifest((name, app_id), spec, (input, output, dlq), &steps)
}

pub fn repartition_topic(app_id: &str) -> String {
    format!("{app_id}-{STEP}-repartition")
}

/// Writes orders `seqs` over about `over`, keyed by order id.
pub fn generate(topic: &str, seqs: std::ops::Range<u64>, over: Duration) {
    write_paced(topic, seqs, over, None, |seq| {
        let value = format!(
            r#"{{"order":"o{seq}","region":"{}","n":{}}}"#,
            region_of(seq),
            amount_of(seq)
        );
        (format!("o{seq}"), value)
    });
}

/// Per region: how many orders, and their sum.
pub fn expected(records: u64) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for seq in 0..records {
        let e = out.entry(region_of(seq).to_string()).or_default();
        e.0 += 1;
        e.1 += amount_of(seq);
    }
    out
}

/// What came out per region: its counts in order, and the last sum.
pub fn read_regions(output: &str, partitions: i32) -> BTreeMap<String, (Vec<i64>, i64)> {
    let mut got: BTreeMap<String, (Vec<i64>, i64)> = BTreeMap::new();
    for (_, key, value, _) in read_all(output, partitions) {
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let region = String::from_utf8(key).unwrap();
        assert_eq!(
            v["key"],
            serde_json::json!(region),
            "keyed by the region: {v}"
        );
        let e = got.entry(region).or_default();
        e.0.push(v["count"].as_i64().unwrap());
        e.1 = v["total"].as_i64().unwrap();
    }
    got
}

/// Regions whose updates are not exactly 1…n ending at the expected sum,
/// with why.
pub fn wrong(records: u64, got: &BTreeMap<String, (Vec<i64>, i64)>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (region, (n, sum)) in expected(records) {
        let Some((counts, last)) = got.get(&region) else {
            wrong.push(format!("{region}: no update"));
            continue;
        };
        let want: Vec<i64> = (1..=n).collect();
        if *counts != want {
            let at = counts
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(counts.len().min(want.len()));
            wrong.push(format!(
                "{region}: update {at} counts {:?}, expected {:?} ({} updates for {n} orders)",
                counts.get(at),
                want.get(at),
                counts.len()
            ));
        } else if *last != sum {
            wrong.push(format!("{region}: last sum {last}, expected {sum}"));
        }
    }
    wrong
}
