//! The Millrace operator: reconciles StreamApps into workers.
//!
//! Reconcile is read → validate ([`model`], pure) → build ([`build`], pure)
//! → apply (server-side apply, in [`build::APPLY_ORDER`]) → status
//! ([`conditions`]). Kubernetes and Kafka I/O stay in [`reconcile`] and
//! [`kafka`].

pub mod build;
pub mod model;
