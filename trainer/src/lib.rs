//! rsb's trainer: timm's ResNets trained with the "ResNet strikes back" recipes on burn, fed by
//! rsb's loader.
//!
//! The data flow of a run, one folder per box:
//!
//! - [`recipe`]: the TOML file with timm's `train.py` names, the flags over it, and the one
//!   gate every command's recipe passes (the loader jobs it implies included).
//! - [`data`]: where batches come from (a `loader serve` daemon, or a loader in this process),
//!   and a ring slot's way to the device.
//! - [`model`]: timm's ResNet, PyTorch's batch norm, timm's mixed precision, timm-named weights,
//!   and the devices a model runs on.
//! - [`step`]: one training step: normalize, Mixup/CutMix, forward, BCE, backward.
//! - [`optim`]: timm's LAMB and its warmup + cosine LR schedule.
//! - [`ranks`]: the recipe's `world_size` ranks on one device or several, with DDP's semantics.
//! - [`eval`]: top-1/top-5 on a split, other packed sets, ImageNet-ReaL's labels.
//! - [`run`]: `trainer train`: the run directory and everything in it (recipe, metrics,
//!   checkpoints), the loop, exact resume, and the one way weights reach a device.
//! - [`report`]: a run's curves, several runs compared, studies of many runs.
//! - [`diagnostics`]: the step's speed (`trainer bench`) and two devices compared
//!   (`trainer check-device`).
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
pub mod diagnostics;
pub mod eval;
pub mod model;
pub mod optim;
pub mod ranks;
pub mod recipe;
pub mod report;
pub mod run;
pub mod step;
