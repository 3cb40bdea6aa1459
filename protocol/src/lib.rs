//! The two-party protocol: shares in `Z_{2^l}`, garbled circuits, oblivious transfer,
//! homomorphic preprocessing of linear layers, and the framed byte channel they all speak over.

pub mod channel;

pub use channel::{Channel, ChannelError, Counters, MsgKind, PROTOCOL_VERSION};
