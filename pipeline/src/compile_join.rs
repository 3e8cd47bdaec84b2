//! Compiling `join` steps.

use millrace_crds::JoinStep;
use millrace_crds::JoinType;

use super::check::VARIABLE_NAMES;
use super::{CompiledStep, Compiler};

impl Compiler<'_> {
    pub(super) fn join(
        &mut self,
        index: usize,
        name: String,
        store: usize,
        join: &JoinStep,
    ) -> Option<CompiledStep> {
        let at = |field: &str| format!("spec.pipeline.steps[{index}].join.{field}");
        let by = join
            .key
            .as_deref()
            .filter(|k| k.trim() != "key")
            .map(|k| (at("key"), k));
        self.partition_for(&name, by);
        let earlier = self
            .steps
            .iter()
            .any(|s| matches!(s, CompiledStep::Join { table, .. } if *table == join.table));
        if earlier {
            self.error(
                at("table"),
                &name,
                format!(
                    "'{}' is the table of an earlier join; join it once and read the variable \
                     that join sets",
                    join.table
                ),
            );
        }
        if self.spec.source.topics.contains(&join.table) {
            self.error(
                at("table"),
                &name,
                format!(
                    "'{}' is a source topic; a table is read only to look records up",
                    join.table
                ),
            );
        }
        let as_name = join.as_name.trim();
        let identifier = as_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && as_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            self.error(
                at("as"),
                &name,
                format!("'{as_name}' is not a variable name (letters, digits and '_', not first a digit)"),
            );
        } else if VARIABLE_NAMES.contains(&as_name)
            || self.variables.joined.iter().any(|(n, _)| n == as_name)
        {
            self.error(
                at("as"),
                &name,
                format!("'{as_name}' is already a variable of the steps after this one; choose another name"),
            );
        }
        self.variables
            .joined
            .push((as_name.to_string(), join.value_format));
        Some(CompiledStep::Join {
            name,
            store,
            table: join.table.clone(),
            as_name: as_name.to_string(),
            inner: join.r#type == JoinType::Inner,
            value_format: join.value_format,
        })
    }
}
