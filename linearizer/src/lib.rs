//! Selective Network Linearization (SNL) in burn: train a network from `pi_model::arch`, learn
//! which ReLUs to keep under a budget, finetune, and export a mask-annotated `pi_model::Model`.
//!
//! Commands, each a config struct and an entry function returning its JSON-serialisable report:
//! [`train()`] ([`TrainConfig`]), [`linearize()`] ([`LinearizeConfig`]) and [`import()`]
//! ([`ImportConfig`]). Training reports its progress batch by batch to a [`Progress`]; everything
//! else is logged with `tracing`. The `pi` binary maps its command-line flags onto the configs.

#![forbid(unsafe_code)]

pub mod baselines;
pub mod batches;
pub mod error;
pub mod executor;
pub mod export;
pub mod import;
pub mod masked_relu;
pub mod optim;
pub mod progress;
pub mod report;
pub mod snl;
pub mod train;
pub mod trainer;

pub use error::{CheckpointError, LinearizeError, ParseBudgetError, Result};
pub use export::{ExportReport, export_snl};
pub use import::{ImportConfig, ImportReport, WithoutMasks, import};
pub use optim::Schedule;
pub use progress::{NoProgress, Progress};
pub use snl::{Budget, LinearizeConfig, LinearizeReport, Method, linearize};
pub use train::{TrainConfig, TrainReport, train};
