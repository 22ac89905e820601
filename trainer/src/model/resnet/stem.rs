//! timm's deep stem (`stem_type='deep'` or `'deep_tiered'`, the "D" and "T" models of Bag of
//! Tricks): three 3×3 convolutions in place of the 7×7, the first with stride 2, batch norm and
//! ReLU between them. The third's batch norm is the model's `bn1`, as in timm.
//!
//! timm keeps it as the `nn.Sequential` `conv1`: our `stem.conv_a`, `bn_a`, `conv_b`, `bn_b`,
//! `conv_c` are its `conv1.0`, `.1`, `.3`, `.4`, `.6` ([`crate::model::timm_weights`] renames).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::batch_norm::BatchNorm;
use crate::model::conv_init::kaiming as conv;

/// timm's `stem_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StemType {
    /// One 7×7 convolution, 64 wide (`''`).
    #[default]
    Plain,
    /// Three 3×3 convolutions, `stem_width`, `stem_width`, then `2 × stem_width` wide.
    Deep,
    /// The same with the first `3 × (stem_width / 4)` wide (`resnet50t`, `ecaresnet50t`).
    DeepTiered,
}

impl StemType {
    /// The widths of the three convolutions for a stem width of `width` (already scaled).
    pub fn widths(self, width: usize) -> [usize; 3] {
        let first = match self {
            StemType::DeepTiered => (3 * (width / 4)).max(1),
            _ => width,
        };
        [first, width, 2 * width]
    }
}

/// The three convolutions of a deep stem and the two batch norms between them.
#[derive(Module, Debug)]
pub struct DeepStem {
    /// 3×3, stride 2 (1 with the small stem), 3 → the first width.
    pub conv_a: Conv2d,
    /// Its batch norm.
    pub bn_a: BatchNorm,
    /// 3×3, stride 1.
    pub conv_b: Conv2d,
    /// Its batch norm.
    pub bn_b: BatchNorm,
    /// 3×3, stride 1, to the stem's output width (whose batch norm is the model's `bn1`).
    pub conv_c: Conv2d,
}

impl DeepStem {
    /// The stem of `widths` ([`StemType::widths`]), its first convolution with `stride`.
    pub fn new([a, b, c]: [usize; 3], stride: usize, device: &Device) -> Self {
        DeepStem {
            conv_a: conv(3, a, 3, stride, 1, device),
            bn_a: BatchNorm::new(a, false, device),
            conv_b: conv(a, b, 3, 1, 1, device),
            bn_b: BatchNorm::new(b, false, device),
            conv_c: conv(b, c, 3, 1, 1, device),
        }
    }

    /// The stem up to `conv_c`'s output (the caller applies `bn1` and its ReLU).
    pub fn forward(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        let x = self.bn_a.forward_relu(amp::conv(&self.conv_a, x, compute));
        let x = self.bn_b.forward_relu(amp::conv(&self.conv_b, x, compute));
        amp::conv(&self.conv_c, x, compute)
    }

    /// Its two batch norms, in module order.
    pub fn batch_norms(&self) -> [&BatchNorm; 2] {
        [&self.bn_a, &self.bn_b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_timms() {
        assert_eq!(StemType::Deep.widths(32), [32, 32, 64]);
        assert_eq!(StemType::DeepTiered.widths(32), [24, 32, 64]);
        // Scaled down far, the tiered first width stays a real layer.
        assert_eq!(StemType::DeepTiered.widths(2), [1, 2, 4]);
    }

    #[test]
    fn stride_two_halves_the_image() {
        let device = Device::flex();
        let stem = DeepStem::new(StemType::Deep.widths(4), 2, &device);
        let y = stem.forward(Tensor::<4>::ones([1, 3, 16, 16], &device), None);
        assert_eq!(y.dims(), [1, 8, 8, 8]);
    }
}
