//! One team's mistake must not hurt another team or delete data (issue
//! #16), on the local API server with the chart's operator: two apps
//! claiming one application id, a change the API server refuses, and
//! `deletionPolicy: Delete` next to user topics that share the app's
//! prefix, or with Kafka out of reach.

use std::time::Duration;

use millrace_tests::workers::{apply_yaml, get};
use millrace_tests::{
    committed_values, ensure_topics, install_chart, kafka_bootstrap, kubectl, produce_to, unique,
    wait_until, TestNamespace,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(90);

fn condition(ns: &str, app: &str, type_: &str, field: &str) -> String {
    get(
        ns,
        &format!("streamapp/{app}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    )
}

/// A one-step app: `orders` routed to `orders-other`, with `extra` spec
/// lines (indented two spaces).
fn app(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '127.0.0.1:9092'}}\n{extra}  pipeline: {{source: {{topics: [orders]}}, steps: [{{route: {{default: orders-other}}}}]}}\n"
    )
}

fn topics() {
    ensure_topics(&[("orders", 4), ("orders-other", 1)]);
}

#[test]
fn a_second_app_claiming_an_application_id_is_degraded_naming_the_first() {
    install_chart(&[]);
    topics();
    let (first_ns, second_ns) = (
        TestNamespace::create("claim-a"),
        TestNamespace::create("claim-b"),
    );
    let (first_ns, second_ns) = (first_ns.0.as_str(), second_ns.0.as_str());
    let id = unique("shared-id");
    let extra = format!("  applicationId: {id}\n  replicas: 0\n");
    apply_yaml(first_ns, "holder", &app(first_ns, "holder", &extra));
    wait_until("the first app reconciled", TIMEOUT, || {
        (get(first_ns, "streamapp/holder", "{.status.tasks}") == "4").then_some(())
    });
    // The holder's committed offsets, which no other app may touch.
    commit_offset(&id, 7);

    let degraded = |ns: &str, name: &str| {
        wait_until(&format!("{name} Degraded"), TIMEOUT, || {
            (condition(ns, name, "Degraded", "reason") == "ApplicationIdInUse")
                .then(|| condition(ns, name, "Degraded", "message"))
        })
    };
    let doomed = format!("  applicationId: {id}\n  replicas: 0\n  deletionPolicy: Delete\n");
    apply_yaml(second_ns, "copy", &app(second_ns, "copy", &doomed));
    let message = degraded(second_ns, "copy");
    assert!(
        message.contains(&format!("held by StreamApp {first_ns}/holder")),
        "{message}"
    );
    assert!(
        get(second_ns, "statefulsets", "{.items[*].metadata.name}").is_empty(),
        "the second app gets no workers"
    );
    assert_eq!(
        condition(first_ns, "holder", "Degraded", "status"),
        "False",
        "the first app is not disturbed"
    );

    // Deleting the app that never held the id deletes none of its data.
    kubectl(&[
        "-n",
        second_ns,
        "delete",
        "streamapp",
        "copy",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    assert_eq!(
        committed_offset(&id),
        Offset::Offset(7),
        "the holder's offsets stay"
    );

    // Once the holder is gone the id is free, and a waiting app runs.
    apply_yaml(second_ns, "late", &app(second_ns, "late", &extra));
    degraded(second_ns, "late");
    kubectl(&[
        "-n",
        first_ns,
        "delete",
        "streamapp",
        "holder",
        "--wait=true",
    ])
    .unwrap();
    wait_until("the waiting app takes the id over", TIMEOUT, || {
        (condition(second_ns, "late", "Degraded", "status") == "False").then_some(())
    });
}

#[test]
fn a_change_the_api_server_refuses_is_degraded_and_leaves_the_workers_config_alone() {
    install_chart(&[]);
    topics();
    let ns = TestNamespace::create("refused");
    let ns = ns.0.as_str();
    apply_yaml(ns, "steady", &app(ns, "steady", "  replicas: 0\n"));
    wait_until("the StatefulSet", TIMEOUT, || {
        (get(ns, "statefulset/steady", "{.metadata.name}") == "steady").then_some(())
    });
    let config_version = || get(ns, "configmap/steady-config", "{.metadata.resourceVersion}");
    let before = config_version();

    // Adding state changes the StatefulSet's volume claims, which the API
    // server does not allow on a StatefulSet that exists; with it a new
    // commit interval, which would rewrite the workers' configuration.
    let changed = "  replicas: 0\n  commitInterval: 250ms\n  state: {size: 1Gi}\n";
    apply_yaml(ns, "steady", &app(ns, "steady", changed));
    let message = wait_until("Degraded ApplyRejected", TIMEOUT, || {
        (condition(ns, "steady", "Degraded", "reason") == "ApplyRejected")
            .then(|| condition(ns, "steady", "Degraded", "message"))
    });
    assert!(
        message.contains("the API server refused StatefulSet steady"),
        "{message}"
    );
    assert_eq!(
        config_version(),
        before,
        "the configuration is not rewritten"
    );
    let events = get(ns, "events", "{range .items[*]}{.reason} {end}");
    assert!(
        events.contains("ApplyRejected"),
        "an Event says so: {events}"
    );
}

#[test]
fn a_task_stopped_at_a_record_degrades_the_app_naming_it_and_the_other_tasks_flow() {
    install_chart(&[]);
    let (source, output) = (unique("stop-src"), unique("stop-out"));
    ensure_topics(&[(&source, 2), (&output, 1)]);
    produce_to(&source, Some(0), "k", r#"{"no_amount": true}"#);
    produce_to(&source, Some(1), "k", r#"{"amount": 2}"#);
    let ns = TestNamespace::create("stopped");
    let ns = ns.0.as_str();
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: halting, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '127.0.0.1:9092'}}\n  replicas: 1\n  pipeline:\n    source: {{topics: [{source}]}}\n    steps:\n    - {{name: amount-check, filter: 'value.amount > 0'}}\n    - route: {{default: {output}}}\n    onError: {{policy: Stop}}\n"
    );
    apply_yaml(ns, "halting", &yaml);
    let message = wait_until("Degraded TaskStopped", TIMEOUT, || {
        (condition(ns, "halting", "Degraded", "reason") == "TaskStopped")
            .then(|| condition(ns, "halting", "Degraded", "message"))
    });
    assert!(
        message.contains(&format!(
            "task 0 stopped at record {source}/0@0 in step 'amount-check'"
        )),
        "{message}"
    );
    wait_until("task 1's record", TIMEOUT, || {
        (committed_values(&output) == [r#"{"amount": 2}"#]).then_some(())
    });
    assert_eq!(
        get(ns, "streamapp/halting", "{.status.stoppedTasks[0].offset}"),
        "0"
    );
    let events = get(ns, "events", "{range .items[*]}{.reason} {end}");
    assert!(events.contains("TaskStopped"), "an Event says so: {events}");
}

#[test]
fn partitions_added_to_a_running_apps_source_reach_status_placement_and_workers() {
    install_chart(&[]);
    let (source, output) = (unique("grow-src"), unique("grow-out"));
    ensure_topics(&[(&source, 1), (&output, 1)]);
    let ns = TestNamespace::create("grow");
    let ns = ns.0.as_str();
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: growing, namespace: {ns}}}\nspec:\n  kafka: {{bootstrapServers: '127.0.0.1:9092'}}\n  replicas: 1\n  pipeline: {{source: {{topics: [{source}]}}, steps: [{{route: {{default: {output}}}}}]}}\n"
    );
    apply_yaml(ns, "growing", &yaml);
    wait_until("one task", TIMEOUT, || {
        (get(ns, "streamapp/growing", "{.status.tasks}") == "1").then_some(())
    });
    produce_to(&source, Some(0), "k", r#"{"n": 0}"#);
    wait_until("the first record", TIMEOUT, || {
        (committed_values(&output).len() == 1).then_some(())
    });
    millrace_tests::add_partitions(&source, 2);
    produce_to(&source, Some(1), "k", r#"{"n": 1}"#);
    // The reconcile reads the partition count every minute, the workers
    // every 30 s.
    wait_until("two tasks", Duration::from_secs(150), || {
        (get(ns, "streamapp/growing", "{.status.tasks}") == "2").then_some(())
    });
    wait_until(
        "the new partition's record",
        Duration::from_secs(150),
        || (committed_values(&output).len() == 2).then_some(()),
    );
    // The running worker took the new task: no other worker, no restart.
    assert_eq!(
        millrace_tests::workers::tasks_per_worker(ns, "growing"),
        [("growing-0".to_string(), 2)].into()
    );
    assert_eq!(
        get(
            ns,
            "pod/growing-0",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
}

fn commit_offset(group: &str, offset: i64) {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("orders", 0, Offset::Offset(offset))
        .unwrap();
    group_consumer(group)
        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
}

fn committed_offset(group: &str) -> Offset {
    millrace_tests::committed_offset(group, "orders", 0)
}

fn group_consumer(group: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .unwrap()
}

fn existing_topics() -> Vec<String> {
    group_consumer("probe")
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

#[test]
fn deletion_policy_delete_removes_recorded_internal_topics_and_offsets_and_no_user_topic() {
    install_chart(&[]);
    topics();
    let ns = TestNamespace::create("delete");
    let ns = ns.0.as_str();
    let app_id = unique("orders");
    // The user's topics share the app's prefix; one internal topic was
    // recorded as created by Millrace, and a user topic recorded by a hand
    // edit of the status is not named as an internal topic.
    let user_topics = [
        format!("{app_id}-large"),
        format!("{app_id}-dlq"),
        format!("{app_id}-eu"),
    ];
    // The app's one step is unnamed: `step-0`.
    let internal = format!("{app_id}-step-0-changelog");
    let mut all: Vec<(&str, i32)> = user_topics.iter().map(|t| (t.as_str(), 1)).collect();
    all.push((internal.as_str(), 1));
    ensure_topics(&all);
    commit_offset(&app_id, 0);

    // A running worker: the finalizer stops it before deleting its offsets.
    let extra = format!("  applicationId: {app_id}\n  deletionPolicy: Delete\n  replicas: 1\n");
    apply_yaml(ns, "doomed", &app(ns, "doomed", &extra));
    wait_until("the finalizer", TIMEOUT, || {
        get(ns, "streamapp/doomed", "{.metadata.finalizers}")
            .contains("millrace.dev/kafka-data")
            .then_some(())
    });
    let recorded =
        serde_json::json!({ "status": { "internalTopics": [internal, user_topics[2]] } });
    kubectl(&[
        "-n",
        ns,
        "patch",
        "streamapp",
        "doomed",
        "--subresource=status",
        "--type=merge",
        "-p",
        &recorded.to_string(),
    ])
    .unwrap();

    kubectl(&[
        "-n",
        ns,
        "delete",
        "streamapp",
        "doomed",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    let topics = existing_topics();
    assert!(!topics.contains(&internal), "{internal} was deleted");
    for user in user_topics.iter().chain([&"orders".to_string()]) {
        assert!(topics.contains(user), "the user's {user} stays");
    }
    assert_eq!(
        committed_offset(&app_id),
        Offset::Invalid,
        "the group's offsets are gone"
    );
}

#[test]
fn a_deletion_that_cannot_reach_kafka_is_let_go_by_the_annotation_with_an_event() {
    install_chart(&[]);
    let ns = TestNamespace::create("unreachable");
    let ns = ns.0.as_str();
    let manifest = app(ns, "stranded", "  deletionPolicy: Delete\n  replicas: 0\n")
        .replace("127.0.0.1:9092", "127.0.0.1:1");
    apply_yaml(ns, "stranded", &manifest);
    wait_until("the finalizer", TIMEOUT, || {
        get(ns, "streamapp/stranded", "{.metadata.finalizers}")
            .contains("millrace.dev/kafka-data")
            .then_some(())
    });
    kubectl(&["-n", ns, "delete", "streamapp", "stranded", "--wait=false"]).unwrap();
    kubectl(&[
        "-n",
        ns,
        "annotate",
        "streamapp",
        "stranded",
        "millrace.dev/keep-kafka-data=true",
    ])
    .unwrap();
    wait_until("the app gone", TIMEOUT, || {
        kubectl(&["-n", ns, "get", "streamapp", "stranded"])
            .is_err()
            .then_some(())
    });
    let events = get(
        ns,
        "events",
        "{range .items[*]}{.reason}: {.message}\n{end}",
    );
    assert!(
        events.contains("KafkaDataLeft: left the consumer group"),
        "a Warning Event says what was left: {events}"
    );
}
