use pi_protocol::gc::hash::FixedKeyAes;
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn main() {
    let aes = FixedKeyAes::get();
    for batch in [16usize, 32, 64, 128, 1024] {
        let mut buf: Vec<u128> = (0..batch as u128).collect();
        let iters = 100_000_000 / batch;
        let c = cpu();
        for _ in 0..iters { aes.permute_words(&mut buf); }
        let e = cpu() - c;
        std::hint::black_box(&buf);
        println!("batch {batch}: {:.1} M/s", (iters * batch) as f64 / e / 1e6);
    }
}
