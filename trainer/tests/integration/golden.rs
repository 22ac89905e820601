//! Our trainer against values computed by timm and torch (`trainer/golden/make_golden.py`, whose
//! docstring says exactly what each file holds): the ResNet-50 forward pass in eval and train
//! mode, timm's state dict round trip, 100 LAMB steps, the A1/A2/A3 LR schedules, and
//! Mixup/CutMix with BCE and cross-entropy.
//!
//! The golden files are committed, so these tests need neither Python nor torch. Each prints
//! the difference it measured.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use trainer::model::Network;
use trainer::model::family::Family;
use trainer::model::resnet::ResNetConfig;
use trainer::model::timm_weights;
use trainer::optim::lamb::{LambOptions, TimmLamb};
use trainer::recipe::TrainConfig;
use trainer::step::loss::{bce_with_logits, soft_target_cross_entropy};
use trainer::step::mixup::{MixParams, MixupConfig};

use crate::common;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// Every tensor of a safetensors file as f64 values with its (PyTorch) shape.
fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).expect("golden file");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let norm = b.iter().map(|y| y * y).sum::<f64>();
    (diff / norm.max(1e-300)).sqrt()
}

/// Our model with the structure of the golden one: ResNet-50 at 1/16 width, timm's stem.
fn tiny_resnet50(device: &Device) -> Network {
    let config = ResNetConfig {
        depth: 50,
        num_classes: 5,
        width: 0.0625,
        small_stem: false,
        drop_path_rate: 0.0,
        zero_init_last: true,
        variant: Default::default(),
    };
    let model = config.init(device).map(Network::from).expect("config");
    timm_weights::import(model, &golden("resnet50_w16.safetensors"))
        .expect("golden weights load")
        .model
}

/// The probe batch of `make_golden.py` and `trainer logits`: x[i] = 2·sin(0.001·i), NCHW.
fn probe(device: &Device) -> Tensor<4> {
    let n = 2 * 3 * 64 * 64;
    let values: Vec<f32> = (0..n)
        .map(|i| ((i as f64) * 0.001).sin() as f32 * 2.0)
        .collect();
    Tensor::<4>::from_data(TensorData::new(values, [2, 3, 64, 64]), device)
}

fn host(t: Tensor<2>) -> Vec<f64> {
    t.into_data().iter::<f32>().map(f64::from).collect()
}

/// Our state dict under timm's names, read back from an export.
fn exported(model: &Network) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ours.safetensors");
    timm_weights::export(model, &path).expect("export");
    read_tensors(&path)
}

#[test]
fn timms_state_dict_round_trips_bit_exactly() {
    let _rng = common::burn_rng();
    let model = tiny_resnet50(&Device::flex());
    let theirs = read_tensors(&golden("resnet50_w16.safetensors"));
    let ours = exported(&model);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, (shape, values)) in &theirs {
        let (our_shape, our_values) = &ours[name];
        assert_eq!(our_shape, shape, "{name}");
        let same = our_values
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name} changed in the round trip");
    }
    println!(
        "{} tensors of timm's state dict round-trip bit-exactly",
        theirs.len()
    );
}

#[test]
fn eval_logits_equal_timms() {
    let _rng = common::burn_rng();
    let device = Device::flex();
    let model = tiny_resnet50(&device);
    let want = &read_tensors(&golden("forward.safetensors"))["eval.logits"].1;
    let got = host(model.forward(probe(&device)));
    let rel = relative(&got, want);
    println!("eval logits: relative difference {rel:.2e} to timm (float64)");
    assert!(rel < 1e-5, "eval logits differ from timm's by {rel:.2e}");
}

#[test]
fn train_mode_logits_and_running_statistics_equal_timms() {
    let _rng = common::burn_rng();
    let device = Device::flex().autodiff();
    let model = tiny_resnet50(&device);
    let golden = read_tensors(&golden("forward.safetensors"));
    let got = host(model.forward(probe(&device)));
    let rel = relative(&got, &golden["train.logits"].1);
    println!("train logits: relative difference {rel:.2e}");
    // Batch statistics over 2 images amplify float32 rounding: torch's own float32 forward is
    // 7.3e-5 away from this float64 reference.
    assert!(
        rel < 3e-4,
        "train-mode logits differ from timm's by {rel:.2e}"
    );
    // PyTorch's running update: momentum 0.1, unbiased batch variance.
    let ours = exported(&model);
    let mut worst = (0.0f64, String::new());
    let mut compared = 0;
    for (name, (_, want)) in &golden {
        let Some(key) = name.strip_prefix("train.") else {
            continue;
        };
        if !key.contains("running_") {
            continue;
        }
        let rel = relative(&ours[key].1, want);
        if rel > worst.0 {
            worst = (rel, key.to_string());
        }
        compared += 1;
    }
    println!(
        "running statistics after one training forward: {compared} tensors, worst {:.2e} ({})",
        worst.0, worst.1
    );
    assert_eq!(compared, 53 * 2);
    assert!(worst.0 < 1e-4, "{} differs by {:.2e}", worst.1, worst.0);
}

/// Gradients for step `t` under timm's names: tensor k (sorted name order), element i.
fn golden_gradients(
    shapes: &BTreeMap<String, Vec<usize>>,
    t: usize,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let scale = [0.05, 1e-4, 0.004][t % 3];
    shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let g = (0..n)
                .map(|i| (scale * (0.01 * i as f64 + 0.7 * k as f64 + 1.3 * t as f64).sin()) as f32)
                .collect();
            (name.clone(), (shape.clone(), g))
        })
        .collect()
}

/// timm's name of each trainable parameter of `model`, by burn id, with whether burn stores it
/// transposed (the linear weight: burn `[in, out]`, PyTorch `[out, in]`).
fn timm_names(model: &Network) -> HashMap<ParamId, (String, bool)> {
    struct Walk {
        path: Vec<String>,
        trainable: Vec<ParamId>,
        out: HashMap<ParamId, (String, bool)>,
    }
    impl ModuleVisitor for Walk {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if !self.trainable.contains(&p.id) {
                return;
            }
            let name = self
                .path
                .join(".")
                .replace(".downsample.conv.", ".downsample.0.")
                .replace(".downsample.bn.", ".downsample.1.")
                .replace(".gamma", ".weight")
                .replace(".beta", ".bias");
            self.out.insert(p.id, (name, D == 2));
        }
    }
    let mut trainable = Vec::new();
    model.for_each_trainable(|p| trainable.push(p.id));
    let mut walk = Walk {
        path: Vec::new(),
        trainable,
        out: HashMap::new(),
    };
    model.visit_family(&mut walk);
    walk.out
}

/// The golden gradients keyed by `model`'s parameter ids, in burn's layouts.
fn as_gradients(
    model: &Network,
    names: &HashMap<ParamId, (String, bool)>,
    grads: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> GradientsParams {
    struct Make<'a> {
        names: &'a HashMap<ParamId, (String, bool)>,
        grads: &'a BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        out: GradientsParams,
    }
    impl ModuleVisitor for Make<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let Some((name, transposed)) = self.names.get(&p.id) else {
                return;
            };
            let (shape, values) = &self.grads[name];
            let device = p.val().inner().device();
            let g = Tensor::<D>::from_data(TensorData::new(values.clone(), shape.clone()), &device);
            let g = if *transposed { g.transpose() } else { g };
            assert_eq!(g.dims(), p.val().dims(), "{name}");
            self.out.register(p.id, g);
        }
    }
    let mut make = Make {
        names,
        grads,
        out: GradientsParams::new(),
    };
    model.visit(&mut make);
    make.out
}

#[test]
fn one_hundred_lamb_steps_equal_timms_lamb() {
    let _rng = common::burn_rng();
    let device = Device::flex().autodiff();
    let mut model = tiny_resnet50(&device);
    let want = read_tensors(&golden("lamb100.safetensors"));
    let shapes: BTreeMap<String, Vec<usize>> = want
        .iter()
        .map(|(k, (shape, _))| (k.clone(), shape.clone()))
        .collect();
    let mut ids_before = Vec::new();
    model.for_each_trainable(|p| ids_before.push(p.id));
    assert_eq!(
        ids_before.len(),
        shapes.len(),
        "trainable tensors vs timm's"
    );

    let mut lamb = TimmLamb::new(&LambOptions::timm(0.02), &model);
    let names = timm_names(&model);
    let mut mapped: Vec<&String> = names.values().map(|(n, _)| n).collect();
    mapped.sort();
    assert_eq!(mapped, shapes.keys().collect::<Vec<_>>(), "timm names");
    for t in 0..100 {
        let grads = as_gradients(&model, &names, &golden_gradients(&shapes, t));
        model = lamb.step(5e-3 * (t + 1) as f64 / 100.0, model, grads);
    }
    let ours = exported(&model);
    let mut worst = (0.0f64, String::new());
    for (name, (_, values)) in &want {
        let rel = relative(&ours[name].1, values);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    println!(
        "100 LAMB steps: {} tensors, worst relative difference {:.2e} ({})",
        want.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 < 1e-5, "{} differs by {:.2e}", worst.1, worst.0);
    // The steps moved the weights far more than the tolerance: the comparison can fail.
    let init = read_tensors(&golden("resnet50_w16.safetensors"));
    let moved = relative(&init["fc.weight"].1, &want["fc.weight"].1);
    assert!(moved > 1e-3, "fc.weight moved only {moved:.2e}");
}

#[derive(serde::Deserialize)]
struct Schedules {
    a1: EpochLrs,
    a2: EpochLrs,
    a3: EpochLrs,
    a3_on_updates: UpdateLrs,
}

#[derive(serde::Deserialize)]
struct EpochLrs {
    epochs: u64,
    lr: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct UpdateLrs {
    updates_per_epoch: u64,
    lr: Vec<f64>,
}

fn recipe(name: &str) -> TrainConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    TrainConfig::load(&path, &trainer::recipe::Overrides::none())
        .expect("recipe")
        .config
}

#[test]
fn lr_schedules_equal_timms_cosine_scheduler_at_every_epoch() {
    let _rng = common::burn_rng();
    let text = std::fs::read_to_string(golden("schedule.json")).expect("schedule.json");
    let golden: Schedules = serde_json::from_str(&text).expect("json");
    for (name, want) in [("a1", golden.a1), ("a2", golden.a2), ("a3", golden.a3)] {
        let config = recipe(&format!("{name}.toml"));
        assert_eq!(
            config.epochs + config.cooldown_epochs,
            want.epochs,
            "{name}"
        );
        let schedule = config.schedule();
        let mut worst = 0.0f64;
        for (epoch, &lr) in want.lr.iter().enumerate() {
            // Any step of the epoch: per-epoch stepping.
            let got = schedule.lr(epoch as u64, 3, 10);
            worst = worst.max((got - lr).abs() / lr);
        }
        println!(
            "{name}: {} epochs, worst relative difference {worst:.1e}",
            want.epochs
        );
        assert!(worst < 1e-12, "{name}: {worst:.2e}");
    }
    let mut config = recipe("a3.toml");
    config.sched_on_updates = true;
    let schedule = config.schedule();
    let upe = golden.a3_on_updates.updates_per_epoch;
    let mut worst = 0.0f64;
    for (u, &lr) in golden.a3_on_updates.lr.iter().enumerate() {
        let u = u as u64;
        let got = schedule.lr(u / upe, u % upe, upe);
        worst = worst.max((got - lr).abs() / lr);
    }
    println!("a3 per update: worst relative difference {worst:.1e}");
    assert!(worst < 1e-12, "a3 on updates: {worst:.2e}");
}

#[derive(serde::Deserialize)]
struct MixupGolden {
    shape: [usize; 4],
    num_classes: usize,
    smoothing: f64,
    bce_target_thresh: f64,
    images: Vec<u8>,
    labels: Vec<u32>,
    logits: Vec<f32>,
    label_smoothing_ce_f64: f64,
    cases: Vec<MixupCase>,
}

#[derive(serde::Deserialize)]
struct MixupCase {
    lam: f64,
    cutmix: bool,
    #[serde(rename = "box")]
    cutmix_box: Option<[usize; 4]>,
    corrected_lam: f64,
    mixed: Vec<u8>,
    targets: Vec<f64>,
    bce: f64,
    ce_f64: f64,
}

#[test]
fn mixup_cutmix_targets_and_bce_equal_timms() {
    let _rng = common::burn_rng();
    let text = std::fs::read_to_string(golden("mixup.json")).expect("mixup.json");
    let g: MixupGolden = serde_json::from_str(&text).expect("json");
    let device = Device::flex();
    let [b, c, h, w] = g.shape;
    let images: Vec<f32> = g.images.iter().map(|&v| f32::from(v)).collect();
    let config = MixupConfig {
        label_smoothing: g.smoothing,
        num_classes: g.num_classes,
        ..MixupConfig::a1(g.num_classes)
    };
    let labels: Vec<i64> = g.labels.iter().map(|&l| i64::from(l)).collect();
    for case in &g.cases {
        let params = match case.cutmix_box {
            Some(bx) if case.cutmix => MixParams::cutmix(bx, h, w),
            _ => MixParams {
                lam: case.lam,
                cutmix_box: None,
            },
        };
        assert_eq!(params.lam, case.corrected_lam, "λ of case {}", case.lam);
        let x = Tensor::<4>::from_data(TensorData::new(images.clone(), [b, c, h, w]), &device);
        let mixed: Vec<f32> = params.mix_pixels(x).into_data().iter::<f32>().collect();
        let differ = mixed
            .iter()
            .zip(&case.mixed)
            .filter(|(a, b)| **a != f32::from(**b))
            .count();
        assert_eq!(differ, 0, "case λ={}: {differ} pixels differ", case.lam);

        let label_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [b]), &device);
        let targets = params.targets(label_tensor, &config);
        let got: Vec<f64> = targets
            .clone()
            .into_data()
            .iter::<f32>()
            .map(f64::from)
            .collect();
        let worst = got
            .iter()
            .zip(&case.targets)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-7,
            "case λ={}: targets differ by {worst:e}",
            case.lam
        );

        let logits = Tensor::<2>::from_data(
            TensorData::new(g.logits.clone(), [b, g.num_classes]),
            &device,
        );
        let ce: f32 = soft_target_cross_entropy(logits.clone(), targets.clone()).into_scalar();
        let ce_rel = (f64::from(ce) - case.ce_f64).abs() / case.ce_f64;
        assert!(
            ce_rel < 1e-6,
            "case λ={}: CE {ce} vs {}",
            case.lam,
            case.ce_f64
        );
        if case.lam == 1.0 {
            // Targets smoothed without mixing: timm's LabelSmoothingCrossEntropy.
            let rel = (f64::from(ce) - g.label_smoothing_ce_f64).abs() / g.label_smoothing_ce_f64;
            assert!(
                rel < 1e-6,
                "label-smoothing CE {ce} vs {}",
                g.label_smoothing_ce_f64
            );
        }
        let loss: f32 = bce_with_logits(logits, targets, Some(g.bce_target_thresh)).into_scalar();
        let rel = (f64::from(loss) - case.bce).abs() / case.bce;
        println!(
            "λ={} {}: pixels equal, targets within {worst:.1e}, BCE {loss} vs timm {} ({rel:.1e}), CE within {ce_rel:.1e}",
            case.lam,
            if case.cutmix { "cutmix" } else { "mixup" },
            case.bce
        );
        assert!(
            rel < 1e-6,
            "case λ={}: BCE {loss} vs {}",
            case.lam,
            case.bce
        );
    }
    // The cases cover both modes and no mix at all.
    assert!(g.cases.iter().any(|c| c.cutmix) && g.cases.iter().any(|c| c.lam == 1.0));
}
