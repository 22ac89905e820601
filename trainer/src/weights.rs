//! Weights as safetensors with timm's key names and PyTorch's layouts, so that
//! `timm.create_model("resnet50").load_state_dict(safetensors.torch.load_file(path))` takes
//! what `trainer` exports, and `--init-from` takes what timm saves.
//!
//! burn-store's PyTorch adapters rename BN `gamma/beta` to `weight/bias` and transpose the
//! linear weight; the one structural difference left is timm's `downsample` Sequential
//! (`downsample.0` conv, `downsample.1` BN), which is our `downsample.{conv, bn}`.
//! timm's `num_batches_tracked` buffers are not written (PyTorch fills them in on load) and are
//! ignored on import.

use std::path::Path;

use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};

use crate::resnet::ResNet;

/// Errors of weight files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The safetensors store failed (I/O, format).
    #[error("{path}: {message}")]
    Store {
        /// The file.
        path: String,
        /// burn-store's message.
        message: String,
    },
    /// The file does not fit the model.
    #[error(
        "{path} does not fit this model: {missing} missing, {errors} wrong (first: {first}); \
         is it a timm checkpoint of the same --model and --num-classes?"
    )]
    Mismatch {
        /// The file.
        path: String,
        /// Model tensors the file lacks.
        missing: usize,
        /// Tensors with a wrong shape or type.
        errors: usize,
        /// The first problem, for the message.
        first: String,
    },
}

fn to_timm() -> KeyRemapper {
    KeyRemapper::new()
        .add_pattern(r"\.downsample\.conv\.", ".downsample.0.")
        .and_then(|r| r.add_pattern(r"\.downsample\.bn\.", ".downsample.1."))
        .unwrap_or_default()
}

fn from_timm() -> KeyRemapper {
    KeyRemapper::new()
        .add_pattern(r"\.downsample\.0\.", ".downsample.conv.")
        .and_then(|r| r.add_pattern(r"\.downsample\.1\.", ".downsample.bn."))
        .unwrap_or_default()
}

/// Writes `model`'s parameters and BN statistics to `path` under timm's names.
pub fn export(model: &ResNet, path: &Path) -> Result<(), WeightsError> {
    model.settle_running_stats();
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(to_timm())
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| WeightsError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Loads timm-named weights from `path` into `model`; every tensor of the model must be there.
pub fn import(mut model: ResNet, path: &Path) -> Result<ResNet, WeightsError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(from_timm())
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| WeightsError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let first = result
            .missing
            .first()
            .map(|(p, _)| format!("missing {p}"))
            .or_else(|| result.errors.first().map(|e| format!("{e:?}")))
            .unwrap_or_default();
        return Err(WeightsError::Mismatch {
            path: path.display().to_string(),
            missing: result.missing.len(),
            errors: result.errors.len(),
            first,
        });
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet::ResNetConfig;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Device, Tensor};
    use std::collections::BTreeMap;

    fn values(model: &ResNet) -> Vec<Vec<u32>> {
        struct Bits(Vec<Vec<u32>>);
        impl ModuleVisitor for Bits {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let v = p
                    .val()
                    .into_data()
                    .iter::<f32>()
                    .map(f32::to_bits)
                    .collect();
                self.0.push(v);
            }
        }
        let mut b = Bits(Vec::new());
        model.visit(&mut b);
        b.0
    }

    /// Tensor names and shapes from the safetensors header.
    fn header(path: &Path) -> BTreeMap<String, Vec<usize>> {
        let bytes = std::fs::read(path).expect("file");
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(len) as usize;
        let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
        json.as_object()
            .expect("object")
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let shape = v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim") as usize)
                    .collect();
                (k.clone(), shape)
            })
            .collect()
    }

    #[test]
    fn resnet50_exports_timms_state_dict_and_round_trips_bit_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resnet50.safetensors");
        let device = Device::flex();
        device.seed(1);
        let a = ResNetConfig::resnet50().init(&device).expect("config");
        export(&a, &path).expect("export");
        let keys = header(&path);
        // timm's resnet50 state dict has 320 entries, 53 of them num_batches_tracked.
        assert_eq!(
            keys.len(),
            320 - 53,
            "{:?}",
            keys.keys().take(5).collect::<Vec<_>>()
        );
        let want: [(&str, &[usize]); 8] = [
            ("conv1.weight", &[64, 3, 7, 7]),
            ("bn1.weight", &[64]),
            ("bn1.running_var", &[64]),
            ("layer1.0.conv3.weight", &[256, 64, 1, 1]),
            ("layer1.0.downsample.0.weight", &[256, 64, 1, 1]),
            ("layer4.2.bn3.bias", &[2048]),
            ("layer3.0.downsample.1.running_mean", &[1024]),
            ("fc.weight", &[1000, 2048]),
        ];
        for (k, shape) in want {
            assert_eq!(keys.get(k).map(Vec::as_slice), Some(shape), "{k}");
        }
        device.seed(2);
        let b = ResNetConfig::resnet50().init(&device).expect("config");
        assert_ne!(values(&a), values(&b));
        let b = import(b, &path).expect("import");
        assert!(values(&a) == values(&b), "round trip changed a value");
    }

    #[test]
    fn a_file_for_another_model_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r18.safetensors");
        let small = ResNetConfig {
            depth: 18,
            width: 0.125,
            num_classes: 10,
            ..ResNetConfig::resnet50()
        };
        let device = Device::flex();
        export(&small.init(&device).expect("config"), &path).expect("export");
        let other = ResNetConfig {
            depth: 34,
            ..small.clone()
        };
        let err = import(other.init(&device).expect("config"), &path).expect_err("mismatch");
        assert!(err.to_string().contains("does not fit this model"), "{err}");
    }
}
