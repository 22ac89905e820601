//! rsb's CPU kernels for burn-flex, the CPU backend the trainer runs on by default.
//!
//! burn-flex 0.22 computes a convolution's backward as a transposed convolution, zero-fills its
//! im2col buffers on every call, and runs batch norm, pooling, the residual join and LAMB as
//! chains of whole-tensor operations; a ResNet-50 training step spent most of its time there.
//! Each module here is one operation, in two layers:
//! - plain functions over `f32` slices (`forward`, `backward`, `step`, …), which know nothing of
//!   burn and are what the benches and most unit tests exercise;
//! - a burn function of tensors (`conv2d`, `train`, `max_pool2d`, `add_relu`, [`FusedLamb`])
//!   that plugs them into burn-flex through burn's backend extension, with an autodiff
//!   backward of its own (what that backward calls runs on the inner backend: `autodiff.rs`),
//!   and falls back to burn's own operation everywhere else (CUDA, the
//!   CubeCL stand-in, half precision, shapes the kernel does not take), so a caller uses it
//!   unconditionally.
//!
//! The operations:
//! - [`conv`]: 2-D convolution as im2col and matrix products (gemm), with its input and weight
//!   gradients;
//! - [`batch_norm`]: batch norm in training, one pass for the statistics, the activation
//!   that follows fused ([`activation`]: ReLU or SiLU);
//! - [`max_pool`]: the stem's max pooling, by phases, its gradient found again in the input;
//! - [`pointwise`]: an activation on its own (ViT's GELU, squeeze-excite's SiLU);
//! - [`residual`]: a block's `relu(branch + shortcut)` and its gradient;
//! - [`lamb`]: one fused LAMB update per tensor, with burn's `Lamb` state.
//!
//! Every inner loop runs through [`simd::run`], the crate's one SIMD dispatch policy
//! (`--cpu-ext`). Dependencies go one way: burn, gemm, pulp and rayon below; the trainer's
//! network (`trainer::model`) above.
//!
//! [`FusedLamb`]: lamb::FusedLamb

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod activation;
mod autodiff;
pub mod batch_norm;
pub mod conv;
pub mod lamb;
pub mod max_pool;
pub mod pointwise;
pub mod residual;
pub mod simd;
mod slices;
pub mod testing;

pub use simd::{CpuExt, CpuExtChoice};
pub use slices::is_flex;
