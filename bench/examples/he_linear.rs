//! Measures HE preprocessing of every linear layer of a whole network (hardcoded CIFAR/MNIST layer
//! lists, repeats included): `cargo run --release -p pi-bench --example he_linear -- resnet18 [l] [--json]`.

use pi_bench::linear::run_layers;
use pi_he::{ConvShape, FcShape, LayerShape};

fn conv(c: usize, h: usize, m: usize, k: usize, s: usize, p: usize) -> LayerShape {
    LayerShape::Conv(ConvShape {
        in_channels: c,
        out_channels: m,
        height: h,
        width: h,
        kernel: k,
        stride: s,
        padding: p,
    })
}

/// Every conv / FC layer of the network, in order, with repeats.
fn layers(arch: &str) -> Option<Vec<(String, LayerShape)>> {
    let mut v: Vec<(String, LayerShape)> = Vec::new();
    let mut add = |name: String, s: LayerShape| v.push((name, s));
    match arch {
        "small-cnn" => {
            add("conv1".into(), conv(1, 28, 16, 3, 1, 1));
            add("conv2".into(), conv(16, 14, 16, 3, 1, 1));
            add("conv3".into(), conv(16, 14, 32, 3, 2, 1));
            add("fc".into(), LayerShape::Fc(FcShape { inputs: 32, outputs: 10 }));
        }
        "resnet18" => {
            add("conv1".into(), conv(3, 32, 64, 3, 1, 1));
            let mut c = 64;
            let mut h = 32;
            for (stage, width) in [64usize, 128, 256, 512].into_iter().enumerate() {
                for block in 0..2 {
                    let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                    let name = format!("layer{}.{}", stage + 1, block);
                    add(format!("{name}.conv1"), conv(c, h, width, 3, stride, 1));
                    let ho = h / stride;
                    add(format!("{name}.conv2"), conv(width, ho, width, 3, 1, 1));
                    if stride != 1 || c != width {
                        add(format!("{name}.shortcut"), conv(c, h, width, 1, stride, 0));
                    }
                    c = width;
                    h = ho;
                }
            }
            add("fc".into(), LayerShape::Fc(FcShape { inputs: 512, outputs: 10 }));
        }
        "wrn22-8" => {
            add("conv1".into(), conv(3, 32, 16, 3, 1, 1));
            let mut c = 16;
            let mut h = 32;
            for (stage, width) in [128usize, 256, 512].into_iter().enumerate() {
                for block in 0..3 {
                    let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                    let name = format!("block{}.{}", stage + 1, block);
                    add(format!("{name}.conv1"), conv(c, h, width, 3, stride, 1));
                    let ho = h / stride;
                    add(format!("{name}.conv2"), conv(width, ho, width, 3, 1, 1));
                    if stride != 1 || c != width {
                        add(format!("{name}.shortcut"), conv(c, h, width, 1, stride, 0));
                    }
                    c = width;
                    h = ho;
                }
            }
            add("fc".into(), LayerShape::Fc(FcShape { inputs: 512, outputs: 10 }));
        }
        _ => return None,
    }
    Some(v)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args.first().map(String::as_str).unwrap_or("resnet18");
    let l = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(59);
    let json = args.iter().any(|a| a == "--json");
    let list = layers(arch).ok_or_else(|| anyhow::anyhow!("unknown arch {arch}: small-cnn, resnet18, wrn22-8"))?;
    let report = run_layers(&list, l, pi_bench::linear::KernelCache::Transformed).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{arch}, l = {l}, setup {} bytes", report.setup_bytes);
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} ok",
        "layer", "enc s", "srv s", "dec s", "wall s", "c->s MB", "s->c MB", "plain s"
    );
    for r in &report.layers {
        println!(
            "{:<20} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.2} {:>10.2} {:>8.3} {}",
            r.name,
            r.client_encrypt_s,
            r.server_compute_s,
            r.client_decrypt_s,
            r.wall_s,
            r.bytes_client_to_server as f64 / 1e6,
            r.bytes_server_to_client as f64 / 1e6,
            r.plaintext_s,
            r.correct
        );
    }
    let t = &report.total;
    println!(
        "{:<20} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.2} {:>10.2} {:>8.3} {}",
        "TOTAL",
        t.client_encrypt_s,
        t.server_compute_s,
        t.client_decrypt_s,
        t.wall_s,
        t.bytes_client_to_server as f64 / 1e6,
        t.bytes_server_to_client as f64 / 1e6,
        t.plaintext_s,
        t.all_correct
    );
    Ok(())
}
