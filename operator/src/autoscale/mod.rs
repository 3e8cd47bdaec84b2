//! Lag-driven autoscaling (design brief D5): measurements against the last
//! stable offset ([`measure`]), the pure replica decision ([`policy`]), and
//! a trace-driven simulator that compares it with a KEDA-style formula
//! ([`sim`]).

pub mod driver;
pub mod measure;
pub mod policy;
pub mod sim;
