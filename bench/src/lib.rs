//! Benchmarks behind `pi bench`: each module measures one part and returns a serialisable report.

#![forbid(unsafe_code)]

mod error;
pub mod gc;
pub mod linear;

pub use error::BenchError;
