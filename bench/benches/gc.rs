//! Criterion micro-benchmarks: the fixed-key-AES hash, garbling / evaluating a batch of ReLUs, and
//! IKNP OT extension (its transpose, its PRG, and a whole extension over an in-memory channel).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pi_channel::Channel;
use pi_gc::batch::{evaluate_batch, garble_batch};
use pi_gc::hash::FixedKeyAes;
use pi_gc::ot::transpose::transpose_columns;
use pi_gc::ot::{CotReceiver, CotSender};
use pi_gc::prg::AesPrg;
use pi_gc::relu::relu_arith_circuit;
use pi_gc::{Delta, Label, ReluParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
    ot(c);
}

/// One 1 MiB extension frame's worth (65,536 OTs): the transpose and the PRG columns; then a whole
/// extension of 2^20 correlated OTs, sender and receiver concurrently over an in-memory channel.
fn ot(c: &mut Criterion) {
    let nb = 512;
    let mut rng = rand::rng();
    let cols: Vec<u128> = (0..128 * nb).map(|_| rng.random()).collect();
    let mut rows = vec![0u128; 128 * nb];
    let mut g = c.benchmark_group("ot_frame_65536");
    g.throughput(Throughput::Elements(128 * nb as u64));
    g.bench_function("transpose", |b| b.iter(|| transpose_columns(black_box(&cols), nb, &mut rows)));
    let prgs: Vec<AesPrg> = (0..128u8).map(|i| AesPrg::new([i; 16])).collect();
    g.bench_function("prg_columns", |b| {
        b.iter(|| {
            for (p, col) in prgs.iter().zip(rows.chunks_mut(nb)) {
                p.fill(0, col);
            }
        })
    });
    g.finish();

    let m = 1 << 20;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut sender, mut receiver, mut a, mut b) = rt.block_on(async {
        let (mut a, mut b) = Channel::memory_pair();
        let s = tokio::spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let s = CotSender::setup(&mut a, &mut rng).await.expect("setup");
            (s, a)
        });
        let r = CotReceiver::setup(&mut b, &mut StdRng::from_os_rng()).await.expect("setup");
        let (s, a) = s.await.expect("join");
        (s, r, a, b)
    });
    let choices: Vec<bool> = (0..m).map(|_| rng.random()).collect();
    let mut g = c.benchmark_group("ot_extend");
    g.throughput(Throughput::Elements(m as u64));
    g.sample_size(10);
    g.bench_function("1m", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let (q, t) = tokio::join!(sender.extend(&mut a, m), receiver.extend(&mut b, &choices));
                black_box((q.expect("sender"), t.expect("receiver")));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
