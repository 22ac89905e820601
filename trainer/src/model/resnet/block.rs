//! timm's residual blocks (`BasicBlock`, `Bottleneck`) with the arguments the ResNet family
//! varies: cardinality and base width (ResNeXt's grouped 3×3), an attention after the last
//! batch norm ([`crate::model::attention`]), and the shortcut's form (`downsample_conv`, or
//! `downsample_avg` with `avg_down`).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use burn::tensor::{Device, FloatDType, Tensor};

use crate::model::amp;
use crate::model::attention::{AttentionKind, Eca, SqueezeExcite};
use crate::model::batch_norm::BatchNorm;
use crate::model::conv_init::kaiming as conv;
use crate::model::drop_path::drop_path;
use cpu_kernels::residual;

/// The projection shortcut where shape changes: timm's `downsample` Sequential, either
/// `(conv, bn)` with the block's stride, or with `avg_down` `(pool, conv, bn)`: a 2×2 average
/// pool carries the stride (ceil mode, padding not counted) and the 1×1 convolution has stride 1.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1×1 convolution.
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
    /// The stride of the average pool before the convolution (`avg_down`); 0: no pool.
    #[module(skip)]
    pub pool_stride: usize,
}

impl Downsample {
    fn forward(&self, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
        let x = if self.pool_stride > 1 {
            average_pool(x, self.pool_stride)
        } else {
            x
        };
        self.bn.forward(amp::conv(&self.conv, x, compute))
    }
}

/// timm's `nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)`: an odd side
/// keeps its last row or column, averaged over the values that exist.
fn average_pool(x: Tensor<4>, stride: usize) -> Tensor<4> {
    let options = AvgPoolOptions::new([2, 2])
        .with_stride([stride, stride])
        .with_count_include_pad(false)
        .with_ceil_mode(true);
    avg_pool2d(x, options)
}

/// What one block is built from (timm's `block_fn(inplanes, planes, stride, ...)` arguments).
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockSpec {
    /// Input channels.
    pub in_ch: usize,
    /// timm's `planes` (the stage's base width; a bottleneck outputs 4×).
    pub planes: usize,
    /// Stride of the 3×3 convolution carrying it (and of the shortcut).
    pub stride: usize,
    /// A bottleneck (1×1, 3×3, 1×1 ×4) or a basic block (two 3×3).
    pub bottleneck: bool,
    /// Groups of the bottleneck's 3×3 (ResNeXt's 32).
    pub cardinality: usize,
    /// Channels per group at `planes` 64 (ResNeXt's 4); 64 for ResNet.
    pub base_width: usize,
    /// Attention after the last batch norm.
    pub attn: AttentionKind,
    /// `avg_down` shortcuts.
    pub avg_down: bool,
    /// The last batch norm's γ starts at zero.
    pub zero_last: bool,
    /// Stochastic-depth probability of this block.
    pub drop_path: f64,
}

impl BlockSpec {
    /// Output channels: `planes × expansion`.
    pub fn out_ch(&self) -> usize {
        if self.bottleneck {
            self.planes * 4
        } else {
            self.planes
        }
    }

    /// The bottleneck's inner width, timm's `int(floor(planes * base_width / 64) * cardinality)`;
    /// at least one channel per group, for widths scaled far down.
    pub fn inner_width(&self) -> usize {
        ((self.planes * self.base_width) / 64).max(1) * self.cardinality
    }
}

/// A basic block (two 3×3) or a bottleneck (1×1, 3×3 with the stride and the groups, 1×1 ×4).
#[derive(Module, Debug)]
pub struct Block {
    /// First convolution (3×3 basic, 1×1 bottleneck).
    pub conv1: Conv2d,
    /// Its batch norm.
    pub bn1: BatchNorm,
    /// 3×3 convolution carrying the stride (grouped in ResNeXt).
    pub conv2: Conv2d,
    /// Its batch norm (zero γ in a basic block).
    pub bn2: BatchNorm,
    /// Bottleneck's expanding 1×1.
    pub conv3: Option<Conv2d>,
    /// Its batch norm (zero γ).
    pub bn3: Option<BatchNorm>,
    /// Squeeze-excite after the last batch norm (timm's `se`).
    pub se: Option<SqueezeExcite>,
    /// ECA after the last batch norm (timm's `se` too: the same attribute holds either).
    pub eca: Option<Eca>,
    /// Projection shortcut, where the shape changes.
    pub downsample: Option<Downsample>,
    /// Probability of dropping the residual branch for a sample in training.
    pub drop_path: f64,
}

impl Block {
    /// The block `spec` describes, with timm's initialization.
    pub(super) fn new(spec: &BlockSpec, device: &Device) -> Self {
        let BlockSpec {
            in_ch,
            planes,
            stride,
            ..
        } = *spec;
        let out_ch = spec.out_ch();
        let downsample = (stride != 1 || in_ch != out_ch).then(|| {
            let pooled = spec.avg_down && stride != 1;
            Downsample {
                conv: conv(
                    in_ch,
                    out_ch,
                    1,
                    if spec.avg_down { 1 } else { stride },
                    1,
                    device,
                ),
                bn: BatchNorm::new(out_ch, false, device),
                pool_stride: if pooled { stride } else { 0 },
            }
        });
        let (conv1, bn1, conv2, bn2, conv3, bn3) = if spec.bottleneck {
            let width = spec.inner_width();
            (
                conv(in_ch, width, 1, 1, 1, device),
                BatchNorm::new(width, false, device),
                conv(width, width, 3, stride, spec.cardinality, device),
                BatchNorm::new(width, false, device),
                Some(conv(width, out_ch, 1, 1, 1, device)),
                Some(BatchNorm::new(out_ch, spec.zero_last, device)),
            )
        } else {
            (
                conv(in_ch, planes, 3, stride, 1, device),
                BatchNorm::new(planes, false, device),
                conv(planes, planes, 3, 1, 1, device),
                BatchNorm::new(planes, spec.zero_last, device),
                None,
                None,
            )
        };
        Block {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            se: (spec.attn == AttentionKind::Se).then(|| SqueezeExcite::new(out_ch, device)),
            eca: (spec.attn == AttentionKind::Eca).then(|| Eca::new(out_ch, device)),
            downsample,
            drop_path: spec.drop_path,
        }
    }

    /// `masks`: the key of this block's drop-path draws (see [`super::ResNet::forward_with`]).
    /// `compute`: the convolutions' float type ([`crate::model::amp`]).
    pub(super) fn forward(
        &self,
        x: Tensor<4>,
        masks: Option<u64>,
        compute: Option<FloatDType>,
    ) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone(), compute),
            None => x.clone(),
        };
        let y = self.bn1.forward_relu(amp::conv(&self.conv1, x, compute));
        let mut y = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let y = self.bn2.forward_relu(amp::conv(&self.conv2, y, compute));
                bn3.forward(amp::conv(conv3, y, compute))
            }
            _ => self.bn2.forward(amp::conv(&self.conv2, y, compute)),
        };
        if let Some(se) = &self.se {
            y = se.forward(y, compute);
        }
        if let Some(eca) = &self.eca {
            y = eca.forward(y, compute);
        }
        residual::add_relu(drop_path(y, self.drop_path, masks), shortcut)
    }

    /// Its batch norms in module order (`bn1`, `bn2`, `bn3`, the shortcut's).
    pub(super) fn batch_norms(&self) -> impl Iterator<Item = &BatchNorm> {
        [&self.bn1, &self.bn2]
            .into_iter()
            .chain(&self.bn3)
            .chain(self.downsample.as_ref().map(|d| &d.bn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn spec() -> BlockSpec {
        BlockSpec {
            in_ch: 8,
            planes: 8,
            stride: 2,
            bottleneck: true,
            cardinality: 1,
            base_width: 64,
            attn: AttentionKind::None,
            avg_down: false,
            zero_last: true,
            drop_path: 0.0,
        }
    }

    #[test]
    fn resnext_inner_width_is_timms() {
        // resnext50_32x4d: planes 64 → 4 × 32 = 128; 512 → 32 × 32 = 1024.
        let s = |planes| BlockSpec {
            planes,
            cardinality: 32,
            base_width: 4,
            ..spec()
        };
        assert_eq!(s(64).inner_width(), 128);
        assert_eq!(s(512).inner_width(), 1024);
        // Scaled to a quarter and below: one channel per group at least.
        assert_eq!(s(16).inner_width(), 32);
        assert_eq!(s(8).inner_width(), 32);
        assert_eq!(spec().inner_width(), 8);
    }

    #[test]
    fn avg_down_pools_then_convolves_with_stride_one() {
        let device = Device::flex();
        let block = Block::new(
            &BlockSpec {
                avg_down: true,
                ..spec()
            },
            &device,
        );
        let d = block.downsample.as_ref().expect("shape changes");
        assert_eq!((d.pool_stride, d.conv.stride), (2, [1, 1]));
        // An odd side: ceil mode keeps the last row and column (7 → 4), as the 3×3 stride-2
        // convolution of the branch does.
        let y = block.forward(Tensor::<4>::ones([1, 8, 7, 7], &device), None, None);
        assert_eq!(y.dims(), [1, 32, 4, 4]);
        let plain = Block::new(&spec(), &device);
        let d = plain.downsample.as_ref().expect("shape changes");
        assert_eq!((d.pool_stride, d.conv.stride), (0, [2, 2]));
    }

    #[test]
    fn average_pool_does_not_count_the_padding_of_ceil_mode() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect(), [1, 1, 3, 3]),
            &device,
        );
        let pooled: Vec<f32> = average_pool(x, 2).into_data().iter::<f32>().collect();
        // PyTorch: nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) of 1..9.
        assert_eq!(pooled, vec![3.0, 4.5, 7.5, 9.0]);
    }
}
