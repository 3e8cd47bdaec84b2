//! Whether the topics a record's outputs go to exist. Static destinations
//! are checked at start; a computed one (`topicExpression`) is known only
//! per record, and sent to a topic that does not exist it would wait in the
//! producer for `message.timeout.ms`, fail, and fail the whole transaction
//! again on every replay. So a computed topic is looked up once before its
//! first record is sent: missing, the record fails (and follows `onError`)
//! without anything sent.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;

use crate::pipeline::record::OutputRecord;

/// How long a lookup may hold the loop: a broker slower than this is taken
/// to know the topic (its delivery, refused, is then the record's error).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A missing topic is looked up again after this: it may be created.
const MISSING_FOR: Duration = Duration::from_secs(10);
/// Missing topics remembered at most (a CEL expression may compute many).
const MAX_MISSING: usize = 1024;

pub(super) struct Destinations {
    /// Topics known to exist: a few per app, searched per output.
    known: Vec<String>,
    /// Topics found missing, and when.
    missing: Vec<(String, Instant)>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Exists,
    Missing,
    /// The broker did not say: taken to exist.
    Unknown,
}

impl Destinations {
    /// `known`: the topics checked at start.
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        Self {
            known: known.into_iter().collect(),
            missing: Vec::new(),
        }
    }

    /// The first output whose topic does not exist, as the record's error.
    pub fn missing(&mut self, consumer: &BaseConsumer, outputs: &[OutputRecord]) -> Option<String> {
        outputs.iter().find_map(|out| {
            let topic = out.topic.as_str();
            if self.known.iter().any(|t| t == topic) {
                return None;
            }
            self.forget_old_misses();
            let missing = self.missing.iter().any(|(t, _)| t == topic)
                || match lookup(consumer, topic) {
                    Lookup::Missing => {
                        if self.missing.len() >= MAX_MISSING {
                            self.missing.remove(0);
                        }
                        self.missing.push((topic.to_string(), Instant::now()));
                        true
                    }
                    Lookup::Exists => {
                        self.known.push(topic.to_string());
                        false
                    }
                    // Not asked again for every record: a topic that is
                    // missing after all fails its delivery, which is then
                    // the record's error (`refusals`).
                    Lookup::Unknown => {
                        self.known.push(topic.to_string());
                        false
                    }
                };
            missing.then(|| format!("the output topic '{topic}' does not exist; create it"))
        })
    }

    fn forget_old_misses(&mut self) {
        self.missing
            .retain(|(_, since)| since.elapsed() < MISSING_FOR);
    }
}

/// Asks the broker about one topic. The consumer never has topics created
/// by asking (`allow.auto.create.topics` is false for consumers).
fn lookup(consumer: &BaseConsumer, topic: &str) -> Lookup {
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT) else {
        return Lookup::Unknown;
    };
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Lookup::Exists,
        Some(t)
            if t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                || t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) =>
        {
            Lookup::Missing
        }
        None => Lookup::Missing,
        Some(_) => Lookup::Unknown,
    }
}
