//! Arbitrary specs through validation, the replica decision and the
//! desired objects: no input panics, and every rejection names a field.
//! A fixed budget of cases per run (and no files written), so CI time is
//! bounded and a failure prints the spec that caused it.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{json, Value};

use crate::model::{validate, Defaults};
use millrace_crds::StreamApp;

/// Text a user might type: well-formed durations, huge numbers, units
/// glued together, names with dots and capitals, CEL with syntax errors.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,22}(ms|s|m|h)",
        "([0-9]{1,20}(ms|s|m|h)){2,4}",
        "[a-zA-Z0-9._-]{0,70}",
        Just("18446744073709551615s1s".to_string()),
        Just("5124095576030431h".to_string()),
        Just("value.x > ".to_string()),
        Just("value.amount >= 1000 && value.region == 'eu'".to_string()),
        Just("topic + '-' + string(partition)".to_string()),
        ".{0,40}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        Just(json!(i32::MAX)),
        Just(json!(i32::MIN)),
        Just(json!(0)),
        (0..40i32).prop_map(|n| json!(n)),
    ]
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![Just(None), s.prop_map(Some)].boxed()
}

fn step() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(|f| json!({ "filter": f })),
        (text(), text()).prop_map(|(v, k)| json!({ "map": { "value": v, "key": k } })),
        (text(), text(), maybe(text())).prop_map(|(when, to, default)| {
            json!({ "route": { "rules": [{ "when": when, "to": to }], "default": default } })
        }),
        (text(), text()).prop_map(|(when, e)| {
            json!({ "route": { "mode": "AllMatches", "rules": [{ "when": when, "topicExpression": e }] } })
        }),
    ]
}

prop_compose! {
    fn spec()(
        name in text(),
        topics in prop::collection::vec(text(), 0..3),
        steps in prop::collection::vec(step(), 0..4),
        commit in maybe(text()),
        timeout in maybe(text()),
        poll in maybe(text()),
        replicas in maybe(number()),
        min in maybe(number()),
        max in maybe(number()),
        id in maybe(text()),
        image in prop::bool::ANY,
        property in maybe((text(), text())),
    ) -> Value {
        let mut spec = json!({
            "kafka": { "bootstrapServers": "127.0.0.1:9092" },
            "commitInterval": commit,
            "transactionTimeout": timeout,
            "replicas": replicas,
            "applicationId": id,
            "autoscaling": { "minReplicas": min, "maxReplicas": max, "pollInterval": poll },
        });
        if let Some((key, value)) = property {
            spec["kafka"]["properties"] = json!({ key: value });
        }
        let source = json!({ "topics": topics });
        if image {
            spec["image"] = json!("example.com/custom:1");
            spec["source"] = source;
        } else {
            spec["pipeline"] = json!({ "source": source, "steps": steps });
        }
        json!({
            "apiVersion": "millrace.dev/v1alpha1",
            "kind": "StreamApp",
            "metadata": { "name": name, "namespace": "fuzz", "uid": "u" },
            "spec": strip_nulls(spec),
        })
    }
}

/// `null` means "unset" to the API server, which drops it.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 1500,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    })]

    #[test]
    fn no_spec_panics_and_every_rejection_names_a_field(manifest in spec()) {
        // What the API server's schema refuses never reaches the operator.
        let Ok(app) = serde_json::from_value::<StreamApp>(manifest) else {
            return Ok(());
        };
        match validate(&app, &Defaults::default()) {
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(
                        p.field.starts_with("spec") || p.field.starts_with("metadata."),
                        "no field named: {p:?}"
                    );
                    prop_assert!(!p.message.is_empty(), "no message: {p:?}");
                }
            }
            Ok(model) => {
                let replicas = crate::scale::replicas(&crate::scale::Inputs::new(
                    &model,
                    Some(model.replicas),
                    Some(12),
                    None,
                ));
                let desired = crate::build::desired(&model, replicas.running);
                prop_assert!(desired.stateful_set.metadata.name.is_some());
            }
        }
    }
}
