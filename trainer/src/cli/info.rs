//! `trainer info`: a model's parameter count.

use std::process::ExitCode;

use anyhow::Result;
use burn::module::Module;
use clap::Args;
use trainer::device::Precision;
use trainer::run::OnDevice;

use super::{DeviceArgs, ModelArgs};

/// `trainer info` flags.
#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Prints the counts.
pub fn run(a: InfoArgs) -> Result<ExitCode> {
    let precision = a.device.dtype.unwrap_or(Precision::F32);
    let on = OnDevice::load(&a.model.config()?, a.device.device, precision, 0, None)?;
    println!(
        "{}: {} trainable parameters ({} values with the BN running statistics)",
        a.model.model,
        on.model.trainable_params(),
        on.model.num_params()
    );
    Ok(ExitCode::SUCCESS)
}
