//! Zero-code pipelines: a StreamApp's `pipeline` compiled into checked CEL
//! programs, and the evaluator that runs them on records.
//!
//! One compiler serves the operator (which refuses to start workers for a
//! pipeline that does not compile, and reports why on the StreamApp) and the
//! runtime (which executes what it returns), so the two can never disagree.
//! No I/O: records in, outputs out.

pub mod aggregation;
mod check;
mod compile_join;
mod compile_repartition;
mod compile_shape;
mod compile_stateful;
mod compiled;
pub mod eval;
mod fields;
pub mod partitioner;
pub mod query;
pub mod record;
pub mod stateful;
pub mod value;
pub mod window;

use aggregation::AggregationKind;
use cel::Program;
use millrace_crds::{
    ErrorPolicy, Format, PipelineSpec, RecordCoordinates, RouteMode, Step, TopicName, TopicPattern,
};
use window::Windowing;

pub use check::{CelType, SUPPORTED_FUNCTIONS};

/// One problem, located: which step, which field, where in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// `spec.pipeline.steps[2].filter` and the like.
    pub field: String,
    /// The step's name (`step-2` when it has none); empty outside steps.
    pub step: String,
    /// 1-based line and column in the expression, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.field)?;
        if !self.step.is_empty() {
            write!(f, " (step '{}')", self.step)?;
        }
        if let Some((line, col)) = self.position {
            write!(f, " at {line}:{col}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems of a pipeline; compilation reports every one, not the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<CompileError>);

impl std::fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for CompileErrors {}

/// A compiled expression with its source, for error messages.
pub struct Expr {
    pub source: String,
    pub program: Program,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

#[derive(Debug)]
pub enum CompiledStep {
    Filter {
        name: String,
        condition: Expr,
    },
    /// A `rekey` no stateful step needed: it only sets the key.
    Rekey {
        name: String,
        key: Expr,
    },
    Map {
        name: String,
        key: Option<Expr>,
        value: Option<Expr>,
        headers: Vec<(String, Expr)>,
    },
    Route {
        name: String,
        mode: RouteMode,
        rules: Vec<CompiledRule>,
        default: Option<TopicName>,
        /// Where computed topics may go (empty: anywhere but the sources).
        allowed: Vec<TopicPattern>,
    },
    /// The end of a sub-topology: the record goes to the internal topic
    /// `topic`, keyed by `key` (the current key when `None`), and the
    /// steps after this one run on it when it is read back, in the task its
    /// key is partitioned to.
    Repartition {
        /// The step that asked for it (a `rekey`, or the `aggregate` or
        /// `dedup` needing it): the topic is named after it.
        name: String,
        key: Option<Expr>,
        /// `<applicationId>-<name>-repartition`, once the application id is
        /// known ([`CompiledPipeline::for_application`]).
        topic: String,
        /// How its records' keys and values read downstream.
        key_format: Format,
        value_format: Format,
    },
    Dedup {
        name: String,
        /// Its number among the stateful steps: which store it keeps.
        store: usize,
        id: Expr,
        within_ms: i64,
    },
    /// Looks the record up in its task's copy of the table topic `table`
    /// (by the current key: a join by anything else repartitions first).
    Join {
        name: String,
        store: usize,
        table: TopicName,
        /// The variable the match is bound to.
        as_name: String,
        /// `Inner`: no match drops the record; `Left`: the variable is null.
        inner: bool,
        value_format: Format,
    },
    Aggregate {
        name: String,
        store: usize,
        /// In output order: name, kind, and the expression (none for count).
        aggregations: Vec<(String, AggregationKind, Option<Expr>)>,
        /// Per event-time window; `None`: one running aggregate per group.
        windowing: Option<Windowing>,
        /// Event time (`timestamp:`); `None`: the record's timestamp.
        event_time: Option<Expr>,
        /// Late records go to the dead-letter topic (else dropped).
        late_to_dead_letter: bool,
    },
}

impl CompiledStep {
    /// The step's store, for a stateful step.
    pub fn store(&self) -> Option<usize> {
        match self {
            CompiledStep::Dedup { store, .. }
            | CompiledStep::Aggregate { store, .. }
            | CompiledStep::Join { store, .. } => Some(*store),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            CompiledStep::Filter { name, .. }
            | CompiledStep::Rekey { name, .. }
            | CompiledStep::Map { name, .. }
            | CompiledStep::Route { name, .. }
            | CompiledStep::Repartition { name, .. }
            | CompiledStep::Dedup { name, .. }
            | CompiledStep::Join { name, .. }
            | CompiledStep::Aggregate { name, .. } => name,
        }
    }
}

#[derive(Debug)]
pub enum Destination {
    Topic(TopicName),
    Computed(Expr),
}

#[derive(Debug)]
pub struct CompiledRule {
    pub when: Option<Expr>,
    pub to: Destination,
}

/// A pipeline ready to run.
#[derive(Debug)]
pub struct CompiledPipeline {
    pub source_topics: Vec<TopicName>,
    pub key_format: Format,
    pub value_format: Format,
    pub steps: Vec<CompiledStep>,
    pub error_policy: ErrorPolicy,
    pub dead_letter_topic: Option<TopicName>,
    /// Records passed over unprocessed (`onError.skip`).
    pub skip: Vec<RecordCoordinates>,
    /// The top-level fields of a JSON value that expressions read; `None`:
    /// all of them (see `fields`).
    pub value_fields: Option<Vec<String>>,
    /// Topics a computed route may never write to: the app's changelogs
    /// and repartition topics (once [`Self::for_application`] names them)
    /// and its join tables.
    pub reserved_topics: Vec<String>,
    /// How many tasks and repartition partitions the app has.
    pub partitioning: Partitioning,
    /// The input producers' partitioner (`source.partitioner`).
    pub partitioner: millrace_crds::Partitioner,
}

/// `spec.pipeline.repartitionPartitions` and what follows from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Partitioning {
    /// The repartition topics' set partition count, if set.
    pub repartition: Option<i32>,
}

impl Partitioning {
    /// The app's task count when its sources (and join tables) have
    /// `source_partitions` partitions: that, or the repartition topics'
    /// count when set and larger. Task N reads partition N of each topic
    /// that has one.
    pub fn task_count(&self, source_partitions: i32) -> i32 {
        self.repartition
            .map_or(source_partitions, |n| n.max(source_partitions))
    }

    /// The partition count of each repartition topic for `tasks` tasks:
    /// the set count, else one per task.
    pub fn repartition_count(&self, tasks: i32) -> i32 {
        self.repartition.unwrap_or(tasks)
    }
}

/// What an expression must produce where it is used.
#[derive(Clone, Copy)]
enum Want {
    Bool,
    String,
    StringOrBytes,
    /// An int, uint or double (sum, min, max, avg).
    Number,
    /// A key: a string, bytes or an integer.
    Key,
    /// Epoch milliseconds (an int) or a timestamp.
    Time,
    Any,
}

struct Compiler<'a> {
    spec: &'a PipelineSpec,
    errors: Vec<CompileError>,
    /// How the record's key and value read at the step being compiled: an
    /// aggregate replaces them with its update (a string key, a JSON value).
    variables: check::Variables,
    /// Stateful steps compiled so far: the next one's store number.
    stores: usize,
    /// An earlier step set the key: records are no longer partitioned by
    /// it, so grouping by it needs a repartition.
    rekeyed: Option<compile_repartition::Rekeyed>,
    rekeys: compile_repartition::Rekeys,
    /// The steps compiled so far (with the repartitions they need).
    steps: Vec<CompiledStep>,
}

/// Compiles and checks a pipeline; every error found is returned.
pub fn compile(spec: &PipelineSpec) -> Result<CompiledPipeline, CompileErrors> {
    let mut c = Compiler {
        spec,
        errors: Vec::new(),
        variables: check::Variables {
            key: spec.source.key_format,
            value: spec.source.value_format,
            joined: Vec::new(),
        },
        stores: 0,
        rekeyed: None,
        rekeys: Default::default(),
        steps: Vec::new(),
    };
    for (i, s) in spec.steps.iter().enumerate() {
        if let Some(step) = c.step(i, s) {
            c.steps.push(step);
        }
    }
    c.finish_rekeys();
    c.check_shape();
    // An expression compiled twice (a dedup id that also repartitions)
    // reports its problems once.
    let mut seen = std::collections::HashSet::new();
    c.errors.retain(|e| seen.insert(e.to_string()));
    if !c.errors.is_empty() {
        return Err(CompileErrors(c.errors));
    }
    let mut pipeline = CompiledPipeline {
        source_topics: spec.source.topics.clone(),
        key_format: spec.source.key_format,
        value_format: spec.source.value_format,
        steps: std::mem::take(&mut c.steps),
        error_policy: spec.on_error.policy,
        dead_letter_topic: spec.on_error.dead_letter_topic.clone(),
        skip: spec.on_error.skip.clone(),
        value_fields: None,
        reserved_topics: Vec::new(),
        partitioning: Partitioning {
            repartition: spec.repartition_partitions,
        },
        partitioner: spec.source.partitioner,
    };
    pipeline.value_fields = fields::value_fields(
        pipeline
            .expressions()
            .into_iter()
            .map(|e| e.program.expression()),
    );
    Ok(pipeline)
}

pub fn step_name(index: usize, step: &Step) -> String {
    step.name.clone().unwrap_or_else(|| format!("step-{index}"))
}

impl Compiler<'_> {
    fn error(&mut self, field: String, step: &str, message: impl Into<String>) {
        self.errors.push(CompileError {
            field,
            step: step.into(),
            position: None,
            message: message.into(),
        });
    }

    fn step(&mut self, index: usize, step: &Step) -> Option<CompiledStep> {
        let name = step_name(index, step);
        let at = |field: &str| format!("spec.pipeline.steps[{index}].{field}");
        let kinds = [
            step.filter.is_some(),
            step.map.is_some(),
            step.rekey.is_some(),
            step.route.is_some(),
            step.dedup.is_some(),
            step.aggregate.is_some(),
            step.join.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds != 1 {
            self.error(
                format!("spec.pipeline.steps[{index}]"),
                &name,
                "a step sets exactly one of filter, map, rekey, route, dedup, aggregate or join",
            );
            return None;
        }
        if let Some(rekey) = &step.rekey {
            return self.rekey(index, name, rekey);
        }
        if step.dedup.is_some() || step.aggregate.is_some() || step.join.is_some() {
            return self.stateful(index, name, step);
        }
        if let Some(filter) = &step.filter {
            let condition = self.expr(&at("filter"), &name, filter, Want::Bool)?;
            return Some(CompiledStep::Filter { name, condition });
        }
        if let Some(map) = &step.map {
            if map.key.is_none()
                && map.value.is_none()
                && map.headers.as_ref().is_none_or(|h| h.is_empty())
            {
                self.error(
                    at("map"),
                    &name,
                    "a map step sets at least one of value, key or headers",
                );
            }
            let key = map
                .key
                .as_ref()
                .and_then(|k| self.expr(&at("map.key"), &name, k, Want::StringOrBytes));
            if map.key.is_some() {
                self.rekeyed = Some(compile_repartition::Rekeyed::ByMap);
            }
            let value = map
                .value
                .as_ref()
                .and_then(|v| self.expr(&at("map.value"), &name, v, Want::Any));
            let mut headers = Vec::new();
            for (header, source) in map.headers.iter().flatten() {
                if let Some(e) = self.expr(
                    &at(&format!("map.headers['{header}']")),
                    &name,
                    source,
                    Want::StringOrBytes,
                ) {
                    headers.push((header.clone(), e));
                }
            }
            return Some(CompiledStep::Map {
                name,
                key,
                value,
                headers,
            });
        }
        let route = step.route.as_ref()?;
        if route.rules.is_empty() && route.default.is_none() {
            self.error(
                at("route"),
                &name,
                "a route needs at least one rule or a default topic",
            );
        }
        let mut rules = Vec::new();
        for (r, rule) in route.rules.iter().enumerate() {
            let when = rule.when.as_ref().and_then(|w| {
                self.expr(&at(&format!("route.rules[{r}].when")), &name, w, Want::Bool)
            });
            let to = match (&rule.to, &rule.topic_expression) {
                (Some(topic), None) => {
                    self.not_a_source(at(&format!("route.rules[{r}].to")), &name, topic);
                    Destination::Topic(topic.clone())
                }
                (None, Some(source)) => match self.expr(
                    &at(&format!("route.rules[{r}].topicExpression")),
                    &name,
                    source,
                    Want::String,
                ) {
                    Some(e) => Destination::Computed(e),
                    None => continue,
                },
                _ => {
                    self.error(
                        at(&format!("route.rules[{r}]")),
                        &name,
                        "a route rule sets exactly one of to or topicExpression",
                    );
                    continue;
                }
            };
            rules.push(CompiledRule { when, to });
        }
        if let Some(default) = &route.default {
            self.not_a_source(at("route.default"), &name, default);
        }
        for (i, pattern) in route.allowed_topics.iter().enumerate() {
            let name_part = pattern.0.strip_suffix('*').unwrap_or(&pattern.0);
            let problem = match TopicName::problem(name_part) {
                Some(_) if name_part.is_empty() => None,
                problem => problem,
            };
            if let Some(problem) = problem {
                self.error(
                    at(&format!("route.allowedTopics[{i}]")),
                    &name,
                    format!(
                        "'{}' {problem}; give a topic name, or a prefix ending in '*'",
                        pattern.0
                    ),
                );
            }
        }
        Some(CompiledStep::Route {
            name,
            mode: route.mode,
            rules,
            default: route.default.clone(),
            allowed: route.allowed_topics.clone(),
        })
    }

    fn expr(&mut self, field: &str, step: &str, source: &str, want: Want) -> Option<Expr> {
        let program = match check::parse(source) {
            Ok(p) => p,
            Err(e) => {
                self.errors.push(CompileError {
                    field: field.into(),
                    step: step.into(),
                    position: e.position,
                    message: e.message,
                });
                return None;
            }
        };
        let result = check::check(&program, &self.variables);
        let before = self.errors.len();
        for problem in result.problems {
            self.error(field.into(), step, problem);
        }
        let mismatch = match want {
            Want::Bool => {
                (!result.ty.can_be(CelType::Bool)).then_some("a condition must be true or false")
            }
            Want::String => (!result.ty.can_be(CelType::String))
                .then_some("a topic expression must give a string"),
            Want::StringOrBytes => (!result.ty.can_be(CelType::String)
                && !result.ty.can_be(CelType::Bytes))
            .then_some("this expression must give a string or bytes"),
            Want::Key => (![CelType::String, CelType::Bytes, CelType::Int, CelType::Uint]
                .iter()
                .any(|t| result.ty.can_be(*t)))
            .then_some("a key must be a string, bytes or an integer"),
            Want::Number => (![CelType::Int, CelType::Uint, CelType::Double]
                .iter()
                .any(|t| result.ty.can_be(*t)))
            .then_some("this aggregation needs a number"),
            Want::Time => (!result.ty.can_be(CelType::Int)
                && !result.ty.can_be(CelType::Timestamp))
            .then_some("event time must be epoch milliseconds (an int) or a timestamp"),
            Want::Any => None,
        };
        if let Some(m) = mismatch {
            self.error(
                field.into(),
                step,
                format!("{m}, but `{source}` gives {}", result.ty),
            );
        }
        (self.errors.len() == before).then(|| Expr {
            source: source.into(),
            program,
        })
    }
}

#[cfg(test)]
mod join_tests;
#[cfg(test)]
mod query_tests;
#[cfg(test)]
mod repartition_tests;
#[cfg(test)]
mod stateful_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_pipeline_tests;
