//! Before anything else touches Kafka, the worker waits until the brokers
//! answer with its settings, and says why not in its own words.
//!
//! Without this, a wrong password, a CA that did not sign the brokers'
//! certificates or an expired client certificate surfaced only as
//! `BrokerTransportFailure` after each startup step's 30 s timeout, with
//! librdkafka's own explanation logged late or not at all (its error
//! callbacks are served only when a client is polled).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use millrace_crds::kafka::explain_connection_error;
use millrace_crds::worker_config::WorkerConfig;

/// Remembers librdkafka's last error, which names the cause (an
/// authentication failure, a failed TLS handshake and why).
#[derive(Default)]
struct LastError(Mutex<Option<String>>);

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        // "All broker connections are down" follows the error that says why.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        *self.0.lock().unwrap() = Some(format!("{error}: {reason}"));
    }
}

impl ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

/// Returns once a metadata request succeeds; `false` if `shutdown` came
/// first. Every failed attempt logs the cause, with a backoff doubling up to
/// 30 s, so a pod that cannot authenticate waits (the operator reports the
/// cause on the StreamApp) instead of crash-looping.
pub fn wait_until_reachable(config: &WorkerConfig, shutdown: &AtomicBool) -> anyhow::Result<bool> {
    let context = LastError::default();
    let probe: BaseProducer<LastError> =
        crate::engine::clients::admin(config)?.create_with_context(context)?;
    let mut backoff = FIRST_RETRY;
    let mut attempt = 1u32;
    loop {
        let outcome = probe.client().fetch_metadata(None, Duration::from_secs(5));
        // Serves the error callbacks the attempt produced.
        probe.poll(Duration::from_millis(100));
        let Err(e) = outcome else {
            if attempt > 1 {
                tracing::info!("the brokers answer now");
            }
            return Ok(true);
        };
        let cause = probe
            .context()
            .0
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| e.to_string());
        let hint = explain_connection_error(&cause)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        tracing::error!(
            bootstrap = %config.kafka.bootstrap_servers,
            security_protocol = %config.kafka.security_protocol,
            attempt,
            "cannot use the brokers: {cause}{hint}; retrying in {backoff:?}"
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if shutdown.load(Ordering::Relaxed) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(LONGEST_RETRY);
        attempt += 1;
    }
}
