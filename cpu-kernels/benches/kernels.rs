//! Each kernel, forward and backward through burn's autodiff on burn-flex, three ways:
//! - `ours`: this crate's kernel, at the widest vectors the CPU has;
//! - `ours-scalar`: the same kernel with `--cpu-ext none` (baseline x86-64 code), which is what
//!   the SIMD dispatch buys;
//! - `flex`: burn-flex's own operation (what the trainer ran before these kernels).
//!
//! The shapes are ResNet-50's at batch 8 (a 224 px image's 56×56 stage, the stem's pooling;
//! ResNeXt-50's grouped 3×3 of that stage),
//! and LAMB's step on its largest 3×3 weight. `cargo bench -p cpu-kernels`, then
//! `cpu-kernels/benches/ratios.py` prints the ratios from criterion's estimates.

use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2dConfig;
use burn::optim::Optimizer;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use cpu_kernels::activation::Activation;
use cpu_kernels::batch_norm::{self, Norm};
use cpu_kernels::lamb::{FusedLamb, Hyper};
use cpu_kernels::simd::{self, CpuExt, CpuExtChoice};
use cpu_kernels::testing::random;
use cpu_kernels::{conv, max_pool, residual};
use criterion::{Criterion, criterion_group, criterion_main};

/// Who computes the operation.
#[derive(Clone, Copy)]
enum Who {
    Ours,
    OursScalar,
    Flex,
}

impl Who {
    const ALL: [Who; 3] = [Who::Ours, Who::OursScalar, Who::Flex];

    fn name(self) -> &'static str {
        match self {
            Who::Ours => "ours",
            Who::OursScalar => "ours-scalar",
            Who::Flex => "flex",
        }
    }

    /// Sets the process's SIMD cap for this variant.
    fn select(self) {
        let choice = match self {
            Who::OursScalar => CpuExtChoice::Cap(CpuExt::None),
            Who::Ours | Who::Flex => CpuExtChoice::Auto,
        };
        simd::cap(choice).expect("baseline and auto exist on every CPU");
    }
}

/// Forward and backward of `op` on `inputs`, as a training step runs them: the inputs require
/// gradients, and the output's sum is differentiated.
fn train_step<const D: usize, const E: usize>(
    inputs: &[Tensor<D>],
    op: impl Fn(Vec<Tensor<D>>) -> Tensor<E>,
) {
    let inputs: Vec<_> = inputs.iter().map(|t| t.clone().require_grad()).collect();
    let grads = op(inputs.clone()).sum().backward();
    for t in &inputs {
        std::hint::black_box(t.grad(&grads));
    }
}

fn bench_conv(c: &mut Criterion) {
    // ResNet-50's 3×3 of its first stage, and ResNeXt-50's (32 groups of 4 channels).
    conv_group(c, "conv 3x3 64->64 8x56x56", [64, 64], 1);
    conv_group(c, "grouped conv 3x3 128->128 /32 8x56x56", [128, 128], 32);
}

/// The bench group `name`: a 3×3 convolution `[in, out]` in `groups` at batch 8, 56×56.
fn conv_group(c: &mut Criterion, name: &str, [i, o]: [usize; 2], groups: usize) {
    let device = Device::flex().autodiff();
    let x = random([8, i, 56, 56], 1, &device);
    let w = random([o, i / groups, 3, 3], 2, &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], groups);
    let mut group = c.benchmark_group(format!("{name}, forward+backward"));
    for who in Who::ALL {
        who.select();
        group.bench_function(who.name(), |b| {
            b.iter(|| {
                train_step(&[x.clone(), w.clone()], |t| match who {
                    Who::Flex => burn::tensor::module::conv2d(
                        t[0].clone(),
                        t[1].clone(),
                        None,
                        options.clone(),
                    ),
                    _ => conv::conv2d(t[0].clone(), t[1].clone(), None, options.clone()),
                })
            })
        });
    }
    group.finish();
}

fn bench_batch_norm(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let x = random([8, 256, 56, 56], 1, &device);
    let gamma = random([256], 2, &device);
    let beta = random([256], 3, &device);
    for (activation, name) in [(Activation::Relu, "relu"), (Activation::Silu, "silu")] {
        let norm = Norm {
            epsilon: 1e-5,
            activation,
        };
        let mut group =
            c.benchmark_group(format!("batch norm + {name} 8x256x56x56, forward+backward"));
        for who in Who::ALL {
            who.select();
            group.bench_function(who.name(), |b| {
                b.iter(|| {
                    let x = x.clone().require_grad();
                    let (gamma, beta) = (gamma.clone().require_grad(), beta.clone().require_grad());
                    let y = match who {
                        Who::Flex => cpu_kernels::activation::burns(
                            burn::tensor::module::batch_norm_train(
                                x.clone(),
                                gamma.clone(),
                                beta.clone(),
                                norm.epsilon,
                            )
                            .output,
                            activation,
                        ),
                        _ => batch_norm::train(x.clone(), gamma.clone(), beta.clone(), norm).0,
                    };
                    let grads = y.sum().backward();
                    std::hint::black_box((x.grad(&grads), gamma.grad(&grads), beta.grad(&grads)));
                })
            });
        }
        group.finish();
    }
}

fn bench_max_pool(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let x = random([8, 64, 112, 112], 1, &device);
    let pool = MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init();
    let mut group = c.benchmark_group("max pool 3x3/2 8x64x112x112, forward+backward");
    for who in Who::ALL {
        who.select();
        group.bench_function(who.name(), |b| {
            b.iter(|| {
                train_step(std::slice::from_ref(&x), |t| match who {
                    Who::Flex => pool.forward(t[0].clone()),
                    _ => max_pool::max_pool2d(&pool, t[0].clone()),
                })
            })
        });
    }
    group.finish();
}

fn bench_residual(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let a = random([8, 256, 56, 56], 1, &device);
    let s = random([8, 256, 56, 56], 2, &device);
    let mut group = c.benchmark_group("residual relu(a + b) 8x256x56x56, forward+backward");
    for who in Who::ALL {
        who.select();
        group.bench_function(who.name(), |b| {
            b.iter(|| {
                train_step(&[a.clone(), s.clone()], |t| match who {
                    Who::Flex => relu(t[0].clone() + t[1].clone()),
                    _ => residual::add_relu(t[0].clone(), t[1].clone()),
                })
            })
        });
    }
    group.finish();
}

fn bench_lamb(c: &mut Criterion) {
    let device = Device::flex();
    let hyper = Hyper {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-6,
        weight_decay: 0.02,
        trust_ratio: true,
    };
    let ours = FusedLamb::new(hyper);
    let theirs = hyper.burn_lamb();
    // ResNet-50's largest 3×3 weight (layer4), after one step so the moments exist.
    let p = random([512, 512, 3, 3], 1, &device);
    let g = random([512, 512, 3, 3], 2, &device);
    let (_, state) = ours.step(1e-3, p.clone(), g.clone(), None);
    let mut group = c.benchmark_group("lamb step 512x512x3x3");
    for who in Who::ALL {
        who.select();
        group.bench_function(who.name(), |b| {
            b.iter(|| match who {
                Who::Flex => theirs.step(1e-3, p.clone(), g.clone(), state.clone()),
                _ => ours.step(1e-3, p.clone(), g.clone(), state.clone()),
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Each sample is milliseconds to a second: ten of them, over a few seconds, keep the
    // whole run to about two minutes on two cores.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
}

criterion_group! {
    name = kernels;
    config = config();
    targets = bench_conv, bench_batch_norm, bench_max_pool, bench_residual, bench_lamb
}
criterion_main!(kernels);
