//! Homomorphic preprocessing of linear layers (Cheetah-style BFV coefficient packing, `fhe` crate):
//! the client learns `L(r) - s` for its mask `r`, the server keeps its random share `s`, and neither
//! learns the other's input. See `docs/he.md` for parameters, noise budget and flooding.
//!
//! - [`layer`]: layer shapes, reduction of strided/padded convolutions and FC layers to one canonical form;
//! - `pack`: coefficient packing of inputs and kernels into polynomials;
//! - `params`: BFV parameters and derived constants;
//! - `engine`: encryption, homomorphic products with flooding, decryption (CPU, rayon);
//! - `kernel`: the server's weights encoded once per served model ([`KernelEncoder`]);
//! - `rns`: flat RNS polynomial arithmetic for the server's products (NTT, lazy sums, mod switching);
//! - `protocol`: the message exchange over a [`pi_channel::Channel`].

#![forbid(unsafe_code)]

mod engine;
mod kernel;
pub mod layer;
mod pack;
pub mod params;
mod protocol;
mod rns;
mod secret;
mod wire;

#[cfg(test)]
mod tests;

pub use kernel::{EncodedLayer, KernelCache, KernelEncoder};
pub use layer::{ConvShape, FcShape, LayerShape, ring_linear};
pub use params::{HeParams, MAX_L, MIN_L};
pub use protocol::{ClientTimings, HeClient, HeServer, ServerTimings};

use pi_channel::ChannelError;

/// Why HE preprocessing failed. Malformed peer data is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("malformed HE message: {0}")]
    Malformed(String),
    #[error("invalid layer shape: {0}")]
    Shape(String),
    #[error("HE parameters: {0}")]
    Params(String),
    #[error("noise budget: {0}")]
    Noise(String),
    #[error("fhe: {0}")]
    Fhe(String),
    #[error(transparent)]
    Task(#[from] pi_channel::TaskFailed),
}

impl From<fhe::Error> for HeError {
    fn from(e: fhe::Error) -> Self {
        HeError::Fhe(e.to_string())
    }
}

impl From<fhe_math::Error> for HeError {
    fn from(e: fhe_math::Error) -> Self {
        HeError::Fhe(e.to_string())
    }
}
