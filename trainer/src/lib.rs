//! rsb's trainer: timm's ResNet and the "ResNet strikes back" training step on burn.
//!
//! - The recipe: [`config`] (timm-named TOML, every value checked when read) and
//!   [`overrides`] (timm's `train.py` flags over it).
//! - The model: [`resnet`], with PyTorch's [`batch_norm`]; [`weights`] as safetensors with
//!   timm's names.
//! - One step: [`upload`] (ring slots to the device without a host copy), [`normalize`],
//!   [`mixup`], [`loss`], timm's [`lamb`] and LR [`schedule`], put together in [`step`], in
//!   f32, bf16 or timm's mixed precision ([`amp`]); [`bench`](mod@bench) times it, [`numerics`] compares
//!   devices.
//! - The run: [`data`] (the loader's jobs and splits, checked before the model is built),
//!   [`ranks`] (the recipe's `world_size` ranks run one after another on one device, timm's
//!   DDP semantics), [`train`] (steps, evaluation, checkpoints, exact resume), [`eval`], [`metrics`]
//!   (`metrics.jsonl`), [`checkpoint`], [`plot`]; several runs: [`compare`], [`study`].
//! - [`feed`]: batches from the loader core in this process, for `trainer bench --shards`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod amp;
pub mod batch_norm;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod feed;
pub mod lamb;
pub mod loss;
pub mod metrics;
pub mod mixup;
pub mod normalize;
pub mod numerics;
pub mod overrides;
pub mod plot;
pub mod ranks;
pub mod real;
pub mod replicas;
pub mod resnet;
pub mod schedule;
pub mod step;
pub mod study;
pub mod train;
pub mod upload;
pub mod weights;
