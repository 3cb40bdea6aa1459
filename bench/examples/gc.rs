//! Prints the GC benchmark report as JSON: `cargo run --release -p pi-bench --example gc [relus]`.

fn main() -> anyhow::Result<()> {
    let mut opts = pi_bench::gc::GcBenchOptions::default();
    if let Some(n) = std::env::args().nth(1) {
        opts.relus = n.parse()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(pi_bench::gc::run(&opts))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
