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

use crate::model::resnet::ResNet;

/// Errors of weight files.
#[derive(Debug, thiserror::Error)]
pub enum TimmWeightsError {
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

/// Writes `model`'s parameters and BN statistics to `path` under timm's names, atomically (a
/// temporary file, synced, renamed into place: an interrupted export never leaves a truncated
/// file where weights were).
pub fn export(model: &ResNet, path: &Path) -> Result<(), TimmWeightsError> {
    let err = |message: String| TimmWeightsError::Store {
        path: path.display().to_string(),
        message,
    };
    let bytes = timm_bytes(model).map_err(err)?;
    shard_tool::writer::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| err(e.chain()))
}

/// `model`'s parameters and BN statistics as the bytes of a timm-named safetensors file.
fn timm_bytes(model: &ResNet) -> Result<Vec<u8>, String> {
    model.settle_running_stats();
    let mut out = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(to_timm());
    model.save_into(&mut out).map_err(|e| e.to_string())?;
    out.get_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// Loads timm-named weights from `path` into `model`; every tensor of the model must be there.
pub fn import(model: ResNet, path: &Path) -> Result<ResNet, TimmWeightsError> {
    load(model, path, false).map(|(model, _)| model)
}

/// The classifier's tensors, which fine-tuning on another label set replaces.
const HEAD: [&str; 2] = ["fc.weight", "fc.bias"];

/// Loads timm-named weights to fine-tune on another label set (timm's `--pretrained` with
/// another `--num-classes`, as the paper's transfer runs do): every tensor strictly, except
/// the classifier when its class count differs from the model's, which keeps the model's fresh
/// initialization. Returns the model and the tensors so re-initialized (empty when the counts
/// match).
pub(crate) fn import_backbone(
    model: ResNet,
    path: &Path,
) -> Result<(ResNet, Vec<String>), TimmWeightsError> {
    load(model, path, true)
}

/// [`import_backbone`] from a model in memory (a checkpoint's), through the same timm-named
/// safetensors bytes a file would hold; `name` says where it came from in errors.
pub(crate) fn backbone_from(
    model: ResNet,
    from: &ResNet,
    name: &Path,
) -> Result<(ResNet, Vec<String>), TimmWeightsError> {
    let bytes = timm_bytes(from).map_err(|message| TimmWeightsError::Store {
        path: name.display().to_string(),
        message,
    })?;
    load_store(model, SafetensorsStore::from_bytes(Some(bytes)), name, true)
}

/// The largest weights file read: timm's largest ResNet in float64 is under 1 GB.
pub const WEIGHTS_MAX_BYTES: u64 = 4 * shard_tool::user_file::GIB;

fn load(
    model: ResNet,
    path: &Path,
    new_head: bool,
) -> Result<(ResNet, Vec<String>), TimmWeightsError> {
    let bytes = shard_tool::user_file::read_capped(path, WEIGHTS_MAX_BYTES, "a weights file")
        .map_err(|e| TimmWeightsError::Store {
            path: path.display().to_string(),
            message: e.reason(),
        })?;
    load_store(
        model,
        SafetensorsStore::from_bytes(Some(bytes)),
        path,
        new_head,
    )
}

fn load_store(
    mut model: ResNet,
    store: SafetensorsStore,
    path: &Path,
    new_head: bool,
) -> Result<(ResNet, Vec<String>), TimmWeightsError> {
    let mut store = store
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(from_timm())
        .allow_partial(true)
        // Shape mismatches come back in the result, to be judged below, not as burn's error.
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TimmWeightsError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    // A classifier of another shape is the one difference fine-tuning expects.
    let (head, errors): (Vec<_>, Vec<_>) = result.errors.iter().partition(|e| {
        new_head
            && matches!(e, burn::store::ApplyError::ShapeMismatch { path, .. }
                if HEAD.contains(&path.as_str()))
    });
    if !result.missing.is_empty() || !errors.is_empty() {
        let first = result
            .missing
            .first()
            .map(|(p, _)| format!("missing {p}"))
            .or_else(|| errors.first().map(|e| format!("{e:?}")))
            .unwrap_or_default();
        return Err(TimmWeightsError::Mismatch {
            path: path.display().to_string(),
            missing: result.missing.len(),
            errors: errors.len(),
            first,
        });
    }
    let mut renewed: Vec<String> = head
        .iter()
        .filter_map(|e| match e {
            burn::store::ApplyError::ShapeMismatch { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    renewed.sort();
    Ok((model, renewed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::ResNetConfig;
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
    fn fine_tuning_on_other_classes_keeps_the_backbone_and_renews_only_the_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pretrained.safetensors");
        let config = |num_classes| ResNetConfig {
            depth: 18,
            width: 0.125,
            num_classes,
            ..ResNetConfig::resnet50()
        };
        let device = Device::flex();
        device.seed(1);
        let pretrained = config(10).init(&device).expect("config");
        export(&pretrained, &path).expect("export");
        device.seed(2);
        let fresh = config(5).init(&device).expect("config");
        let fresh_values = values(&fresh);
        // Strictly, a 5-class model does not take a 10-class file.
        let err = import(fresh.clone(), &path).expect_err("strict");
        assert!(err.to_string().contains("does not fit this model"), "{err}");
        let (tuned, renewed) = import_backbone(fresh.clone(), &path).expect("backbone");
        assert_eq!(renewed, ["fc.bias", "fc.weight"]);
        // From a model in memory (a checkpoint's), the same.
        let (from_memory, renewed) =
            backbone_from(fresh, &pretrained, Path::new("ckpt")).expect("from memory");
        assert_eq!(renewed, ["fc.bias", "fc.weight"]);
        assert!(values(&from_memory) == values(&tuned));
        let (tuned, pre) = (values(&tuned), values(&pretrained));
        // The visitor's order ends with fc.weight, fc.bias: all before them is the backbone's.
        let n = tuned.len();
        assert_eq!(
            tuned[..n - 2],
            pre[..n - 2],
            "the backbone is the pretrained one"
        );
        assert_eq!(
            tuned[n - 2..],
            fresh_values[n - 2..],
            "the head keeps its fresh weights"
        );
        // Same class count: nothing renewed, everything loaded.
        let (same, renewed) =
            import_backbone(config(10).init(&device).expect("config"), &path).expect("same");
        assert!(renewed.is_empty());
        assert!(values(&same) == pre);
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
