//! Keeps the placement and autoscaling loops alive. Each runs for the
//! operator's whole life over every app; a panic in one (a bug meeting one
//! app's data) would otherwise end placement or scaling for every tenant
//! while the reconcile, and so the pod's health, looked fine.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{DriverLabels, Metrics};

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
