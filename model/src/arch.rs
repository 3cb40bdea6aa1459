//! The architectures, defined once as graphs: the runtime runs them and the linearizer trains them.

use crate::graph::{GraphBuilder, GraphError, INPUT, Op, ValidGraph};

/// Names accepted by [`build`].
pub const ARCHITECTURES: &[&str] = &["small-cnn", "resnet18", "wrn22-8"];

/// Builds an architecture by name with `classes` outputs.
pub fn build(name: &str, classes: usize) -> Result<ValidGraph, GraphError> {
    match name {
        "small-cnn" => small_cnn(classes),
        "resnet18" => resnet18(classes),
        "wrn22-8" => wrn22_8(classes),
        other => Err(GraphError::Shape {
            node: INPUT.into(),
            reason: format!("unknown architecture {other:?} (known: {})", ARCHITECTURES.join(", ")),
        }),
    }
}

/// Default network for 1x28x28 inputs (Fashion-MNIST): a stem, one residual block, a strided
/// conv and a classifier; 20,384 ReLUs.
pub fn small_cnn(classes: usize) -> Result<ValidGraph, GraphError> {
    let mut g = GraphBuilder::new("small-cnn", [1, 28, 28], classes);
    let x = g.conv("conv1", INPUT, (1, 16), (3, 1, 1));
    let x = g.bn("bn1", &x, 16);
    let x = g.relu("relu1", &x);
    let skip = g.add("pool1", Op::AvgPool { kernel: 2, stride: 2 }, &[&x]);
    let y = g.conv("res.conv1", &skip, (16, 16), (3, 1, 1));
    let y = g.bn("res.bn1", &y, 16);
    let y = g.relu("res.relu1", &y);
    let y = g.conv("res.conv2", &y, (16, 16), (3, 1, 1));
    let y = g.bn("res.bn2", &y, 16);
    let y = g.add("res.add", Op::Add, &[&y, &skip]);
    let y = g.relu("res.relu2", &y);
    let y = g.conv("conv2", &y, (16, 32), (3, 2, 1));
    let y = g.bn("bn2", &y, 32);
    let y = g.relu("relu2", &y);
    let y = g.add("gap", Op::GlobalAvgPool, &[&y]);
    g.add("fc", Op::Linear { in_features: 32, out_features: classes, bias: true }, &[&y]);
    g.finish()
}

/// The CIFAR ResNet-18 of the SNL paper (3x32x32, no ReLU in the stem): 491,520 ReLUs.
/// Node names follow the PyTorch module names of that code (`layer1.0.conv1`, `shortcut.0`, ...).
pub fn resnet18(classes: usize) -> Result<ValidGraph, GraphError> {
    let mut g = GraphBuilder::new("resnet18", [3, 32, 32], classes);
    let x = g.conv("conv1", INPUT, (3, 64), (3, 1, 1));
    let mut x = g.bn("bn1", &x, 64);
    let mut cin = 64;
    for (li, (cout, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{}", li + 1, b);
            let s = if b == 0 { stride } else { 1 };
            let y = g.conv(&format!("{p}.conv1"), &x, (cin, cout), (3, s, 1));
            let y = g.bn(&format!("{p}.bn1"), &y, cout);
            let y = g.relu(&format!("{p}.relu1"), &y);
            let y = g.conv(&format!("{p}.conv2"), &y, (cout, cout), (3, 1, 1));
            let y = g.bn(&format!("{p}.bn2"), &y, cout);
            let short = if s != 1 || cin != cout {
                let z = g.conv(&format!("{p}.shortcut.0"), &x, (cin, cout), (1, s, 0));
                g.bn(&format!("{p}.shortcut.1"), &z, cout)
            } else {
                x.clone()
            };
            let y = g.add(format!("{p}.add"), Op::Add, &[&y, &short]);
            x = g.relu(&format!("{p}.relu2"), &y);
            cin = cout;
        }
    }
    let y = g.add("avgpool", Op::GlobalAvgPool, &[&x]);
    g.add("linear", Op::Linear { in_features: 512, out_features: classes, bias: true }, &[&y]);
    g.finish()
}

/// WideResNet-22-8 (pre-activation blocks, widths 128/256/512) at 3x32x32: 1,359,872 ReLUs.
/// As in the SNL count, the final BatchNorm feeds the pooling directly (no ReLU after it).
pub fn wrn22_8(classes: usize) -> Result<ValidGraph, GraphError> {
    let mut g = GraphBuilder::new("wrn22-8", [3, 32, 32], classes);
    let mut x = g.conv("conv1", INPUT, (3, 16), (3, 1, 1));
    let mut cin = 16;
    for (gi, (cout, stride)) in [(128, 1), (256, 2), (512, 2)].into_iter().enumerate() {
        for b in 0..3 {
            let p = format!("block{}.layer.{}", gi + 1, b);
            let s = if b == 0 { stride } else { 1 };
            let a = g.bn(&format!("{p}.bn1"), &x, cin);
            let a = g.relu(&format!("{p}.relu1"), &a);
            let y = g.conv(&format!("{p}.conv1"), &a, (cin, cout), (3, s, 1));
            let y = g.bn(&format!("{p}.bn2"), &y, cout);
            let y = g.relu(&format!("{p}.relu2"), &y);
            let y = g.conv(&format!("{p}.conv2"), &y, (cout, cout), (3, 1, 1));
            let short = if cin != cout || s != 1 {
                g.conv(&format!("{p}.convShortcut"), &a, (cin, cout), (1, s, 0))
            } else {
                x.clone()
            };
            x = g.add(format!("{p}.add"), Op::Add, &[&y, &short]);
            cin = cout;
        }
    }
    let y = g.bn("bn1", &x, cin);
    let y = g.add("avgpool", Op::GlobalAvgPool, &[&y]);
    g.add("fc", Op::Linear { in_features: cin, out_features: classes, bias: true }, &[&y]);
    g.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relus(g: &ValidGraph) -> usize {
        g.relu_sites().iter().map(|(_, n)| n).sum()
    }

    #[test]
    fn relu_counts_match_the_literature() {
        assert_eq!(relus(&resnet18(10).unwrap()), 491_520);
        assert_eq!(relus(&wrn22_8(10).unwrap()), 1_359_872);
        let s = relus(&small_cnn(10).unwrap());
        assert!((2_000..50_000).contains(&s), "{s}");
    }
}
