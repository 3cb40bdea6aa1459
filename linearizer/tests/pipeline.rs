//! End-to-end runs of `train` and `linearize` on a tiny synthetic Fashion-MNIST-shaped dataset
//! written as IDX files: checks the budget is met exactly, masks are binary, reports are complete.

use std::path::Path;

use pi_linearizer::{
    Budget, LinearizeConfig, LinearizeError, Method, NoProgress, Progress, Schedule, TrainConfig, linearize, train,
};
use pi_model::Granularity;

/// Writes `n` 28x28 images whose class `k` is a bright band at rows `2k..2k+3` plus noise.
fn write_idx(dir: &Path, prefix: &str, n: usize, seed: u32) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for i in 0..n {
        let k = i % 10;
        labels.push(k as u8);
        for r in 0..28 {
            for _ in 0..28 {
                let base = if (2 * k..2 * k + 3).contains(&r) { 200 } else { 20 };
                images.push((base + (next() % 40) as i32 - 20).clamp(0, 255) as u8);
            }
        }
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

fn linearize_config(dir: &Path, model: &Path, out: &Path, budgets: &[usize], method: Method) -> LinearizeConfig {
    LinearizeConfig {
        model: model.to_path_buf(),
        data: Some(dir.to_path_buf()),
        budgets: budgets.iter().map(|&b| Budget::Count(b)).collect(),
        out: out.to_path_buf(),
        method,
        granularity: Granularity::Pixel,
        lambda: 1e-3,
        lambda_growth: 1.1,
        min_decrease: 0.0,
        warmup_epochs: 1,
        max_epochs: 2,
        lr: 1e-3,
        threshold: 0.01,
        temperature: 4.0,
        kd_weight: 1.0,
        finetune_epochs: 1,
        finetune_lr: 0.01,
        finetune_schedule: Schedule::Cosine,
        momentum: 0.9,
        weight_decay: 5e-4,
        batch: 32,
        val_size: 32,
        train_limit: None,
        seed: 1,
        split_seed: None,
        recalibrate_batches: 2,
        fold: true,
        report: Some(out.with_extension("json")),
    }
}

/// Records what a run reports through [`Progress`].
#[derive(Default)]
struct Recorder {
    /// Label and batch count of each epoch, and the batches reported in it.
    epochs: Vec<(String, usize, usize)>,
    finished: usize,
    last_loss: f64,
}

impl Progress for Recorder {
    fn start(&mut self, label: &str, batches: usize) {
        self.epochs.push((label.to_string(), batches, 0));
    }
    fn batch(&mut self, step: usize, loss: f64, accuracy: f64) {
        let epoch = self.epochs.last_mut().expect("batch before start");
        assert_eq!(step, epoch.2, "steps are reported in order");
        assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
        epoch.2 += 1;
        self.last_loss = loss;
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
}

#[test]
fn train_then_linearize_meets_the_budget_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx(dir, "train", 160, 1);
    write_idx(dir, "t10k", 40, 2);
    let base = dir.join("base.safetensors");
    let tconfig = TrainConfig {
        data: Some(dir.to_path_buf()),
        epochs: 3,
        batch: 16,
        val_size: 32,
        report: Some(dir.join("train.json")),
        ..TrainConfig::new(&base)
    };
    let mut recorder = Recorder::default();
    let report = train(&tconfig, &mut recorder).unwrap();
    // 128 training images (160 minus 32 held out) in batches of 16: 8 batches per epoch.
    let labels: Vec<&str> = recorder.epochs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(labels, ["epoch 1/3", "epoch 2/3", "epoch 3/3"]);
    assert!(recorder.epochs.iter().all(|e| e.1 == 8 && e.2 == 8), "{:?}", recorder.epochs);
    assert_eq!(recorder.finished, 3);
    assert!(recorder.last_loss > 0.0);
    let text = std::fs::read_to_string(dir.join("train.json")).unwrap();
    // The returned report is what the file holds.
    assert_eq!(text, serde_json::to_string_pretty(&report).unwrap());
    let rep: serde_json::Value = serde_json::from_str(&text).unwrap();
    let epochs = rep["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    let first = epochs[0]["loss"].as_f64().unwrap();
    let last = epochs[2]["loss"].as_f64().unwrap();
    assert!(last < first, "training loss did not decrease: {first} -> {last}");
    assert!(rep["peak_memory_mib"].as_f64().unwrap() > 1.0);
    let trained = pi_model::load(&base).unwrap();
    assert!(!trained.is_folded(), "train keeps BatchNorm by default");
    assert_eq!(trained.kept_relus(), 20_384);

    // One SNL run serves two budgets (files get a -{budget} suffix); baselines one each.
    let reports = linearize(
        &linearize_config(dir, &base, &dir.join("snl.safetensors"), &[1234, 4000], Method::Snl),
        &mut NoProgress,
    )
    .unwrap();
    let budgets: Vec<usize> = reports.iter().map(|r| r.budget).collect();
    assert_eq!(budgets, [4000, 1234], "one report per budget, largest first");
    for r in &reports {
        let file = dir.join(format!("snl-{}.json", r.budget));
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(text, serde_json::to_string_pretty(r).unwrap());
    }
    let no_budget = linearize_config(dir, &base, &dir.join("none.safetensors"), &[], Method::Snl);
    let err = linearize(&no_budget, &mut NoProgress).unwrap_err();
    assert!(matches!(err, LinearizeError::NoBudget), "{err}");
    for (method, budget) in [(Method::Snl, 1234), (Method::Snl, 4000), (Method::Random, 2000), (Method::Layer, 4000)] {
        let out = match method {
            Method::Snl => dir.join(format!("snl-{budget}.safetensors")),
            _ => {
                let out = dir.join(format!("{method:?}.safetensors"));
                let config = linearize_config(dir, &base, &out, &[budget], method);
                let reports = linearize(&config, &mut NoProgress).unwrap();
                assert_eq!(reports.len(), 1);
                out
            }
        };
        let m = pi_model::load(&out).unwrap();
        assert!(m.is_folded());
        assert!(m.kept_relus() <= budget, "{method:?}: {} > {budget}", m.kept_relus());
        for (name, t) in &m.tensors {
            if name.ends_with(".mask") {
                assert!(t.iter().all(|&v| v == 0.0 || v == 1.0), "{name} is not binary");
            }
        }
        let rep: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(rep["relus_after"].as_u64().unwrap() as usize, m.kept_relus());
        assert_eq!(rep["relus_before"].as_u64().unwrap(), 20_384);
        assert_eq!(rep["layers"].as_array().unwrap().len(), 4);
        for key in [
            "test_acc_before",
            "test_acc_binarised",
            "test_acc_recalibrated",
            "test_acc_finetuned",
            "train_images_per_second",
        ] {
            assert!(rep[key].as_f64().is_some(), "{key} missing");
        }
        // Two recalibration batches of 32 of the 128 training images.
        assert_eq!(rep["recalibration_images"].as_u64(), Some(64));
        assert_eq!((rep["seed"].as_u64(), rep["split_seed"].as_u64()), (Some(1), Some(1)));
        if method == Method::Snl {
            // SNL fills the budget exactly when enough masks stay above the threshold.
            assert_eq!(m.kept_relus(), budget);
            assert!(!rep["lambda_trajectory"].as_array().unwrap().is_empty());
        }
        if method == Method::Layer {
            // Whole layers only: 3136 (one residual ReLU layer) is the best fit under 4000.
            assert_eq!(m.kept_relus(), 3136);
        }
    }
}
