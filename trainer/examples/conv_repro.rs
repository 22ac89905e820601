//! The smallest reproduction of where the CPU step's time goes: one convolution, forward and
//! forward + backward, on burn-flex, at the shapes of the CPU benchmarks' models. Its twin in
//! PyTorch is `trainer/benches/conv_repro.py`, which times the shapes this prints (the list
//! lives here only); `trainer/benches/conv_repro.sh` runs both and prints the ratios.
//!
//! Each shape is timed twice in the same run: burn-flex's own convolution, and the trainer's
//! (`cpu_kernels::conv`, our CPU convolution with its own backward).
//!
//! `cargo run --release -p trainer --example conv_repro` prints one JSON line per shape and
//! convolution.

use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

/// (name, batch, in channels, out channels, side, kernel, stride).
const SHAPES: [(&str, usize, usize, usize, usize, usize, usize); 9] = [
    ("r18/8 32px stage1 3x3", 64, 8, 8, 32, 3, 1),
    ("r18/8 32px stage3 3x3", 64, 32, 32, 8, 3, 1),
    ("r18/8 32px stage4 3x3", 64, 64, 64, 4, 3, 1),
    ("r50 224px stem 7x7/2 b8", 8, 3, 64, 224, 7, 2),
    ("r50 224px stage1 3x3 b8", 8, 64, 64, 56, 3, 1),
    ("r50 224px stage1 1x1 b8", 8, 256, 64, 56, 1, 1),
    ("r50 224px stage2 3x3 b8", 8, 128, 128, 28, 3, 1),
    ("r50 224px stage3 3x3 b8", 8, 256, 256, 14, 3, 1),
    ("r50 224px stage4 3x3 b8", 8, 512, 512, 7, 3, 1),
];

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    for (name, n, cin, cout, side, k, stride) in SHAPES {
        let x = Tensor::<4>::random([n, cin, side, side], Distribution::Default, &device)
            .require_grad();
        let w =
            Tensor::<4>::random([cout, cin, k, k], Distribution::Default, &device).require_grad();
        let options = || ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], 1);
        for (framework, ours) in [("burn-flex 0.22.1", false), ("rsb", true)] {
            let time = |backward: bool, reps: usize| {
                let start = Instant::now();
                for _ in 0..reps {
                    let y = if ours {
                        cpu_kernels::conv::conv2d(x.clone(), w.clone(), None, options())
                    } else {
                        conv2d(x.clone(), w.clone(), None, options())
                    };
                    if backward {
                        let _ = y.sum().backward();
                    } else {
                        let _ = y.sum().into_scalar::<f32>();
                    }
                }
                start.elapsed().as_secs_f64() * 1e3 / reps as f64
            };
            let reps = 5;
            // Warm-up: allocations and first-touch page faults out of the timing.
            time(true, 1);
            let forward_ms = time(false, reps);
            let step_ms = time(true, reps);
            println!(
                "{{\"framework\": \"{framework}\", \"shape\": \"{name}\", \"dims\": \
             [{n}, {cin}, {cout}, {side}, {k}, {stride}], \"forward_ms\": {forward_ms:.3}, \
             \"forward_backward_ms\": {step_ms:.3}}}"
            );
        }
    }
}
