//! Keeps the placement and autoscaling loops alive. Each runs for the
//! operator's whole life over every app; a panic (a bug meeting one app's
//! data) would otherwise end placement or scaling for every tenant while
//! the reconcile, and so the pod's health, looked fine. Three layers: a
//! panic in one app's poll is that poll's error ([`guarded`]), so the apps
//! after it are still polled; a poisoned lock is taken over ([`lock`]), so
//! that panic does not become every later poll's; and a loop that ends
//! anyway is started again ([`supervise`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;

use crate::error::{Error, Result};
use crate::metrics::{DriverLabels, Metrics};

/// One app's poll, with a panic turned into its error.
pub async fn guarded<T>(poll: impl Future<Output = Result<T>>) -> Result<T> {
    AssertUnwindSafe(poll)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::Panicked(message))
        })
}

/// A loop's memory (per-app caches), even after a panic while it was held:
/// at worst that app's entry is stale, and its next poll rewrites it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wait before a restart, so a loop that fails at once does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs `start()` as a task and starts it again whenever it panics or
/// returns, logging and counting (`driver_restarts{driver}`) each restart.
/// Never returns.
pub async fn supervise<F, Fut>(driver: &'static str, metrics: Arc<Metrics>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Err(e) if e.is_panic() => {
                tracing::error!(driver, "the {driver} loop panicked: {e}; restarting it")
            }
            _ => tracing::error!(driver, "the {driver} loop ended; restarting it"),
        }
        metrics
            .driver_restarts
            .get_or_create(&DriverLabels {
                driver: driver.into(),
            })
            .inc();
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_poll_is_its_error_and_a_poisoned_lock_is_taken_over() {
        let memory = Arc::new(Mutex::new(1));
        let held = memory.clone();
        let outcome: Result<()> = guarded(async move {
            let _guard = held.lock().unwrap();
            panic!("app shop/orders: bad data");
        })
        .await;
        match outcome {
            Err(Error::Panicked(m)) => assert!(m.contains("bad data"), "{m}"),
            other => panic!("expected the panic as an error, got {other:?}"),
        }
        assert!(memory.is_poisoned());
        *lock(&memory) += 1;
        assert_eq!(*lock(&memory), 2, "the next poll still has its memory");
        assert_eq!(guarded(async { Ok(5) }).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let starts = Arc::new(AtomicU32::new(0));
        let (ran, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = {
            let (metrics, starts) = (metrics.clone(), starts.clone());
            tokio::spawn(supervise("placement", metrics, move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                let ran = ran.clone();
                async move {
                    if n < 2 {
                        panic!("poll {n} met a bad app");
                    }
                    ran.send(n).unwrap();
                    std::future::pending::<()>().await
                }
            }))
        };
        assert_eq!(ran_rx.recv().await, Some(2), "the third start runs on");
        let text = metrics.encode();
        assert!(
            text.contains(r#"millrace_operator_driver_restarts_total{driver="placement"} 2"#),
            "{text}"
        );
        supervisor.abort();
    }
}
