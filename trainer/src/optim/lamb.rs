//! timm's `Lamb` (`timm/optim/lamb.py`, docs/recipe.md): burn's per-tensor LAMB arithmetic (fused on
//! the CPU backend: `cpu_kernels::lamb`), plus the two things burn's lacks.
//!
//! 1. The global gradient-norm clip inside the optimizer: all gradients are divided by
//!    `max(‖g‖₂ / max_grad_norm, 1)`, the norm taken over every parameter together (burn only
//!    clips tensor by tensor).
//! 2. timm's parameter groups: tensors of rank ≤ 1 (BN γ/β, biases) get no weight decay, and
//!    with no decay timm applies no trust ratio either.
//!
//! The rest is the same arithmetic as timm: Adam moments with bias correction, `eps` added
//! after the square root, decay added to the update before the trust ratio
//! `‖p‖ / ‖update‖` (1 where either norm is 0), no trust clip.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::model::Network;
use cpu_kernels::is_flex;
use cpu_kernels::lamb::{FusedLamb, Hyper};

/// timm's Lamb arguments (train.py flags in comments).
#[derive(Debug, Clone, PartialEq)]
pub struct LambOptions {
    /// `--weight-decay`.
    pub weight_decay: f64,
    /// `--opt-betas` (timm's default 0.9, 0.999).
    pub betas: (f64, f64),
    /// `--opt-eps` (timm's Lamb default 1e-6).
    pub eps: f64,
    /// Lamb's own `max_grad_norm` (1.0 in timm); `None` disables the clip.
    pub max_grad_norm: Option<f64>,
}

impl LambOptions {
    /// timm's defaults with the given weight decay.
    pub fn timm(weight_decay: f64) -> Self {
        LambOptions {
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-6,
            max_grad_norm: Some(1.0),
        }
    }
}

/// The optimizer; see the module documentation.
pub struct TimmLamb {
    inner: ModuleOptimizer,
    max_grad_norm: Option<f64>,
}

/// Ids of the parameters timm puts in its no-decay group (`param_groups_weight_decay`):
/// `p.ndim <= 1 or name.endswith(".bias") or name in model.no_weight_decay()`, the last being a
/// ViT's position embeddings and class token.
pub(crate) fn no_decay_params(model: &Network) -> Vec<ParamId> {
    const NO_WEIGHT_DECAY: [&str; 2] = ["pos_embed", "cls_token"];
    let mut ids = Vec::new();
    model.for_each_trainable(|p| {
        if p.rank <= 1 || p.name == "bias" || NO_WEIGHT_DECAY.contains(&p.name) {
            ids.push(p.id);
        }
    });
    ids
}

impl TimmLamb {
    /// The optimizer for `model`'s parameters.
    pub fn new(options: &LambOptions, model: &Network) -> Self {
        let base = Hyper {
            beta_1: options.betas.0 as f32,
            beta_2: options.betas.1 as f32,
            epsilon: options.eps as f32,
            weight_decay: options.weight_decay as f32,
            trust_ratio: options.weight_decay != 0.0,
        };
        let decay = FusedLamb::new(base);
        let no_decay = FusedLamb::new(Hyper {
            weight_decay: 0.0,
            trust_ratio: false,
            ..base
        });
        let inner = ModuleOptimizer::from(decay).with_group(
            ParamGroup::from_ids(no_decay_params(model)),
            no_decay,
            None,
        );
        TimmLamb {
            inner,
            max_grad_norm: options.max_grad_norm,
        }
    }

    /// Writes the optimizer state (moments and step counts, keyed by parameter id) to a
    /// burnpack file; load it into an optimizer for a model whose parameter ids were restored
    /// from the same checkpoint.
    pub(crate) fn save(&self, path: &std::path::Path) -> Result<(), burn::store::RecordError> {
        self.inner.save(path)
    }

    /// Reads the state written by `TimmLamb::save` (a checkpoint's).
    pub fn load(mut self, path: &std::path::Path) -> Result<Self, burn::store::RecordError> {
        self.inner = self.inner.load(path)?;
        Ok(self)
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: Network, grads: GradientsParams) -> Network {
        let grads = match self.max_grad_norm {
            Some(max) => clip_global_norm(&model, grads, max),
            None => grads,
        };
        self.inner.step(lr, model, grads)
    }
}

/// Divides every gradient by `max(‖g‖ / max_norm, 1)`, ‖g‖ over all of `model`'s gradients.
/// On a GPU it stays on the device (no value is read back); on the CPU the divisor is read.
pub(crate) fn clip_global_norm(
    model: &Network,
    grads: GradientsParams,
    max_norm: f64,
) -> GradientsParams {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    /// The clip's divisor: a value read on the CPU, or a tensor left on the device.
    enum Divisor {
        Value(f32),
        Device(Box<Tensor<1>>),
    }
    struct Scale {
        grads: GradientsParams,
        divisor: Divisor,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = match &self.divisor {
                    Divisor::Value(d) => g.div_scalar(*d),
                    Divisor::Device(d) => g / (**d).clone().reshape([1; D]),
                };
                self.grads.register(param.id, g);
            }
        }
    }
    let mut sum = SumSquares {
        grads: &grads,
        total: None,
    };
    model.visit(&mut sum);
    let Some(total) = sum.total else {
        return grads;
    };
    let divisor = total.sqrt().div_scalar(max_norm).clamp_min(1.0);
    let divisor = if is_flex(&divisor.device()) {
        // On the CPU the value costs nothing to read: no division at all where the norm is
        // within bounds (x / 1 is x), else one by a scalar (a broadcast tensor's division took
        // a slower path in flex).
        let d = divisor.into_scalar::<f32>();
        if d == 1.0 {
            return grads;
        }
        Divisor::Value(d)
    } else {
        Divisor::Device(Box::new(divisor))
    };
    let mut scale = Scale { grads, divisor };
    model.visit(&mut scale);
    scale.grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::Family;
    use crate::model::resnet::ResNetConfig;
    use burn::tensor::{Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;

    /// Host copy of every trainable parameter: id -> (decays, values).
    fn snapshot(model: &Network) -> HashMap<ParamId, (bool, Vec<f64>)> {
        let mut trainable = HashMap::new();
        model.for_each_trainable(|p| {
            trainable.insert(p.id, p.rank > 1);
        });
        struct Snap {
            trainable: HashMap<ParamId, bool>,
            out: HashMap<ParamId, (bool, Vec<f64>)>,
        }
        impl ModuleVisitor for Snap {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if let Some(&decays) = self.trainable.get(&p.id) {
                    let values = p.val().into_data().iter::<f32>().map(f64::from).collect();
                    self.out.insert(p.id, (decays, values));
                }
            }
        }
        let mut s = Snap {
            trainable,
            out: HashMap::new(),
        };
        model.visit(&mut s);
        s.out
    }

    /// Gradients of the given host values, registered under each parameter's id.
    fn gradients(model: &Network, host: &HashMap<ParamId, Vec<f64>>) -> GradientsParams {
        struct Make<'a> {
            host: &'a HashMap<ParamId, Vec<f64>>,
            grads: GradientsParams,
        }
        impl ModuleVisitor for Make<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if let Some(values) = self.host.get(&p.id) {
                    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                    let t = p.val().inner();
                    let data = TensorData::new(v, t.shape());
                    self.grads
                        .register(p.id, Tensor::<D>::from_data(data, &t.device()));
                }
            }
        }
        let mut m = Make {
            host,
            grads: GradientsParams::new(),
        };
        model.visit(&mut m);
        m.grads
    }

    /// timm's Lamb.step, transcribed in f64 over host vectors.
    struct Reference {
        m: HashMap<ParamId, Vec<f64>>,
        v: HashMap<ParamId, Vec<f64>>,
        step: i32,
    }

    impl Reference {
        fn step(
            &mut self,
            params: &mut HashMap<ParamId, (bool, Vec<f64>)>,
            grads: &HashMap<ParamId, Vec<f64>>,
            lr: f64,
            o: &LambOptions,
        ) {
            let (b1, b2) = o.betas;
            self.step += 1;
            let norm = grads
                .values()
                .flat_map(|g| g.iter().map(|x| x * x))
                .sum::<f64>()
                .sqrt();
            let clip = match o.max_grad_norm {
                Some(max) if norm > max => norm / max,
                _ => 1.0,
            };
            let (bc1, bc2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
            for (id, (decays, p)) in params.iter_mut() {
                let g: Vec<f64> = grads[id].iter().map(|x| x / clip).collect();
                let m = self.m.entry(*id).or_insert_with(|| vec![0.0; g.len()]);
                let v = self.v.entry(*id).or_insert_with(|| vec![0.0; g.len()]);
                let wd = if *decays { o.weight_decay } else { 0.0 };
                let mut update = vec![0.0; g.len()];
                for i in 0..g.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2.sqrt() + o.eps;
                    update[i] = (m[i] / bc1) / denom + wd * p[i];
                }
                let mut trust = 1.0;
                if wd != 0.0 {
                    let w = p.iter().map(|x| x * x).sum::<f64>().sqrt();
                    let u = update.iter().map(|x| x * x).sum::<f64>().sqrt();
                    if w > 0.0 && u > 0.0 {
                        trust = w / u;
                    }
                }
                for i in 0..p.len() {
                    p[i] -= lr * trust * update[i];
                }
            }
        }
    }

    /// Runs 3 steps with gradient scales that cross the clip threshold; returns the worst
    /// relative difference (per tensor) between burn and the f64 transcription of timm.
    fn worst_difference(ours: &LambOptions, reference_options: &LambOptions) -> f64 {
        let device = Device::flex().autodiff();
        device.seed(9);
        let config = ResNetConfig {
            depth: 18,
            num_classes: 5,
            width: 0.0625,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: false,
            variant: Default::default(),
        };
        let mut model = config.init(&device).map(Network::from).expect("config");
        let mut reference_params = snapshot(&model);
        let mut reference = Reference {
            m: HashMap::new(),
            v: HashMap::new(),
            step: 0,
        };
        let mut lamb = TimmLamb::new(ours, &model);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // Global norms far above, below, then above 1: the clip changes what the moments mix.
        for (step, scale) in [30.0, 0.001, 3.0].into_iter().enumerate() {
            let grads: HashMap<ParamId, Vec<f64>> = reference_params
                .iter()
                .map(|(id, (_, p))| {
                    let g = p
                        .iter()
                        .map(|_| scale * (rng.random::<f64>() - 0.5))
                        .collect();
                    (*id, g)
                })
                .collect();
            let lr = 0.01 * (step + 1) as f64;
            let g = gradients(&model, &grads);
            model = lamb.step(lr, model, g);
            reference.step(&mut reference_params, &grads, lr, reference_options);
        }
        let ours_params = snapshot(&model);
        let mut worst = 0.0f64;
        for (id, (_, want)) in &reference_params {
            let got = &ours_params[id].1;
            let diff = want
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm = want.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            worst = worst.max(diff / norm);
        }
        worst
    }

    #[test]
    fn three_steps_match_timms_lamb_transcribed_in_f64() {
        let o = LambOptions::timm(0.02);
        let worst = worst_difference(&o, &o);
        assert!(worst < 1e-5, "worst relative difference {worst}");
    }

    #[test]
    fn the_global_clip_is_what_makes_the_difference() {
        // Without the clip, the same comparison fails: the check above can fail.
        let unclipped = LambOptions {
            max_grad_norm: None,
            ..LambOptions::timm(0.02)
        };
        let worst = worst_difference(&unclipped, &LambOptions::timm(0.02));
        assert!(worst > 1e-4, "worst relative difference {worst}");
    }

    #[test]
    fn rank_one_tensors_are_the_no_decay_group() {
        let model = ResNetConfig::resnet50()
            .init(&Device::flex())
            .map(Network::from)
            .expect("config");
        // 53 BNs × (γ, β) + fc.bias, as timm's param_groups_weight_decay.
        assert_eq!(no_decay_params(&model).len(), 53 * 2 + 1);
        // A ViT adds its position embeddings and class token (timm's no_weight_decay()):
        // create_optimizer_v2(vit_small_patch16_224, 'lamb', weight_decay=0.02) has groups of
        // 102 and 50 tensors.
        let shape = crate::model::family::Shape {
            num_classes: 1000,
            width: 1.0,
            small_stem: false,
            drop_path_rate: 0.0,
            img_size: None,
        };
        let vit = crate::model::vit::VitConfig::named("vit_small_patch16_224", &shape)
            .and_then(|c| crate::model::family::Family::init(&c, &Device::flex()))
            .map(Network::Vit)
            .expect("config");
        let mut all = 0;
        vit.for_each_trainable(|_| all += 1);
        assert_eq!((no_decay_params(&vit).len(), all), (102, 152));
    }
}
