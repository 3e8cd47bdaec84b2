use super::*;
use millrace_crds::PipelineSpec;

fn pipeline(yaml: &str) -> PipelineSpec {
    serde_saphyr::from_str(yaml).expect("test pipeline parses")
}

fn errors(yaml: &str) -> Vec<String> {
    match compile(&pipeline(yaml)) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const ORDERS: &str = r#"
source: {topics: [orders]}
steps:
- name: paid-only
  filter: "value.status == 'paid' && value.items.all(i, i.qty > 0)"
- map:
    value: "{'id': value.id, 'total': value.amount * 2}"
    key: "string(value.customer)"
    headers: {region: "value.region"}
- name: by-size
  route:
    mode: FirstMatch
    rules:
    - {when: "value.total > 1000", to: orders-large}
    - {topicExpression: "'orders-' + value.region"}
    default: orders-other
onError: {policy: DeadLetter, deadLetterTopic: orders-dlq}
"#;

#[test]
fn a_valid_pipeline_compiles_with_its_outputs() {
    let compiled = compile(&pipeline(ORDERS)).unwrap();
    assert_eq!(compiled.steps.len(), 3);
    let outputs: Vec<String> = compiled
        .static_output_topics()
        .iter()
        .map(|t| t.0.clone())
        .collect();
    assert_eq!(outputs, ["orders-dlq", "orders-large", "orders-other"]);
    assert_eq!(compiled.error_policy, ErrorPolicy::DeadLetter);
}

#[test]
fn syntax_errors_name_step_field_and_position() {
    let errs = errors("source: {topics: [a]}\nsteps:\n- {name: f, filter: 'value.x >'}\n- {route: {default: b}}\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("spec.pipeline.steps[0].filter (step 'f') at 1:"),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("Syntax error"), "{}", errs[0]);
}

#[test]
fn unknown_variables_and_functions_are_reported() {
    let errs = errors("source: {topics: [a]}\nsteps:\n- filter: 'vaule.x == 1 && frobnicate(value)'\n- {route: {default: b}}\n");
    assert!(
        errs.iter().any(|e| e.contains("unknown variable 'vaule'")
            && e.contains("steps[0].filter (step 'step-0')")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("unknown function 'frobnicate'")),
        "{errs:?}"
    );
}

#[test]
fn comprehension_variables_are_in_scope_only_inside() {
    assert!(errors("source: {topics: [a]}\nsteps:\n- filter: 'value.xs.exists(x, x > 1)'\n- {route: {default: b}}\n").is_empty());
    let errs = errors("source: {topics: [a]}\nsteps:\n- filter: 'value.xs.exists(x, x > 1) && x == 2'\n- {route: {default: b}}\n");
    assert!(
        errs.iter().any(|e| e.contains("unknown variable 'x'")),
        "{errs:?}"
    );
}

#[test]
fn obvious_type_errors_are_caught() {
    let cases = [
        (
            "filter: \"topic > 5\"",
            "cannot compare a string with an int",
        ),
        (
            "filter: \"partition + 1\"",
            "a condition must be true or false",
        ),
        (
            "filter: \"'a' + 1 == 'a1'\"",
            "cannot apply '+' to a string and an int",
        ),
        (
            "filter: \"partition && true\"",
            "operands of '&&' must be true or false, not an int",
        ),
        (
            "filter: \"offset.startsWith('1')\"",
            "'startsWith' applies to a string, not an int",
        ),
        (
            "filter: \"topic.name == 'x'\"",
            "a string has no field 'name'",
        ),
        ("map: {key: 'partition + 1'}", "must give a string or bytes"),
    ];
    for (step, expected) in cases {
        let errs = errors(&format!(
            "source: {{topics: [a]}}\nsteps:\n- {step}\n- {{route: {{default: b}}}}\n"
        ));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{step}: expected '{expected}' in {errs:?}"
        );
    }
}

#[test]
fn string_source_values_are_typed() {
    let errs = errors("source: {topics: [a], valueFormat: String}\nsteps:\n- filter: 'value.status == 1'\n- {route: {default: b}}\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("a string has no field 'status'")),
        "{errs:?}"
    );
    assert!(errors("source: {topics: [a], valueFormat: String}\nsteps:\n- filter: \"value.startsWith('x')\"\n- {route: {default: b}}\n").is_empty());
}

#[test]
fn route_topic_expressions_must_give_strings() {
    let errs = errors(
        "source: {topics: [a]}\nsteps:\n- route: {rules: [{topicExpression: 'partition * 2'}]}\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("route.rules[0].topicExpression")
                && e.contains("must give a string")),
        "{errs:?}"
    );
}

#[test]
fn pipeline_shape_rules() {
    let no_route = errors("source: {topics: [a]}\nsteps:\n- filter: 'true'\n");
    assert!(
        no_route.iter().any(|e| e.contains("has no route step")),
        "{no_route:?}"
    );
    let after_route =
        errors("source: {topics: [a]}\nsteps:\n- {route: {default: b}}\n- filter: 'true'\n");
    assert!(after_route.iter().any(|e| e.starts_with("spec.pipeline.steps[1]") && e.contains("must be the last step")), "{after_route:?}");
    let twice = errors("source: {topics: [a]}\nsteps:\n- {name: s, filter: 'true'}\n- {name: s, route: {default: b}}\n");
    assert!(
        twice.iter().any(|e| e.contains("'s' is used twice")),
        "{twice:?}"
    );
    let dlq_is_source = errors("source: {topics: [a]}\nsteps:\n- {route: {default: b}}\nonError: {policy: DeadLetter, deadLetterTopic: a}\n");
    assert!(
        dlq_is_source
            .iter()
            .any(|e| e.contains("deadLetterTopic") && e.contains("also a source")),
        "{dlq_is_source:?}"
    );
    let skip_other = errors("source: {topics: [a]}\nsteps:\n- {route: {default: b}}\nonError: {skip: [{topic: b, partition: 0, offset: 3}]}\n");
    assert!(
        skip_other
            .iter()
            .any(|e| e.starts_with("spec.pipeline.onError.skip[0].topic")
                && e.contains("not a topic the app reads")),
        "{skip_other:?}"
    );
    let bad_pattern = errors("source: {topics: [a]}\nsteps:\n- {route: {rules: [{topicExpression: 'value.t'}], allowedTopics: ['ok-*', 'x/y']}}\n");
    assert!(
        bad_pattern.iter().any(
            |e| e.starts_with("spec.pipeline.steps[0].route.allowedTopics[1]")
                && e.contains("contains '/'")
        ),
        "{bad_pattern:?}"
    );
    let two_kinds =
        errors("source: {topics: [a]}\nsteps:\n- {filter: 'true', route: {default: b}}\n");
    assert!(
        two_kinds
            .iter()
            .any(|e| e
                .contains("exactly one of filter, map, rekey, route, dedup, aggregate or join")),
        "{two_kinds:?}"
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errs =
        errors("source: {topics: [a]}\nsteps:\n- filter: 'nope1 == 1'\n- filter: 'nope2 == 1'\n");
    assert!(
        errs.len() >= 3,
        "two unknown variables and no route: {errs:?}"
    );
}

/// The checker's function list must be what the CEL interpreter runs.
#[test]
fn every_supported_function_evaluates() {
    let samples = [
        ("size", "size('abc') == 3"),
        ("int", "int('7') == 7"),
        ("uint", "uint(7) == 7u"),
        ("double", "double(1) == 1.0"),
        ("string", "string(1) == '1'"),
        ("bytes", "bytes('a') == b'a'"),
        ("bool", "bool('true')"),
        ("dyn", "dyn(1) == 1"),
        ("type", "type(1) == int"),
        ("contains", "'abc'.contains('b')"),
        ("startsWith", "'abc'.startsWith('a')"),
        ("endsWith", "'abc'.endsWith('c')"),
        ("matches", "'abc'.matches('^a.c$')"),
    ];
    assert_eq!(samples.len(), SUPPORTED_FUNCTIONS.len());
    let env = std::sync::Arc::new(cel::Env::stdlib());
    for (name, source) in samples {
        assert!(SUPPORTED_FUNCTIONS.iter().any(|(f, _)| *f == name));
        let program = env.compile(source).unwrap();
        let context = cel::Context::with_env(env.clone());
        assert_eq!(
            program.execute(&context),
            Ok(cel::Value::Bool(true)),
            "{source}"
        );
    }
}

#[test]
fn a_route_to_a_source_topic_is_a_feedback_loop_and_refused() {
    let errs = errors("source: {topics: [orders, refunds]}\nsteps:\n- route:\n    rules: [{when: 'value.x', to: refunds}]\n    default: orders\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("spec.pipeline.steps[0].route.rules[0].to (step 'step-0')")
            && errs[0].contains("'refunds' is also a source topic"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].starts_with("spec.pipeline.steps[0].route.default (step 'step-0')")
            && errs[1].contains("'orders' is also a source topic"),
        "{}",
        errs[1]
    );
}
