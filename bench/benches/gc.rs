//! Criterion micro-benchmarks: the fixed-key-AES hash, and garbling / evaluating a batch of ReLUs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pi_gc::batch::{evaluate_batch, garble_batch};
use pi_gc::hash::FixedKeyAes;
use pi_gc::relu::relu_arith_circuit;
use pi_gc::{Delta, Label, ReluParams};
use rand::Rng;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let aes = FixedKeyAes::get();
    let mut buf: Vec<u128> = (0..1024u128).collect();
    let mut g = c.benchmark_group("aes");
    g.throughput(Throughput::Elements(buf.len() as u64));
    g.bench_function("mmo_hash_1024", |b| b.iter(|| aes.mmo_in_place(black_box(&mut buf))));
    g.finish();

    let p = ReluParams { l: 59, k: 32, shift: 12 };
    let ac = relu_arith_circuit(&p);
    let n = 4096;
    let k = p.k as usize;
    let mut rng = rand::rng();
    let delta = Delta::random(&mut rng);
    let gz: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let mut records = vec![0u8; n * ac.record_bytes()];
    let mut r = vec![0u64; n];
    let mut v = vec![0u64; n];
    let mut g = c.benchmark_group("relu_batch_4096");
    g.throughput(Throughput::Elements((n * ac.and_count()) as u64));
    g.bench_function("garble", |b| b.iter(|| garble_batch(&ac, &delta, 0, &gz, &ez, &mut records, &mut r)));
    g.bench_function("evaluate", |b| b.iter(|| evaluate_batch(&ac, 0, &gz, &ez, &records, &mut v)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
