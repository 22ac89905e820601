//! `trainer export`: a freshly initialized model as timm-named safetensors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::device::Precision;
use trainer::model::timm_weights;
use trainer::run::OnDevice;

use super::{DeviceArgs, ModelArgs};

/// `trainer export` flags.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of the initialization.
    #[arg(long, default_value_t = 0, value_parser = shard_tool::console::number_in(trainer::recipe::ranges::SEED))]
    pub seed: u64,
    /// Initialize the last BN γ of each block at 1 instead of timm's 0, so that every
    /// layer shapes the output (for comparisons).
    #[arg(long)]
    pub no_zero_init_last: bool,
    /// Output file.
    pub out: PathBuf,
}

/// Initializes and writes the weights.
pub fn run(a: ExportArgs) -> Result<ExitCode> {
    // A FIFO or a device as OUT is the user's mistake: said before the model is built.
    super::check_out(&a.out)?;
    let config = a.model.config()?.with_zero_init_last(!a.no_zero_init_last);
    let precision = a.device.dtype.unwrap_or(Precision::F32);
    let on = OnDevice::load(&config, a.device.device, precision, a.seed, None)?;
    timm_weights::export(&on.model, &a.out)?;
    println!(
        "wrote {} ({} parameters)",
        a.out.display(),
        on.model.trainable_params()
    );
    Ok(ExitCode::SUCCESS)
}
