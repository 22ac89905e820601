//! The smallest reproductions of where `--device cube-cpu` (burn's CubeCL CPU runtime) differs
//! from flex, each against a float64 reference computed here (docs/gpu.md "The GPU's code path on
//! the CPU"):
//!
//! - `bf16`: one matmul and one 3×3 convolution with bf16 operands (what amp and `--dtype
//!   bf16` compute). flex computes in f32 and rounds the result once; the question is how far
//!   cube-cpu's result is from the exact product of the same bf16 operands.
//! - `all-reduce`: burn's `all_reduce` on the one CPU device (what `--devices` and
//!   `--distributed` need), which cubecl-cpu's server does not implement.
//! - `unit-matmul [--one-sample]`: one 16 × 2048 by 2048 × 32 matmul with its left operand
//!   transposed (a shape the smoke recipe's backward tunes, where cubecl's `gemm_cpu_general`
//!   candidate launches a unit kernel with more units than this machine has cores), its first
//!   call timed with cubecl's autotune budget (or, with
//!   `--one-sample`, the trainer's: `trainer::device::cube_cpu`), and the process's threads
//!   counted. Run it with `CUBECL_AUTOTUNE_CACHE=0` so that every run tunes again; compiled
//!   kernels stay cached, so run it twice and read the second.
//! - `conv-grads`: the convolutions of ResNet-50 at 64 px (batch 8), forward and backward on
//!   flex and cube-cpu from the same input, weight and upstream gradient: the relative
//!   difference of the output, the input gradient and the weight gradient, shape by shape.
//!
//! `trainer/cuda/llvm_env.sh` sourced, then
//! `cargo run --profile dist -p trainer --features cuda,cube-cpu --example cube_cpu_repro -- bf16`.

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};
use std::time::Instant;
use trainer::device::{DeviceKind, Precision};

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

fn unit_matmul(one_sample: bool) {
    let device = if one_sample {
        match DeviceKind::CubeCpu.device(Precision::F32) {
            Ok(device) => device,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    } else {
        Device::cpu()
    };
    let normal = Distribution::Normal(0.0, 1.0);
    let a = Tensor::<2>::random([2048, 16], normal, &device);
    let b = Tensor::<2>::random([2048, 32], normal, &device);
    // The operands exist before the clock starts: only the matmul (its tuning) is timed.
    let _ = (host(a.clone()), host(b.clone()));
    let mut calls = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let _ = host(a.clone().transpose().matmul(b.clone()));
        calls.push(start.elapsed().as_secs_f64());
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    println!(
        "{{\"autotune\": \"{}\", \"first_call_s\": {:.2}, \"second_call_ms\": {:.2}, \
         \"threads\": {threads}, \"cores\": {}}}",
        if one_sample {
            "one sample (trainer)"
        } else {
            "cubecl default"
        },
        calls[0],
        calls[1] * 1e3,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
}

/// A convolution: (name, batch, in channels, out channels, side, kernel, stride, padding).
type ConvShape = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// ResNet-50's convolutions at 64 px: the stem and one of each kind per stage.
const R50_64PX: [ConvShape; 9] = [
    ("stem 7x7/2", 8, 3, 64, 64, 7, 2, 3),
    ("layer1 1x1 64->64", 8, 64, 64, 16, 1, 1, 0),
    ("layer1 3x3 64->64", 8, 64, 64, 16, 3, 1, 1),
    ("layer1 1x1 64->256", 8, 64, 256, 16, 1, 1, 0),
    ("layer3 3x3 256->256", 8, 256, 256, 4, 3, 1, 1),
    ("layer3 1x1 256->1024", 8, 256, 1024, 4, 1, 1, 0),
    ("layer4 1x1 1024->512", 8, 1024, 512, 4, 1, 1, 0),
    ("layer4 3x3/2 512->512", 8, 512, 512, 4, 3, 2, 1),
    ("layer4 1x1 512->2048", 8, 512, 2048, 2, 1, 1, 0),
];

/// Relative L2 distance of `got` from `reference`, both f32.
fn relative32(got: &[f32], reference: &[f32]) -> f64 {
    let exact: Vec<f64> = reference.iter().map(|v| f64::from(*v)).collect();
    relative(got, &exact)
}

fn conv_grads() {
    Device::flex().seed(0);
    for (name, n, cin, cout, side, k, stride, pad) in R50_64PX {
        let draw = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex()).into_data()
        };
        let out = (side + 2 * pad - k) / stride + 1;
        let (x, w, g) = (
            draw([n, cin, side, side]),
            draw([cout, cin, k, k]),
            draw([n, cout, out, out]),
        );
        let run = |device: Device| {
            let device = device.autodiff();
            let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
            let w = Tensor::<4>::from_data(w.clone(), &device).require_grad();
            let g = Tensor::<4>::from_data(g.clone(), &device);
            let options = ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
            let y = conv2d(x.clone(), w.clone(), None, options);
            let grads = (y.clone() * g).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).map(host).unwrap_or_default();
            (host(y), grad(&x), grad(&w))
        };
        let (fy, fx, fw) = run(Device::flex());
        let (cy, cx, cw) = run(Device::cpu());
        println!(
            "{{\"conv\": \"{name}\", \"output\": {:.2e}, \"input_grad\": {:.2e}, \
             \"weight_grad\": {:.2e}}}",
            relative32(&cy, &fy),
            relative32(&cx, &fx),
            relative32(&cw, &fw),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bf16") => bf16(),
        Some("all-reduce") => all_reduce_on_cpu(),
        Some("conv-grads") => conv_grads(),
        Some("unit-matmul") => unit_matmul(args.iter().any(|a| a == "--one-sample")),
        _ => {
            eprintln!(
                "usage: cube_cpu_repro bf16|all-reduce|unit-matmul [--one-sample]|conv-grads"
            );
            std::process::exit(2);
        }
    }
}
