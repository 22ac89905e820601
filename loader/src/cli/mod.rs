//! The `loader` binary's subcommands, one module each, and what they share: the transform
//! flags (a preset plus timm's flags) and the usage error that exits with status 2.

use std::time::Duration;

use clap::Args;
use loader::image::eval_transform::EvalTransform;
use loader::image::interpolation::{Interpolation, InterpolationChoice};
use loader::request::transform::{TrainTransform, TransformSpec, parse_aa};
use shard_tool::console::number_in;

pub mod augment;
pub mod bench;
pub mod fetch;
mod png;
pub mod preview;
pub mod serve;
pub mod status;

/// The largest step (batch) number a flag takes: a billion batches are more than any run
/// makes (ImageNet's A1 is 375,000).
pub const MAX_STEP: u64 = 1_000_000_000;

/// The transform of a job: a preset, then timm's flags for any setting to change.
#[derive(Args)]
#[command(next_help_heading = "Transform (timm's flags)")]
pub struct TransformArgs {
    /// Preset: a1 or a2 (RRC 224, flip 0.5, rand-m7-mstd0.5-inc1, random interpolation, 3
    /// repeats), a3 (160, rand-m6-mstd0.5-inc1, no repeats), eval (224, crop 0.95, bicubic).
    #[arg(long, default_value = "a1")]
    pub transform: TransformSpec,
    /// Output side (timm's --img-size).
    #[arg(long, value_parser = number_in(loader::request::transform::IMG_SIZE))]
    pub img_size: Option<u32>,
    /// RandomResizedCrop area range, MIN MAX (train).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], value_parser = number_in(0.0..=1.0))]
    pub scale: Option<Vec<f64>>,
    /// RandomResizedCrop aspect-ratio range, MIN MAX (train).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], value_parser = number_in(loader::request::transform::RATIO))]
    pub ratio: Option<Vec<f64>>,
    /// Horizontal flip probability (train).
    #[arg(long, value_parser = number_in(0.0..=1.0))]
    pub hflip: Option<f64>,
    /// RandAugment, timm's grammar (rand-m9-mstd0.5-inc1), or `none` (train).
    #[arg(long)]
    pub aa: Option<String>,
    /// random, bilinear or bicubic (train).
    #[arg(long)]
    pub train_interpolation: Option<InterpolationChoice>,
    /// Repeated-augmentation copies per image, 0 for none (train).
    #[arg(long, value_parser = number_in(loader::request::transform::AUG_REPEATS))]
    pub aug_repeats: Option<u32>,
    /// Fraction of the resized image the center crop keeps (eval).
    #[arg(long, value_parser = number_in(loader::request::transform::CROP_PCT))]
    pub crop_pct: Option<f64>,
    /// bilinear or bicubic (eval).
    #[arg(long)]
    pub interpolation: Option<Interpolation>,
}

impl TryFrom<&TransformArgs> for TransformSpec {
    type Error = UsageError;

    /// The preset with the flags applied, checked; a flag that does not apply to the preset's
    /// kind (train or eval) is an error.
    fn try_from(a: &TransformArgs) -> Result<TransformSpec, UsageError> {
        let misplaced = |flag: &str, kind: &str| {
            UsageError(format!(
                "--{flag} applies to {kind} transforms, and --transform {} is not one",
                a.transform.kind()
            ))
        };
        let pair = |v: &Option<Vec<f64>>| v.as_ref().map(|v| [v[0], v[1]]);
        let spec = match a.transform {
            TransformSpec::Train(t) => {
                if a.crop_pct.is_some() {
                    return Err(misplaced("crop-pct", "eval"));
                }
                if a.interpolation.is_some() {
                    return Err(misplaced("interpolation", "eval"));
                }
                let aa = match a.aa.as_deref() {
                    None => t.aa,
                    Some(text) => parse_aa(text).map_err(flag_error)?,
                };
                TransformSpec::Train(TrainTransform {
                    img_size: a.img_size.unwrap_or(t.img_size),
                    scale: pair(&a.scale).unwrap_or(t.scale),
                    ratio: pair(&a.ratio).unwrap_or(t.ratio),
                    hflip: a.hflip.unwrap_or(t.hflip),
                    aa,
                    train_interpolation: a.train_interpolation.unwrap_or(t.train_interpolation),
                    aug_repeats: a.aug_repeats.unwrap_or(t.aug_repeats),
                })
            }
            TransformSpec::Eval(e) => {
                for (flag, set) in [
                    ("scale", a.scale.is_some()),
                    ("ratio", a.ratio.is_some()),
                    ("hflip", a.hflip.is_some()),
                    ("aa", a.aa.is_some()),
                    ("train-interpolation", a.train_interpolation.is_some()),
                    ("aug-repeats", a.aug_repeats.is_some()),
                ] {
                    if set {
                        return Err(misplaced(flag, "train"));
                    }
                }
                TransformSpec::Eval(EvalTransform {
                    img_size: a.img_size.unwrap_or(e.img_size),
                    crop_pct: a.crop_pct.unwrap_or(e.crop_pct),
                    interpolation: a.interpolation.unwrap_or(e.interpolation),
                })
            }
        };
        spec.validate().map_err(flag_error)?;
        Ok(spec)
    }
}

/// A bad flag or config value: one line naming it and the allowed range, exit status 2, before
/// any file is opened or connection made (the three binaries' one usage error).
pub use shard_tool::console::Usage as UsageError;

/// A transform setting out of range, named by its flag (`--crop-pct 0.001 is outside ...`).
pub fn flag_error(e: loader::request::transform::SettingError) -> UsageError {
    UsageError(format!(
        "--{} {} {}",
        e.key.replace('_', "-"),
        e.value,
        e.problem
    ))
}

/// Seconds for a timeout flag: finite, not negative, at most a day.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let s: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{s} is outside 0..=86400 seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}
