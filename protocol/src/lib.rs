//! The two-party protocol: shares in `Z_{2^l}`, garbled circuits, oblivious transfer,
//! homomorphic preprocessing of linear layers, and the framed byte channel they all speak over.

pub mod channel;
pub mod inference;
pub mod public;
pub mod share;
pub mod gc;
pub mod he;
pub mod ot;
pub mod relu_layer;

pub use channel::{Channel, ChannelError, Counters, MsgKind, PROTOCOL_VERSION};
