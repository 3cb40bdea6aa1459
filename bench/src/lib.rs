//! Benchmarks behind `pi bench`: each module measures one part and returns a serialisable report.

pub mod gc;

pub mod linear;
