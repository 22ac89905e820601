//! Batch norm in training ([`cpu`]) plugged into burn-flex through burn's
//! backend extension, with an autodiff backward of its own, as the convolution is
//! ([`crate::conv`]). [`train`] routes: f32 on burn-flex takes ours; everything else (CUDA, the
//! CubeCL stand-in, half precision) burn's `batch_norm_train`.

pub mod cpu;

use std::borrow::Cow;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{DType, Tensor};

use crate::activation::{Activation, burns};
use crate::slices::{is_flex, tensor, values};
use cpu::Shape;

/// How the output is made: ε, and the activation that follows (fused on the CPU; applied
/// after, by burn, elsewhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    /// Added to the variance.
    pub epsilon: f64,
    /// What the normalized output passes through.
    pub activation: Activation,
}

/// Batch norm's training forward: the output (through `norm.activation`), and the batch mean
/// and biased variance per channel (for the running statistics), as burn's `batch_norm_train`
/// returns them.
pub fn train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    norm: Norm,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    if !ours_applies(&x, &gamma) {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, norm.epsilon);
        return (burns(out.output, norm.activation), out.mean, out.variance);
    }
    let c = x.dims()[1];
    // γ and β travel as one `[2, C]` tensor: the backward pass computes their gradients
    // together, as one `[2, C]` tensor, and the stack's own backward hands out its rows.
    let affine: Tensor<2> = Tensor::stack(vec![gamma, beta], 0);
    let stats: Tensor<2> = Tensor::from_dispatch(<Dispatch as CpuBatchNorm>::cpu_bn_stats(
        x.clone().into_dispatch(),
    ));
    let out = Tensor::from_dispatch(<Dispatch as CpuBatchNorm>::cpu_bn_train(
        x.into_dispatch(),
        affine.into_dispatch(),
        stats.clone().into_dispatch(),
        norm,
    ));
    let mean = stats.clone().slice([0..1, 0..c]).reshape([c]);
    let variance = stats.slice([1..2, 0..c]).reshape([c]);
    (out, mean, variance)
}

/// Whether `x` and `gamma` are f32 on burn-flex (with or without autodiff).
fn ours_applies(x: &Tensor<4>, gamma: &Tensor<1>) -> bool {
    is_flex(&x.device()) && x.dtype() == DType::F32 && gamma.dtype() == DType::F32
}

/// Our batch norm as a burn backend extension, for burn-flex and for autodiff over it (with
/// `BatchNormBackward`). The statistics (`[2, C]`: mean, biased variance) are computed once
/// and handed to the output and to the backward pass; γ's and β's gradients once, and handed
/// to the input's. γ and β are one `[2, C]` tensor, `affine` (row 0 γ, row 1 β).
#[backend_extension(Flex, Autodiff)]
pub trait CpuBatchNorm: Backend {
    /// Per channel of `x` (N×C×H×W), the mean (row 0) and biased variance (row 1): `[2, C]`.
    fn cpu_bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x` normalized with its batch statistics `stats` ([`CpuBatchNorm::cpu_bn_stats`]),
    /// scaled by γ and shifted by β (`affine`), then through `norm.activation`.
    /// Differentiated as batch norm in training: the statistics' dependence on `x` is in the
    /// backward pass.
    fn cpu_bn_train(
        x: FloatTensor<Self>,
        affine: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;

    /// The gradients of γ (row 0) and β (row 1) from the output's gradient: `[2, C]`.
    fn cpu_bn_param_backward(
        x: FloatTensor<Self>,
        affine: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;

    /// The gradient of `x` from the output's gradient `grad` and the parameters' gradients
    /// `params` ([`CpuBatchNorm::cpu_bn_param_backward`]).
    fn cpu_bn_x_backward(
        x: FloatTensor<Self>,
        affine: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        params: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;
}

/// A batch's values as the kernels take them: `x`'s shape and values, and the two rows of
/// each `[2, C]` tensor handed along (statistics, γ and β).
struct Batch<'a> {
    s: Shape,
    dims: [usize; 4],
    x: Cow<'a, [f32]>,
    stats: (Vec<f32>, Vec<f32>),
    affine: (Vec<f32>, Vec<f32>),
}

impl Batch<'_> {
    fn of<'a>(x: &'a FlexTensor, affine: &FlexTensor, stats: &FlexTensor) -> Batch<'a> {
        let dims = x.shape().dims::<4>();
        let [n, c, h, w] = dims;
        Batch {
            s: Shape { n, c, hw: h * w },
            dims,
            x: values(x),
            stats: rows(stats),
            affine: rows(affine),
        }
    }

    fn stats(&self) -> (&[f32], &[f32]) {
        (&self.stats.0, &self.stats.1)
    }

    fn affine(&self) -> (&[f32], &[f32]) {
        (&self.affine.0, &self.affine.1)
    }
}

/// The `[2, C]` rows of a flex tensor (statistics, γ and β, or their gradients).
fn rows(t: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
    let v = values(t);
    let c = v.len() / 2;
    (v[..c].to_vec(), v[c..].to_vec())
}

impl CpuBatchNorm for Flex {
    fn cpu_bn_stats(x: FlexTensor) -> FlexTensor {
        let [n, c, h, w] = x.shape().dims();
        let (mean, var) = cpu::statistics(Shape { n, c, hw: h * w }, &values(&x));
        tensor([mean, var].concat(), [2, c])
    }

    fn cpu_bn_train(
        x: FlexTensor,
        affine: FlexTensor,
        stats: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let b = Batch::of(&x, &affine, &stats);
        let y = cpu::normalize(
            b.s,
            &b.x,
            b.stats(),
            b.affine(),
            norm.epsilon,
            norm.activation,
        );
        tensor(y, b.dims)
    }

    fn cpu_bn_param_backward(
        x: FlexTensor,
        affine: FlexTensor,
        stats: FlexTensor,
        grad: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let b = Batch::of(&x, &affine, &stats);
        let (dgamma, dbeta) = cpu::parameter_grads(
            b.s,
            &b.x,
            &values(&grad),
            b.stats(),
            b.affine(),
            norm.epsilon,
            norm.activation,
        );
        tensor([dgamma, dbeta].concat(), [2, b.s.c])
    }

    fn cpu_bn_x_backward(
        x: FlexTensor,
        affine: FlexTensor,
        stats: FlexTensor,
        params: FlexTensor,
        grad: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let b = Batch::of(&x, &affine, &stats);
        let (dgamma, dbeta) = rows(&params);
        let dx = cpu::input_grad(
            b.s,
            (&b.x, &values(&grad)),
            b.stats(),
            b.affine(),
            (&dgamma, &dbeta),
            norm.epsilon,
            norm.activation,
        );
        tensor(dx, b.dims)
    }
}

/// The backward pass of [`CpuBatchNorm::cpu_bn_train`] under autodiff: the whole of batch
/// norm's training gradient (the batch statistics' dependence on `x` included).
#[derive(Debug)]
struct BatchNormBackward;

impl<B: CpuBatchNorm> Backward<B, 2> for BatchNormBackward {
    /// The checkpointed input and γ-and-β, the batch statistics, and ε and the fused
    /// activation.
    type State = ([NodeId; 2], B::FloatTensorPrimitive, Norm);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_affine] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (states, stats, norm) = ops.state;
        let [x, affine] =
            states.map(|s| checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(s));
        // The input's gradient needs γ's and β's: computed once for both.
        let params =
            B::cpu_bn_param_backward(x.clone(), affine.clone(), stats.clone(), grad.clone(), norm);
        if let Some(node) = node_x {
            let dx = B::cpu_bn_x_backward(x, affine, stats, params.clone(), grad, norm);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_affine {
            grads.register::<B>(node.id, params);
        }
    }
}

impl<B: CpuBatchNorm, C: CheckpointStrategy> CpuBatchNorm for Autodiff<B, C> {
    fn cpu_bn_train(
        x: FloatTensor<Self>,
        affine: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self> {
        let stats = Self::inner(stats);
        match BatchNormBackward
            .prepare::<C>([x.node(), affine.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let states = [prep.checkpoint(&x), prep.checkpoint(&affine)];
                let y = B::cpu_bn_train(
                    x.into_primitive(),
                    affine.into_primitive(),
                    stats.clone(),
                    norm,
                );
                prep.finish((states, stats, norm), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cpu_bn_train(
                x.into_primitive(),
                affine.into_primitive(),
                stats,
                norm,
            )),
        }
    }

    // Statistics are not differentiated (the backward pass accounts for them), nor are the
    // gradients themselves (no second order).
    crate::autodiff::on_inner! {
        fn cpu_bn_stats(x);
        fn cpu_bn_param_backward(x, affine, stats, grad; norm: Norm);
        fn cpu_bn_x_backward(x, affine, stats, params, grad; norm: Norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, relative};
    use burn::tensor::Device;

    /// Ours against burn's `batch_norm_train` (then burn's activation): the output,
    /// the statistics, and the gradients of x, γ and β of `<r, bn(x)>` for a random `r`.
    fn check(shape: [usize; 4], activation: Activation) {
        let device = Device::flex().autodiff();
        let c = shape[1];
        // Not centred and not of unit spread, as activations after a convolution are.
        let x = random(shape, 1, &device).mul_scalar(3.0).add_scalar(0.5);
        let gamma = random([c], 2, &device).add_scalar(1.0);
        let beta = random([c], 3, &device);
        assert!(ours_applies(&x, &gamma), "not our path");
        let run = |ours: bool| {
            let (x, g, b) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let (y, mean, var) = if ours {
                let norm = Norm {
                    epsilon: 1e-5,
                    activation,
                };
                train(x.clone(), g.clone(), b.clone(), norm)
            } else {
                let out =
                    burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
                (burns(out.output, activation), out.mean, out.variance)
            };
            let r = random(y.dims(), 4, &device);
            let grads = (y.clone() * r).sum().backward();
            let gx = x.grad(&grads).expect("x grad");
            let gg = g.grad(&grads).expect("gamma grad");
            let gb = b.grad(&grads).expect("beta grad");
            (y.detach(), mean.detach(), var.detach(), gx, gg, gb)
        };
        let ours = run(true);
        let theirs = run(false);
        let parts = [
            ("output", relative(ours.0, theirs.0)),
            ("mean", relative(ours.1, theirs.1)),
            ("variance", relative(ours.2, theirs.2)),
            ("x gradient", relative(ours.3, theirs.3)),
            ("gamma gradient", relative(ours.4, theirs.4)),
            ("beta gradient", relative(ours.5, theirs.5)),
        ];
        for (what, e) in parts {
            assert!(
                e < 1e-5,
                "{shape:?}, {activation:?}: {what} differs by {e:e}"
            );
        }
    }

    #[test]
    fn forward_statistics_and_gradients_equal_burns_batch_norm() {
        // ResNets' shapes and odd ones: one position per plane, one image, planes of 1 to 112².
        for activation in [Activation::Identity, Activation::Relu, Activation::Silu] {
            check([2, 3, 5, 7], activation);
            check([8, 64, 7, 7], activation);
            check([4, 16, 1, 1], activation);
            check([1, 8, 9, 9], activation);
            check([2, 4, 112, 112], activation);
            check([16, 32, 4, 4], activation);
        }
    }

    #[test]
    fn half_precision_stays_burns() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &device);
        let gamma = Tensor::<1>::ones([4], &device);
        assert!(ours_applies(&x, &gamma));
        let half = x.cast(burn::tensor::FloatDType::BF16);
        assert!(!ours_applies(
            &half,
            &gamma.cast(burn::tensor::FloatDType::BF16)
        ));
    }
}
