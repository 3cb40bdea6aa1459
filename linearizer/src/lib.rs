//! Selective Network Linearization (SNL) in burn: train a network from `pi_model::arch`, learn
//! which ReLUs to keep under a budget, finetune, and export a mask-annotated `pi_model::Model`.
//!
//! Commands (clap `Args` + entry function, wired by the `pi` binary): [`train()`], [`linearize()`],
//! [`import()`].

pub mod baselines;
pub mod batches;
pub mod executor;
pub mod import;
pub mod masked_relu;
pub mod optim;
pub mod report;
pub mod snl;
pub mod train;
pub mod trainer;

pub use import::{ImportArgs, import};
pub use snl::{LinearizeArgs, linearize};
pub use train::{TrainArgs, train};
