/*!
What one consumer asks the loader for, and the batches that request means.

A [`JobSpec`] (transform, split, seed, ranks, batch size) is all a client sends; from it and the
split's length every party derives the same sampler and the same (epoch, step) → samples map,
so a batch is named by its position alone. That is what makes restarts exact: a client that
reconnects at (epoch, step) gets the bytes it would have got (DESIGN.md invariant 1).
*/

use serde::{Deserialize, Serialize};

use crate::crop::{Interpolation, InterpolationChoice};
use crate::pipeline::Transform;
use crate::sampler::{Sample, Sampler, SamplerConfig, SamplerError};

/// Errors in a job's settings.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The transform name is not one the loader knows.
    #[error("unknown transform {0:?} (a1, a2, a3 or eval)")]
    UnknownTransform(String),
    /// Batch size 0.
    #[error("batch size must be at least 1")]
    ZeroBatch,
    /// The split is too large for 32-bit sample indices.
    #[error("split of {0} records is larger than the loader's 2^32 limit")]
    TooLarge(u64),
    /// The sampler rejected the settings.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// A transform setting is out of range or does not apply.
    #[error("transform setting {key}: {message}")]
    Setting {
        /// The key (timm's flag name).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Not even one batch per epoch.
    #[error("{samples} samples per rank and epoch do not fill one batch of {batch_size}")]
    NoBatch {
        /// Samples per rank and epoch.
        samples: u64,
        /// Requested batch size.
        batch_size: u32,
    },
}

/// A consumer's request, as timm's train.py flags would state it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Split of the packed dataset (`train`, `val`).
    pub split: String,
    /// `a1`, `a2` (3 repeats), `a3` (no repeats) or `eval` (record order).
    pub transform: String,
    /// timm's `--seed`.
    pub seed: u64,
    /// Number of ranks of the job.
    pub world_size: u32,
    /// This consumer's rank.
    pub rank: u32,
    /// Samples per batch on this rank (timm's `--batch-size`).
    pub batch_size: u32,
    /// Changes to the named transform, from a recipe file (timm's flag names).
    #[serde(default)]
    pub overrides: TransformOverrides,
}

/// Settings that replace those of the named transform; `None` keeps the name's value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformOverrides {
    /// `--img-size` (train) or the eval resolution.
    pub img_size: Option<u32>,
    /// `--scale` (train).
    pub scale: Option<[f64; 2]>,
    /// `--ratio` (train).
    pub ratio: Option<[f64; 2]>,
    /// `--hflip` (train).
    pub hflip: Option<f64>,
    /// `--aa` (train); empty or `none`: no RandAugment.
    pub aa: Option<String>,
    /// `--train-interpolation` (`random`, `bilinear`, `bicubic`) or, for eval,
    /// `--interpolation`.
    pub interpolation: Option<String>,
    /// `--crop-pct` (eval).
    pub crop_pct: Option<f64>,
    /// `--aug-repeats` (train).
    pub aug_repeats: Option<u32>,
}

impl TransformOverrides {
    /// Applies the overrides to `transform`.
    pub fn apply(&self, transform: Transform) -> Result<Transform, JobError> {
        let bad = |key, message: String| JobError::Setting { key, message };
        if let Some(s) = self.img_size
            && !(8..=2048).contains(&s)
        {
            return Err(bad("img_size", format!("{s} is not within 8..=2048")));
        }
        let filter = |name: &str| match name {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            other => Err(bad(
                "interpolation",
                format!("{other:?}: bilinear or bicubic (or random for training)"),
            )),
        };
        match transform {
            Transform::Train(mut t) => {
                if self.crop_pct.is_some() {
                    return Err(bad("crop_pct", "applies to the eval transform".into()));
                }
                t.img_size = self.img_size.unwrap_or(t.img_size);
                if let Some([lo, hi]) = self.scale {
                    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                        return Err(bad(
                            "scale",
                            format!("[{lo}, {hi}]: need 0 < min <= max <= 1"),
                        ));
                    }
                    t.rrc.scale = (lo, hi);
                }
                if let Some([lo, hi]) = self.ratio {
                    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
                        return Err(bad("ratio", format!("[{lo}, {hi}]: need 0 < min <= max")));
                    }
                    t.rrc.ratio = (lo, hi);
                }
                if let Some(p) = self.hflip {
                    if !(0.0..=1.0).contains(&p) {
                        return Err(bad("hflip", format!("{p} is not a probability")));
                    }
                    t.hflip = p;
                }
                match self.aa.as_deref() {
                    None => {}
                    Some("" | "none") => t.rand_augment = None,
                    Some(text) => {
                        t.rand_augment = Some(
                            text.parse()
                                .map_err(|e| bad("aa", format!("{text:?}: {e}")))?,
                        )
                    }
                }
                match self.interpolation.as_deref() {
                    None => {}
                    Some("random") => t.interpolation = InterpolationChoice::Random,
                    Some(name) => t.interpolation = InterpolationChoice::Fixed(filter(name)?),
                }
                Ok(Transform::Train(t))
            }
            Transform::Eval(mut e) => {
                for (key, set) in [
                    ("scale", self.scale.is_some()),
                    ("ratio", self.ratio.is_some()),
                    ("hflip", self.hflip.is_some()),
                    ("aa", self.aa.is_some()),
                    ("aug_repeats", self.aug_repeats.is_some()),
                ] {
                    if set {
                        return Err(bad(key, "applies to training transforms only".into()));
                    }
                }
                e.img_size = self.img_size.unwrap_or(e.img_size);
                if let Some(c) = self.crop_pct {
                    if !(c > 0.0 && c <= 1.0) {
                        return Err(bad("crop_pct", format!("{c} is not in (0, 1]")));
                    }
                    e.crop_pct = c;
                }
                if let Some(name) = self.interpolation.as_deref() {
                    e.interpolation = filter(name)?;
                }
                Ok(Transform::Eval(e))
            }
        }
    }
}

/// A position in the stream of batches: epoch and step within the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u32,
    /// Batch within the epoch, from 0.
    pub step: u64,
}

impl Position {
    /// The position after this one, in a stream of `steps_per_epoch` batches per epoch.
    pub fn next(self, steps_per_epoch: u64) -> Position {
        if self.step + 1 >= steps_per_epoch {
            Position {
                epoch: self.epoch + 1,
                step: 0,
            }
        } else {
            Position {
                epoch: self.epoch,
                step: self.step + 1,
            }
        }
    }
}

/// A job resolved against a split: the transform, the sampler and the batch arithmetic.
#[derive(Debug, Clone)]
pub struct JobPlan {
    spec: JobSpec,
    transform: Transform,
    sampler: Sampler,
}

impl JobSpec {
    /// One rank, batch size `batch_size`: what `bench`, `preview` and an in-process trainer use.
    pub fn single(split: &str, transform: &str, seed: u64, batch_size: u32) -> JobSpec {
        JobSpec {
            split: split.to_owned(),
            transform: transform.to_owned(),
            seed,
            world_size: 1,
            rank: 0,
            batch_size,
            overrides: TransformOverrides::default(),
        }
    }

    /// Repeated-augmentation copies per image: 3 for the A1/A2 recipes (timm's
    /// `--aug-repeats 3`), none otherwise.
    pub fn aug_repeats(&self) -> u32 {
        let by_name = if matches!(self.transform.as_str(), "a1" | "a2") {
            3
        } else {
            0
        };
        self.overrides.aug_repeats.unwrap_or(by_name)
    }

    /// Resolves the job for a split of `split_len` records.
    pub fn plan(&self, split_len: u64) -> Result<JobPlan, JobError> {
        let transform = Transform::named(&self.transform)
            .ok_or_else(|| JobError::UnknownTransform(self.transform.clone()))?;
        let transform = self.overrides.apply(transform)?;
        if self.batch_size == 0 {
            return Err(JobError::ZeroBatch);
        }
        let sampler = Sampler::new(SamplerConfig {
            dataset_len: u32::try_from(split_len).map_err(|_| JobError::TooLarge(split_len))?,
            world_size: self.world_size,
            rank: self.rank,
            aug_repeats: self.aug_repeats(),
            shuffle: self.transform != "eval",
            seed: self.seed,
        })?;
        let plan = JobPlan {
            spec: self.clone(),
            transform,
            sampler,
        };
        if plan.steps_per_epoch() == 0 {
            return Err(JobError::NoBatch {
                samples: plan.sampler.samples_per_rank(),
                batch_size: self.batch_size,
            });
        }
        Ok(plan)
    }
}

impl JobPlan {
    /// The request.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The transform.
    pub fn transform(&self) -> Transform {
        self.transform
    }

    /// The sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Whether this is training (last partial batch dropped, as timm's train loader does) rather
    /// than evaluation (every sample, the last batch possibly short).
    fn drops_last(&self) -> bool {
        self.spec.transform != "eval"
    }

    /// Batches per epoch on this rank.
    pub fn steps_per_epoch(&self) -> u64 {
        let (n, b) = (
            self.sampler.samples_per_rank(),
            u64::from(self.spec.batch_size),
        );
        if self.drops_last() {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The samples of batch `step` within `epoch_samples` (what `sampler().epoch(e)` returned);
    /// empty past the end of the epoch.
    pub fn batch<'a>(&self, epoch_samples: &'a [Sample], step: u64) -> &'a [Sample] {
        let b = self.spec.batch_size as usize;
        if step >= self.steps_per_epoch() {
            return &[];
        }
        let start = (step as usize).saturating_mul(b).min(epoch_samples.len());
        let end = start.saturating_add(b).min(epoch_samples.len());
        &epoch_samples[start..end]
    }

    /// The position after `at`.
    pub fn next(&self, at: Position) -> Position {
        at.next(self.steps_per_epoch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_drops_the_partial_batch_and_eval_keeps_it() {
        let train = JobSpec::single("train", "a3", 1, 64).plan(1000).unwrap();
        assert_eq!(train.steps_per_epoch(), 15);
        let samples = train.sampler().epoch(0);
        assert_eq!(train.batch(&samples, 14).len(), 64);
        assert!(train.batch(&samples, 15).is_empty());

        let eval = JobSpec::single("val", "eval", 1, 64).plan(1000).unwrap();
        assert_eq!(eval.steps_per_epoch(), 16);
        let samples = eval.sampler().epoch(0);
        assert_eq!(eval.batch(&samples, 15).len(), 1000 - 15 * 64);
        assert_eq!(eval.batch(&samples, 0)[0].index, 0);
    }

    #[test]
    fn a1_has_three_repeats_and_positions_roll_over_epochs() {
        let plan = JobSpec::single("train", "a1", 1, 256).plan(1000).unwrap();
        assert_eq!(plan.spec().aug_repeats(), 3);
        // floor(1000 / 256) * 256 samples, 3 batches.
        assert_eq!(plan.steps_per_epoch(), 3);
        let p = Position { epoch: 4, step: 2 };
        assert_eq!(plan.next(p), Position { epoch: 5, step: 0 });
        assert_eq!(
            plan.next(Position { epoch: 4, step: 0 }),
            Position { epoch: 4, step: 1 }
        );
    }

    #[test]
    fn overrides_change_the_named_transform_and_bad_ones_are_named() {
        let mut job = JobSpec::single("train", "a3", 1, 64);
        job.overrides = TransformOverrides {
            img_size: Some(32),
            scale: Some([0.35, 1.0]),
            aa: Some("none".into()),
            interpolation: Some("bilinear".into()),
            aug_repeats: Some(3),
            ..Default::default()
        };
        let plan = job.plan(1000).unwrap();
        let Transform::Train(t) = plan.transform() else {
            panic!("not a train transform")
        };
        assert_eq!(t.img_size, 32);
        assert_eq!(t.rrc.scale, (0.35, 1.0));
        assert!(t.rand_augment.is_none());
        assert_eq!(
            t.interpolation,
            InterpolationChoice::Fixed(Interpolation::Bilinear)
        );
        assert_eq!(job.aug_repeats(), 3);
        job.overrides.crop_pct = Some(0.9);
        let e = job.plan(1000).unwrap_err();
        assert!(e.to_string().contains("crop_pct"), "{e}");
        let mut eval = JobSpec::single("val", "eval", 1, 64);
        eval.overrides.crop_pct = Some(0.875);
        eval.overrides.img_size = Some(32);
        let Transform::Eval(e) = eval.plan(100).unwrap().transform() else {
            panic!("not eval")
        };
        assert_eq!((e.img_size, e.crop_pct), (32, 0.875));
        eval.overrides.aa = Some("rand-m9".into());
        assert!(eval.plan(100).is_err());
    }

    #[test]
    fn bad_requests_are_named() {
        let e = JobSpec::single("train", "a9", 1, 8).plan(1000).unwrap_err();
        assert!(e.to_string().contains("a9"), "{e}");
        let e = JobSpec::single("train", "a3", 1, 0).plan(1000).unwrap_err();
        assert!(matches!(e, JobError::ZeroBatch));
        let e = JobSpec::single("train", "a3", 1, 2000)
            .plan(1000)
            .unwrap_err();
        assert!(matches!(e, JobError::NoBatch { .. }), "{e}");
    }
}
