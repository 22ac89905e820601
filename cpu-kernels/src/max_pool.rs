//! The ResNet stem's max pooling: on the CPU backend (burn-flex, f32) our own, plugged in
//! through burn's backend-extension mechanism with a backward pass of its own, as the
//! convolution is ([`crate::conv`]); everywhere else burn's `max_pool2d`.
//!
//! Why: burn-flex pools through its 3-D implementation with indices, one output at a time on
//! one thread: 35 ms of ResNet-50's 1.46 s step at batch 8 (2.4 %), where a pass over the 6.4 M
//! values the pool reads takes a few.
//!
//! PyTorch's semantics, which timm's ResNet trains with: padding never wins (the window is
//! clipped to the image), a NaN in the window is the output, and the gradient goes to the
//! window's first maximum in row-major order (to its last NaN where there is one).

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
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::conv::inside;
use crate::simd;
use crate::slices::{filled, is_flex, tensor, values, zeroed};

/// A pooling window's size, stride and (symmetric) zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub k: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding on each side (at most half the kernel, as PyTorch requires).
    pub padding: [usize; 2],
}

impl Window {
    /// The output height and width over an `h×w` plane (floor mode).
    fn out(&self, [h, w]: [usize; 2]) -> [usize; 2] {
        let side = |x: usize, i: usize| (x + 2 * self.padding[i] - self.k[i]) / self.stride[i] + 1;
        [side(h, 0), side(w, 1)]
    }

    /// The input rows (or columns, `axis` 1) under output row `o`'s window, clipped to `0..len`.
    #[inline(always)]
    fn span(&self, axis: usize, o: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride[axis]).saturating_sub(self.padding[axis]);
        let end = (o * self.stride[axis] + self.k[axis])
            .saturating_sub(self.padding[axis])
            .min(len);
        start..end
    }
}

/// `pool.forward(x)`, on our CPU pooling where it applies: f32 on burn-flex, dilation 1, floor
/// mode, explicit symmetric padding of at most half the kernel.
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let Some(window) = ours_applies(pool, &x) else {
        return pool.forward(x);
    };
    Tensor::from_dispatch(<Dispatch as CpuMaxPool>::cpu_max_pool2d(
        x.into_dispatch(),
        window,
    ))
}

/// The window of `pool` where our path computes it.
fn ours_applies(pool: &MaxPool2d, x: &Tensor<4>) -> Option<Window> {
    let PaddingConfig2d::Explicit(top, left, bottom, right) = pool.padding else {
        return None;
    };
    let window = Window {
        k: pool.kernel_size,
        stride: pool.stride,
        padding: [top, left],
    };
    let [_, _, h, w] = x.dims();
    let fits = (0..2)
        .all(|i| window.k[i] > 0 && window.stride[i] > 0 && 2 * window.padding[i] <= window.k[i])
        && h + 2 * top >= window.k[0]
        && w + 2 * left >= window.k[1];
    let plain = pool.dilation == [1, 1] && !pool.ceil_mode && top == bottom && left == right;
    (is_flex(&x.device()) && x.dtype() == DType::F32 && plain && fits).then_some(window)
}

/// Whether `v` takes over from the window's best so far (PyTorch's test: larger, or NaN).
#[inline(always)]
fn wins(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// A plane with each row split into its `s` phases (columns `r, r + s, r + 2s, ...` for
/// `r < s`, each `ceil(w / s)` long): a window tap's pixels across an output row are then one
/// contiguous run, which vectorizes, where strided reads did not.
struct Phases<'a> {
    rows: &'a [f32],
    stride: usize,
    len: usize,
}

impl<'a> Phases<'a> {
    /// `plane` (`h×w`) split by `stride` into `scratch` (`plane` itself at stride 1).
    #[inline(always)]
    fn split(plane: &'a [f32], w: usize, stride: usize, scratch: &'a mut Vec<f32>) -> Self {
        if stride == 1 {
            return Phases {
                rows: plane,
                stride,
                len: w,
            };
        }
        let len = w.div_ceil(stride);
        scratch.resize(plane.len() / w * stride * len, 0.0);
        for (line, out) in plane
            .chunks_exact(w)
            .zip(scratch.chunks_exact_mut(stride * len))
        {
            if stride == 2 {
                // Pairs, which the compiler turns into vector shuffles.
                let (even, odd) = out.split_at_mut(len);
                for ((e, o), pair) in even
                    .iter_mut()
                    .zip(odd.iter_mut())
                    .zip(line.chunks_exact(2))
                {
                    (*e, *o) = (pair[0], pair[1]);
                }
                if w % 2 == 1 {
                    even[len - 1] = line[w - 1];
                }
                continue;
            }
            for (r, phase) in out.chunks_exact_mut(len).enumerate() {
                for (o, &v) in phase.iter_mut().zip(line[r..].iter().step_by(stride)) {
                    *o = v;
                }
            }
        }
        Phases {
            rows: scratch,
            stride,
            len,
        }
    }

    /// Input row `iy`'s pixels under kernel column `j` (padding `p`) for the output columns
    /// `xs` (inside the row), and the column of the first.
    #[inline(always)]
    fn tap(&self, iy: usize, j: usize, p: usize, xs: &std::ops::Range<usize>) -> (&[f32], usize) {
        let first = xs.start * self.stride + j - p;
        let (r, q) = (first % self.stride, first / self.stride);
        let at = (iy * self.stride + r) * self.len + q;
        (&self.rows[at..at + xs.len()], first)
    }
}

/// `best[i] = v[i]` where `v[i]` [`wins`].
#[inline(always)]
fn select_max(best: &mut [f32], v: &[f32]) {
    for (b, &v) in best.iter_mut().zip(v) {
        *b = if wins(v, *b) { v } else { *b };
    }
}

/// The maximum along each input row of a plane, for every output column: `hmax[iy·OW + ox]`
/// over the window's columns.
#[inline(always)]
fn horizontal(phases: &Phases<'_>, [h, w]: [usize; 2], window: Window, hmax: &mut [f32]) {
    let ow = hmax.len() / h;
    hmax.fill(f32::NEG_INFINITY);
    for (iy, out) in hmax.chunks_exact_mut(ow).enumerate() {
        for j in 0..window.k[1] {
            let xs = inside(ow, w, window.stride[1], j, window.padding[1]);
            if !xs.is_empty() {
                let (v, _) = phases.tap(iy, j, window.padding[1], &xs);
                select_max(&mut out[xs], v);
            }
        }
    }
}

/// Output row `oy`'s maxima (`best`) from the rows' maxima `hmax` ([`horizontal`]).
#[inline(always)]
fn vertical(hmax: &[f32], h: usize, window: Window, oy: usize, best: &mut [f32]) {
    let ow = best.len();
    best.fill(f32::NEG_INFINITY);
    for iy in window.span(0, oy, h) {
        select_max(best, &hmax[iy * ow..(iy + 1) * ow]);
    }
}

/// The plane offset of each window's maximum `best` in output row `oy`: PyTorch's pick, the
/// window's first pixel in row-major order equal to it (its last NaN where it is NaN). Kernel
/// tap by kernel tap across the row (independent selects, vectorized), not window by window.
#[inline(always)]
fn argmax(
    phases: &Phases<'_>,
    [h, w]: [usize; 2],
    window: Window,
    oy: usize,
    best: &[f32],
    at: &mut [u32],
) {
    const NONE: u32 = u32::MAX;
    let (ow, s) = (best.len(), window.stride[1]);
    at.fill(NONE);
    for iy in window.span(0, oy, h) {
        for j in 0..window.k[1] {
            let xs = inside(ow, w, s, j, window.padding[1]);
            if xs.is_empty() {
                continue;
            }
            let (v, first) = phases.tap(iy, j, window.padding[1], &xs);
            let pixel = (iy * w + first) as u32;
            for (k, ((a, &b), &v)) in at[xs.clone()].iter_mut().zip(&best[xs]).zip(v).enumerate() {
                let take = (*a == NONE && v == b) || (b.is_nan() && v.is_nan());
                *a = if take { pixel + (k * s) as u32 } else { *a };
            }
        }
    }
}

/// One plane's output rows (`out`), with scratch for the phases and the rows' maxima.
#[inline(always)]
fn forward_plane(
    plane: &[f32],
    [h, w]: [usize; 2],
    window: Window,
    out: &mut [std::mem::MaybeUninit<f32>],
    (split, hmax, best): &mut (Vec<f32>, Vec<f32>, Vec<f32>),
) {
    let [_, ow] = window.out([h, w]);
    let phases = Phases::split(plane, w, window.stride[1], split);
    hmax.resize(h * ow, 0.0);
    best.resize(ow, 0.0);
    horizontal(&phases, [h, w], window, hmax);
    for (oy, out) in out.chunks_exact_mut(ow).enumerate() {
        vertical(hmax, h, window, oy, best);
        for (o, &b) in out.iter_mut().zip(best.iter()) {
            o.write(b);
        }
    }
}

/// One plane's gradient `dx` from its output's `dy`, with scratch as [`forward_plane`]'s and
/// the rows' picks.
#[inline(always)]
fn backward_plane(
    plane: &[f32],
    [h, w]: [usize; 2],
    window: Window,
    (dy, dx): (&[f32], &mut [f32]),
    (split, hmax, best, at): &mut (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>),
) {
    let [_, ow] = window.out([h, w]);
    let phases = Phases::split(plane, w, window.stride[1], split);
    hmax.resize(h * ow, 0.0);
    best.resize(ow, 0.0);
    at.resize(ow, 0);
    horizontal(&phases, [h, w], window, hmax);
    for (oy, dy) in dy.chunks_exact(ow).enumerate() {
        vertical(hmax, h, window, oy, best);
        argmax(&phases, [h, w], window, oy, best, at);
        for (&a, &d) in at.iter().zip(dy) {
            dx[a as usize] += d;
        }
    }
}

/// The maximum of each window of `x` (planes of `h×w`, one after another).
pub fn forward(x: &[f32], [h, w]: [usize; 2], window: Window) -> Vec<f32> {
    let [oh, ow] = window.out([h, w]);
    let planes = x.len() / (h * w);
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(Default::default, |scratch, (out, plane)| {
                simd::run(
                    #[inline(always)]
                    || forward_plane(plane, [h, w], window, out, scratch),
                )
            });
    };
    // SAFETY: every output position of every plane is written once above.
    unsafe { filled(planes * oh * ow, fill) }
}

/// The gradient of `x` from the output's gradient `dy`: each window's `dy` added at its
/// maximum (found again in `x`, as the forward found it).
pub fn backward(x: &[f32], [h, w]: [usize; 2], dy: &[f32], window: Window) -> Vec<f32> {
    let [oh, ow] = window.out([h, w]);
    let fill = |dx: &mut [std::mem::MaybeUninit<f32>]| {
        let dx = zeroed(dx);
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
            .for_each_init(Default::default, |scratch, (dx, (plane, dy))| {
                simd::run(
                    #[inline(always)]
                    || backward_plane(plane, [h, w], window, (dy, dx), scratch),
                )
            });
    };
    // SAFETY: `zeroed` writes every value before the sums.
    unsafe { filled(x.len(), fill) }
}

/// Our CPU max pooling as a burn backend extension, for burn-flex and for autodiff over it
/// (with its own backward pass, `MaxPoolBackward`).
#[backend_extension(Flex, Autodiff)]
pub trait CpuMaxPool: Backend {
    /// The maximum of each window of `x` (N×C×H×W).
    fn cpu_max_pool2d(x: FloatTensor<Self>, window: Window) -> FloatTensor<Self>;

    /// The gradient of `x` from the output's gradient `grad`.
    fn cpu_max_pool2d_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        window: Window,
    ) -> FloatTensor<Self>;
}

impl CpuMaxPool for Flex {
    fn cpu_max_pool2d(x: FlexTensor, window: Window) -> FlexTensor {
        let [n, c, h, w] = x.shape().dims();
        let [oh, ow] = window.out([h, w]);
        tensor(forward(&values(&x), [h, w], window), [n, c, oh, ow])
    }

    fn cpu_max_pool2d_backward(x: FlexTensor, grad: FlexTensor, window: Window) -> FlexTensor {
        let dims = x.shape().dims::<4>();
        let dx = backward(&values(&x), [dims[2], dims[3]], &values(&grad), window);
        tensor(dx, dims)
    }
}

/// The backward pass of [`CpuMaxPool::cpu_max_pool2d`] under autodiff.
#[derive(Debug)]
struct MaxPoolBackward;

impl<B: CpuMaxPool> Backward<B, 1> for MaxPoolBackward {
    /// The checkpointed input and the window.
    type State = (NodeId, Window);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, window) = ops.state;
        if let Some(node) = node_x {
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            grads.register::<B>(node.id, B::cpu_max_pool2d_backward(x, grad, window));
        }
    }
}

impl<B: CpuMaxPool, C: CheckpointStrategy> CpuMaxPool for Autodiff<B, C> {
    fn cpu_max_pool2d(x: FloatTensor<Self>, window: Window) -> FloatTensor<Self> {
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                prep.finish(
                    (x_state, window),
                    B::cpu_max_pool2d(x.into_primitive(), window),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cpu_max_pool2d(x.into_primitive(), window)),
        }
    }

    // Not differentiated again (no second order).
    crate::autodiff::on_inner! {
        fn cpu_max_pool2d_backward(x, grad; window: Window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, relative};
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, TensorData};

    fn pool(k: usize, stride: usize, padding: usize) -> MaxPool2d {
        MaxPool2dConfig::new([k, k])
            .with_strides([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .init()
    }

    /// Ours against burn's: the output and the gradient of `<r, pool(x)>` for a random `r`.
    fn check(shape: [usize; 4], k: usize, stride: usize, padding: usize) {
        let device = Device::flex().autodiff();
        let pool = pool(k, stride, padding);
        let x = random(shape, 1, &device);
        assert!(ours_applies(&pool, &x).is_some(), "not our path");
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours {
                max_pool2d(&pool, x.clone())
            } else {
                pool.forward(x.clone())
            };
            let r = random(y.dims(), 2, &device);
            let grads = (y.clone() * r).sum().backward();
            (y.detach(), x.grad(&grads).expect("x grad"))
        };
        let (ours, theirs) = (run(true), run(false));
        let name = format!("{shape:?}, k {k}, stride {stride}, padding {padding}");
        assert_eq!(ours.0.dims(), theirs.0.dims(), "{name}: shape");
        assert_eq!(relative(ours.0, theirs.0), 0.0, "{name}: output");
        assert_eq!(relative(ours.1, theirs.1), 0.0, "{name}: gradient");
    }

    #[test]
    fn output_and_gradient_equal_burns_max_pool() {
        // The ResNet stem's pool, and odd sides, other windows, no padding.
        check([2, 3, 16, 16], 3, 2, 1);
        check([1, 4, 15, 17], 3, 2, 1);
        check([2, 2, 9, 9], 2, 2, 0);
        check([1, 3, 7, 5], 3, 1, 1);
        check([1, 2, 3, 3], 3, 3, 0);
        check([1, 2, 1, 1], 5, 1, 2);
        check([1, 2, 2, 3], 5, 2, 2);
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum_and_nan_wins() {
        let window = Window {
            k: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        };
        // One 4×4 plane; outputs are 2×2. Window (0,0) covers rows 0..2, cols 0..2: all 5s.
        let x = [
            5.0,
            5.0,
            1.0,
            0.0, //
            5.0,
            5.0,
            2.0,
            0.0, //
            0.0,
            0.0,
            3.0,
            f32::NAN, //
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let y = forward(&x, [4, 4], window);
        assert_eq!(y[0], 5.0);
        assert_eq!(y[1], 5.0, "window (0,1) covers cols 1..4 of rows 0..2");
        assert_eq!(y[2], 5.0);
        assert!(y[3].is_nan(), "a NaN in the window is the output");
        let dx = backward(&x, [4, 4], &[1.0, 10.0, 100.0, 1000.0], window);
        // The first maximum in row-major order: pixel (0,0) for window (0,0), (0,1) for window
        // (0,1) (columns 1..4), (1,0) for window (1,0) (rows 1..4).
        assert_eq!(dx[0], 1.0);
        assert_eq!(dx[1], 10.0);
        assert_eq!(dx[4], 100.0);
        assert_eq!(dx[11], 1000.0, "the NaN takes the gradient");
        assert_eq!(dx.iter().filter(|v| **v != 0.0).count(), 4);
    }

    #[test]
    fn other_pools_stay_burns() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![0f32; 16], [1, 1, 4, 4]), &device);
        let ceil = MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init();
        assert!(ours_applies(&ceil, &x).is_none());
        let wide = pool(2, 1, 2);
        assert!(
            ours_applies(&wide, &x).is_none(),
            "padding over half the kernel"
        );
        assert!(ours_applies(&pool(3, 2, 1), &x).is_some());
    }
}
