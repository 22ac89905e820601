//! The one way a model and its weights reach a device, for every command: `trainer train`
//! (`--resume`, `--init-from`), `eval`, `study`, `logits` and `export`. Weights are a checkpoint
//! directory of a run (`RUN/latest`, `RUN/ckpt-*`) or a timm-named safetensors file; a model is
//! built from its config on an opened device ([`OnDevice`]), then given its weights.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::checkpoint::{Checkpoint, CheckpointError};
use crate::data::upload::Uploader;
use crate::device::DeviceError;
use crate::device::{DeviceKind, Precision};
use crate::eval::Target;
use crate::model::family::ConfigError;
use crate::model::timm_weights::{self, Imported, TimmWeightsError};
use crate::model::{Network, NetworkConfig, seeded};

/// Errors loading weights or opening the device they go to.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A checkpoint directory.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A timm-named safetensors file.
    #[error(transparent)]
    Timm(#[from] TimmWeightsError),
    /// The model's configuration.
    #[error(transparent)]
    Model(#[from] ConfigError),
    /// The device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl WeightsError {
    /// Whether the weights the user named are at fault (they do not fit the model, or are not
    /// weights), not the device.
    pub fn is_bad_input(&self) -> bool {
        match self {
            WeightsError::Checkpoint(e) => e.is_bad_input(),
            WeightsError::Timm(_) | WeightsError::Model(_) => true,
            WeightsError::Device(e) => e.is_bad_input(),
        }
    }
}

/// Weights on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// A run's checkpoint directory.
    Checkpoint(Checkpoint),
    /// timm-named safetensors (from `timm` and `safetensors.torch.save_file`, or `trainer
    /// export`).
    Timm(PathBuf),
}

impl Weights {
    /// The weights at `path`: a directory is a checkpoint, a file timm-named safetensors.
    pub fn at(path: &Path) -> Weights {
        if path.is_dir() {
            Weights::Checkpoint(Checkpoint::at(path))
        } else {
            Weights::Timm(path.to_path_buf())
        }
    }

    /// Where they are.
    pub fn path(&self) -> &Path {
        match self {
            Weights::Checkpoint(c) => c.dir(),
            Weights::Timm(path) => path,
        }
    }

    /// `model` with every tensor of these weights; a tensor missing or of another shape is
    /// an error. With it, a line to say once when the file's float types were cast.
    ///
    /// # Errors
    /// [`WeightsError`] naming the file.
    pub(crate) fn load_into(
        &self,
        model: Network,
    ) -> Result<(Network, Option<String>), WeightsError> {
        Ok(match self {
            Weights::Checkpoint(c) => (c.load_model(model)?, None),
            Weights::Timm(path) => {
                let imported = timm_weights::import(model, path)?;
                (imported.model, imported.note)
            }
        })
    }

    /// `model` with these weights for fine-tuning on another label set (timm's
    /// `--initial-checkpoint` role): every tensor strictly, except a classifier of another
    /// class count, which keeps `model`'s fresh initialization. A checkpoint's model is built
    /// from its own recipe on `device` first. Returns the tensors so kept, and what loading
    /// cast.
    ///
    /// # Errors
    /// [`WeightsError`] naming the file.
    pub(crate) fn load_backbone(
        &self,
        model: Network,
        device: &Device,
    ) -> Result<Imported, WeightsError> {
        match self {
            Weights::Timm(path) => Ok(timm_weights::import_backbone(model, path)?),
            Weights::Checkpoint(c) => {
                let theirs = c.load_model(c.recipe()?.model()?.init(device)?)?;
                Ok(timm_weights::backbone_from(model, &theirs, c.dir())?)
            }
        }
    }
}

/// A model on an opened device, with the way its batches get there: what every command that
/// runs a model holds.
pub struct OnDevice {
    /// The model (built on the autodiff device; [`burn::module::Module::valid`]
    /// gives its eval-mode copy).
    pub model: Network,
    /// The device, with gradient recording.
    pub device: Device,
    /// Its float types.
    pub precision: Precision,
    /// The pixels' way to it.
    pub upload: Uploader,
    /// A line to say once about the weights (their float types cast on load).
    pub note: Option<String>,
}

impl OnDevice {
    /// The model of `config` on a device of `kind` in `precision`: freshly initialized from
    /// `seed`, then given `weights` when there are some.
    ///
    /// # Errors
    /// [`WeightsError`]: the device cannot be opened, the weights do not fit.
    pub fn load(
        config: &NetworkConfig,
        kind: DeviceKind,
        precision: Precision,
        seed: u64,
        weights: Option<&Weights>,
    ) -> Result<OnDevice, WeightsError> {
        let device = kind.device(precision)?.autodiff();
        let mut model = seeded::init(config, kind, &device, seed)?;
        let mut note = None;
        if let Some(weights) = weights {
            (model, note) = weights.load_into(model)?;
        }
        model.set_compute(precision.compute());
        Ok(OnDevice {
            model,
            device,
            precision,
            upload: Uploader::new(kind),
            note,
        })
    }

    /// What an evaluation runs.
    pub fn target(&self) -> Target<'_> {
        Target {
            model: &self.model,
            device: &self.device,
            upload: &self.upload,
        }
    }
}
