//! Rules about the pipeline as a whole, checked once its steps are
//! compiled: where the route is, names, and which topics may be written.

use millrace_crds::{ErrorPolicy, TopicName};

use super::{step_name, CompiledStep, Compiler};

impl Compiler<'_> {
    /// Rules the schema cannot express: the route comes last, names are
    /// unique, the dead-letter topic is not a source.
    pub(super) fn check_shape(&mut self) {
        let steps = &self.spec.steps;
        let last_route = steps.iter().rposition(|s| s.route.is_some());
        match last_route {
            None => self.error("spec.pipeline.steps".into(), "", "the pipeline has no route step, so no record would reach a topic; end it with a route"),
            Some(i) if i + 1 != steps.len() => {
                let name = step_name(i + 1, &steps[i + 1]);
                self.error(format!("spec.pipeline.steps[{}]", i + 1), &name, "steps after the last route never see a record; the route must be the last step")
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in steps.iter().enumerate() {
            let name = step_name(i, s);
            if !seen.insert(name.clone()) {
                self.error(
                    format!("spec.pipeline.steps[{i}].name"),
                    &name,
                    format!("step name '{name}' is used twice"),
                );
            }
        }
        if let Some(dlq) = &self.spec.on_error.dead_letter_topic {
            self.not_a_source("spec.pipeline.onError.deadLetterTopic".into(), "", dlq);
        }
        for (i, record) in self.spec.on_error.skip.iter().enumerate() {
            let topic = &record.topic;
            // A repartition topic's full name needs the application id:
            // its step's part is what can be checked here.
            let repartition = self.steps.iter().any(|s| {
                matches!(s, CompiledStep::Repartition { name, .. }
                    if topic.0.ends_with(&format!("-{name}-repartition")))
            });
            if !self.spec.source.topics.contains(topic) && !self.is_table(topic) && !repartition {
                self.error(
                    format!("spec.pipeline.onError.skip[{i}].topic"),
                    "",
                    format!(
                        "'{topic}' is not a topic the app reads (a source, a join table or a \
                         repartition topic); only records the app reads can be skipped"
                    ),
                );
            }
        }
        self.check_repartition_partitions();
        if self.spec.on_error.policy == ErrorPolicy::DeadLetter
            && self.spec.on_error.dead_letter_topic.is_none()
        {
            self.error(
                "spec.pipeline.onError.deadLetterTopic".into(),
                "",
                "policy DeadLetter needs a deadLetterTopic",
            );
        }
    }

    /// `repartitionPartitions` needs a repartition to apply to, and no
    /// join: a join looks records up in its table's partition N, so they
    /// must be partitioned as the table is (the sources' count).
    fn check_repartition_partitions(&mut self) {
        if self.spec.repartition_partitions.is_none() {
            return;
        }
        let field = "spec.pipeline.repartitionPartitions";
        let repartitions = self
            .steps
            .iter()
            .any(|s| matches!(s, CompiledStep::Repartition { .. }));
        if !repartitions {
            self.error(
                field.into(),
                "",
                "the pipeline has no repartition topic for it to size: only a rekey before a \
                 stateful step, aggregate.groupBy, dedup.repartition or join.key make one; \
                 remove it",
            );
        }
        let join = self.steps.iter().find_map(|s| match s {
            CompiledStep::Join { name, .. } => Some(name.clone()),
            _ => None,
        });
        if let Some(join) = join {
            self.error(
                field.into(),
                &join,
                format!(
                    "cannot be set with a join step ('{join}'): a join finds a record's match in \
                     partition N of its table, so the records must be partitioned as the table \
                     is, with the sources' partition count; remove it"
                ),
            );
        }
    }

    /// A route to a source topic of the app would read its own output
    /// again: a feedback loop (doubling under `AllMatches`).
    pub(super) fn not_a_source(&mut self, field: String, step: &str, topic: &TopicName) {
        if self.spec.source.topics.contains(topic) {
            self.error(
                field,
                step,
                format!("'{topic}' is also a source topic; routed records would be read again (a feedback loop)"),
            );
        } else if self.is_table(topic) {
            self.error(
                field,
                step,
                format!(
                    "'{topic}' is a join table of this app; records written there would change it"
                ),
            );
        }
    }

    fn is_table(&self, topic: &TopicName) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, CompiledStep::Join { table, .. } if table == topic))
    }
}
