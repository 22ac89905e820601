//! Weights as safetensors with timm's key names and PyTorch's layouts, so that
//! `timm.create_model("resnet50").load_state_dict(safetensors.torch.load_file(path))` takes
//! what `trainer` exports, and `--init-from` takes what timm saves.
//!
//! burn-store's PyTorch adapters rename BN `gamma/beta` to `weight/bias` and transpose the
//! linear weight; the structural differences left are timm's Sequentials (the shortcut's
//! `downsample.0`/`.1`, or `.1`/`.2` with `avg_down`, for our `downsample.{conv, bn}`; a deep
//! stem's `conv1.0` to `.6`) and ECA under timm's `se` name (`renames`).
//! timm's `num_batches_tracked` buffers are not written (PyTorch fills them in on load) and are
//! ignored on import.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore,
};

use crate::model::float_types::{self, FloatTypesError};
use crate::model::network::Network;
use crate::model::network::describe;
use crate::model::regnet;

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
    /// A tensor no model takes: not a float, or not finite.
    #[error("{path}: {source}")]
    Types {
        /// The file.
        path: String,
        /// Which tensor, and what is wrong with it.
        source: FloatTypesError,
    },
    /// The file does not fit the model.
    #[error(
        "{path} holds {file_is}, not {model_is} ({missing} tensors missing, {errors} wrong or \
         extra; first: {first}): pass the --model and --num-classes it was trained with, or weights \
         of this model"
    )]
    Mismatch {
        /// The file.
        path: String,
        /// What the file holds ([`crate::model::resnet::names::describe`]).
        file_is: String,
        /// What the model is, in the same words.
        model_is: String,
        /// Model tensors the file lacks.
        missing: usize,
        /// Tensors with a wrong shape or type, or with no place in the model.
        errors: usize,
        /// The first problem, for the message.
        first: String,
    },
}

/// Our names and timm's, where they differ: a deep stem's modules (timm's `conv1`
/// Sequential), ECA (timm's `se` attribute holds either attention), and the shortcut
/// Sequential (`(conv, bn)`, or with `avg_down` `(pool, conv, bn)`).
fn renames(avg_down: bool) -> [(&'static str, &'static str); 8] {
    let (conv, bn) = if avg_down {
        (".downsample.1.", ".downsample.2.")
    } else {
        (".downsample.0.", ".downsample.1.")
    };
    [
        ("stem.conv_a.", "conv1.0."),
        ("stem.bn_a.", "conv1.1."),
        ("stem.conv_b.", "conv1.3."),
        ("stem.bn_b.", "conv1.4."),
        ("stem.conv_c.", "conv1.6."),
        (".eca.conv.", ".se.conv."),
        (".downsample.conv.", conv),
        (".downsample.bn.", bn),
    ]
}

/// An EfficientNet's squeeze-excite: our module's names and timm's.
const SE_RENAMES: [(&str, &str); 2] = [
    (".se.fc1.", ".se.conv_reduce."),
    (".se.fc2.", ".se.conv_expand."),
];

/// A remapper of `pairs` (`from` → `to`), each matched literally, at the start of the name when
/// it has no leading dot.
fn remapper<S: AsRef<str>>(pairs: impl Iterator<Item = (S, S)>) -> KeyRemapper {
    let patterns = pairs.map(|(from, to)| {
        let (from, to) = (from.as_ref(), to.as_ref());
        let anchor = if from.starts_with('.') { "" } else { "^" };
        // Names hold letters, digits, `_` and `.`: the dots are the only regex syntax.
        (
            format!("{anchor}{}", from.replace('.', r"\.")),
            to.to_string(),
        )
    });
    // Escaped literals always compile.
    KeyRemapper::from_patterns(patterns.collect()).unwrap_or_default()
}

fn to_timm(model: &Network) -> KeyRemapper {
    match model {
        Network::ResNet(m) => remapper(renames(m.avg_down).into_iter()),
        Network::RegNet(_) => remapper(regnet::block_renames().into_iter()),
        Network::EfficientNet(_) => remapper(SE_RENAMES.into_iter()),
        // A ViT's modules carry timm's names already.
        Network::Vit(_) => KeyRemapper::new(),
    }
}

fn from_timm(model: &Network) -> KeyRemapper {
    match model {
        Network::ResNet(m) => remapper(
            renames(m.avg_down)
                .into_iter()
                .map(|(ours, timm)| (timm, ours)),
        ),
        Network::RegNet(_) => remapper(
            regnet::block_renames()
                .into_iter()
                .map(|(ours, timm)| (timm, ours)),
        ),
        Network::EfficientNet(_) => {
            remapper(SE_RENAMES.into_iter().map(|(ours, timm)| (timm, ours)))
        }
        Network::Vit(_) => KeyRemapper::new(),
    }
}

/// The classifier's tensors, which fine-tuning on another label set replaces.
fn head_names(model: &Network) -> [&'static str; 2] {
    match model {
        Network::ResNet(_) => ["fc.weight", "fc.bias"],
        Network::RegNet(_) => ["head.fc.weight", "head.fc.bias"],
        Network::EfficientNet(_) => ["classifier.weight", "classifier.bias"],
        Network::Vit(_) => ["head.weight", "head.bias"],
    }
}

/// Writes `model`'s parameters and BN statistics to `path` under timm's names, atomically (a
/// temporary file, synced, renamed into place: an interrupted export never leaves a truncated
/// file where weights were).
pub fn export(model: &Network, path: &Path) -> Result<(), TimmWeightsError> {
    let err = |message: String| TimmWeightsError::Store {
        path: path.display().to_string(),
        message,
    };
    let bytes = timm_bytes(model).map_err(err)?;
    shard_tool::atomic::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| err(e.chain()))
}

/// `model`'s parameters and BN statistics as the bytes of a timm-named safetensors file.
fn timm_bytes(model: &Network) -> Result<Vec<u8>, String> {
    model.settle_running_stats();
    let mut out = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(to_timm(model));
    // The family's module, not the enum: the enum's variant would prefix every name.
    let saved = match model {
        Network::ResNet(m) => m.save_into(&mut out),
        Network::RegNet(m) => m.save_into(&mut out),
        Network::EfficientNet(m) => m.save_into(&mut out),
        Network::Vit(m) => m.save_into(&mut out),
    };
    saved.map_err(|e| e.to_string())?;
    out.get_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// A tensor the model cannot take, in words.
fn wrong(e: &burn::store::ApplyError) -> String {
    match e {
        burn::store::ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => format!(
            "{path} is {:?} in the file, {:?} in the model (burn's layout)",
            found.as_slice(),
            expected.as_slice()
        ),
        other => format!("{other:?}"),
    }
}

/// Names and shapes (PyTorch's) of `model`'s state dict under timm's names.
///
/// # Errors
/// burn-store's message, should the model not serialize.
pub fn shapes(model: &Network) -> Result<BTreeMap<String, Vec<usize>>, String> {
    tensor_shapes(&timm_bytes(model)?)
}

/// Names and shapes of the tensors of safetensors `bytes`.
fn tensor_shapes(bytes: &[u8]) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    Ok(file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect())
}

/// A model given a file's weights, and what that took beyond copying.
#[derive(Debug)]
pub struct Imported {
    /// The model.
    pub model: Network,
    /// Tensors that kept the model's fresh initialization (fine-tuning's new classifier).
    pub renewed: Vec<String>,
    /// A line to say once: the file's float types cast to the model's
    /// ([`float_types::FloatTypes::note`]).
    pub note: Option<String>,
}

/// Loads timm-named weights from `path` into `model`; every tensor of the model must be there.
/// Tensors in F16, BF16 or F64 are cast to the model's float type (said in the note).
pub fn import(model: Network, path: &Path) -> Result<Imported, TimmWeightsError> {
    load(model, path, false)
}

/// Loads timm-named weights to fine-tune on another label set (timm's `--pretrained` with
/// another `--num-classes`, as the paper's transfer runs do): every tensor strictly, except
/// the classifier when its class count differs from the model's, which keeps the model's fresh
/// initialization. Returns the model and the tensors so re-initialized (empty when the counts
/// match).
pub(crate) fn import_backbone(model: Network, path: &Path) -> Result<Imported, TimmWeightsError> {
    load(model, path, true)
}

/// [`import_backbone`] from a model in memory (a checkpoint's), through the same timm-named
/// safetensors bytes a file would hold; `name` says where it came from in errors.
pub(crate) fn backbone_from(
    model: Network,
    from: &Network,
    name: &Path,
) -> Result<Imported, TimmWeightsError> {
    let bytes = timm_bytes(from).map_err(|message| TimmWeightsError::Store {
        path: name.display().to_string(),
        message,
    })?;
    load_store(model, bytes, name, true)
}

/// The largest weights file read: timm's largest ResNet in float64 is under 1 GB.
pub const WEIGHTS_MAX_BYTES: u64 = 4 * shard_tool::user_file::GIB;

fn load(model: Network, path: &Path, new_head: bool) -> Result<Imported, TimmWeightsError> {
    let bytes = super::safetensors_file::read_checked(path, WEIGHTS_MAX_BYTES, "a weights file")
        .map_err(|message| TimmWeightsError::Store {
            path: path.display().to_string(),
            message,
        })?;
    load_store(model, bytes, path, new_head)
}

/// `model` with the weights of `bytes` (safetensors, timm's names), checked first: every
/// tensor a float, every value finite; each cast to the model's float type.
fn load_store(
    model: Network,
    bytes: Vec<u8>,
    path: &Path,
    new_head: bool,
) -> Result<Imported, TimmWeightsError> {
    let types = float_types::check(&bytes).map_err(|source| TimmWeightsError::Types {
        path: path.display().to_string(),
        source,
    })?;
    let file_shapes = tensor_shapes(&bytes);
    let dtype = model.head().weight.val().dtype();
    let head = head_names(&model);
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(dtype)))
        .remap(from_timm(&model))
        .allow_partial(true)
        // Shape mismatches come back in the result, to be judged below, not as burn's error.
        .validate(false);
    let applied = match model {
        Network::ResNet(mut m) => m.load_from(&mut store).map(|r| (Network::ResNet(m), r)),
        Network::RegNet(mut m) => m.load_from(&mut store).map(|r| (Network::RegNet(m), r)),
        Network::EfficientNet(mut m) => m
            .load_from(&mut store)
            .map(|r| (Network::EfficientNet(m), r)),
        Network::Vit(mut m) => m.load_from(&mut store).map(|r| (Network::Vit(m), r)),
    };
    let (model, result) = applied.map_err(|e| TimmWeightsError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    // A classifier of another shape is the one difference fine-tuning expects.
    let (head, errors): (Vec<_>, Vec<_>) = result.errors.iter().partition(|e| {
        new_head
            && matches!(e, burn::store::ApplyError::ShapeMismatch { path, .. }
                if head.contains(&path.as_str()))
    });
    // Tensors the model has no place for: another architecture's (a squeeze-excite's weights
    // would otherwise be dropped in silence). PyTorch's BN counters are not ours to load.
    let unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|name| !name.ends_with("num_batches_tracked"))
        .collect();
    if !result.missing.is_empty() || !errors.is_empty() || !unused.is_empty() {
        let first = result
            .missing
            .first()
            .map(|(p, _)| format!("missing {p}"))
            .or_else(|| errors.first().map(|e| wrong(e)))
            .or_else(|| {
                unused
                    .first()
                    .map(|p| format!("{p} has no place in the model"))
            })
            .unwrap_or_default();
        let words = |shapes: Result<BTreeMap<String, Vec<usize>>, String>| {
            shapes.map_or_else(|e| format!("(unreadable: {e})"), |s| describe(&s))
        };
        return Err(TimmWeightsError::Mismatch {
            path: path.display().to_string(),
            file_is: words(file_shapes),
            model_is: words(shapes(&model)),
            missing: result.missing.len(),
            errors: errors.len() + unused.len(),
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
    Ok(Imported {
        model,
        renewed,
        note: types.note(dtype),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::Family;
    use crate::model::resnet::ResNetConfig;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Device, Tensor};
    use std::collections::BTreeMap;

    fn values(model: &Network) -> Vec<Vec<u32>> {
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
        let a = ResNetConfig::resnet50()
            .init(&device)
            .map(Network::from)
            .expect("config");
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
        let b = ResNetConfig::resnet50()
            .init(&device)
            .map(Network::from)
            .expect("config");
        assert_ne!(values(&a), values(&b));
        let b = import(b, &path).expect("import").model;
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
        let pretrained = config(10).init(&device).map(Network::from).expect("config");
        export(&pretrained, &path).expect("export");
        device.seed(2);
        let fresh = config(5).init(&device).map(Network::from).expect("config");
        let fresh_values = values(&fresh);
        // Strictly, a 5-class model does not take a 10-class file.
        let err = import(fresh.clone(), &path).expect_err("strict");
        assert!(
            err.to_string().contains(
                "2, 2), 10 classes, not a ResNet with 8 basic blocks (2, 2, 2, 2), 5 classes"
            ),
            "{err}"
        );
        let Imported {
            model: tuned,
            renewed,
            ..
        } = import_backbone(fresh.clone(), &path).expect("backbone");
        assert_eq!(renewed, ["fc.bias", "fc.weight"]);
        // From a model in memory (a checkpoint's), the same.
        let Imported {
            model: from_memory,
            renewed,
            ..
        } = backbone_from(fresh, &pretrained, Path::new("ckpt")).expect("from memory");
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
        let Imported {
            model: same,
            renewed,
            ..
        } = import_backbone(
            config(10).init(&device).map(Network::from).expect("config"),
            &path,
        )
        .expect("same");
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
        export(
            &small.init(&device).map(Network::from).expect("config"),
            &path,
        )
        .expect("export");
        let other = ResNetConfig {
            depth: 34,
            ..small.clone()
        };
        let err = import(
            other.init(&device).map(Network::from).expect("config"),
            &path,
        )
        .expect_err("mismatch");
        let err = err.to_string();
        assert!(
            err.contains("holds a ResNet with 8 basic blocks")
                && err.contains("not a ResNet with 16 basic blocks")
                && err.contains("--model"),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_another_family_member_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = Device::flex();
        let model = |name: &str| {
            ResNetConfig {
                num_classes: 10,
                ..ResNetConfig::timm(name).expect("ours")
            }
            .init(&device)
            .map(Network::from)
            .expect("config")
        };
        // Each pair holds every tensor of the model it is loaded into but one kind: SE's
        // extra tensors, ECA's, avg_down's renamed shortcuts, grouped shapes.
        for (file, into) in [
            ("seresnet50", "resnet50"),
            ("resnet50", "seresnet50"),
            ("ecaresnet50d", "resnet50d"),
            ("resnet50d", "resnet50"),
            ("resnext50_32x4d", "resnet50"),
        ] {
            let path = dir.path().join(format!("{file}.safetensors"));
            export(&model(file), &path).expect("export");
            let err = import(model(into), &path).expect_err(file).to_string();
            assert!(
                err.contains(&format!(
                    "holds timm's {file}, 10 classes, not timm's {into}"
                )),
                "{err}"
            );
        }
    }

    /// How an f32 value is written in another type.
    type Encode = fn(f32) -> Vec<u8>;

    /// `path`'s float tensors re-encoded by `to` as `dtype` into `out`; others kept.
    fn retyped(path: &Path, out: &Path, dtype: safetensors::Dtype, to: Encode) {
        let bytes = std::fs::read(path).expect("file");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data: Vec<u8> = view
                    .data()
                    .chunks_exact(4)
                    .flat_map(|b| to(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect();
                (name, view.shape().to_vec(), dtype, data)
            })
            .collect();
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, shape, dtype, data)| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
                (name.clone(), view.expect("view"))
            })
            .collect();
        safetensors::serialize_to_file(views, None, out).expect("write");
    }

    #[test]
    fn weights_in_f16_bf16_or_f64_load_cast_and_run_and_non_finite_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let config = ResNetConfig {
            depth: 18,
            width: 0.125,
            num_classes: 10,
            ..ResNetConfig::resnet50()
        };
        let device = Device::flex();
        device.seed(1);
        let a = config.init(&device).map(Network::from).expect("config");
        export(&a, &path).expect("export");
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let logits = |m: &Network| -> Vec<f32> {
            m.valid()
                .forward(x.clone())
                .into_data()
                .iter::<f32>()
                .collect()
        };
        let want = logits(&a);
        let cases: [(&str, safetensors::Dtype, Encode, f32); 3] = [
            (
                "F64",
                safetensors::Dtype::F64,
                |v| f64::from(v).to_le_bytes().to_vec(),
                0.0,
            ),
            (
                "F16",
                safetensors::Dtype::F16,
                |v| burn::tensor::f16::from_f32(v).to_le_bytes().to_vec(),
                2e-2,
            ),
            (
                "BF16",
                safetensors::Dtype::BF16,
                |v| burn::tensor::bf16::from_f32(v).to_le_bytes().to_vec(),
                5e-2,
            ),
        ];
        for (name, dtype, to, tolerance) in cases {
            let typed = dir.path().join(format!("{name}.safetensors"));
            retyped(&path, &typed, dtype, to);
            device.seed(2);
            let imported = import(
                config.init(&device).map(Network::from).expect("config"),
                &typed,
            )
            .expect(name);
            let note = imported.note.expect("the cast is said");
            assert!(note.contains(&format!("tensors {name}")), "{note}");
            // Every parameter is the model's type again: the forward runs (a file's F16 once
            // reached the first convolution and panicked), as close as the type allows.
            let got = logits(&imported.model);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst <= tolerance, "{name}: {worst}");
        }
        // NaN weights are refused by name, not evaluated.
        let nan = dir.path().join("nan.safetensors");
        retyped(&path, &nan, safetensors::Dtype::F32, |_| {
            f32::NAN.to_le_bytes().to_vec()
        });
        let err = import(
            config.init(&device).map(Network::from).expect("config"),
            &nan,
        )
        .expect_err("NaN");
        let text = err.to_string();
        assert!(
            text.contains("nan.safetensors: tensor ") && text.contains("NaN or infinite"),
            "{text}"
        );
    }
}
