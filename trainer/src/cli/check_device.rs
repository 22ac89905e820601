//! `trainer check-device`: one batch on two devices, logits, loss and gradients compared.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::diagnostics::device_check;
use trainer::model::{DeviceKind, Precision, ResNetConfig};

use super::ModelArgs;

/// `trainer check-device` flags.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Device under test.
    #[arg(long, default_value = "cuda")]
    pub device: DeviceKind,
    /// Reference device.
    #[arg(long, default_value = "flex")]
    pub reference: DeviceKind,
    /// Float types on the reference (f32, or amp to compare amp with amp: the same bf16
    /// roundings, so only the devices' arithmetic differs).
    #[arg(long, value_enum, default_value = "f32")]
    pub reference_dtype: Precision,
    /// Float types on the device under test: f32, bf16 (everything), amp (f32 weights, bf16
    /// convolutions and classifier); the reference is f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Images in the batch.
    #[arg(long, short = 'b', default_value_t = 8)]
    pub batch: usize,
    /// Square image side.
    #[arg(long, default_value_t = 64)]
    pub img_size: usize,
    /// Largest relative difference (‖a−b‖/‖a‖) that passes.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
    /// Seed of weights and batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Compares and prints each difference; failure if one is over the tolerance.
pub fn run(a: CheckArgs) -> Result<ExitCode> {
    // With timm's zero-initialized last BN γ, no gradient reaches the residual
    // branches: they would compare as equal zeros.
    let config = ResNetConfig {
        zero_init_last: false,
        ..a.model.config()?
    };
    let reference = a.reference.device(a.reference_dtype)?.autodiff();
    let target = a.device.device(a.dtype)?.autodiff();
    let diffs = device_check::compare_devices(
        &config,
        a.batch,
        a.img_size,
        a.seed,
        &reference,
        &target,
        [a.reference_dtype.compute(), a.dtype.compute()],
    )?;
    println!(
        "{} batch {} at {}px, {} {} against {} {} (relative = |a-b|/|a|):",
        a.model.model,
        a.batch,
        a.img_size,
        a.device,
        a.dtype.name(),
        a.reference,
        a.reference_dtype.name()
    );
    let mut worst = 0.0f64;
    for d in &diffs {
        let verdict = if d.relative <= a.tolerance {
            "ok"
        } else {
            "OVER"
        };
        println!(
            "  {:<34} relative {:>10.3e}  max abs {:>10.3e}  |ref| {:>10.3e}  {verdict}",
            d.name, d.relative, d.max_abs, d.reference_norm
        );
        worst = worst.max(d.relative);
    }
    println!(
        "worst relative difference {worst:.3e} (tolerance {:.1e})",
        a.tolerance
    );
    Ok(if worst <= a.tolerance {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
