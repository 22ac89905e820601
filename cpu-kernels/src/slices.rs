//! What the kernels share to run on burn-flex: whether a
//! tensor is there, its f32 values as a slice, a tensor of values made on the CPU, and output
//! buffers that are written without being zero-filled first.

use std::mem::MaybeUninit;

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
pub(crate) fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
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
