//! The Millrace runtime library: the pipeline compiler (shared with the
//! operator) and evaluator, the exactly-once engine, the worker
//! configuration contract, and the admin endpoint.

pub mod admin;
pub mod config;
pub mod engine;
pub mod lag;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
