//! Boolean circuits: a builder with constant folding and dead-gate removal, arithmetic helpers
//! (adders, subtractors, comparators, mux), and the plaintext interpreter.
//!
//! Wires are numbered: garbler inputs first, then evaluator inputs, then one wire per gate in
//! topological order (gate `g` drives wire `n_inputs + g`).

/// A bit while building: a public constant (folded away) or a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bit {
    /// A public constant: gates on it fold away.
    Const(bool),
    /// Wire number `n` (see the module documentation for the numbering).
    Wire(u32),
}

/// One gate; its output is the next wire. XOR and NOT are free in the garbled world, AND costs a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `a ⊕ b` of two earlier wires.
    Xor(u32, u32),
    /// `a ∧ b` of two earlier wires.
    And(u32, u32),
    /// `¬a` of an earlier wire.
    Not(u32),
}

/// A finished circuit: inputs, gates in topological order and outputs (possibly constant). Only
/// [`CircuitBuilder::finish`] makes one, so every gate reads earlier wires (the interpreters rely on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    /// Garbler input wires: `0..n_garbler_inputs`.
    pub(crate) n_garbler_inputs: usize,
    /// Evaluator input wires: the next `n_evaluator_inputs`.
    pub(crate) n_evaluator_inputs: usize,
    /// Gate `g` drives wire `n_inputs() + g` and reads only earlier wires.
    pub(crate) gates: Vec<Gate>,
    /// The output bits, in order.
    pub(crate) outputs: Vec<Bit>,
}

impl Circuit {
    /// Garbler input wires: `0..n_garbler_inputs()`.
    pub fn n_garbler_inputs(&self) -> usize {
        self.n_garbler_inputs
    }

    /// Evaluator input wires: the next `n_evaluator_inputs()`.
    pub fn n_evaluator_inputs(&self) -> usize {
        self.n_evaluator_inputs
    }

    /// The gates in topological order: gate `g` drives wire `n_inputs() + g`.
    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    /// The output bits, in order.
    pub fn outputs(&self) -> &[Bit] {
        &self.outputs
    }

    /// Input wires of both parties.
    pub fn n_inputs(&self) -> usize {
        self.n_garbler_inputs + self.n_evaluator_inputs
    }

    /// All wires: inputs, then one per gate.
    pub fn n_wires(&self) -> usize {
        self.n_inputs() + self.gates.len()
    }

    /// AND gates: each costs one 32-byte half-gates table.
    pub fn n_and(&self) -> usize {
        self.gates.iter().filter(|g| matches!(g, Gate::And(..))).count()
    }

    /// Plaintext interpreter: the reference the garbled interpreters must agree with.
    pub fn eval_plain(&self, garbler: &[bool], evaluator: &[bool]) -> Vec<bool> {
        assert_eq!(garbler.len(), self.n_garbler_inputs, "garbler input count");
        assert_eq!(evaluator.len(), self.n_evaluator_inputs, "evaluator input count");
        let mut w = Vec::with_capacity(self.n_wires());
        w.extend_from_slice(garbler);
        w.extend_from_slice(evaluator);
        for g in &self.gates {
            let v = match *g {
                Gate::Xor(a, b) => w[a as usize] ^ w[b as usize],
                Gate::And(a, b) => w[a as usize] & w[b as usize],
                Gate::Not(a) => !w[a as usize],
            };
            w.push(v);
        }
        self.outputs
            .iter()
            .map(|o| match *o {
                Bit::Const(c) => c,
                Bit::Wire(x) => w[x as usize],
            })
            .collect()
    }
}

/// Builds a [`Circuit`]. Inputs must all be declared before the first gate.
#[derive(Default)]
pub struct CircuitBuilder {
    n_garbler: usize,
    n_evaluator: usize,
    /// Input kinds in declaration order (true = garbler), renumbered in `finish`.
    input_is_garbler: Vec<bool>,
    gates: Vec<Gate>,
}

impl CircuitBuilder {
    /// An empty circuit: declare the inputs first.
    pub fn new() -> Self {
        Self::default()
    }

    fn n_inputs(&self) -> usize {
        self.input_is_garbler.len()
    }

    fn push(&mut self, g: Gate) -> Bit {
        let id = (self.n_inputs() + self.gates.len()) as u32;
        self.gates.push(g);
        Bit::Wire(id)
    }

    fn new_input(&mut self, garbler: bool) -> Bit {
        assert!(self.gates.is_empty(), "declare all inputs before adding gates");
        let id = self.n_inputs() as u32;
        self.input_is_garbler.push(garbler);
        if garbler {
            self.n_garbler += 1
        } else {
            self.n_evaluator += 1
        }
        Bit::Wire(id)
    }

    /// A wire the garbler supplies.
    pub fn garbler_input(&mut self) -> Bit {
        self.new_input(true)
    }

    /// A wire the evaluator supplies (its labels come by oblivious transfer).
    pub fn evaluator_input(&mut self) -> Bit {
        self.new_input(false)
    }

    /// `n` garbler inputs, in order.
    pub fn garbler_inputs(&mut self, n: usize) -> Vec<Bit> {
        (0..n).map(|_| self.garbler_input()).collect()
    }

    /// `n` evaluator inputs, in order.
    pub fn evaluator_inputs(&mut self, n: usize) -> Vec<Bit> {
        (0..n).map(|_| self.evaluator_input()).collect()
    }

    /// The public constant `c`.
    pub fn constant(&self, c: bool) -> Bit {
        Bit::Const(c)
    }

    /// `a ⊕ b` (free when garbled), folded where an input is constant or both are the same wire.
    pub fn xor(&mut self, a: Bit, b: Bit) -> Bit {
        match (a, b) {
            (Bit::Const(x), Bit::Const(y)) => Bit::Const(x ^ y),
            (Bit::Const(false), w) | (w, Bit::Const(false)) => w,
            (Bit::Const(true), w) | (w, Bit::Const(true)) => self.not(w),
            (Bit::Wire(x), Bit::Wire(y)) if x == y => Bit::Const(false),
            (Bit::Wire(x), Bit::Wire(y)) => self.push(Gate::Xor(x, y)),
        }
    }

    /// `a ∧ b` (one garbled table), folded where an input is constant or both are the same wire.
    pub fn and(&mut self, a: Bit, b: Bit) -> Bit {
        match (a, b) {
            (Bit::Const(x), Bit::Const(y)) => Bit::Const(x & y),
            (Bit::Const(false), _) | (_, Bit::Const(false)) => Bit::Const(false),
            (Bit::Const(true), w) | (w, Bit::Const(true)) => w,
            (Bit::Wire(x), Bit::Wire(y)) if x == y => a,
            (Bit::Wire(x), Bit::Wire(y)) => self.push(Gate::And(x, y)),
        }
    }

    /// `¬a` (free when garbled).
    pub fn not(&mut self, a: Bit) -> Bit {
        match a {
            Bit::Const(x) => Bit::Const(!x),
            Bit::Wire(x) => self.push(Gate::Not(x)),
        }
    }

    /// `a ∨ b = ¬(¬a ∧ ¬b)`: one AND.
    pub fn or(&mut self, a: Bit, b: Bit) -> Bit {
        let na = self.not(a);
        let nb = self.not(b);
        let t = self.and(na, nb);
        self.not(t)
    }

    /// `s ? x1 : x0` bitwise: `x0 ⊕ (s ∧ (x0 ⊕ x1))`, one AND per bit.
    pub fn mux(&mut self, s: Bit, x0: &[Bit], x1: &[Bit]) -> Vec<Bit> {
        assert_eq!(x0.len(), x1.len());
        x0.iter()
            .zip(x1)
            .map(|(&a, &b)| {
                let d = self.xor(a, b);
                let t = self.and(s, d);
                self.xor(a, t)
            })
            .collect()
    }

    /// Ripple-carry addition of two little-endian words with carry in: returns the sum bits and the
    /// carry out. One AND per bit: `c' = c ⊕ ((a ⊕ c) ∧ (b ⊕ c))`.
    pub fn add_with_carry(&mut self, a: &[Bit], b: &[Bit], carry_in: Bit) -> (Vec<Bit>, Bit) {
        assert_eq!(a.len(), b.len());
        let mut c = carry_in;
        let mut sum = Vec::with_capacity(a.len());
        for (&x, &y) in a.iter().zip(b) {
            let xc = self.xor(x, c);
            sum.push(self.xor(xc, y));
            let yc = self.xor(y, c);
            let t = self.and(xc, yc);
            c = self.xor(c, t);
        }
        (sum, c)
    }

    /// `a + b mod 2^n` (the unused final carry is removed by [`CircuitBuilder::finish`]): `n - 1` ANDs.
    pub fn add(&mut self, a: &[Bit], b: &[Bit]) -> Vec<Bit> {
        self.add_with_carry(a, b, Bit::Const(false)).0
    }

    /// `a - b mod 2^n` as `a + ¬b + 1`: `n - 1` ANDs.
    pub fn sub(&mut self, a: &[Bit], b: &[Bit]) -> Vec<Bit> {
        let nb: Vec<Bit> = b.iter().map(|&x| self.not(x)).collect();
        self.add_with_carry(a, &nb, Bit::Const(true)).0
    }

    /// Unsigned `a < b`: the borrow of `a - b`, `n` ANDs.
    pub fn lt_unsigned(&mut self, a: &[Bit], b: &[Bit]) -> Bit {
        let nb: Vec<Bit> = b.iter().map(|&x| self.not(x)).collect();
        let (_, carry) = self.add_with_carry(a, &nb, Bit::Const(true));
        self.not(carry)
    }

    /// Little-endian constant word of `n` bits.
    pub fn constant_word(&self, value: u64, n: usize) -> Vec<Bit> {
        (0..n).map(|i| Bit::Const(i < 64 && (value >> i) & 1 == 1)).collect()
    }

    /// Finishes the circuit: drops gates no output depends on and renumbers wires densely.
    pub fn finish(self, outputs: Vec<Bit>) -> Circuit {
        let n_in = self.n_inputs();
        let mut live = vec![false; n_in + self.gates.len()];
        for o in &outputs {
            if let Bit::Wire(w) = *o {
                live[w as usize] = true;
            }
        }
        for g in (0..self.gates.len()).rev() {
            if !live[n_in + g] {
                continue;
            }
            match self.gates[g] {
                Gate::Xor(a, b) | Gate::And(a, b) => {
                    live[a as usize] = true;
                    live[b as usize] = true;
                }
                Gate::Not(a) => live[a as usize] = true,
            }
        }
        // Inputs keep their slots (garbler inputs first, then evaluator inputs, each in declaration order).
        let mut map = vec![u32::MAX; n_in + self.gates.len()];
        let (mut gi, mut ei) = (0u32, self.n_garbler as u32);
        for (i, &is_g) in self.input_is_garbler.iter().enumerate() {
            if is_g {
                map[i] = gi;
                gi += 1;
            } else {
                map[i] = ei;
                ei += 1;
            }
        }
        let mut gates = Vec::new();
        for (g, gate) in self.gates.iter().enumerate() {
            if !live[n_in + g] {
                continue;
            }
            map[n_in + g] = (n_in + gates.len()) as u32;
            gates.push(match *gate {
                Gate::Xor(a, b) => Gate::Xor(map[a as usize], map[b as usize]),
                Gate::And(a, b) => Gate::And(map[a as usize], map[b as usize]),
                Gate::Not(a) => Gate::Not(map[a as usize]),
            });
        }
        let outputs = outputs
            .into_iter()
            .map(|o| match o {
                Bit::Const(c) => Bit::Const(c),
                Bit::Wire(w) => Bit::Wire(map[w as usize]),
            })
            .collect();
        Circuit { n_garbler_inputs: self.n_garbler, n_evaluator_inputs: self.n_evaluator, gates, outputs }
    }
}

/// Little-endian bits of `x` (the low `n`).
pub fn to_bits(x: u64, n: usize) -> Vec<bool> {
    (0..n).map(|i| i < 64 && (x >> i) & 1 == 1).collect()
}

/// Value of little-endian bits.
pub fn from_bits(bits: &[bool]) -> u64 {
    bits.iter().enumerate().filter(|(i, b)| **b && *i < 64).fold(0u64, |acc, (i, _)| acc | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mask(n: usize) -> u64 {
        if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
    }

    fn arith_circuit(n: usize) -> Circuit {
        let mut b = CircuitBuilder::new();
        let x = b.garbler_inputs(n);
        let y = b.evaluator_inputs(n);
        let s = b.add(&x, &y);
        let d = b.sub(&x, &y);
        let lt = b.lt_unsigned(&x, &y);
        let m = b.mux(lt, &x, &y);
        let o = b.or(x[0], y[0]);
        let mut out = s;
        out.extend(d);
        out.push(lt);
        out.extend(m);
        out.push(o);
        b.finish(out)
    }

    proptest! {
        #[test]
        fn builder_arithmetic_matches_integers(n in 1usize..=64, x in any::<u64>(), y in any::<u64>()) {
            let (x, y) = (x & mask(n), y & mask(n));
            let c = arith_circuit(n);
            let out = c.eval_plain(&to_bits(x, n), &to_bits(y, n));
            prop_assert_eq!(from_bits(&out[..n]), x.wrapping_add(y) & mask(n));
            prop_assert_eq!(from_bits(&out[n..2 * n]), x.wrapping_sub(y) & mask(n));
            prop_assert_eq!(out[2 * n], x < y);
            prop_assert_eq!(from_bits(&out[2 * n + 1..3 * n + 1]), if x < y { y } else { x });
            prop_assert_eq!(out[3 * n + 1], (x | y) & 1 == 1);
        }
    }

    #[test]
    fn and_counts_of_helpers() {
        let mut b = CircuitBuilder::new();
        let x = b.garbler_inputs(32);
        let y = b.evaluator_inputs(32);
        let s = b.add(&x, &y);
        assert_eq!(b.finish(s).n_and(), 31);
        let mut b = CircuitBuilder::new();
        let x = b.garbler_inputs(32);
        let y = b.evaluator_inputs(32);
        let lt = b.lt_unsigned(&x, &y);
        assert_eq!(b.finish(vec![lt]).n_and(), 32);
    }

    #[test]
    fn constants_fold_and_dead_gates_vanish() {
        let mut b = CircuitBuilder::new();
        let x = b.garbler_input();
        let y = b.evaluator_input();
        let one = b.constant(true);
        let zero = b.constant(false);
        assert_eq!(b.and(x, zero), Bit::Const(false));
        assert_eq!(b.and(x, one), x);
        assert_eq!(b.xor(x, x), Bit::Const(false));
        assert_eq!(b.xor(x, zero), x);
        let _dead = b.and(x, y);
        let nx = b.xor(x, one);
        let c = b.finish(vec![nx, Bit::Const(true)]);
        assert_eq!(c.n_and(), 0);
        assert_eq!(c.gates, vec![Gate::Not(0)]);
        assert_eq!(c.eval_plain(&[true], &[false]), vec![false, true]);
        assert_eq!(c.eval_plain(&[false], &[true]), vec![true, true]);
    }
}
