//! Whole-network private inference over an in-memory channel against the fixed-point engine.

use crate::client::ClientSession;
use crate::public::{PublicModel, calibrate_relu_bits};
use crate::server::{ServedModel, ServerSession};
use crate::share::Truncation;
use pi_channel::Channel;
use pi_model::engine::{RingModel, argmax};
use pi_model::{FixedPoint, Model, arch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

fn served(arch_name: &str, keep: f64, calibrate: bool) -> (Arc<ServedModel>, Vec<Vec<f32>>) {
    served_with(arch_name, keep, calibrate, Truncation::Local)
}

fn served_with(
    arch_name: &str,
    keep: f64,
    calibrate: bool,
    truncation: Truncation,
) -> (Arc<ServedModel>, Vec<Vec<f32>>) {
    let model = Model::random(arch::build(arch_name, 10).unwrap(), 11, Some(keep)).unwrap().fold_batchnorm();
    let mut ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    // Convolutions after garbled ReLUs start while the client evaluates (`pi serve --overlap on`).
    assert!(ring.prepare_scatter() > 0);
    let n: usize = model.graph.input_shape.iter().product();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let inputs: Vec<Vec<f32>> = (0..3).map(|_| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()).collect();
    let bits = calibrate.then(|| calibrate_relu_bits(&ring, &inputs, 3));
    let mut public = PublicModel::new(&ring.model, "test-hash".into(), ring.fp, bits).unwrap();
    public.truncation = truncation;
    (Arc::new(ServedModel::new(ring, public, usize::MAX).unwrap()), inputs)
}

async fn run_pair(model: Arc<ServedModel>, inputs: Vec<Vec<f32>>) -> Vec<crate::client::InferenceResult> {
    let (mut cs, mut ss) = Channel::memory_pair();
    let m = model.clone();
    let server = tokio::spawn(async move {
        let mut s = ServerSession::handshake(&mut ss, m, usize::MAX).await.unwrap();
        while s.next_request(&mut ss).await.unwrap().is_some() {
            s.serve_inference(&mut ss).await.unwrap();
        }
    });
    let mut c = ClientSession::handshake(&mut cs, Some("test-hash")).await.unwrap();
    let mut out = vec![];
    for x in &inputs {
        out.push(c.infer(&mut cs, x).await.unwrap());
    }
    c.close(&mut cs).await.unwrap();
    server.await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cnn_logits_match_the_fixed_point_engine() {
    let (model, inputs) = served("small-cnn", 0.1, true);
    let results = run_pair(model.clone(), inputs.clone()).await;
    for (x, r) in inputs.iter().zip(&results) {
        let want = model.ring.decode_output(&model.ring.run(x).unwrap());
        assert_eq!(argmax(&want), argmax(&r.logits));
        for (p, q) in want.iter().zip(&r.logits) {
            assert!((p - q).abs() < 1e-2, "PI {:?} vs fixed point {want:?}", r.logits);
        }
        assert_eq!(r.relus, model.public.kept_relus());
    }
}

/// Kept ReLUs reading the sign from 12 top bits (`--sign-bits 12`): the same argmax as the
/// fixed-point engine and logits close to it, with fewer online bytes than reading all bits, on the
/// same inputs and masks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stochastic_sign_stays_close_to_the_fixed_point_engine_with_fewer_bytes() {
    let (all, inputs) = served("small-cnn", 0.1, true);
    let top = {
        let mut public = all.public.clone();
        public.sign_bits = crate::public::SignBits::Top(12);
        let plan = crate::plan::Plan::compile(&public).unwrap();
        let stochastic = plan
            .steps
            .iter()
            .filter(|s| matches!(s.kind, crate::plan::StepKind::Relu { gc: Some(pi_gc::Gadget::Stochastic(_)), .. }));
        assert!(stochastic.count() > 0, "some ReLU layer is wider than 12 bits");
        let ring = RingModel::new(&all.ring.model, all.ring.fp).unwrap();
        Arc::new(ServedModel::new(ring, public, usize::MAX).unwrap())
    };
    let exact = run_pair(all.clone(), inputs.clone()).await;
    let results = run_pair(top.clone(), inputs.clone()).await;
    for ((x, r), e) in inputs.iter().zip(&results).zip(&exact) {
        let want = top.ring.decode_output(&top.ring.run(x).unwrap());
        assert_eq!(argmax(&want), argmax(&r.logits));
        for (p, q) in want.iter().zip(&r.logits) {
            assert!((p - q).abs() < 5e-2, "PI {:?} vs fixed point {want:?}", r.logits);
        }
        assert!(r.online_bytes.received < e.online_bytes.received, "{:?} vs {:?}", r.online_bytes, e.online_bytes);
    }
}

/// With exact truncation the private logits are the fixed-point engine's, bit for bit (circuit
/// widths calibrated on the same inputs, so no ReLU wraps); with local truncation they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_truncation_matches_the_fixed_point_engine_bit_for_bit() {
    let (model, inputs) = served_with("small-cnn", 0.1, true, Truncation::Exact);
    let results = run_pair(model.clone(), inputs.clone()).await;
    // Linearized neurons (90% of each ReLU layer) and the outputs of the convolutions that feed
    // the residual add, the pooling layers and the global pooling are truncated exactly.
    let plan = crate::plan::Plan::compile(&model.public).unwrap();
    let after: usize = plan.steps.iter().filter(|s| s.exact_after.is_some()).map(|s| s.out_len).sum();
    // Only ReLUs that rescale (`2f` inputs) truncate; those after the residual add are at `f`.
    let linearized: usize = (plan.steps.iter())
        .map(|s| match &s.kind {
            crate::plan::StepKind::Relu { linearized: Some((positions, t)), .. } => {
                assert_eq!(t.shift, model.public.fp.f);
                positions.len()
            }
            _ => 0,
        })
        .sum();
    assert!(after > 0 && linearized > 0);
    // Some convolution starts on linearized neurons while kept ReLUs are out (a ReLU after the
    // residual add, which does not rescale): its result is checked bit for bit below too.
    let overlapped = (0..plan.steps.len()).filter_map(|i| plan.linear_after_relu(i)).collect::<Vec<_>>();
    assert!(!overlapped.is_empty() && overlapped.iter().all(|&j| model.ring.scatters(j)));
    for (x, r) in inputs.iter().zip(&results) {
        assert_eq!(r.logits_ring, model.ring.run(x).unwrap(), "exact PI equals the fixed-point engine");
        assert_eq!((r.relus, r.truncations), (model.public.kept_relus(), linearized + after));
        let steps_after = plan.steps.iter().filter(|s| s.exact_after.is_some()).count();
        let relu_rounds = r.layers.iter().filter(|l| l.kind == "relu" && l.relus_total > 0).count();
        assert_eq!(r.online_rounds, 1 + relu_rounds + steps_after);
    }
    let (local, _) = served_with("small-cnn", 0.1, true, Truncation::Local);
    let results = run_pair(local.clone(), inputs.clone()).await;
    let differ = inputs.iter().zip(&results).filter(|(x, r)| r.logits_ring != local.ring.run(x).unwrap()).count();
    assert!(differ > 0, "local truncation is off by a unit somewhere");
    assert!(results.iter().all(|r| r.truncations == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearized_layers_cost_no_bytes_and_no_round() {
    let mut model = Model::random(arch::small_cnn(10).unwrap(), 2, Some(0.2)).unwrap();
    model.tensors.get_mut("res.relu1.mask").unwrap().fill(0.0);
    let model = model.fold_batchnorm();
    let ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    let public = PublicModel::new(&ring.model, "test-hash".into(), ring.fp, None).unwrap();
    let served = Arc::new(ServedModel::new(ring, public, usize::MAX).unwrap());
    let x: Vec<f32> = (0..28 * 28).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
    let r = run_pair(served.clone(), vec![x.clone()]).await.pop().unwrap();
    let layer = |name: &str| r.layers.iter().find(|l| l.node == name).unwrap().clone();
    let gone = layer("res.relu1");
    assert_eq!((gone.relus_kept, gone.offline_bytes, gone.online_bytes, gone.online_round), (0, 0, 0, false));
    let kept = layer("res.relu2");
    assert!(kept.relus_kept > 0 && kept.offline_bytes > 0 && kept.online_bytes > 0 && kept.online_round);
    // Three ReLU layers with survivors plus the input/logits exchange.
    assert_eq!(r.online_rounds, 4);
    let want = served.ring.decode_output(&served.ring.run(&x).unwrap());
    assert_eq!(argmax(&want), argmax(&r.logits));
}

#[test]
fn width_check_counts_wraps_on_kept_neurons_only() {
    use crate::public::check_relu_bits;
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.3)).unwrap().fold_batchnorm();
    let mut ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    // Convolutions after garbled ReLUs start while the client evaluates (`pi serve --overlap on`).
    assert!(ring.prepare_scatter() > 0);
    let n: usize = model.graph.input_shape.iter().product();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let inputs: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()).collect();
    let kept = model.kept_relus() as u64;

    // Widths fitted on the same inputs never wrap on them, and leave exactly the margin.
    let bits = calibrate_relu_bits(&ring, &inputs, 3);
    let checks = check_relu_bits(&ring, &inputs, &bits);
    assert_eq!(checks.len(), model.relu_counts().len());
    assert_eq!(checks.iter().map(|c| c.values).sum::<u64>(), kept * 4);
    for c in &checks {
        assert_eq!(c.wraps, 0, "{c:?}");
        assert!(c.bits >= c.needed_bits + 3 || c.bits == ring.fp.l, "{c:?}");
    }

    // Two bits too narrow: some kept neuron wraps, counted exactly against the plaintext engine.
    let narrow: Vec<u32> = checks.iter().map(|c| c.needed_bits.saturating_sub(2).max(1)).collect();
    let mut per_node = bits.clone();
    let relu_nodes: Vec<usize> =
        model.graph.nodes.iter().enumerate().filter(|(_, n)| n.op.kind() == "relu").map(|(i, _)| i).collect();
    for (&i, &k) in relu_nodes.iter().zip(&narrow) {
        per_node[i] = k;
    }
    let checks = check_relu_bits(&ring, &inputs, &per_node);
    let index = model.graph.index();
    for ((c, &i), &k) in checks.iter().zip(&relu_nodes).zip(&narrow) {
        let node = &model.graph.nodes[i];
        let mask = model.pixel_mask(node, model.graph.input_shape_of(node));
        let mut want = 0;
        for x in &inputs {
            let outs = ring.run_all(ring.encode_input(x)).unwrap();
            let src = &outs[index[node.inputs[0].as_str()]];
            want += src
                .iter()
                .zip(&mask)
                .filter(|(v, keep)| **keep && ring.fp.to_i64(**v).unsigned_abs() >= 1 << (k - 1))
                .count() as u64;
        }
        assert_eq!(c.wraps, want, "{c:?}");
        assert!(c.wraps > 0, "{c:?}");
    }
}
