//! The network a run trains, of whichever family `--model` names: what the rest of the trainer
//! (the step, the ranks, checkpoints, evaluation, weights files) holds and asks, so that a
//! family is added here and in its own folder, not in every caller.
//!
//! The families: timm's ResNet ([`crate::model::resnet`], two dozen timm names), RegNetY
//! ([`crate::model::regnet`]), EfficientNet ([`crate::model::efficientnet`]) and its Vision
//! Transformer ([`crate::model::vit`]).

use std::path::Path;

use burn::module::{Module, ModuleVisitor};
use burn::nn::Linear;
use burn::tensor::{Device, FloatDType, Tensor};

use crate::model::batch_norm::BatchNorm;
use crate::model::efficientnet::{self, EfficientNet, EfficientNetConfig};
pub use crate::model::family::{ConfigError, Family, Shape};
use crate::model::params;
use crate::model::regnet::{self, RegNet, RegNetConfig};
use crate::model::resnet::{self, ResNet, ResNetConfig, TrainableParam};
use crate::model::vit::{self, Vit, VitConfig};

/// A network of one of the families we build.
// A process holds a handful of networks (a rank's, a copy for evaluation): the variants'
// sizes (the ResNet's 2 KB of module handles) cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// timm's ResNet family.
    ResNet(ResNet),
    /// timm's RegNetY.
    RegNet(RegNet),
    /// timm's EfficientNet.
    EfficientNet(EfficientNet),
    /// timm's Vision Transformer.
    Vit(Vit),
}

/// Which network to build: a family's configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// timm's ResNet family.
    ResNet(ResNetConfig),
    /// timm's RegNetY.
    RegNet(RegNetConfig),
    /// timm's EfficientNet.
    EfficientNet(EfficientNetConfig),
    /// timm's Vision Transformer.
    Vit(VitConfig),
}

/// Every name `--model` takes, comma-separated (for messages and `--help`).
pub fn model_names() -> String {
    format!(
        "{}, {}, {}, {}",
        resnet::model_names(),
        regnet::model_names(),
        efficientnet::model_names(),
        vit::model_names()
    )
}

/// What a state dict under timm's names holds, in words (`timm's resnet50d, 1000 classes`),
/// for the message that refuses weights of another architecture than `--model`.
pub fn describe(tensors: &std::collections::BTreeMap<String, Vec<usize>>) -> String {
    if tensors.contains_key("cls_token") {
        vit::describe(tensors)
    } else if tensors.contains_key("conv_stem.weight") {
        efficientnet::describe(tensors)
    } else if tensors.contains_key("stem.conv.weight") {
        regnet::describe(tensors)
    } else {
        resnet::names::describe(tensors)
    }
}

impl From<ResNetConfig> for NetworkConfig {
    fn from(config: ResNetConfig) -> Self {
        NetworkConfig::ResNet(config)
    }
}

impl From<ResNet> for Network {
    fn from(model: ResNet) -> Self {
        Network::ResNet(model)
    }
}

impl NetworkConfig {
    /// timm's model `name` with `shape` (timm's `create_model(name, num_classes=...,
    /// drop_path_rate=...)`, at `width`, with `small_stem`), checked.
    ///
    /// # Errors
    /// [`ConfigError::Model`] for a name we do not build (its message lists those we do);
    /// another [`ConfigError`] for a value out of range.
    pub fn named(name: &str, shape: Shape) -> Result<Self, ConfigError> {
        if vit::is_vit(name) {
            return Ok(NetworkConfig::Vit(VitConfig::named(name, &shape)?));
        }
        if regnet::is_regnet(name) {
            return Ok(NetworkConfig::RegNet(RegNetConfig::named(name, &shape)?));
        }
        if efficientnet::is_efficientnet(name) {
            return Ok(NetworkConfig::EfficientNet(EfficientNetConfig::named(
                name, &shape,
            )?));
        }
        // The last family to ask: a name none takes is refused with every family's names.
        let (depth, variant) = resnet::timm_model(name).map_err(|_| ConfigError::Model {
            name: name.to_string(),
            known: model_names(),
        })?;
        let config = NetworkConfig::ResNet(ResNetConfig {
            depth,
            num_classes: shape.num_classes,
            width: shape.width,
            small_stem: shape.small_stem,
            drop_path_rate: shape.drop_path_rate,
            zero_init_last: true,
            variant,
        });
        config.check()?;
        Ok(config)
    }

    /// timm's `resnet50` at full size, 1000 classes.
    pub fn resnet50() -> Self {
        NetworkConfig::ResNet(ResNetConfig::resnet50())
    }

    /// Checks the values against the recipe's bounds.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value.
    pub fn check(&self) -> Result<(), ConfigError> {
        match self {
            NetworkConfig::ResNet(c) => c.check(),
            NetworkConfig::RegNet(c) => c.check(),
            NetworkConfig::EfficientNet(c) => c.check(),
            NetworkConfig::Vit(c) => c.check(),
        }
    }

    /// Builds the network with timm's initialization on `device`.
    ///
    /// # Errors
    /// [`ConfigError`] as [`Self::check`].
    pub fn init(&self, device: &Device) -> Result<Network, ConfigError> {
        Ok(match self {
            NetworkConfig::ResNet(c) => Network::ResNet(c.init(device)?),
            NetworkConfig::RegNet(c) => Network::RegNet(c.init(device)?),
            NetworkConfig::EfficientNet(c) => Network::EfficientNet(c.init(device)?),
            NetworkConfig::Vit(c) => Network::Vit(c.init(device)?),
        })
    }

    /// Trainable parameters (timm's count), without drawing the weights.
    ///
    /// # Errors
    /// [`ConfigError`] as [`Self::check`].
    pub fn trainable_params(&self) -> Result<usize, ConfigError> {
        match self {
            NetworkConfig::ResNet(c) => c.trainable_params(),
            NetworkConfig::RegNet(c) => c.trainable_params(),
            NetworkConfig::EfficientNet(c) => c.trainable_params(),
            NetworkConfig::Vit(c) => c.trainable_params(),
        }
    }

    /// Whether this is a ViT (whose position embeddings fix its image size).
    pub fn is_vit(&self) -> bool {
        matches!(self, NetworkConfig::Vit(_))
    }

    /// The ResNet family's configuration, for what is written for it alone.
    pub fn resnet(&self) -> Option<&ResNetConfig> {
        match self {
            NetworkConfig::ResNet(c) => Some(c),
            _ => None,
        }
    }

    /// Classes of the classifier.
    pub fn num_classes(&self) -> usize {
        match self {
            NetworkConfig::ResNet(c) => c.num_classes,
            NetworkConfig::RegNet(c) => c.num_classes,
            NetworkConfig::EfficientNet(c) => c.num_classes,
            NetworkConfig::Vit(c) => c.num_classes,
        }
    }

    /// The same network with timm's `zero_init_last` (the last BN γ of each residual branch
    /// starting at 0) set to `on`; families without it are unchanged.
    pub fn with_zero_init_last(self, on: bool) -> Self {
        match self {
            NetworkConfig::ResNet(c) => NetworkConfig::ResNet(ResNetConfig {
                zero_init_last: on,
                ..c
            }),
            NetworkConfig::RegNet(c) => NetworkConfig::RegNet(RegNetConfig {
                zero_init_last: on,
                ..c
            }),
            other @ (NetworkConfig::EfficientNet(_) | NetworkConfig::Vit(_)) => other,
        }
    }
}

impl Network {
    /// Logits `[N, classes]` of normalized images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, None)
    }

    /// [`Network::forward`] with the drop-path draws of training keyed by `masks` (the draws
    /// then depend on the key alone, not on the backend's generator).
    pub(crate) fn forward_with(&self, x: Tensor<4>, masks: Option<u64>) -> Tensor<2> {
        match self {
            Network::ResNet(m) => m.forward_with(x, masks),
            Network::RegNet(m) => m.forward_with(x, masks),
            Network::EfficientNet(m) => m.forward_with(x, masks),
            Network::Vit(m) => m.forward_with(x, masks),
        }
    }

    /// The family's network, for what is written for it alone (its weights' timm names).
    pub fn resnet(&self) -> Option<&ResNet> {
        match self {
            Network::ResNet(m) => Some(m),
            _ => None,
        }
    }

    /// Parameters the optimizer trains (timm's count: BN running statistics are buffers).
    pub fn trainable_params(&self) -> usize {
        let mut total = 0;
        self.for_each_trainable(|p| total += p.elements);
        total
    }

    /// Calls `f` for every trainable parameter, in module order.
    pub fn for_each_trainable(&self, f: impl FnMut(TrainableParam<'_>)) {
        // The family's module, not the enum: a parameter's name is its own.
        match self {
            Network::ResNet(m) => params::for_each_trainable(m, f),
            Network::RegNet(m) => params::for_each_trainable(m, f),
            Network::EfficientNet(m) => params::for_each_trainable(m, f),
            Network::Vit(m) => params::for_each_trainable(m, f),
        }
    }

    /// Every batch norm, in module order: the layers whose running statistics each rank keeps
    /// its own of (none in a network without batch norm).
    pub(crate) fn batch_norms(&self) -> Vec<&BatchNorm> {
        match self {
            Network::ResNet(m) => m.batch_norms(),
            Network::RegNet(m) => m.batch_norms(),
            Network::EfficientNet(m) => m.batch_norms(),
            Network::Vit(_) => Vec::new(),
        }
    }

    /// Folds the last training forward's BN running-statistics update into the values a store
    /// reads: burn's `RunningState` keeps each thread's newest update pending until the next
    /// forward (or `valid()`), while visitors, saving included, read the settled value.
    pub(crate) fn settle_running_stats(&self) {
        if !self.batch_norms().is_empty() {
            let _ = self.valid();
        }
    }

    /// How many values of the parameters and BN statistics are NaN or infinite.
    pub fn non_finite_values(&self) -> u64 {
        // The visitor reads a running statistic's last synced value: the batch's update since
        // (the one a checkpoint would save) is applied first, or a NaN batch variance would
        // pass this check and land in the checkpoint.
        for bn in self.batch_norms() {
            let _ = bn.running_mean.value_sync();
            let _ = bn.running_var.value_sync();
        }
        params::non_finite_values(self)
    }

    /// The float type the matrix products compute in ([`crate::model::amp`]); `None`: the
    /// parameters' own.
    pub fn compute(&self) -> Option<FloatDType> {
        match self {
            Network::ResNet(m) => m.compute,
            Network::RegNet(m) => m.compute,
            Network::EfficientNet(m) => m.compute,
            Network::Vit(m) => m.compute,
        }
    }

    /// Sets [`Network::compute`].
    pub fn set_compute(&mut self, compute: Option<FloatDType>) {
        match self {
            Network::ResNet(m) => m.compute = compute,
            Network::RegNet(m) => m.compute = compute,
            Network::EfficientNet(m) => m.compute = compute,
            Network::Vit(m) => m.compute = compute,
        }
    }

    /// The classifier (timm's `fc` in a ResNet, `head` in a ViT).
    pub fn head(&self) -> &Linear {
        match self {
            Network::ResNet(m) => &m.fc,
            Network::RegNet(m) => &m.head.fc,
            Network::EfficientNet(m) => &m.classifier,
            Network::Vit(m) => &m.head,
        }
    }

    /// Replaces the classifier (fine-tuning's fresh head).
    pub fn set_head(&mut self, head: Linear) {
        match self {
            Network::ResNet(m) => m.fc = head,
            Network::RegNet(m) => m.head.fc = head,
            Network::EfficientNet(m) => m.classifier = head,
            Network::Vit(m) => m.head = head,
        }
    }

    /// Visits the family's module, so that the paths the visitor sees are the parameters' own
    /// (`layer1.0.conv1.weight`), without the enum's variant in front.
    pub fn visit_family<V: ModuleVisitor>(&self, visitor: &mut V) {
        match self {
            Network::ResNet(m) => m.visit(visitor),
            Network::RegNet(m) => m.visit(visitor),
            Network::EfficientNet(m) => m.visit(visitor),
            Network::Vit(m) => m.visit(visitor),
        }
    }

    /// Writes the parameters to a burnpack file: the family's own module, so that a
    /// checkpoint holds the same names whichever families exist.
    ///
    /// # Errors
    /// burn's record error.
    pub(crate) fn save_checkpoint(&self, path: &Path) -> Result<(), burn::store::RecordError> {
        match self {
            Network::ResNet(m) => m.clone().save_file(path),
            Network::RegNet(m) => m.clone().save_file(path),
            Network::EfficientNet(m) => m.clone().save_file(path),
            Network::Vit(m) => m.clone().save_file(path),
        }
    }

    /// Loads [`Network::save_checkpoint`]'s file, restoring the parameter ids.
    ///
    /// # Errors
    /// burn's record error (another architecture, a damaged file).
    pub(crate) fn load_checkpoint(self, path: &Path) -> Result<Self, burn::store::RecordError> {
        Ok(match self {
            Network::ResNet(m) => Network::ResNet(m.try_load_file(path)?),
            Network::RegNet(m) => Network::RegNet(m.try_load_file(path)?),
            Network::EfficientNet(m) => Network::EfficientNet(m.try_load_file(path)?),
            Network::Vit(m) => Network::Vit(m.try_load_file(path)?),
        })
    }
}
