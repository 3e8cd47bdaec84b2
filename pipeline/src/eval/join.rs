//! Running `join` steps: a table topic's records kept in the join's
//! store, and records looked up in it.

use cel::Value;

use super::{Current, Evaluator};
use crate::record::{InputRecord, Processed, RecordError};
use crate::stateful::State;
use crate::value::{bind, decode};
use crate::CompiledStep;

impl Evaluator {
    /// The store of the join reading `topic` as its table, if one does.
    pub(super) fn table_store(&self, topic: &str) -> Option<usize> {
        self.pipeline.steps.iter().find_map(|s| match s {
            CompiledStep::Join { table, store, .. } if table.0 == topic => Some(*store),
            _ => None,
        })
    }

    /// A table record updates its key's entry (a tombstone deletes it); it
    /// produces nothing. Kept as bytes: decoded when looked up, so a value
    /// that does not decode fails the stream record that finds it, which
    /// `onError` can dead-letter, rather than the table.
    pub(super) fn materialize(
        store: usize,
        record: &InputRecord<'_>,
        state: &mut dyn State,
    ) -> Processed {
        // A record without a key cannot be looked up (Kafka Streams drops
        // them too).
        if let Some(key) = record.key {
            state.put(store, key, record.value);
        }
        Processed::default()
    }

    /// Binds the table's value for the current key; `false` when an inner
    /// join finds none (the record is dropped).
    pub(super) fn join(
        &self,
        step: &CompiledStep,
        current: &mut Current<'_>,
        state: &mut dyn State,
    ) -> Result<bool, RecordError> {
        let CompiledStep::Join {
            name,
            store,
            as_name,
            inner,
            value_format,
            ..
        } = step
        else {
            unreachable!("called for join steps only")
        };
        let found = current
            .key_bytes
            .as_deref()
            .and_then(|k| state.get(*store, k));
        let value = match found {
            Some(bytes) => decode(Some(&bytes), *value_format)
                .and_then(|v| Value::try_from(v.as_ref()).map_err(|e| format!("{e:?}")))
                .map_err(|m| RecordError {
                    step: name.clone(),
                    message: format!("the table's value for this key does not decode: {m}"),
                })?,
            None if *inner => return Ok(false),
            None => Value::Null,
        };
        let bound = bind(value).map_err(|m| RecordError {
            step: name.clone(),
            message: m,
        })?;
        current.vars.joined.push((as_name.clone(), bound));
        Ok(true)
    }
}
