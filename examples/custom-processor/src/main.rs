//! A custom Millrace processor, built on the runtime library: everything a
//! CEL pipeline gets (exactly-once commits, placement and fencing, `/tasks`,
//! metrics, autoscaling, the `onError` policy) around Rust logic that CEL
//! cannot express.
//!
//! Each JSON record goes to one of the app's `spec.outputs`, chosen by a
//! numeric field (`ENRICHER_SHARD_FIELD`, default `seq`) modulo their count,
//! with a `fingerprint` field added: the FNV-1a hash of the record's input
//! bytes, so a consumer can tell two deliveries of one input apart from two
//! inputs. A record that is not a JSON object, or lacks the field, is a
//! record error: dead-lettered or stopped at, per `spec.onError`.

use millrace_runtime::processor::{InputRecord, OutputRecord, Processed, Processor, RecordError};
use millrace_runtime::worker::WorkerConfig;

struct Enricher {
    outputs: Vec<String>,
    shard_field: String,
}

impl Enricher {
    fn new(config: &WorkerConfig) -> Result<Self, String> {
        let outputs: Vec<String> = config
            .custom
            .iter()
            .flat_map(|c| c.outputs.iter().map(|t| t.0.clone()))
            .collect();
        if outputs.is_empty() {
            return Err("spec.outputs: the enricher needs at least one output topic".into());
        }
        Ok(Self {
            outputs,
            shard_field: std::env::var("ENRICHER_SHARD_FIELD").unwrap_or_else(|_| "seq".into()),
        })
    }
}

fn failure(step: &str, message: String) -> RecordError {
    RecordError {
        step: step.into(),
        message,
    }
}

impl Processor for Enricher {
    fn process(&mut self, record: &InputRecord<'_>) -> Result<Processed, RecordError> {
        let bytes = record.value.unwrap_or_default();
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes)
                .map_err(|e| failure("source", format!("value not JSON: {e}")))?;
        let shard = value
            .get(&self.shard_field)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                failure(
                    "shard",
                    format!("value has no unsigned field '{}'", self.shard_field),
                )
            })?;
        value.insert(
            "fingerprint".into(),
            format!("{:016x}", fingerprint(bytes)).into(),
        );
        let topic = &self.outputs[(shard % self.outputs.len() as u64) as usize];
        Ok(Processed {
            outputs: vec![OutputRecord {
                topic: topic.clone(),
                key: record.key.map(<[u8]>::to_vec),
                value: Some(serde_json::to_vec(&value).expect("a JSON map serialises")),
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
                // Keep the input's time, as Kafka Streams does.
                timestamp: record.timestamp,
            }],
            ..Processed::default()
        })
    }
}

/// FNV-1a, 64 bits.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() {
    millrace_runtime::worker::main(Enricher::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enricher() -> Enricher {
        Enricher {
            outputs: vec!["a".into(), "b".into(), "c".into()],
            shard_field: "seq".into(),
        }
    }

    fn record(value: &str) -> InputRecord<'_> {
        InputRecord {
            topic: "in",
            partition: 0,
            offset: 7,
            timestamp: None,
            key: Some(b"k1"),
            value: Some(value.as_bytes()),
            headers: vec![("trace", b"t-1")],
        }
    }

    #[test]
    fn shards_by_the_field_and_stamps_the_fingerprint_of_the_input() {
        let input = r#"{"seq":4,"pad":"x"}"#;
        let out = enricher().process(&record(input)).unwrap().outputs;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "b");
        assert_eq!(out[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(out[0].headers, [("trace".to_string(), b"t-1".to_vec())]);
        let value: serde_json::Value =
            serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(value["seq"], 4);
        assert_eq!(
            value["fingerprint"],
            format!("{:016x}", fingerprint(input.as_bytes()))
        );
        assert_eq!(
            fingerprint(b""),
            0xcbf2_9ce4_8422_2325,
            "FNV-1a's offset basis"
        );
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a('a')");
    }

    #[test]
    fn records_it_cannot_read_are_record_errors_naming_the_step() {
        let e = enricher().process(&record("not-json-97")).unwrap_err();
        assert_eq!(e.step, "source");
        assert!(e.message.contains("not JSON"), "{}", e.message);
        let e = enricher().process(&record(r#"{"id":1}"#)).unwrap_err();
        assert_eq!(e.step, "shard");
        assert!(e.message.contains("'seq'"), "{}", e.message);
    }
}
