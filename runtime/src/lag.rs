//! Lag per owned partition against the last stable offset (the high
//! watermark a read_committed client sees), so transaction markers and
//! aborted records are not lag. Runs on its own thread with its own client:
//! offset queries must never stall the processing loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace_crds::worker_status::partition_lag;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::engine::clients;
use crate::metrics::{Metrics, Status, TaskLabel, TaskPartition};
use millrace_crds::worker_config::WorkerConfig;

const EVERY: Duration = Duration::from_secs(5);

pub fn spawn(
    config: &WorkerConfig,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut client_config = clients::consumer(config)?;
    client_config.set("group.id", format!("{}-lag", config.application_id));
    let consumer: BaseConsumer = client_config.create()?;
    std::thread::Builder::new()
        .name("lag".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                let committed = status.committed.lock().unwrap().clone();
                let mut partitions = Vec::with_capacity(committed.len());
                for ((topic, partition), offset) in committed {
                    let lag = consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                        .ok()
                        .map(|(log_start, lso)| partition_lag(lso, log_start, Some(offset)));
                    if let Some(lag) = lag {
                        metrics
                            .lag
                            .get_or_create(&TaskLabel {
                                topic: topic.clone(),
                                partition: partition.to_string(),
                            })
                            .set(lag);
                    }
                    partitions.push(TaskPartition {
                        topic,
                        partition,
                        committed_offset: Some(offset),
                        lag,
                    });
                }
                status.detail.lock().unwrap().partitions = partitions;
                std::thread::sleep(EVERY);
            }
        })?;
    Ok(())
}
