//! `export --format snl`: the way back to the public SNL code. Writes a model's state dict with
//! the reference's parameter names (`layer1.0.alpha1.alphas` of shape `[1, C, H, W]`,
//! BatchNorm with `num_batches_tracked`), loadable with `load_state_dict(strict=True)` after
//! `safetensors.torch.load_file`, so a network linearized here can be finetuned there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use pi_model::data::Normalization;
use pi_model::{Model, Op, arch};
use serde::Serialize;

use crate::error::{LinearizeError, Result};

/// What `export` wrote.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub model: String,
    pub out: String,
    pub arch: String,
    pub classes: usize,
    /// Entries written (parameters, buffers, alphas).
    pub tensors: usize,
    /// How BatchNorm was written: `kept` (the model had it) or `unfolded` (the model had it folded
    /// into the convolutions; each BatchNorm is written as the exact identity-scale layer that
    /// carries the folded bias, so the network computes the same function).
    pub batchnorm: &'static str,
    pub relus_total: usize,
    pub relus_kept: usize,
    /// The input normalisation the network expects (`transforms.Normalize(mean, std)` in
    /// PyTorch); also in the file's metadata under `normalization`.
    pub normalization: Normalization,
}

/// SNL's name of a model tensor: the ReLU mask `X.reluK.mask` is `X.alphaK.alphas`.
fn snl_name(name: &str) -> String {
    let Some(stem) = name.strip_suffix(".mask") else { return name.to_string() };
    let (prefix, last) = stem.rsplit_once('.').unwrap_or(("", stem));
    match last.strip_prefix("relu") {
        Some(k) if prefix.is_empty() => format!("alpha{k}.alphas"),
        Some(k) => format!("{prefix}.alpha{k}.alphas"),
        None => name.to_string(),
    }
}

/// The model as the reference's unfolded network: its own tensors when it kept BatchNorm; when it
/// was folded, each BatchNorm rebuilt from what folding left (the preceding convolution's bias, or
/// the 1x1 diagonal convolution a BatchNorm after a non-convolution became).
fn unfolded(model: &Model) -> std::result::Result<(Model, &'static str), String> {
    let graph = arch::build(&model.graph.arch, model.graph.classes).map_err(|e| e.to_string())?;
    if !model.is_folded() {
        if model.graph.nodes != graph.nodes {
            return Err(format!("the model's graph is not the {} architecture's", model.graph.arch));
        }
        return Ok((model.clone(), "kept"));
    }
    let index = graph.index();
    let mut tensors = BTreeMap::new();
    let missing = |name: &str| format!("folded model lacks {name}");
    for (name, shape) in graph.expected_tensors() {
        let (node_name, param) = name.rsplit_once('.').expect("node.param");
        let node = &graph.nodes[index[node_name]];
        let value = match (&node.op, param) {
            (Op::Batchnorm { channels, eps }, _) => {
                let c = *channels;
                let diagonal = model.try_tensor(node_name, "weight").filter(|w| w.shape() == [c, c, 1, 1]);
                let (scale, bias): (Vec<f32>, Vec<f32>) = match diagonal {
                    // A BatchNorm after a non-convolution became a 1x1 diagonal convolution.
                    Some(w) => {
                        let b =
                            model.try_tensor(node_name, "bias").ok_or_else(|| missing(&format!("{node_name}.bias")))?;
                        ((0..c).map(|i| w[[i, i, 0, 0]]).collect(), b.iter().copied().collect())
                    }
                    // Folded into the convolution before it: the convolution's bias is the shift.
                    None => {
                        let conv = &node.inputs[0];
                        let b = model.try_tensor(conv, "bias").ok_or_else(|| missing(&format!("{conv}.bias")))?;
                        (vec![1.0; c], b.iter().copied().collect())
                    }
                };
                match param {
                    "weight" => scale,
                    "bias" => bias,
                    "running_mean" => vec![0.0; c],
                    // (var + eps).sqrt() = 1: the layer only scales and shifts.
                    "running_var" => vec![1.0 - eps; c],
                    other => return Err(format!("unexpected BatchNorm parameter {other}")),
                }
            }
            _ => model.try_tensor(node_name, param).ok_or_else(|| missing(&name))?.iter().copied().collect(),
        };
        let array = ArrayD::from_shape_vec(IxDyn(&shape), value).map_err(|e| format!("{name}: {e}"))?;
        tensors.insert(name, array);
    }
    Ok((Model { graph, tensors, normalization: model.normalization.clone() }, "unfolded"))
}

/// Writes `model` as a state dict of the public SNL code (ResNet-18 or WRN-22-8) to `out`.
pub fn export_snl(model_path: &Path, out: &Path) -> Result<ExportReport> {
    let bad = |reason: String| LinearizeError::Export { path: model_path.to_path_buf(), reason };
    let model = pi_model::load(model_path)
        .map_err(|source| LinearizeError::LoadModel { path: model_path.to_path_buf(), source })?;
    if !matches!(model.graph.arch.as_str(), "resnet18" | "wrn22-8") {
        return Err(bad(format!("the SNL reference code defines resnet18 and wrn22-8, not {:?}", model.graph.arch)));
    }
    let (net, batchnorm) = unfolded(&model).map_err(bad)?;
    // The unfolded network must compute what the model computes: folding it again gives the
    // model's own tensors back (up to float rounding).
    if batchnorm == "unfolded" {
        let again = net.fold_batchnorm();
        for (name, t) in &model.tensors {
            let Some(u) = again.tensors.get(name) else { return Err(bad(format!("refolding lost {name}"))) };
            let close =
                t.shape() == u.shape() && t.iter().zip(u.iter()).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + a.abs()));
            if !close {
                return Err(bad(format!("refolding does not give {name} back")));
            }
        }
    }
    let shapes = net.graph.shapes();
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = Vec::new();
    for (name, t) in &net.tensors {
        let mut shape = t.shape().to_vec();
        if name.ends_with(".mask") {
            let node = name.trim_end_matches(".mask");
            let input = &net.graph.nodes[net.graph.index()[node]].inputs[0];
            shape = std::iter::once(1).chain(shapes[input].iter().copied()).collect();
            if shape.iter().product::<usize>() != t.len() {
                return Err(bad(format!("{name}: channel-granularity masks have no SNL equivalent")));
            }
        }
        let bytes = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        entries.push((snl_name(name), shape, bytes, safetensors::Dtype::F32));
    }
    for n in &net.graph.nodes {
        if matches!(n.op, Op::Batchnorm { .. }) {
            entries.push((
                format!("{}.num_batches_tracked", n.name),
                vec![],
                0i64.to_le_bytes().to_vec(),
                safetensors::Dtype::I64,
            ));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let views = entries
        .iter()
        .map(|(n, s, b, d)| safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let norm_json = serde_json::to_string(&model.normalization).map_err(|e| bad(e.to_string()))?;
    let meta = std::collections::HashMap::from([("normalization".to_string(), norm_json)]);
    safetensors::serialize_to_file(views, Some(meta), out)
        .map_err(|e| LinearizeError::Export { path: PathBuf::from(out), reason: format!("writing: {e}") })?;
    Ok(ExportReport {
        model: model_path.display().to_string(),
        out: out.display().to_string(),
        arch: model.graph.arch.clone(),
        classes: model.graph.classes,
        tensors: entries.len(),
        batchnorm,
        relus_total: model.relu_counts().iter().map(|c| c.total).sum(),
        relus_kept: model.kept_relus(),
        normalization: model.normalization.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::snl_name;

    #[test]
    fn mask_names_are_snl_alphas() {
        assert_eq!(snl_name("layer1.0.relu1.mask"), "layer1.0.alpha1.alphas");
        assert_eq!(snl_name("block1.layer.0.relu2.mask"), "block1.layer.0.alpha2.alphas");
        assert_eq!(snl_name("conv1.weight"), "conv1.weight");
    }
}
