//! `trainer export`: a freshly initialized model as timm-named safetensors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::resnet::ResNetConfig;

use super::ModelArgs;

/// `trainer export` flags.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seed of the initialization.
    #[arg(long, default_value_t = 0)]
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
    let ExportArgs {
        model,
        seed,
        no_zero_init_last,
        out,
    } = a;
    let config = ResNetConfig {
        zero_init_last: !no_zero_init_last,
        ..model.config()?
    };
    let device = burn::tensor::Device::flex();
    device.seed(seed);
    let net = config.init(&device)?;
    trainer::weights::export(&net, &out)?;
    println!(
        "wrote {} ({} parameters)",
        out.display(),
        net.trainable_params()
    );
    Ok(ExitCode::SUCCESS)
}
