//! timm's ViT block (`vision_transformer.Block`): pre-norm multi-head self-attention with the
//! fused `qkv` projection, then a GELU MLP, each added back through stochastic depth.

use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, FloatDType, Tensor};
use cpu_kernels::activation::Activation;
use cpu_kernels::pointwise;

use crate::model::amp;
use crate::model::drop_path::drop_path;

/// timm's LayerNorm epsilon in a ViT (`partial(nn.LayerNorm, eps=1e-6)`).
pub(super) const LAYER_NORM_EPS: f64 = 1e-6;

/// A LayerNorm of `d` features, timm's epsilon, γ 1 and β 0.
pub(super) fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d)
        .with_epsilon(LAYER_NORM_EPS)
        .init(device)
}

/// timm's `init_weights_vit_timm` for a linear layer: weight from a normal of deviation 0.02
/// (timm truncates at ±2, a hundred deviations out), bias zero.
pub(super) fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
        .with_zero_bias(device)
}

/// A linear layer's bias set to zero.
trait ZeroBias {
    fn with_zero_bias(self, device: &Device) -> Self;
}

impl ZeroBias for Linear {
    fn with_zero_bias(mut self, device: &Device) -> Self {
        let [_, d_out] = self.weight.lazy_shape().dims();
        self.bias = Some(Initializer::Zeros.init([d_out], device));
        self
    }
}

/// Multi-head self-attention with timm's names (`attn.qkv`, `attn.proj`).
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries, keys and values in one projection (`3 × dim` outputs).
    pub qkv: Linear,
    /// The heads' outputs projected back.
    pub proj: Linear,
    /// Heads.
    #[module(skip)]
    pub heads: usize,
}

impl Attention {
    /// `x` `[B, N, C]` attended: `softmax(q kᵀ / √d) v` per head, then `proj`.
    fn forward(&self, x: Tensor<3>, compute: Option<FloatDType>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let (h, d) = (self.heads, c / self.heads);
        // timm: qkv(x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4).
        let qkv = amp::linear(&self.qkv, x, compute)
            .reshape([b, n, 3, h, d])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..b, 0..h, 0..n, 0..d])
                .reshape([b, h, n, d])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (d as f64).powf(-0.5);
        let scores = amp::matmul(q.mul_scalar(scale), k.swap_dims(2, 3), compute);
        let y = amp::matmul(softmax(scores, 3), v, compute);
        let y = y.swap_dims(1, 2).reshape([b, n, c]);
        amp::linear(&self.proj, y, compute)
    }
}

/// The MLP with timm's names (`mlp.fc1`, `mlp.fc2`), exact (erf) GELU between.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `dim → hidden`.
    pub fc1: Linear,
    /// `hidden → dim`.
    pub fc2: Linear,
}

/// One transformer block with timm's names.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before the attention.
    pub norm1: LayerNorm,
    /// The attention.
    pub attn: Attention,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Probability of dropping a sample's branch in training.
    pub drop_path: f64,
}

impl Block {
    /// A block of width `dim`, `heads` heads, an MLP `hidden` wide.
    pub(super) fn new([dim, heads, hidden]: [usize; 3], drop_path: f64, device: &Device) -> Self {
        Block {
            norm1: layer_norm(dim, device),
            attn: Attention {
                qkv: linear(dim, 3 * dim, device),
                proj: linear(dim, dim, device),
                heads,
            },
            norm2: layer_norm(dim, device),
            mlp: Mlp {
                fc1: linear(dim, hidden, device),
                fc2: linear(hidden, dim, device),
            },
            drop_path,
        }
    }

    /// `x + drop_path(attn(norm1(x)))`, then `+ drop_path(mlp(norm2(·)))`; `masks` keys the
    /// two draws.
    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        masks: Option<[u64; 2]>,
        compute: Option<FloatDType>,
    ) -> Tensor<3> {
        let a = self.attn.forward(self.norm1.forward(x.clone()), compute);
        let x = x + drop_path(a, self.drop_path, masks.map(|m| m[0]));
        let h = amp::linear(&self.mlp.fc1, self.norm2.forward(x.clone()), compute);
        let h = pointwise::apply(h, Activation::Gelu);
        let m = amp::linear(&self.mlp.fc2, h, compute);
        x + drop_path(m, self.drop_path, masks.map(|m| m[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn attention_of_one_token_is_its_value_projected() {
        // One token attends to itself alone: softmax of one score is 1.
        let device = Device::flex();
        let attn = Attention {
            qkv: linear(8, 24, &device),
            proj: linear(8, 8, &device),
            heads: 2,
        };
        let x = Tensor::<3>::random([2, 1, 8], Distribution::Normal(0.0, 1.0), &device);
        let got = attn.forward(x.clone(), None);
        let v = attn.qkv.forward(x).slice([0..2, 0..1, 16..24]);
        let want = attn.proj.forward(v);
        let diff: f32 = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn tokens_attend_by_similarity() {
        // Two tokens, q = k = v = x (identity projections): each output is a convex mix of
        // the two, weighted toward the more similar.
        let device = Device::flex();
        let eye = |n: usize| {
            let mut v = vec![0f32; n * n];
            (0..n).for_each(|i| v[i * n + i] = 1.0);
            Tensor::<2>::from_data(TensorData::new(v, [n, n]), &device)
        };
        let mut attn = Attention {
            qkv: linear(2, 6, &device),
            proj: linear(2, 2, &device),
            heads: 1,
        };
        attn.qkv.weight = burn::module::Param::from_tensor(Tensor::cat(vec![eye(2); 3], 1));
        attn.proj.weight = burn::module::Param::from_tensor(eye(2));
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![4.0f32, 0.0, 0.0, 1.0], [1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = attn.forward(x, None).into_data().iter::<f32>().collect();
        // Token 0 = (4, 0): scores 16/√2 and 0: nearly all on itself.
        assert!(y[0] > 3.9 && y[1] < 0.1, "{y:?}");
        // Token 1 = (0, 1): scores 0 and 1/√2: a mix, more of itself.
        let w1 = 1.0 / (1.0 + (-(0.5f32).sqrt()).exp());
        assert!((y[3] - w1).abs() < 1e-5, "{y:?}");
    }
}
