//! What a compiled pipeline tells the runtime and the operator: its
//! expressions, stores, internal and output topics, and whether it can run.

use millrace_crds::identity::{internal_topic, InternalTopic};
use millrace_crds::{ProcessingGuarantee, TopicName};

use super::{CompiledPipeline, CompiledStep, Destination, Expr};

impl CompiledPipeline {
    /// Every compiled expression, for finding the variables they use.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        for step in &self.steps {
            match step {
                CompiledStep::Filter { condition, .. } => out.push(condition),
                CompiledStep::Rekey { key, .. } => out.push(key),
                CompiledStep::Map {
                    key,
                    value,
                    headers,
                    ..
                } => {
                    out.extend(key.iter().chain(value.iter()));
                    out.extend(headers.iter().map(|(_, e)| e));
                }
                CompiledStep::Route { rules, .. } => {
                    for rule in rules {
                        out.extend(rule.when.iter());
                        if let Destination::Computed(e) = &rule.to {
                            out.push(e);
                        }
                    }
                }
                CompiledStep::Repartition { key, .. } => out.extend(key.iter()),
                CompiledStep::Dedup { id, .. } => out.push(id),
                CompiledStep::Join { .. } => {}
                CompiledStep::Aggregate {
                    aggregations,
                    event_time,
                    ..
                } => {
                    out.extend(aggregations.iter().filter_map(|(_, _, e)| e.as_ref()));
                    out.extend(event_time.iter());
                }
            }
        }
        out
    }

    /// The names of the stateful steps, in order: store `i` is step
    /// `stores()[i]`, whose changelog is `<applicationId>-<name>-changelog`.
    pub fn stores(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.store().is_some())
            .map(|s| s.name().to_string())
            .collect()
    }

    /// The pipeline of the app `application_id`: its repartition topics
    /// named.
    pub fn for_application(mut self, application_id: &str) -> Self {
        for step in &mut self.steps {
            if let CompiledStep::Repartition { name, topic, .. } = step {
                *topic = internal_topic(application_id, name, InternalTopic::Repartition);
            }
        }
        let changelogs = self
            .stores()
            .into_iter()
            .map(|s| internal_topic(application_id, &s, InternalTopic::Changelog));
        let others = self
            .repartition_topics()
            .into_iter()
            .chain(self.table_topics());
        self.reserved_topics = changelogs.chain(others.map(|t| t.0)).collect();
        self
    }

    /// The repartition topics, in step order (empty until
    /// [`Self::for_application`]).
    pub fn repartition_topics(&self) -> Vec<TopicName> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                CompiledStep::Repartition { topic, .. } if !topic.is_empty() => {
                    Some(TopicName(topic.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Each store's join table, in store order (`None`: the store has a
    /// changelog of its own). A join's store is its table's copy: the
    /// table topic is its changelog, read and never written.
    pub fn store_tables(&self) -> Vec<Option<TopicName>> {
        self.steps
            .iter()
            .filter(|s| s.store().is_some())
            .map(|s| match s {
                CompiledStep::Join { table, .. } => Some(table.clone()),
                _ => None,
            })
            .collect()
    }

    /// The join steps' table topics: read like sources, partition N in
    /// task N.
    pub fn table_topics(&self) -> Vec<TopicName> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                CompiledStep::Join { table, .. } => Some(table.clone()),
                _ => None,
            })
            .collect()
    }

    /// Why this pipeline cannot run under `guarantee`, field by field.
    pub fn unrunnable_problems(&self, guarantee: ProcessingGuarantee) -> Vec<(String, String)> {
        self.guarantee_problem(guarantee)
            .map(|p| ("spec.processingGuarantee".to_string(), p))
            .into_iter()
            .collect()
    }

    /// Why this pipeline cannot run under `guarantee`, if it cannot.
    pub fn guarantee_problem(&self, guarantee: ProcessingGuarantee) -> Option<String> {
        let stores = self.stores();
        (guarantee == ProcessingGuarantee::AtLeastOnce && !stores.is_empty()).then(|| {
            format!(
                "the stateful steps {stores:?} need processingGuarantee ExactlyOnce: \
                 at-least-once state is not supported yet"
            )
        })
    }

    /// Every topic the pipeline names as an output (routes, default,
    /// dead-letter); computed topics are known only per record.
    pub fn static_output_topics(&self) -> Vec<TopicName> {
        let mut topics: Vec<TopicName> = self.dead_letter_topic.iter().cloned().collect();
        for step in &self.steps {
            if let CompiledStep::Route { rules, default, .. } = step {
                topics.extend(rules.iter().filter_map(|r| match &r.to {
                    Destination::Topic(t) => Some(t.clone()),
                    Destination::Computed(_) => None,
                }));
                topics.extend(default.iter().cloned());
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }
}
