//! Batch normalization with PyTorch's running statistics.
//!
//! burn's own `BatchNorm` updates its running variance with the biased (population) batch
//! variance; PyTorch, and so timm, uses the unbiased one (`n / (n - 1)` times larger). The
//! difference is what a model evaluates with after training, so we keep our own layer.
//!
//! In training on the CPU backend the batch statistics, the output and the gradients are our
//! own (`cpu_kernels::batch_norm`); elsewhere burn's `batch_norm_train`.

use burn::module::{Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::module::batch_norm;
use burn::tensor::{Device, Tensor};
use cpu_kernels::activation::Activation;

/// PyTorch's defaults, which timm's ResNet keeps.
pub(crate) const EPSILON: f64 = 1e-5;
/// Weight of the new batch statistic in the running average (PyTorch's `momentum`).
pub(crate) const MOMENTUM: f64 = 0.1;

/// `BatchNorm2d` over `[N, C, H, W]`: batch statistics on a device that records gradients,
/// running statistics otherwise.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Scale γ (timm: `weight`).
    pub gamma: Param<Tensor<1>>,
    /// Shift β (timm: `bias`).
    pub beta: Param<Tensor<1>>,
    /// Running mean (timm: `running_mean`).
    pub running_mean: RunningState<Tensor<1>>,
    /// Running unbiased variance (timm: `running_var`).
    pub running_var: RunningState<Tensor<1>>,
}

impl BatchNorm {
    /// γ = 1 (or 0 where `zero_gamma`, timm's `zero_init_last`), β = 0, mean 0, variance 1.
    pub fn new(channels: usize, zero_gamma: bool, device: &Device) -> Self {
        let gamma = if zero_gamma {
            Initializer::Zeros
        } else {
            Initializer::Ones
        };
        BatchNorm {
            gamma: gamma.init([channels], device),
            beta: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
        }
    }

    /// Normalizes `x`; in training also folds the batch statistics into the running ones.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, Activation::Identity)
    }

    /// `relu(self.forward(x))`, the ReLU fused into batch norm in training on the CPU (one pass
    /// over the activation less each way; the same bits).
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, Activation::Relu)
    }

    /// `silu(self.forward(x))`, the SiLU fused into batch norm in training on the CPU (burn's
    /// SiLU, after it, is a pass per operation each way, with a scalar `exp`).
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, Activation::Silu)
    }

    fn forward_with(&self, x: Tensor<4>, activation: Activation) -> Tensor<4> {
        let device = x.device();
        if !device.is_autodiff() {
            let y = batch_norm(
                x,
                self.gamma.val(),
                self.beta.val(),
                // `value` may lag one update behind; evaluation right after training must not.
                self.running_mean.value_sync().to_device(&device),
                self.running_var.value_sync().to_device(&device),
                EPSILON,
            );
            return cpu_kernels::activation::burns(y, activation);
        }
        let [n, _, h, w] = x.dims();
        let count = (n * h * w) as f64;
        // PyTorch divides by n - 1 for the running estimate (and by n to normalize).
        let unbias = if count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        };
        let (output, batch_mean, batch_var) = cpu_kernels::batch_norm::train(
            x,
            self.gamma.val(),
            self.beta.val(),
            cpu_kernels::batch_norm::Norm {
                epsilon: EPSILON,
                activation,
            },
        );
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean = mean
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_mean.detach().mul_scalar(MOMENTUM));
        let var = var
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_var.detach().mul_scalar(MOMENTUM * unbias));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn running_variance_is_unbiased_as_in_pytorch() {
        let device = Device::flex().autodiff();
        let bn = BatchNorm::new(2, false, &device);
        let x = Tensor::<4>::random([3, 2, 2, 2], Distribution::Normal(1.0, 2.0), &device);
        let values: Vec<f32> = x.to_data().try_to_vec::<f32>().expect("f32 data");
        let _ = bn.forward(x);
        let var: Vec<f32> = bn
            .running_var
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let mean: Vec<f32> = bn
            .running_mean
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        for c in 0..2 {
            // Gather channel c of the NCHW tensor.
            let xs: Vec<f64> = (0..3)
                .flat_map(|n| (0..4).map(move |i| (n, i)))
                .map(|(n, i)| f64::from(values[n * 8 + c * 4 + i]))
                .collect();
            let m = xs.iter().sum::<f64>() / 12.0;
            let unbiased = xs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 11.0;
            let want_var = 0.9 + 0.1 * unbiased;
            let want_mean = 0.1 * m;
            assert!(
                (f64::from(var[c]) - want_var).abs() < 1e-5,
                "{} vs {want_var}",
                var[c]
            );
            assert!((f64::from(mean[c]) - want_mean).abs() < 1e-5);
        }
    }

    #[test]
    fn inference_uses_running_statistics() {
        let device = Device::flex();
        let bn = BatchNorm::new(1, false, &device);
        bn.running_mean
            .update(Tensor::from_data(TensorData::from([2.0f32]), &device));
        bn.running_var
            .update(Tensor::from_data(TensorData::from([4.0f32]), &device));
        let x = Tensor::<4>::from_data(TensorData::from([[[[6.0f32]]]]), &device);
        let y: Vec<f32> = bn.forward(x).into_data().try_to_vec::<f32>().expect("f32");
        // (6 - 2) / sqrt(4 + eps)
        assert!((y[0] - 2.0).abs() < 1e-4, "{}", y[0]);
    }
}
