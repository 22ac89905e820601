//! `trainer logits`: eval-mode logits of timm-named weights on a fixed probe batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::module::Module;
use clap::Args;
use shard_tool::console::number_in;
use trainer::device::Precision;
use trainer::run::{OnDevice, Weights};

use super::{DeviceArgs, ModelArgs};

/// `trainer logits` flags.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Weights: timm-named safetensors, or a run's checkpoint directory.
    #[arg(long)]
    pub weights: PathBuf,
    /// Images in the probe batch.
    #[arg(long, short = 'b', default_value_t = 2, value_parser = number_in(super::widen(loader::request::job::BATCH_SIZE)))]
    pub batch: usize,
    /// Square side of the probe images.
    #[arg(long, default_value_t = 64, value_parser = number_in(super::widen(loader::request::transform::IMG_SIZE)))]
    pub img_size: usize,
}

/// Prints the logits as JSON.
pub fn run(a: LogitsArgs) -> Result<ExitCode> {
    let precision = a.device.dtype.unwrap_or(Precision::F32);
    let weights = Weights::at(&a.weights);
    let on = OnDevice::load(
        &a.model.config_at(Some(a.img_size))?,
        a.device.device,
        precision,
        0,
        Some(&weights),
    )?;
    if let Some(note) = &on.note {
        eprintln!("note: {}: {note}", a.weights.display());
    }
    let (batch, side) = (a.batch, a.img_size);
    let probe: Vec<f32> = (0..batch * 3 * side * side)
        .map(|i| ((i as f64) * 0.001).sin() as f32 * 2.0)
        .collect();
    // Eval mode: the model's copy without gradient recording (batch norm's running statistics).
    let valid = on.model.valid();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(probe, [batch, 3, side, side]),
        &on.device.clone().inner(),
    );
    let logits: Vec<f32> = valid
        .forward(x)
        .into_data()
        .convert::<f32>()
        .iter::<f32>()
        .collect();
    println!("{}", serde_json::to_string(&logits)?);
    Ok(ExitCode::SUCCESS)
}
