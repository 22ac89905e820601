//! The smallest reproductions of where `--device cube-cpu` (burn's CubeCL CPU runtime) differs
//! from flex, each against a float64 reference computed here (README "The GPU's code path on
//! the CPU"):
//!
//! - `bf16`: one matmul and one 3×3 convolution with bf16 operands (what amp and `--dtype
//!   bf16` compute). flex computes in f32 and rounds the result once; the question is how far
//!   cube-cpu's result is from the exact product of the same bf16 operands.
//! - `all-reduce`: burn's `all_reduce` on the one CPU device (what `--devices` and
//!   `--distributed` need), which cubecl-cpu's server does not implement.
//!
//! `trainer/cuda/llvm_env.sh` sourced, then
//! `cargo run --profile dist -p trainer --features cuda,cube-cpu --example cube_cpu_repro -- bf16`.

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};

/// Relative L2 distance of `got` from `exact`.
fn relative(got: &[f32], exact: &[f64]) -> f64 {
    let (mut d2, mut r2) = (0.0, 0.0);
    for (g, e) in got.iter().zip(exact) {
        d2 += (f64::from(*g) - e).powi(2);
        r2 += e * e;
    }
    (d2 / r2).sqrt()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Operands drawn on flex in f32, rounded to bf16, then read back: both devices get the same
/// bf16 values, and the reference is their exact product.
fn bf16_operand(shape: [usize; 4]) -> (TensorData, Vec<f64>) {
    let device = Device::flex();
    let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        .cast(FloatDType::BF16)
        .cast(FloatDType::F32);
    let values = host(t.clone()).into_iter().map(f64::from).collect();
    (t.into_data(), values)
}

fn bf16() {
    Device::flex().seed(0);
    // A matmul as the classifier of a quarter-width ResNet-18 sees it: 32 × 128 by 128 × 1000.
    let (m, k, n) = (32, 128, 1000);
    let (a, av) = bf16_operand([1, 1, m, k]);
    let (b, bv) = bf16_operand([1, 1, k, n]);
    let mut exact = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            exact[i * n + j] = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
        }
    }
    // A 3×3 convolution as stage 2 of the same model: 32 images, 64 → 64 channels, 16 px.
    let (batch, c, side) = (32, 64, 16);
    let (x, xv) = bf16_operand([batch, c, side, side]);
    let (w, wv) = bf16_operand([c, c, 3, 3]);
    let mut conv_exact = vec![0.0f64; batch * c * side * side];
    for img in 0..batch {
        for o in 0..c {
            for y in 0..side {
                for xx in 0..side {
                    let mut sum = 0.0;
                    for i in 0..c {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (sy, sx) = (y + dy, xx + dx);
                                if sy < 1 || sx < 1 || sy > side || sx > side {
                                    continue;
                                }
                                let xi = ((img * c + i) * side + sy - 1) * side + sx - 1;
                                sum += xv[xi] * wv[((o * c + i) * 3 + dy) * 3 + dx];
                            }
                        }
                    }
                    conv_exact[((img * c + o) * side + y) * side + xx] = sum;
                }
            }
        }
    }
    for (name, device) in [("flex", Device::flex()), ("cube-cpu", Device::cpu())] {
        let on = |d: &TensorData| Tensor::<4>::from_data(d.clone(), &device).cast(FloatDType::BF16);
        let mm = on(&a).matmul(on(&b));
        let conv = conv2d(
            on(&x),
            on(&w),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        // What bf16 itself allows: the exact result rounded once to bf16.
        let rounded = |e: &[f64]| -> Vec<f32> {
            let t = Tensor::<1>::from_data(
                TensorData::new(e.iter().map(|v| *v as f32).collect(), [e.len()]),
                &Device::flex(),
            );
            host(t.cast(FloatDType::BF16))
        };
        println!(
            "{{\"device\": \"{name}\", \"matmul_bf16_relative\": {:.3e}, \"conv3x3_bf16_relative\": \
             {:.3e}, \"rounded_once_matmul\": {:.3e}, \"rounded_once_conv\": {:.3e}}}",
            relative(&host(mm), &exact),
            relative(&host(conv), &conv_exact),
            relative(&rounded(&exact), &exact),
            relative(&rounded(&conv_exact), &conv_exact),
        );
    }
}

fn all_reduce_on_cpu() {
    let device = Device::cpu();
    let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &device);
    let reduced = all_reduce(t, ReduceOperation::Sum, vec![device.clone()]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = reduced.resolve();
        t.into_data().try_to_vec::<f32>()
    }));
    match result {
        Ok(Ok(values)) => println!("{{\"all_reduce\": \"ok\", \"values\": {values:?}}}"),
        Ok(Err(e)) => println!("{{\"all_reduce\": \"error\", \"message\": \"{e:?}\"}}"),
        Err(_) => println!("{{\"all_reduce\": \"panicked\"}}"),
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("bf16") => bf16(),
        Some("all-reduce") => all_reduce_on_cpu(),
        _ => {
            eprintln!("usage: cube_cpu_repro bf16|all-reduce");
            std::process::exit(2);
        }
    }
}
