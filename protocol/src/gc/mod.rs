//! Garbled circuits: half-gates (Zahur-Rosulek-Evans) with free-XOR and point-and-permute over a
//! fixed-key-AES hash, a small circuit builder, the ReLU gadget, and batch garbling/evaluation.
//!
//! One circuit description ([`Circuit`]) has three interpreters: plaintext ([`Circuit::eval_plain`]),
//! the garbler ([`garble`]) and the evaluator ([`evaluate`]), so a gadget is written once.

pub mod arith;
pub mod batch;
pub mod circuit;
pub mod evaluate;
pub mod fancy;
pub mod garble;
pub mod hash;
pub mod lockstep;
pub mod prg;
pub mod relu;
pub mod vaes;
pub mod word;

pub use circuit::{Bit, Circuit, CircuitBuilder, Gate};
pub use relu::ReluParams;

use crate::channel::ChannelError;
use std::fmt;
use std::ops::{BitXor, BitXorAssign};
use zeroize::Zeroize;

/// Number of circuit instances garbled or evaluated in lock step, so that their independent AES calls
/// pipeline (an AND's hashes depend on the previous gate of the same instance, not on other instances).
pub const LANES: usize = 16;

/// Where per-instance items (AND tables, output ciphertexts) sit in a buffer: item `i` of instance
/// `lane` starts at byte `lane * lane + i * item`. Batches interleave a group's instances item by
/// item ([`Layout::interleaved`]), so that one gate's tables of a whole group are contiguous bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub lane: usize,
    pub item: usize,
}

impl Layout {
    /// Each instance's items back to back.
    pub fn per_instance(item_bytes: usize, n_items: usize) -> Self {
        Layout { lane: item_bytes * n_items, item: item_bytes }
    }

    /// Item after item, the `lanes` instances' copies side by side.
    pub fn interleaved(item_bytes: usize, lanes: usize) -> Self {
        Layout { lane: item_bytes, item: item_bytes * lanes }
    }

    #[inline(always)]
    pub fn at(&self, lane: usize, item: usize) -> usize {
        lane * self.lane + item * self.item
    }

    /// Bytes a buffer needs for `lanes` instances of `n_items` items of `item_bytes` each.
    pub fn span(&self, lanes: usize, n_items: usize, item_bytes: usize) -> usize {
        if lanes == 0 || n_items == 0 { 0 } else { self.at(lanes - 1, n_items - 1) + item_bytes }
    }
}

/// A wire label. Its least significant bit is the point-and-permute bit.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Label(pub u128);

impl Label {
    /// The point-and-permute bit.
    #[inline(always)]
    pub fn lsb(self) -> bool {
        self.0 & 1 == 1
    }

    /// Little-endian wire encoding.
    #[inline]
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    #[inline]
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Label(u128::from_le_bytes(b))
    }
}

impl BitXor for Label {
    type Output = Label;
    #[inline(always)]
    fn bitxor(self, rhs: Label) -> Label {
        Label(self.0 ^ rhs.0)
    }
}

impl BitXorAssign for Label {
    #[inline(always)]
    fn bitxor_assign(&mut self, rhs: Label) {
        self.0 ^= rhs.0
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:032x})", self.0)
    }
}

/// The garbler's global free-XOR offset: the one-label of every wire is its zero-label XOR `delta`.
/// Its least significant bit is 1, so the two labels of a wire have different permute bits.
#[derive(Clone, PartialEq, Eq)]
pub struct Delta(u128);

impl Delta {
    /// Wraps a 128-bit value; `None` unless its least significant bit is 1.
    pub fn new(x: u128) -> Option<Self> {
        (x & 1 == 1).then_some(Delta(x))
    }

    /// Fresh random delta (lsb forced to 1).
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        Delta(rng.random::<u128>() | 1)
    }

    #[inline(always)]
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    #[inline(always)]
    pub fn as_label(&self) -> Label {
        Label(self.0)
    }
}

impl Drop for Delta {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Delta(<secret>)")
    }
}

/// Errors of the GC/OT engine and the ReLU-layer protocol.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for GcError {
    fn from(e: tokio::task::JoinError) -> Self {
        GcError::Task(e.to_string())
    }
}

/// Shorthand for a malformed-message error from the peer.
pub(crate) fn malformed(kind: crate::channel::MsgKind, reason: impl Into<String>) -> GcError {
    GcError::Channel(ChannelError::Malformed { kind, reason: reason.into() })
}
