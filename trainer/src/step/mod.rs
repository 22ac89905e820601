//! One training step of the recipes, everything after the loader: upload uint8 pixels,
//! Mixup/CutMix, normalize, forward, BCE (or cross-entropy), backward, timm's LAMB.

pub mod loss;
pub mod mixup;

use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::data::normalize::{BatchError, normalize};
use crate::data::upload::{Pixels, Uploader};
use crate::model::Network;
use crate::model::drop_path::mix_key;
use crate::optim::lamb::TimmLamb;
use crate::step::loss::LossKind;
use crate::step::mixup::{MixupConfig, labels_tensor};

/// Model, optimizer and the per-batch ingredients of a recipe.
pub(crate) struct TrainStep {
    /// The model being trained (on an autodiff device); `None` only if a step panicked.
    pub model: Option<Network>,
    /// Its optimizer.
    pub optimizer: TimmLamb,
    /// Mixup/CutMix settings.
    pub mixup: MixupConfig,
    /// The loss.
    pub loss: LossKind,
    /// Seed of the mixing draws.
    pub seed: u64,
    /// The pixels' way to the device (shared by the replicas of a run: one registry of
    /// page-locked rings, one count of host copies).
    pub upload: Arc<Uploader>,
}

/// A host batch as the loader hands it over.
pub(crate) struct HostBatch<'a> {
    /// `[n, h, w, 3]` uint8 pixels.
    pub pixels: Pixels<'a>,
    /// `[n, h, w]`.
    pub shape: [usize; 3],
    /// Class of each image.
    pub labels: &'a [u32],
    /// Global step, which keys the mixing draws.
    pub step: u64,
}

/// Seconds a step spent in each phase, summed over the steps timed. The device is synchronized
/// after each phase, which costs the overlap between phases: measure speed without it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PhaseTimes {
    /// The uint8 batch to the device, widened to floats.
    pub upload: f64,
    /// Mixup/CutMix, normalization and the mixed targets.
    pub mix: f64,
    /// The model's forward pass.
    pub forward: f64,
    /// The loss.
    pub loss: f64,
    /// The backward pass and the gradients' collection.
    pub backward: f64,
    /// LAMB (with its global-norm clip).
    pub optimizer: f64,
}

impl PhaseTimes {
    /// Every phase multiplied by `k` (`1e3 / steps`: milliseconds per step).
    pub(crate) fn scaled(self, k: f64) -> PhaseTimes {
        PhaseTimes {
            upload: self.upload * k,
            mix: self.mix * k,
            forward: self.forward * k,
            loss: self.loss * k,
            backward: self.backward * k,
            optimizer: self.optimizer * k,
        }
    }
}

/// Adds each phase's time to a [`PhaseTimes`], when there is one to fill.
struct Clock<'a> {
    times: Option<&'a mut PhaseTimes>,
    device: &'a Device,
    last: std::time::Instant,
}

impl<'a> Clock<'a> {
    fn new(times: Option<&'a mut PhaseTimes>, device: &'a Device) -> Clock<'a> {
        Clock {
            times,
            device,
            last: std::time::Instant::now(),
        }
    }

    /// Ends a phase: waits for the device, adds the time since the last lap to `pick`'s field.
    fn lap(&mut self, pick: fn(&mut PhaseTimes) -> &mut f64) {
        if let Some(times) = self.times.as_deref_mut() {
            // A failed sync shows up again at the step's own read-back.
            let _ = self.device.sync();
            let now = std::time::Instant::now();
            *pick(times) += (now - self.last).as_secs_f64();
            self.last = now;
        }
    }
}

/// Errors of a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The pixels do not match the shape.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The mixing parameters could not be drawn.
    #[error(transparent)]
    Mixup(#[from] crate::step::mixup::MixupError),
    /// A label the model has no class for (burn's one-hot would panic on it).
    #[error(
        "label {label} in the batch is not below num_classes = {num_classes}; the dataset and \
         the recipe disagree (an unlabelled split, or another dataset's classes)"
    )]
    Label {
        /// The label.
        label: u32,
        /// The model's classes.
        num_classes: usize,
    },
    /// A step over ranks was given another number of batches than it has ranks.
    #[error("{batches} batches for a step of {ranks} ranks")]
    Ranks {
        /// Batches given.
        batches: usize,
        /// Ranks of the run.
        ranks: usize,
    },
    /// An earlier step panicked half-way and lost the model.
    #[error("the model was lost by an earlier failed step")]
    Poisoned,
}

impl TrainStep {
    /// Runs one step at learning rate `lr` and returns the loss (not yet read back, so the
    /// device is not synchronized).
    pub fn run(
        &mut self,
        batch: &HostBatch<'_>,
        lr: f64,
        device: &Device,
    ) -> Result<Tensor<1>, StepError> {
        self.run_timed(batch, lr, device, None)
    }

    /// [`TrainStep::run`], adding each phase's time to `times` when given (see [`PhaseTimes`]).
    pub(crate) fn run_timed(
        &mut self,
        batch: &HostBatch<'_>,
        lr: f64,
        device: &Device,
        mut times: Option<&mut PhaseTimes>,
    ) -> Result<Tensor<1>, StepError> {
        let (loss, grads) = self.grads_timed(batch, self.seed, 1, device, times.as_deref_mut())?;
        let mut clock = Clock::new(times, device);
        self.apply(lr, grads)?;
        clock.lap(|t| &mut t.optimizer);
        Ok(loss)
    }

    /// The loss of one rank's batch and its gradients, the loss divided by `ranks` before the
    /// backward pass, so that the gradients of `ranks` ranks sum to their mean (what DDP's
    /// all-reduce gives each rank). `seed` keys this rank's Mixup/CutMix draws (timm seeds
    /// each rank with `seed + rank`) and, with the step, its drop-path masks. The returned loss
    /// is not divided.
    pub fn grads(
        &self,
        batch: &HostBatch<'_>,
        seed: u64,
        ranks: usize,
        device: &Device,
    ) -> Result<(Tensor<1>, GradientsParams), StepError> {
        self.grads_timed(batch, seed, ranks, device, None)
    }

    /// [`TrainStep::grads`], adding each phase's time to `times` when given.
    fn grads_timed(
        &self,
        batch: &HostBatch<'_>,
        seed: u64,
        ranks: usize,
        device: &Device,
        times: Option<&mut PhaseTimes>,
    ) -> Result<(Tensor<1>, GradientsParams), StepError> {
        let num_classes = self.mixup.num_classes;
        if let Some(&label) = batch.labels.iter().find(|&&l| l as usize >= num_classes) {
            return Err(StepError::Label { label, num_classes });
        }
        let [_, h, w] = batch.shape;
        let params = self.mixup.draw(seed, batch.step, h, w)?;
        let mut clock = Clock::new(times, device);
        let pixels = self.upload.upload(&batch.pixels, batch.shape, device)?;
        clock.lap(|t| &mut t.upload);
        let x = normalize(params.mix_pixels(pixels));
        let targets = params.targets(labels_tensor(batch.labels, device), &self.mixup);
        clock.lap(|t| &mut t.mix);
        let model = self.model.as_ref().ok_or(StepError::Poisoned)?;
        let logits = model.forward_with(x, Some(mix_key(seed, batch.step)));
        clock.lap(|t| &mut t.forward);
        let loss = self.loss.of(logits, targets);
        clock.lap(|t| &mut t.loss);
        // One rank: no division at all, so a one-rank run is bit for bit what it was.
        let backward = if ranks > 1 {
            loss.clone().div_scalar(ranks as f64).backward()
        } else {
            loss.backward()
        };
        let grads = GradientsParams::from_grads(backward, model);
        clock.lap(|t| &mut t.backward);
        Ok((loss.detach(), grads))
    }

    /// One LAMB step at learning rate `lr` with `grads`.
    pub(crate) fn apply(&mut self, lr: f64, grads: GradientsParams) -> Result<(), StepError> {
        // The optimizer takes the model by value: a clone would keep the old parameters alive
        // and stop in-place updates, so move it out and back.
        let model = self.model.take().ok_or(StepError::Poisoned)?;
        self.model = Some(self.optimizer.step(lr, model, grads));
        Ok(())
    }

    /// The model as it stands.
    pub fn model(&self) -> Option<&Network> {
        self.model.as_ref()
    }
}
