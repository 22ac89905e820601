//! Mixed precision as timm's `--amp` gives it (PyTorch autocast, here in bf16): the parameters,
//! their gradients and LAMB's state stay f32 (the master weights); convolutions and the
//! classifier's matmul compute in bf16 on bf16 copies of their input and weights; batch norm,
//! the residual sums, the pooling, the loss and every reduction stay f32.
//!
//! burn 0.22 has no autocast, so the casts are written where autocast would put them:
//! [`conv`], [`conv1d`], [`linear`] and [`matmul`] cast in, compute, and cast their output back
//! to f32. `Tensor::cast`
//! is differentiable (its backward casts the gradient back), so a weight's gradient arrives in
//! f32, rounded as PyTorch's is through the bf16 op.
//!
//! On the CPU (burn-flex) a bf16 convolution converts to f32 and back: amp there has bf16's
//! rounding but no speed of its own. On CUDA the bf16 kernels are the point.

use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{Linear, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Tensor};

use cpu_kernels::conv::conv2d;

/// The float type parameters and activations are kept in between the computing ops.
pub(crate) const MASTER: FloatDType = FloatDType::F32;

/// `c` applied to `x`, computing in `compute` when given (output in `MASTER`, f32), through the
/// model's one convolution function ([`cpu_kernels::conv::conv2d`]).
pub fn conv(c: &Conv2d, x: Tensor<4>, compute: Option<FloatDType>) -> Tensor<4> {
    let PaddingConfig2d::Explicit(top, left, bottom, right) = c.padding else {
        // Every convolution of the model is built with explicit padding (`resnet::conv`);
        // another kind is burn's layer in the master type, still correct.
        return c.forward(x);
    };
    let options = ConvOptions::new_with_padding(
        c.stride,
        [(top, bottom), (left, right)],
        c.dilation,
        c.groups,
    );
    let (weight, bias) = (c.weight.val(), c.bias.as_ref().map(|b| b.val()));
    let Some(dtype) = compute else {
        return conv2d(x, weight, bias, options);
    };
    conv2d(
        x.cast(dtype),
        weight.cast(dtype),
        bias.map(|b| b.cast(dtype)),
        options,
    )
    .cast(MASTER)
}

/// `c` applied to `x` (N×C×L), computing in `compute` when given (output in `MASTER`): ECA's
/// channel convolution, which autocast runs in the compute type as every convolution.
pub fn conv1d(c: &Conv1d, x: Tensor<3>, compute: Option<FloatDType>) -> Tensor<3> {
    let (Some(dtype), PaddingConfig1d::Explicit(begin, end)) = (compute, &c.padding) else {
        // ECA's convolution is built with explicit padding; another kind computes in the
        // master type through burn's layer.
        return c.forward(x);
    };
    let options =
        ConvOptions::new_with_padding([c.stride], [(*begin, *end)], [c.dilation], c.groups);
    burn::tensor::module::conv1d(
        x.cast(dtype),
        c.weight.val().cast(dtype),
        c.bias.as_ref().map(|b| b.val().cast(dtype)),
        options,
    )
    .cast(MASTER)
}

/// `l` applied to `x`, computing in `compute` when given (output in `MASTER`, f32).
pub fn linear<const D: usize>(l: &Linear, x: Tensor<D>, compute: Option<FloatDType>) -> Tensor<D> {
    let Some(dtype) = compute else {
        return l.forward(x);
    };
    burn::tensor::module::linear(
        x.cast(dtype),
        l.weight.val().cast(dtype),
        l.bias.as_ref().map(|b| b.val().cast(dtype)),
    )
    .cast(MASTER)
}

/// `a · b` (batched over the leading dimensions), computing in `compute` when given (output in
/// `MASTER`): attention's two products, which autocast runs in the compute type.
pub fn matmul<const D: usize>(
    a: Tensor<D>,
    b: Tensor<D>,
    compute: Option<FloatDType>,
) -> Tensor<D> {
    match compute {
        Some(dtype) => a.cast(dtype).matmul(b.cast(dtype)).cast(MASTER),
        None => a.matmul(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::AMP_COMPUTE as COMPUTE;
    use crate::model::family::Family;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{DType, Device, Distribution};

    use crate::model::network::Network;
    use crate::model::resnet::{ResNet, ResNetConfig};
    use crate::optim::lamb::{LambOptions, TimmLamb};

    fn tiny(device: &Device) -> ResNet {
        ResNetConfig {
            depth: 18,
            num_classes: 5,
            width: 0.125,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: false,
            variant: Default::default(),
        }
        .init(device)
        .expect("valid config")
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.to_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    fn relative(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    }

    /// The dtype of every float parameter of `model`.
    fn param_dtypes(model: &impl Module) -> Vec<DType> {
        struct Dtypes(Vec<DType>);
        impl ModuleVisitor for Dtypes {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.push(p.val().dtype());
            }
        }
        let mut d = Dtypes(Vec::new());
        model.visit(&mut d);
        d.0
    }

    #[test]
    fn a_convolution_computes_on_bf16_copies_and_answers_in_f32() {
        let device = Device::flex();
        let c = burn::nn::conv::Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let amp = conv(&c, x.clone(), Some(COMPUTE));
        assert_eq!(amp.dtype(), DType::F32);
        // By hand: bf16-rounded input and weights, an f32 convolution, its output rounded.
        let round = |t: Tensor<4>| t.cast(COMPUTE).cast(MASTER);
        let by_hand = round(conv2d(
            round(x.clone()),
            round(c.weight.val()),
            c.bias.as_ref().map(|b| b.val().cast(COMPUTE).cast(MASTER)),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        ));
        let flat = |t: Tensor<4>| values(t.flatten::<2>(1, 3));
        assert!(relative(&flat(amp.clone()), &flat(by_hand)) < 1e-6);
        // Not the f32 result: the rounding happened.
        let f32 = flat(c.forward(x));
        let r = relative(&flat(amp), &f32);
        assert!(r > 1e-5 && r < 2e-2, "amp vs f32: {r}");
    }

    #[test]
    fn every_family_member_computes_in_bf16_and_answers_in_f32() {
        // Deep stems, avg_down's pool, grouped 3×3, SE's 1×1 and ECA's 1-D convolution. Eval
        // mode: in training, batch statistics of 2 images amplify any rounding (a quarter of
        // the logits for plain ResNet-50 at random init).
        let device = Device::flex().autodiff();
        for name in [
            "resnet50",
            "resnet50d",
            "resnext50_32x4d",
            "seresnet50",
            "ecaresnet50t",
        ] {
            let mut model = ResNetConfig {
                num_classes: 5,
                width: 0.125,
                small_stem: true,
                zero_init_last: false,
                ..ResNetConfig::timm(name).expect("ours")
            }
            .init(&device)
            .expect("config");
            let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
            let f32_logits = values(model.valid().forward(x.clone().inner()));
            model.compute = Some(COMPUTE);
            let amp_logits = values(model.valid().forward(x.clone().inner()));
            let r = relative(&amp_logits, &f32_logits);
            assert!(r > 1e-5 && r < 5e-2, "{name}: amp logits vs f32: {r}");
            // Training: f32 out, and f32 gradients in.
            let logits = model.forward(x);
            assert_eq!(logits.dtype(), DType::F32, "{name}");
            let grads = logits.powi_scalar(2).mean().backward();
            let stem_grad = match (&model.conv1, &model.stem) {
                (_, Some(stem)) => stem.conv_a.weight.val().grad(&grads),
                (Some(conv1), None) => conv1.weight.val().grad(&grads),
                (None, None) => None,
            };
            assert_eq!(stem_grad.map(|g| g.dtype()), Some(DType::F32), "{name}");
        }
    }

    #[test]
    fn an_amp_step_keeps_f32_master_weights_gradients_and_optimizer_state() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut model = tiny(&device);
        let x = Tensor::<4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let f32_logits = values(model.forward(x.clone()));
        model.compute = Some(COMPUTE);
        // The setting survives what a run does to the model: eval copies and device forks.
        assert_eq!(model.valid().compute, Some(COMPUTE));
        assert_eq!(model.clone().fork(&device).compute, Some(COMPUTE));
        let logits = model.forward(x);
        assert_eq!(logits.dtype(), DType::F32);
        let r = relative(&values(logits.clone()), &f32_logits);
        assert!(r > 1e-5 && r < 5e-2, "amp logits vs f32: {r}");

        let grads = GradientsParams::from_grads(logits.powi_scalar(2).mean().backward(), &model);
        // Each gradient arrives in f32 (the casts' backward casts it back), so LAMB's moments,
        // made of gradients and weights, are f32 too.
        let mut ranks = Vec::new();
        model.for_each_trainable(|p| ranks.push((p.id, p.rank)));
        for (id, rank) in ranks {
            let dtype = match rank {
                1 => grads.get::<1>(id).map(|g| g.dtype()),
                2 => grads.get::<2>(id).map(|g| g.dtype()),
                _ => grads.get::<4>(id).map(|g| g.dtype()),
            };
            assert_eq!(
                dtype,
                Some(DType::F32),
                "gradient of a rank-{rank} parameter"
            );
        }
        let model = Network::from(model);
        let mut optimizer = TimmLamb::new(&LambOptions::timm(0.01), &model);
        let before = param_dtypes(&model);
        let model = optimizer.step(1e-3, model, grads);
        assert!(before.iter().all(|d| *d == DType::F32), "{before:?}");
        assert_eq!(param_dtypes(&model), before);
        assert_eq!(model.compute(), Some(COMPUTE));
    }
}
