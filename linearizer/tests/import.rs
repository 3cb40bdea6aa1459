//! Import of SNL-style checkpoints: safetensors and PyTorch `.pt` files that the tests write
//! themselves from a random model with the public SNL code's parameter names.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use pi_linearizer::import::import_checkpoint;
use pi_linearizer::{CheckpointError, ImportConfig, LinearizeError, WithoutMasks, import};
use pi_model::data::Normalization;
use pi_model::{Model, arch};

/// Checkpoint tensors by name: shape and values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// SNL's name of a model tensor: ReLU masks are `...alphaK.alphas` of shape `[1, C, H, W]`.
fn snl_name(name: &str, shape: &[usize]) -> (String, Vec<usize>) {
    if let Some(stem) = name.strip_suffix(".mask") {
        let (prefix, last) = stem.rsplit_once('.').unwrap();
        let k = last.strip_prefix("relu").unwrap();
        let mut s = vec![1];
        s.extend_from_slice(shape);
        (format!("{prefix}.alpha{k}.alphas"), s)
    } else {
        (name.to_string(), shape.to_vec())
    }
}

/// A random model whose masks keep half of the ReLUs, and its tensors under SNL names.
fn snl_tensors(arch_name: &str) -> (Model, Tensors) {
    let model = Model::random(arch::build(arch_name, 10).unwrap(), 11, Some(0.5)).unwrap();
    let mut out = BTreeMap::new();
    for (name, t) in &model.tensors {
        let (n, s) = snl_name(name, t.shape());
        out.insert(n, (s, t.iter().copied().collect()));
    }
    (model, out)
}

fn write_safetensors(path: &Path, tensors: &Tensors) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Pickle opcodes for a `str`.
fn pickle_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pickle_int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend_from_slice(&(v as i32).to_le_bytes());
}

fn pickle_tuple(out: &mut Vec<u8>, items: &[usize]) {
    out.push(b'(');
    for &i in items {
        pickle_int(out, i);
    }
    out.push(b't');
}

/// Writes what `torch.save({"state_dict": sd, "epoch": 3}, path)` writes (ZIP container,
/// pickle protocol 2, one storage per tensor), optionally under `module.` (DataParallel).
fn write_pt(path: &Path, tensors: &Tensors, prefix: &str) {
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pickle_str(&mut pkl, "state_dict");
    pkl.extend_from_slice(b"}(");
    for (i, (name, (shape, _))) in tensors.iter().enumerate() {
        pickle_str(&mut pkl, &format!("{prefix}{name}"));
        pkl.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        pkl.push(b'(');
        pickle_str(&mut pkl, "storage");
        pkl.extend_from_slice(b"ctorch\nFloatStorage\n");
        pickle_str(&mut pkl, &i.to_string());
        pickle_str(&mut pkl, "cpu");
        pickle_int(&mut pkl, shape.iter().product());
        pkl.extend_from_slice(b"tQ");
        pickle_int(&mut pkl, 0);
        pickle_tuple(&mut pkl, shape);
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        pickle_tuple(&mut pkl, &strides);
        pkl.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    pkl.push(b'u');
    pickle_str(&mut pkl, "epoch");
    pickle_int(&mut pkl, 3);
    pkl.extend_from_slice(b"u.");

    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (i, (_, (_, data))) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        zip.write_all(&bytes).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

/// The error followed by its sources, as `pi` prints it (`{:#}` of an `anyhow::Error`).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn assert_same(a: &Model, b: &Model) {
    assert_eq!(a.graph, b.graph);
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &a.tensors {
        assert_eq!(t, &b.tensors[k], "{k}");
    }
}

#[test]
fn safetensors_with_snl_names_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("resnet18.safetensors");
    let (model, tensors) = snl_tensors("resnet18");
    write_safetensors(&path, &tensors);
    let (imported, report) = import_checkpoint(&ImportConfig::new("resnet18", &path, "")).unwrap();
    assert_same(&model, &imported);
    assert!(report.had_masks);
    assert_eq!(report.classes, 10);
    // No normalisation given: the reference code's constants for CIFAR-10.
    assert_eq!(imported.normalization, Normalization::snl_cifar10());
    assert_eq!(report.normalization_source, "snl-cifar10");
    // A class count that names no dataset of the reference code needs the normalisation given.
    let seven = ImportConfig { classes: Some(7), ..ImportConfig::new("resnet18", &path, "") };
    let err = import_checkpoint(&seven).unwrap_err();
    assert!(
        matches!(&err, LinearizeError::Import { source: CheckpointError::UnknownNormalization { classes: 7, .. }, .. }),
        "{err}"
    );
    assert!(chain(&err).contains("--normalization"), "{}", chain(&err));
    assert_eq!(report.relus_total, 491_520);
    assert_eq!(report.relus_kept, model.kept_relus());
}

#[test]
fn pytorch_zip_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tensors) = snl_tensors("resnet18");
    let path = tmp.path().join("snl_best_checkpoint_resnet18.pth.tar");
    write_pt(&path, &tensors, "module.");
    let (imported, report) = import_checkpoint(&ImportConfig::new("resnet18", &path, "")).unwrap();
    assert_same(&model, &imported);
    assert!(report.ignored.is_empty(), "{:?}", report.ignored);
}

#[test]
fn wrn_without_alphas_is_refused_unless_every_relu_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, mut tensors) = snl_tensors("wrn22-8");
    tensors.retain(|k, _| !k.ends_with(".alphas"));
    let path = tmp.path().join("wrn.pt");
    write_pt(&path, &tensors, "");
    // Refused by default, naming the way out; imported with every ReLU kept when asked.
    let err = import_checkpoint(&ImportConfig::new("wrn22-8", &path, "")).unwrap_err();
    assert!(matches!(&err, LinearizeError::Import { source: CheckpointError::NoMasks { .. }, .. }), "{err}");
    assert!(chain(&err).contains("--all-relus"), "{}", chain(&err));
    let config = ImportConfig { without_masks: WithoutMasks::KeepAllRelus, ..ImportConfig::new("wrn22-8", &path, "") };
    let (imported, report) = import_checkpoint(&config).unwrap();
    assert!(!report.had_masks);
    assert_eq!(imported.kept_relus(), 1_359_872);
    assert_eq!(imported.tensors["block1.layer.0.conv1.weight"], model.tensors["block1.layer.0.conv1.weight"]);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.pt");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let err = import_checkpoint(&ImportConfig::new("resnet18", &garbage, "")).unwrap_err();
    assert!(matches!(&err, LinearizeError::NotPytorch { path, .. } if *path == garbage), "{err}");
    assert!(chain(&err).contains("garbage.pt"), "{}", chain(&err));

    let (_, mut tensors) = snl_tensors("resnet18");
    tensors.remove("layer2.1.conv2.weight");
    let missing = tmp.path().join("missing.safetensors");
    write_safetensors(&missing, &tensors);
    let err = import_checkpoint(&ImportConfig::new("resnet18", &missing, "")).unwrap_err();
    assert!(
        matches!(
            &err,
            LinearizeError::Import { path, source: CheckpointError::Missing { missing: names, .. } }
                if *path == missing && names == &["layer2.1.conv2.weight"]
        ),
        "{err}"
    );
    assert_eq!(
        chain(&err),
        format!("importing {}: checkpoint lacks 1 tensor(s) of resnet18: layer2.1.conv2.weight", missing.display())
    );

    let (_, mut tensors) = snl_tensors("resnet18");
    tensors.get_mut("layer1.0.conv1.weight").unwrap().0 = vec![64, 64, 9];
    let shaped = tmp.path().join("shape.safetensors");
    write_safetensors(&shaped, &tensors);
    let err = import_checkpoint(&ImportConfig::new("resnet18", &shaped, "")).unwrap_err();
    assert!(
        matches!(
            &err,
            LinearizeError::Import { source: CheckpointError::Shape { name, got, .. }, .. }
                if name == "layer1.0.conv1.weight" && got == &[64, 64, 9]
        ),
        "{err}"
    );
    assert!(chain(&err).contains("layer1.0.conv1.weight"), "{}", chain(&err));

    let absent = tmp.path().join("absent.pt");
    let err = import_checkpoint(&ImportConfig::new("resnet18", &absent, "")).unwrap_err();
    assert!(
        matches!(&err, LinearizeError::OpenCheckpoint { path, source }
            if *path == absent && source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(chain(&err).contains("absent.pt"), "{}", chain(&err));
    let err = import_checkpoint(&ImportConfig::new("small-cnn", &shaped, "")).unwrap_err();
    assert!(
        matches!(&err, LinearizeError::Import { source: CheckpointError::UnknownArch(a), .. } if a == "small-cnn"),
        "{err}"
    );
    assert!(chain(&err).contains("unknown architecture"), "{}", chain(&err));
}

/// `import` writes the (optionally folded) model and the report file, and returns the report.
#[test]
fn import_writes_the_model_and_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tensors) = snl_tensors("resnet18");
    let checkpoint = tmp.path().join("snl.safetensors");
    write_safetensors(&checkpoint, &tensors);
    let out = tmp.path().join("imported.safetensors");
    let mut config = ImportConfig::new("resnet18", &checkpoint, &out);
    config.report = Some(tmp.path().join("import.json"));
    let report = import(&config).unwrap();
    assert_eq!(report.checkpoint, checkpoint.display().to_string());
    assert_eq!(report.out, out.display().to_string());
    assert_eq!(report.relus_kept, model.kept_relus());
    let written = pi_model::load(&out).unwrap();
    assert!(!written.is_folded(), "import keeps BatchNorm by default");
    assert_same(&model, &written);
    let text = std::fs::read_to_string(tmp.path().join("import.json")).unwrap();
    assert_eq!(text, serde_json::to_string_pretty(&report).unwrap());
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "arch",
        "classes",
        "checkpoint",
        "out",
        "tensors_read",
        "ignored",
        "renamed",
        "had_masks",
        "non_binary_alphas",
        "relus_total",
        "relus_kept",
    ] {
        assert!(json.get(key).is_some(), "{key} missing");
    }

    config.fold = true;
    config.report = None;
    import(&config).unwrap();
    let folded = pi_model::load(&out).unwrap();
    assert!(folded.is_folded());
    assert_eq!(folded.kept_relus(), model.kept_relus());
}

/// What import skips and changes is all in the report: optimizer state outside the state dict
/// (`model_state_dict` here), integer counters, non-binary alphas (counted, binarised at the
/// threshold); `--rename fc=linear` maps a classifier named `fc`.
#[test]
fn import_reports_every_skipped_entry_and_renames_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tensors) = snl_tensors("resnet18");
    let mut wrapped: Tensors = BTreeMap::new();
    for (k, v) in tensors {
        let k = k.replacen("linear.", "fc.", 1);
        wrapped.insert(format!("model_state_dict.{k}"), v);
    }
    wrapped.insert("optimizer_state.momentum.0".into(), (vec![2], vec![0.5, 0.5]));
    // A mid-SNL checkpoint: three alphas strictly between 0 and 1.
    let alphas = wrapped.get_mut("model_state_dict.layer1.0.alpha1.alphas").unwrap();
    alphas.1[0] = 0.3;
    alphas.1[1] = 0.005;
    alphas.1[2] = 0.7;
    let path = tmp.path().join("wrapped.safetensors");
    write_safetensors(&path, &wrapped);
    // Add an integer counter the way BatchNorm stores it (i64), which the import must list.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let counter = 7i64.to_le_bytes();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    views.push((
        "model_state_dict.bn1.num_batches_tracked".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &counter).unwrap(),
    ));
    let path = tmp.path().join("wrapped2.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();

    let err = import_checkpoint(&ImportConfig::new("resnet18", &path, "")).unwrap_err();
    assert!(chain(&err).contains("--rename FROM=linear"), "{}", chain(&err));
    let config =
        ImportConfig { renames: vec![("fc".into(), "linear".into())], ..ImportConfig::new("resnet18", &path, "") };
    let (imported, report) = import_checkpoint(&config).unwrap();
    assert_eq!(report.renamed, ["fc=linear (2 entries)"]);
    assert_eq!(
        report.ignored,
        ["bn1.num_batches_tracked (not floating point: I64)", "optimizer_state.momentum.0 (outside model_state_dict)"]
    );
    assert_eq!(report.non_binary_alphas, 3);
    let mask = &imported.tensors["layer1.0.relu1.mask"];
    let flat: Vec<f32> = mask.iter().copied().take(3).collect();
    assert_eq!(flat, [1.0, 0.0, 1.0], "binarised at the 0.01 threshold");
    assert_eq!(imported.tensors["linear.weight"], model.tensors["linear.weight"]);
}

/// `export --format snl` is the inverse of import: the reference's names, `[1, C, H, W]` alphas
/// and a `num_batches_tracked` per BatchNorm (what `load_state_dict(strict=True)` wants); an
/// unfolded model comes back tensor for tensor, a folded one (BatchNorm rebuilt as identity-scale
/// layers carrying the folded bias) computes the same logits.
#[test]
fn export_snl_round_trips_through_import() {
    use pi_linearizer::export_snl;
    let tmp = tempfile::tempdir().unwrap();
    for arch_name in ["resnet18", "wrn22-8"] {
        let model = Model::random(arch::build(arch_name, 10).unwrap(), 5, Some(0.3)).unwrap();
        let src = tmp.path().join(format!("{arch_name}.safetensors"));
        pi_model::save(&model, &src).unwrap();
        let out = tmp.path().join(format!("{arch_name}-snl.safetensors"));
        let report = export_snl(&src, &out).unwrap();
        assert_eq!(report.batchnorm, "kept");
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let bn = model.graph.nodes.iter().filter(|n| n.op.kind() == "batchnorm").count();
        let counters = st.names().iter().filter(|n| n.ends_with(".num_batches_tracked")).count();
        assert_eq!(counters, bn);
        let alpha = if arch_name == "resnet18" { "layer1.0.alpha1.alphas" } else { "block1.layer.0.alpha1.alphas" };
        assert_eq!(st.tensor(alpha).unwrap().shape().len(), 4);
        assert_eq!(st.tensor(alpha).unwrap().shape()[0], 1);
        let (back, import_report) = import_checkpoint(&ImportConfig::new(arch_name, &out, "")).unwrap();
        assert_same(&model, &back);
        assert_eq!(import_report.ignored.len(), bn, "only the counters are not part of our model");

        // Folded: the same function after export and import.
        let folded = model.fold_batchnorm();
        let src = tmp.path().join(format!("{arch_name}-folded.safetensors"));
        pi_model::save(&folded, &src).unwrap();
        let report = export_snl(&src, &out).unwrap();
        assert_eq!(report.batchnorm, "unfolded");
        let (back, _) = import_checkpoint(&ImportConfig::new(arch_name, &out, "")).unwrap();
        let n: usize = model.graph.input_shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let want = pi_model::engine::run_f32(&folded, &x).unwrap();
        let got = pi_model::engine::run_f32(&back.fold_batchnorm(), &x).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-4 * scale.max(1.0), "{want:?} vs {got:?}");
        }
    }
    let small = tmp.path().join("small.safetensors");
    pi_model::save(&Model::random(arch::small_cnn(10).unwrap(), 1, None).unwrap(), &small).unwrap();
    let err = export_snl(&small, &tmp.path().join("x.safetensors")).unwrap_err();
    assert!(chain(&err).contains("resnet18 and wrn22-8"), "{}", chain(&err));
}
