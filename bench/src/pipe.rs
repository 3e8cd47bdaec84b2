//! The raw limit: consume → produce with no parsing, batches committed every
//! 100 ms (offsets after a flush, or inside a transaction). One thread per
//! core, each owning every n-th partition as Millrace's loops do, and the
//! runtime's consumer prefetch settings: what it leaves out is only what
//! Millrace adds (decoding, evaluation, routing, metrics) and what Millrace
//! does to avoid waiting (it keeps processing while a batch commits).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a pipe reads and writes.
pub struct Pipe<'a> {
    pub bootstrap: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub group: &'a str,
    pub transactional: bool,
}

pub fn run(pipe: &Pipe<'_>, threads: usize) -> anyhow::Result<()> {
    let threads = threads.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook(&stop);
    let partitions = partition_count(pipe.bootstrap, pipe.input)?;
    std::thread::scope(|scope| {
        let loops: Vec<_> = (0..threads)
            .map(|index| {
                let owned: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % threads == index)
                    .collect();
                let stop = &stop;
                scope.spawn(move || pipe_loop(pipe, index, threads, &owned, stop))
            })
            .collect();
        loops
            .into_iter()
            .try_for_each(|l| l.join().expect("a pipe thread panicked"))
    })
}

fn partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata.topics()[0].partitions().len() as i32)
}

fn pipe_loop(
    pipe: &Pipe<'_>,
    index: usize,
    loops: usize,
    owned: &[i32],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut consumer_config = ClientConfig::new();
    for (key, value) in millrace_runtime::engine::clients::consumer_tuning(loops) {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer = consumer_config
        .set("bootstrap.servers", pipe.bootstrap)
        .set("group.id", pipe.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", pipe.bootstrap)
        .set("enable.idempotence", "true");
    if pipe.transactional {
        producer_config.set("transactional.id", format!("{}-pipe-{index}", pipe.group));
    }
    let producer: BaseProducer = producer_config.create()?;
    if pipe.transactional {
        producer.init_transactions(TIMEOUT)?;
    }
    let mut tpl = TopicPartitionList::new();
    for p in owned {
        tpl.add_partition_offset(pipe.input, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut in_txn = false;
    while !stop.load(Ordering::Relaxed) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let message = message?;
            if pipe.transactional && !in_txn {
                producer.begin_transaction()?;
                in_txn = true;
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(pipe.output);
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
            offsets.add_partition_offset(pipe.input, *p, Offset::Offset(*o))?;
        }
        if pipe.transactional {
            let group = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata"))?;
            producer.send_offsets_to_transaction(&offsets, &group, TIMEOUT)?;
            producer.commit_transaction(TIMEOUT)?;
            in_txn = false;
        } else {
            producer.flush(TIMEOUT)?;
            consumer.commit(&offsets, CommitMode::Sync)?;
        }
        positions.clear();
    }
    Ok(())
}

fn signal_hook(stop: &Arc<AtomicBool>) {
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
        stop.store(true, Ordering::Relaxed);
    });
}
