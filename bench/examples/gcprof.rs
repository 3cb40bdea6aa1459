use pi_protocol::gc::batch::{evaluate_batch, garble_batch};
use pi_protocol::gc::relu::relu_arith_circuit;
use pi_protocol::gc::{Delta, Label, ReluParams};
use rand::Rng;
use std::time::Instant;
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn main() {
    let p = ReluParams { l: 59, k: 32, shift: 12 };
    let ac = relu_arith_circuit(&p);
    let n = 100_000; let k = 32;
    let mut rng = rand::rng();
    let delta = Delta::random(&mut rng);
    let gz: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
    let mut records = vec![1u8; n * ac.record_bytes()];
    let mut r = vec![0u64; n];
    let mut v = vec![0u64; n];
    let what = std::env::args().nth(1).unwrap_or("both".into());
    let skip_aes = std::env::var("NOAES").is_ok();
    let iters: usize = std::env::var("ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    for _ in 0..iters {
        let aes = pi_protocol::gc::hash::FixedKeyAes::get();
        let mut buf: Vec<u128> = (0..1024u128).collect();
        let t = Instant::now(); let c0 = cpu();
        for _ in 0..(if skip_aes { 0 } else { 60000 }) { aes.permute_in_place(&mut buf); }
        let rate = 60000.0 * 1024.0 / (cpu() - c0);
        println!("aes {:.1} M/s -> garble bound {:.1}, eval bound {:.1}", rate / 1e6, rate / 4e6, rate / 2e6);
        if what != "eval" {
        let t = Instant::now(); let c0 = cpu();
        garble_batch(&ac, &delta, 0, &gz, &ez, &mut records, &mut r);
        println!("garble {:.1} M AND/s", (n * 50) as f64 / (cpu() - c0) / 1e6);
        }
        if what != "garble" {
        let t = Instant::now(); let c0 = cpu();
        evaluate_batch(&ac, 0, &gz, &ez, &records, &mut v);
        println!("eval {:.1} M AND/s", (n * 50) as f64 / (cpu() - c0) / 1e6);
        }
    }
}
