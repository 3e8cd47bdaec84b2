//! Which top-level fields of a record's value the expressions read. When
//! `value` appears only as `value.<field>` (or `has(value.<field>)`), the
//! other fields of a JSON value are parsed, so a malformed record is still
//! caught, but not built: every built field is an allocation, and decoding
//! was the largest part of a record's cost (bench/README.md).

use cel::common::ast::{EntryExpr, Expr};
use cel::IdedExpr;

const VALUE: &str = "value";

/// The fields read, or `None` when some expression uses `value` whole (or
/// in a way this does not follow), and every field must be built.
pub fn value_fields<'a>(
    expressions: impl IntoIterator<Item = &'a IdedExpr>,
) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    for e in expressions {
        if !selects_only(e, &mut fields) {
            return None;
        }
    }
    fields.sort();
    fields.dedup();
    Some(fields)
}

/// False when `value` is used other than through a field selection.
fn selects_only(e: &IdedExpr, fields: &mut Vec<String>) -> bool {
    match &e.expr {
        Expr::Select(select) => match &select.operand.expr {
            Expr::Ident(name) if name == VALUE => {
                fields.push(select.field.clone());
                true
            }
            _ => selects_only(&select.operand, fields),
        },
        Expr::Ident(name) => name != VALUE,
        Expr::Literal(_) | Expr::Unspecified => true,
        Expr::Call(call) => {
            call.target
                .as_deref()
                .is_none_or(|t| selects_only(t, fields))
                && call.args.iter().all(|a| selects_only(a, fields))
        }
        Expr::List(list) => list.elements.iter().all(|e| selects_only(e, fields)),
        Expr::Map(map) => map.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => {
                selects_only(&m.key, fields) && selects_only(&m.value, fields)
            }
            EntryExpr::StructField(f) => selects_only(&f.value, fields),
        }),
        Expr::Comprehension(c) => {
            // A comprehension variable named `value` would shadow it.
            let shadows = [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)]
                .into_iter()
                .flatten()
                .any(|v| v == VALUE);
            !shadows
                && [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]
                .into_iter()
                .all(|e| selects_only(e, fields))
        }
        Expr::Struct(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::Program;

    fn fields(sources: &[&str]) -> Option<Vec<String>> {
        let programs: Vec<Program> = sources
            .iter()
            .map(|s| Program::compile(s).unwrap())
            .collect();
        value_fields(programs.iter().map(Program::expression))
    }

    #[test]
    fn fields_selected_from_value_are_collected() {
        assert_eq!(
            fields(&[
                "value.status == 'paid'",
                "value.amount >= 1000 && has(value.region)",
                "topic == 'orders' && key.id > 1",
            ]),
            Some(vec!["amount".into(), "region".into(), "status".into()])
        );
        assert_eq!(
            fields(&["value.customer.tier == 'gold'"]),
            Some(vec!["customer".into()]),
            "a nested path needs only its top-level field"
        );
        assert_eq!(
            fields(&["[1, 2].exists(x, x == value.n)"]),
            Some(vec!["n".into()])
        );
    }

    #[test]
    fn value_used_whole_builds_every_field() {
        for whole in [
            "value",
            "value['status'] == 'paid'",
            "size(value) > 2",
            "value.size() > 2",
            "{'v': value}",
            "[value]",
            "[1].exists(value, value > 0)",
        ] {
            assert_eq!(fields(&["value.a == 1", whole]), None, "{whole}");
        }
    }
}
