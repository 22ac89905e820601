/*!
What one consumer asks the loader for, and the batches that request means.

A [`JobSpec`] (transform, split, seed, ranks, batch size) is all a client sends; from it and the
split's length every party derives the same sampler and the same (epoch, step) → samples map,
so a batch is named by its position alone. That is what makes restarts exact: a client that
reconnects at (epoch, step) gets the bytes it would have got (docs/design.md invariant 1).
*/

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::request::transform::{SettingError, TransformSpec};
use crate::sampling::sampler::{Sample, Sampler, SamplerConfig, SamplerError};

/// Samples per batch on one rank that the loader accepts (`batch_size`).
pub const BATCH_SIZE: RangeInclusive<u32> = 1..=8192;
/// Ranks of one job that the loader accepts (`world_size`).
pub const WORLD_SIZE: RangeInclusive<u32> = 1..=4096;
/// Most epochs a job may run or start at (A1 runs 600).
pub const MAX_EPOCHS: u32 = 100_000;

/// Errors in a job's settings.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A transform setting is out of range.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The split is too large for 32-bit sample indices.
    #[error("split of {0} records is larger than the loader's 2^32 limit")]
    TooLarge(u64),
    /// The sampler rejected the settings.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// Not even one batch per epoch.
    #[error("{samples} samples per rank and epoch do not fill one batch of {batch_size}")]
    NoBatch {
        /// Samples per rank and epoch.
        samples: u64,
        /// Requested batch size.
        batch_size: u32,
    },
}

/// A consumer's request, as timm's train.py flags would state it: built where it enters (a
/// recipe, a command line), checked there and again by the daemon with [`JobSpec::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Split of the packed dataset (`train`, `val`).
    pub split: String,
    /// Every setting of the transform.
    pub transform: TransformSpec,
    /// timm's `--seed`.
    pub seed: u64,
    /// Number of ranks of the job.
    pub world_size: u32,
    /// This consumer's rank.
    pub rank: u32,
    /// Samples per batch on this rank (timm's `--batch-size`).
    pub batch_size: u32,
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
                // Requests are bounded far below (MAX_EPOCHS); never wrap to epoch 0.
                epoch: self.epoch.saturating_add(1),
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

/// A job resolved against a split: the sampler and the batch arithmetic.
#[derive(Debug, Clone)]
pub struct JobPlan {
    spec: JobSpec,
    sampler: Sampler,
}

impl JobSpec {
    /// One rank, batch size `batch_size`: what `bench`, `preview` and an in-process trainer use.
    pub fn single(split: &str, transform: TransformSpec, seed: u64, batch_size: u32) -> JobSpec {
        JobSpec {
            split: split.to_owned(),
            transform,
            seed,
            world_size: 1,
            rank: 0,
            batch_size,
        }
    }

    /// Checks every setting that does not depend on the split: the transform's, the batch
    /// size and the ranks.
    ///
    /// # Errors
    /// The first setting out of range, by timm's flag name.
    pub fn validate(&self) -> Result<(), SettingError> {
        self.transform.validate()?;
        SettingError::within("batch_size", self.batch_size, BATCH_SIZE)?;
        SettingError::within("world_size", self.world_size, WORLD_SIZE)?;
        if self.rank >= self.world_size {
            return Err(SettingError::new(
                "rank",
                self.rank,
                format!("is not below world_size = {}", self.world_size),
            ));
        }
        Ok(())
    }

    /// Resolves the job for a split of `split_len` records.
    ///
    /// # Errors
    /// As [`JobSpec::validate`], and when the split cannot give one batch per epoch.
    pub fn plan(&self, split_len: u64) -> Result<JobPlan, JobError> {
        self.validate()?;
        let sampler = Sampler::new(SamplerConfig {
            dataset_len: u32::try_from(split_len).map_err(|_| JobError::TooLarge(split_len))?,
            world_size: self.world_size,
            rank: self.rank,
            aug_repeats: self.transform.aug_repeats(),
            shuffle: self.transform.is_train(),
            seed: self.seed,
        })?;
        let plan = JobPlan {
            spec: self.clone(),
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
    pub fn transform(&self) -> TransformSpec {
        self.spec.transform
    }

    /// The sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Whether this is training (last partial batch dropped, as timm's train loader does) rather
    /// than evaluation (every sample, the last batch possibly short).
    fn drops_last(&self) -> bool {
        self.spec.transform.is_train()
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
    use crate::request::transform::TrainTransform;

    fn preset(name: &str) -> TransformSpec {
        TransformSpec::preset(name).unwrap()
    }

    #[test]
    fn train_drops_the_partial_batch_and_eval_keeps_it() {
        let train = JobSpec::single("train", preset("a3"), 1, 64)
            .plan(1000)
            .unwrap();
        assert_eq!(train.steps_per_epoch(), 15);
        let samples = train.sampler().epoch(0);
        assert_eq!(train.batch(&samples, 14).len(), 64);
        assert!(train.batch(&samples, 15).is_empty());

        let eval = JobSpec::single("val", preset("eval"), 1, 64)
            .plan(1000)
            .unwrap();
        assert_eq!(eval.steps_per_epoch(), 16);
        let samples = eval.sampler().epoch(0);
        assert_eq!(eval.batch(&samples, 15).len(), 1000 - 15 * 64);
        assert_eq!(eval.batch(&samples, 0)[0].index, 0);
    }

    #[test]
    fn a1_has_three_repeats_and_positions_roll_over_epochs() {
        let plan = JobSpec::single("train", preset("a1"), 1, 256)
            .plan(1000)
            .unwrap();
        assert_eq!(plan.transform().aug_repeats(), 3);
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
    fn a_job_round_trips_through_json() {
        let Some(TransformSpec::Train(mut t)) = TransformSpec::preset("a3") else {
            panic!("a3 is a train transform")
        };
        t.img_size = 32;
        t.aa = None;
        let job = JobSpec {
            split: "train".into(),
            transform: TransformSpec::Train(TrainTransform {
                aug_repeats: 3,
                ..t
            }),
            seed: 9,
            world_size: 4,
            rank: 3,
            batch_size: 16,
        };
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), job);
        assert_eq!(job.plan(1000).unwrap().transform().aug_repeats(), 3);
    }

    #[test]
    fn bad_requests_are_named() {
        let e = JobSpec::single("train", preset("a3"), 1, 0)
            .plan(1000)
            .unwrap_err();
        assert_eq!(e.to_string(), "batch_size = 0 is outside 1..=8192");
        let e = JobSpec::single("train", preset("a3"), 1, 9000)
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "batch_size = 9000 is outside 1..=8192");
        let e = JobSpec::single("train", preset("a3"), 1, 2000)
            .plan(1000)
            .unwrap_err();
        assert!(matches!(e, JobError::NoBatch { .. }), "{e}");
        let mut job = JobSpec::single("train", preset("a3"), 1, 8);
        job.rank = 2;
        job.world_size = 2;
        assert!(job.validate().unwrap_err().to_string().contains("rank = 2"));
        job.world_size = 0;
        assert!(
            job.validate()
                .unwrap_err()
                .to_string()
                .contains("world_size = 0")
        );
    }
}
