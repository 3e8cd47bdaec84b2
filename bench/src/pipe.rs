//! The raw limit: consume → produce with no parsing, fanned out to the four
//! topics Millrace writes (the record at offset o goes to topic o % 4), one
//! thread per core, each owning every n-th partition as Millrace's loops do,
//! with the runtime's consumer prefetch and producer batching settings. It
//! never waits where it need not:
//! - at-least-once: offsets are committed asynchronously once every output
//!   of a 100 ms batch is acknowledged; nothing is flushed;
//! - exactly-once: two transactional producers per thread; while one
//!   commits its batch (on a thread of its own) the loop goes on into the
//!   other, and waits only when that one is still committing too.
//!
//! What it leaves out is only what Millrace adds: decoding, evaluation,
//! routing decisions, dead letters, metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millrace_crds::ProcessingGuarantee;
use millrace_runtime::engine::clients;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);
const BATCH: Duration = Duration::from_millis(100);

/// The topics a pipe fans out to, in the order `offset % 4` picks them
/// (the harness counts them the same way: `fan_out_counts`).
pub const OUTPUTS: [&str; 4] = ["large", "eu", "other", "dlq"];

/// Where a pipe reads and writes.
pub struct Pipe<'a> {
    pub bootstrap: &'a str,
    pub input: &'a str,
    /// Outputs are `<prefix>-<OUTPUTS[i]>`.
    pub prefix: &'a str,
    pub group: &'a str,
    pub transactional: bool,
}

/// How many records each output gets from input partitions of these end
/// offsets (all read from offset 0): the records at offsets o ≡ i (mod 4).
pub fn fan_out_counts(ends: &[i64]) -> [u64; 4] {
    let mut counts = [0; 4];
    for end in ends {
        for (i, count) in counts.iter_mut().enumerate() {
            *count += ((*end - i as i64 + 3).max(0) / 4) as u64;
        }
    }
    counts
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

/// Acknowledgements per batch (the delivery opaque is the batch number);
/// a failed delivery ends the pipe: a ceiling that loses records is none.
#[derive(Default)]
struct Acks {
    acked: Mutex<HashMap<usize, u64>>,
    failed: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        match result {
            Ok(_) => *self.acked.lock().unwrap().entry(batch).or_default() += 1,
            Err((e, _)) => *self.failed.lock().unwrap() = Some(e.to_string()),
        }
    }
}

type Sender = BaseProducer<Acks>;

fn producer(pipe: &Pipe<'_>, transactional_id: Option<String>) -> anyhow::Result<Sender> {
    let guarantee = if pipe.transactional {
        ProcessingGuarantee::ExactlyOnce
    } else {
        ProcessingGuarantee::AtLeastOnce
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", pipe.bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", clients::linger_ms(guarantee));
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    let producer: Sender = config.create_with_context(Acks::default())?;
    if pipe.transactional {
        producer.init_transactions(TIMEOUT)?;
    }
    Ok(producer)
}

/// A batch's input positions and how many outputs it sent.
struct Batch {
    number: usize,
    sent: u64,
    positions: BTreeMap<i32, i64>,
}

impl Batch {
    fn offsets(&self, input: &str) -> anyhow::Result<TopicPartitionList> {
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &self.positions {
            offsets.add_partition_offset(input, *p, Offset::Offset(*o))?;
        }
        Ok(offsets)
    }
}

fn pipe_loop(
    pipe: &Pipe<'_>,
    index: usize,
    loops: usize,
    owned: &[i32],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut consumer_config = ClientConfig::new();
    for (key, value) in clients::consumer_tuning(loops) {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer = consumer_config
        .set("bootstrap.servers", pipe.bootstrap)
        .set("group.id", pipe.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in owned {
        tpl.add_partition_offset(pipe.input, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let outputs: Vec<String> = OUTPUTS
        .iter()
        .map(|o| format!("{}-{o}", pipe.prefix))
        .collect();
    if pipe.transactional {
        transactional_loop(pipe, index, &consumer, &outputs, stop)
    } else {
        acknowledged_loop(pipe, &consumer, &outputs, stop)
    }
}

/// Reads for one batch interval, sending every record to `producer` under
/// batch number `batch.number`.
fn fill_batch(
    consumer: &BaseConsumer,
    producer: &Sender,
    outputs: &[String],
    batch: &mut Batch,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + BATCH;
    while Instant::now() < deadline {
        producer.poll(Duration::ZERO);
        let Some(message) = consumer.poll(Duration::from_millis(10)) else {
            continue;
        };
        let message = message?;
        let topic = &outputs[(message.offset() % 4) as usize];
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, batch.number);
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        if let Some(v) = message.payload() {
            record = record.payload(v);
        }
        // Only a full queue is waited out; anything else ends the pipe.
        while let Err((e, r)) = producer.send(record) {
            anyhow::ensure!(
                e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                "sending to {topic}: {e}"
            );
            record = r;
            producer.poll(Duration::from_millis(1));
        }
        batch.sent += 1;
        batch
            .positions
            .insert(message.partition(), message.offset() + 1);
    }
    if let Some(e) = producer.context().failed.lock().unwrap().take() {
        anyhow::bail!("a delivery failed: {e}");
    }
    Ok(())
}

/// At-least-once: a batch's offsets are committed (asynchronously) once all
/// its outputs are acknowledged, oldest batch first; the loop never waits.
fn acknowledged_loop(
    pipe: &Pipe<'_>,
    consumer: &BaseConsumer,
    outputs: &[String],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let producer = producer(pipe, None)?;
    let mut waiting: VecDeque<Batch> = VecDeque::new();
    let mut number = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Batch {
            number,
            sent: 0,
            positions: BTreeMap::new(),
        };
        number += 1;
        fill_batch(consumer, &producer, outputs, &mut batch)?;
        if !batch.positions.is_empty() {
            waiting.push_back(batch);
        }
        while let Some(oldest) = waiting.front() {
            let acked = producer
                .context()
                .acked
                .lock()
                .unwrap()
                .get(&oldest.number)
                .copied();
            if acked.unwrap_or(0) < oldest.sent {
                break;
            }
            consumer.commit(&oldest.offsets(pipe.input)?, CommitMode::Async)?;
            producer
                .context()
                .acked
                .lock()
                .unwrap()
                .remove(&oldest.number);
            waiting.pop_front();
        }
    }
    Ok(())
}

/// A batch handed to the commit thread with the producer that holds it.
struct Closing {
    producer: usize,
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
}

/// Exactly-once with overlapped transactions: batches alternate between
/// two producers; a closed batch commits on the commit thread (in order, so
/// committed offsets only grow) while the loop fills the next one.
fn transactional_loop(
    pipe: &Pipe<'_>,
    index: usize,
    consumer: &BaseConsumer,
    outputs: &[String],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let producers: [Arc<Sender>; 2] = [
        Arc::new(producer(
            pipe,
            Some(format!("{}-pipe-{index}-a", pipe.group)),
        )?),
        Arc::new(producer(
            pipe,
            Some(format!("{}-pipe-{index}-b", pipe.group)),
        )?),
    ];
    let (to_commit, closing) = mpsc::channel::<Closing>();
    let (done_tx, done) = mpsc::channel::<anyhow::Result<usize>>();
    let committer = {
        let producers = producers.clone();
        std::thread::spawn(move || {
            for c in closing {
                let producer = &producers[c.producer];
                let result = producer
                    .send_offsets_to_transaction(&c.offsets, &c.group, TIMEOUT)
                    .and_then(|()| producer.commit_transaction(TIMEOUT))
                    .map(|()| c.producer)
                    .map_err(anyhow::Error::from);
                // After a failed commit no later batch may commit: its
                // offsets would pass the failed batch's records.
                let failed = result.is_err();
                if done_tx.send(result).is_err() || failed {
                    return;
                }
            }
        })
    };
    let mut committing = [false, false];
    let mut current = 0;
    let mut number = 0;
    let result: anyhow::Result<()> = (|| {
        while !stop.load(Ordering::Relaxed) {
            // The next producer may still be committing its last batch.
            while committing[current] {
                committing[done.recv()??] = false;
            }
            while let Ok(finished) = done.try_recv() {
                committing[finished?] = false;
            }
            let producer = &producers[current];
            producer.begin_transaction()?;
            let mut batch = Batch {
                number,
                sent: 0,
                positions: BTreeMap::new(),
            };
            number += 1;
            fill_batch(consumer, producer, outputs, &mut batch)?;
            if batch.positions.is_empty() {
                producer.abort_transaction(TIMEOUT)?;
                continue;
            }
            let group = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata"))?;
            committing[current] = true;
            to_commit.send(Closing {
                producer: current,
                offsets: batch.offsets(pipe.input)?,
                group,
            })?;
            current = 1 - current;
        }
        Ok(())
    })();
    drop(to_commit);
    let _ = committer.join();
    // The last batches' commits finish after the loop stops.
    result?;
    done.try_iter()
        .try_for_each(|finished| finished.map(|_| ()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_counts_every_record_once() {
        assert_eq!(fan_out_counts(&[0]), [0, 0, 0, 0]);
        assert_eq!(fan_out_counts(&[1]), [1, 0, 0, 0]);
        assert_eq!(fan_out_counts(&[5, 4]), [3, 2, 2, 2]);
        let ends = [1000, 1001, 7, 3];
        assert_eq!(fan_out_counts(&ends).iter().sum::<u64>(), 2011);
    }
}
