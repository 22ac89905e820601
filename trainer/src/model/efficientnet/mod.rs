//! timm's EfficientNet-B0 (`efficientnet._gen_efficientnet` with channel and depth multipliers
//! 1): a 3×3 stride-2 stem, seven stages of mobile inverted bottlenecks (the first a depthwise
//! separable block), a 1×1 head convolution to 1280 features, average pooling and a linear
//! classifier; SiLU throughout, squeeze-excite in every block (reduced to a quarter of the
//! block's input, SiLU between), stochastic depth `rate · i / blocks`. timm's names
//! (`conv_stem`, `blocks.1.0.conv_pw`, `se.conv_reduce`, `conv_head`, `classifier`) and
//! initialization (`_init_weight_goog`).
//!
//! `--width` is timm's channel multiplier (every width through `round_channels`: multiples of
//! 8, at least 8); `--small-stem` gives the stem stride 1, for 32×32 images.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::attention::SqueezeExcite;
use crate::model::batch_norm::BatchNorm;
use crate::model::conv_init::conv;
use crate::model::drop_path::{drop_path, mix_key};
use crate::model::family::{ConfigError, Family, Shape, check_bounds};

/// One stage of timm's `arch_def`: depthwise separable (`ds`) or inverted residual (`ir`),
/// repeats, kernel, stride, expansion, output channels (all with `se0.25`).
struct StageDef {
    separable: bool,
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    out: usize,
}

const fn stage(
    separable: bool,
    repeats: usize,
    kernel: usize,
    [stride, expand, out]: [usize; 3],
) -> StageDef {
    StageDef {
        separable,
        repeats,
        kernel,
        stride,
        expand,
        out,
    }
}

/// EfficientNet-B0's `arch_def` (`ds_r1_k3_s1_e1_c16_se0.25`, `ir_r2_k3_s2_e6_c24_se0.25`, ...).
const B0: [StageDef; 7] = [
    stage(true, 1, 3, [1, 1, 16]),
    stage(false, 2, 3, [2, 6, 24]),
    stage(false, 2, 5, [2, 6, 40]),
    stage(false, 3, 3, [2, 6, 80]),
    stage(false, 3, 5, [1, 6, 112]),
    stage(false, 4, 5, [2, 6, 192]),
    stage(false, 1, 3, [1, 6, 320]),
];

/// The squeeze-excite ratio of every block (of its input width).
const SE_RATIO: f64 = 0.25;

/// The EfficientNets we build.
const NAMES: [&str; 1] = ["efficientnet_b0"];

/// Whether `name` is one of the EfficientNets we build.
pub fn is_efficientnet(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The names of the EfficientNets we build, comma-separated.
pub fn model_names() -> String {
    NAMES.join(", ")
}

/// timm's `make_divisible(v, 8)` (round_limit 0.9): the nearest multiple of 8, at least 8,
/// one more step up when rounding lost more than a tenth.
fn make_divisible(v: f64) -> usize {
    let divisor = 8.0;
    let new = (((v + divisor / 2.0) as usize) / 8 * 8).max(8);
    if (new as f64) < 0.9 * v { new + 8 } else { new }
}

/// Which EfficientNet to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    /// timm's name, for messages.
    pub name: String,
    /// Classes of the classifier.
    pub num_classes: usize,
    /// timm's channel multiplier.
    pub width: f64,
    /// The stem's stride (2; 1 with the small stem).
    pub stem_stride: usize,
    /// timm's `drop_path_rate`: block i of n drops with `rate · i / n`.
    pub drop_path_rate: f64,
}

impl EfficientNetConfig {
    /// timm's `name` at `shape` (classes, channel multiplier, small stem, stochastic depth);
    /// checked.
    ///
    /// # Errors
    /// [`ConfigError::Model`] for a name that is not one of ours; another [`ConfigError`] for a
    /// value out of range.
    pub fn named(name: &str, shape: &Shape) -> Result<Self, ConfigError> {
        if !is_efficientnet(name) {
            return Err(ConfigError::Model {
                name: name.to_string(),
                known: model_names(),
            });
        }
        check_bounds(shape.num_classes, shape.width, shape.drop_path_rate)?;
        Ok(EfficientNetConfig {
            name: name.to_string(),
            num_classes: shape.num_classes,
            width: shape.width,
            stem_stride: if shape.small_stem { 1 } else { 2 },
            drop_path_rate: shape.drop_path_rate,
        })
    }

    /// timm's `round_channels(c, multiplier)`.
    fn channels(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.width)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_bounds(self.num_classes, self.width, self.drop_path_rate)
    }
}

impl Family for EfficientNetConfig {
    type Net = EfficientNet;

    fn build(&self, device: &Device) -> Result<EfficientNet, ConfigError> {
        self.check()?;
        let stem = self.channels(32);
        let total: usize = B0.iter().map(|s| s.repeats).sum();
        let mut index = 0;
        let mut in_ch = stem;
        let mut blocks = Vec::with_capacity(B0.len());
        for def in &B0 {
            let out = self.channels(def.out);
            let mut stage = Vec::with_capacity(def.repeats);
            for i in 0..def.repeats {
                let spec = BlockSpec {
                    in_ch,
                    out,
                    kernel: def.kernel,
                    stride: if i == 0 { def.stride } else { 1 },
                    expand: def.expand,
                    separable: def.separable,
                    // timm's builder: rate × block index / block count.
                    drop_path: self.drop_path_rate * index as f64 / total as f64,
                };
                stage.push(MbBlock::new(&spec, device));
                in_ch = out;
                index += 1;
            }
            blocks.push(stage);
        }
        let features = self.channels(1280);
        // _init_weight_goog: a linear layer uniform in ±1/√fan-out, bias zero.
        let bound = 1.0 / (self.num_classes as f64).sqrt();
        let mut classifier = LinearConfig::new(features, self.num_classes)
            .with_initializer(Initializer::Uniform {
                min: -bound,
                max: bound,
            })
            .init(device);
        classifier.bias = Some(Initializer::Zeros.init([self.num_classes], device));
        Ok(EfficientNet {
            conv_stem: conv([3, stem], [3, self.stem_stride, 1], device),
            bn1: BatchNorm::new(stem, false, device),
            blocks,
            conv_head: conv([in_ch, features], [1, 1, 1], device),
            bn2: BatchNorm::new(features, false, device),
            classifier,
            compute: None,
        })
    }
}

/// What one block is built from.
struct BlockSpec {
    in_ch: usize,
    out: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    separable: bool,
    drop_path: f64,
}

/// timm's `DepthwiseSeparableConv` (`conv_dw`, `bn1`, `se`, `conv_pw`, `bn2`) or
/// `InvertedResidual` (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `se`, `conv_pwl`, `bn3`), under
/// their names: `conv_pw` is the separable block's projection and the inverted residual's
/// expansion.
#[derive(Module, Debug)]
pub struct MbBlock {
    /// 1×1: the expansion (inverted residual) or the projection (separable).
    pub conv_pw: Conv2d,
    /// The first batch norm (after the expansion; the separable block's after `conv_dw`).
    pub bn1: BatchNorm,
    /// The depthwise k×k carrying the stride.
    pub conv_dw: Conv2d,
    /// The second batch norm (after `conv_dw`; the separable block's after `conv_pw`).
    pub bn2: BatchNorm,
    /// Squeeze-excite after the depthwise convolution.
    pub se: SqueezeExcite,
    /// The inverted residual's 1×1 projection.
    pub conv_pwl: Option<Conv2d>,
    /// Its batch norm.
    pub bn3: Option<BatchNorm>,
    /// Whether the block adds its input (same shape in and out).
    #[module(skip)]
    pub skip: bool,
    /// Probability of dropping the branch for a sample in training.
    pub drop_path: f64,
}

impl MbBlock {
    fn new(s: &BlockSpec, device: &Device) -> Self {
        let skip = s.stride == 1 && s.in_ch == s.out;
        if s.separable {
            let reduced = ((s.in_ch as f64 * SE_RATIO).round_ties_even() as usize).max(1);
            return MbBlock {
                conv_pw: conv([s.in_ch, s.out], [1, 1, 1], device),
                bn1: BatchNorm::new(s.in_ch, false, device),
                conv_dw: conv([s.in_ch, s.in_ch], [s.kernel, s.stride, s.in_ch], device),
                bn2: BatchNorm::new(s.out, false, device),
                se: SqueezeExcite::zero_bias(s.in_ch, reduced, true, device),
                conv_pwl: None,
                bn3: None,
                skip,
                drop_path: s.drop_path,
            };
        }
        let mid = make_divisible((s.in_ch * s.expand) as f64);
        // timm: SqueezeExcite(mid, rd_ratio=0.25 / expand), rounded half to even.
        let reduced =
            ((mid as f64 * (SE_RATIO / s.expand as f64)).round_ties_even() as usize).max(1);
        MbBlock {
            conv_pw: conv([s.in_ch, mid], [1, 1, 1], device),
            bn1: BatchNorm::new(mid, false, device),
            conv_dw: conv([mid, mid], [s.kernel, s.stride, mid], device),
            bn2: BatchNorm::new(mid, false, device),
            se: SqueezeExcite::zero_bias(mid, reduced, true, device),
            conv_pwl: Some(conv([mid, s.out], [1, 1, 1], device)),
            bn3: Some(BatchNorm::new(s.out, false, device)),
            skip,
            drop_path: s.drop_path,
        }
    }

    fn forward(&self, x: Tensor<4>, masks: Option<u64>, compute: Option<FloatDType>) -> Tensor<4> {
        let shortcut = x.clone();
        let y = match (&self.conv_pwl, &self.bn3) {
            (Some(pwl), Some(bn3)) => {
                let y = self.bn1.forward_silu(amp::conv(&self.conv_pw, x, compute));
                let y = self.bn2.forward_silu(amp::conv(&self.conv_dw, y, compute));
                let y = self.se.forward(y, compute);
                bn3.forward(amp::conv(pwl, y, compute))
            }
            _ => {
                let y = self.bn1.forward_silu(amp::conv(&self.conv_dw, x, compute));
                let y = self.se.forward(y, compute);
                self.bn2.forward(amp::conv(&self.conv_pw, y, compute))
            }
        };
        if self.skip {
            drop_path(y, self.drop_path, masks) + shortcut
        } else {
            y
        }
    }
}

/// An EfficientNet; see the module documentation.
#[derive(Module, Debug)]
pub struct EfficientNet {
    /// 3×3, stride 2.
    pub conv_stem: Conv2d,
    /// Its batch norm (SiLU after).
    pub bn1: BatchNorm,
    /// The stages' blocks.
    pub blocks: Vec<Vec<MbBlock>>,
    /// 1×1 to the features.
    pub conv_head: Conv2d,
    /// Its batch norm (SiLU after).
    pub bn2: BatchNorm,
    /// The classifier.
    pub classifier: Linear,
    /// The float type of the convolutions and the classifier ([`crate::model::amp`]).
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl EfficientNet {
    /// Logits of normalized images; `masks` keys block i's drop-path draws (`mix_key(masks,
    /// i)`).
    pub(crate) fn forward_with(&self, x: Tensor<4>, masks: Option<u64>) -> Tensor<2> {
        let c = self.compute;
        let mut x = self.bn1.forward_silu(amp::conv(&self.conv_stem, x, c));
        for (i, block) in self.blocks.iter().flatten().enumerate() {
            x = block.forward(x, masks.map(|k| mix_key(k, i as u64)), c);
        }
        let x = self.bn2.forward_silu(amp::conv(&self.conv_head, x, c));
        let x = adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3);
        amp::linear(&self.classifier, x, c)
    }

    /// Every batch norm, in module order.
    pub(crate) fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all = vec![&self.bn1];
        for b in self.blocks.iter().flatten() {
            all.extend([&b.bn1, &b.bn2]);
            all.extend(&b.bn3);
        }
        all.push(&self.bn2);
        all
    }
}

/// What an EfficientNet state dict (timm's names → shapes) holds, in words.
pub fn describe(tensors: &std::collections::BTreeMap<String, Vec<usize>>) -> String {
    let dim = |name: &str, i: usize| tensors.get(name).and_then(|s| s.get(i)).copied();
    let classes = dim("classifier.weight", 0).map_or(String::new(), |c| format!(", {c} classes"));
    let blocks = tensors
        .keys()
        .filter(|k| k.ends_with(".conv_dw.weight"))
        .count();
    match (
        dim("conv_stem.weight", 0),
        dim("conv_head.weight", 0),
        blocks,
    ) {
        (Some(32), Some(1280), 16) => format!("timm's efficientnet_b0{classes}"),
        (stem, head, _) => format!(
            "an EfficientNet with {blocks} blocks, stem {} and head {} wide{classes}",
            stem.unwrap_or(0),
            head.unwrap_or(0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b0_has_timms_parameter_count() {
        let config =
            EfficientNetConfig::named("efficientnet_b0", &Shape::of(1000, [1.0, 0.0], false))
                .expect("ours");
        // timm 1.0.31: sum(p.numel() for p in create_model('efficientnet_b0').parameters())
        assert_eq!(config.trainable_params().expect("config"), 5_288_548);
    }

    #[test]
    fn channels_round_as_timms_make_divisible() {
        for (v, want) in [
            (16.0, 16),
            (4.0, 8),
            (36.0, 40),
            (12.5, 16),
            (1280.0 * 0.125, 160),
        ] {
            assert_eq!(make_divisible(v), want, "{v}");
        }
    }

    #[test]
    fn a_narrow_b0_trains() {
        let device = Device::flex().autodiff();
        let config =
            EfficientNetConfig::named("efficientnet_b0", &Shape::of(10, [0.25, 0.2], true))
                .expect("ours");
        let model = config.init(&device).expect("config");
        let y = model.forward_with(Tensor::<4>::ones([2, 3, 16, 16], &device), Some(1));
        assert_eq!(y.dims(), [2, 10]);
        let grads = y.powi_scalar(2).mean().backward();
        assert!(model.conv_stem.weight.val().grad(&grads).is_some());
    }
}
