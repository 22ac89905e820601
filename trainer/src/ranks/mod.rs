//! The recipe's `world_size` ranks with timm's DDP semantics, on the devices and processes a
//! run has: one after another on one device ([`virtual_ranks`]), shared by several GPUs of
//! this process ([`replicas`]), and over several processes or nodes ([`processes`]); `World`
//! is this process's share, as `trainer train` drives it.

pub mod processes;
pub mod replicas;
pub mod virtual_ranks;

use std::rc::Rc;

use burn::tensor::{Device, Tensor};

use crate::step::{HostBatch, StepError, TrainStep};
use processes::{ProcessPlacement, Processes, all_reduce_grads};
use replicas::Replicas;
use virtual_ranks::{RankStats, VirtualRanks};

/// Errors of a step of the world: a rank's step, or the sum with the other processes.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A rank's step.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The sum, gather or check with the other processes.
    #[error(transparent)]
    Processes(#[from] processes::ProcessError),
}

/// This process's ranks and where they train.
pub(crate) enum Devices {
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

/// This process's ranks of a run, on its devices, joined to the other processes' ranks.
pub(crate) struct World {
    /// Where this process's ranks train.
    pub devices: Devices,
    /// The run's processes.
    pub processes: Rc<dyn Processes>,
    /// Which ranks are this process's.
    pub placement: ProcessPlacement,
}

impl World {
    /// `world` ranks, all in this process, on `devices`.
    pub fn alone(devices: Devices, world: usize) -> World {
        World {
            devices,
            processes: Rc::new(processes::Alone),
            placement: ProcessPlacement {
                index: 0,
                count: 1,
                world: world.max(1),
            },
        }
    }

    /// One optimizer step over this process's ranks' batches (`batches[i]` is rank
    /// `placement.ranks().start + i`'s) at learning rate `lr`, their gradients summed with the
    /// other processes'; each of this process's ranks' loss, not yet read back.
    ///
    /// # Errors
    /// [`WorldError`]: a rank's step, or the sum over the processes.
    pub fn step(
        &mut self,
        batches: &[HostBatch<'_>],
        lr: f64,
    ) -> Result<Vec<Tensor<1>>, WorldError> {
        let processes = &*self.processes;
        let (first, world) = (self.placement.ranks().start, self.placement.world);
        match &mut self.devices {
            // One process: the virtual ranks' own step (one rank is the plain step).
            Devices::One {
                step,
                ranks,
                device,
            } if processes.count() == 1 => Ok(ranks.step(step, batches, lr, device)?),
            Devices::One {
                step,
                ranks,
                device,
            } => {
                if batches.len() != ranks.world_size() {
                    return Err(StepError::Ranks {
                        batches: batches.len(),
                        ranks: ranks.world_size(),
                    }
                    .into());
                }
                let (losses, grads) = ranks.grads(step, batches, first, world, device)?;
                let model = step.model().ok_or(StepError::Poisoned)?;
                let grads = all_reduce_grads(processes, grads, model)?;
                step.apply(lr, grads)?;
                Ok(losses)
            }
            Devices::Many(replicas) => replicas.step(batches, lr, processes),
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
        match &mut self.devices {
            Devices::One {
                step,
                ranks,
                device,
            } if self.placement.world == 1 => step.run_timed(batch, lr, device, times),
            Devices::One { ranks, .. } => Err(StepError::Ranks {
                batches: 1,
                ranks: ranks.world_size(),
            }),
            Devices::Many(r) => Err(StepError::Ranks {
                batches: 1,
                ranks: r.world_size(),
            }),
        }
    }

    /// The step whose model is evaluated and saved (the first device's).
    pub(crate) fn primary(&self) -> &TrainStep {
        match &self.devices {
            Devices::One { step, .. } => step,
            Devices::Many(r) => r.primary(),
        }
    }

    /// The device of [`World::primary`].
    pub fn device(&self) -> &Device {
        match &self.devices {
            Devices::One { device, .. } => device,
            Devices::Many(r) => r.primary_device(),
        }
    }

    /// timm's `--dist-bn reduce` over every rank of every process, before an end-of-epoch
    /// evaluation.
    ///
    /// # Errors
    /// [`StepError::Poisoned`] when a failed step lost the model; the sum's error.
    pub(crate) fn reduce_bn(&mut self) -> Result<(), WorldError> {
        let processes = &*self.processes;
        let world = self.placement.world;
        match &mut self.devices {
            Devices::One { step, ranks, .. } => {
                let model = step.model().ok_or(StepError::Poisoned)?;
                if processes.count() == 1 {
                    ranks.stats.reduce(model);
                } else {
                    ranks.stats.reduce_across(model, processes, world)?;
                }
                Ok(())
            }
            Devices::Many(r) => r.reduce_bn(processes, world),
        }
    }

    /// Every rank's BN statistics, of every process, for a checkpoint of a run with several
    /// ranks (every process must ask: it is a collective).
    ///
    /// # Errors
    /// [`StepError::Poisoned`] when a failed step lost the model; the gather's error.
    pub(crate) fn all_stats(&self) -> Result<RankStats, WorldError> {
        let mine = match &self.devices {
            Devices::One { ranks, .. } => ranks.stats.clone(),
            Devices::Many(r) => r.all_stats()?,
        };
        Ok(mine.gather(&*self.processes, self.device())?)
    }
}
