//! The seam between a gadget and what runs it (after swanky's `Fancy`): a gadget written once over
//! [`Fancy`] is recorded as a [`Circuit`] ([`Recorder`]), run on plaintext bits ([`Plain`]), or garbled
//! and evaluated in lock step without an interpreter (the crate-private lock-step backends), where the
//! compiler turns it into straight-line code with the wires in registers.

use crate::circuit::{Bit, Circuit, CircuitBuilder};

/// Gate-level operations on wires of some backend. Inputs are asked for by index when the gadget
/// first needs them; the outputs are handed over all at once when they are computed.
pub trait Fancy {
    /// What a wire is to this backend (a bit, a circuit wire, labels of many instances).
    type Wire: Copy;
    /// Garbler input bit `i`.
    fn garbler_input(&mut self, i: usize) -> Self::Wire;
    /// Evaluator input bit `i`.
    fn evaluator_input(&mut self, i: usize) -> Self::Wire;
    /// `a ⊕ b` (free when garbled).
    fn xor(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
    /// `a ∧ b`: the one gate that costs, each call one half-gates table, numbered in call order.
    fn and(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
    /// `¬a` (free when garbled).
    fn not(&mut self, a: Self::Wire) -> Self::Wire;
    /// The gadget's outputs, in one call: output `o` is the product `ys[o] ∧ scale`, read
    /// arithmetically (see [`crate::batch::ArithCircuit`], scaled), with the one `scale` wire for all
    /// of them. Output `o` is the `o`-th item of `ys`, so the order is the sequence's, not a rule
    /// (the garbled backends hash the scale bit once per pair of consecutive outputs).
    fn scaled_outputs(&mut self, ys: impl Iterator<Item = Self::Wire>, scale: Self::Wire);
}

/// Records a gadget as a [`Circuit`] with `ng` garbler and `ne` evaluator inputs; its outputs are the
/// `ys` of the scaled outputs, then the scale bit (what [`crate::batch::ArithCircuit::scaled`] reads).
pub struct Recorder {
    b: CircuitBuilder,
    gin: Vec<Bit>,
    ein: Vec<Bit>,
    /// The outputs `ys` and the scale bit, once handed over.
    out: Option<(Vec<Bit>, Bit)>,
}

impl Recorder {
    /// A recorder for a gadget with `ng` garbler and `ne` evaluator input bits.
    pub fn new(ng: usize, ne: usize) -> Self {
        let mut b = CircuitBuilder::new();
        let gin = b.garbler_inputs(ng);
        let ein = b.evaluator_inputs(ne);
        Self { b, gin, ein, out: None }
    }

    /// The circuit: outputs `ys`, then the scale bit; panics if the gadget handed over no outputs.
    pub fn finish(self) -> Circuit {
        let (mut out, scale) = self.out.expect("the gadget handed over no outputs");
        out.push(scale);
        self.b.finish(out)
    }
}

impl Fancy for Recorder {
    type Wire = Bit;
    fn garbler_input(&mut self, i: usize) -> Bit {
        self.gin[i]
    }
    fn evaluator_input(&mut self, i: usize) -> Bit {
        self.ein[i]
    }
    fn xor(&mut self, a: Bit, b: Bit) -> Bit {
        self.b.xor(a, b)
    }
    fn and(&mut self, a: Bit, b: Bit) -> Bit {
        self.b.and(a, b)
    }
    fn not(&mut self, a: Bit) -> Bit {
        self.b.not(a)
    }
    fn scaled_outputs(&mut self, ys: impl Iterator<Item = Bit>, scale: Bit) {
        assert!(self.out.is_none(), "a gadget hands over its outputs once");
        self.out = Some((ys.collect(), scale));
    }
}

/// Runs a gadget on plaintext bits.
pub struct Plain<'a> {
    /// The garbler's input bits.
    pub garbler: &'a [bool],
    /// The evaluator's input bits.
    pub evaluator: &'a [bool],
    /// The output bits `ys[o] ∧ scale`, once the gadget has handed them over.
    pub out: Vec<bool>,
}

impl<'a> Plain<'a> {
    /// Runs on these input bits (no outputs yet).
    pub fn new(garbler: &'a [bool], evaluator: &'a [bool]) -> Self {
        Self { garbler, evaluator, out: Vec::new() }
    }
}

impl Fancy for Plain<'_> {
    type Wire = bool;
    fn garbler_input(&mut self, i: usize) -> bool {
        self.garbler[i]
    }
    fn evaluator_input(&mut self, i: usize) -> bool {
        self.evaluator[i]
    }
    fn xor(&mut self, a: bool, b: bool) -> bool {
        a ^ b
    }
    fn and(&mut self, a: bool, b: bool) -> bool {
        a & b
    }
    fn not(&mut self, a: bool) -> bool {
        !a
    }
    fn scaled_outputs(&mut self, ys: impl Iterator<Item = bool>, scale: bool) {
        self.out = ys.map(|y| y & scale).collect();
    }
}
