//! rsb's trainer: timm's ResNets trained with the "ResNet strikes back" recipes on burn, fed by
//! rsb's loader.
//!
//! The data flow of a run, one folder per box:
//!
//! - [`recipe`]: the TOML with timm's names, the flags over it, and the one gate it passes.
//! - [`data`]: the loader (a daemon, or one in this process) and a slot's way to the device.
//! - [`model`]: timm's ResNet, batch norm, amp, timm-named weights (its CPU kernels: the
//!   `cpu-kernels` crate).
//! - [`device`]: where a model runs (flex, CUDA, the CubeCL stand-in), in which float types,
//!   and how the host's allocator keeps the CPU backend's memory.
//! - [`step`]: one training step: Mixup/CutMix, forward, BCE, backward.
//! - [`optim`]: timm's LAMB and its warmup + cosine LR schedule.
//! - [`ranks`]: the recipe's `world_size` ranks on one device or several, as DDP.
//! - [`eval`]: top-1/top-5 on a split or other packed sets, ImageNet-ReaL's labels.
//! - [`run`]: `trainer train`: the run directory and its files, the loop, exact resume.
//! - [`report`]: a run's curves, runs compared, studies of many runs.
//! - [`diagnostics`]: the step's speed and two devices compared.
//!
//! # Example
//!
//! A recipe read through the gate every command uses:
//!
//! ```
//! use trainer::recipe::{Overrides, TrainConfig};
//!
//! let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/a3.toml");
//! let recipe = TrainConfig::load(&path, &Overrides::none())?.config;
//! assert_eq!((recipe.epochs, recipe.global_batch()), (100, 2048));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod data;
pub mod device;
pub mod diagnostics;
pub mod eval;
#[cfg(test)]
mod fuzz_tests;
pub mod model;
pub mod optim;
pub mod ranks;
pub mod recipe;
pub mod report;
pub mod run;
pub mod step;
