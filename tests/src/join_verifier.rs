//! The join verifier's data side: a customers table topic, updated in
//! phases (every customer gets a new version, or a tombstone), and orders
//! keyed by order id that name their customer in a field, so they are
//! repartitioned by it and joined (`Left`). Each phase's orders are
//! written only once the app has committed the phase's table records, and
//! the next phase's table records only once it has committed the orders:
//! so the value current when an order is processed is known, whatever
//! crashes happen, and every order must come out once with exactly it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka_bootstrap;
use crate::verifier::{pipeline_manifest, read_all, write_paced};

pub const CUSTOMERS: u64 = 40;
pub const ORDERS_PER_PHASE: u64 = 600;

/// Whether customer `c` is deleted (a tombstone) in `phase`.
pub fn deleted(c: u64, phase: u64) -> bool {
    (c + phase).is_multiple_of(5)
}

pub fn customer_of(order: u64) -> u64 {
    order % CUSTOMERS
}

/// The version order `order` (written in `phase`) must carry: the phase's,
/// or -1 for a deleted customer.
pub fn expected_version(order: u64, phase: u64) -> i64 {
    if deleted(customer_of(order), phase) {
        -1
    } else {
        phase as i64
    }
}

pub fn manifest(
    name: &str,
    app_id: &str,
    (orders, output, dlq): (&str, &str, &str),
    customers: &str,
) -> String {
    let steps = format!(
        "    - name: with-customer
      join: {{table: {customers}, key: value.customer, as: customer, type: Left}}
    - map:
        value: \"{{'order': value.order, 'version': customer == null ? -1 : customer.version}}\"
"
    );
    let spec = crate::standalone::SPEC;
    pipeline_manifest((name, app_id), spec, (orders, output, dlq), &steps)
}

/// Writes phase `phase` of the table: each customer's new version, or its
/// tombstone. Keyed records go where Java clients put them (murmur2), as
/// the repartitioned orders do. Odd phases are written in a transaction,
/// as another exactly-once app would write a table: a restore from the
/// table then meets commit markers, read to its last stable offset.
pub fn write_table(topic: &str, phase: u64) {
    let transactional = phase % 2 == 1;
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    if transactional {
        config.set("transactional.id", format!("{topic}-writer"));
    }
    let producer: BaseProducer = config.create().unwrap();
    let timeout = Duration::from_secs(30);
    if transactional {
        producer.init_transactions(timeout).unwrap();
        producer.begin_transaction().unwrap();
    }
    for c in 0..CUSTOMERS {
        let key = format!("c{c}");
        let value = format!(r#"{{"version":{phase}}}"#);
        let mut record = BaseRecord::<str, str>::to(topic).key(&key);
        if !deleted(c, phase) {
            record = record.payload(&value);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    match transactional {
        true => producer.commit_transaction(timeout).unwrap(),
        false => producer.flush(timeout).unwrap(),
    }
}

/// Writes the orders of `phase`.
pub fn write_orders(topic: &str, phase: u64, over: Duration) {
    let first = phase * ORDERS_PER_PHASE;
    write_paced(
        topic,
        first..first + ORDERS_PER_PHASE,
        over,
        None,
        |order| {
            let value = format!(
                r#"{{"order":{order},"customer":"c{}"}}"#,
                customer_of(order)
            );
            (format!("o{order}"), value)
        },
    );
}

/// Per order, the versions it came out with (once each, if all is well).
pub fn read_orders(output: &str, partitions: i32) -> BTreeMap<u64, Vec<i64>> {
    let mut got: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for (_, _, value, _) in read_all(output, partitions) {
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        got.entry(v["order"].as_u64().unwrap())
            .or_default()
            .push(v["version"].as_i64().unwrap());
    }
    got
}

/// Orders that did not come out exactly once with their phase's version.
pub fn wrong(phases: u64, got: &BTreeMap<u64, Vec<i64>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for phase in 0..phases {
        for order in phase * ORDERS_PER_PHASE..(phase + 1) * ORDERS_PER_PHASE {
            let want = vec![expected_version(order, phase)];
            let seen = got.get(&order).cloned().unwrap_or_default();
            if seen != want {
                wrong.push(format!(
                    "order {order} (phase {phase}): expected {want:?}, got {seen:?}"
                ));
            }
        }
    }
    wrong
}
