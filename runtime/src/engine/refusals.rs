//! Outputs the broker refused, traced back to the record they came from.
//!
//! A delivery fails long after its record was processed: under exactly-once
//! the whole transaction aborts, under at-least-once the batch is replayed.
//! Replayed as before, a record whose output the broker will always refuse
//! (too large for the topic, a topic deleted or not writable) fails again,
//! forever. So every sent record carries where it came from in its delivery
//! opaque ([`Origin`]); a refusal that is the record's own fault is kept
//! ([`Refused`]), and when the replay reaches that record it is the
//! record's error and follows `onError` instead of being sent again.
//! Failures that are not the record's (timeouts, a broker away) are
//! replayed as before.

use std::collections::BTreeMap;

use rdkafka::error::RDKafkaErrorCode;

use super::in_flight::RING;
use super::Tp;

const SLOT_BITS: u32 = RING.trailing_zeros();
const SOURCE_BITS: u32 = 12;
const OFFSET_BITS: u32 = usize::BITS - SLOT_BITS - SOURCE_BITS;
/// The source index that means "not known": a loop with more partitions
/// than this, or an offset past [`OFFSET_BITS`] (years of input at a
/// million records a second per partition).
const UNKNOWN_SOURCE: usize = (1 << SOURCE_BITS) - 1;

// The opaque is a usize: the packing needs 64 bits.
const _: () = assert!(usize::BITS == 64 && RING.is_power_of_two());

/// The input record an output came from: an index into the loop's
/// [`Sources`] and an offset, packed with the batch slot into the delivery
/// opaque, so tagging a record costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Origin(usize);

impl Origin {
    pub const UNKNOWN: Origin = Origin(UNKNOWN_SOURCE);

    fn new(source: usize, offset: i64) -> Self {
        if source >= UNKNOWN_SOURCE || !(0..1 << OFFSET_BITS).contains(&offset) {
            return Self::UNKNOWN;
        }
        Origin(source | ((offset as usize) << SOURCE_BITS))
    }

    /// The opaque of a record of batch `batch` from this origin.
    pub fn opaque(self, batch: usize) -> usize {
        (batch % RING) | (self.0 << SLOT_BITS)
    }

    /// A delivery opaque's batch slot and origin.
    pub fn of_opaque(opaque: usize) -> (usize, Origin) {
        (opaque % RING, Origin(opaque >> SLOT_BITS))
    }

    fn parts(self) -> Option<(usize, i64)> {
        let source = self.0 & UNKNOWN_SOURCE;
        (source != UNKNOWN_SOURCE).then_some((source, (self.0 >> SOURCE_BITS) as i64))
    }
}

/// The partitions a loop has read from, numbered in the order first seen;
/// a number is never reused, so an origin stays valid across placement
/// changes.
#[derive(Default)]
pub(super) struct Sources(Vec<Tp>);

impl Sources {
    pub fn origin(&mut self, topic: &str, partition: i32, offset: i64) -> Origin {
        let index = match self
            .0
            .iter()
            .position(|(t, p)| *p == partition && t == topic)
        {
            Some(i) => i,
            None => {
                self.0.push((topic.to_string(), partition));
                self.0.len() - 1
            }
        };
        Origin::new(index, offset)
    }

    fn record(&self, origin: Origin) -> Option<(Tp, i64)> {
        let (source, offset) = origin.parts()?;
        Some((self.0.get(source)?.clone(), offset))
    }
}

/// Whether a failed delivery may be the record's own fault: sent again, it
/// would be refused again. Not `MessageBatchTooLarge`, nor
/// `MessageSizeTooLarge` by itself: the broker refuses a whole produce
/// batch with the same error for every record in it, and librdkafka does
/// not split it, so a record is blamed for a size refusal only when it
/// could never fit the topic alone ([`too_large_alone`]).
pub(super) fn is_record_refusal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidRecord
            | InvalidTopic
            | UnknownTopic
            | UnknownTopicOrPartition
            | UnknownPartition
            | TopicAuthorizationFailed
            | PolicyViolation
    )
}

/// A failed delivery the delivery callback kept: from which record, to
/// which topic, why, and how large it was (key, value and headers).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Refusal {
    pub origin: Origin,
    pub topic: String,
    pub error: String,
    pub code: RDKafkaErrorCode,
    pub size: usize,
}

/// The least a record batch of one record adds to the record's bytes: the
/// batch header (61 bytes) and the record's own framing.
const ONE_RECORD_OVERHEAD: usize = 61 + 8;

/// Whether `refusal` is its record's own: not a size refusal, or one of a
/// record that alone is over the topic's `max.message.bytes` (`None`: not
/// known, so not blamed; the batch is replayed).
pub(super) fn too_large_alone(refusal: &Refusal, topic_limit: Option<usize>) -> bool {
    if refusal.code != RDKafkaErrorCode::MessageSizeTooLarge {
        return true;
    }
    topic_limit.is_some_and(|limit| refusal.size + ONE_RECORD_OVERHEAD > limit)
}

/// Most refusals the callback keeps between two looks: the rest are only
/// counted (their records are replayed and refused again, then kept).
pub(super) const MAX_KEPT: usize = 10_000;

/// What the replay does with a refused record.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RefusedRecord {
    /// The broker's refusal of one of its outputs, as the record's error.
    pub error: String,
    /// Its dead-letter copy was refused too: nothing can take it.
    pub dead_letter_refused: Option<String>,
}

/// Records whose outputs the broker refused, until their partition's
/// committed offset passes them.
#[derive(Default)]
pub(super) struct Refused(BTreeMap<Tp, BTreeMap<i64, RefusedRecord>>);

impl Refused {
    /// Keeps `refusals` (of records from `sources`); a refusal of a record
    /// already refused, sent to `dead_letter_topic`, is its dead-letter
    /// copy's. Returns how many were traced to a record.
    pub fn keep(
        &mut self,
        sources: &Sources,
        refusals: Vec<Refusal>,
        dead_letter_topic: Option<&str>,
    ) -> usize {
        let mut traced = 0;
        for refusal in refusals {
            let Some((tp, offset)) = sources.record(refusal.origin) else {
                continue;
            };
            traced += 1;
            let error = format!(
                "the broker refused the output to '{}': {}",
                refusal.topic, refusal.error
            );
            let by_offset = self.0.entry(tp).or_default();
            match by_offset.get_mut(&offset) {
                Some(known) if dead_letter_topic == Some(refusal.topic.as_str()) => {
                    known.dead_letter_refused = Some(error)
                }
                Some(_) => {}
                None => {
                    by_offset.insert(
                        offset,
                        RefusedRecord {
                            error,
                            dead_letter_refused: None,
                        },
                    );
                }
            }
        }
        traced
    }

    /// The refusal of this record, if its output was refused. Cheap when
    /// nothing was (every record asks).
    pub fn get(&self, topic: &str, partition: i32, offset: i64) -> Option<&RefusedRecord> {
        if self.0.is_empty() {
            return None;
        }
        self.0
            .iter()
            .find(|((t, p), _)| *p == partition && t == topic)
            .and_then(|(_, by_offset)| by_offset.get(&offset))
    }

    /// Forgets records below the committed offsets: they are done.
    pub fn prune<'a>(&mut self, committed: impl IntoIterator<Item = (&'a Tp, &'a i64)>) {
        for (tp, next) in committed {
            if let Some(by_offset) = self.0.get_mut(tp) {
                by_offset.retain(|offset, _| offset >= next);
                if by_offset.is_empty() {
                    self.0.remove(tp);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opaque_carries_the_batch_slot_and_the_record() {
        let mut sources = Sources::default();
        let a = sources.origin("orders", 3, 42);
        let b = sources.origin("orders", 4, (1 << OFFSET_BITS) - 1);
        assert_eq!(
            sources.origin("orders", 3, 42),
            a,
            "one number per partition"
        );
        let (slot, back) = Origin::of_opaque(a.opaque(RING + 5));
        assert_eq!((slot, back), (5, a));
        assert_eq!(sources.record(back), Some((("orders".into(), 3), 42)));
        let (_, back) = Origin::of_opaque(b.opaque(0));
        assert_eq!(
            sources.record(back),
            Some((("orders".into(), 4), (1 << OFFSET_BITS) - 1))
        );
        assert_eq!(
            sources.origin("orders", 5, 1 << OFFSET_BITS),
            Origin::UNKNOWN,
            "an offset too large to pack is not traced, never traced wrongly"
        );
        let (slot, unknown) = Origin::of_opaque(Origin::UNKNOWN.opaque(7));
        assert_eq!((slot, sources.record(unknown)), (7, None));
    }

    fn refusal(sources: &mut Sources, offset: i64, topic: &str) -> Refusal {
        Refusal {
            origin: sources.origin("in", 0, offset),
            topic: topic.into(),
            error: "Broker: Message size too large".into(),
            code: RDKafkaErrorCode::MessageSizeTooLarge,
            size: 2000,
        }
    }

    #[test]
    fn a_size_refusal_is_a_records_only_when_it_could_never_fit_alone() {
        let mut sources = Sources::default();
        let mut neighbour = refusal(&mut sources, 3, "small");
        neighbour.size = 60;
        let big = refusal(&mut sources, 4, "small");
        assert!(
            !too_large_alone(&neighbour, Some(1000)),
            "refused with its batch"
        );
        assert!(too_large_alone(&big, Some(1000)));
        assert!(!too_large_alone(&big, None), "the topic's limit not known");
        let denied = Refusal {
            code: RDKafkaErrorCode::TopicAuthorizationFailed,
            ..neighbour
        };
        assert!(
            too_large_alone(&denied, None),
            "not about size: the record's"
        );
    }

    #[test]
    fn a_refused_record_is_kept_until_committed_past_and_its_dead_letter_refusal_noted() {
        let mut sources = Sources::default();
        let mut refused = Refused::default();
        let first = vec![
            refusal(&mut sources, 7, "out"),
            refusal(&mut sources, 7, "out"),
        ];
        assert_eq!(refused.keep(&sources, first, Some("dlq")), 2);
        let kept = refused.get("in", 0, 7).unwrap();
        assert!(
            kept.error.contains("refused the output to 'out'"),
            "{kept:?}"
        );
        assert_eq!(kept.dead_letter_refused, None, "two outputs, one record");
        assert_eq!(refused.get("in", 0, 8), None);

        let dead_letter = vec![refusal(&mut sources, 7, "dlq")];
        refused.keep(&sources, dead_letter, Some("dlq"));
        assert!(refused
            .get("in", 0, 7)
            .unwrap()
            .dead_letter_refused
            .is_some());

        let unknown = Refusal {
            origin: Origin::UNKNOWN,
            ..refusal(&mut sources, 0, "out")
        };
        assert_eq!(refused.keep(&sources, vec![unknown], None), 0);

        refused.prune([(&("in".to_string(), 0), &7)]);
        assert!(
            refused.get("in", 0, 7).is_some(),
            "offset 7 is next: not done"
        );
        refused.prune([(&("in".to_string(), 0), &8)]);
        assert_eq!(refused.get("in", 0, 7), None);
        assert!(refused.0.is_empty());
    }

    #[test]
    fn only_refusals_that_would_repeat_are_the_records() {
        assert!(is_record_refusal(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(is_record_refusal(
            RDKafkaErrorCode::TopicAuthorizationFailed
        ));
        assert!(is_record_refusal(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!is_record_refusal(RDKafkaErrorCode::MessageTimedOut));
        assert!(!is_record_refusal(RDKafkaErrorCode::NotEnoughReplicas));
        assert!(!is_record_refusal(RDKafkaErrorCode::PurgeQueue));
        assert!(!is_record_refusal(RDKafkaErrorCode::MessageBatchTooLarge));
    }
}
