//! Profiling driver (not a benchmark): garbles or evaluates ReLU groups on one thread for a while.
use pi_gc::batch::{evaluate_batch, garble_batch};
use pi_gc::relu::relu_arith_circuit;
use pi_gc::{Delta, Label, ReluParams};
use rand::Rng;
use std::time::Instant;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or("garble".into());
    let p = ReluParams { l: 59, k: 32, shift: 12 };
    let ac = relu_arith_circuit(&p);
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(4096);
    let k = 32;
    let mut rng = rand::rng();
    let delta = Delta::random(&mut rng);
    let gz: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let mut records = vec![0u8; n * ac.record_bytes()];
    let mut r = vec![0u64; n];
    let mut v = vec![0u64; n];
    garble_batch(&ac, &delta, 0, &gz, &ez, &mut records, &mut r);
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < 4.0 {
        if mode == "garble" {
            garble_batch(&ac, &delta, 0, &gz, &ez, &mut records, &mut r);
        } else {
            evaluate_batch(&ac, 0, &gz, &ez, &records, &mut v);
        }
        reps += 1;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{mode}: {:.1} M AND/s (threads {})",
        (reps * n * ac.and_count()) as f64 / s / 1e6,
        rayon::current_num_threads()
    );
}
