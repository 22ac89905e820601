//! The channel attention timm puts after a block's last batch norm (`create_attn`, its `se`
//! attribute): squeeze-excite (`SEModule`: mean over the image, 1×1 reduce, ReLU, 1×1 expand,
//! sigmoid gate) or ECA (`EcaModule`: mean over the image, a 1-D convolution across channels,
//! sigmoid gate). Sizes follow timm's rules exactly ([`se_channels`], [`eca_kernel`]), so that
//! parameter counts and exported weights match `timm.create_model`.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d};
use burn::nn::{Initializer, PaddingConfig1d};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, FloatDType, Tensor};
use cpu_kernels::activation::Activation;
use cpu_kernels::pointwise;
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::conv_init::kaiming as conv;

/// Which attention a block has (timm's `block_args=dict(attn_layer=...)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// None: timm's plain ResNet.
    #[default]
    None,
    /// Squeeze-excite (`seresnet50`).
    Se,
    /// Efficient channel attention (`ecaresnet50t`).
    Eca,
}

/// timm's `make_divisible(channels / 16, 8, round_limit=0)`: SE's reduced width.
pub fn se_channels(channels: usize) -> usize {
    let v = channels as f64 / 16.0;
    let divisor = 8.0;
    // int(v + divisor / 2) // divisor * divisor, at least the divisor.
    (((v + divisor / 2.0) as usize) / 8 * 8).max(8)
}

/// ECA's kernel size for `channels` (`EcaModule` with gamma 2, beta 1):
/// `t = int(|log2(C) + 1| / 2)`, the next odd number, at least 3.
pub fn eca_kernel(channels: usize) -> usize {
    // Python's math.log(c, 2) is log(c) / log(2); the same two calls give the same bits.
    let t = (((channels as f64).ln() / 2f64.ln() + 1.0).abs() / 2.0) as usize;
    let odd = if t % 2 == 1 { t } else { t + 1 };
    odd.max(3)
}

/// Squeeze-excite with timm's parameter names (`se.fc1`, `se.fc2`, both with bias; an
/// EfficientNet's `conv_reduce` and `conv_expand` are renamed to them).
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    /// 1×1 reduction, channels → [`se_channels`].
    pub fc1: Conv2d,
    /// 1×1 expansion back to the channels.
    pub fc2: Conv2d,
    /// SiLU between the two (EfficientNet's); ReLU otherwise.
    #[module(skip)]
    pub silu: bool,
}

impl SqueezeExcite {
    /// timm's initialization: the weights as every `nn.Conv2d` of a ResNet
    /// (`kaiming_normal_`, fan-out), the biases as PyTorch's default (uniform ±1/√fan-in).
    pub fn new(channels: usize, device: &Device) -> Self {
        let reduced = se_channels(channels);
        SqueezeExcite {
            fc1: with_bias(conv(channels, reduced, 1, 1, 1, device), channels, device),
            fc2: with_bias(conv(reduced, channels, 1, 1, 1, device), reduced, device),
            silu: false,
        }
    }

    /// RegNet's and EfficientNet's: `reduced` given (a quarter of the block's input width),
    /// the weights as above and the biases zero (their `_init_weights` zero every
    /// convolution's bias); SiLU between with `silu`.
    pub fn zero_bias(channels: usize, reduced: usize, silu: bool, device: &Device) -> Self {
        let zero = |mut c: Conv2d, out: usize| {
            c.bias = Some(Initializer::Zeros.init([out], device));
            c
        };
        SqueezeExcite {
            fc1: zero(conv(channels, reduced, 1, 1, 1, device), reduced),
            fc2: zero(conv(reduced, channels, 1, 1, 1, device), channels),
            silu,
        }
    }

    /// `x` scaled channel by channel by its gate.
    pub fn forward(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        let s = image_mean(&x);
        let s = amp::conv(&self.fc1, s, compute);
        let activation = if self.silu {
            Activation::Silu
        } else {
            Activation::Relu
        };
        let s = pointwise::apply(s, activation);
        let s = sigmoid(amp::conv(&self.fc2, s, compute));
        x * s
    }
}

/// Efficient channel attention with timm's parameter name (`se.conv`, no bias).
#[derive(Module, Debug)]
pub struct Eca {
    /// 1-D convolution over the channel axis, kernel [`eca_kernel`], "same" padding.
    pub conv: Conv1d,
}

impl Eca {
    /// PyTorch's default `nn.Conv1d` initialization, which timm's ResNet init leaves in
    /// place (it re-initializes `nn.Conv2d` only).
    pub fn new(channels: usize, device: &Device) -> Self {
        let k = eca_kernel(channels);
        let pad = (k - 1) / 2;
        Eca {
            conv: Conv1dConfig::new(1, 1, k)
                .with_padding(PaddingConfig1d::Explicit(pad, pad))
                .with_bias(false)
                .init(device),
        }
    }

    /// `x` scaled channel by channel by its gate.
    pub fn forward(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        let [n, c, _, _] = x.dims();
        let s = image_mean(&x).reshape([n, 1, c]);
        let s = amp::conv1d(&self.conv, s, compute);
        x * sigmoid(s).reshape([n, c, 1, 1])
    }
}

/// timm's `x.mean((2, 3), keepdim=True)`: one reduction over the image's H·W values.
fn image_mean(x: &Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.clone()
        .reshape([n, c, h * w])
        .mean_dim(2)
        .reshape([n, c, 1, 1])
}

/// `c` with PyTorch's default bias, uniform in ±1/√`fan_in` (drawn when first read, as every
/// parameter of the model).
fn with_bias(mut c: Conv2d, fan_in: usize, device: &Device) -> Conv2d {
    let [out, _, _, _] = c.weight.lazy_shape().dims();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let uniform = Initializer::Uniform {
        min: -bound,
        max: bound,
    };
    c.bias = Some(uniform.init([out], device));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn se_channels_follow_timms_make_divisible() {
        // timm: SEModule(c).fc1.out_channels for ResNet-50's four stages and small widths.
        for (c, want) in [
            (256, 16),
            (512, 32),
            (1024, 64),
            (2048, 128),
            (64, 8),
            (200, 16),
        ] {
            assert_eq!(se_channels(c), want, "{c}");
        }
    }

    #[test]
    fn eca_kernels_follow_timms_rule() {
        // timm: EcaModule(c).conv.kernel_size for ResNet-50's stages and small widths.
        for (c, want) in [
            (256, 5),
            (512, 5),
            (1024, 5),
            (2048, 7),
            (64, 3),
            (16, 3),
            (128, 5),
        ] {
            assert_eq!(eca_kernel(c), want, "{c}");
        }
    }

    #[test]
    fn gates_keep_the_shape_and_scale_within_the_input() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 32, 5, 5], Distribution::Uniform(0.0, 1.0), &device);
        for y in [
            SqueezeExcite::new(32, &device).forward(x.clone(), None),
            Eca::new(32, &device).forward(x.clone(), None),
        ] {
            assert_eq!(y.dims(), [2, 32, 5, 5]);
            // A sigmoid gate scales every value by (0, 1).
            let over: f32 = (y - x.clone()).clamp_min(0.0).sum().into_scalar();
            assert_eq!(over, 0.0);
        }
    }
}
