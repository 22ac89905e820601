//! What every family of networks shares: the recipe's sizes for it ([`Shape`]), how a
//! configuration builds, initializes and counts its network ([`Family`]), the bounds every
//! configuration keeps and the errors of all ([`ConfigError`]). The families
//! ([`crate::model::resnet`], [`crate::model::regnet`], [`crate::model::efficientnet`],
//! [`crate::model::vit`]) use this; [`crate::model::network`] uses them.

use burn::module::Module;
use burn::tensor::Device;

use crate::model::params;

/// Errors in a network's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A depth that timm does not define.
    #[error("ResNet depth {0} is not one of 18, 26, 34, 50, 101, 152")]
    Depth(usize),
    /// A width multiplier outside the recipe's bounds.
    #[error("width multiplier {0} is outside (0, 8] (1.0 is timm's model)")]
    Width(f64),
    /// A class count outside the recipe's bounds.
    #[error("num_classes {0} is outside 1..=1000000")]
    Classes(usize),
    /// A stochastic-depth rate that is not a probability below 1.
    #[error("drop_path rate {0} is outside [0, 1)")]
    DropPath(f64),
    /// A model name that is not one we build.
    #[error("model \"{name}\" is not one rsb builds; use one of timm's names: {known}")]
    Model {
        /// The name given.
        name: String,
        /// The names that would do, comma-separated.
        known: String,
    },
    /// Arguments timm's class refuses.
    #[error("{0}")]
    Variant(String),
}

/// The bounds every family's configuration keeps (`recipe::check` has the same): a width of
/// 1e9 would ask for terabytes, 0 classes would build a model that predicts nothing.
///
/// # Errors
/// [`ConfigError`] naming the value.
pub fn check_bounds(
    num_classes: usize,
    width: f64,
    drop_path_rate: f64,
) -> Result<(), ConfigError> {
    if !(width > 0.0 && width <= 8.0) {
        return Err(ConfigError::Width(width));
    }
    if !(1..=1_000_000).contains(&num_classes) {
        return Err(ConfigError::Classes(num_classes));
    }
    if !(0.0..1.0).contains(&drop_path_rate) {
        return Err(ConfigError::DropPath(drop_path_rate));
    }
    Ok(())
}

/// A family's configuration builds its network; initializing it and counting its parameters
/// are the same for every family.
pub trait Family {
    /// The family's network.
    type Net: Module;

    /// The network with its parameters' values not drawn yet (burn's lazy parameters).
    ///
    /// # Errors
    /// [`ConfigError`] for a value out of range.
    fn build(&self, device: &Device) -> Result<Self::Net, ConfigError>;

    /// The network with timm's initialization on `device`, every value drawn now, in module
    /// order ([`params::draw_all`]).
    ///
    /// # Errors
    /// [`ConfigError`] as [`Family::build`].
    fn init(&self, device: &Device) -> Result<Self::Net, ConfigError> {
        let model = self.build(device)?;
        params::draw_all(&model);
        Ok(model)
    }

    /// timm's parameter count, without drawing or holding the weights.
    ///
    /// # Errors
    /// [`ConfigError`] as [`Family::build`].
    fn trainable_params(&self) -> Result<usize, ConfigError> {
        Ok(params::trainable_count(&self.build(&Device::flex())?))
    }
}

/// What every family takes from the recipe besides its name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Classes of the classifier.
    pub num_classes: usize,
    /// Multiplies every channel count (1.0 = timm's model).
    pub width: f64,
    /// A stem without downsampling, for 32×32 images.
    pub small_stem: bool,
    /// timm's `drop_path_rate`.
    pub drop_path_rate: f64,
    /// The training image side, where the network depends on it (a ViT's position
    /// embeddings); `None`: the model name's (224).
    pub img_size: Option<usize>,
}

impl Shape {
    /// `num_classes` at `width`, with stochastic depth `drop_path_rate`, with or without the
    /// small stem; the model name's image size.
    pub fn of(num_classes: usize, [width, drop_path_rate]: [f64; 2], small_stem: bool) -> Self {
        Shape {
            num_classes,
            width,
            small_stem,
            drop_path_rate,
            img_size: None,
        }
    }
}
