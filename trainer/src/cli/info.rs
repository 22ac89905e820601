//! `trainer info`: a model's parameter count.

use std::process::ExitCode;

use anyhow::Result;
use burn::module::Module;

use super::ModelArgs;

/// Prints the counts.
pub fn run(m: ModelArgs) -> Result<ExitCode> {
    let config = m.config()?;
    let model = config.init(&burn::tensor::Device::flex())?;
    println!(
        "{}: {} trainable parameters ({} values with the BN running statistics)",
        m.model,
        model.trainable_params(),
        model.num_params()
    );
    Ok(ExitCode::SUCCESS)
}
