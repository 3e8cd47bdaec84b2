//! The Millrace runtime library: the pipeline compiler (shared with the
//! operator) and the worker configuration contract. The exactly-once engine
//! arrives with issue #4.

pub mod config;
pub mod pipeline;
