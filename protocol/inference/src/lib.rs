//! Private inference of a whole network: the server's and the client's offline and online phases,
//! walking one compiled [`plan`] of the (folded) graph on additive shares.
//!
//! Per linear node the client's share comes from HE offline (`pi-he`); per ReLU node with surviving
//! neurons a garbled-circuit layer runs (`pi-gc`); everything else (adds, pooling, linearized ReLUs,
//! truncations) is local on both shares. See `docs/protocol.md` for the message diagram.

#![forbid(unsafe_code)]

pub mod client;
mod error;
mod plan;
pub mod public;
pub mod server;
pub mod share;

pub use client::{ClientSession, InferenceResult, LayerCost, Prepared};
pub use error::{InferenceError, tell_peer};
pub use plan::linear_layers;
pub use public::{
    PublicModel, PublicModelError, SignBits, WidthCheck, calibrate_relu_bits, check_activations, check_relu_bits,
};
pub use server::{ServedModel, ServerInferenceStats, ServerSession, ServerStepTime};
pub use share::Truncation;

use serde::{Deserialize, Serialize};

/// Server greeting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub model: PublicModel,
    /// Inferences this session may run: the server's limit, within the statistical budget of the
    /// HE replies (see [`ServedModel::session_inferences`]). A client needing more reconnects.
    pub session_inferences: u64,
}

/// Client's answer: the model hash it expects (the server refuses a mismatch too).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloAck {
    pub hash: String,
}

/// A client request: start one inference, or end the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Infer,
    Bye,
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
