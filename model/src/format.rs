//! The model file: one `.safetensors` file with f32 tensors for weights and masks and, in the
//! `__metadata__`, the architecture as JSON, the input normalisation as JSON, the format version
//! and a content hash.
//!
//! Version 1 files (no normalisation) still load, with the normalisation their data format
//! implied ([`Normalization::legacy_default`]).

use crate::data::Normalization;
use crate::graph::{Graph, GraphError, Op};
use crate::model::{Model, Tensor};
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensorError, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "pi-model";
/// Current format version (metadata key `format_version`).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Layer kinds a file may contain.
pub const LAYER_KINDS: &[&str] =
    &["conv2d", "batchnorm", "linear", "relu", "add", "avg_pool", "global_avg_pool", "flatten"];

/// Why a model file could not be loaded. Each variant names the problem.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("truncated file: {0}")]
    Truncated(String),
    #[error("not a safetensors file: {0}")]
    Malformed(String),
    #[error("no pi-model metadata (key {0:?} missing): not a model file of this project")]
    MissingMetadata(&'static str),
    #[error(
        "unsupported format version {found} (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: String },
    #[error("unknown layer kind {kind:?} in node {node:?} (known: {known})", known = LAYER_KINDS.join(", "))]
    UnknownLayerKind { node: String, kind: String },
    #[error("bad architecture JSON: {0}")]
    BadArchitecture(String),
    #[error("invalid graph: {0}")]
    Graph(#[from] GraphError),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("extra tensor {0:?} that no layer uses")]
    ExtraTensor(String),
    #[error("tensor {name:?} has shape {got:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("mask {name:?} has shape {got:?}, but its ReLU's activation needs {expected:?}")]
    MaskShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("mask {name:?} holds {value}, masks must be 0 or 1")]
    MaskValue { name: String, value: f32 },
    #[error("tensor {name:?} has dtype {dtype}, expected F32")]
    WrongDtype { name: String, dtype: String },
    #[error("tensor {name:?} holds a non-finite value at index {index}")]
    NonFinite { name: String, index: usize },
    #[error("bad input normalisation in the metadata: {0}")]
    BadNormalization(String),
    #[error("content hash mismatch: file says {stored}, contents hash to {computed} (corrupted file)")]
    HashMismatch { stored: String, computed: String },
}

/// Content hash (hex blake3) of a model: the architecture JSON, every tensor's name, shape and
/// bytes, and the input normalisation (it changes the function the model computes).
pub fn content_hash(model: &Model) -> String {
    let mut h = hash_body(model);
    let norm = serde_json::to_vec(&model.normalization).expect("normalisation serialises");
    h.update(b"normalization\0");
    h.update(&(norm.len() as u64).to_le_bytes());
    h.update(&norm);
    h.finalize().to_hex().to_string()
}

/// The hash a version-1 file stored: architecture and tensors only.
fn content_hash_v1(model: &Model) -> String {
    hash_body(model).finalize().to_hex().to_string()
}

fn hash_body(model: &Model) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(b"pi-model v1\0");
    let arch = serde_json::to_vec(&model.graph).expect("graph serialises");
    h.update(&(arch.len() as u64).to_le_bytes());
    h.update(&arch);
    for (name, t) in &model.tensors {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(t.ndim() as u64).to_le_bytes());
        for d in t.shape() {
            h.update(&(*d as u64).to_le_bytes());
        }
        for v in t.iter() {
            h.update(&v.to_le_bytes());
        }
    }
    h
}

/// Serialises a model to the bytes of a `.safetensors` file.
pub fn to_bytes(model: &Model) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = model
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape().to_vec()))
        .collect();
    let views = data.iter().map(|(k, bytes, shape)| {
        (k.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view"))
    });
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT_NAME.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("architecture".to_string(), serde_json::to_string(&model.graph).expect("graph serialises"));
    meta.insert(
        "normalization".to_string(),
        serde_json::to_string(&model.normalization).expect("normalisation serialises"),
    );
    meta.insert("hash".to_string(), content_hash(model));
    canonical_header(safetensors::serialize(views, Some(meta)).expect("valid model serialises"))
}

/// Rewrites a safetensors file's JSON header with its keys sorted (tensor entries and metadata):
/// `safetensors` writes the metadata in a `HashMap`'s random order, and the same model must give
/// the same bytes. Offsets are relative to the data section, so only the header changes.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote a JSON object");
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(meta.take()).expect("string metadata");
        *meta = serde_json::to_value(sorted).expect("strings serialise");
    }
    let mut json = serde_json::to_vec(&header).expect("JSON serialises");
    // Keys in order at every level (serde_json may keep parse order inside objects).
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) {
        json = serde_json::to_vec(&sorted_value(v)).expect("JSON serialises");
    }
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// `v` with every object's keys in sorted order.
fn sorted_value(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, sorted_value(v))).collect();
            serde_json::to_value(sorted).expect("JSON serialises")
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted_value).collect()),
        other => other,
    }
}

/// Writes a model file (atomically: a temporary file renamed into place).
pub fn save(model: &Model, path: &Path) -> Result<(), FormatError> {
    let io = |source| FormatError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, to_bytes(model)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and validates a model file.
pub fn load(path: &Path) -> Result<Model, FormatError> {
    load_versioned(path).map(|(model, _)| model)
}

/// [`load`], also telling the file's format version (1: the normalisation was implied).
pub fn load_versioned(path: &Path) -> Result<(Model, u32), FormatError> {
    let bytes = std::fs::read(path).map_err(|source| FormatError::Io { path: path.display().to_string(), source })?;
    load_bytes_versioned(&bytes)
}

fn map_st(e: SafeTensorError) -> FormatError {
    match e {
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            FormatError::Truncated("the header is cut short".into())
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            FormatError::Truncated("the tensor data does not match the header's offsets".into())
        }
        other => FormatError::Malformed(other.to_string()),
    }
}

/// Parses the architecture JSON, naming unknown layer kinds precisely.
fn parse_graph(json: &str) -> Result<Graph, FormatError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| FormatError::BadArchitecture(e.to_string()))?;
    if let Some(nodes) = value.get("nodes").and_then(|n| n.as_array()) {
        for n in nodes {
            let kind = n.get("op").and_then(|k| k.as_str()).unwrap_or("");
            if !LAYER_KINDS.contains(&kind) {
                let node = n.get("name").and_then(|k| k.as_str()).unwrap_or("?").to_string();
                return Err(FormatError::UnknownLayerKind { node, kind: kind.to_string() });
            }
        }
    }
    serde_json::from_value(value).map_err(|e| FormatError::BadArchitecture(e.to_string()))
}

/// Parses and validates the bytes of a model file. Never panics, whatever the bytes.
pub fn load_bytes(bytes: &[u8]) -> Result<Model, FormatError> {
    load_bytes_versioned(bytes).map(|(model, _)| model)
}

/// [`load_bytes`], also telling the file's format version.
pub fn load_bytes_versioned(bytes: &[u8]) -> Result<(Model, u32), FormatError> {
    let st = SafeTensors::deserialize(bytes).map_err(map_st)?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(map_st)?;
    let meta = metadata.metadata().as_ref().ok_or(FormatError::MissingMetadata("format"))?;
    if meta.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(FormatError::MissingMetadata("format"));
    }
    let version = meta.get("format_version").ok_or(FormatError::MissingMetadata("format_version"))?;
    let version = match version.parse::<u32>() {
        Ok(v) if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v) => v,
        _ => return Err(FormatError::UnsupportedVersion { found: version.clone() }),
    };
    let arch = meta.get("architecture").ok_or(FormatError::MissingMetadata("architecture"))?;
    let stored_hash = meta.get("hash").ok_or(FormatError::MissingMetadata("hash"))?;
    let graph = parse_graph(arch)?.validate()?;
    let normalization = if version >= 2 {
        let json = meta.get("normalization").ok_or(FormatError::MissingMetadata("normalization"))?;
        let norm: Normalization =
            serde_json::from_str(json).map_err(|e| FormatError::BadNormalization(e.to_string()))?;
        norm.check(graph.input_shape[0]).map_err(FormatError::BadNormalization)?;
        norm
    } else {
        Normalization::legacy_default(graph.input_shape[0], graph.classes)
    };
    let expected = graph.expected_tensors();

    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        let Some(shape) = expected.get(name) else {
            return Err(FormatError::ExtraTensor(name.to_string()));
        };
        if view.dtype() != Dtype::F32 {
            return Err(FormatError::WrongDtype { name: name.to_string(), dtype: format!("{:?}", view.dtype()) });
        }
        if view.shape() != shape.as_slice() {
            let (name, expected, got) = (name.to_string(), shape.clone(), view.shape().to_vec());
            return Err(if name.ends_with(".mask") {
                FormatError::MaskShape { name, expected, got }
            } else {
                FormatError::WrongShape { name, expected, got }
            });
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(FormatError::NonFinite { name: name.to_string(), index });
        }
        if name.ends_with(".mask")
            && let Some(&value) = data.iter().find(|&&v| v != 0.0 && v != 1.0)
        {
            return Err(FormatError::MaskValue { name: name.to_string(), value });
        }
        let t: Tensor = ArrayD::from_shape_vec(IxDyn(shape), data)
            .map_err(|e| FormatError::Malformed(format!("tensor {name:?}: {e}")))?;
        tensors.insert(name.to_string(), t);
    }
    if let Some(missing) = expected.keys().find(|k| !tensors.contains_key(*k)) {
        return Err(FormatError::MissingTensor(missing.clone()));
    }
    let model = Model { graph, tensors, normalization };
    let computed = if version >= 2 { content_hash(&model) } else { content_hash_v1(&model) };
    if &computed != stored_hash {
        return Err(FormatError::HashMismatch { stored: stored_hash.clone(), computed });
    }
    Ok((model, version))
}

/// True for the layer kinds that hold weights (for `pi inspect`).
pub fn has_weights(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::Linear { .. } | Op::Batchnorm { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use proptest::prelude::*;

    fn small() -> Model {
        Model::random(arch::small_cnn(10).unwrap(), 1, Some(0.5)).unwrap()
    }

    /// Re-serialises with edited metadata/tensors, keeping a valid hash unless told otherwise.
    fn write(graph_json: &str, tensors: &BTreeMap<String, Tensor>, version: &str, hash: Option<String>) -> Vec<u8> {
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape().to_vec()))
            .collect();
        let views = data.iter().map(|(k, b, s)| (k.as_str(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT_NAME.to_string());
        meta.insert("format_version".to_string(), version.to_string());
        meta.insert("architecture".to_string(), graph_json.to_string());
        meta.insert("hash".to_string(), hash.unwrap_or_default());
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    /// A version-1 file of `m` (no normalisation in the metadata, the old hash).
    fn rewrite(m: &Model) -> Vec<u8> {
        write(&serde_json::to_string(&m.graph).unwrap(), &m.tensors, "1", Some(content_hash_v1(m)))
    }

    #[test]
    fn normalization_travels_with_the_model() {
        let mut m = small();
        m.normalization = Normalization { mean: vec![0.5], std: vec![0.25] };
        let back = load_bytes(&to_bytes(&m)).unwrap();
        assert_eq!(back.normalization, m.normalization);
        // The hash covers it: another normalisation is another function.
        assert_ne!(content_hash(&m), content_hash(&small()));
    }

    #[test]
    fn version_1_files_load_with_their_data_format_default() {
        let m = small();
        let back = load_bytes(&rewrite(&m)).unwrap();
        assert_eq!(back.normalization, Normalization::fashion_mnist());
        assert_eq!(back, m);
        let c100 = Model::random(arch::resnet18(100).unwrap(), 1, None).unwrap();
        assert_eq!(load_bytes(&rewrite(&c100)).unwrap().normalization, Normalization::cifar100());
    }

    #[test]
    fn bad_normalization_is_refused() {
        for norm in [
            Normalization { mean: vec![0.1, 0.2], std: vec![1.0] },
            Normalization { mean: vec![0.1], std: vec![-1.0] },
            Normalization { mean: vec![], std: vec![1.0] },
        ] {
            let mut m = small();
            m.normalization = norm;
            let err = load_bytes(&to_bytes(&m)).unwrap_err();
            assert!(matches!(err, FormatError::BadNormalization(_)), "{err}");
        }
        // Present but not the JSON of a normalisation.
        let m = small();
        let mut bytes = to_bytes(&m);
        let json = br#""normalization":"{"#;
        let at = bytes.windows(json.len()).position(|w| w == json).unwrap() + json.len() - 1;
        bytes[at] = b'[';
        let err = load_bytes(&bytes).unwrap_err();
        assert!(matches!(err, FormatError::BadNormalization(_)), "{err}");
    }

    #[test]
    fn round_trip() {
        let m = small();
        let back = load_bytes(&to_bytes(&m)).unwrap();
        assert_eq!(back, m);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        save(&m, &p).unwrap();
        assert_eq!(load(&p).unwrap(), m);
    }

    #[test]
    fn truncated_file() {
        let bytes = to_bytes(&small());
        for cut in [0, 4, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(load_bytes(&bytes[..cut]), Err(FormatError::Truncated(_))), "cut {cut}");
        }
    }

    #[test]
    fn unknown_layer_kind() {
        let m = small();
        let json = serde_json::to_string(&m.graph).unwrap().replacen("\"op\":\"add\"", "\"op\":\"maxpool\"", 1);
        let err = load_bytes(&write(&json, &m.tensors, "1", None)).unwrap_err();
        assert!(
            matches!(&err, FormatError::UnknownLayerKind { kind, node } if kind == "maxpool" && node == "res.add"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_extra_tensor() {
        let m = small();
        let mut t = m.tensors.clone();
        t.remove("conv1.weight");
        let err = load_bytes(&write(&serde_json::to_string(&m.graph).unwrap(), &t, "1", None)).unwrap_err();
        assert!(matches!(&err, FormatError::MissingTensor(n) if n == "conv1.weight"), "{err}");
        let mut m2 = m.clone();
        m2.tensors.insert("stray.weight".into(), Tensor::zeros(ndarray::IxDyn(&[2])));
        assert!(matches!(load_bytes(&rewrite(&m2)), Err(FormatError::ExtraTensor(n)) if n == "stray.weight"));
    }

    #[test]
    fn wrong_shape_and_mask_shape() {
        let mut m = small();
        m.tensors.insert("fc.weight".into(), Tensor::zeros(ndarray::IxDyn(&[10, 33])));
        assert!(matches!(load_bytes(&rewrite(&m)), Err(FormatError::WrongShape { name, .. }) if name == "fc.weight"));
        let mut m = small();
        m.tensors.insert("relu1.mask".into(), Tensor::ones(ndarray::IxDyn(&[16, 28, 27])));
        assert!(matches!(load_bytes(&rewrite(&m)), Err(FormatError::MaskShape { name, .. }) if name == "relu1.mask"));
        let mut m = small();
        m.tensors.get_mut("relu2.mask").unwrap()[[0, 0, 0]] = 0.5;
        assert!(matches!(load_bytes(&rewrite(&m)), Err(FormatError::MaskValue { .. })));
    }

    #[test]
    fn non_finite_weight() {
        let mut m = small();
        m.tensors.get_mut("res.conv1.weight").unwrap()[[1, 2, 0, 1]] = f32::NAN;
        assert!(
            matches!(load_bytes(&rewrite(&m)), Err(FormatError::NonFinite { name, .. }) if name == "res.conv1.weight")
        );
        m.tensors.get_mut("res.conv1.weight").unwrap()[[1, 2, 0, 1]] = f32::INFINITY;
        assert!(matches!(load_bytes(&rewrite(&m)), Err(FormatError::NonFinite { .. })));
    }

    #[test]
    fn unsupported_version_and_hash_mismatch() {
        let m = small();
        let json = serde_json::to_string(&m.graph).unwrap();
        let err = load_bytes(&write(&json, &m.tensors, "3", Some(content_hash(&m)))).unwrap_err();
        assert!(matches!(&err, FormatError::UnsupportedVersion { found } if found == "3"), "{err}");
        let err = load_bytes(&write(&json, &m.tensors, "1", Some("00".repeat(32)))).unwrap_err();
        assert!(matches!(err, FormatError::HashMismatch { .. }));
        // Not a model file at all: a plain safetensors file without our metadata.
        let plain = safetensors::serialize(Vec::<(&str, TensorView)>::new(), None).unwrap();
        assert!(matches!(load_bytes(&plain), Err(FormatError::MissingMetadata(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// No byte string panics the loader; corrupting a valid file is always detected.
        #[test]
        fn corrupted_files_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), mode in 0u8..3) {
            let bytes = to_bytes(&small());
            let mut b = bytes.clone();
            match mode {
                0 => { let i = pos.index(b.len()); if b[i] == byte { return Ok(()); } b[i] = byte; }
                1 => b.truncate(cut.index(b.len())),
                _ => { let i = pos.index(b.len()); b.insert(i, byte); }
            }
            prop_assert!(load_bytes(&b).is_err());
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = load_bytes(&b);
        }
    }
}
