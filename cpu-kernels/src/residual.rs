//! The end of a residual block, `relu(branch + shortcut)`: on the CPU backend (burn-flex, f32)
//! one pass forward and one backward, plugged in through burn's backend-extension mechanism
//! as the convolution is ([`crate::conv`]); everywhere else burn's add and ReLU.
//!
//! Why: as two of burn's operations the join read and wrote ResNet-50's block outputs twice
//! forward (the add, then the ReLU: 65 ms of a 1.46 s step at batch 8); fused, once. The
//! values are the same bits: the same f32 sum, then flex's ReLU (NaN kept), and its backward
//! masks the gradient with burn's `relu_backward` on the output, as burn's ReLU does.

use crate::slices::{is_flex, tensor, values, zip_map};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor};

/// `relu(branch + shortcut)`, fused on the CPU where it applies: f32 on burn-flex, the same
/// shapes (no broadcast).
pub fn add_relu(branch: Tensor<4>, shortcut: Tensor<4>) -> Tensor<4> {
    let ours = is_flex(&branch.device())
        && branch.dtype() == DType::F32
        && shortcut.dtype() == DType::F32
        && branch.dims() == shortcut.dims();
    if !ours {
        return relu(branch + shortcut);
    }
    Tensor::from_dispatch(<Dispatch as CpuAddRelu>::cpu_add_relu(
        branch.into_dispatch(),
        shortcut.into_dispatch(),
    ))
}

/// `relu(a + b)` element by element, as flex computes the add and then the ReLU.
pub fn forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    zip_map(a, b, |a, b| {
        let v = a + b;
        if v.is_nan() || v > 0.0 { v } else { 0.0 }
    })
}

/// The fused join as a burn backend extension, for burn-flex and for autodiff over it (with
/// its own backward pass, `AddReluBackward`).
#[backend_extension(Flex, Autodiff)]
pub trait CpuAddRelu: Backend {
    /// `relu(a + b)`, `a` and `b` of one shape.
    fn cpu_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl CpuAddRelu for Flex {
    fn cpu_add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let dims = a.shape().dims::<4>();
        tensor(forward(&values(&a), &values(&b)), dims)
    }
}

/// The backward pass of [`CpuAddRelu::cpu_add_relu`] under autodiff: the output's gradient
/// masked where the ReLU passed nothing, to both inputs.
#[derive(Debug)]
struct AddReluBackward;

impl<B: CpuAddRelu> Backward<B, 2> for AddReluBackward {
    /// The output (what the mask is read from, as burn's ReLU reads it).
    type State = B::FloatTensorPrimitive;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let masked = B::relu_backward(ops.state, grad);
        match (node_a, node_b) {
            (Some(a), Some(b)) => {
                grads.register::<B>(a.id, masked.clone());
                grads.register::<B>(b.id, masked);
            }
            (Some(a), None) => grads.register::<B>(a.id, masked),
            (None, Some(b)) => grads.register::<B>(b.id, masked),
            (None, None) => {}
        }
    }
}

impl<B: CpuAddRelu, C: CheckpointStrategy> CpuAddRelu for Autodiff<B, C> {
    fn cpu_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match AddReluBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::cpu_add_relu(a.into_primitive(), b.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cpu_add_relu(a.into_primitive(), b.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, relative};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn output_and_gradients_equal_burns_add_and_relu() {
        let device = Device::flex().autodiff();
        for shape in [[2, 3, 5, 7], [4, 8, 32, 33]] {
            let (a, b) = (random(shape, 1, &device), random(shape, 2, &device));
            let r = random(shape, 3, &device);
            let run = |ours: bool| {
                let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
                let y = if ours {
                    add_relu(a.clone(), b.clone())
                } else {
                    relu(a.clone() + b.clone())
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                let ga = a.grad(&grads).expect("a grad");
                let gb = b.grad(&grads).expect("b grad");
                (y.detach(), ga, gb)
            };
            let (ours, theirs) = (run(true), run(false));
            assert_eq!(relative(ours.0, theirs.0), 0.0, "{shape:?}: output");
            assert_eq!(
                relative(ours.1, theirs.1),
                0.0,
                "{shape:?}: branch gradient"
            );
            assert_eq!(
                relative(ours.2, theirs.2),
                0.0,
                "{shape:?}: shortcut gradient"
            );
        }
    }

    #[test]
    fn nan_passes_and_negative_sums_stop_the_gradient() {
        let device = Device::flex().autodiff();
        let t = |v: [f32; 4]| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 1, 2, 2]), &device)
                .require_grad()
        };
        let (a, b) = (t([1.0, -3.0, f32::NAN, 0.5]), t([1.0, 1.0, 0.0, -0.5]));
        let y = add_relu(a.clone(), b.clone());
        let values: Vec<f32> = y.to_data().try_to_vec::<f32>().expect("f32");
        assert_eq!(values[..2], [2.0, 0.0]);
        assert!(values[2].is_nan());
        assert_eq!(values[3], 0.0);
        let grads = y.sum().backward();
        let ga: Vec<f32> = a
            .grad(&grads)
            .expect("a")
            .to_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(ga, vec![1.0, 0.0, 1.0, 0.0]);
    }
}
