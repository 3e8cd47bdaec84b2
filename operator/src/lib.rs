//! The Millrace operator: reconciles StreamApps into workers.
//!
//! Reconcile is validate ([`model`], pure; [`claims`]: the application id
//! is the app's own) → read ([`reconcile::read`]) →
//! decide the replicas ([`scale`], pure) → build ([`build`], pure) → apply
//! ([`apply`], server-side apply in the order [`apply::apply_all`] writes
//! down) → status ([`conditions`], pure). Kubernetes and Kafka I/O stay in
//! [`reconcile`], [`apply`] and [`kafka`].

pub mod apply;
pub mod autoscale;
pub mod backoff;
pub mod build;
pub mod check;
pub mod claims;
pub mod conditions;
pub mod error;
pub mod events;
pub mod handoff;
pub mod http;
pub mod kafka;
pub mod kafka_clients;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod per_app;
pub mod placement;
pub mod placement_driver;
pub mod reconcile;
pub mod scale;
pub mod scope;
pub mod state_reports;
pub mod supervise;
pub mod worker_status;
pub mod workers;

#[cfg(test)]
mod model_fuzz;
