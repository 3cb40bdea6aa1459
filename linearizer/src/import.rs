//! `import`: PyTorch checkpoints (`.pt`/`.pth`/`.pth.tar` through burn-store's reader, and
//! `.safetensors`) of ResNet-18 and WRN-22-8 with the parameter names of the public SNL code
//! (`layer1.0.conv1.weight`, `layer1.0.alpha1.alphas`, `block1.layer.0.convShortcut.weight`, ...)
//! into the project's model format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch_reader::{DType as PtDType, PytorchReader};
use ndarray::{ArrayD, IxDyn};
use pi_model::data::Normalization;
use pi_model::{Model, arch};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{CheckpointError, LinearizeError, Result};
use crate::report::write_report;

/// What `import` does: which checkpoint, of which architecture, into which model file.
/// [`ImportConfig::new`] gives the defaults of `pi import`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportConfig {
    /// Architecture of the checkpoint: resnet18 (SNL's ResNet18_IN, no stem ReLU) or wrn22-8.
    pub arch: String,
    /// Checkpoint: .pt/.pth/.pth.tar (a `torch.save`d state_dict, possibly under `state_dict`
    /// and with DataParallel's `module.` prefix) or .safetensors.
    pub checkpoint: PathBuf,
    /// Output model file (.safetensors).
    pub out: PathBuf,
    /// Number of classes; `None`: read from the classifier weight.
    pub classes: Option<usize>,
    /// SNL alphas above this value become ReLUs (mask 1), the others identities (mask 0).
    pub threshold: f32,
    /// Write the inference form (BatchNorm folded); unfolded files can be trained further by
    /// `linearize`.
    pub fold: bool,
    /// Also write the JSON report to this file.
    pub report: Option<PathBuf>,
    /// What to do with a checkpoint that carries no SNL alphas.
    pub without_masks: WithoutMasks,
    /// The input normalisation the network was trained with; `None`: the SNL reference code's
    /// constants for the dataset the class count names (10: CIFAR-10, 100: CIFAR-100).
    pub normalization: Option<Normalization>,
    /// Checkpoint name prefixes to rename before matching (`fc` -> `linear`: a ResNet-18 whose
    /// classifier is called `fc`). A prefix matches whole dotted components only.
    pub renames: Vec<(String, String)>,
}

/// A checkpoint without SNL alphas (`...alphaK.alphas`) describes a network with every ReLU: a
/// plain trained network, or a file whose alphas sit under names the import does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithoutMasks {
    /// Refuse it, naming what is missing (the default: silently keeping every ReLU hides a
    /// naming mistake).
    Refuse,
    /// Import it with every ReLU kept (`pi import --all-relus`).
    KeepAllRelus,
}

/// Top-level keys under which checkpoints keep the network's state dict (the first one present
/// is unwrapped; everything outside it is reported as ignored).
const CONTAINERS: [&str; 4] = ["state_dict", "model_state_dict", "net", "model"];

impl ImportConfig {
    /// The defaults of `pi import`: class count from the checkpoint, alpha threshold 0.01,
    /// BatchNorm kept unfolded, no report file.
    pub fn new(arch: impl Into<String>, checkpoint: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        ImportConfig {
            arch: arch.into(),
            checkpoint: checkpoint.into(),
            out: out.into(),
            classes: None,
            threshold: 0.01,
            fold: false,
            report: None,
            without_masks: WithoutMasks::Refuse,
            normalization: None,
            renames: Vec::new(),
        }
    }
}

/// JSON report of `import`.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub arch: String,
    pub classes: usize,
    pub checkpoint: String,
    pub out: String,
    pub tensors_read: usize,
    /// Checkpoint entries that are not part of the network, with why: outside the state dict
    /// (optimizer state...), not floating point (`num_batches_tracked`...), or not a tensor of the
    /// architecture. Sorted by name.
    pub ignored: Vec<String>,
    /// Renamed prefixes (`FROM=TO`) and how many entries each renamed.
    pub renamed: Vec<String>,
    /// True when the checkpoint carried SNL alphas (else every ReLU is kept).
    pub had_masks: bool,
    /// Alphas that were neither 0 nor 1 and were binarised at the threshold.
    pub non_binary_alphas: usize,
    pub relus_total: usize,
    pub relus_kept: usize,
    /// The input normalisation written into the model.
    pub normalization: Normalization,
    /// Where it came from: `given` or the reference constants' preset name (`snl-cifar10`...).
    pub normalization_source: String,
}

/// A checkpoint tensor converted to f32.
struct Raw {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn decode(name: &str, bytes: &[u8], kind: &'static str) -> Result<Vec<f32>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match kind {
        "f32" => chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        "f64" => chunks(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        "f16" => chunks(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        "bf16" => chunks(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
        other => {
            return Err(LinearizeError::TensorType { name: name.to_string(), dtype: other });
        }
    })
}

/// Reads every tensor of a PyTorch checkpoint; integer tensors (e.g. BatchNorm's
/// `num_batches_tracked`) are skipped.
fn read_pytorch(path: &Path, skipped: &mut Vec<String>) -> Result<BTreeMap<String, Raw>> {
    let reader =
        PytorchReader::new(path).map_err(|reason| LinearizeError::NotPytorch { path: path.to_path_buf(), reason })?;
    let mut out = BTreeMap::new();
    for (name, t) in reader.tensors() {
        let kind = match t.dtype() {
            PtDType::F32 => "f32",
            PtDType::F64 => "f64",
            PtDType::F16 => "f16",
            PtDType::BF16 => "bf16",
            other => {
                skipped.push(format!("{name} (not floating point: {other:?})"));
                continue;
            }
        };
        let bytes = t.read().map_err(|source| LinearizeError::ReadTensor { name: name.clone(), source })?;
        out.insert(name.clone(), Raw { shape: t.shape().to_vec(), data: decode(name, &bytes, kind)? });
    }
    Ok(out)
}

/// Reads every floating-point tensor of a safetensors file.
fn read_safetensors(path: &Path, skipped: &mut Vec<String>) -> Result<BTreeMap<String, Raw>> {
    let bytes =
        std::fs::read(path).map_err(|source| LinearizeError::ReadCheckpoint { path: path.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|reason| LinearizeError::NotSafetensors { path: path.to_path_buf(), reason })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            other => {
                skipped.push(format!("{name} (not floating point: {other:?})"));
                continue;
            }
        };
        out.insert(name.clone(), Raw { shape: view.shape().to_vec(), data: decode(&name, view.data(), kind)? });
    }
    Ok(out)
}

/// What a checkpoint file holds for the import: the network's tensors (unwrapped, renamed), the
/// entries skipped (each with why), and the renames applied (with counts).
struct Checkpoint {
    tensors: BTreeMap<String, Raw>,
    skipped: Vec<String>,
    renamed: Vec<String>,
}

/// Reads a checkpoint by its content: safetensors files start with a little-endian header
/// length followed by `{`; anything else goes to the PyTorch reader.
fn read_checkpoint(path: &Path, renames: &[(String, String)]) -> Result<Checkpoint> {
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(path)
            .map_err(|source| LinearizeError::OpenCheckpoint { path: path.to_path_buf(), source })?;
        let mut h = [0u8; 9];
        let n = f.read(&mut h).map_err(|source| LinearizeError::ReadCheckpoint { path: path.to_path_buf(), source })?;
        h[..n].to_vec()
    };
    let is_safetensors =
        head.len() == 9 && head[8] == b'{' && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) < (1 << 30);
    let mut skipped = Vec::new();
    let mut tensors =
        if is_safetensors { read_safetensors(path, &mut skipped)? } else { read_pytorch(path, &mut skipped)? };
    // `{'state_dict': ..., 'optimizer': ...}` (or `model_state_dict`, `net`, `model`) -> the
    // state dict; everything else is reported.
    if let Some(c) = CONTAINERS.iter().find(|c| tensors.keys().any(|k| k.starts_with(&format!("{c}.")))) {
        let prefix = format!("{c}.");
        let (inside, outside): (BTreeMap<_, _>, BTreeMap<_, _>) =
            tensors.into_iter().partition(|(k, _)| k.starts_with(&prefix));
        skipped.extend(outside.into_keys().map(|k| format!("{k} (outside {c})")));
        skipped = skipped.into_iter().map(|k| k.strip_prefix(&prefix).map(str::to_string).unwrap_or(k)).collect();
        tensors = inside.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
    }
    // DataParallel's `module.` prefix.
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    if tensors.is_empty() {
        return Err(LinearizeError::EmptyCheckpoint { path: path.to_path_buf() });
    }
    let mut renamed = Vec::new();
    for (from, to) in renames {
        let mut n = 0;
        tensors = tensors
            .into_iter()
            .map(|(k, v)| match rename(&k, from, to) {
                Some(r) => {
                    n += 1;
                    (r, v)
                }
                None => (k, v),
            })
            .collect();
        renamed.push(format!("{from}={to} ({n} entries)"));
    }
    Ok(Checkpoint { tensors, skipped, renamed })
}

/// `key` with its leading dotted components `from` replaced by `to` (`None` if it does not start
/// with them).
fn rename(key: &str, from: &str, to: &str) -> Option<String> {
    let rest = key.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with('.')).then(|| format!("{to}{rest}"))
}

/// The checkpoint name of a model tensor: ReLU masks `X.reluK.mask` are SNL's `X.alphaK.alphas`.
fn checkpoint_name(tensor: &str) -> Option<String> {
    let stem = tensor.strip_suffix(".mask")?;
    let (prefix, last) = stem.rsplit_once('.').unwrap_or(("", stem));
    let k = last.strip_prefix("relu")?;
    Some(if prefix.is_empty() { format!("alpha{k}.alphas") } else { format!("{prefix}.alpha{k}.alphas") })
}

/// Builds a model of `arch` from checkpoint tensors; returns it with the import statistics.
fn convert(
    config: &ImportConfig,
    mut tensors: BTreeMap<String, Raw>,
    skipped: Vec<String>,
) -> Result<(Model, ImportReport), CheckpointError> {
    let (arch_name, classes, threshold) = (config.arch.as_str(), config.classes, config.threshold);
    if !matches!(arch_name, "resnet18" | "wrn22-8") {
        return Err(CheckpointError::UnknownArch(arch_name.to_string()));
    }
    let classifier = if arch_name == "resnet18" { "linear.weight" } else { "fc.weight" };
    let classes = match classes {
        Some(c) => c,
        None => match tensors.get(classifier) {
            Some(t) if t.shape.len() == 2 => t.shape[0],
            _ => {
                return Err(CheckpointError::NoClassifier { classifier, arch: arch_name.to_string() });
            }
        },
    };
    let graph = arch::build(arch_name, classes)?;
    let (normalization, normalization_source) = match &config.normalization {
        Some(n) => (n.clone(), "given".to_string()),
        None => {
            let preset = match classes {
                10 => "snl-cifar10",
                100 => "snl-cifar100",
                _ => return Err(CheckpointError::UnknownNormalization { classes, arch: arch_name.to_string() }),
            };
            (Normalization::preset(preset).expect("known preset"), preset.to_string())
        }
    };
    normalization.check(graph.input_shape[0]).map_err(CheckpointError::BadNormalization)?;
    let expected = graph.expected_tensors();
    let has_alphas = tensors.keys().any(|k| k.ends_with(".alphas") || k.ends_with(".mask"));
    if !has_alphas && config.without_masks == WithoutMasks::Refuse {
        let relus = graph.expected_tensors().iter().filter(|(n, _)| n.ends_with(".mask")).count();
        return Err(CheckpointError::NoMasks { arch: arch_name.to_string(), relu_layers: relus });
    }
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    let mut non_binary = 0;
    for (name, shape) in &expected {
        let mask_name = checkpoint_name(name);
        let raw = tensors.remove(name).or_else(|| mask_name.as_ref().and_then(|m| tensors.remove(m)));
        let numel: usize = shape.iter().product();
        let data = match raw {
            Some(r) => {
                let squeezed: Vec<usize> = r.shape.iter().copied().filter(|&d| d != 1).collect();
                let want: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
                if r.data.len() != numel || squeezed != want {
                    return Err(CheckpointError::Shape {
                        name: name.clone(),
                        got: r.shape,
                        expected: shape.clone(),
                        arch: arch_name.to_string(),
                    });
                }
                if let Some(index) = r.data.iter().position(|v| !v.is_finite()) {
                    return Err(CheckpointError::NonFinite { name: name.clone(), index });
                }
                if mask_name.is_some() {
                    non_binary += r.data.iter().filter(|&&v| v != 0.0 && v != 1.0).count();
                    r.data.iter().map(|&v| if v > threshold { 1.0 } else { 0.0 }).collect()
                } else {
                    r.data
                }
            }
            None if mask_name.is_some() && !has_alphas => vec![1.0; numel],
            None => {
                missing.push(mask_name.unwrap_or_else(|| name.clone()));
                continue;
            }
        };
        out.insert(name.clone(), ArrayD::from_shape_vec(IxDyn(shape), data).expect("checked size"));
    }
    if !missing.is_empty() {
        return Err(CheckpointError::Missing { arch: arch_name.to_string(), missing });
    }
    let mut ignored: Vec<String> = tensors.into_keys().map(|k| format!("{k} (not a tensor of {arch_name})")).collect();
    ignored.extend(skipped);
    ignored.sort();
    let model = Model { graph, tensors: out, normalization: normalization.clone() };
    let report = ImportReport {
        arch: arch_name.to_string(),
        classes,
        checkpoint: String::new(),
        out: String::new(),
        tensors_read: expected.len(),
        ignored,
        renamed: Vec::new(),
        had_masks: has_alphas,
        non_binary_alphas: non_binary,
        relus_total: model.relu_counts().iter().map(|c| c.total).sum(),
        relus_kept: model.kept_relus(),
        normalization,
        normalization_source,
    };
    Ok((model, report))
}

/// Reads `config.checkpoint` into a model of `config.arch` (unfolded BatchNorm); nothing is written.
pub fn import_checkpoint(config: &ImportConfig) -> Result<(Model, ImportReport)> {
    let path = &config.checkpoint;
    let c = read_checkpoint(path, &config.renames)?;
    let (model, mut report) = convert(config, c.tensors, c.skipped)
        .map_err(|source| LinearizeError::Import { path: path.to_path_buf(), source })?;
    report.renamed = c.renamed;
    Ok((model, report))
}

/// Imports a checkpoint (see [`ImportConfig`]), saves the model to `out`, writes the report file
/// when asked, and returns the report.
pub fn import(config: &ImportConfig) -> Result<ImportReport> {
    let (model, mut report) = import_checkpoint(config)?;
    if !report.ignored.is_empty() {
        warn!(count = report.ignored.len(), first = %report.ignored[0], "checkpoint entries not used by the network (all in the report's `ignored`)");
    }
    if report.non_binary_alphas > 0 {
        warn!(
            count = report.non_binary_alphas,
            threshold = config.threshold,
            "alphas neither 0 nor 1 (a checkpoint saved during mask learning?) were binarised: above the threshold a ReLU, else an identity"
        );
    }
    if !report.had_masks {
        warn!(relus = report.relus_kept, "no SNL alphas in the checkpoint: every ReLU kept (--all-relus)");
    }
    let out_model = if config.fold { model.fold_batchnorm() } else { model };
    pi_model::save(&out_model, &config.out)
        .map_err(|source| LinearizeError::SaveModel { path: config.out.clone(), source })?;
    report.checkpoint = config.checkpoint.display().to_string();
    report.out = config.out.display().to_string();
    info!(arch = %report.arch, relus = report.relus_kept, out = %report.out, "imported");
    if let Some(path) = &config.report {
        write_report(&report, path)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_names_follow_snl() {
        assert_eq!(checkpoint_name("layer1.0.relu1.mask").as_deref(), Some("layer1.0.alpha1.alphas"));
        assert_eq!(checkpoint_name("block2.layer.1.relu2.mask").as_deref(), Some("block2.layer.1.alpha2.alphas"));
        assert_eq!(checkpoint_name("conv1.weight"), None);
    }

    #[test]
    fn renames_match_whole_components() {
        assert_eq!(rename("fc.weight", "fc", "linear").as_deref(), Some("linear.weight"));
        assert_eq!(rename("fc", "fc", "linear").as_deref(), Some("linear"));
        assert_eq!(rename("fcx.weight", "fc", "linear"), None);
        assert_eq!(rename("layer1.0.conv1.weight", "layer1.0", "layer1.1").as_deref(), Some("layer1.1.conv1.weight"));
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert!((f16_to_f32(0x0001) - 5.960_464_5e-8).abs() < 1e-12);
    }
}
