//! Records that fail, on the real broker: `onError: Stop` halts only the
//! failing record's task, outputs the broker refuses or that go to a topic
//! that does not exist (or is not allowed) follow `onError` instead of
//! replaying forever, and partitions added to a running app's source are
//! processed.

use std::time::Duration;

use millrace_tests::runtime::{
    committed_records, header, start_logging as start, tasks, write_manifest,
};
use millrace_tests::{
    add_partitions, committed_values, ensure_topics, ensure_topics_with, kafka_bootstrap,
    produce_to, unique, wait_until,
};

fn manifest(app: &str, guarantee: &str, pipeline: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: failures}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  applicationId: {app}\n  processingGuarantee: {guarantee}\n  commitInterval: 200ms\n  pipeline:\n{pipeline}",
        kafka_bootstrap()
    );
    write_manifest(app, &yaml)
}

fn amounts(topic: &str) -> Vec<i64> {
    let mut seen: Vec<i64> = committed_values(topic)
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["amount"]
                .as_i64()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    seen
}

/// The tasks `/tasks` reports stopped.
fn stopped(port: u16) -> Vec<serde_json::Value> {
    tasks(port)
        .and_then(|t| t["stopped"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn stop_halts_only_the_failing_records_task_and_skip_lets_it_go_on() {
    let (source, output) = (unique("fail-src"), unique("fail-out"));
    ensure_topics(&[(&source, 2), (&output, 1)]);
    for (partition, value) in [
        (0, r#"{"amount": 5}"#),
        (0, r#"{"no_amount": true}"#),
        (0, r#"{"amount": 7}"#),
        (1, r#"{"amount": 1}"#),
        (1, r#"{"amount": 2}"#),
    ] {
        produce_to(&source, Some(partition), "k", value);
    }
    let app = unique("fail-app");
    let pipeline = |on_error: &str| {
        format!("    source: {{topics: [{source}]}}\n    steps:\n    - {{name: amount-check, filter: 'value.amount > 0'}}\n    - route: {{default: {output}}}\n    onError: {on_error}\n")
    };
    let stop_policy = manifest(&app, "ExactlyOnce", &pipeline("{policy: Stop}"));
    let mut worker = start(&stop_policy, 18111);
    let report = wait_until("task 0 reported stopped", Duration::from_secs(60), || {
        worker.assert_alive();
        stopped(18111).into_iter().next()
    });
    assert_eq!(report["task"], 0);
    assert_eq!(report["topic"], source.as_str());
    assert_eq!(
        (report["partition"].as_i64(), report["offset"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(report["step"], "amount-check");
    assert!(
        report["error"].as_str().unwrap().contains("amount"),
        "{report}"
    );

    // The other task goes on, now and with new input; task 0 does not.
    wait_until("task 1's records", Duration::from_secs(30), || {
        (amounts(&output) == [1, 2, 5]).then_some(())
    });
    produce_to(&source, Some(1), "k", r#"{"amount": 3}"#);
    wait_until("task 1's new record", Duration::from_secs(30), || {
        worker.assert_alive();
        (amounts(&output) == [1, 2, 3, 5]).then_some(())
    });
    worker.terminate();

    // Task 0's committed offset stayed at the record: restarted as it was,
    // it stops there again and nothing past it is output.
    let mut again = start(&stop_policy, 18112);
    wait_until("task 0 stopped again", Duration::from_secs(60), || {
        again.assert_alive();
        stopped(18112)
            .iter()
            .any(|s| s["offset"] == 1)
            .then_some(())
    });
    assert_eq!(amounts(&output), [1, 2, 3, 5]);
    again.terminate();

    // Skipping the record lets task 0 go on past it.
    let skip = format!("{{policy: Stop, skip: [{{topic: {source}, partition: 0, offset: 1}}]}}");
    let mut skipping = start(&manifest(&app, "ExactlyOnce", &pipeline(&skip)), 18113);
    wait_until(
        "task 0 past the skipped record",
        Duration::from_secs(60),
        || {
            skipping.assert_alive();
            (amounts(&output) == [1, 2, 3, 5, 7]).then_some(())
        },
    );
    assert!(stopped(18113).is_empty());
    skipping.terminate();
}

/// Record `n`'s value: `amount` n, and a pad the small topic refuses when
/// `big`.
fn padded(n: i64, big: bool) -> String {
    let pad = if big { 2000 } else { 10 };
    serde_json::json!({ "amount": n, "big": big, "pad": "x".repeat(pad) }).to_string()
}

fn broker_refusal(guarantee: &str, port: u16) {
    let (source, output, small, dlq) = (
        unique("refused-src"),
        unique("refused-out"),
        unique("refused-small"),
        unique("refused-dlq"),
    );
    ensure_topics(&[(&source, 1), (&output, 1), (&dlq, 1)]);
    // The broker takes at most 1,000 bytes a batch on this topic; the
    // producer's own limit (1 MB) lets the record through to it. Every
    // third record goes there too: refused in one batch with record 12,
    // they are not its fault and must not be dead-lettered with it.
    ensure_topics_with(&[(&small, 1)], &[("max.message.bytes", "1000")]);
    for n in 0..30 {
        produce_to(&source, Some(0), &n.to_string(), &padded(n, n == 12));
    }
    let app = unique("refused-app");
    let pipeline = format!("    source: {{topics: [{source}]}}\n    steps:\n    - route: {{rules: [{{when: 'value.big || value.amount % 3 == 0', to: {small}}}], default: {output}}}\n    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}\n");
    let mut worker = start(&manifest(&app, guarantee, &pipeline), port);
    let to_output: Vec<i64> = (0..30).filter(|n| n % 3 != 0).collect();
    let to_small: Vec<i64> = (0..30).filter(|n| n % 3 == 0 && *n != 12).collect();
    let dead = wait_until(
        &format!("{guarantee}: every output and record 12 dead-lettered"),
        Duration::from_secs(90),
        || {
            worker.assert_alive();
            let dead = committed_records(&dlq);
            let done = committed_values(&output).len() >= to_output.len()
                && committed_values(&small).len() >= to_small.len();
            (done && !dead.is_empty()).then_some(dead)
        },
    );
    produce_to(&source, Some(0), "31", &padded(31, false));
    wait_until(
        &format!("{guarantee}: the partition keeps flowing"),
        Duration::from_secs(30),
        || {
            worker.assert_alive();
            amounts(&output).contains(&31).then_some(())
        },
    );
    worker.terminate();

    let mut expected = to_output;
    expected.push(31);
    let (mut seen, mut seen_small) = (amounts(&output), amounts(&small));
    if guarantee == "AtLeastOnce" {
        // Replays may repeat records; none may be missing.
        seen.dedup();
        seen_small.dedup();
    }
    assert_eq!(
        (seen, seen_small),
        (expected, to_small),
        "{guarantee}: every other record where it goes, exactly once under exactly-once; the records refused in record 12's batch are not its fault"
    );
    let (value, headers) = &dead[0];
    assert_eq!(
        header(headers, "millrace.source.offset").as_deref(),
        Some("12")
    );
    assert_eq!(
        header(headers, "millrace.error.step").as_deref(),
        Some("produce")
    );
    let error = header(headers, "millrace.error").unwrap();
    assert!(
        error.contains(&format!("the broker refused the output to '{small}'"))
            && error.contains("MessageSizeTooLarge"),
        "{error}"
    );
    assert!(
        value.as_ref().is_some_and(|v| v.contains("\"amount\":12")),
        "the input as it came"
    );
    if guarantee == "ExactlyOnce" {
        assert_eq!(dead.len(), 1, "dead-lettered once");
    }
}

#[test]
fn an_output_the_broker_refuses_is_dead_lettered_and_the_partition_keeps_flowing() {
    broker_refusal("ExactlyOnce", 18114);
    broker_refusal("AtLeastOnce", 18115);
}

#[test]
fn a_dead_letter_copy_the_broker_refuses_too_stops_the_records_task() {
    let (source, output, small, dlq) = (
        unique("dlq-refused-src"),
        unique("dlq-refused-out"),
        unique("dlq-refused-small"),
        unique("dlq-refused-dlq"),
    );
    ensure_topics(&[(&source, 2), (&output, 1)]);
    ensure_topics_with(&[(&small, 1), (&dlq, 1)], &[("max.message.bytes", "1000")]);
    produce_to(&source, Some(0), "0", &padded(0, false));
    produce_to(&source, Some(0), "1", &padded(1, true));
    produce_to(&source, Some(0), "2", &padded(2, false));
    produce_to(&source, Some(1), "3", &padded(3, false));
    let app = unique("dlq-refused-app");
    let pipeline = format!("    source: {{topics: [{source}]}}\n    steps:\n    - route: {{rules: [{{when: 'value.big', to: {small}}}], default: {output}}}\n    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}\n");
    let port = 18118;
    let mut worker = start(&manifest(&app, "ExactlyOnce", &pipeline), port);
    let report = wait_until(
        "task 0 stopped at record 1",
        Duration::from_secs(90),
        || {
            worker.assert_alive();
            stopped(port).into_iter().next()
        },
    );
    assert_eq!(
        (report["task"].as_i64(), report["offset"].as_i64()),
        (Some(0), Some(1))
    );
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("the broker refused the output to '{small}'"))
            && error.contains(&format!(
                "its dead-letter copy was refused too: the broker refused the output to '{dlq}'"
            )),
        "{error}"
    );
    wait_until("the records around it", Duration::from_secs(30), || {
        (amounts(&output) == [0, 3]).then_some(())
    });
    worker.terminate();
    assert!(committed_values(&dlq).is_empty());
}

#[test]
fn a_computed_topic_that_does_not_exist_or_is_not_allowed_is_dead_lettered() {
    let prefix = unique("computed");
    let (source, eu, other, dlq) = (
        format!("{prefix}-src"),
        format!("{prefix}-eu"),
        unique("someone-elses"),
        format!("{prefix}-dlq"),
    );
    ensure_topics(&[(&source, 1), (&eu, 1), (&other, 1), (&dlq, 1)]);
    for (n, to) in [
        (1, eu.as_str()),
        (2, &format!("{prefix}-nope")),
        (3, other.as_str()),
        (4, eu.as_str()),
    ] {
        let value = serde_json::json!({ "amount": n, "to": to }).to_string();
        produce_to(&source, Some(0), "k", &value);
    }
    let app = unique("computed-app");
    let pipeline = format!("    source: {{topics: [{source}]}}\n    steps:\n    - {{name: pick, route: {{rules: [{{topicExpression: 'value.to'}}], allowedTopics: ['{prefix}-*']}}}}\n    onError: {{policy: DeadLetter, deadLetterTopic: {dlq}}}\n");
    let mut worker = start(&manifest(&app, "ExactlyOnce", &pipeline), 18116);
    let dead = wait_until(
        "two outputs and two dead letters",
        Duration::from_secs(60),
        || {
            worker.assert_alive();
            let dead = committed_records(&dlq);
            (amounts(&eu) == [1, 4] && dead.len() == 2).then_some(dead)
        },
    );
    worker.terminate();
    assert!(
        committed_values(&other).is_empty(),
        "nothing reached the other team's topic"
    );
    let errors: Vec<String> = dead
        .iter()
        .map(|(_, h)| header(h, "millrace.error").unwrap())
        .collect();
    assert!(
        errors[0].contains(&format!("the output topic '{prefix}-nope' does not exist")),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("not one of the route's allowedTopics"),
        "{errors:?}"
    );
    assert_eq!(
        header(&dead[0].1, "millrace.error.step").as_deref(),
        Some("produce")
    );
    assert_eq!(
        header(&dead[1].1, "millrace.error.step").as_deref(),
        Some("pick")
    );
}

#[test]
fn a_partition_added_to_a_running_apps_source_is_processed() {
    let (source, output) = (unique("grow-src"), unique("grow-out"));
    ensure_topics(&[(&source, 1), (&output, 1)]);
    produce_to(&source, Some(0), "k", r#"{"amount": 1}"#);
    let app = unique("grow-app");
    let pipeline = format!(
        "    source: {{topics: [{source}]}}\n    steps:\n    - route: {{default: {output}}}\n"
    );
    let mut worker = start(&manifest(&app, "ExactlyOnce", &pipeline), 18117);
    wait_until("the first record", Duration::from_secs(60), || {
        worker.assert_alive();
        (amounts(&output) == [1]).then_some(())
    });
    add_partitions(&source, 3);
    produce_to(&source, Some(1), "k", r#"{"amount": 2}"#);
    produce_to(&source, Some(2), "k", r#"{"amount": 3}"#);
    // The worker reads the partition count every 30 s.
    wait_until(
        "the new partitions' records",
        Duration::from_secs(90),
        || {
            worker.assert_alive();
            (amounts(&output) == [1, 2, 3]).then_some(())
        },
    );
    let reported = tasks(18117).unwrap();
    assert_eq!(
        reported["tasks"],
        serde_json::json!([0, 1, 2]),
        "{reported}"
    );
    worker.terminate();
}
