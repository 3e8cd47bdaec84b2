//! Whether the producer will take an output: librdkafka refuses a record
//! larger than its `message.max.bytes` on the spot (key, value and
//! serialised headers). Checked before a record's outputs are sent, so a
//! record with one output too large fails as a whole and follows
//! `onError`, instead of stopping the worker (and, restarted, stopping it
//! again on the same record).

use std::collections::BTreeMap;

use crate::pipeline::record::OutputRecord;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// The producer's limit: `message.max.bytes` from the client properties,
/// or librdkafka's default.
pub fn max_message_bytes(properties: &BTreeMap<String, String>) -> usize {
    properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// Bytes of a signed varint (zigzag), as Kafka encodes header lengths.
fn varint_len(n: i64) -> usize {
    let mut zigzag = ((n << 1) ^ (n >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// The size librdkafka checks: key + value + serialised headers.
pub fn produced_size(out: &OutputRecord) -> usize {
    let headers: usize = out
        .headers
        .iter()
        .map(|(k, v)| varint_len(k.len() as i64) + k.len() + varint_len(v.len() as i64) + v.len())
        .sum();
    out.key.as_ref().map_or(0, Vec::len) + out.value.as_ref().map_or(0, Vec::len) + headers
}

/// The first output over `max`, as the record's error message.
pub fn too_large(outputs: &[OutputRecord], max: usize) -> Option<String> {
    outputs.iter().find_map(|out| {
        let size = produced_size(out);
        (size > max).then(|| {
            format!(
                "the output to '{}' is {size} bytes, over the producer's message.max.bytes ({max})",
                out.topic
            )
        })
    })
}

/// A dead-letter copy the producer would refuse loses its value (a header
/// says how large it was), so the record is still dead-lettered with its
/// coordinates and error rather than stopping the worker.
pub fn fit_dead_letter(mut out: OutputRecord, max: usize) -> OutputRecord {
    if produced_size(&out) > max {
        if let Some(value) = out.value.take() {
            out.headers.push((
                "millrace.error.value-dropped".into(),
                format!("{} bytes, over message.max.bytes ({max})", value.len()).into_bytes(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(key: usize, value: usize, headers: &[(&str, usize)]) -> OutputRecord {
        OutputRecord {
            topic: "out".into(),
            key: Some(vec![b'k'; key]),
            value: Some(vec![b'v'; value]),
            headers: headers
                .iter()
                .map(|(k, n)| (k.to_string(), vec![b'h'; *n]))
                .collect(),
            timestamp: None,
        }
    }

    #[test]
    fn sizes_count_key_value_and_serialised_headers() {
        assert_eq!(produced_size(&output(3, 10, &[])), 13);
        // "ab": varint 1 + 2; 200-byte value: varint 2 (zigzag 400) + 200.
        assert_eq!(produced_size(&output(0, 0, &[("ab", 200)])), 205);
        assert_eq!(max_message_bytes(&BTreeMap::new()), 1_000_000);
        let set = BTreeMap::from([("message.max.bytes".to_string(), "3000".to_string())]);
        assert_eq!(max_message_bytes(&set), 3000);
    }

    #[test]
    fn the_first_output_over_the_limit_is_named_and_a_dead_letter_copy_is_made_to_fit() {
        let outputs = [output(1, 10, &[]), output(1, 4000, &[])];
        assert_eq!(too_large(&outputs[..1], 3000), None);
        let why = too_large(&outputs, 3000).unwrap();
        assert!(
            why.contains("is 4001 bytes, over the producer's message.max.bytes (3000)"),
            "{why}"
        );

        let small = fit_dead_letter(output(1, 10, &[("millrace.error", 20)]), 3000);
        assert_eq!(
            small.value.as_ref().map(Vec::len),
            Some(10),
            "fits: unchanged"
        );
        let big = fit_dead_letter(output(1, 5000, &[("millrace.error", 20)]), 3000);
        assert_eq!(big.value, None);
        assert!(big
            .headers
            .iter()
            .any(|(k, v)| k == "millrace.error.value-dropped"
                && String::from_utf8_lossy(v).starts_with("5000 bytes")));
        assert!(produced_size(&big) <= 3000);
    }
}
