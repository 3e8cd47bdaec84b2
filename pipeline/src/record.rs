//! Records as a processor sees them: one consumed record in (borrowed from
//! the consumer's buffer), the records to produce out, or why it failed.
//! The pipeline evaluator and custom processors speak these alike.

/// A consumed record, borrowed from the consumer's buffer.
pub struct InputRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, &'a [u8])>,
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp (create time); `None`: when it is produced. Records
    /// written to a repartition topic keep their input's, for the windows
    /// after it.
    pub timestamp: Option<i64>,
}

/// Why a record could not be processed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The step's name, or `source` when the record did not decode.
    pub step: String,
    pub message: String,
}

/// What became of a record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Processed {
    pub outputs: Vec<OutputRecord>,
    /// A filter (or a dedup) dropped it.
    pub filtered: bool,
    /// A dedup step dropped it: its id was seen within the window.
    pub duplicate: bool,
    /// No route rule matched and there is no default.
    pub unrouted: bool,
    /// A windowed aggregate found every window of the record closed (it is
    /// dropped, or dead-lettered when the step says so).
    pub late: bool,
}

/// Headers a dead-lettered record carries, so it can be traced and replayed.
pub fn dead_letter_headers(
    error: &RecordError,
    record: &InputRecord<'_>,
) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    headers.extend([
        (
            "millrace.error".to_string(),
            error.message.clone().into_bytes(),
        ),
        (
            "millrace.error.step".to_string(),
            error.step.clone().into_bytes(),
        ),
        (
            "millrace.source.topic".to_string(),
            record.topic.as_bytes().to_vec(),
        ),
        (
            "millrace.source.partition".to_string(),
            record.partition.to_string().into_bytes(),
        ),
        (
            "millrace.source.offset".to_string(),
            record.offset.to_string().into_bytes(),
        ),
    ]);
    headers
}
