//! An activation on its own (not after batch norm): ViT's GELU, a squeeze-excite's SiLU. On the
//! CPU backend (burn-flex, f32) one vectorized pass forward and one backward, plugged in through
//! burn's backend-extension mechanism as the convolution is ([`crate::conv`]); everywhere else
//! burn's own activation ([`burns`]).
//!
//! Why: burn-flex computes GELU with libm's scalar `erff` per value, and its backward with a
//! scalar `erff` and `expf` more: 10 % of a ViT-S training step (perf). The activations'
//! arithmetic is [`crate::activation`]'s.

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

use crate::activation::{Activation, Pointwise, burns, per_activation};
use crate::slices::{is_flex, map, tensor, values, zip_map};

/// `activation(x)`, ours on the CPU where it applies (f32 on burn-flex), burn's elsewhere.
pub fn apply<const D: usize>(x: Tensor<D>, activation: Activation) -> Tensor<D> {
    let ours = is_flex(&x.device()) && x.dtype() == DType::F32;
    if !ours || activation == Activation::Identity {
        return burns(x, activation);
    }
    Tensor::from_dispatch(<Dispatch as CpuPointwise>::cpu_pointwise(
        x.into_dispatch(),
        activation,
    ))
}

/// `activation(x)` element by element.
pub fn forward(x: &[f32], activation: Activation) -> Vec<f32> {
    per_activation!(activation, forward_as(x))
}

#[inline(always)]
fn forward_as<A: Pointwise>(x: &[f32]) -> Vec<f32> {
    map(x, A::forward)
}

/// The gradient reaching `x` when `dy` reaches `activation(x)`, element by element.
pub fn backward(x: &[f32], dy: &[f32], activation: Activation) -> Vec<f32> {
    per_activation!(activation, backward_as(x, dy))
}

#[inline(always)]
fn backward_as<A: Pointwise>(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, A::backward)
}

/// An activation on its own as a burn backend extension, for burn-flex and for autodiff over it
/// (with its own backward pass, `PointwiseBackward`).
#[backend_extension(Flex, Autodiff)]
pub trait CpuPointwise: Backend {
    /// `activation(x)`, any shape.
    fn cpu_pointwise(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self>;

    /// The gradient of `x` from the output's gradient `grad`.
    fn cpu_pointwise_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;
}

impl CpuPointwise for Flex {
    fn cpu_pointwise(x: FlexTensor, activation: Activation) -> FlexTensor {
        tensor(forward(&values(&x), activation), x.shape())
    }

    fn cpu_pointwise_backward(
        x: FlexTensor,
        grad: FlexTensor,
        activation: Activation,
    ) -> FlexTensor {
        tensor(backward(&values(&x), &values(&grad), activation), x.shape())
    }
}

/// The backward pass of [`CpuPointwise::cpu_pointwise`] under autodiff.
#[derive(Debug)]
struct PointwiseBackward;

impl<B: CpuPointwise> Backward<B, 1> for PointwiseBackward {
    /// The input (what the activation's derivative is taken at), and which activation.
    type State = (B::FloatTensorPrimitive, Activation);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let (x, activation) = ops.state;
            grads.register::<B>(node.id, B::cpu_pointwise_backward(x, grad, activation));
        }
    }
}

impl<B: CpuPointwise, C: CheckpointStrategy> CpuPointwise for Autodiff<B, C> {
    fn cpu_pointwise(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self> {
        match PointwiseBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let y = B::cpu_pointwise(x.clone(), activation);
                prep.finish((x, activation), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cpu_pointwise(x.into_primitive(), activation))
            }
        }
    }

    // The gradient itself is not differentiated again (no second order).
    crate::autodiff::on_inner! {
        fn cpu_pointwise_backward(x, grad; activation: Activation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, relative};
    use burn::tensor::Device;

    #[test]
    fn output_and_gradient_equal_burns_activation() {
        let device = Device::flex().autodiff();
        for activation in [Activation::Gelu, Activation::Silu, Activation::Relu] {
            // A ViT MLP's pre-activations, a squeeze-excite's, and odd shapes.
            for shape in [[2, 197, 96], [3, 5, 7], [1, 1, 40_000]] {
                let x = random(shape, 1, &device).mul_scalar(4.0);
                let r = random(shape, 2, &device);
                let run = |ours: bool| {
                    let x = x.clone().require_grad();
                    let y = if ours {
                        apply(x.clone(), activation)
                    } else {
                        burns(x.clone(), activation)
                    };
                    let grads = (y.clone() * r.clone()).sum().backward();
                    (y.detach(), x.grad(&grads).expect("x grad"))
                };
                let (ours, theirs) = (run(true), run(false));
                let e = relative(ours.0, theirs.0);
                assert!(e < 1e-6, "{activation:?} {shape:?}: output {e:e}");
                let e = relative(ours.1, theirs.1);
                assert!(e < 1e-6, "{activation:?} {shape:?}: gradient {e:e}");
            }
        }
    }

    #[test]
    fn without_autodiff_and_in_half_precision_it_runs_too() {
        let device = Device::flex();
        let x = random([4, 9], 3, &device);
        let ours = apply(x.clone(), Activation::Gelu);
        let theirs = burns(x.clone(), Activation::Gelu);
        assert!(relative(ours, theirs) < 1e-6);
        let half = x.cast(burn::tensor::FloatDType::BF16);
        let y = apply(half, Activation::Gelu);
        assert_eq!(y.dtype(), DType::BF16);
    }
}
