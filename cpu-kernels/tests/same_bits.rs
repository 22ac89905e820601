//! Every kernel gives the same bits at every SIMD level (`--cpu-ext none` against the widest the
//! CPU has): outputs and gradients, forward and backward. One test in a binary of its own,
//! because the level is process-wide.

use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2dConfig;
use burn::optim::Optimizer;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use cpu_kernels::activation::Activation;
use cpu_kernels::batch_norm::{self, Norm};
use cpu_kernels::lamb::{FusedLamb, Hyper};
use cpu_kernels::simd::{self, CpuExt, CpuExtChoice};
use cpu_kernels::testing::random;
use cpu_kernels::{conv, max_pool, residual};

fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    let v = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// Every kernel's outputs and gradients, as bits, named.
fn everything() -> Vec<(&'static str, Vec<u32>)> {
    let device = Device::flex().autodiff();
    let mut out = Vec::new();
    // Odd sides and channel counts, so that vector tails and padding are in play.
    let x = random([3, 5, 13, 11], 1, &device).require_grad();
    let w = random([7, 5, 3, 3], 2, &device).require_grad();
    let y = conv::conv2d(
        x.clone(),
        w.clone(),
        None,
        ConvOptions::new([2, 1], [1, 1], [1, 1], 1),
    );
    let grads = (y.clone() * random(y.dims(), 3, &device)).sum().backward();
    out.push(("conv output", bits(y.detach())));
    out.push(("conv input gradient", bits(x.grad(&grads).unwrap())));
    out.push(("conv weight gradient", bits(w.grad(&grads).unwrap())));

    let x = random([4, 6, 9, 7], 4, &device).require_grad();
    let gamma = random([6], 5, &device).require_grad();
    let beta = random([6], 6, &device).require_grad();
    let norm = Norm {
        epsilon: 1e-5,
        activation: Activation::Relu,
    };
    let (y, mean, var) = batch_norm::train(x.clone(), gamma.clone(), beta.clone(), norm);
    let grads = (y.clone() * random(y.dims(), 7, &device)).sum().backward();
    out.push(("batch norm output", bits(y.detach())));
    out.push(("batch norm mean", bits(mean)));
    out.push(("batch norm variance", bits(var)));
    out.push(("batch norm input gradient", bits(x.grad(&grads).unwrap())));
    out.push((
        "batch norm gamma gradient",
        bits(gamma.grad(&grads).unwrap()),
    ));

    // SiLU's exponential is a polynomial of ours: the same bits at every width too.
    let norm = Norm {
        epsilon: 1e-5,
        activation: Activation::Silu,
    };
    let (y, _, _) = batch_norm::train(x.clone(), gamma.clone(), beta.clone(), norm);
    let grads = (y.clone() * random(y.dims(), 15, &device)).sum().backward();
    out.push(("batch norm + silu output", bits(y.detach())));
    out.push((
        "batch norm + silu input gradient",
        bits(x.grad(&grads).unwrap()),
    ));
    out.push((
        "batch norm + silu beta gradient",
        bits(beta.grad(&grads).unwrap()),
    ));

    let x = random([2, 3, 15, 13], 8, &device).require_grad();
    let pool = MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init();
    let y = max_pool::max_pool2d(&pool, x.clone());
    let grads = (y.clone() * random(y.dims(), 9, &device)).sum().backward();
    out.push(("max pool output", bits(y.detach())));
    out.push(("max pool input gradient", bits(x.grad(&grads).unwrap())));

    let a = random([2, 3, 33, 17], 10, &device).require_grad();
    let b = random([2, 3, 33, 17], 11, &device).require_grad();
    let y = residual::add_relu(a.clone(), b.clone());
    let grads = (y.clone() * random(y.dims(), 12, &device)).sum().backward();
    out.push(("residual output", bits(y.detach())));
    out.push(("residual gradient", bits(a.grad(&grads).unwrap())));

    let device = Device::flex();
    let lamb = FusedLamb::new(Hyper {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-6,
        weight_decay: 0.02,
        trust_ratio: true,
    });
    let p = random([9, 5, 3, 3], 13, &device);
    let (p, state) = lamb.step(1e-2, p, random([9, 5, 3, 3], 14, &device), None);
    let (p, _) = lamb.step(1e-2, p, random([9, 5, 3, 3], 15, &device), state);
    out.push(("lamb parameter", bits(p)));
    out
}

#[test]
fn every_kernel_gives_the_same_bits_at_every_level() {
    let widest = everything();
    for level in [CpuExt::None, CpuExt::Avx2, CpuExt::Avx512] {
        if level > CpuExt::detect() {
            continue;
        }
        simd::cap(CpuExtChoice::Cap(level)).unwrap();
        assert_eq!(CpuExt::current(), level);
        for ((name, a), (_, b)) in widest.iter().zip(everything()) {
            let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ, 0,
                "{name}: {differ} values differ at --cpu-ext {level:?}"
            );
        }
    }
    simd::cap(CpuExtChoice::Auto).unwrap();
}
