//! rsb's trainer: timm's ResNet and the "ResNet strikes back" training step on burn.
//!
//! Built so far: the model ([`resnet`], with PyTorch's [`batch_norm`]), the per-batch
//! ingredients ([`normalize`], [`mixup`], [`loss`]), timm's optimizer ([`lamb`]) and LR
//! schedule ([`schedule`]), one training step ([`step`]), its benchmark ([`bench`]), the
//! device-against-device check ([`numerics`]), the recipes as timm-named TOML ([`config`])
//! and weights as safetensors with timm's names ([`weights`]); batches from the loader core in
//! process ([`feed`]); the whole run ([`train`]: batches from the loader daemon's rings or a
//! loader in this process, evaluation, JSONL metrics, atomic [`checkpoint`]s and exact resume), and its curves as a PNG ([`plot`]).

pub mod batch_norm;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod feed;
pub mod lamb;
pub mod loss;
pub mod mixup;
pub mod normalize;
pub mod numerics;
pub mod plot;
pub mod resnet;
pub mod schedule;
pub mod step;
pub mod train;
pub mod weights;
