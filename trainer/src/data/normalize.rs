//! uint8 NHWC batches from the loader become normalized NCHW floats on the device.
//!
//! The bytes cross to the device as uint8 (a quarter of f32's traffic); the widening,
//! the layout change and timm's ImageNet normalization run there.

use burn::tensor::{Bytes, DType, Device, Int, Tensor, TensorData};

/// timm's `IMAGENET_DEFAULT_MEAN`, in 0..255 units.
pub(crate) const MEAN: [f32; 3] = [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0];
/// timm's `IMAGENET_DEFAULT_STD`, in 0..255 units.
pub(crate) const STD: [f32; 3] = [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0];

/// Errors of a host batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The byte count does not match the shape.
    #[error("batch of {got} bytes does not hold [{n}, {h}, {w}, 3] uint8 pixels ({want} bytes)")]
    Size {
        /// Bytes given.
        got: usize,
        /// Bytes the shape needs.
        want: usize,
        /// Images.
        n: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
}

/// Uploads `[n, h, w, 3]` uint8 pixels and returns `[n, 3, h, w]` floats still in 0..255
/// ([`crate::data::upload`] decides how the bytes are held).
pub(crate) fn upload_pixels(
    bytes: Bytes,
    [n, h, w]: [usize; 3],
    device: &Device,
) -> Result<Tensor<4>, BatchError> {
    let want = n * h * w * 3;
    if bytes.len() != want {
        return Err(BatchError::Size {
            got: bytes.len(),
            want,
            n,
            h,
            w,
        });
    }
    let data = TensorData::from_bytes(bytes, [n, h, w, 3], DType::U8);
    // Passing the dtype keeps the upload at one byte per value.
    let pixels = Tensor::<4, Int>::from_data(data, (device, DType::U8));
    Ok(pixels.float().permute([0, 3, 1, 2]))
}

/// `(x − mean) / std` per channel on `[n, 3, h, w]` pixels in 0..255.
pub fn normalize(pixels: Tensor<4>) -> Tensor<4> {
    let device = pixels.device();
    let mean = Tensor::<1>::from_floats(MEAN, &device).reshape([1, 3, 1, 1]);
    let inv_std = Tensor::<1>::from_floats(STD.map(|s| 1.0 / s), &device).reshape([1, 3, 1, 1]);
    (pixels - mean) * inv_std
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_values_follow_timm() {
        let device = Device::flex();
        // Two 1×2 images; pixel (n, x) has channels (10n + x, 100, 200).
        let bytes: Vec<u8> = (0..2u8)
            .flat_map(|n| (0..2u8).flat_map(move |x| [10 * n + x, 100, 200]))
            .collect();
        let x = upload_pixels(Bytes::from_bytes_vec(bytes), [2, 1, 2], &device).expect("shape");
        assert_eq!(x.dims(), [2, 3, 1, 2]);
        let y: Vec<f32> = normalize(x).into_data().try_to_vec::<f32>().expect("f32");
        // NCHW: sample 1, channel 0, x = 1 is index 1*6 + 0*2 + 1.
        let want = (11.0 - MEAN[0]) / STD[0];
        assert!((y[7] - want).abs() < 1e-5);
        let want_b = (200.0 - MEAN[2]) / STD[2];
        assert!((y[4] - want_b).abs() < 1e-5);
    }

    #[test]
    fn wrong_size_is_an_error_naming_the_shape() {
        let err = upload_pixels(
            Bytes::from_bytes_vec(vec![0; 5]),
            [1, 1, 2],
            &Device::flex(),
        )
        .expect_err("5 bytes");
        assert!(err.to_string().contains("[1, 1, 2, 3]"), "{err}");
    }
}
