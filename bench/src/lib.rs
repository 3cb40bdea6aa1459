//! Benchmarks behind `pi bench`: each module measures one part and returns a serialisable report.

#![forbid(unsafe_code)]

pub mod e2e;
pub mod engine;
mod error;
pub mod fit;
pub mod gc;
pub mod linear;
pub mod pareto;
pub mod svg;

pub use error::BenchError;
