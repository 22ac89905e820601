//! Batch norm in training ([`cpu`]) plugged into burn-flex through burn's
//! backend extension, with an autodiff backward of its own, as the convolution is
//! ([`crate::conv`]). [`train`] routes: f32 on burn-flex takes ours; everything else (CUDA, the
//! CubeCL stand-in, half precision) burn's `batch_norm_train`.

pub mod cpu;

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
    let stats: Tensor<2> = Tensor::from_dispatch(<Dispatch as CpuBatchNorm>::cpu_bn_stats(
        x.clone().into_dispatch(),
    ));
    let out = Tensor::from_dispatch(<Dispatch as CpuBatchNorm>::cpu_bn_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
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

/// The sizes of an `[N, C, H, W]` flex tensor.
fn shape(x: &FlexTensor) -> Shape {
    let [n, c, h, w] = x.shape().dims();
    Shape { n, c, hw: h * w }
}

/// Our batch norm as a burn backend extension, for burn-flex and for autodiff over it (with
/// `BatchNormBackward`). The statistics (`[2, C]`: mean, biased variance) are computed once
/// and handed to the output and to the backward pass; γ's and β's gradients once, and handed
/// to the input's.
#[backend_extension(Flex, Autodiff)]
pub trait CpuBatchNorm: Backend {
    /// Per channel of `x` (N×C×H×W), the mean (row 0) and biased variance (row 1): `[2, C]`.
    fn cpu_bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x` normalized with its batch statistics `stats` ([`CpuBatchNorm::cpu_bn_stats`]),
    /// scaled by `gamma` and shifted by `beta`, then through `norm.activation`.
    /// Differentiated as batch norm in training: the statistics' dependence on `x` is in the
    /// backward pass.
    fn cpu_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;

    /// The gradients of `gamma` (row 0) and `beta` (row 1) from the output's gradient:
    /// `[2, C]`.
    fn cpu_bn_param_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;

    /// The gradient of `x` from the output's gradient `grad` and the parameters' gradients
    /// `params` ([`CpuBatchNorm::cpu_bn_param_backward`]).
    fn cpu_bn_x_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        params: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self>;
}

/// The `[2, C]` rows of a flex tensor (statistics, or γ's and β's gradients).
fn rows(t: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
    let v = values(t);
    let c = v.len() / 2;
    (v[..c].to_vec(), v[c..].to_vec())
}

impl CpuBatchNorm for Flex {
    fn cpu_bn_stats(x: FlexTensor) -> FlexTensor {
        let s = shape(&x);
        let (mean, var) = cpu::statistics(s, &values(&x));
        tensor([mean, var].concat(), [2, s.c])
    }

    fn cpu_bn_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let s = shape(&x);
        let dims = x.shape().dims::<4>();
        let (mean, var) = rows(&stats);
        let y = cpu::normalize(
            s,
            &values(&x),
            (&mean, &var),
            (&values(&gamma), &values(&beta)),
            norm.epsilon,
            norm.activation,
        );
        tensor(y, dims)
    }

    fn cpu_bn_param_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        grad: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let s = shape(&x);
        let (mean, var) = rows(&stats);
        let (gamma, beta) = (values(&gamma), values(&beta));
        let (dgamma, dbeta) = cpu::parameter_grads(
            s,
            &values(&x),
            &values(&grad),
            (&mean, &var),
            (&gamma, &beta),
            norm.epsilon,
            norm.activation,
        );
        tensor([dgamma, dbeta].concat(), [2, s.c])
    }

    fn cpu_bn_x_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        params: FlexTensor,
        grad: FlexTensor,
        norm: Norm,
    ) -> FlexTensor {
        let s = shape(&x);
        let dims = x.shape().dims::<4>();
        let (mean, var) = rows(&stats);
        let (dgamma, dbeta) = rows(&params);
        let dx = cpu::input_grad(
            s,
            (&values(&x), &values(&grad)),
            (&mean, &var),
            (&values(&gamma), &values(&beta)),
            (&dgamma, &dbeta),
            norm.epsilon,
            norm.activation,
        );
        tensor(dx, dims)
    }
}

/// The backward pass of [`CpuBatchNorm::cpu_bn_train`] under autodiff: the whole of batch
/// norm's training gradient (the batch statistics' dependence on `x` included).
#[derive(Debug)]
struct BatchNormBackward;

impl<B: CpuBatchNorm> Backward<B, 3> for BatchNormBackward {
    /// The checkpointed input, γ and β, the batch statistics, and ε and the fused activation.
    type State = ([NodeId; 3], B::FloatTensorPrimitive, Norm);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (states, stats, norm) = ops.state;
        let [x, gamma, beta] =
            states.map(|s| checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(s));
        // The input's gradient needs γ's and β's: computed once for all three.
        let params = B::cpu_bn_param_backward(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            stats.clone(),
            grad.clone(),
            norm,
        );
        let c = params.shape().dims::<2>()[1];
        let row = |r: usize| {
            B::float_reshape(
                B::float_slice(
                    params.clone(),
                    &[
                        burn::tensor::Slice::from(r..r + 1),
                        burn::tensor::Slice::from(0..c),
                    ],
                ),
                [c].into(),
            )
        };
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, row(0));
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, row(1));
        }
        if let Some(node) = node_x {
            let dx = B::cpu_bn_x_backward(x, gamma, beta, stats, params, grad, norm);
            grads.register::<B>(node.id, dx);
        }
    }
}

impl<B: CpuBatchNorm, C: CheckpointStrategy> CpuBatchNorm for Autodiff<B, C> {
    fn cpu_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: Norm,
    ) -> FloatTensor<Self> {
        let stats = Self::inner(stats);
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let states = [
                    prep.checkpoint(&x),
                    prep.checkpoint(&gamma),
                    prep.checkpoint(&beta),
                ];
                prep.finish(
                    (states, stats.clone(), norm),
                    B::cpu_bn_train(
                        x.into_primitive(),
                        gamma.into_primitive(),
                        beta.into_primitive(),
                        stats,
                        norm,
                    ),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cpu_bn_train(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                norm,
            )),
        }
    }

    // Statistics are not differentiated (the backward pass accounts for them), nor are the
    // gradients themselves (no second order).
    crate::autodiff::on_inner! {
        fn cpu_bn_stats(x);
        fn cpu_bn_param_backward(x, gamma, beta, stats, grad; norm: Norm);
        fn cpu_bn_x_backward(x, gamma, beta, stats, params, grad; norm: Norm);
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
