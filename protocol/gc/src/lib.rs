//! Garbled circuits for two-party private inference: half-gates (Zahur-Rosulek-Evans) with free-XOR
//! and point-and-permute over a fixed-key-AES hash, a small circuit builder, the ReLU gadget, batch
//! garbling/evaluation, IKNP oblivious transfer ([`ot`]) and the two-party ReLU layer protocol
//! ([`relu_layer`]). Design: `docs/gc.md`.
//!
//! One circuit description ([`Circuit`]) has three interpreters: plaintext ([`Circuit::eval_plain`]),
//! the garbler ([`garble`]) and the evaluator ([`evaluate`]), so a gadget is written once.
//!
//! The public API is safe on every CPU. The SIMD code (AVX-512 words, VAES, the lock-step backends)
//! lives in crate-private modules and runs only with a proof from the crate's CPU detection, which is
//! the one place that calls `is_x86_feature_detected!`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod arith;
pub mod batch;
pub mod circuit;
mod cpu;
pub mod evaluate;
pub mod fancy;
pub mod garble;
pub mod hash;
mod lockstep;
pub mod ot;
pub mod prg;
pub mod relu;
pub mod relu_layer;
pub mod stochastic;
pub mod truncate;
mod vaes;
mod word;

pub use circuit::{Bit, Circuit, CircuitBuilder, Gate};
pub use relu::ReluParams;
pub use relu_layer::Gadget;
pub use stochastic::StochasticParams;
pub use truncate::TruncParams;

use pi_channel::{ChannelError, TaskFailed};
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
    /// Bytes from one instance's item to the next instance's same item.
    pub lane: usize,
    /// Bytes from one item of an instance to its next item.
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

    /// Byte offset of item `item` of instance `lane`.
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
pub struct Label(
    /// The label's 128 bits (little-endian on the wire).
    pub u128,
);

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

    /// Inverse of [`Label::to_bytes`].
    #[inline]
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Label(u128::from_le_bytes(b))
    }
}

/// The labels' memory as their wire bytes, so that a frame of labels can be received straight into
/// a reused `Vec<Label>` (no per-frame allocation, zeroing or copy).
pub(crate) fn label_bytes_mut(labels: &mut [Label]) -> &mut [u8] {
    // SAFETY: `Label` is `repr(transparent)` over `u128`: 16 bytes of plain data for which every bit
    // pattern is valid, in memory little-endian as on the wire (big-endian targets are refused in
    // `hash`); `u8` has alignment 1 and the length covers exactly the slice. The borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(labels.as_mut_ptr() as *mut u8, std::mem::size_of_val(labels)) }
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

    /// The 128-bit value (secret: the garbler's key to every wire).
    #[inline(always)]
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// Delta as a label, for XORing onto labels.
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
    /// The channel failed, or the peer sent something malformed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The caller's parameters or lengths are invalid (nothing was sent).
    #[error("invalid parameters: {0}")]
    Params(String),
    /// A blocking background task (garbling, OT) panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// One group of up to [`LANES`] instances of a circuit, as the interpreters ([`garble::garble_lanes`],
/// [`evaluate::evaluate_lanes`]) read and write it: `T` is `&mut [u8]` when garbling (tables written)
/// and `&[u8]` when evaluating (tables read).
///
/// Inputs are instance-major (`gin[lane * n_garbler_inputs + i]`, likewise `ein`): zero-labels when
/// garbling, active labels when evaluating. The table of AND gate `g` of instance `lane` sits at byte
/// `layout.at(lane, g)` of `tables`; `out[lane * n_outputs + o]` receives output `o`'s label (zero-label
/// when garbling, active label when evaluating).
#[derive(Debug)]
pub struct Group<'a, T> {
    /// Circuit id of each instance (its hash tweaks): 1 to [`LANES`] of them.
    pub ids: &'a [u64],
    /// Garbler input labels.
    pub gin: &'a [Label],
    /// Evaluator input labels.
    pub ein: &'a [Label],
    /// AND tables.
    pub tables: T,
    /// Where each instance's AND tables sit in `tables`.
    pub layout: Layout,
    /// Output labels.
    pub out: &'a mut [Label],
}

impl<T: AsRef<[u8]>> Group<'_, T> {
    /// Checks the shapes against `circuit` (panics on a mismatch: they are the caller's invariants).
    fn check(&self, circuit: &Circuit) {
        let lanes = self.ids.len();
        assert!((1..=LANES).contains(&lanes), "1..=LANES instances per call");
        assert_eq!(self.gin.len(), lanes * circuit.n_garbler_inputs);
        assert_eq!(self.ein.len(), lanes * circuit.n_evaluator_inputs);
        let span = self.layout.span(lanes, circuit.n_and(), garble::AND_TABLE_BYTES);
        assert!(self.layout.lane >= garble::AND_TABLE_BYTES && self.tables.as_ref().len() >= span);
        assert_eq!(self.out.len(), lanes * circuit.outputs.len());
    }
}

/// Shorthand for a malformed-message error from the peer.
pub(crate) fn malformed(kind: pi_channel::MsgKind, reason: impl Into<String>) -> GcError {
    GcError::Channel(ChannelError::Malformed { kind, reason: reason.into() })
}
