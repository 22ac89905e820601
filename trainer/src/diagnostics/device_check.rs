//! Same weights, same batch, two devices: how far apart are the logits and the gradients?
//!
//! This is how the CUDA backend and its CPU stand-in (`cube-cpu`) are checked against flex
//! (docs/design.md "Backends"). Both models run a training-mode forward (batch statistics), a BCE
//! loss against fixed one-hot targets and a backward, an eval-mode forward with the running
//! statistics, then one LAMB step; every gradient, running statistic and update is compared.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, FloatDType, Gradients, Tensor, TensorData};

use crate::model::seeded::copy_params;
use crate::model::{Network, NetworkConfig};
use crate::optim::lamb::{LambOptions, TimmLamb};
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
    /// Every trainable parameter's gradient, by its module path.
    grads: Vec<(String, Vec<f64>)>,
    /// Every BN running statistic after the training forward.
    stats: Vec<(String, Vec<f64>)>,
    /// Every trainable parameter's change in one LAMB step (after − before): the parameters
    /// themselves would hide a wrong update under their own norm.
    updates: Vec<(String, Vec<f64>)>,
}

/// Host copies of `model`'s float parameters by module path (`layer1.0.conv1.weight`):
/// `grads` given, their gradients (those without one are left out); else their values.
fn named_values(model: &Network, grads: Option<&Gradients>) -> Vec<(String, Vec<f64>)> {
    struct Walk<'a> {
        path: Vec<String>,
        grads: Option<&'a Gradients>,
        out: Vec<(String, Vec<f64>)>,
    }
    impl ModuleVisitor for Walk<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = match self.grads {
                Some(grads) => param.val().grad(grads),
                None => Some(param.val()),
            };
            if let Some(value) = value {
                self.out.push((self.path.join("."), host(value)));
            }
        }
    }
    let mut walk = Walk {
        path: Vec::new(),
        grads,
        out: Vec::new(),
    };
    model.visit_family(&mut walk);
    walk.out
}

fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

fn run(model: Network, x: &TensorData, labels: &[u32], classes: usize, device: &Device) -> Outputs {
    let input = Tensor::<4>::from_data(x.clone(), device);
    let targets = labels_tensor(labels, device).one_hot::<2>(classes).float();
    let logits = model.forward(input.clone());
    let loss = bce_with_logits(logits.clone(), targets, None);
    let backward = loss.backward();
    let grads = named_values(&model, Some(&backward));
    let dtype = format!("{:?}", logits.dtype());
    let valid = model.valid();
    let eval_logits = host(valid.forward(input.inner()));
    let (stats, before): (Vec<_>, Vec<_>) = named_values(&valid, None)
        .into_iter()
        .partition(|(name, _)| is_running_stat(name));
    // One LAMB step as the recipes take it (decay and the trust ratio on the weights, none on
    // BN and biases, the global norm clip) at A1's peak learning rate.
    let params = GradientsParams::from_grads(backward, &model);
    let mut lamb = TimmLamb::new(&LambOptions::timm(0.01), &model);
    let stepped = lamb.step(5e-3, model, params);
    let updates = named_values(&stepped, None)
        .into_iter()
        .filter(|(name, _)| !is_running_stat(name))
        .zip(before)
        .map(|((name, after), (_, before))| {
            let delta = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            (name, delta)
        })
        .collect();
    Outputs {
        dtype,
        train_logits: host(logits),
        eval_logits,
        loss: host(loss),
        grads,
        stats,
        updates,
    }
}

/// Pairs `target`'s named tensors with `reference`'s by name, each compared under `prefix`; a
/// name on one side only is a difference of its own (a gradient one backend did not produce).
fn compare_named(
    prefix: &str,
    reference: &[(String, Vec<f64>)],
    target: &[(String, Vec<f64>)],
) -> Vec<Difference> {
    let mut out: Vec<Difference> = reference
        .iter()
        .map(|(name, r)| match target.iter().find(|(n, _)| n == name) {
            Some((_, t)) => compare(&format!("{prefix}/{name}"), r, t),
            None => Difference {
                name: format!("{prefix}/{name} (missing on the target)"),
                relative: f64::INFINITY,
                max_abs: f64::INFINITY,
                reference_norm: 0.0,
            },
        })
        .collect();
    for (name, _) in target {
        if !reference.iter().any(|(n, _)| n == name) {
            out.push(Difference {
                name: format!("{prefix}/{name} (missing on the reference)"),
                relative: f64::INFINITY,
                max_abs: f64::INFINITY,
                reference_norm: 0.0,
            });
        }
    }
    out
}

/// The seeded model, batch and labels every comparison starts from.
fn inputs(
    config: &NetworkConfig,
    batch: usize,
    size: usize,
    seed: u64,
    device: &Device,
) -> Result<(Network, TensorData, Vec<u32>), crate::model::family::ConfigError> {
    device.seed(seed);
    let model = config.init(device)?;
    let x = Tensor::<4>::random(
        [batch, 3, size, size],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .inner()
    .into_data();
    let labels: Vec<u32> = (0..batch)
        .map(|i| ((i as u64 * 7919 + seed) % config.num_classes() as u64) as u32)
        .collect();
    Ok((model, x, labels))
}

/// Every difference between two runs' outputs (see [`compare_devices`]).
fn differences(ra: &Outputs, rb: &Outputs) -> Vec<Difference> {
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
    // All gradients as one vector: per tensor, a BN parameter's gradient that cancels to
    // near zero can differ by more than itself under bf16; the whole does not.
    let all = |named: &[(String, Vec<f64>)]| -> Vec<f64> {
        named.iter().flat_map(|(_, v)| v.iter().copied()).collect()
    };
    if ra.grads.len() == rb.grads.len() {
        out.push(compare("grads (all)", &all(&ra.grads), &all(&rb.grads)));
    }
    out.extend(compare_named("grad", &ra.grads, &rb.grads));
    out.extend(compare_named("stat", &ra.stats, &rb.stats));
    out.extend(compare_named("update", &ra.updates, &rb.updates));
    out
}

/// Builds `config` on `reference` (seeded; use `zero_init_last: false`, or the gradients of
/// the residual branches are all zero), copies it to `target`, runs both on one random
/// batch of `[batch, 3, size, size]` and returns every difference: the logits in training and
/// in eval mode, the loss, every parameter's gradient (`grad/...`), every BN running statistic
/// after the forward (`stat/...`) and every parameter's change in one LAMB step
/// (`update/...`). Both devices must record gradients (`.autodiff()`). `compute`: the float
/// type the (reference, target) models' convolutions and classifier compute in (amp,
/// [`crate::model::amp`]).
pub fn compare_devices(
    config: &NetworkConfig,
    batch: usize,
    size: usize,
    seed: u64,
    reference: &Device,
    target: &Device,
    compute: [Option<FloatDType>; 2],
) -> Result<Vec<Difference>, crate::model::family::ConfigError> {
    let (mut a, x, labels) = inputs(config, batch, size, seed, reference)?;
    let mut b = copy_params(&a, config.init(target)?);
    a.set_compute(compute[0]);
    b.set_compute(compute[1]);
    let ra = run(a, &x, &labels, config.num_classes(), reference);
    let rb = run(b, &x, &labels, config.num_classes(), target);
    Ok(differences(&ra, &rb))
}

/// `x` with every element scaled by 1 ± `epsilon`, up or down at random: with the machine
/// epsilon of the type the model computes in, the smallest change a rounding of that type
/// makes to an input.
fn nudged(x: &TensorData, seed: u64, epsilon: f64) -> TensorData {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let values: Vec<f32> = x
        .iter::<f32>()
        .map(|v| {
            // splitmix64: one bit per element decides the direction.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let sign = if (z ^ (z >> 31)) & 1 == 1 { 1.0 } else { -1.0 };
            (f64::from(v) * (1.0 + sign * epsilon)) as f32
        })
        .collect();
    TensorData::new(values, x.shape().clone())
}

/// The noise floor of a comparison: the same model on the same `device` run twice, on the
/// batch [`compare_devices`] uses and on that batch scaled element by element by 1 ± `epsilon`
/// (the compute type's machine epsilon, [`crate::device::Precision::epsilon`]). Two
/// correct backends differ at least this much wherever their roundings differ, because the
/// model amplifies a rounding as it amplifies this nudge; a difference far above it is a
/// backend's, a difference near it is the model's conditioning.
pub fn rounding_floor(
    config: &NetworkConfig,
    batch: usize,
    size: usize,
    seed: u64,
    device: &Device,
    compute: Option<FloatDType>,
    epsilon: f64,
) -> Result<Vec<Difference>, crate::model::family::ConfigError> {
    let (mut a, x, labels) = inputs(config, batch, size, seed, device)?;
    a.set_compute(compute);
    let mut b = copy_params(&a, config.init(device)?);
    b.set_compute(compute);
    let ra = run(a, &x, &labels, config.num_classes(), device);
    let rb = run(
        b,
        &nudged(&x, seed, epsilon),
        &labels,
        config.num_classes(),
        device,
    );
    Ok(differences(&ra, &rb))
}

/// How many times the rounding floor a difference may be and still be the model's
/// conditioning rather than a backend's: cube-cpu against flex, ResNet-50 at 64 px, measured
/// 0.5–1.7× the floor in f32, amp and bf16, every tensor.
pub const FLOOR_FACTOR: f64 = 4.0;

/// What one difference says about the device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the tolerance.
    Ok,
    /// Over the tolerance, but within [`FLOOR_FACTOR`] times what one rounding of the input
    /// does to the reference itself: the model's conditioning, not the device's.
    WithinFloor,
    /// The reference moves from itself as much as the device does (the floor's bound reaches
    /// 1, no correlation left): this quantity cannot judge a backend at this size and type.
    Noise,
    /// Beyond both: the device computes something else.
    Over,
}

impl Verdict {
    /// `relative` judged against `tolerance` and the rounding `floor` (see [`rounding_floor`]);
    /// `factor` 0 judges by the tolerance alone.
    pub fn of(relative: f64, floor: f64, tolerance: f64, factor: f64) -> Verdict {
        let bound = factor * floor;
        if relative <= tolerance {
            Verdict::Ok
        } else if !bound.is_finite() || bound <= 0.0 {
            Verdict::Over
        } else if bound >= 1.0 {
            // Past 2 the two are not even the same size: something else, whatever the floor.
            if relative <= bound.max(2.0) {
                Verdict::Noise
            } else {
                Verdict::Over
            }
        } else if relative <= bound {
            Verdict::WithinFloor
        } else {
            Verdict::Over
        }
    }

    /// The word printed beside the figure.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::WithinFloor => "ok (floor)",
            Verdict::Noise => "noise",
            Verdict::Over => "OVER",
        }
    }
}

/// The kinds of tensors judged as groups (each group's worst on one line), by name prefix.
pub const GROUPS: [(&str, &str); 3] = [
    ("grad/", "gradients"),
    ("stat/", "BN running statistics"),
    ("update/", "LAMB step's updates"),
];

/// The rules that judge a comparison: each difference against the tolerance and its rounding
/// floor (see [`Verdict`]).
#[derive(Debug, Clone)]
pub struct Judge {
    /// Each tensor's rounding floor ([`rounding_floor`]), by name.
    floor: std::collections::HashMap<String, f64>,
    tolerance: f64,
    floor_factor: f64,
}

impl Judge {
    /// Rules from the reference's rounding `floor`, the user's `tolerance` and `floor_factor`,
    /// for a comparison whose two sides compute in `dtypes`.
    pub fn new(
        floor: Vec<Difference>,
        tolerance: f64,
        floor_factor: f64,
        dtypes: [crate::device::Precision; 2],
    ) -> Judge {
        use crate::device::Precision;
        // What bf16 stores cannot agree closer than its own epsilon, whatever the floor says
        // (a running mean one bf16 ulp apart is 2e-3 apart; the nudge may not move it at all).
        let tolerance = if dtypes.contains(&Precision::Bf16) {
            tolerance.max(Precision::Bf16.epsilon())
        } else {
            tolerance
        };
        Judge {
            floor: floor.into_iter().map(|d| (d.name, d.relative)).collect(),
            tolerance,
            floor_factor,
        }
    }

    /// The tolerance applied (raised to bf16's epsilon where a side stores bf16).
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// A tensor's own rounding floor (NaN where none was measured).
    pub fn floor(&self, name: &str) -> f64 {
        self.floor.get(name).copied().unwrap_or(f64::NAN)
    }

    /// The worst floor of the tensors whose names start with `prefix`.
    pub fn group_floor(&self, prefix: &str) -> f64 {
        self.floor
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, f)| *f)
            .fold(0.0f64, f64::max)
    }

    /// The floor a tensor is judged by. A LAMB update is judged against the worst floor of all
    /// updates: one nudge is one draw, and an update's figure is quantized (the first step is
    /// close to the gradients' signs, so one near-zero gradient that flips moves a 64-element
    /// update by a quarter). Gradients and statistics vary smoothly with a rounding: their own
    /// floor.
    pub fn judged_floor(&self, name: &str) -> f64 {
        if name.starts_with("update/") {
            self.group_floor("update/")
        } else {
            self.floor(name)
        }
    }

    /// What `d` says about the device under test.
    pub fn verdict(&self, d: &Difference) -> Verdict {
        Verdict::of(
            d.relative,
            self.judged_floor(&d.name),
            self.tolerance,
            self.floor_factor,
        )
    }
}

/// The worst relative difference of `diffs`; NaN counts as infinitely far.
pub fn worst(diffs: &[Difference]) -> f64 {
    diffs.iter().map(|d| d.relative).fold(
        0.0f64,
        |w, r| {
            if r.is_nan() { f64::INFINITY } else { w.max(r) }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(name: &str, relative: f64) -> Difference {
        Difference {
            name: name.to_string(),
            relative,
            max_abs: 0.0,
            reference_norm: 1.0,
        }
    }

    #[test]
    fn updates_are_judged_by_the_worst_update_floor_and_the_rest_by_their_own() {
        use crate::device::Precision;
        let floor = vec![
            diff("grad/a", 1e-6),
            diff("update/a", 1e-6),
            diff("update/b", 1e-3),
        ];
        let judge = Judge::new(floor, 1e-5, 4.0, [Precision::F32, Precision::F32]);
        assert_eq!(judge.tolerance(), 1e-5);
        assert_eq!(judge.judged_floor("update/a"), 1e-3);
        assert_eq!(judge.judged_floor("grad/a"), 1e-6);
        assert!(judge.floor("grad/missing").is_nan());
        // 3e-3 is within 4x the update group's floor, not within 4x the gradient's.
        assert_eq!(judge.verdict(&diff("update/a", 3e-3)), Verdict::WithinFloor);
        assert_eq!(judge.verdict(&diff("grad/a", 3e-3)), Verdict::Over);
        assert_eq!(judge.verdict(&diff("grad/a", 1e-6)), Verdict::Ok);
    }

    #[test]
    fn bf16_raises_the_tolerance_to_its_epsilon() {
        use crate::device::Precision;
        let judge = Judge::new(vec![], 1e-5, 4.0, [Precision::F32, Precision::Bf16]);
        assert_eq!(judge.tolerance(), Precision::Bf16.epsilon());
        let judge = Judge::new(vec![], 1e-5, 4.0, [Precision::Amp, Precision::Amp]);
        assert_eq!(judge.tolerance(), 1e-5);
    }

    #[test]
    fn the_worst_difference_counts_nan_as_infinitely_far() {
        assert_eq!(worst(&[diff("a", 1e-3), diff("b", 2e-3)]), 2e-3);
        assert_eq!(
            worst(&[diff("a", 1e-3), diff("b", f64::NAN)]),
            f64::INFINITY
        );
        assert_eq!(worst(&[]), 0.0);
    }

    fn small() -> NetworkConfig {
        crate::model::ResNetConfig {
            depth: 18,
            num_classes: 10,
            width: 0.125,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: false,
            variant: Default::default(),
        }
        .into()
    }

    #[test]
    fn same_backend_after_copy_is_bit_identical() {
        let device = Device::flex().autodiff();
        let diffs =
            compare_devices(&small(), 2, 8, 3, &device, &device, [None; 2]).expect("config");
        // Every trainable parameter's gradient and update, every running statistic.
        let config = small();
        let model = config.init(&device).expect("config");
        let mut trainable = 0;
        model.for_each_trainable(|_| trainable += 1);
        let count = |prefix: &str| diffs.iter().filter(|d| d.name.starts_with(prefix)).count();
        assert_eq!(count("grad/"), trainable);
        assert_eq!(count("grads (all)"), 1);
        assert_eq!(count("update/"), trainable);
        assert_eq!(count("stat/"), 2 * model.batch_norms().len());
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
            [None, Some(crate::device::AMP_COMPUTE)],
        )
        .expect("config");
        // Logits in f32 (the master type); forward and loss as close as bf16's 8-bit mantissa
        // allows. Gradients of the early convolutions differ by tens of percent, as under
        // PyTorch's autocast: timm's resnet18 (zero_init_last off), 64 images of 32 px, BCE,
        // autocast bf16 against f32 on the CPU, torch 2.15: logits 0.041, conv1.weight 0.41,
        // bn1.weight 0.46, layer1.0.conv1.weight 0.40, layer4.1.conv2.weight 0.23,
        // fc.weight 0.0086 (relative). BN's backward cancels most of each gradient.
        assert!(diffs[0].name.contains("F32 vs F32"), "{}", diffs[0].name);
        // Tensor by tensor, a BN parameter's gradient that cancels to near zero differs by
        // more than itself under bf16 on some draws (0.44 to 1.19 worst over 25 seeds at this
        // size): bounded only by 2 (no sign of a gradient unrelated to the f32 one), as LAMB's
        // first step, close to the gradients' signs. All gradients together stay within
        // 0.25 to 0.35 over the same 25 seeds; a gradient lost or of the wrong sign would be
        // 1 or more.
        let bound = |name: &str| match name {
            "logits/train" | "logits/eval" => 5e-2,
            "loss" | "grad/fc.weight" => 2e-2,
            "grads (all)" => 0.5,
            _ if name.starts_with("stat/") => 5e-2,
            _ => 2.0,
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
        let mut head = b.head().clone();
        head.weight = head.weight.map(|w| w.add_scalar(1e-2));
        b.set_head(head);
        let x = Tensor::<4>::random([4, 3, 16, 16], Distribution::Default, &device)
            .inner()
            .into_data();
        let ra = run(a, &x, &[1, 2, 3, 4], 10, &device);
        let rb = run(b, &x, &[1, 2, 3, 4], 10, &device);
        let d = compare("logits/train", &ra.train_logits, &rb.train_logits);
        assert!(d.relative > 1e-4, "{d:?}");
        // Far beyond what a rounding does to the same model: judged as a wrong result.
        let floor = rounding_floor(&config, 4, 16, 5, &device, None, f64::from(f32::EPSILON))
            .expect("config");
        let floor = floor
            .iter()
            .find(|f| f.name == "logits/train")
            .map(|f| f.relative)
            .expect("logits/train");
        assert!(floor < 1e-4, "{floor}");
        assert_eq!(
            Verdict::of(d.relative, floor, 1e-6, FLOOR_FACTOR),
            Verdict::Over,
            "{d:?}"
        );
    }

    #[test]
    fn verdicts_separate_conditioning_from_a_wrong_result() {
        let v = |r, f| Verdict::of(r, f, 1e-3, FLOOR_FACTOR);
        assert_eq!(v(5e-4, 0.0), Verdict::Ok);
        assert_eq!(v(1.3e-2, 2.1e-2), Verdict::WithinFloor);
        assert_eq!(v(1.0, 2.1e-2), Verdict::Over);
        assert_eq!(v(1.4, 1.3), Verdict::Noise);
        assert_eq!(v(7.0, 1.3), Verdict::Over);
        assert_eq!(v(1e-2, 0.0), Verdict::Over);
        assert_eq!(v(1e-2, f64::NAN), Verdict::Over);
        // Factor 0: the tolerance alone.
        assert_eq!(Verdict::of(1.3e-2, 2.1e-2, 1e-3, 0.0), Verdict::Over);
    }

    #[test]
    fn the_rounding_floor_of_a_small_model_is_rounding_noise() {
        let device = Device::flex().autodiff();
        // The median over three inputs: in one input of several, a ReLU's input lies within
        // rounding distance of 0, and one ulp flips it (seed 3 with our CPU convolution: the
        // gradients move by 2.6e-3, by 2e-6 in the other seeds and with burn's convolution).
        let floors: Vec<_> = (1..=3)
            .map(|seed| {
                rounding_floor(
                    &small(),
                    4,
                    16,
                    seed,
                    &device,
                    None,
                    f64::from(f32::EPSILON),
                )
                .expect("config")
            })
            .collect();
        let median = |name: &str| {
            let mut v: Vec<f64> = floors
                .iter()
                .map(|f| {
                    f.iter()
                        .find(|d| d.name == name)
                        .map(|d| d.relative)
                        .expect(name)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[1]
        };
        // One ulp of input moves an eighth-width ResNet-18 by rounding noise, not more.
        for name in ["logits/train", "logits/eval", "grads (all)"] {
            let f = median(name);
            assert!(f > 0.0 && f < 1e-4, "{name}: {f}");
        }
        // The loss, one mean over the batch, may round back to the same f32.
        let loss = median("loss");
        assert!((0.0..1e-4).contains(&loss), "loss: {loss}");
    }
}
