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
    /// Device under test: cuda[:N], or cube-cpu (the same CubeCL kernels on this CPU).
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
    /// Print every gradient, running statistic and update, not only each kind's worst.
    #[arg(long)]
    pub all: bool,
    /// One JSON line at the end: the worst relative difference of each kind.
    #[arg(long)]
    pub json: bool,
}

/// The kinds of compared tensors that are many (one per parameter or BN layer), printed as
/// one line each with their worst.
const GROUPS: [(&str, &str); 3] = [
    ("grad/", "gradients"),
    ("stat/", "BN running statistics"),
    ("update/", "LAMB step's updates"),
];

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
    let verdict = |relative: f64| {
        if relative <= a.tolerance {
            "ok"
        } else {
            "OVER"
        }
    };
    let line = |d: &device_check::Difference| {
        println!(
            "  {:<34} relative {:>10.3e}  max abs {:>10.3e}  |ref| {:>10.3e}  {}",
            d.name,
            d.relative,
            d.max_abs,
            d.reference_norm,
            verdict(d.relative)
        );
    };
    let grouped = |d: &device_check::Difference| GROUPS.iter().any(|(p, _)| d.name.starts_with(p));
    for d in diffs.iter().filter(|d| !grouped(d)) {
        line(d);
    }
    let mut summary = serde_json::Map::new();
    for d in diffs
        .iter()
        .filter(|d| !grouped(d) && !d.name.starts_with('('))
    {
        summary.insert(d.name.clone(), number(d.relative));
    }
    for (prefix, what) in GROUPS {
        let members: Vec<_> = diffs
            .iter()
            .filter(|d| d.name.starts_with(prefix))
            .collect();
        let Some(worst) = members
            .iter()
            .copied()
            .max_by(|x, y| x.relative.total_cmp(&y.relative))
        else {
            continue;
        };
        println!(
            "  {:<34} worst {:>13.3e}  of {} tensors, at {}  {}",
            what,
            worst.relative,
            members.len(),
            worst.name,
            verdict(worst.relative)
        );
        for d in members {
            if a.all || d.relative > a.tolerance {
                line(d);
            }
        }
        summary.insert(prefix.trim_end_matches('/').into(), number(worst.relative));
    }
    let worst = diffs.iter().map(|d| d.relative).fold(0.0f64, |w, r| {
        if r.is_nan() { f64::INFINITY } else { w.max(r) }
    });
    println!(
        "worst relative difference {worst:.3e} (tolerance {:.1e})",
        a.tolerance
    );
    if a.json {
        let mut head = serde_json::Map::new();
        head.insert("model".into(), a.model.model.clone().into());
        head.insert("device".into(), a.device.to_string().into());
        head.insert("dtype".into(), a.dtype.name().into());
        head.insert("reference".into(), a.reference.to_string().into());
        head.insert("reference_dtype".into(), a.reference_dtype.name().into());
        head.insert("worst".into(), number(worst));
        head.insert("tolerance".into(), a.tolerance.into());
        head.extend(summary);
        println!("{}", serde_json::Value::Object(head));
    }
    Ok(if worst <= a.tolerance {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A relative difference for JSON, which has no infinity: non-finite ones as strings.
fn number(x: f64) -> serde_json::Value {
    if x.is_finite() {
        x.into()
    } else {
        x.to_string().into()
    }
}
