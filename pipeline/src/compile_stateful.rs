//! Compiling the stateful steps, `dedup` and `aggregate`.

use millrace_crds::durations::parse_duration;
use std::time::Duration;

use millrace_crds::{AggregateStep, Emit, Format, LatePolicy, Step};

use super::aggregation::AggregationKind;
use super::compile_repartition::Rekeyed;
use super::window::{WindowKind, Windowing};
use super::{CompiledStep, Compiler, Want};

impl Compiler<'_> {
    pub(super) fn stateful(
        &mut self,
        index: usize,
        name: String,
        step: &Step,
    ) -> Option<CompiledStep> {
        let at = |field: &str| format!("spec.pipeline.steps[{index}].{field}");
        self.topic_safe_name(index, &name, "changelog");
        let store = self.stores;
        self.stores += 1;
        if let Some(dedup) = &step.dedup {
            if dedup.repartition {
                self.partition_for(&name, Some((at("dedup.id"), &dedup.id)));
            } else if let Some(Rekeyed::ByRekeyStep(_)) = self.rekeyed {
                // Ids follow the key a rekey step set: repartition by it.
                self.partition_for(&name, None);
            }
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
        if let Some(join) = &step.join {
            return self.join(index, name, store, join);
        }
        let aggregate = step.aggregate.as_ref()?;
        let by_key = aggregate.group_by.trim() == "key";
        let by = (!by_key).then(|| (at("aggregate.groupBy"), aggregate.group_by.as_str()));
        self.partition_for(&name, by);
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
            if matches!(output.as_str(), "key" | "window" | "replaces") {
                self.error(
                    field.clone(),
                    &name,
                    format!(
                        "'{output}' is a field of every update; name the aggregation otherwise"
                    ),
                );
            }
            let set: Vec<(AggregationKind, Option<&String>)> = [
                (AggregationKind::Count, a.count.as_ref().map(|_| None)),
                (AggregationKind::Sum, a.sum.as_ref().map(Some)),
                (AggregationKind::Min, a.min.as_ref().map(Some)),
                (AggregationKind::Max, a.max.as_ref().map(Some)),
                (AggregationKind::Avg, a.avg.as_ref().map(Some)),
                (AggregationKind::Latest, a.latest.as_ref().map(Some)),
                (AggregationKind::First, a.first.as_ref().map(Some)),
            ]
            .into_iter()
            .filter_map(|(kind, source)| source.map(|s| (kind, s)))
            .collect();
            let [(kind, source)] = set[..] else {
                self.error(
                    field,
                    &name,
                    "an aggregation sets exactly one of count, sum, min, max, avg, latest or first",
                );
                continue;
            };
            let expr = match source {
                Some(source) => {
                    let what = format!("{field}.{}", kind.field());
                    let want = if kind.numeric() {
                        Want::Number
                    } else {
                        Want::Any
                    };
                    match self.expr(&what, &name, source, want) {
                        Some(e) => Some(e),
                        None => continue,
                    }
                }
                None => None,
            };
            aggregations.push((output.clone(), kind, expr));
        }
        let windowing = self.windowing(index, &name, aggregate);
        let event_time = aggregate
            .timestamp
            .as_ref()
            .and_then(|t| self.expr(&at("aggregate.timestamp"), &name, t, Want::Time));
        let late_to_dead_letter = aggregate.late_records == Some(LatePolicy::DeadLetter);
        if late_to_dead_letter && self.spec.on_error.dead_letter_topic.is_none() {
            self.error(
                at("aggregate.lateRecords"),
                &name,
                "DeadLetter needs spec.pipeline.onError.deadLetterTopic, where late records go",
            );
        }
        // The steps after it see the update instead of the record.
        self.variables.key = Format::String;
        self.variables.value = Format::Json;
        self.variables.joined.clear();
        Some(CompiledStep::Aggregate {
            name,
            store,
            aggregations,
            windowing,
            event_time,
            late_to_dead_letter,
        })
    }

    /// A stateful step's name is part of its internal topics' names.
    pub(super) fn topic_safe_name(&mut self, index: usize, name: &str, topic: &str) {
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            self.error(
                format!("spec.pipeline.steps[{index}].name"),
                name,
                format!(
                    "contains {c:?}: the step's name is part of its {topic} topic's name \
                     (<applicationId>-{name}-{topic}), so only letters, digits, '.', '_' and '-'"
                ),
            );
        }
    }

    /// The step's window, checked; `None` without one (or when wrong).
    fn windowing(
        &mut self,
        index: usize,
        name: &str,
        aggregate: &AggregateStep,
    ) -> Option<Windowing> {
        let at = |field: &str| format!("spec.pipeline.steps[{index}].aggregate.{field}");
        let Some(window) = &aggregate.window else {
            for (field, set) in [
                ("grace", aggregate.grace.is_some()),
                ("emit", aggregate.emit.is_some()),
                ("lateRecords", aggregate.late_records.is_some()),
            ] {
                if set {
                    self.error(at(field), name, format!("{field} needs a window"));
                }
            }
            return None;
        };
        let kinds = [
            window.tumbling.is_some(),
            window.hopping.is_some(),
            window.session.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.error(
                at("window"),
                name,
                "a window sets exactly one of tumbling, hopping or session",
            );
            return None;
        }
        let kind = if let Some(size) = &window.tumbling {
            let size = self.window_duration(at("window.tumbling"), name, size, MAX_WINDOW)?;
            WindowKind::Time {
                size,
                advance: size,
            }
        } else if let Some(hopping) = &window.hopping {
            let size =
                self.window_duration(at("window.hopping.size"), name, &hopping.size, MAX_WINDOW);
            let advance = self.window_duration(
                at("window.hopping.advance"),
                name,
                &hopping.advance,
                MAX_WINDOW,
            );
            let (size, advance) = (size?, advance?);
            if advance > size || size / advance > MAX_WINDOWS_PER_RECORD {
                self.error(
                    at("window.hopping.advance"),
                    name,
                    format!(
                        "must be at most size and at least size / {MAX_WINDOWS_PER_RECORD} \
                         (each record updates size / advance windows); got size {} and advance {}",
                        hopping.size, hopping.advance
                    ),
                );
                return None;
            }
            WindowKind::Time { size, advance }
        } else {
            let gap = &window.session.as_ref()?.gap;
            WindowKind::Session {
                gap: self.window_duration(at("window.session.gap"), name, gap, MAX_WINDOW)?,
            }
        };
        let grace = match &aggregate.grace {
            Some(text) => self.window_duration(at("grace"), name, text, MAX_GRACE)?,
            None => 0,
        };
        Some(Windowing {
            kind,
            grace,
            on_close: aggregate.emit == Some(Emit::WindowClose),
        })
    }

    /// A window duration in milliseconds: more than zero (but for grace,
    /// which may be zero) and at most `max`.
    fn window_duration(
        &mut self,
        field: String,
        name: &str,
        text: &str,
        max: Duration,
    ) -> Option<i64> {
        let zero_ok = field.ends_with(".grace");
        match parse_duration(text) {
            Some(d) if d <= max && (zero_ok || !d.is_zero()) => i64::try_from(d.as_millis()).ok(),
            _ => {
                self.error(
                    field,
                    name,
                    format!(
                        "'{text}' is not a duration such as 30s, 5m or 1h from {} to {}",
                        if zero_ok { "0s" } else { "1ms" },
                        humanize(max)
                    ),
                );
                None
            }
        }
    }
}

/// Longest window or session gap: a year.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest grace: 30 days of windows kept open after their end.
const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most hopping windows one record updates (`size / advance`).
const MAX_WINDOWS_PER_RECORD: i64 = 100;

fn humanize(d: Duration) -> String {
    format!("{}h", d.as_secs() / 3600)
}
