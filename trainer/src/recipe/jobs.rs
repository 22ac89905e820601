//! The loader jobs a recipe means: its training transform on `rsb.train_split` and its
//! evaluation on `rsb.val_split`, every setting explicit (no preset behind them), checked with
//! the daemon's own checks when the recipe is read, so a job the daemon would refuse is refused
//! by the recipe's gate instead, naming the recipe's key.

use std::ops::RangeInclusive;

use loader::image::eval_transform::EvalTransform;
use loader::image::interpolation::UnknownInterpolation;
use loader::request::job::{BATCH_SIZE, WORLD_SIZE};
use loader::request::transform::{AUG_REPEATS, IMG_SIZE, SettingError, TrainTransform, parse_aa};
use loader::{JobSpec, TransformSpec};

use super::TrainConfig;

/// The loader jobs of a recipe: its training transform on `rsb.train_split` and its evaluation
/// on `rsb.val_split`, every setting explicit (no preset behind them).
#[derive(Debug, Clone, PartialEq)]
pub struct DataJobs {
    /// Training batches.
    pub train: JobSpec,
    /// Evaluation batches.
    pub eval: JobSpec,
}

impl TryFrom<&TrainConfig> for DataJobs {
    type Error = SettingError;

    /// Both jobs, checked as the daemon will check them; errors name the recipe's key.
    fn try_from(c: &TrainConfig) -> Result<DataJobs, SettingError> {
        let batch_size = to_u32("batch_size", c.batch_size, BATCH_SIZE)?;
        let unknown = |key, text: &str, e: UnknownInterpolation| {
            SettingError::new(key, format!("{text:?}"), format!("is not allowed: {e}"))
        };
        let train = JobSpec::single(
            &c.rsb.train_split,
            TransformSpec::Train(TrainTransform {
                img_size: to_u32("img_size", c.img_size, IMG_SIZE)?,
                scale: c.scale,
                ratio: c.ratio,
                hflip: c.hflip,
                aa: parse_aa(&c.aa)?,
                train_interpolation: c
                    .train_interpolation
                    .parse()
                    .map_err(|e| unknown("train_interpolation", &c.train_interpolation, e))?,
                aug_repeats: to_u32("aug_repeats", c.aug_repeats, AUG_REPEATS)?,
            }),
            c.seed,
            batch_size,
        );
        train.validate()?;
        // Every rank's job must pass the daemon's check too.
        let world = to_u32("rsb.world_size", c.rsb.world_size, WORLD_SIZE)?;
        JobSpec {
            world_size: world,
            rank: world - 1,
            ..train.clone()
        }
        .validate()
        .map_err(|mut e| {
            if e.key == "world_size" {
                e.key = "rsb.world_size";
            }
            e
        })?;
        let eval = JobSpec::single(
            &c.rsb.val_split,
            TransformSpec::Eval(EvalTransform {
                img_size: to_u32("rsb.test_img_size", c.rsb.test_img_size, IMG_SIZE)?,
                crop_pct: c.crop_pct,
                interpolation: c
                    .interpolation
                    .parse()
                    .map_err(|e| unknown("interpolation", &c.interpolation, e))?,
            }),
            c.seed,
            batch_size,
        );
        // The eval transform's `img_size` is the recipe's `rsb.test_img_size`.
        eval.validate().map_err(|mut e| {
            if e.key == "img_size" {
                e.key = "rsb.test_img_size";
            }
            e
        })?;
        Ok(DataJobs { train, eval })
    }
}

impl DataJobs {
    /// Each job's split with the recipe key that chose it, for the loader's split checks.
    pub fn splits(&self) -> [(&str, &'static str); 2] {
        [
            (&self.train.split, "rsb.train_split"),
            (&self.eval.split, "rsb.val_split"),
        ]
    }

    /// The training job of rank `rank` of `world_size` (what timm's rank gets: its slice of
    /// the repeated-augmentation sampler, `batch_size` images per step).
    pub fn train_rank(&self, world_size: usize, rank: usize) -> JobSpec {
        JobSpec {
            // Checked against the loader's bounds when the recipe was read.
            world_size: u32::try_from(world_size).unwrap_or(u32::MAX),
            rank: u32::try_from(rank).unwrap_or(u32::MAX),
            ..self.train.clone()
        }
    }
}

/// A recipe count as the loader's `u32`, within `range` (a value too large for `u32` is out of
/// it too, and reported as given).
fn to_u32(
    key: &'static str,
    value: usize,
    range: RangeInclusive<u32>,
) -> Result<u32, SettingError> {
    match u32::try_from(value) {
        Ok(v) => SettingError::within(key, v, range).map(|()| v),
        Err(_) => Err(SettingError::new(
            key,
            value,
            format!("is outside {:?}..={:?}", range.start(), range.end()),
        )),
    }
}
