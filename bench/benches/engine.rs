//! The plaintext engines on one ResNet-18 (CIFAR) image: the fixed-point run is the PI server's
//! online linear work, the f32 run the reference.

use criterion::{Criterion, criterion_group, criterion_main};
use pi_model::engine::{RingModel, run_f32};
use pi_model::{FixedPoint, Model, arch};

fn engines(c: &mut Criterion) {
    let model = Model::random(arch::resnet18(10).unwrap(), 1, Some(0.1)).unwrap().fold_batchnorm();
    let ring = RingModel::new(&model, FixedPoint::DEFAULT).unwrap();
    let x: Vec<f32> = (0..3 * 32 * 32).map(|i| ((i * 7919) % 100) as f32 / 50.0 - 1.0).collect();
    let mut g = c.benchmark_group("resnet18_one_image");
    g.sample_size(10);
    g.bench_function("f32", |b| b.iter(|| run_f32(&model, &x).unwrap()));
    g.bench_function("fixed_point", |b| b.iter(|| ring.run(&x).unwrap()));
    g.finish();
}

criterion_group!(benches, engines);
criterion_main!(benches);
