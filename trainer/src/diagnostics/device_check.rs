//! Same weights, same batch, two devices: how far apart are the logits and the gradients?
//!
//! This is how the CUDA backend is checked against the CPU one (DESIGN.md "Backends"). Both
//! models run a training-mode forward (batch statistics), a BCE loss against fixed one-hot
//! targets and a backward, then an eval-mode forward with the running statistics.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};

use crate::model::resnet::{ResNet, ResNetConfig};
use crate::step::loss::bce_with_logits;
use crate::step::mixup::labels_tensor;

/// One compared quantity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    /// What was compared (`logits/train`, `grad/conv1.weight`, ...).
    pub name: String,
    /// ‖target − reference‖ / ‖reference‖, in f64.
    pub relative: f64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// ‖reference‖: a zero here means the comparison proves nothing.
    pub reference_norm: f64,
}

/// Copies every float parameter of `from` into `to` (same architecture), onto `to`'s devices
/// and in their default float type.
pub(crate) fn copy_params(from: &ResNet, to: ResNet) -> ResNet {
    struct Collect(Vec<TensorData>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().to_data());
        }
    }
    struct Replace(std::vec::IntoIter<TensorData>);
    impl ModuleMapper for Replace {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.next() {
                Some(data) => param.map(|t| {
                    let device = t.device();
                    let dtype = t.dtype();
                    let tracked = t.is_require_grad();
                    Tensor::<D>::from_data(data, &device)
                        .cast(dtype)
                        .set_require_grad(tracked)
                }),
                None => param,
            }
        }
    }
    let mut collect = Collect(Vec::new());
    from.visit(&mut collect);
    to.map(&mut Replace(collect.0.into_iter()))
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.cast(FloatDType::F32)
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect()
}

fn compare(name: &str, reference: &[f64], target: &[f64]) -> Difference {
    let (mut diff2, mut ref2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (r, t) in reference.iter().zip(target) {
        let d = if t.is_nan() { f64::INFINITY } else { t - r };
        diff2 += d * d;
        ref2 += r * r;
        max_abs = max_abs.max(d.abs());
    }
    let relative = if reference.len() != target.len() {
        f64::INFINITY
    } else if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    Difference {
        name: name.to_string(),
        // A zero reference (a gradient that does not flow) cannot vouch for anything.
        relative: if ref2 > 0.0 { relative } else { f64::INFINITY },
        max_abs,
        reference_norm: ref2.sqrt(),
    }
}

/// What one device computed.
struct Outputs {
    dtype: String,
    train_logits: Vec<f64>,
    eval_logits: Vec<f64>,
    loss: Vec<f64>,
    grads: Vec<(&'static str, Vec<f64>)>,
}

fn run(model: &ResNet, x: &TensorData, labels: &[u32], classes: usize, device: &Device) -> Outputs {
    let input = Tensor::<4>::from_data(x.clone(), device);
    let targets = labels_tensor(labels, device).one_hot::<2>(classes).float();
    let logits = model.forward(input.clone());
    let loss = bce_with_logits(logits.clone(), targets, None);
    let grads = loss.backward();
    let last = |layer: &[crate::model::resnet::Block]| layer.last().map(|b| b.conv2.weight.val());
    let mut wanted: Vec<(&'static str, Option<Tensor<4>>)> = vec![
        ("conv1.weight", Some(model.conv1.weight.val())),
        (
            "layer1.0.conv1.weight",
            model.layer1.first().map(|b| b.conv1.weight.val()),
        ),
        ("layer4.-1.conv2.weight", last(&model.layer4)),
    ];
    if let Some(d) = model.layer3.first().and_then(|b| b.downsample.as_ref()) {
        wanted.push(("layer3.0.downsample.0.weight", Some(d.conv.weight.val())));
    }
    let mut out_grads: Vec<(&'static str, Vec<f64>)> = wanted
        .into_iter()
        .filter_map(|(name, p)| p.and_then(|p| p.grad(&grads)).map(|g| (name, host(g))))
        .collect();
    if let Some(g) = model.fc.weight.val().grad(&grads) {
        out_grads.push(("fc.weight", host(g)));
    }
    if let Some(g) = model.bn1.gamma.val().grad(&grads) {
        out_grads.push(("bn1.weight", host(g)));
    }
    let dtype = format!("{:?}", logits.dtype());
    let valid = model.valid();
    let eval_logits = host(valid.forward(input.inner()));
    Outputs {
        dtype,
        train_logits: host(logits),
        eval_logits,
        loss: host(loss),
        grads: out_grads,
    }
}

/// Builds `config` on `reference` (seeded; use `zero_init_last: false`, or the gradients of
/// the residual branches are all zero), copies it to `target`, runs both on one random
/// batch of `[batch, 3, size, size]` and returns every difference. Both devices must record
/// gradients (`.autodiff()`). `compute`: the float type the (reference, target) models'
/// convolutions and classifier compute in (amp, [`crate::model::amp`]).
pub fn compare_devices(
    config: &ResNetConfig,
    batch: usize,
    size: usize,
    seed: u64,
    reference: &Device,
    target: &Device,
    compute: [Option<FloatDType>; 2],
) -> Result<Vec<Difference>, crate::model::resnet::ConfigError> {
    reference.seed(seed);
    let mut a = config.init(reference)?;
    let mut b = copy_params(&a, config.init(target)?);
    (a.compute, b.compute) = (compute[0], compute[1]);
    let x = Tensor::<4>::random(
        [batch, 3, size, size],
        Distribution::Normal(0.0, 1.0),
        reference,
    )
    .inner()
    .into_data();
    let labels: Vec<u32> = (0..batch)
        .map(|i| ((i as u64 * 7919 + seed) % config.num_classes as u64) as u32)
        .collect();
    let ra = run(&a, &x, &labels, config.num_classes, reference);
    let rb = run(&b, &x, &labels, config.num_classes, target);
    let mut out = vec![
        Difference {
            name: format!("(logits dtype: {} vs {})", ra.dtype, rb.dtype),
            relative: 0.0,
            max_abs: 0.0,
            reference_norm: 0.0,
        },
        compare("logits/train", &ra.train_logits, &rb.train_logits),
        compare("logits/eval", &ra.eval_logits, &rb.eval_logits),
        compare("loss", &ra.loss, &rb.loss),
    ];
    for ((name, ga), (_, gb)) in ra.grads.iter().zip(&rb.grads) {
        out.push(compare(&format!("grad/{name}"), ga, gb));
    }
    if ra.grads.len() != rb.grads.len() {
        out.push(Difference {
            name: "grad/count".into(),
            relative: f64::INFINITY,
            max_abs: f64::INFINITY,
            reference_norm: 0.0,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ResNetConfig {
        ResNetConfig {
            depth: 18,
            num_classes: 10,
            width: 0.125,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: false,
        }
    }

    #[test]
    fn same_backend_after_copy_is_bit_identical() {
        let device = Device::flex().autodiff();
        let diffs =
            compare_devices(&small(), 2, 8, 3, &device, &device, [None; 2]).expect("config");
        assert!(diffs.len() >= 8, "{diffs:?}");
        for d in diffs.into_iter().skip(1) {
            assert_eq!(d.relative, 0.0, "{d:?}");
            assert!(d.reference_norm > 0.0, "{d:?}");
        }
    }

    #[test]
    fn amp_against_f32_differs_by_bf16_rounding_only() {
        let device = Device::flex().autodiff();
        let diffs = compare_devices(
            &small(),
            4,
            16,
            3,
            &device,
            &device,
            [None, Some(crate::model::amp::COMPUTE)],
        )
        .expect("config");
        // Logits in f32 (the master type); forward and loss as close as bf16's 8-bit mantissa
        // allows. Gradients of the early convolutions differ by tens of percent, as under
        // PyTorch's autocast: timm's resnet18 (zero_init_last off), 64 images of 32 px, BCE,
        // autocast bf16 against f32 on the CPU, torch 2.15: logits 0.041, conv1.weight 0.41,
        // bn1.weight 0.46, layer1.0.conv1.weight 0.40, layer4.1.conv2.weight 0.23,
        // fc.weight 0.0086 (relative). BN's backward cancels most of each gradient.
        assert!(diffs[0].name.contains("F32 vs F32"), "{}", diffs[0].name);
        let bound = |name: &str| match name {
            "logits/train" | "logits/eval" => 5e-2,
            "loss" | "grad/fc.weight" => 2e-2,
            _ => 0.6,
        };
        for d in diffs.iter().skip(1) {
            assert!(d.relative > 0.0 && d.relative < bound(&d.name), "{d:?}");
        }
    }

    #[test]
    fn a_perturbed_copy_is_detected() {
        let device = Device::flex().autodiff();
        let config = small();
        device.seed(5);
        let a = config.init(&device).expect("config");
        let mut b = copy_params(&a, config.init(&device).expect("config"));
        b.fc.weight = b.fc.weight.map(|w| w.add_scalar(1e-2));
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device)
            .inner()
            .into_data();
        let ra = run(&a, &x, &[1, 2], 10, &device);
        let rb = run(&b, &x, &[1, 2], 10, &device);
        let d = compare("logits/train", &ra.train_logits, &rb.train_logits);
        assert!(d.relative > 1e-4, "{d:?}");
    }
}
