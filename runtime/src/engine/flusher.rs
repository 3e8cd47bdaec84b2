//! Sends a closed batch's last records at once instead of after
//! `linger.ms`, without blocking the loop.
//!
//! Under exactly-once nothing is visible before its transaction commits, so
//! records may linger longer in the producer (bigger batches: fewer produce
//! requests and log appends for the broker) at no cost in latency, as long
//! as a closed batch does not wait for its last records' linger. librdkafka
//! ignores `linger.ms` only while a flush call waits (`rk_flushing`), and
//! rust-rdkafka's `flush` polls with librdkafka's timeout at 0, so the flag
//! is up for an instant only. Here a thread waits in `rd_kafka_flush` while
//! the loop goes on. The loop holds new outputs back meanwhile (the stash),
//! so what is flushed is the closed batch alone.

use std::sync::mpsc;
use std::sync::Arc;

use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// How long a flush holds linger off. Enough for librdkafka's broker
/// threads to wake and send what lingers; not much longer, because a flush
/// that outlives the commit (it ends only when nothing is in flight, and
/// the next batch may already be sending) would send that batch without
/// lingering too. Records still lingering past it wait for the commit's own
/// flush: nothing is lost either way.
const FLUSH_TIMEOUT_MS: i32 = 20;

pub struct Flusher<C: ProducerContext + 'static> {
    requests: mpsc::Sender<Arc<BaseProducer<C>>>,
}

impl<C: ProducerContext + 'static> Flusher<C> {
    /// A thread that flushes on request; it ends when the flusher is dropped.
    pub fn spawn() -> Self {
        let (requests, pending) = mpsc::channel::<Arc<BaseProducer<C>>>();
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || {
                for producer in pending {
                    // SAFETY: the Arc keeps the producer (and its native
                    // handle) alive for the call; librdkafka's flush is
                    // thread-safe. It returns once every record sent is
                    // acknowledged and its report served (by the loop), or at
                    // the timeout; the commit waits for the acknowledgements
                    // either way.
                    unsafe {
                        rdkafka::bindings::rd_kafka_flush(
                            producer.client().native_ptr(),
                            FLUSH_TIMEOUT_MS,
                        );
                    }
                }
            })
            .expect("spawning the flusher thread");
        Self { requests }
    }

    /// Starts sending what `producer` holds, now, without waiting for it.
    pub fn flush(&self, producer: &Arc<BaseProducer<C>>) {
        // The thread lives as long as `self`: sending cannot fail.
        let _ = self.requests.send(producer.clone());
    }
}
