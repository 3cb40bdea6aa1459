//! The plaintext engines on one image. The fixed-point (ring) forward pass is the PI server's online
//! linear work on its share; it is measured with the kernels in use (Winograd F(2x2,3x3) for 3x3
//! stride-1 convolutions) and with direct convolution only (the kernels before Winograd), the two
//! alternating in the same run, against the CPU's wrapping `u64` multiply-add bound measured in
//! the same run. The f32 engine is the reference.

use crate::BenchError;
use crate::e2e::Stat;
use pi_model::engine::kernels::{self, ConvGeometry};
use pi_model::engine::{RingModel, run_f32};
use pi_model::{FixedPoint, Model, Op, arch};
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub arch: String,
    pub classes: usize,
    /// Forward passes per engine (alternating ring direct, ring, f32).
    pub repeat: usize,
    pub fp: FixedPoint,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { arch: "resnet18".into(), classes: 10, repeat: 5, fp: FixedPoint::DEFAULT }
    }
}

/// One conv/linear layer, one pass each.
#[derive(Clone, Debug, Serialize)]
pub struct EngineLayer {
    pub name: String,
    /// Multiply-adds of the direct computation.
    pub macs: u64,
    pub winograd: bool,
    pub direct_s: f64,
    /// With the kernels in use (equal to `direct_s`'s path when `winograd` is false).
    pub ring_s: f64,
}

/// Report of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct EngineReport {
    pub arch: String,
    pub repeat: usize,
    /// Multiply-adds per image in conv/linear layers (direct count).
    pub macs: u64,
    /// Convolutions on the Winograd path and the transformed kernels' memory.
    pub winograd_layers: usize,
    pub winograd_kernel_bytes: usize,
    /// Whole forward pass per image, seconds.
    pub ring_direct_s: Stat,
    pub ring_s: Stat,
    pub f32_s: Stat,
    /// `ring_direct_s.median / ring_s.median`.
    pub speedup: f64,
    /// The CPU's wrapping u64 multiply-adds per second on all threads, in registers.
    pub u64_mac_bound_per_s: f64,
    /// Direct multiply-adds per second achieved by each path, and as a fraction of the bound
    /// (the Winograd path's "effective" rate counts the direct multiply-adds it replaces).
    pub direct_macs_per_s: f64,
    pub effective_macs_per_s: f64,
    pub direct_of_bound: f64,
    pub effective_of_bound: f64,
    /// Both paths agree on every output of the pass (mod 2^l).
    pub outputs_equal: bool,
    pub layers: Vec<EngineLayer>,
}

/// Runs the measurement on a random model of `opts.arch` (weights do not change the time).
pub fn run(opts: &EngineOptions) -> Result<EngineReport, BenchError> {
    if opts.repeat == 0 {
        return Err(BenchError::Params("--repeat must be at least 1".into()));
    }
    let graph = arch::build(&opts.arch, opts.classes).map_err(|e| BenchError::Params(e.to_string()))?;
    let model = Model::random(graph, 1, None).map_err(|e| BenchError::Params(e.to_string()))?.fold_batchnorm();
    let ring = RingModel::new(&model, opts.fp).map_err(|e| BenchError::Params(e.to_string()))?;
    let mut direct = ring.clone();
    direct.layers.iter_mut().for_each(|l| l.winograd = None);
    let n: usize = model.graph.input_shape.iter().product();
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 100) as f32 / 50.0 - 1.0).collect();
    let wrong = |e: pi_model::engine::EngineError| BenchError::Wrong(e.to_string());

    // Warm-up, and the check that both paths compute the same function.
    let (a, b) = (direct.run(&x).map_err(wrong)?, ring.run(&x).map_err(wrong)?);
    let outputs_equal = a == b;
    run_f32(&model, &x).map_err(wrong)?;
    let (mut td, mut tr, mut tf) = (vec![], vec![], vec![]);
    for _ in 0..opts.repeat {
        let t = Instant::now();
        std::hint::black_box(direct.run(&x).map_err(wrong)?);
        td.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(ring.run(&x).map_err(wrong)?);
        tr.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(run_f32(&model, &x).map_err(wrong)?);
        tf.push(t.elapsed().as_secs_f64());
    }
    let bound = kernels::u64_mac_bound(0.5);

    // Per layer, on the node's real input from one pass.
    let encoded_input = ring.encode_input(&x);
    let acts = ring.run_all(encoded_input.clone()).map_err(wrong)?;
    // A node reads an earlier node's output, or the network input.
    let input_of = |i: usize| -> &[u64] {
        let node = &model.graph.nodes[i];
        match node.inputs.first().and_then(|s| model.graph.nodes.iter().position(|m| &m.name == s)) {
            Some(j) => &acts[j],
            None => &encoded_input,
        }
    };
    let mut layers = Vec::new();
    let mut macs = 0u64;
    for (i, node) in model.graph.nodes.iter().enumerate() {
        let m = match (&node.op, ring.layers[i].conv) {
            (Op::Conv2d { .. }, Some(g)) => conv_macs(&g),
            (Op::Linear { in_features, out_features, .. }, _) => (in_features * out_features) as u64,
            _ => continue,
        };
        macs += m;
        let inp = input_of(i);
        let t = Instant::now();
        std::hint::black_box(direct.linear_no_bias(i, inp));
        let direct_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(ring.linear_no_bias(i, inp));
        let ring_s = t.elapsed().as_secs_f64();
        layers.push(EngineLayer {
            name: node.name.clone(),
            macs: m,
            winograd: ring.layers[i].winograd.is_some(),
            direct_s,
            ring_s,
        });
    }
    let (ring_direct_s, ring_s, f32_s) = (Stat::of(&td), Stat::of(&tr), Stat::of(&tf));
    let winograd = ring.layers.iter().filter_map(|l| l.winograd.as_ref());
    Ok(EngineReport {
        arch: opts.arch.clone(),
        repeat: opts.repeat,
        macs,
        winograd_layers: winograd.clone().count(),
        winograd_kernel_bytes: winograd.map(|w| w.bytes()).sum(),
        speedup: ring_direct_s.median / ring_s.median,
        u64_mac_bound_per_s: bound,
        direct_macs_per_s: macs as f64 / ring_direct_s.median,
        effective_macs_per_s: macs as f64 / ring_s.median,
        direct_of_bound: macs as f64 / ring_direct_s.median / bound,
        effective_of_bound: macs as f64 / ring_s.median / bound,
        ring_direct_s,
        ring_s,
        f32_s,
        outputs_equal,
        layers,
    })
}

fn conv_macs(g: &ConvGeometry) -> u64 {
    (g.out_len() * g.in_channels * g.kernel * g.kernel) as u64
}
