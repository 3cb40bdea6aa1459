//! The `pi` binary end to end on model files: init, inspect, and the file read by Python's safetensors.

use std::process::Command;

fn pi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pi")).args(args).output().expect("runs pi")
}

fn inspect_json(path: &str) -> serde_json::Value {
    let out = pi(&["inspect", path, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn init_and_inspect_report_the_relu_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    for (arch, relus) in [("resnet18", 491_520u64), ("wrn22-8", 1_359_872)] {
        assert!(pi(&["init", "--arch", arch, "--out", &p(arch)]).status.success());
        let j = inspect_json(&p(arch));
        assert_eq!(j["relus"].as_u64(), Some(relus), "{arch}");
        assert_eq!(j["relus_total"].as_u64(), Some(relus), "{arch}");
        let masked = format!("{arch}-10");
        assert!(
            pi(&["init", "--arch", arch, "--mask-keep", "0.1", "--seed", "3", "--out", &p(&masked)]).status.success()
        );
        let kept = inspect_json(&p(&masked))["relus"].as_u64().unwrap() as f64;
        assert!((kept / relus as f64 - 0.1).abs() < 0.002, "{arch}: {kept}");
    }
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    assert!(pi(&["init", "--out", path.to_str().unwrap()]).status.success());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let out = pi(&["inspect", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pi(&["init", "--mask-keep", "1.5", "--out", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mask-keep"));
}

/// The file is plain safetensors: Python reads the tensors and the architecture JSON in the metadata.
/// `.ci/install-deps` installs the Python package.
#[test]
fn python_safetensors_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.safetensors");
    assert!(pi(&["init", "--arch", "resnet18", "--out", path.to_str().unwrap()]).status.success());
    let script = r#"
import json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
    arch = json.loads(meta["architecture"])
    assert meta["format"] == "pi-model" and meta["format_version"] == "2"
    norm = json.loads(meta["normalization"])
    assert norm == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}, norm
    assert arch["arch"] == "resnet18" and len(arch["nodes"]) > 0
    assert f.get_tensor("conv1.weight").shape == (64, 3, 3, 3)
    print(len(list(f.keys())))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&path).output().expect("python3 runs");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().unwrap() > 50);
}

/// `pi eval --logits`: the .npy holds, per image, the logits the engine computes (checked against the
/// library's engines run here), in float32 `[images, classes]`; `--data` takes an IDX file as
/// `pi infer` does; a class count that does not fit the data is refused.
#[test]
fn eval_writes_logits_npy_and_takes_data_files() {
    use ndarray::Array2;
    use ndarray_npy::ReadNpyExt;
    use pi_model::engine::{RingModel, run_f32};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/small-cnn-fmnist.safetensors");
    let images = root.join("data/fashion-mnist/t10k-images-idx3-ubyte.gz");
    let dir = tempfile::tempdir().unwrap();
    let model = pi_model::format::load(&model_path).unwrap().fold_batchnorm();
    let ds = pi_client::load_images(&images, None).unwrap();
    for fixed in [false, true] {
        let npy = dir.path().join(format!("logits-{fixed}.npy"));
        let mut args = vec!["eval", model_path.to_str().unwrap(), "--data", images.to_str().unwrap()];
        args.extend(["--count", "6", "--json", "--logits", npy.to_str().unwrap()]);
        if fixed {
            args.push("--fixed-point");
        }
        let out = pi(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logits = Array2::<f32>::read_npy(std::fs::File::open(&npy).unwrap()).unwrap();
        assert_eq!(logits.dim(), (6, 10));
        let ring = RingModel::new(&model, pi_model::FixedPoint::DEFAULT).unwrap();
        for i in 0..6 {
            let want = if fixed {
                ring.decode_output(&ring.run(ds.image(i)).unwrap())
            } else {
                run_f32(&model, ds.image(i)).unwrap()
            };
            let got: Vec<f32> = logits.row(i).to_vec();
            assert_eq!(got, want, "image {i}, fixed point {fixed}");
        }
    }
    // A model with 7 outputs against 10-class data: one clear error line.
    let c7 = dir.path().join("c7.safetensors");
    assert!(pi(&["init", "--classes", "7", "--out", c7.to_str().unwrap()]).status.success());
    let out = pi(&["eval", c7.to_str().unwrap(), "--data", images.to_str().unwrap(), "--count", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the model has 7 outputs, the data 10 classes"), "{err}");
}

/// A model file whose shapes are absurd but consistent (a 40,000 x 40,000 input into a 3x3 conv,
/// global pooling and a linear layer: 61 parameters) loads and inspects fine, and `pi serve` refuses
/// it at once with a clear error instead of trying to allocate its activations.
#[test]
fn serve_refuses_a_model_whose_activations_are_absurd() {
    use pi_model::graph::{GraphBuilder, Op};
    let mut g = GraphBuilder::new("huge", [1, 40_000, 40_000], 10);
    let conv = Op::Conv2d { in_channels: 1, out_channels: 4, kernel: 3, stride: 1, padding: 1, bias: true };
    g.add("conv", conv, &["input"]);
    g.add("gap", Op::GlobalAvgPool, &["conv"]);
    g.add("fc", Op::Linear { in_features: 4, out_features: 10, bias: true }, &["gap"]);
    let model = pi_model::Model::random(g.finish().unwrap(), 1, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    pi_model::format::save(&model, &path).unwrap();
    let path = path.to_str().unwrap();
    assert!(pi(&["inspect", path]).status.success());
    let start = std::time::Instant::now();
    let out = pi(&["serve", "--model", path, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("activation \"input\" of shape [1, 40000, 40000] exceeds"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

/// The same model gives the same bytes: `safetensors` writes its metadata in a `HashMap`'s random
/// order, which the writer canonicalises (so re-importing or re-initialising is reproducible).
#[test]
fn the_same_model_is_written_byte_for_byte_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.safetensors"));
            let p = p.to_str().unwrap();
            assert!(
                pi(&["init", "--arch", "small-cnn", "--seed", "5", "--mask-keep", "0.3", "--out", p]).status.success()
            );
            std::fs::read(p).unwrap()
        })
        .collect();
    assert!(files.iter().all(|f| f == &files[0]));
    assert_eq!(inspect_json(dir.path().join("m0.safetensors").to_str().unwrap())["relus_total"].as_u64(), Some(20_384));
}

/// The input normalisation travels in the file: `pi import` defaults to the SNL reference code's
/// constants for the checkpoint's dataset and takes a preset or explicit statistics; `pi inspect`
/// shows it; a version-1 file (the bundled model) loads with its data format's default.
#[test]
fn import_records_the_normalisation_and_inspect_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    assert!(pi(&["init", "--arch", "resnet18", "--out", &p("m.safetensors")]).status.success());
    let out = pi(&["export", &p("m.safetensors"), "--format", "snl", "--out", &p("snl.safetensors"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exported["normalization"]["std"][0].as_f64().unwrap() as f32, 0.2470);
    let (checkpoint, imported) = (p("snl.safetensors"), p("i.safetensors"));
    let import = |extra: &[&str]| {
        let mut args = vec!["import", "--arch", "resnet18", "--checkpoint", &checkpoint, "--out", &imported];
        args.extend(extra);
        let out = pi(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let std_of = || -> Vec<f32> {
        let j = inspect_json(&p("i.safetensors"));
        assert_eq!(j["format_version"], 2);
        assert_eq!(j["normalization_stored"], true);
        j["normalization"]["std"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };
    assert!(import(&[]).0);
    assert_eq!(std_of(), [0.2023, 0.1994, 0.2010], "the reference code's CIFAR-10 constants");
    assert!(import(&["--normalization", "cifar10"]).0);
    assert_eq!(std_of(), [0.2470, 0.2435, 0.2616]);
    assert!(import(&["--mean", "0.5,0.5,0.5", "--std", "0.25,0.5,1"]).0);
    assert_eq!(std_of(), [0.25, 0.5, 1.0]);
    let (ok, err) = import(&["--normalization", "imagenet"]);
    assert!(!ok && err.contains("snl-cifar100"), "{err}");
    let (ok, err) = import(&["--mean", "0.5,0.5", "--std", "1,1"]);
    assert!(!ok && err.contains("2 means and 2 stds for 3 channels"), "{err}");
    let (ok, err) = import(&["--mean", "0.5"]);
    assert!(!ok && err.contains("--std"), "{err}");

    // The bundled model predates the field: version 1, Fashion-MNIST's statistics implied.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let j = inspect_json(root.join("models/small-cnn-fmnist.safetensors").to_str().unwrap());
    assert_eq!((j["format_version"].as_u64(), j["normalization_stored"].as_bool()), (Some(1), Some(false)));
    assert_eq!(j["normalization"]["mean"][0].as_f64().unwrap() as f32, 0.2860);
}
