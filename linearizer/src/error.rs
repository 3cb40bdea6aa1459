//! Typed errors of the linearizer. Messages name the file, tensor or setting at fault; the
//! underlying error (model format, dataset, I/O) is the `source()`, so `{:#}` of an
//! `anyhow::Error` prints the whole chain.

use std::path::PathBuf;

use pi_model::data::DataError;
use pi_model::{FormatError, GraphError};

/// Result with [`LinearizeError`].
pub type Result<T, E = LinearizeError> = std::result::Result<T, E>;

/// Why `train`, `linearize`, `import` or one of their steps failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinearizeError {
    /// A model file could not be read.
    #[error("loading {}", path.display())]
    LoadModel {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// A model cannot be exported in the requested format.
    #[error("exporting {}: {reason}", path.display())]
    Export { path: PathBuf, reason: String },
    /// A model file could not be written.
    #[error("saving {}", path.display())]
    SaveModel {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// A split of a dataset directory could not be read (`split` is "training" or "test").
    #[error("loading the {split} split from {}", dir.display())]
    Dataset {
        split: &'static str,
        dir: PathBuf,
        #[source]
        source: DataError,
    },
    /// An architecture or graph that cannot be built (e.g. an unknown `arch` name).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The model lacks a tensor its graph needs.
    #[error("model lacks tensor {0}")]
    MissingTensor(String),
    /// A model tensor whose shape differs from the graph's.
    #[error("tensor {name} has shape {got:?}, graph expects {expected:?}")]
    TensorShape { name: String, got: Vec<usize>, expected: Vec<usize> },
    /// A model tensor holding NaN or infinity.
    #[error("tensor {0} holds non-finite values")]
    NonFinite(String),
    /// `train`: the model's input shape is not the dataset's image shape.
    #[error("{arch} expects {model:?} inputs, the dataset has {data:?}")]
    InputShape { arch: String, model: Vec<usize>, data: Vec<usize> },
    /// `train`: the model's class count is not the dataset's.
    #[error("the model has {model} classes, the dataset {data}")]
    ClassCount { model: usize, data: usize },
    /// `linearize`: the model does not fit the dataset (input shape or class count).
    #[error(
        "model takes {model_shape:?} with {model_classes} classes, dataset has {data_shape:?} with {data_classes} classes"
    )]
    DatasetMismatch { model_shape: Vec<usize>, model_classes: usize, data_shape: Vec<usize>, data_classes: usize },
    /// `linearize` was given no budget.
    #[error("no budget given")]
    NoBudget,
    /// Binarisation kept more ReLUs than the budget (a bug, never expected).
    #[error("internal error: {kept} ReLUs kept for a budget of {budget}")]
    BudgetExceeded { kept: usize, budget: usize },
    /// A JSON report could not be serialised.
    #[error("serialising the report")]
    ReportJson(#[source] serde_json::Error),
    /// A JSON report could not be written.
    #[error("writing the report to {}", path.display())]
    WriteReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file could not be opened.
    #[error("opening {}", path.display())]
    OpenCheckpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file could not be read.
    #[error("reading {}", path.display())]
    ReadCheckpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The PyTorch reader rejected the file.
    #[error("{}: not a readable PyTorch checkpoint: {reason}", path.display())]
    NotPytorch { path: PathBuf, reason: burn_store::pytorch_reader::PytorchError },
    /// The safetensors reader rejected the file.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    NotSafetensors { path: PathBuf, reason: safetensors::SafeTensorError },
    /// A tensor of a PyTorch checkpoint could not be read.
    #[error("reading tensor {name}")]
    ReadTensor {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint tensor of a non-float type that must be imported.
    #[error("tensor {name} has type {dtype}; only floating-point parameters can be imported")]
    TensorType { name: String, dtype: &'static str },
    /// A checkpoint without any floating-point tensor.
    #[error("{} holds no floating-point tensors", path.display())]
    EmptyCheckpoint { path: PathBuf },
    /// The checkpoint's tensors do not make a network of the requested architecture.
    #[error("importing {}", path.display())]
    Import {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
}

/// Why the tensors of a checkpoint do not make a network of the requested architecture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Only ResNet-18 and WRN-22-8 checkpoints (SNL's names) can be imported.
    #[error("unknown architecture {0:?} for import (resnet18, wrn22-8)")]
    UnknownArch(String),
    /// The classifier weight, which gives the class count, is absent or not 2-D.
    #[error(
        "checkpoint has no SNL alphas (`...alphaK.alphas`) for any of {arch}'s {relu_layers} ReLU layers: import it with every ReLU kept by passing --all-relus, or --rename the alphas' prefixes"
    )]
    NoMasks { arch: String, relu_layers: usize },
    #[error("checkpoint has no 2-D {classifier}; is it a {arch} checkpoint? (give --rename FROM={classifier_prefix} if the classifier is named otherwise)", classifier_prefix = classifier.trim_end_matches(".weight"))]
    NoClassifier { classifier: &'static str, arch: String },
    /// The architecture cannot be built with these settings.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A tensor whose shape (ignoring dimensions of size 1) differs from the architecture's.
    #[error("{name}: checkpoint shape {got:?}, {arch} needs {expected:?}")]
    Shape { name: String, got: Vec<usize>, expected: Vec<usize>, arch: String },
    /// A tensor holding NaN or infinity.
    #[error("{name}: non-finite value at index {index}")]
    NonFinite { name: String, index: usize },
    /// No normalisation given and the class count names no dataset of the reference code.
    #[error(
        "{classes} classes: which normalisation was {arch} trained with? Give --normalization (snl-cifar10, snl-cifar100, ...) or --mean and --std"
    )]
    UnknownNormalization { classes: usize, arch: String },
    /// The normalisation given does not fit the network's input.
    #[error("normalisation: {0}")]
    BadNormalization(String),
    /// Tensors of the architecture that the checkpoint lacks (checkpoint names).
    #[error("checkpoint lacks {} tensor(s) of {arch}: {}", missing.len(), first_eight(missing))]
    Missing { arch: String, missing: Vec<String> },
}

/// A budget string ([`crate::snl::Budget`]) that is neither a ReLU count nor a fraction in [0, 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a ReLU count nor a fraction in [0, 1)")]
pub struct ParseBudgetError(pub String);

/// Up to eight names, comma-separated, with ", ..." when there are more.
fn first_eight(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
    let more = if names.len() > 8 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tensors_are_listed_up_to_eight() {
        let err =
            CheckpointError::Missing { arch: "resnet18".into(), missing: (0..10).map(|i| format!("t{i}")).collect() };
        assert_eq!(err.to_string(), "checkpoint lacks 10 tensor(s) of resnet18: t0, t1, t2, t3, t4, t5, t6, t7, ...");
        let err = CheckpointError::Missing { arch: "wrn22-8".into(), missing: vec!["fc.weight".into()] };
        assert_eq!(err.to_string(), "checkpoint lacks 1 tensor(s) of wrn22-8: fc.weight");
    }

    #[test]
    fn sources_carry_the_cause() {
        let err = LinearizeError::Import { path: "x.pt".into(), source: CheckpointError::UnknownArch("vgg".into()) };
        assert_eq!(err.to_string(), "importing x.pt");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "unknown architecture \"vgg\" for import (resnet18, wrn22-8)");
    }
}
