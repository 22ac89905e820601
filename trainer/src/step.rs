//! One training step of the recipes, everything after the loader: upload uint8 pixels,
//! Mixup/CutMix, normalize, forward, BCE (or cross-entropy), backward, timm's LAMB.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::lamb::TimmLamb;
use crate::loss::{bce_with_logits, soft_target_cross_entropy};
use crate::mixup::{MixupConfig, labels_tensor};
use crate::normalize::{BatchError, normalize, upload_pixels};
use crate::resnet::ResNet;

/// The training loss, as train.py picks it from `--bce-loss` and `--bce-target-thresh`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// timm's `BinaryCrossEntropy`, targets thresholded when `target_thresh` is set (the
    /// recipes).
    Bce {
        /// `--bce-target-thresh`.
        target_thresh: Option<f64>,
    },
    /// Cross-entropy against the dense (mixed, smoothed) targets: timm's
    /// `SoftTargetCrossEntropy`, which with Mixup off equals its `LabelSmoothingCrossEntropy`.
    CrossEntropy,
}

/// Model, optimizer and the per-batch ingredients of a recipe.
pub struct TrainStep {
    /// The model being trained (on an autodiff device); `None` only if a step panicked.
    pub model: Option<ResNet>,
    /// Its optimizer.
    pub optimizer: TimmLamb,
    /// Mixup/CutMix settings.
    pub mixup: MixupConfig,
    /// The loss.
    pub loss: LossKind,
    /// Seed of the mixing draws.
    pub seed: u64,
}

/// A host batch as the loader hands it over.
pub struct HostBatch<'a> {
    /// `[n, h, w, 3]` uint8 pixels.
    pub pixels: &'a [u8],
    /// `[n, h, w]`.
    pub shape: [usize; 3],
    /// Class of each image.
    pub labels: &'a [u32],
    /// Global step, which keys the mixing draws.
    pub step: u64,
}

/// Errors of a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The pixels do not match the shape.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The mixing parameters could not be drawn.
    #[error(transparent)]
    Mixup(#[from] crate::mixup::MixupError),
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
        let [_, h, w] = batch.shape;
        let params = self.mixup.draw(self.seed, batch.step, h, w)?;
        let pixels = upload_pixels(batch.pixels.to_vec(), batch.shape, device)?;
        let x = normalize(params.mix_pixels(pixels));
        let targets = params.targets(labels_tensor(batch.labels, device), &self.mixup);
        let model = self.model.as_ref().ok_or(StepError::Poisoned)?;
        let logits = model.forward(x);
        let loss = match self.loss {
            LossKind::Bce { target_thresh } => bce_with_logits(logits, targets, target_thresh),
            LossKind::CrossEntropy => soft_target_cross_entropy(logits, targets),
        };
        let grads = GradientsParams::from_grads(loss.backward(), model);
        // The optimizer takes the model by value: a clone would keep the old parameters alive
        // and stop in-place updates, so move it out and back.
        let model = self.model.take().ok_or(StepError::Poisoned)?;
        self.model = Some(self.optimizer.step(lr, model, grads));
        Ok(loss.detach())
    }

    /// The model as it stands.
    pub fn model(&self) -> Option<&ResNet> {
        self.model.as_ref()
    }
}
