//! The fixed-point engine against the f32 engine, and BatchNorm folding against the unfolded graph.

use pi_model::engine::{RingModel, argmax, run_f32};
use pi_model::{FixedPoint, Model, arch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_input(rng: &mut ChaCha20Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

#[test]
fn fixed_point_agrees_with_f32_on_random_resnet18() {
    let model = Model::random(arch::resnet18(10).unwrap(), 7, None).unwrap().fold_batchnorm();
    let ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let trials = 100;
    let mut agree = 0;
    let mut max_rel = 0f32;
    for _ in 0..trials {
        let x = random_input(&mut rng, 3 * 32 * 32);
        let a = run_f32(&model, &x).unwrap();
        let b = ring.decode_output(&ring.run(&x).unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        max_rel = max_rel.max(err / scale);
        agree += (argmax(&a) == argmax(&b)) as usize;
    }
    assert!(agree * 100 >= trials * 99, "argmax agreed on {agree}/{trials}");
    assert!(max_rel < 1e-2, "largest logit error relative to the logit range: {max_rel}");
}

#[test]
fn fixed_point_agrees_with_f32_on_masked_small_cnn() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.1)).unwrap().fold_batchnorm();
    let ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for _ in 0..50 {
        let x = random_input(&mut rng, 28 * 28);
        let a = run_f32(&model, &x).unwrap();
        let b = ring.decode_output(&ring.run(&x).unwrap());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-2 * (1.0 + p.abs()), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn folding_batchnorm_preserves_the_function() {
    // Evaluate the unfolded graph by folding only as the reference... instead compare two foldings:
    // the standard fold (into convs) and a graph whose every BN became a diagonal 1x1 conv.
    for (name, input) in [("small-cnn", 28 * 28), ("wrn22-8", 3 * 32 * 32)] {
        if name == "wrn22-8" && cfg!(debug_assertions) {
            continue;
        }
        let m = Model::random(arch::build(name, 10).unwrap(), 5, Some(0.5)).unwrap();
        let folded = m.fold_batchnorm();
        assert!(folded.is_folded());
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let x = random_input(&mut rng, input);
        let reference = unfolded_reference(&m, &x);
        let got = run_f32(&folded, &x).unwrap();
        for (p, q) in reference.iter().zip(&got) {
            assert!((p - q).abs() < 1e-3 * (1.0 + p.abs()), "{name}: {reference:?} vs {got:?}");
        }
    }
}

/// Reference: turn every BatchNorm into an explicit per-channel affine step by inserting the
/// diagonal-conv form for *all* of them (no folding into convs), which is a different code path.
fn unfolded_reference(m: &Model, x: &[f32]) -> Vec<f32> {
    use pi_model::Op;
    let mut g = m.graph.clone().into_graph();
    let mut t = m.tensors.clone();
    for node in g.nodes.iter_mut() {
        if let Op::Batchnorm { channels, eps } = node.op {
            let get = |p: &str| t[&format!("{}.{p}", node.name)].clone();
            let (gamma, beta, mean, var) = (get("weight"), get("bias"), get("running_mean"), get("running_var"));
            let mut w = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[channels, channels, 1, 1]));
            let mut b = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[channels]));
            for c in 0..channels {
                let s = gamma[c] / (var[c] + eps).sqrt();
                w[[c, c, 0, 0]] = s;
                b[c] = beta[c] - mean[c] * s;
            }
            for p in ["weight", "bias", "running_mean", "running_var"] {
                t.remove(&format!("{}.{p}", node.name));
            }
            t.insert(format!("{}.weight", node.name), w);
            t.insert(format!("{}.bias", node.name), b);
            node.op = Op::Conv2d {
                in_channels: channels,
                out_channels: channels,
                kernel: 1,
                stride: 1,
                padding: 0,
                bias: true,
            };
        }
    }
    run_f32(&Model::with_default_normalization(g.validate().unwrap(), t), x).unwrap()
}

/// The PI server's fused online step (`linear_share`: linear part, bias and an additive share,
/// reduced once) equals the separate steps on every conv and linear node of small-cnn and
/// ResNet-18, on full-range ring inputs and shares.
#[test]
fn fused_linear_share_equals_the_separate_steps() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for name in ["small-cnn", "resnet18"] {
        let model = Model::random(arch::build(name, 10).unwrap(), 5, None).unwrap().fold_batchnorm();
        let ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
        let mask = ring.fp.mask();
        let mut checked = 0;
        for (i, node) in model.graph.nodes.iter().enumerate() {
            if !matches!(node.op, pi_model::Op::Conv2d { .. } | pi_model::Op::Linear { .. }) {
                continue;
            }
            let in_len: usize = model.graph.input_shape_of(node).iter().product();
            let x: Vec<u64> = (0..in_len).map(|_| rng.random::<u64>() & mask).collect();
            let mut want = ring.linear_no_bias(i, &x);
            ring.add_bias(i, &mut want);
            let share: Vec<u64> = (0..want.len()).map(|_| rng.random::<u64>() & mask).collect();
            want.iter_mut().zip(&share).for_each(|(v, s)| *v = v.wrapping_add(*s) & mask);
            assert_eq!(ring.linear_share(i, &x, &share), want, "{name} node {}", node.name);
            checked += 1;
        }
        assert!(checked >= 4, "{name}: only {checked} linear nodes");
    }
}

/// `set_sign_dead_zones` zeroes exactly the kept ReLU inputs in `[0, 2^bits)`: the ReLU node's
/// output equals an independent recomputation from its input, and zero bits change nothing.
#[test]
fn sign_dead_zones_zero_small_kept_inputs_only() {
    use pi_model::Op;
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.5)).unwrap().fold_batchnorm();
    let exact = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    let relus: Vec<usize> =
        model.graph.nodes.iter().enumerate().filter(|(_, n)| matches!(n.op, Op::Relu { .. })).map(|(i, _)| i).collect();
    let (i, bits) = (relus[0], 14);
    let mut dead = vec![0u32; model.graph.nodes.len()];
    let mut zoned = exact.clone();
    zoned.set_sign_dead_zones(&dead);
    let x = exact.encode_input(&random_input(&mut ChaCha20Rng::seed_from_u64(4), 28 * 28));
    assert_eq!(zoned.run_all(x.clone()).unwrap(), exact.run_all(x.clone()).unwrap());
    dead[i] = bits;
    zoned.set_sign_dead_zones(&dead);
    let (want, got) = (exact.run_all(x.clone()).unwrap(), zoned.run_all(x).unwrap());
    let index = model.graph.index();
    let input = &want[index[model.graph.nodes[i].inputs[0].as_str()]];
    let (fp, shift) = (exact.fp, exact.plan.nodes[i].relu_shift_units * exact.fp.f);
    let mut zeroed = 0;
    for ((&v, &keep), &out) in input.iter().zip(&exact.layers[i].mask).zip(&got[i]) {
        let y = fp.to_i64(v);
        let small = keep && (0..1i64 << bits).contains(&y);
        zeroed += (small && y > 0) as usize;
        let relu = if small {
            0
        } else if keep {
            fp.relu(v)
        } else {
            v
        };
        assert_eq!(out, fp.truncate(relu, shift), "y={y} keep={keep}");
    }
    assert!(zeroed > 0, "some kept input fell in the dead zone");
    assert_ne!(got.last(), want.last());
}
