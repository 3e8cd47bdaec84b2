//! Running `rekey` and repartition steps, and resuming a record read back
//! from a repartition topic after the step that wrote it.

use std::sync::Arc;

use cel::Value;
use millrace_crds::Format;

use super::{Current, Evaluator};
use crate::record::{InputRecord, OutputRecord, RecordError};
use crate::value::bind;
use crate::CompiledStep;

impl Evaluator {
    /// Where a record of `topic` starts, and how its key and value read:
    /// after its repartition step for a repartition topic, else at the
    /// first step with the source's formats.
    pub(super) fn resume_point(&self, topic: &str) -> (usize, Format, Format) {
        let p = &self.pipeline;
        p.steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| match s {
                CompiledStep::Repartition {
                    topic: t,
                    key_format,
                    value_format,
                    ..
                } if t == topic => Some((i + 1, *key_format, *value_format)),
                _ => None,
            })
            .unwrap_or((0, p.key_format, p.value_format))
    }

    /// The record as the repartition step writes it: keyed by what the
    /// next sub-topology groups by, its value, headers and timestamp as
    /// they are.
    pub(super) fn repartitioned(
        &self,
        step: &CompiledStep,
        current: &Current<'_>,
        record: &InputRecord<'_>,
    ) -> Result<OutputRecord, RecordError> {
        let CompiledStep::Repartition {
            name, key, topic, ..
        } = step
        else {
            unreachable!("called for repartition steps only")
        };
        let key = match key {
            Some(e) => self.key_of(name, e, &current.vars, "a key to repartition by")?,
            None => current
                .key_bytes
                .as_deref()
                .ok_or_else(|| RecordError {
                    step: name.clone(),
                    message: "the record has no key to repartition by".into(),
                })?
                .to_vec(),
        };
        // Read back, the key is the next steps' string `key`.
        if std::str::from_utf8(&key).is_err() {
            return Err(RecordError {
                step: name.clone(),
                message: "the key to repartition by is not UTF-8 text; group, rekey or join by a \
                          string or an integer"
                    .into(),
            });
        }
        Ok(OutputRecord {
            topic: topic.clone(),
            key: Some(key),
            value: current.value_bytes.as_deref().map(<[u8]>::to_vec),
            headers: current.vars.headers.clone(),
            timestamp: record.timestamp,
        })
    }
}

impl Current<'_> {
    /// A `rekey` that is not a repartition: the key is now this text.
    pub(super) fn rekey(&mut self, key: Vec<u8>) -> Result<(), String> {
        let text = String::from_utf8(key.clone())
            .map_err(|_| "the new key is not UTF-8 text; rekey by a string".to_string())?;
        self.vars.key = bind(Value::String(Arc::new(text)))?;
        self.key_bytes = Some(std::borrow::Cow::Owned(key));
        self.key_format = Format::String;
        Ok(())
    }
}
