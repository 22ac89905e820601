//! The convolution RegNet's and EfficientNet's initializations make (timm's RegNet
//! `_init_weights` and EfficientNet's `_init_weight_goog`, the same rule): weights from a normal
//! of variance `2 / fan-out`, fan-out `k·k·out / groups` (integer division), no bias, padding
//! `k / 2` on every side.

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
