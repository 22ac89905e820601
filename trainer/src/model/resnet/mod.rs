//! timm's ResNet family from one definition, as timm builds it from one `ResNet` class with
//! arguments ([`Variant`]): ResNet v1.5 (the stride on the 3×3 convolution, 1×1 projection
//! shortcuts, 7×7 stem and max-pool), the deep stems of the "D" and "T" models ([`stem`]),
//! `avg_down` shortcuts and ResNeXt's grouped 3×3 ([`block`]), squeeze-excite and ECA
//! ([`attention`](crate::model::attention)); timm's names for them are in [`names`]. timm's
//! initialization and stochastic depth throughout.
//!
//! Field names follow timm's state dict (`conv1`, `bn1`, `layer1.0.conv2`, `fc`, ...), so that
//! exported weights load into `timm.create_model(name)` with only the adapter's renames.

pub mod block;
pub mod names;
pub mod stem;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::attention::AttentionKind;
use crate::model::batch_norm::BatchNorm;
use crate::model::conv_init::kaiming as conv;
use crate::model::drop_path::{linear_rate, mix_key};
use crate::model::family::Family;
use crate::model::params;
pub use crate::model::params::TrainableParam;
use block::{Block, BlockSpec};
use cpu_kernels::max_pool;
pub use names::{model_names, timm_model};
use stem::{DeepStem, StemType};

/// The arguments timm's `ResNet` class takes beyond the depth: what makes `resnet50d`,
/// `resnext50_32x4d`, `seresnet50` or `ecaresnet50t` of the same class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// timm's `stem_type`.
    pub stem_type: StemType,
    /// timm's `stem_width` (a deep stem's; the plain stem is 64 wide), before `width` scales it.
    pub stem_width: usize,
    /// timm's `avg_down`: shortcuts average-pool, then convolve with stride 1.
    pub avg_down: bool,
    /// timm's `cardinality`: groups of the bottleneck's 3×3.
    pub cardinality: usize,
    /// timm's `base_width`: channels per group at the first stage's 64 planes.
    pub base_width: usize,
    /// timm's `block_args=dict(attn_layer=...)`.
    pub attn: AttentionKind,
}

impl Default for Variant {
    fn default() -> Self {
        names::plain()
    }
}

/// Which ResNet to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// 18, 34 (basic blocks), 26, 50, 101 or 152 (bottlenecks).
    pub depth: usize,
    /// Classes of the final layer (1000 for ImageNet).
    pub num_classes: usize,
    /// Multiplies every channel count (1.0 = timm's model); for CPU-sized runs.
    pub width: f64,
    /// A stem without downsampling, for 32×32 images (CIFAR): the plain stem becomes one 3×3
    /// stride-1 convolution, a deep stem's first convolution takes stride 1, and neither has
    /// the max-pool. timm's stems reduce the image 4×.
    pub small_stem: bool,
    /// timm's `drop_path_rate`: block i of n drops its residual branch with probability
    /// `rate * i / (n - 1)`.
    pub drop_path_rate: f64,
    /// timm's `zero_init_last`: the last BN γ of each block starts at 0, so that every block
    /// starts as the identity.
    pub zero_init_last: bool,
    /// The family member: stem, shortcuts, groups, attention ([`timm_model`] gives timm's).
    #[serde(default)]
    pub variant: Variant,
}

pub use crate::model::family::{ConfigError, check_bounds};

/// Blocks per stage and whether they are bottlenecks, for timm's ResNet depths.
///
/// # Errors
/// [`ConfigError::Depth`] for a depth timm does not define.
pub(crate) fn layout(depth: usize) -> Result<([usize; 4], bool), ConfigError> {
    Ok(match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        26 => ([2, 2, 2, 2], true),
        50 => ([3, 4, 6, 3], true),
        101 => ([3, 4, 23, 3], true),
        152 => ([3, 8, 36, 3], true),
        d => return Err(ConfigError::Depth(d)),
    })
}

impl ResNetConfig {
    /// timm's `resnet50`: 1000 classes, full width, ImageNet stem, no stochastic depth.
    pub fn resnet50() -> Self {
        ResNetConfig {
            depth: 50,
            num_classes: 1000,
            width: 1.0,
            small_stem: false,
            drop_path_rate: 0.0,
            zero_init_last: true,
            variant: Variant::default(),
        }
    }

    /// timm's model `name` (`resnet50d`, `resnext50_32x4d`, ...) with [`Self::resnet50`]'s
    /// other settings.
    ///
    /// # Errors
    /// [`ConfigError::Model`] for a name we do not build.
    pub fn timm(name: &str) -> Result<Self, ConfigError> {
        let (depth, variant) = timm_model(name)?;
        Ok(ResNetConfig {
            depth,
            variant,
            ..Self::resnet50()
        })
    }

    fn channels(&self, base: usize) -> usize {
        ((base as f64 * self.width).round() as usize).max(1)
    }

    /// Checks the configuration against the recipe's bounds (`recipe::check` has the same):
    /// a width of 1e9 would ask for terabytes, 0 classes would build a model that predicts
    /// nothing.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value.
    pub fn check(&self) -> Result<(), ConfigError> {
        let (_, bottleneck) = layout(self.depth)?;
        check_bounds(self.num_classes, self.width, self.drop_path_rate)?;
        let v = &self.variant;
        if !bottleneck && (v.cardinality != 1 || v.base_width != 64) {
            // timm's BasicBlock asserts the same.
            return Err(ConfigError::Variant(format!(
                "depth {} has basic blocks, which take no cardinality ({}) or base width ({})",
                self.depth, v.cardinality, v.base_width
            )));
        }
        if !(1..=64).contains(&v.cardinality)
            || !(1..=512).contains(&v.base_width)
            || !(1..=256).contains(&v.stem_width)
        {
            return Err(ConfigError::Variant(format!(
                "cardinality {} (1..=64), base width {} (1..=512) or stem width {} (1..=256) \
                 is out of range",
                v.cardinality, v.base_width, v.stem_width
            )));
        }
        Ok(())
    }

    /// The stem: a plain convolution or a deep stem, its output width, and the max-pool.
    fn stem(&self, device: &Device) -> (Option<Conv2d>, Option<DeepStem>, usize) {
        let stride = if self.small_stem { 1 } else { 2 };
        match self.variant.stem_type {
            StemType::Plain => {
                let width = self.channels(64);
                let kernel = if self.small_stem { 3 } else { 7 };
                (Some(conv(3, width, kernel, stride, 1, device)), None, width)
            }
            deep => {
                let widths = deep.widths(self.channels(self.variant.stem_width));
                (None, Some(DeepStem::new(widths, stride, device)), widths[2])
            }
        }
    }
}

impl Family for ResNetConfig {
    type Net = ResNet;

    fn build(&self, device: &Device) -> Result<ResNet, ConfigError> {
        self.check()?;
        let (blocks, bottleneck) = layout(self.depth)?;
        let (conv1, stem, stem_out) = self.stem(device);
        let maxpool = (!self.small_stem).then(|| {
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init()
        });
        let total: usize = blocks.iter().sum();
        let mut index = 0;
        let mut in_ch = stem_out;
        let mut layers: Vec<Vec<Block>> = Vec::with_capacity(4);
        for (stage, &count) in blocks.iter().enumerate() {
            let mut layer = Vec::with_capacity(count);
            for i in 0..count {
                let rate = linear_rate(self.drop_path_rate, index, total);
                let spec = BlockSpec {
                    in_ch,
                    planes: self.channels(64 << stage),
                    stride: if stage > 0 && i == 0 { 2 } else { 1 },
                    bottleneck,
                    cardinality: self.variant.cardinality,
                    base_width: self.variant.base_width,
                    attn: self.variant.attn,
                    avg_down: self.variant.avg_down,
                    zero_last: self.zero_init_last,
                    drop_path: rate,
                };
                layer.push(Block::new(&spec, device));
                in_ch = spec.out_ch();
                index += 1;
            }
            layers.push(layer);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<Block>; 4] = layers
            .try_into()
            .map_err(|_| ConfigError::Depth(self.depth))?;
        Ok(ResNet {
            conv1,
            stem,
            bn1: BatchNorm::new(stem_out, false, device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            // PyTorch's default Linear initialization, which timm leaves in place.
            fc: LinearConfig::new(in_ch, self.num_classes).init(device),
            compute: None,
            avg_down: self.variant.avg_down,
        })
    }
}

/// A ResNet; see the module documentation.
#[derive(Module, Debug)]
pub struct ResNet {
    /// The plain stem's convolution (absent with a deep stem).
    pub conv1: Option<Conv2d>,
    /// The deep stem's convolutions (timm's `conv1` Sequential).
    pub stem: Option<DeepStem>,
    /// Stem batch norm.
    pub bn1: BatchNorm,
    /// Stem max-pool (absent with the small stem).
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<Block>,
    /// Classifier.
    pub fc: Linear,
    /// The float type the convolutions and the classifier compute in ([`crate::model::amp`]);
    /// `None`: the parameters' own. Not saved: a run's precision is set each time it starts.
    #[module(skip)]
    pub compute: Option<FloatDType>,
    /// The shortcuts are timm's `downsample_avg` (`(pool, conv, bn)`): their timm names are
    /// `downsample.1` and `.2`, not `.0` and `.1` ([`crate::model::timm_weights`]).
    #[module(skip)]
    pub avg_down: bool,
}

impl ResNet {
    /// Parameters the optimizer trains: burn's `num_params` also counts the BN running
    /// statistics, which timm keeps as buffers.
    pub fn trainable_params(&self) -> usize {
        params::trainable_count(self)
    }

    /// Every block, stage by stage.
    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    /// Every batch norm, in module order (a deep stem's two, `bn1`, then each block's `bn1`,
    /// `bn2`, `bn3`, and its downsample's): the layers whose running statistics each rank keeps its own of.
    pub(crate) fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all: Vec<&BatchNorm> = self.stem.iter().flat_map(DeepStem::batch_norms).collect();
        all.push(&self.bn1);
        all.extend(self.blocks().flat_map(Block::batch_norms));
        all
    }

    /// Calls `f` for every trainable parameter (every float parameter but the BN running
    /// statistics), in module order.
    pub fn for_each_trainable(&self, f: impl FnMut(TrainableParam<'_>)) {
        params::for_each_trainable(self, f);
    }

    /// Logits `[N, classes]` of normalized images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, None)
    }

    /// [`ResNet::forward`], with the drop-path draws of training keyed by `masks`: block i
    /// draws its samples' masks on the host from `mix_key(masks, i)`, so they depend on the key
    /// alone, not on the backend's generator, which every thread and device of the process
    /// shares (a rank's masks are then the same on one device or several, and after a resume).
    pub(crate) fn forward_with(&self, x: Tensor<4>, masks: Option<u64>) -> Tensor<2> {
        let x = match (&self.conv1, &self.stem) {
            (_, Some(stem)) => stem.forward(x, self.compute),
            (Some(conv1), None) => amp::conv(conv1, x, self.compute),
            // `init` builds one of the two.
            (None, None) => x,
        };
        let mut x = self.bn1.forward_relu(x);
        if let Some(pool) = &self.maxpool {
            x = max_pool::max_pool2d(pool, x);
        }
        for (i, block) in self.blocks().enumerate() {
            x = block.forward(x, masks.map(|k| mix_key(k, i as u64)), self.compute);
        }
        let x = adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3);
        amp::linear(&self.fc, x, self.compute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn keyed_drop_path_masks_depend_on_the_key_alone() {
        let device = Device::flex().autodiff();
        let model = ResNetConfig {
            depth: 18,
            num_classes: 4,
            width: 0.125,
            small_stem: true,
            drop_path_rate: 0.5,
            zero_init_last: false,
            variant: Default::default(),
        }
        .init(&device)
        .expect("valid config");
        let x = Tensor::<4>::ones([8, 3, 16, 16], &device);
        let run = |key| {
            model
                .forward_with(x.clone(), Some(key))
                .to_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let a = run(mix_key(1, 2));
        // The backend's generator moves (other threads and devices draw from it too).
        device.seed(99);
        let _ = Tensor::<1>::random([64], Distribution::Default, &device);
        assert_eq!(run(mix_key(1, 2)), a);
        assert_ne!(run(mix_key(1, 3)), a);
        assert_ne!(mix_key(0, 1), mix_key(0, 2));
        assert_ne!(mix_key(1, 1), mix_key(2, 1));
    }

    #[test]
    fn resnet50_has_timms_parameter_count() {
        let model = ResNetConfig::resnet50()
            .init(&Device::flex())
            .expect("valid config");
        // timm: sum(p.numel() for p in create_model('resnet50').parameters())
        assert_eq!(model.trainable_params(), 25_557_032);
        // The running mean and variance of every BN channel are buffers, not parameters.
        assert_eq!(model.num_params(), 25_557_032 + 2 * 26_560);
    }

    #[test]
    fn every_batch_norm_is_listed_once() {
        let model = ResNetConfig::resnet50()
            .init(&Device::flex())
            .expect("valid config");
        let channels: usize = model
            .batch_norms()
            .iter()
            .map(|bn| bn.running_mean.value().dims()[0])
            .sum();
        assert_eq!(channels, 26_560, "the BN channels of ResNet-50");
        assert_eq!(model.batch_norms().len(), 53);
    }

    /// timm 1.0.31: `sum(p.numel() for p in timm.create_model(name).parameters())`.
    const TIMM_PARAMS: [(&str, usize); 24] = [
        ("resnet18", 11_689_512),
        ("resnet26", 15_995_176),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
        ("resnet18d", 11_708_744),
        ("resnet26d", 16_014_408),
        ("resnet34d", 21_816_904),
        ("resnet50d", 25_576_264),
        ("resnet101d", 44_568_392),
        ("resnet152d", 60_212_040),
        ("resnet26t", 16_011_872),
        ("resnet50t", 25_573_728),
        ("resnext50_32x4d", 25_028_904),
        ("resnext101_32x4d", 44_177_704),
        ("resnext101_32x8d", 88_791_336),
        ("seresnet50", 28_088_024),
        ("seresnet101", 49_326_872),
        ("seresnext50_32x4d", 27_559_896),
        ("ecaresnet50d", 25_576_350),
        ("ecaresnet101d", 44_568_563),
        ("ecaresnet26t", 16_011_916),
        ("ecaresnet50t", 25_573_814),
    ];

    #[test]
    fn every_name_we_build_has_timms_parameter_count() {
        for (name, want) in TIMM_PARAMS {
            let config = ResNetConfig::timm(name).expect("ours");
            // Counted on the lazy parameters: no 88M values drawn for resnext101_32x8d.
            assert_eq!(config.trainable_params().expect("config"), want, "{name}");
        }
        assert_eq!(model_names().split(", ").count(), TIMM_PARAMS.len());
    }

    #[test]
    fn resnet18_has_timms_parameter_count() {
        let config = ResNetConfig {
            depth: 18,
            ..ResNetConfig::resnet50()
        };
        let model = config.init(&Device::flex()).expect("valid config");
        assert_eq!(model.trainable_params(), 11_689_512);
    }

    #[test]
    fn unknown_depth_is_an_error() {
        let config = ResNetConfig {
            depth: 42,
            ..ResNetConfig::resnet50()
        };
        assert!(matches!(
            config.init(&Device::flex()),
            Err(ConfigError::Depth(42))
        ));
    }

    #[test]
    fn small_model_gives_logits_of_the_right_shape() {
        let config = ResNetConfig {
            depth: 18,
            num_classes: 10,
            width: 0.25,
            small_stem: true,
            drop_path_rate: 0.1,
            zero_init_last: true,
            variant: Default::default(),
        };
        let device = Device::flex().autodiff();
        let model = config.init(&device).expect("valid config");
        let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Default, &device);
        let y = model.forward(x);
        assert_eq!(y.dims(), [2, 10]);
    }

    #[test]
    fn last_batch_norm_of_each_block_starts_at_zero() {
        let model = ResNetConfig::resnet50()
            .init(&Device::flex())
            .expect("valid config");
        for block in model.layer1.iter().chain(&model.layer4) {
            let bn3 = block.bn3.as_ref().expect("bottleneck");
            let sum: f32 = bn3.gamma.val().abs().sum().into_scalar();
            assert_eq!(sum, 0.0);
            let sum1: f32 = block.bn1.gamma.val().sum().into_scalar();
            assert!(sum1 > 0.0);
        }
    }
}
