//! The recipe's `world_size` ranks with timm's DDP semantics, on the devices a run has: one
//! after another on one device ([`virtual_ranks`]), or shared by several GPUs of this process
//! ([`replicas`]); `World` is either, as `trainer train` drives it.

pub mod replicas;
pub mod virtual_ranks;

use burn::tensor::{Device, Tensor};

use crate::step::{HostBatch, StepError, TrainStep};
use replicas::Replicas;
use virtual_ranks::{RankStats, VirtualRanks};

/// The ranks of a run and where they train.
pub(crate) enum World {
    /// One device: the ranks as virtual ranks.
    One {
        /// The step (model, optimizer, mixing).
        step: Box<TrainStep>,
        /// The ranks' own BN statistics.
        ranks: VirtualRanks,
        /// The device.
        device: Device,
    },
    /// Several devices, each with its share of the ranks.
    Many(Replicas),
}

impl World {
    /// One optimizer step over every rank's batch (`batches[r]` is rank r's) at learning rate
    /// `lr`; each rank's loss, not yet read back.
    ///
    /// # Errors
    /// [`StepError`] of any rank.
    pub fn step(
        &mut self,
        batches: &[HostBatch<'_>],
        lr: f64,
    ) -> Result<Vec<Tensor<1>>, StepError> {
        match self {
            World::One {
                step,
                ranks,
                device,
            } => ranks.step(step, batches, lr, device),
            World::Many(replicas) => replicas.step(batches, lr),
        }
    }

    /// One rank's plain step on the one device, each phase's time added to `times` when
    /// given (see [`crate::step::PhaseTimes`]); the loss, not yet read back.
    ///
    /// # Errors
    /// [`StepError`]; [`StepError::Ranks`] for a world of several ranks or devices.
    pub(crate) fn step_timed(
        &mut self,
        batch: &HostBatch<'_>,
        lr: f64,
        times: Option<&mut crate::step::PhaseTimes>,
    ) -> Result<Tensor<1>, StepError> {
        match self {
            World::One {
                step,
                ranks,
                device,
            } if ranks.world_size() == 1 => step.run_timed(batch, lr, device, times),
            World::One { ranks, .. } => Err(StepError::Ranks {
                batches: 1,
                ranks: ranks.world_size(),
            }),
            World::Many(r) => Err(StepError::Ranks {
                batches: 1,
                ranks: r.world_size(),
            }),
        }
    }

    /// The step whose model is evaluated and saved (the first device's).
    pub(crate) fn primary(&self) -> &TrainStep {
        match self {
            World::One { step, .. } => step,
            World::Many(r) => r.primary(),
        }
    }

    /// The device of [`World::primary`].
    pub fn device(&self) -> &Device {
        match self {
            World::One { device, .. } => device,
            World::Many(r) => r.primary_device(),
        }
    }

    /// timm's `--dist-bn reduce` over every rank, before an end-of-epoch evaluation.
    ///
    /// # Errors
    /// [`StepError::Poisoned`] when a failed step lost the model.
    pub(crate) fn reduce_bn(&mut self) -> Result<(), StepError> {
        match self {
            World::One { step, ranks, .. } => {
                ranks.stats.reduce(step.model().ok_or(StepError::Poisoned)?);
                Ok(())
            }
            World::Many(r) => r.reduce_bn(),
        }
    }

    /// Every rank's BN statistics, for a checkpoint of a run with several ranks.
    ///
    /// # Errors
    /// [`StepError::Poisoned`] when a failed step lost the model.
    pub(crate) fn all_stats(&self) -> Result<RankStats, StepError> {
        match self {
            World::One { ranks, .. } => Ok(ranks.stats.clone()),
            World::Many(r) => r.all_stats(),
        }
    }
}
