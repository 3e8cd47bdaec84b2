//! Outputs held back while a batch closes (`closing`), packed.
//!
//! Held as they come from evaluation, each output kept its own topic, key
//! and value allocations for the whole close and freed them all at once
//! after: the profile showed exactly-once spending about 7 % more of its
//! samples than at-least-once in malloc and free (`unlink_chunk`,
//! `malloc_consolidate`), where at-least-once frees each output right after
//! sending it. Here keys and values are copied into one buffer kept from
//! close to close and topics are interned, so the output is freed at once,
//! as under at-least-once.

use std::ops::Range;

use super::refusals::Origin;
use crate::pipeline::record::OutputRecord;

/// Outputs held back while a batch closes, at most (records, and bytes of
/// keys and values): past either the loop waits for the commit, which
/// bounds memory when the broker is slow to acknowledge. At 10,000 records
/// a loop of the benchmark waited for a fifth of its time.
pub(crate) const STASH_RECORDS: usize = 30_000;
pub(crate) const STASH_BYTES: usize = 8 << 20;

/// Topics looked up when holding a record.
const INTERNED_TOPICS: usize = 16;

#[derive(Default)]
pub(super) struct Stash {
    /// Keys and values, back to back.
    bytes: Vec<u8>,
    /// The topics held records go to: an app usually has a few.
    topics: Vec<String>,
    records: Vec<Held>,
}

struct Held {
    topic: usize,
    origin: Origin,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    /// Usually empty (no allocation); dead-lettered records carry some.
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

/// A held output, borrowed from the stash.
pub(super) struct HeldRecord<'a> {
    pub topic: &'a str,
    /// Chosen by the sender (a changelog record goes to its task's
    /// partition); `None`, by the partitioner. Held records never are.
    pub partition: Option<i32>,
    pub origin: Origin,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
    /// `None`: when it is produced.
    pub timestamp: Option<i64>,
}

impl Stash {
    pub fn push(&mut self, out: OutputRecord, origin: Origin) {
        // A computed destination (`to` as an expression) may name many
        // topics: past a few, each held record keeps its own name rather
        // than every push searching a long list.
        let known = self.topics[..self.topics.len().min(INTERNED_TOPICS)]
            .iter()
            .position(|t| *t == out.topic);
        let topic = match known {
            Some(i) => i,
            None => {
                self.topics.push(out.topic);
                self.topics.len() - 1
            }
        };
        let key = out.key.map(|k| self.copy(&k));
        let value = out.value.map(|v| self.copy(&v));
        self.records.push(Held {
            topic,
            origin,
            key,
            value,
            headers: out.headers,
            timestamp: out.timestamp,
        });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    pub fn full(&self) -> bool {
        self.records.len() >= STASH_RECORDS || self.bytes.len() >= STASH_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The held outputs, in the order they came.
    pub fn iter(&self) -> impl Iterator<Item = HeldRecord<'_>> {
        self.records.iter().map(|r| HeldRecord {
            topic: &self.topics[r.topic],
            partition: None,
            origin: r.origin,
            key: r.key.clone().map(|k| &self.bytes[k]),
            value: r.value.clone().map(|v| &self.bytes[v]),
            headers: &r.headers,
            timestamp: r.timestamp,
        })
    }

    /// Empties the stash, keeping its buffers for the next close.
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
        self.topics.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::refusals::Origin;

    fn output(topic: &str, bytes: usize) -> OutputRecord {
        OutputRecord {
            topic: topic.into(),
            key: Some(vec![1; 8]),
            value: Some(vec![2; bytes - 8]),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    #[test]
    fn the_stash_is_full_at_its_record_or_byte_limit_and_empties_on_clear() {
        let mut small = Stash::default();
        for _ in 0..STASH_RECORDS - 1 {
            small.push(output("out", 100), Origin::UNKNOWN);
        }
        assert!(!small.full());
        small.push(output("out", 100), Origin::UNKNOWN);
        assert!(small.full(), "by records");

        let mut large = Stash::default();
        large.push(output("out", STASH_BYTES - 1), Origin::UNKNOWN);
        assert!(!large.full());
        large.push(output("out", 8), Origin::UNKNOWN);
        assert!(large.full(), "by bytes of keys and values");

        large.clear();
        assert!(!large.full() && large.is_empty() && large.iter().next().is_none());
    }

    #[test]
    fn held_outputs_come_back_whole_and_in_order() {
        let mut stash = Stash::default();
        let outputs = vec![
            OutputRecord {
                topic: "a".into(),
                key: Some(b"k1".to_vec()),
                value: Some(b"v1".to_vec()),
                headers: Vec::new(),
                timestamp: None,
            },
            OutputRecord {
                topic: "b".into(),
                key: None,
                value: Some(Vec::new()),
                headers: vec![("h".into(), b"x".to_vec())],
                timestamp: None,
            },
            OutputRecord {
                topic: "a".into(),
                key: Some(b"k3".to_vec()),
                value: None,
                headers: Vec::new(),
                timestamp: None,
            },
        ];
        for out in outputs.clone() {
            stash.push(out, Origin::UNKNOWN);
        }
        let back: Vec<OutputRecord> = stash
            .iter()
            .map(|r| OutputRecord {
                topic: r.topic.into(),
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r.headers.to_vec(),
                timestamp: None,
            })
            .collect();
        assert_eq!(back, outputs);
        assert_eq!(stash.topics.len(), 2, "topics are interned");
        stash.clear();
        stash.push(output("a", 20), Origin::UNKNOWN);
        assert_eq!(stash.iter().count(), 1, "cleared, then reused");
    }

    #[test]
    fn many_computed_topics_are_held_without_searching_them_all() {
        let mut stash = Stash::default();
        for round in 0..2 {
            for t in 0..100 {
                stash.push(output(&format!("t{t}"), 20), Origin::UNKNOWN);
            }
            let names: Vec<&str> = stash.iter().map(|r| r.topic).collect();
            assert_eq!(names.len(), 100 * (round + 1));
            assert_eq!(names[99 + 100 * round], "t99");
        }
        assert_eq!(
            stash.topics.len(),
            100 + 100 - INTERNED_TOPICS,
            "only the first few are looked up"
        );
    }
}
