//! What the kernels share to run on burn-flex: whether a
//! tensor is there, its f32 values as a slice, a tensor of values made on the CPU, output
//! buffers that are written without being zero-filled first, and the element-wise map that the
//! pointwise kernels and the residual join are.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::simd;

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Device, TensorData};

/// Whether `device` is burn-flex's (with or without autodiff).
pub fn is_flex(device: &Device) -> bool {
    // Builds with CubeCL backends have more device kinds than this match names.
    #[allow(unreachable_patterns)]
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(&**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// A flex tensor's f32 values in row-major order (copied only where it is not contiguous).
pub(crate) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .map(<[f32]>::to_vec)
                .unwrap_or_default(),
        ),
    }
}

/// A flex tensor of `shape` holding `values`.
pub(crate) fn tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A vector of `len` values, every one of them written by `fill`: no zero-fill first (a memset
/// of every activation and gradient was 2–5 % of a training step).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is `len`, and the caller's `fill` wrote every element.
    unsafe { v.set_len(len) };
    v
}

/// Values per task of [`map`] and [`zip_map`]: large enough that rayon's overhead vanishes,
/// small enough to share a ResNet-18/8 block's 64 × 8 × 32 × 32 values between two threads.
const MAP_CHUNK: usize = 1 << 14;

/// `f(x)` for every value of `x`, in parallel chunks, each chunk's loop compiled inside the
/// SIMD dispatch ([`simd::run`]) so that `f` vectorizes at the width it picks.
#[inline(always)]
pub(crate) fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(MAP_CHUNK)
            .zip(x.par_chunks(MAP_CHUNK))
            .for_each(|(y, x)| {
                simd::run(
                    #[inline(always)]
                    || {
                        for (y, &x) in y.iter_mut().zip(x) {
                            y.write(f(x));
                        }
                    },
                )
            });
    };
    // SAFETY: the chunks cover the output, and each is written whole.
    unsafe { filled(x.len(), fill) }
}

/// `f(a, b)` for every pair of values of `a` and `b` (equal lengths), as [`map`].
#[inline(always)]
pub(crate) fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    debug_assert_eq!(a.len(), b.len());
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(MAP_CHUNK)
            .zip(a.par_chunks(MAP_CHUNK).zip(b.par_chunks(MAP_CHUNK)))
            .for_each(|(y, (a, b))| {
                simd::run(
                    #[inline(always)]
                    || {
                        for (y, (&a, &b)) in y.iter_mut().zip(a.iter().zip(b)) {
                            y.write(f(a, b));
                        }
                    },
                )
            });
    };
    // SAFETY: the chunks cover the output, and each is written whole.
    unsafe { filled(a.len(), fill) }
}

/// `s` as the destination of a product that overwrites or accumulates into it.
///
/// # Safety
/// Only f32 values may be written through the returned slice (never `MaybeUninit::uninit()`),
/// so that `s` stays initialized.
pub(crate) unsafe fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the caller writes only f32 values.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [MaybeUninit<f32>]) }
}

/// `s` filled with zeros, as an initialized slice.
pub(crate) fn zeroed(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [f32]) }
}
