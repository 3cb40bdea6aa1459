//! The mask-annotated network: graph, weights and masks, the `.safetensors` file format,
//! fixed-point numbers, plaintext reference engines (f32 and ring), and dataset readers.
//!
//! `unsafe` is denied everywhere but in `engine::kernels::simd`, the AVX-512 convolution kernel
//! behind one safe dispatch.

#![deny(unsafe_code)]

pub mod arch;
pub mod data;
pub mod engine;
pub mod fixed;
pub mod format;
pub mod graph;
pub mod model;

pub use fixed::FixedPoint;
pub use format::{FormatError, load, load_bytes, save, to_bytes};
pub use graph::{Granularity, Graph, GraphError, Node, Op, ValidGraph};
pub use model::{Model, ReluCount, Tensor};
