//! The seam between a gadget and what runs it (after swanky's `Fancy`): a gadget written once over
//! [`Fancy`] is recorded as a [`Circuit`] ([`Recorder`]), run on plaintext bits ([`Plain`]), or garbled
//! and evaluated in lock step without an interpreter ([`super::lockstep`]), where the compiler turns
//! it into straight-line code with the wires in registers.

use super::circuit::{Bit, Circuit, CircuitBuilder};

/// Gate-level operations on wires of some backend. Inputs are asked for by index when the gadget
/// first needs them; outputs are handed over by index as soon as they are computed.
pub trait Fancy {
    type Wire: Copy;
    fn garbler_input(&mut self, i: usize) -> Self::Wire;
    fn evaluator_input(&mut self, i: usize) -> Self::Wire;
    fn xor(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
    /// The one gate that costs: each call is one half-gates table, numbered in call order.
    fn and(&mut self, a: Self::Wire, b: Self::Wire) -> Self::Wire;
    fn not(&mut self, a: Self::Wire) -> Self::Wire;
    /// Output `o` is the product `y ∧ scale`, read arithmetically: the same `scale` wire for every
    /// output (see [`super::batch::ArithCircuit`], scaled), called for `o = 0, 1, 2, ..` in order
    /// (the garbled backends hash the scale bit once per pair of outputs).
    fn scaled_output(&mut self, o: usize, y: Self::Wire, scale: Self::Wire);
}

/// Records a gadget as a [`Circuit`] with `ng` garbler and `ne` evaluator inputs; its outputs are the
/// `y` of each scaled output, then the scale bit.
pub struct Recorder {
    b: CircuitBuilder,
    gin: Vec<Bit>,
    ein: Vec<Bit>,
    out: Vec<Option<Bit>>,
    scale: Option<Bit>,
}

impl Recorder {
    pub fn new(ng: usize, ne: usize, nout: usize) -> Self {
        let mut b = CircuitBuilder::new();
        let gin = b.garbler_inputs(ng);
        let ein = b.evaluator_inputs(ne);
        Self { b, gin, ein, out: vec![None; nout], scale: None }
    }

    /// The circuit; panics if the gadget left an output unset.
    pub fn finish(self) -> Circuit {
        let mut out: Vec<Bit> = self.out.into_iter().enumerate().map(|(o, z)| z.unwrap_or_else(|| panic!("output {o} never set"))).collect();
        out.push(self.scale.expect("no scaled output"));
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
    fn scaled_output(&mut self, o: usize, y: Bit, scale: Bit) {
        assert!(self.scale.is_none_or(|s| s == scale), "one scale bit for all outputs");
        self.scale = Some(scale);
        self.out[o] = Some(y);
    }
}

/// Runs a gadget on plaintext bits.
pub struct Plain<'a> {
    pub garbler: &'a [bool],
    pub evaluator: &'a [bool],
    pub out: Vec<bool>,
}

impl<'a> Plain<'a> {
    pub fn new(garbler: &'a [bool], evaluator: &'a [bool], nout: usize) -> Self {
        Self { garbler, evaluator, out: vec![false; nout] }
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
    fn scaled_output(&mut self, o: usize, y: bool, scale: bool) {
        self.out[o] = y & scale;
    }
}
