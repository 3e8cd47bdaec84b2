//! The query API (docs/queries.md) against a standalone worker
//! (`millrace-runtime run` serves it as a pod does): orders of 20
//! customers, half written by a Java-style producer (murmur2) and half by
//! a librdkafka producer with its default partitioner (CRC32), counted per
//! customer (by the record key) and per region and hour window (through a
//! repartition topic). Once the app has read everything, every customer's
//! entry is found with its exact count and sum, in whichever task its
//! producer put it; every region's windows equal the last update the
//! output topic carries for them; scans page through every task; and bad
//! requests are refused with the field named.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

use millrace_tests::runtime::http_get;
use millrace_tests::standalone::{App, SPEC};
use millrace_tests::verifier::{pipeline_manifest, read_all, topic_drained, Topics};
use millrace_tests::{kafka_bootstrap, unique, wait_until};

const PARTITIONS: i32 = 4;
const CUSTOMERS: u64 = 20;
const ORDERS_EACH: u64 = 30;
const REGIONS: [&str; 3] = ["eu", "us", "apac"];

fn region_of(customer: u64) -> &'static str {
    REGIONS[(customer % 3) as usize]
}

/// Writes every customer's orders: even customers through murmur2 (as
/// Java clients partition), odd ones through librdkafka's default.
fn write_orders(topic: &str) {
    let producer = |partitioner: &str| -> BaseProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("partitioner", partitioner)
            .create()
            .unwrap()
    };
    let (java, librdkafka) = (producer("murmur2_random"), producer("consistent_random"));
    for order in 0..CUSTOMERS * ORDERS_EACH {
        let customer = order % CUSTOMERS;
        let key = format!("c{customer}");
        let value = format!(
            r#"{{"amount": {order}, "region": "{}"}}"#,
            region_of(customer)
        );
        let record = BaseRecord::<str, str>::to(topic).key(&key).payload(&value);
        let sent = match customer % 2 {
            0 => java.send(record),
            _ => librdkafka.send(record),
        };
        sent.map_err(|(e, _)| e).unwrap();
    }
    for p in [java, librdkafka] {
        p.flush(Duration::from_secs(30)).unwrap();
    }
}

fn get(app: &App, path: &str) -> (u16, Value) {
    let (status, _, body) = http_get("127.0.0.1", app.query_port(), path)
        .unwrap_or_else(|| panic!("no answer to {path}"));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

#[test]
fn any_key_is_found_with_its_committed_value_whichever_partitioner_wrote_it() {
    let prefix = unique("query");
    let topics = Topics::new(&prefix, PARTITIONS);
    topics.create();
    let app_id = format!("{prefix}-app");
    let steps = "    - name: per-customer
      aggregate:
        groupBy: key
        aggregations: {n: {count: {}}, total: {sum: value.amount}, region: {latest: value.region}}
    - name: per-region
      aggregate:
        groupBy: value.region
        window: {tumbling: 1h}
        grace: 2h
        aggregations: {orders: {count: {}}}
";
    let spec = format!("{SPEC}  query: {{scan: true}}\n");
    let text = pipeline_manifest(("queries", &app_id), &spec, topics.sinks(), steps);
    let app = App::new(&app_id, &text, 18135);
    let mut worker = app.start();
    write_orders(&topics.input);
    let repartition = format!("{app_id}-per-region-repartition");
    wait_until(
        "the app to read everything",
        Duration::from_secs(180),
        || {
            worker.assert_alive();
            (topic_drained(&app_id, &topics.input, PARTITIONS)
                && topic_drained(&app_id, &repartition, PARTITIONS))
            .then_some(())
        },
    );

    // The worker's stores, and how their keys spread.
    let (status, stores) = get(&app, "/v1/stores");
    assert_eq!(status, 200, "{stores}");
    assert_eq!(stores["tasks"], PARTITIONS);
    assert_eq!(
        stores["stores"][0],
        json!({"step": "per-customer", "kind": "Aggregate", "spread": "Source"})
    );
    assert_eq!(stores["stores"][1]["spread"], "Repartition");

    // Every customer, exact, wherever its producer put it. Committed
    // state, read after the input was: the store is up to date once the
    // commit that covered the last record is applied (just after it).
    let mut by_crc32 = 0;
    for customer in 0..CUSTOMERS {
        let path = format!("/v1/stores/per-customer/keys/c{customer}");
        let (status, body) = wait_until(
            &format!("c{customer}'s last count"),
            Duration::from_secs(10),
            || {
                let (status, body) = get(&app, &path);
                (status == 200 && body["value"]["n"] == ORDERS_EACH).then_some((status, body))
            },
        );
        let total: u64 = (0..ORDERS_EACH).map(|i| i * CUSTOMERS + customer).sum();
        assert_eq!(status, 200);
        assert_eq!(
            body["value"],
            json!({"key": format!("c{customer}"), "n": ORDERS_EACH, "total": total, "region": region_of(customer)}),
            "{body}"
        );
        assert_eq!(body["copy"]["role"], "active", "{body}");
        assert!(body["changelogOffset"].as_i64().unwrap() > 0, "{body}");
        let by = body["partitioner"].as_str().unwrap();
        if customer % 2 == 0 {
            assert_eq!(by, "murmur2", "a Java-partitioned key: {body}");
        } else if by == "crc32" {
            by_crc32 += 1;
        }
    }
    assert!(
        by_crc32 > 0,
        "no librdkafka-partitioned key was found only through the fallback: the test shows nothing"
    );

    // Each region's window holds what its last update in the output topic
    // said.
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for (_, _, value, _) in read_all(&topics.outputs[0], PARTITIONS) {
        let v: Value = serde_json::from_slice(&value).unwrap();
        last.insert(v["key"].as_str().unwrap().to_string(), v);
    }
    for region in REGIONS {
        let (status, body) = get(&app, &format!("/v1/stores/per-region/keys/{region}"));
        assert_eq!(status, 200, "{body}");
        let windows = body["windows"].as_array().unwrap();
        assert_eq!(windows.last(), last.get(region), "{region}: {body}");
        let start = windows[0]["window"]["startMs"].as_i64().unwrap();
        let (status, none) = get(
            &app,
            &format!("/v1/stores/per-region/keys/{region}?from={}", start + 1),
        );
        assert_eq!(
            (status, &none["found"]),
            (404, &json!(false)),
            "windows starting in the range only: {none}"
        );
    }

    // Scans page through every task: each customer once.
    let mut scanned = Vec::new();
    for task in 0..PARTITIONS {
        let mut after = String::new();
        loop {
            let (status, page) = get(
                &app,
                &format!("/v1/stores/per-customer/tasks/{task}/entries?limit=3{after}"),
            );
            assert_eq!(status, 200, "{page}");
            scanned.extend(
                page["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["key"].clone()),
            );
            match page["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
    }
    scanned.sort_by_key(|k| k.to_string());
    assert_eq!(scanned.len() as u64, CUSTOMERS, "{scanned:?}");
    scanned.dedup();
    assert_eq!(scanned.len() as u64, CUSTOMERS, "each once");

    // Refusals name what is wrong.
    let (status, missing) = get(&app, "/v1/stores/per-customer/keys/nobody");
    assert_eq!(
        (status, &missing["found"]),
        (404, &json!(false)),
        "{missing}"
    );
    let (status, unknown) = get(&app, "/v1/stores/nope/keys/c1");
    assert_eq!(status, 404);
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("no stateful step 'nope'"),
        "{unknown}"
    );
    let (status, bad) = get(&app, "/v1/stores/per-customer/tasks/9/entries");
    assert_eq!(status, 404, "{bad}");
    let (status, bad) = get(&app, "/v1/stores/per-customer/tasks/0/entries?limit=5000");
    assert!(
        status == 400 && bad["error"].as_str().unwrap().starts_with("limit"),
        "{bad}"
    );
    worker.terminate();

    // A query port already taken ends the worker with the port named,
    // rather than leaving a worker nobody can query.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", app.query_port())).unwrap();
    let mut worker = app.start();
    let status = wait_until("the worker to stop", Duration::from_secs(60), || {
        worker.exit_status()
    });
    let log = std::fs::read_to_string(millrace_tests::runtime::log_path(app.port)).unwrap();
    assert!(
        status.code() == Some(2) && log.contains("binding the query port"),
        "{status}: {log}"
    );
}
