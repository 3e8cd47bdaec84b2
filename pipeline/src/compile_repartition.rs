//! Compiling `rekey` steps and the repartitions stateful steps need.
//!
//! A task holds one partition of the sources, so a stateful step sees all
//! records of a group only if they were written to one partition: keyed by
//! it. When a step groups by something else (`aggregate.groupBy` other than
//! the key, `dedup.repartition`, a key set by an earlier `map` or `rekey`),
//! the pipeline is split there: the steps before write each record to
//! `<applicationId>-<step>-repartition`, keyed (and so partitioned) by the
//! group, and the steps from there on run on it when it is read back, in
//! the task that partition belongs to (docs/pipelines.md, "Repartitioning").

use std::collections::BTreeSet;

use millrace_crds::Format;

use super::{CompiledStep, Compiler, Expr, Want};

/// Why records are no longer partitioned by their current key.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rekeyed {
    /// A `rekey` step (at this position in the compiled steps) set it: its
    /// repartition serves a stateful step after it.
    ByRekeyStep(usize),
    /// A `map` step set it.
    ByMap,
}

/// The `rekey` steps compiled, and those a stateful step needed.
#[derive(Default)]
pub(super) struct Rekeys {
    /// (position in the compiled steps, index in the spec).
    steps: Vec<(usize, usize)>,
    used: BTreeSet<usize>,
}

impl Compiler<'_> {
    /// A `rekey` step: provisionally a repartition; [`Self::finish_rekeys`]
    /// makes it a plain key change when no stateful step needs it.
    pub(super) fn rekey(
        &mut self,
        index: usize,
        name: String,
        source: &str,
    ) -> Option<CompiledStep> {
        let field = format!("spec.pipeline.steps[{index}].rekey");
        let key = self.expr(&field, &name, source, Want::Key)?;
        let position = self.steps.len();
        self.rekeys.steps.push((position, index));
        self.rekeyed = Some(Rekeyed::ByRekeyStep(position));
        Some(self.repartition_step(name, Some(key)))
    }

    /// Before stateful step `name`: the repartition it needs. `by` is the
    /// field and source of the expression its records must be partitioned
    /// by; `None`: the current key, which needs a repartition only if an
    /// earlier step changed it.
    pub(super) fn partition_for(&mut self, name: &str, by: Option<(String, &str)>) {
        match (by, self.rekeyed.take()) {
            (None, None) => {}
            (None, Some(Rekeyed::ByRekeyStep(position))) => {
                self.rekeys.used.insert(position);
            }
            (None, Some(Rekeyed::ByMap)) => {
                let step = self.repartition_step(name.to_string(), None);
                self.steps.push(step);
            }
            (Some((field, source)), _) => {
                if let Some(key) = self.expr(&field, name, source, Want::Key) {
                    let step = self.repartition_step(name.to_string(), Some(key));
                    self.steps.push(step);
                }
            }
        }
    }

    /// A repartition: downstream the key is the text it was partitioned by.
    fn repartition_step(&mut self, name: String, key: Option<Expr>) -> CompiledStep {
        // Only the key, value and headers cross: joined values do not.
        self.variables.key = Format::String;
        self.variables.joined.clear();
        CompiledStep::Repartition {
            name,
            key,
            topic: String::new(),
            key_format: Format::String,
            value_format: self.variables.value,
        }
    }

    /// `rekey` steps no stateful step needed only set the key; those one
    /// did name a topic, so their names must be valid in one.
    pub(super) fn finish_rekeys(&mut self) {
        let rekeys = std::mem::take(&mut self.rekeys);
        for (position, index) in rekeys.steps {
            let step = &mut self.steps[position];
            let CompiledStep::Repartition { name, key, .. } = step else {
                continue;
            };
            if rekeys.used.contains(&position) {
                let name = name.clone();
                self.topic_safe_name(index, &name, "repartition");
                continue;
            }
            let (name, key) = (std::mem::take(name), key.take().expect("a rekey has a key"));
            *step = CompiledStep::Rekey { name, key };
        }
    }
}
