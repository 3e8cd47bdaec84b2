//! Compiling the stateful steps, `dedup` and `aggregate`.

use millrace_crds::durations::parse_duration;
use millrace_crds::{Format, Step};

use super::stateful::AggregationKind;
use super::{CompiledStep, Compiler, Want};

impl Compiler<'_> {
    pub(super) fn stateful(
        &mut self,
        index: usize,
        name: String,
        step: &Step,
    ) -> Option<CompiledStep> {
        let at = |field: &str| format!("spec.pipeline.steps[{index}].{field}");
        // The step's changelog topic is named after it.
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            self.error(
                at("name"),
                &name,
                format!(
                    "contains {c:?}: a stateful step's name is part of its changelog topic's \
                     name (<applicationId>-{name}-changelog), so only letters, digits, '.', '_' \
                     and '-'"
                ),
            );
        }
        let store = self.stores;
        self.stores += 1;
        if let Some(dedup) = &step.dedup {
            let id = self.expr(&at("dedup.id"), &name, &dedup.id, Want::Any);
            let within = parse_duration(&dedup.within).filter(|d| !d.is_zero());
            if within.is_none() {
                self.error(
                    at("dedup.within"),
                    &name,
                    format!(
                        "'{}' is not a duration such as 10m or 24h (more than zero)",
                        dedup.within
                    ),
                );
            }
            return Some(CompiledStep::Dedup {
                name,
                store,
                id: id?,
                within_ms: i64::try_from(within?.as_millis()).unwrap_or(i64::MAX),
            });
        }
        let aggregate = step.aggregate.as_ref()?;
        if aggregate.group_by.trim() != "key" {
            self.error(
                at("aggregate.groupBy"),
                &name,
                format!(
                    "only `key` (the record's key) can be grouped by for now, not `{}`: grouping \
                     by another value needs the records repartitioned by it, which is not built \
                     yet",
                    aggregate.group_by
                ),
            );
        } else if self.rekeyed {
            self.error(
                at("aggregate.groupBy"),
                &name,
                "an earlier map step sets the key, so records of one group may be in different \
                 partitions (and tasks); group by the key the records were written with",
            );
        }
        if aggregate.aggregations.is_empty() {
            self.error(
                at("aggregate.aggregations"),
                &name,
                "needs at least one aggregation",
            );
        }
        let mut aggregations = Vec::new();
        for (output, a) in &aggregate.aggregations {
            let field = at(&format!("aggregate.aggregations['{output}']"));
            if output == "key" {
                self.error(
                    field.clone(),
                    &name,
                    "'key' is the group's field in the output; name the aggregation otherwise",
                );
            }
            let set: Vec<(AggregationKind, Option<&String>)> = [
                (AggregationKind::Count, a.count.as_ref().map(|_| None)),
                (AggregationKind::Sum, a.sum.as_ref().map(Some)),
                (AggregationKind::Min, a.min.as_ref().map(Some)),
                (AggregationKind::Max, a.max.as_ref().map(Some)),
            ]
            .into_iter()
            .filter_map(|(kind, source)| source.map(|s| (kind, s)))
            .collect();
            let [(kind, source)] = set[..] else {
                self.error(
                    field,
                    &name,
                    "an aggregation sets exactly one of count, sum, min or max",
                );
                continue;
            };
            let expr = match source {
                Some(source) => {
                    let what = format!("{field}.{}", format!("{kind:?}").to_lowercase());
                    match self.expr(&what, &name, source, Want::Any) {
                        Some(e) => Some(e),
                        None => continue,
                    }
                }
                None => None,
            };
            aggregations.push((output.clone(), kind, expr));
        }
        // The steps after it see the update instead of the record.
        self.variables.key = Format::String;
        self.variables.value = Format::Json;
        Some(CompiledStep::Aggregate {
            name,
            store,
            aggregations,
        })
    }
}
