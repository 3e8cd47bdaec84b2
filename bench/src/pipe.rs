//! The raw limit: consume → produce with no parsing, batches committed every
//! 100 ms (offsets after a flush, or inside a transaction).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn run(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    transactional: bool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true");
    if transactional {
        producer_config.set("transactional.id", format!("{group}-pipe"));
    }
    let producer: BaseProducer = producer_config.create()?;
    if transactional {
        producer.init_transactions(Duration::from_secs(30))?;
    }
    let partitions = consumer
        .fetch_metadata(Some(input), Duration::from_secs(10))?
        .topics()[0]
        .partitions()
        .len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(input, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook(&stop);
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut in_txn = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let message = message?;
            if transactional && !in_txn {
                producer.begin_transaction()?;
                in_txn = true;
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(k) = message.key() {
                record = record.key(k);
            }
            if let Some(v) = message.payload() {
                record = record.payload(v);
            }
            while let Err((_, r)) = producer.send(record) {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            positions.insert(message.partition(), message.offset() + 1);
            producer.poll(Duration::ZERO);
        }
        if positions.is_empty() {
            continue;
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &positions {
            offsets.add_partition_offset(input, *p, Offset::Offset(*o))?;
        }
        if transactional {
            producer.send_offsets_to_transaction(
                &offsets,
                &consumer.group_metadata().unwrap(),
                Duration::from_secs(30),
            )?;
            producer.commit_transaction(Duration::from_secs(30))?;
            in_txn = false;
        } else {
            producer.flush(Duration::from_secs(30))?;
            consumer.commit(&offsets, CommitMode::Sync)?;
        }
        positions.clear();
    }
    Ok(())
}

fn signal_hook(stop: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            term.recv().await;
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
