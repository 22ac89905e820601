//! The float types a weights file may hold. timm saves F32, and F16, BF16 or F64 after
//! `model.half()`, `.bfloat16()` or `.double()`. burn-store puts a tensor into the model in
//! the file's type unless told to cast (then the first convolution that meets an F32 input
//! panics, "dtype mismatch"); its `FloatCastAdapter` casts, and this module checks first what
//! it cannot: that every tensor is a float at all, and finite (weights with a NaN evaluate to
//! anything: all-NaN logits once scored top-1 100 %).

use std::collections::BTreeMap;

use burn::tensor::{DType, bf16, f16};
use safetensors::{Dtype, SafeTensors};

/// A weights file that is not what a model can take.
#[derive(Debug, thiserror::Error)]
pub enum FloatTypesError {
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// A tensor of a type that holds no weights.
    #[error(
        "tensor {tensor} is {dtype:?}; weights must be F16, BF16, F32 or F64 (timm's \
         num_batches_tracked, I64, is the one integer tensor taken, and ignored)"
    )]
    NotFloat {
        /// The tensor's name in the file.
        tensor: String,
        /// Its type.
        dtype: Dtype,
    },
    /// NaN or infinite values.
    #[error(
        "tensor {tensor} has {count} of {total} values NaN or infinite{beyond}: these weights \
         come from a run that diverged; use an earlier checkpoint"
    )]
    NonFinite {
        /// The tensor's name in the file.
        tensor: String,
        /// How many values are not finite.
        count: usize,
        /// How many values it has.
        total: usize,
        /// Said when F64 values are out of f32's range (finite in the file, infinite as f32).
        beyond: &'static str,
    },
}

/// The float types of a weights file's tensors other than F32.
#[derive(Debug, Default)]
pub struct FloatTypes {
    /// Tensors by their type in the file (`F16: 161`); empty when all are F32.
    pub other: BTreeMap<String, usize>,
}

impl FloatTypes {
    /// One line saying what is cast to `model`'s float type on load, when something is.
    pub fn note(&self, model: DType) -> Option<String> {
        let other: Vec<String> = self
            .other
            .iter()
            .filter(|(dtype, _)| **dtype != format!("{model:?}"))
            .map(|(dtype, n)| format!("{n} tensors {dtype}"))
            .collect();
        (!other.is_empty()).then(|| {
            format!(
                "weights cast to the model's {model:?} on load: {} (what timm's \
                 model.half()/.bfloat16()/.double() saves)",
                other.join(", ")
            )
        })
    }
}

/// timm's one integer buffer: burn has no such field, so it is skipped whatever its type.
fn is_skipped(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// How many of `data`'s values of `dtype` are NaN or infinite, and whether some are finite
/// there but not once rounded to f32 (F64 beyond f32's range).
fn non_finite(dtype: Dtype, data: &[u8]) -> (usize, bool) {
    match dtype {
        Dtype::F32 => (
            data.chunks_exact(4)
                .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                .count(),
            false,
        ),
        Dtype::F16 => (
            data.chunks_exact(2)
                .filter(|b| !f16::from_le_bytes([b[0], b[1]]).is_finite())
                .count(),
            false,
        ),
        Dtype::BF16 => (
            data.chunks_exact(2)
                .filter(|b| !bf16::from_le_bytes([b[0], b[1]]).is_finite())
                .count(),
            false,
        ),
        _ => {
            let (mut count, mut beyond) = (0, false);
            for b in data.chunks_exact(8) {
                let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if !(v as f32).is_finite() {
                    count += 1;
                    beyond |= v.is_finite();
                }
            }
            (count, beyond)
        }
    }
}

/// Checks that every tensor of `bytes` (a safetensors file) is a float type timm writes
/// (timm's `num_batches_tracked` skipped) with finite values only, even once in f32; returns
/// the types other than F32, which burn-store's `FloatCastAdapter` casts on load.
///
/// # Errors
/// [`FloatTypesError`] naming the first tensor (by name) of another type, or with a NaN or
/// an infinity.
pub fn check(bytes: &[u8]) -> Result<FloatTypes, FloatTypesError> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| FloatTypesError::Format(e.to_string()))?;
    let mut types = FloatTypes::default();
    let mut names = file.names();
    // The file's order is its offsets'; sorted, the tensor named is the same on every run.
    names.sort();
    for name in names.into_iter().filter(|n| !is_skipped(n)) {
        let view = file
            .tensor(name)
            .map_err(|e| FloatTypesError::Format(e.to_string()))?;
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(FloatTypesError::NotFloat {
                tensor: name.to_string(),
                dtype,
            });
        }
        let (count, beyond) = non_finite(dtype, view.data());
        if count > 0 {
            return Err(FloatTypesError::NonFinite {
                tensor: name.to_string(),
                count,
                total: view.data().len() / dtype.bitsize().div_ceil(8),
                beyond: if beyond {
                    " (some beyond f32's range)"
                } else {
                    ""
                },
            });
        }
        if dtype != Dtype::F32 {
            *types.other.entry(format!("{dtype:?}")).or_insert(0) += 1;
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A safetensors file of `(name, dtype, shape, little-endian bytes)`.
    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (
                    name.to_string(),
                    TensorView::new(*dtype, shape.clone(), data).expect("view"),
                )
            })
            .collect();
        safetensors::serialize(views, None).expect("serialize")
    }

    fn le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|v| to(*v)).collect()
    }

    #[test]
    fn f16_bf16_and_f64_are_taken_and_said_f32_is_silent() {
        let values = [0.5f32, -1.25, 3.0e-3, 65504.0];
        let half: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
        let brain: Vec<bf16> = values.iter().map(|v| bf16::from_f32(*v)).collect();
        let double: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
        let bytes = file(&[
            ("a.weight", Dtype::F16, vec![4], le(&half, f16::to_le_bytes)),
            (
                "b.weight",
                Dtype::BF16,
                vec![2, 2],
                le(&brain, bf16::to_le_bytes),
            ),
            (
                "c.weight",
                Dtype::F64,
                vec![4],
                le(&double, f64::to_le_bytes),
            ),
            (
                "d.weight",
                Dtype::F32,
                vec![4],
                le(&values, f32::to_le_bytes),
            ),
            (
                "bn1.num_batches_tracked",
                Dtype::I64,
                vec![],
                7i64.to_le_bytes().to_vec(),
            ),
        ]);
        let types = check(&bytes).expect("floats");
        let note = types.note(DType::F32).expect("said");
        for part in [
            "1 tensors F16",
            "1 tensors BF16",
            "1 tensors F64",
            "model's F32",
        ] {
            assert!(note.contains(part), "{part}: {note}");
        }
        // Into a bf16 model, the BF16 tensor is not a cast.
        let note = types.note(DType::BF16).expect("said");
        assert!(!note.contains("BF16,") && note.contains("F16"), "{note}");
        let f32_only = file(&[("w", Dtype::F32, vec![4], le(&values, f32::to_le_bytes))]);
        assert!(check(&f32_only).expect("floats").note(DType::F32).is_none());
    }

    #[test]
    fn integers_and_non_finite_values_are_refused_naming_the_tensor() {
        let ints = file(&[("fc.weight", Dtype::I32, vec![2], vec![0; 8])]);
        let err = check(&ints).expect_err("an integer weight");
        assert!(err.to_string().contains("tensor fc.weight is I32"), "{err}");
        let nan = le(&[1f32, f32::NAN, f32::INFINITY], f32::to_le_bytes);
        let err = check(&file(&[("conv1.weight", Dtype::F32, vec![3], nan)])).expect_err("NaN");
        assert!(
            err.to_string()
                .contains("tensor conv1.weight has 2 of 3 values NaN or infinite"),
            "{err}"
        );
        let half = le(&[f16::NAN, f16::ONE], f16::to_le_bytes);
        let err = check(&file(&[("bn1.weight", Dtype::F16, vec![2], half)])).expect_err("NaN");
        assert!(err.to_string().contains("1 of 2 values"), "{err}");
        // Finite in f64, infinite in f32: the same refusal, with the reason.
        let big = file(&[(
            "fc.bias",
            Dtype::F64,
            vec![1],
            1e300f64.to_le_bytes().to_vec(),
        )]);
        let err = check(&big).expect_err("out of range");
        assert!(err.to_string().contains("beyond f32's range"), "{err}");
        let err = check(b"not safetensors").expect_err("format");
        assert!(
            err.to_string().starts_with("not a safetensors file"),
            "{err}"
        );
    }
}
