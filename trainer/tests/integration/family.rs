//! timm's ResNet family, RegNetY, EfficientNet and ViT against timm itself (`trainer/golden/family.json`, written by
//! `trainer/golden/make_family_golden.py`): for each model at full size, the parameter count,
//! the exported state dict's names and shapes, and the eval-mode logits at 224 px on weights
//! both sides compute from one integer formula (the script's docstring gives it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use trainer::model::NetworkConfig;
use trainer::model::family::Shape;
use trainer::model::timm_weights;

use crate::common;

#[derive(serde::Deserialize)]
struct Golden {
    timm: String,
    models: BTreeMap<String, Model>,
}

#[derive(serde::Deserialize)]
struct Model {
    params: usize,
    tensors: Vec<(String, Vec<usize>)>,
    eval_logits: Vec<f64>,
}

fn golden() -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/family.json");
    let text = std::fs::read_to_string(&path).expect("family.json");
    serde_json::from_str(&text).expect("json")
}

/// splitmix64's output for `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The script's formula for tensor `k` (sorted name order) named `name` of `shape`.
fn formula(k: usize, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let scale = (6.0 / (n / shape[0]) as f64).sqrt();
    (0..n)
        .map(|i| {
            let bits = splitmix64(((k as u64) << 32) + i as u64) >> 11;
            let u = bits as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let v = if name.ends_with("running_var") {
                1.0 + u / 2.0
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                u / 10.0
            } else if shape.len() == 1 {
                0.5 + u / 4.0
            } else {
                u * scale
            };
            v as f32
        })
        .collect()
}

/// The formula's weights for `tensors`, as the bytes of a safetensors file.
fn formula_file(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
    let values: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            formula(k, name, shape)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&values)
        .map(|((name, shape), bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// The golden probe batch at 224 px: x[i] = 2·sin(0.001·i), NCHW.
fn probe(device: &Device) -> Tensor<4> {
    let shape = [2, 3, 224, 224];
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| ((i as f64) * 0.001).sin() as f32 * 2.0)
        .collect();
    Tensor::<4>::from_data(TensorData::new(values, shape), device)
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let norm = b.iter().map(|y| y * y).sum::<f64>();
    (diff / norm.max(1e-300)).sqrt()
}

/// Names and shapes of an exported file.
fn exported_tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>)> {
    let st = SafeTensors::deserialize(bytes).expect("safetensors");
    let mut all: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    all.sort();
    all
}

#[test]
fn each_family_model_has_timms_parameters_names_and_logits() {
    let _rng = common::burn_rng();
    let golden = golden();
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("tempdir");
    let x = probe(&device);
    let mut worst = (0.0f64, String::new());
    for (name, want) in &golden.models {
        let shape = Shape {
            num_classes: 1000,
            width: 1.0,
            small_stem: false,
            drop_path_rate: 0.0,
            img_size: None,
        };
        let model = NetworkConfig::named(name, shape)
            .expect("a model we build")
            .init(&device)
            .expect("config");
        assert_eq!(model.trainable_params(), want.params, "{name}: parameters");

        let ours = dir.path().join(format!("{name}.export.safetensors"));
        timm_weights::export(&model, &ours).expect("export");
        let names = exported_tensors(&std::fs::read(&ours).expect("export"));
        assert_eq!(names, want.tensors, "{name}: exported names and shapes");

        let theirs = dir.path().join(format!("{name}.formula.safetensors"));
        std::fs::write(&theirs, formula_file(&want.tensors)).expect("write");
        let model = timm_weights::import(model, &theirs).expect("import").model;
        let logits: Vec<f64> = model
            .forward(x.clone())
            .into_data()
            .iter::<f32>()
            .map(f64::from)
            .collect();
        let rel = relative(&logits, &want.eval_logits);
        println!(
            "{name}: {} parameters, {} tensors as timm's, eval logits {rel:.2e} from timm {} (float64)",
            want.params,
            want.tensors.len(),
            golden.timm
        );
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert!(golden.models.contains_key("resnext50_32x4d") && golden.models.len() >= 5);
    assert!(golden.models.contains_key("vit_small_patch16_224"));
    assert!(golden.models.contains_key("regnety_040"));
    assert!(golden.models.contains_key("efficientnet_b0"));
    let (rel, name) = worst;
    assert!(
        rel < 1e-5,
        "{name}: eval logits differ from timm's by {rel:.2e}"
    );
}

#[test]
fn each_family_member_trains_and_resumes_exactly() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let shards = common::dataset(dir.path());
    // The paper's four beyond ResNet: deep stems (plain and tiered), avg_down, groups, SE, ECA.
    for model in [
        "resnet50d",
        "resnext50_32x4d",
        "seresnet50",
        "ecaresnet50t",
        "regnety_040",
        "efficientnet_b0",
        "vit_small_patch16_224",
    ] {
        let options = |out: &str, max_steps, resume| {
            let mut config = common::tiny_recipe();
            config.model = model.to_string();
            common::options(config, &shards, dir.path().join(out), max_steps, resume)
        };
        let whole = format!("{model}-whole");
        let split = format!("{model}-split");
        trainer::run::train(&options(&whole, 4, false), &mut |_| {}).expect("train");
        trainer::run::train(&options(&split, 2, false), &mut |_| {}).expect("train");
        trainer::run::train(&options(&split, 4, true), &mut |_| {}).expect("resume");
        let whole = common::losses(&dir.path().join(whole));
        assert_eq!(whole.len(), 4, "{model}");
        assert!(
            whole.iter().all(|(_, l)| l.is_finite()),
            "{model}: {whole:?}"
        );
        assert_eq!(
            common::losses(&dir.path().join(split)),
            whole,
            "{model}: losses after the resume differ"
        );
        println!("{model}: 4 steps, resumed after 2 with the same losses: {whole:?}");
    }
}
