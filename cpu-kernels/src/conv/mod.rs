//! The network's one convolution function: on the CPU backend (burn-flex, f32) our own
//! convolution ([`cpu`]: im2col and matrix products, with its own input and weight gradients),
//! plugged into burn through its backend-extension mechanism with a backward pass of its own;
//! everywhere else (CUDA, the CubeCL CPU stand-in, half precision, dilation) burn's `conv2d`.
//! Grouped convolutions (ResNeXt's 3×3) take our path too.
//!
//! Why: burn-flex 0.22 has no convolution backward. burn's defaults compute the input gradient
//! as a transposed convolution and the weight gradient as a convolution over swapped
//! dimensions, and flex's forward zero-fills its im2col buffers on every call; a training step
//! on the CPU spent most of its time there (docs/benchmarks.md, "The CPU step against PyTorch").

pub mod cpu;
mod geometry;
mod im2col;

pub(crate) use geometry::inside;

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
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use crate::slices::{is_flex, tensor, values};
use cpu::Geometry;

/// `conv2d(x, weight, bias, options)` as burn computes it, on our CPU convolution where it
/// applies (`ours_applies`).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let Some(shape) = ours_applies(&x, &weight, &options) else {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    };
    let y = Tensor::from_dispatch(<Dispatch as CpuConv>::cpu_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        shape,
    ));
    match bias {
        Some(b) => {
            let o = b.dims()[0];
            y + b.reshape([1, o, 1, 1])
        }
        None => y,
    }
}

/// What our backend extension is told of a convolution beyond its tensors: stride, padding
/// (each side) and groups.
pub type Shape = ([usize; 2], [usize; 2], usize);

/// The stride, padding and groups of a convolution our CPU path computes: f32 on burn-flex
/// (with or without autodiff), dilation 1, symmetric padding, a kernel that fits.
fn ours_applies(x: &Tensor<4>, weight: &Tensor<4>, options: &ConvOptions<2>) -> Option<Shape> {
    let flex = is_flex(&x.device());
    let padding = options.padding.map(|(begin, _)| begin);
    let symmetric = options.padding.iter().all(|(begin, end)| begin == end);
    let plain = options.dilation == [1, 1] && symmetric;
    let f32 = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let [n, c, h, w] = x.dims();
    let [o, wc, kh, kw] = weight.dims();
    let g = Geometry {
        n,
        c,
        h,
        w,
        o,
        k: [kh, kw],
        stride: options.stride,
        padding,
        groups: options.groups,
    };
    let fits = wc * options.groups == c && g.is_valid();
    (flex && plain && f32 && fits).then_some((options.stride, padding, options.groups))
}

/// The geometry of `x` convolved with `weight`.
fn geometry(x: &FlexTensor, weight: &FlexTensor, (stride, padding, groups): Shape) -> Geometry {
    let [n, c, h, w] = x.shape().dims();
    let [o, _, kh, kw] = weight.shape().dims();
    Geometry {
        n,
        c,
        h,
        w,
        o,
        k: [kh, kw],
        stride,
        padding,
        groups,
    }
}

/// Our CPU convolution as a burn backend extension: forward and both gradients, for burn-flex,
/// and for autodiff over it (with `ConvBackward`).
#[backend_extension(Flex, Autodiff)]
pub trait CpuConv: Backend {
    /// The convolution of `x` (N×C×H×W) with `weight` (O×C×kh×kw).
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shape: Shape,
    ) -> FloatTensor<Self>;

    /// The gradient of `x` or of `weight` (`wrt`) from the output's gradient `grad`.
    fn cpu_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shape: Shape,
        wrt: Wrt,
    ) -> FloatTensor<Self>;
}

/// Which gradient [`CpuConv::cpu_conv2d_backward`] computes (each only where autodiff asks
/// for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrt {
    /// The input's.
    Input,
    /// The weight's.
    Weight,
}

impl CpuConv for Flex {
    fn cpu_conv2d(x: FlexTensor, weight: FlexTensor, shape: Shape) -> FlexTensor {
        let g = geometry(&x, &weight, shape);
        let y = cpu::forward(&g, &values(&x), &values(&weight), None);
        let [oh, ow] = g.out();
        tensor(y, [g.n, g.o, oh, ow])
    }

    fn cpu_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        shape: Shape,
        wrt: Wrt,
    ) -> FlexTensor {
        let g = geometry(&x, &weight, shape);
        match wrt {
            Wrt::Input => {
                let dx = cpu::input_grad(&g, &values(&weight), &values(&grad));
                tensor(dx, [g.n, g.c, g.h, g.w])
            }
            Wrt::Weight => {
                let dw = cpu::weight_grad(&g, &values(&x), &values(&grad));
                tensor(dw, [g.o, g.c / g.groups, g.k[0], g.k[1]])
            }
        }
    }
}

/// The backward pass of [`CpuConv::cpu_conv2d`] under autodiff.
#[derive(Debug)]
struct ConvBackward;

impl<B: CpuConv> Backward<B, 2> for ConvBackward {
    /// The checkpointed input and weight, and the convolution's [`Shape`].
    type State = (NodeId, NodeId, Shape);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, shape) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_x {
            let dx =
                B::cpu_conv2d_backward(x.clone(), weight.clone(), grad.clone(), shape, Wrt::Input);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            let dw = B::cpu_conv2d_backward(x, weight, grad, shape, Wrt::Weight);
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: CpuConv, C: CheckpointStrategy> CpuConv for Autodiff<B, C> {
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shape: Shape,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, shape),
                    B::cpu_conv2d(x.into_primitive(), weight.into_primitive(), shape),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cpu_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                shape,
            )),
        }
    }

    // The gradients themselves are not differentiated again (no second order).
    crate::autodiff::on_inner! {
        fn cpu_conv2d_backward(x, weight, grad; shape: Shape, wrt: Wrt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, relative};
    use burn::tensor::Device;

    /// Ours against burn's: the output, and the gradients of x, the weight and the bias of
    /// `<r, conv(x)>` for a random `r`.
    fn check(shape: [usize; 4], o: usize, k: usize, stride: usize, padding: usize, bias: bool) {
        check_grouped(shape, o, [k, stride, padding, 1], bias);
    }

    /// [`check`] of a convolution in `groups` groups.
    fn check_grouped(
        shape: [usize; 4],
        o: usize,
        [k, stride, padding, groups]: [usize; 4],
        bias: bool,
    ) {
        let device = Device::flex().autodiff();
        let x = random(shape, 1, &device);
        let w = random([o, shape[1] / groups, k, k], 2, &device);
        let b = bias.then(|| random([o], 3, &device));
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], groups);
        assert!(ours_applies(&x, &w, &options).is_some(), "not our path");
        let run = |ours: bool| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let b = b.clone().map(Tensor::require_grad);
            let y = if ours {
                conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            };
            let r = random(y.dims(), 4, &device);
            let grads = (y.clone() * r).sum().backward();
            let gx = x.grad(&grads).expect("x grad");
            let gw = w.grad(&grads).expect("w grad");
            let gb = b.map(|b| b.grad(&grads).expect("b grad"));
            (y.detach(), gx, gw, gb)
        };
        let ours = run(true);
        let theirs = run(false);
        let name =
            format!("{shape:?} -> {o}, k {k}, stride {stride}, padding {padding}, groups {groups}");
        let y = relative(ours.0, theirs.0);
        let gx = relative(ours.1, theirs.1);
        let gw = relative(ours.2, theirs.2);
        assert!(y < 1e-5, "{name}: output differs by {y:e}");
        assert!(gx < 1e-5, "{name}: input gradient differs by {gx:e}");
        assert!(gw < 1e-5, "{name}: weight gradient differs by {gw:e}");
        if let (Some(a), Some(b)) = (ours.3, theirs.3) {
            let gb = relative(a, b);
            assert!(gb < 1e-5, "{name}: bias gradient differs by {gb:e}");
        }
    }

    #[test]
    fn forward_and_gradients_equal_burns_convolution() {
        // The ResNets' shapes and their odd cousins: strides 1 and 2, padding 0/1/3, kernels
        // 1/3/7, one image and 64, 3 to 2048 channels, odd sides.
        check([2, 3, 17, 15], 8, 7, 2, 3, false);
        check([1, 16, 9, 9], 16, 3, 1, 1, true);
        check([64, 8, 7, 5], 8, 3, 1, 1, false);
        check([3, 12, 11, 11], 6, 3, 2, 1, false);
        check([2, 32, 6, 6], 16, 1, 1, 0, false);
        check([2, 16, 9, 7], 24, 1, 2, 0, false);
        check([1, 2048, 3, 3], 64, 1, 1, 0, false);
        check([2, 64, 3, 3], 2048, 1, 1, 0, false);
        check([1, 4, 5, 5], 3, 3, 1, 0, true);
        check([4, 16, 8, 8], 32, 3, 2, 1, false);
        check([4, 16, 8, 8], 32, 1, 2, 0, false);
        check([4, 3, 16, 16], 8, 3, 1, 1, false);
        check([4, 32, 4, 4], 32, 3, 1, 1, false);
        check([4, 64, 2, 2], 64, 3, 1, 1, false);
        check([4, 32, 4, 4], 64, 3, 2, 1, false);
        check([4, 32, 4, 4], 64, 1, 2, 0, false);
    }

    #[test]
    fn grouped_forward_and_gradients_equal_burns_convolution() {
        // ResNeXt's 3×3 (32 groups, stride 1 and 2; its last stage's 7×7), depthwise, a bias.
        check_grouped([2, 64, 8, 8], 64, [3, 1, 1, 32], false);
        check_grouped([3, 128, 9, 9], 128, [3, 2, 1, 32], false);
        check_grouped([4, 256, 7, 7], 256, [3, 1, 1, 32], false);
        check_grouped([2, 16, 6, 5], 16, [3, 1, 1, 16], true);
        check_grouped([2, 24, 11, 9], 24, [5, 2, 2, 24], false);
        check_grouped([2, 12, 5, 5], 6, [1, 1, 0, 3], false);
    }

    #[test]
    fn grouped_convolutions_are_ours_and_others_stay_burns() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &device);
        let w = Tensor::<4>::zeros([4, 2, 3, 3], &device);
        let grouped = ConvOptions::new([1, 1], [1, 1], [1, 1], 2);
        assert_eq!(ours_applies(&x, &w, &grouped), Some(([1, 1], [1, 1], 2)));
        let three = ConvOptions::new([1, 1], [1, 1], [1, 1], 3);
        assert!(
            ours_applies(&x, &w, &three).is_none(),
            "4 channels in 3 groups"
        );
        let dilated = ConvOptions::new([1, 1], [1, 1], [2, 2], 1);
        let w4 = Tensor::<4>::zeros([4, 4, 3, 3], &device);
        assert!(ours_applies(&x, &w4, &dilated).is_none());
        let plain = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        assert_eq!(ours_applies(&x, &w4, &plain), Some(([2, 2], [1, 1], 1)));
        let half = x.clone().cast(burn::tensor::FloatDType::BF16);
        assert!(ours_applies(&half, &w4.cast(burn::tensor::FloatDType::BF16), &plain).is_none());
    }
}
