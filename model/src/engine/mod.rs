//! Plaintext reference engines: f32 (the trained network) and fixed point in `Z_{2^l}` (exactly what
//! private inference computes; the oracle PI results are compared with).

pub mod float;
pub mod kernels;
pub mod plan;
pub mod ring;

pub use float::run_f32;
pub use plan::{NodePlan, ScalePlan};
pub use ring::RingModel;

/// Index of the largest value (first one on ties).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Why an engine refused to run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("input has {got} values, the network expects {expected}")]
    InputSize { expected: usize, got: usize },
    #[error("model still has BatchNorm node {0:?}; fold it first (Model::fold_batchnorm)")]
    NotFolded(String),
    #[error("invalid graph: {0}")]
    Graph(#[from] crate::graph::GraphError),
    #[error("fixed-point parameters: {0}")]
    Params(String),
}
