//! The convolutions timm's initializations make, padding `k / 2` on every side and no bias:
//! a ResNet's ([`kaiming`]: `kaiming_normal_(mode='fan_out')`, fan-out `out·k·k`) and
//! RegNet's and EfficientNet's ([`conv`]: `_init_weights` and `_init_weight_goog`, the same
//! rule, fan-out `k·k·out / groups`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::Device;

/// A `[in, out]` convolution of `[kernel, stride, groups]`.
pub fn conv(
    [in_ch, out_ch]: [usize; 2],
    [kernel, stride, groups]: [usize; 3],
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    let fan_out = kernel * kernel * out_ch / groups;
    Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: (2.0 / fan_out as f64).sqrt(),
        })
        .init(device)
}

/// timm's `kaiming_normal_(mode='fan_out', nonlinearity='relu')`, no bias. PyTorch's fan-out
/// of a grouped convolution is `out × k × k`, not divided by the groups as burn's
/// initializer divides it, so a grouped one draws from the normal with PyTorch's deviation.
pub fn kaiming(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    let initializer = if groups == 1 {
        Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        }
    } else {
        Initializer::Normal {
            mean: 0.0,
            std: (2.0 / (out_ch * kernel * kernel) as f64).sqrt(),
        }
    };
    Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(initializer)
        .init(device)
}
