//! `trainer logits`: eval-mode logits of timm-named weights on a fixed probe batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::ModelArgs;

/// `trainer logits` flags.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// safetensors weights (timm names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Images in the probe batch.
    #[arg(long, short = 'b', default_value_t = 2)]
    pub batch: usize,
    /// Square side of the probe images.
    #[arg(long, default_value_t = 64)]
    pub img_size: usize,
}

/// Prints the logits as JSON.
pub fn run(a: LogitsArgs) -> Result<ExitCode> {
    let LogitsArgs {
        model,
        weights,
        batch,
        img_size,
    } = a;
    let device = burn::tensor::Device::flex();
    let net = trainer::weights::import(model.config()?.init(&device)?, &weights)?;
    let n = batch * 3 * img_size * img_size;
    let probe: Vec<f32> = (0..n)
        .map(|i| ((i as f64) * 0.001).sin() as f32 * 2.0)
        .collect();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(probe, [batch, 3, img_size, img_size]),
        &device,
    );
    let logits: Vec<f32> = net.forward(x).into_data().iter::<f32>().collect();
    println!("{}", serde_json::to_string(&logits)?);
    Ok(ExitCode::SUCCESS)
}
