//! Prometheus metrics of the operator.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

/// One of the operator's long-running loops (`placement`, `autoscaling`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    pub driver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverErrorLabels {
    pub driver: String,
    pub kind: String,
}

pub struct Metrics {
    pub registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    driver_errors: Family<DriverErrorLabels, Counter>,
    pub driver_restarts: Family<DriverLabels, Counter>,
    duration: Histogram,
    pub leader: Gauge<i64, AtomicI64>,
    /// Task handoffs finished.
    pub moves: Counter,
    /// Workers fenced because they did not acknowledge a revoke.
    pub fences: Counter,
    pub handoff_seconds: Histogram,
    pub task_pause_seconds: Histogram,
    pub lag: Family<AppLabels, Gauge<i64, AtomicI64>>,
    pub input_rate: Family<AppLabels, Gauge<f64, AtomicU64>>,
    pub processing_rate: Family<AppLabels, Gauge<f64, AtomicU64>>,
    pub capacity: Family<AppLabels, Gauge<f64, AtomicU64>>,
    pub decided_replicas: Family<AppLabels, Gauge<i64, AtomicI64>>,
    /// 1 while the app's Degraded condition is True (the reason is in its
    /// status and Events), 0 otherwise; gone with the app.
    degraded: Family<AppLabels, Gauge<i64, AtomicI64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// `namespace/name`.
    pub app: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("millrace_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let leader = Gauge::<i64, AtomicI64>::default();
        let driver_errors = Family::<DriverErrorLabels, Counter>::default();
        let driver_restarts = Family::<DriverLabels, Counter>::default();
        registry.register(
            "driver_errors",
            "Failed polls of one app by the placement or autoscaling loop, by error kind",
            driver_errors.clone(),
        );
        registry.register(
            "driver_restarts",
            "Placement or autoscaling loops restarted after a panic or an exit",
            driver_restarts.clone(),
        );
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            failures.clone(),
        );
        // At 0 from the start, so rate() and alerts see the first error.
        for kind in Error::METRIC_LABELS {
            let _ = failures.get_or_create(&ErrorLabels { kind: kind.into() });
        }
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let moves = Counter::default();
        let fences = Counter::default();
        let handoff_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        let task_pause_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        registry.register("task_moves", "Task handoffs finished", moves.clone());
        registry.register(
            "worker_fences",
            "Workers fenced (by their transactional ids) so their tasks could move",
            fences.clone(),
        );
        registry.register(
            "handoff_duration_seconds",
            "From the revoke of a task to its grant to the new worker",
            handoff_seconds.clone(),
        );
        registry.register(
            "task_pause_seconds",
            "From a moved task's last commit on the old worker to its first on the new one",
            task_pause_seconds.clone(),
        );
        let lag = Family::<AppLabels, Gauge<i64, AtomicI64>>::default();
        let input_rate = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        let processing_rate = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        let capacity = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        let decided_replicas = Family::<AppLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "app_lag",
            "Records behind the last stable offset, summed over tasks",
            lag.clone(),
        );
        registry.register(
            "app_input_rate",
            "Records/s arriving on the source topics",
            input_rate.clone(),
        );
        registry.register(
            "app_processing_rate",
            "Records/s committed",
            processing_rate.clone(),
        );
        registry.register(
            "app_capacity_per_replica",
            "Records/s one worker processes, as learned",
            capacity.clone(),
        );
        registry.register(
            "app_decided_replicas",
            "The autoscaler's last decision",
            decided_replicas.clone(),
        );
        let degraded = Family::<AppLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "app_degraded",
            "1 while the app's Degraded condition is True",
            degraded.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            driver_errors,
            driver_restarts,
            duration,
            leader,
            lag,
            input_rate,
            processing_rate,
            capacity,
            decided_replicas,
            degraded,
            moves,
            fences,
            handoff_seconds,
            task_pause_seconds,
        }
    }
}

impl Metrics {
    pub fn record_autoscaling(
        &self,
        app: &str,
        lag: i64,
        input: f64,
        processed: f64,
        capacity: Option<f64>,
        decided: i32,
    ) {
        let l = AppLabels { app: app.into() };
        self.lag.get_or_create(&l).set(lag);
        self.input_rate.get_or_create(&l).set(input);
        self.processing_rate.get_or_create(&l).set(processed);
        if let Some(c) = capacity {
            self.capacity.get_or_create(&l).set(c);
        }
        self.decided_replicas.get_or_create(&l).set(decided.into());
    }

    /// The app's Degraded condition as last written.
    pub fn app_degraded(&self, app: &str, degraded: bool) {
        self.degraded
            .get_or_create(&AppLabels { app: app.into() })
            .set(degraded.into());
    }

    /// The app is gone: its per-app series go too.
    pub fn forget_app(&self, app: &str) {
        let l = AppLabels { app: app.into() };
        for family in [&self.lag, &self.decided_replicas, &self.degraded] {
            family.remove(&l);
        }
        for family in [&self.input_rate, &self.processing_rate, &self.capacity] {
            family.remove(&l);
        }
    }

    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            started: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn reconcile_failed(&self, error: &Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: error.metric_label().into(),
            })
            .inc();
    }

    /// A placement or autoscaling poll of one app failed.
    pub fn driver_failed(&self, driver: &str, error: &Error) {
        self.driver_errors
            .get_or_create(&DriverErrorLabels {
                driver: driver.into(),
                kind: error.metric_label().into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

/// Observes the reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    started: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
