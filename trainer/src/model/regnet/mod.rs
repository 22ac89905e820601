//! timm's RegNetY (`regnet.RegNet` with `se_ratio` 0.25, as `regnety_040` builds it): a 3×3
//! stride-2 stem, four stages of bottlenecks whose 3×3 is grouped (a fixed width per group)
//! with squeeze-excite after it, 1×1 projection shortcuts, average pooling and a linear head.
//! The stages come from the model's design-space numbers ([`widths`]). timm's parameter names
//! (`stem.conv`, `s1.b1.conv1.bn`, `head.fc`, ...) and initialization (`_init_weights`:
//! convolutions from a normal of variance 2 / fan-out with fan-out divided by the groups, their
//! biases zero; the head from a normal of deviation 0.01; the last BN γ of a block zero).
//!
//! `--width` scales every width and group width (a stage stays a multiple of its group width);
//! `--small-stem` gives the stem stride 1, for 32×32 images.

pub mod widths;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::attention::SqueezeExcite;
use crate::model::batch_norm::BatchNorm;
use crate::model::conv_init;
use crate::model::drop_path::{drop_path, linear_rate, mix_key};
use crate::model::family::{ConfigError, Family, Shape, check_bounds};
use cpu_kernels::residual;
use widths::Stage;

/// The RegNetYs we build: timm's name and its `RegNetCfg` (w0, wa, wm, group_size, depth).
const MODELS: &[(&str, usize, f64, f64, usize, usize)] = &[
    ("regnety_002", 24, 36.44, 2.49, 8, 13),
    ("regnety_004", 48, 27.89, 2.09, 8, 16),
    ("regnety_006", 48, 32.54, 2.32, 16, 15),
    ("regnety_008", 56, 38.84, 2.4, 16, 14),
    ("regnety_016", 48, 20.71, 2.65, 24, 27),
    ("regnety_032", 80, 42.63, 2.66, 24, 21),
    ("regnety_040", 96, 31.41, 2.24, 64, 22),
    ("regnety_064", 112, 33.22, 2.27, 72, 25),
    ("regnety_080", 192, 76.82, 2.19, 56, 17),
    ("regnety_120", 168, 73.36, 2.37, 112, 19),
    ("regnety_160", 200, 106.23, 2.48, 112, 18),
];

/// A model's design-space numbers: (w0, wa, wm, group width, depth).
fn design(name: &str) -> Option<(usize, f64, f64, usize, usize)> {
    MODELS
        .iter()
        .find(|m| m.0 == name)
        .map(|&(_, w0, wa, wm, g, d)| (w0, wa, wm, g, d))
}

/// Whether `name` is one of the RegNets we build.
pub fn is_regnet(name: &str) -> bool {
    design(name).is_some()
}

/// The names of the RegNets we build, comma-separated.
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
}

/// Which RegNet to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegNetConfig {
    /// timm's name, for messages.
    pub name: String,
    /// Classes of the head.
    pub num_classes: usize,
    /// The four stages: width, blocks, channels per group (scaled by the width multiplier).
    pub stages: [Stage; 4],
    /// The stem's width (32 in timm's).
    pub stem_width: usize,
    /// The stem's stride (2; 1 with the small stem).
    pub stem_stride: usize,
    /// timm's `drop_path_rate`, spread linearly over the blocks.
    pub drop_path_rate: f64,
    /// timm's `zero_init_last`.
    pub zero_init_last: bool,
}

impl RegNetConfig {
    /// timm's `name` at `shape` (classes, width, small stem, stochastic depth); checked.
    ///
    /// # Errors
    /// [`ConfigError::Model`] for a name that is not one of ours; another [`ConfigError`] for a
    /// value out of range.
    pub fn named(name: &str, shape: &Shape) -> Result<Self, ConfigError> {
        let (w0, wa, wm, group, depth) = design(name).ok_or_else(|| ConfigError::Model {
            name: name.to_string(),
            known: model_names(),
        })?;
        check_bounds(shape.num_classes, shape.width, shape.drop_path_rate)?;
        let stages = widths::stages(w0, wa, wm, depth, group).ok_or_else(|| {
            ConfigError::Variant(format!("{name}: its widths do not make four stages"))
        })?;
        let scale = |c: usize| ((c as f64 * shape.width).round() as usize).max(1);
        let stages = stages.map(|(w, blocks, g)| {
            // A stage stays a whole number of groups: its width rounded to the scaled group's.
            let g = scale(g);
            let w = ((w as f64 * shape.width / g as f64).round() as usize).max(1) * g;
            (w, blocks, g)
        });
        let config = RegNetConfig {
            name: name.to_string(),
            num_classes: shape.num_classes,
            stages,
            stem_width: scale(32),
            stem_stride: if shape.small_stem { 1 } else { 2 },
            drop_path_rate: shape.drop_path_rate,
            zero_init_last: true,
        };
        config.check()?;
        Ok(config)
    }

    /// Checks classes and stochastic depth.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value.
    pub fn check(&self) -> Result<(), ConfigError> {
        // The width is checked where it is applied (`named`).
        check_bounds(self.num_classes, 1.0, self.drop_path_rate)?;
        Ok(())
    }
}

impl Family for RegNetConfig {
    type Net = RegNet;

    fn build(&self, device: &Device) -> Result<RegNet, ConfigError> {
        self.check()?;
        let total: usize = self.stages.iter().map(|s| s.1).sum();
        let mut index = 0;
        let mut in_ch = self.stem_width;
        let mut layers: Vec<Vec<Block>> = Vec::with_capacity(4);
        for &(out, blocks, group) in &self.stages {
            let mut stage = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let spec = BlockSpec {
                    in_ch,
                    out,
                    stride: if i == 0 { 2 } else { 1 },
                    groups: out / group,
                    zero_last: self.zero_init_last,
                    drop_path: linear_rate(self.drop_path_rate, index, total),
                };
                stage.push(Block::new(&spec, device));
                in_ch = out;
                index += 1;
            }
            layers.push(stage);
        }
        let [s1, s2, s3, s4]: [Vec<Block>; 4] = layers
            .try_into()
            .map_err(|_| ConfigError::Variant(format!("{}: not four stages", self.name)))?;
        let mut fc = LinearConfig::new(in_ch, self.num_classes)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            })
            .init(device);
        fc.bias = Some(Initializer::Zeros.init([self.num_classes], device));
        Ok(RegNet {
            stem: ConvBn::new(
                [3, self.stem_width],
                [3, self.stem_stride, 1],
                false,
                device,
            ),
            s1,
            s2,
            s3,
            s4,
            head: Head { fc },
            compute: None,
        })
    }
}

/// timm's `ConvNormAct` without its activation's module: a convolution and its batch norm,
/// named `conv` and `bn`.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (no bias).
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// `[in, out]` channels, `[kernel, stride, groups]`; the batch norm's γ zero with
    /// `zero_gamma`. timm's RegNet init: a normal of variance `2 / (k·k·out / groups)`.
    fn new(
        [in_ch, out_ch]: [usize; 2],
        [kernel, stride, groups]: [usize; 3],
        zero_gamma: bool,
        device: &Device,
    ) -> Self {
        ConvBn {
            conv: conv_init::conv([in_ch, out_ch], [kernel, stride, groups], device),
            bn: BatchNorm::new(out_ch, zero_gamma, device),
        }
    }

    fn forward(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        self.bn.forward(amp::conv(&self.conv, x, compute))
    }

    fn forward_relu(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        self.bn.forward_relu(amp::conv(&self.conv, x, compute))
    }
}

/// What one block is built from.
struct BlockSpec {
    in_ch: usize,
    out: usize,
    stride: usize,
    groups: usize,
    zero_last: bool,
    drop_path: f64,
}

/// RegNet's bottleneck (ratio 1): 1×1, grouped 3×3 with the stride, squeeze-excite, 1×1.
#[derive(Module, Debug)]
pub struct Block {
    /// 1×1 to the block's width.
    pub conv1: ConvBn,
    /// Grouped 3×3 carrying the stride.
    pub conv2: ConvBn,
    /// Squeeze-excite to a quarter of the block's input width.
    pub se: SqueezeExcite,
    /// 1×1, no activation before the sum (zero γ).
    pub conv3: ConvBn,
    /// 1×1 projection shortcut where the shape changes.
    pub downsample: Option<ConvBn>,
    /// Probability of dropping the branch for a sample in training.
    pub drop_path: f64,
}

impl Block {
    fn new(s: &BlockSpec, device: &Device) -> Self {
        let reduced = ((s.in_ch as f64 * 0.25).round() as usize).max(1);
        Block {
            conv1: ConvBn::new([s.in_ch, s.out], [1, 1, 1], false, device),
            conv2: ConvBn::new([s.out, s.out], [3, s.stride, s.groups], false, device),
            se: SqueezeExcite::zero_bias(s.out, reduced, false, device),
            conv3: ConvBn::new([s.out, s.out], [1, 1, 1], s.zero_last, device),
            downsample: (s.in_ch != s.out || s.stride != 1)
                .then(|| ConvBn::new([s.in_ch, s.out], [1, s.stride, 1], false, device)),
            drop_path: s.drop_path,
        }
    }

    fn forward(&self, x: Tensor<4>, masks: Option<u64>, compute: Option<FloatDType>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone(), compute),
            None => x.clone(),
        };
        let y = self.conv1.forward_relu(x, compute);
        let y = self.conv2.forward_relu(y, compute);
        let y = self.se.forward(y, compute);
        let y = self.conv3.forward(y, compute);
        residual::add_relu(drop_path(y, self.drop_path, masks), shortcut)
    }
}

/// timm's `ClassifierHead` (average pooling, then `fc`).
#[derive(Module, Debug)]
pub struct Head {
    /// The classifier.
    pub fc: Linear,
}

/// A RegNet; see the module documentation.
#[derive(Module, Debug)]
pub struct RegNet {
    /// 3×3, stride 2, ReLU.
    pub stem: ConvBn,
    /// Stage 1.
    pub s1: Vec<Block>,
    /// Stage 2.
    pub s2: Vec<Block>,
    /// Stage 3.
    pub s3: Vec<Block>,
    /// Stage 4.
    pub s4: Vec<Block>,
    /// The classifier.
    pub head: Head,
    /// The float type of the convolutions and the classifier ([`crate::model::amp`]).
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl RegNet {
    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.s1
            .iter()
            .chain(&self.s2)
            .chain(&self.s3)
            .chain(&self.s4)
    }

    /// Logits of normalized images; `masks` keys block i's drop-path draws (`mix_key(masks,
    /// i)`).
    pub(crate) fn forward_with(&self, x: Tensor<4>, masks: Option<u64>) -> Tensor<2> {
        let mut x = self.stem.forward_relu(x, self.compute);
        for (i, block) in self.blocks().enumerate() {
            x = block.forward(x, masks.map(|k| mix_key(k, i as u64)), self.compute);
        }
        let x = adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3);
        amp::linear(&self.head.fc, x, self.compute)
    }

    /// Every batch norm, in module order.
    pub(crate) fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all = vec![&self.stem.bn];
        for b in self.blocks() {
            all.extend([&b.conv1.bn, &b.conv2.bn, &b.conv3.bn]);
            all.extend(b.downsample.as_ref().map(|d| &d.bn));
        }
        all
    }
}

/// Block-index renames between our stages (`s1.0.`) and timm's (`s1.b1.`): timm names a
/// stage's blocks from 1. Up to 64 blocks a stage (timm's deepest RegNet stage has 27).
pub(crate) fn block_renames() -> Vec<(String, String)> {
    (1..=4)
        .flat_map(|s| (0..64).map(move |i| (format!("s{s}.{i}."), format!("s{s}.b{}.", i + 1))))
        .collect()
}

/// What a RegNet state dict (timm's names → shapes) holds, in words: timm's name when its
/// stages are one of ours at full width, else its stages.
pub fn describe(tensors: &std::collections::BTreeMap<String, Vec<usize>>) -> String {
    let dim = |name: &str, i: usize| tensors.get(name).and_then(|s| s.get(i)).copied();
    let stages: Vec<Stage> = (1..=4)
        .map(|s| {
            let blocks = (1..)
                .take_while(|b| tensors.contains_key(&format!("s{s}.b{b}.conv1.conv.weight")))
                .count();
            let width = dim(&format!("s{s}.b1.conv2.conv.weight"), 0).unwrap_or(0);
            let per_group = dim(&format!("s{s}.b1.conv2.conv.weight"), 1).unwrap_or(0);
            (width, blocks, per_group)
        })
        .collect();
    let classes = dim("head.fc.weight", 0).map_or(String::new(), |c| format!(", {c} classes"));
    let named = MODELS.iter().find(|m| {
        widths::stages(m.1, m.2, m.3, m.5, m.4).is_some_and(|ours| ours.as_slice() == stages)
    });
    match named {
        Some(m) => format!("timm's {}{classes}", m.0),
        None => format!("a RegNet with stages (width, blocks, group width) {stages:?}{classes}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regnety_040_has_timms_parameter_count() {
        let config =
            RegNetConfig::named("regnety_040", &Shape::of(1000, [1.0, 0.0], false)).expect("ours");
        // timm 1.0.31: sum(p.numel() for p in create_model('regnety_040').parameters())
        assert_eq!(config.trainable_params().expect("config"), 20_646_656);
        let small =
            RegNetConfig::named("regnety_002", &Shape::of(1000, [1.0, 0.0], false)).expect("ours");
        assert_eq!(small.trainable_params().expect("config"), 3_162_996);
    }

    #[test]
    fn an_export_is_named_by_its_model_and_a_narrow_one_by_its_stages() {
        let device = Device::flex();
        let named = |config: RegNetConfig| {
            let model = crate::model::Network::RegNet(config.init(&device).expect("config"));
            describe(&crate::model::timm_weights::shapes(&model).expect("export"))
        };
        let full =
            RegNetConfig::named("regnety_002", &Shape::of(7, [1.0, 0.0], false)).expect("ours");
        assert_eq!(named(full), "timm's regnety_002, 7 classes");
        let narrow =
            RegNetConfig::named("regnety_002", &Shape::of(7, [0.25, 0.0], false)).expect("ours");
        assert!(named(narrow).starts_with("a RegNet with stages"));
    }

    #[test]
    fn a_narrow_regnet_keeps_whole_groups_and_trains() {
        let device = Device::flex().autodiff();
        let config =
            RegNetConfig::named("regnety_040", &Shape::of(10, [0.125, 0.1], true)).expect("ours");
        for (w, _, g) in config.stages {
            assert_eq!(w % g, 0, "{:?}", config.stages);
        }
        let model = config.init(&device).expect("config");
        let x = Tensor::<4>::ones([2, 3, 16, 16], &device);
        let y = model.forward_with(x, Some(3));
        assert_eq!(y.dims(), [2, 10]);
        let grads = y.powi_scalar(2).mean().backward();
        assert!(model.stem.conv.weight.val().grad(&grads).is_some());
    }
}
