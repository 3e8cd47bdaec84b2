//! The Millrace runtime library: the worker ([`worker`]) that runs a
//! [`processor::Processor`] exactly once over the tasks the operator places
//! on it, the engine behind it, and the admin endpoint. The zero-code
//! pipeline (`millrace_pipeline`, re-exported as [`pipeline`]) is one
//! processor; a custom image brings its own and calls [`worker::main`].

pub mod admin;
pub mod brokers;
pub mod engine;
#[doc(hidden)]
pub mod failpoint;
pub mod lag;
pub mod manifest;
pub mod metrics;
pub mod placement;
pub mod purge;
pub mod query;
pub use millrace_pipeline as pipeline;
pub mod processor;
pub mod state;
pub mod worker;
