//! One LAMB update of one tensor on the CPU backend, fused: burn's `Lamb` arithmetic (the same
//! f32 operations in the same order, so the same moments) in two passes over the parameter
//! instead of about twenty tensor operations, each of which read and wrote a whole tensor (a
//! ResNet-50 step spent 190 ms in them, torch 95). The norms of the trust ratio are summed in
//! f64 in a fixed order (burn: f32 in flex's).
//!
//! [`FusedLamb`] is a burn [`Optimizer`] whose state is burn's own [`LambState`], so an
//! optimizer record (a checkpoint's `optimizer.bpk`) is the same either way. On burn-flex in
//! f32 it runs [`step`]; on every other device (CUDA, the CubeCL stand-in) and dtype, burn's
//! `Lamb`.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::optim::{LambConfig, LambState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::slices::{filled, is_flex, tensor, values};

/// LAMB's hyper-parameters, as burn's `LambConfig` holds them (f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// ε, added after the square root.
    pub epsilon: f32,
    /// Decoupled weight decay, added to the update before the trust ratio.
    pub weight_decay: f32,
    /// Whether the update is scaled by `‖p‖ / ‖update‖`.
    pub trust_ratio: bool,
}

impl Hyper {
    /// burn's own `Lamb` with these values (what [`FusedLamb`] runs off burn-flex).
    pub fn burn_lamb(self) -> burn::optim::Lamb {
        LambConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .with_use_trust_ratio(self.trust_ratio)
            .build()
    }
}

/// Values per task of the two passes: fixed, so the norms' partial sums and their order are the
/// same on every call whatever the thread count.
const CHUNK: usize = 1 << 15;

/// One update: returns the parameter, first and second moment after it, `[3 × len]` in that
/// order. `m` and `v` are the moments before (zeros at the first step, which gives burn's
/// first-step moments exactly: `0·β + x = x`).
pub fn step((p, g, m, v): (&[f32], &[f32], &[f32], &[f32]), u: Update) -> Vec<f32> {
    let (lr, time, h) = (u.lr, u.time, u.hyper);
    let n = p.len();
    let (f1, f2) = (1.0 - h.beta_1, 1.0 - h.beta_2);
    let (bc1, bc2) = (1.0 - h.beta_1.powi(time), 1.0 - h.beta_2.powi(time));
    // Pass 1: the moments, and the update (before the trust ratio) where the parameter goes.
    let mut norms: Vec<(f64, f64)> = Vec::new();
    let pass_1 = |out: &mut [MaybeUninit<f32>]| {
        let (update, moments) = out.split_at_mut(n);
        let (m_out, v_out) = moments.split_at_mut(n);
        norms = update
            .par_chunks_mut(CHUNK)
            .zip(m_out.par_chunks_mut(CHUNK))
            .zip(v_out.par_chunks_mut(CHUNK))
            .enumerate()
            .map(|(k, ((u, mo), vo))| {
                let at = k * CHUNK;
                let len = u.len();
                let (p, g) = (&p[at..at + len], &g[at..at + len]);
                let (m, v) = (&m[at..at + len], &v[at..at + len]);
                let (mut pp, mut uu) = (0f64, 0f64);
                for i in 0..len {
                    // burn: m·β₁ + g·(1-β₁); v·β₂ + g²·(1-β₂); m̂ / (√v̂ + ε) [+ p·wd].
                    let m_new = m[i] * h.beta_1 + g[i] * f1;
                    let v_new = v[i] * h.beta_2 + (g[i] * g[i]) * f2;
                    let mut x = (m_new / bc1) / ((v_new / bc2).sqrt() + h.epsilon);
                    if h.weight_decay != 0.0 {
                        x += p[i] * h.weight_decay;
                    }
                    mo[i].write(m_new);
                    vo[i].write(v_new);
                    u[i].write(x);
                    pp += f64::from(p[i]) * f64::from(p[i]);
                    uu += f64::from(x) * f64::from(x);
                }
                (pp, uu)
            })
            .collect();
    };
    // SAFETY: pass 1 writes every element of the three rows.
    let mut out = unsafe { filled(3 * n, pass_1) };
    let (pp, uu) = norms
        .iter()
        .fold((0f64, 0f64), |(a, b), (x, y)| (a + x, b + y));
    let (p_norm, u_norm) = (pp.sqrt(), uu.sqrt());
    let trust = if h.trust_ratio && p_norm > 0.0 && u_norm > 0.0 {
        (p_norm / u_norm) as f32
    } else {
        1.0
    };
    // Pass 2: burn's p - (update · trust) · lr.
    let lr = lr as f32;
    out[..n]
        .par_chunks_mut(CHUNK)
        .zip(p.par_chunks(CHUNK))
        .for_each(|(u, p)| {
            for (u, &p) in u.iter_mut().zip(p) {
                *u = p - (*u * trust) * lr;
            }
        });
    out
}

/// One update's scalars: the learning rate, the step count (1 for the first) and the
/// hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Learning rate.
    pub lr: f64,
    /// This step's count, from 1.
    pub time: i32,
    /// β₁, β₂, ε, decay, trust ratio.
    pub hyper: Hyper,
}

/// The fused update as a burn backend extension (flex, and autodiff over it: the optimizer
/// sees its parameters' inner tensors, but the extension is declared for both).
#[backend_extension(Flex, Autodiff)]
pub trait CpuLamb: Backend {
    /// [`step`] on `[numel]` tensors (the parameter, its gradient, the two moments); returns
    /// `[3, numel]`.
    fn cpu_lamb_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        update: Update,
    ) -> FloatTensor<Self>;
}

impl CpuLamb for Flex {
    fn cpu_lamb_step(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        u: Update,
    ) -> FlexTensor {
        let n = p.shape().num_elements();
        let [p, g, m, v] = [&p, &g, &m, &v].map(values);
        tensor(step((&p, &g, &m, &v), u), [3, n])
    }
}

impl<B: CpuLamb, C: CheckpointStrategy> CpuLamb for Autodiff<B, C> {
    // An optimizer step is never differentiated.
    crate::autodiff::on_inner! {
        fn cpu_lamb_step(p, g, m, v; u: Update);
    }
}

/// burn's `Lamb`, with the fused update on burn-flex in f32; see the module documentation.
#[derive(Clone)]
pub struct FusedLamb {
    hyper: Hyper,
    burn: burn::optim::Lamb,
}

impl FusedLamb {
    /// The optimizer burn's `LambConfig` with these values builds.
    pub fn new(hyper: Hyper) -> Self {
        FusedLamb {
            hyper,
            burn: hyper.burn_lamb(),
        }
    }
}

impl Optimizer for FusedLamb {
    type State<const D: usize> = LambState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<LambState<D>>,
    ) -> (Tensor<D>, Option<LambState<D>>) {
        let f32s = param.dtype() == DType::F32 && grad.dtype() == DType::F32;
        let same_shape = state
            .as_ref()
            .is_none_or(|s| s.moment_1.dims() == param.dims() && s.moment_2.dims() == param.dims());
        if !(is_flex(&param.device()) && f32s && same_shape) {
            return self.burn.step(lr, param, grad, state);
        }
        let dims = param.dims();
        let n = param.shape().num_elements();
        let (time, m, v) = match state {
            Some(s) => (s.time + 1, s.moment_1, s.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let update = Update {
            lr,
            time: i32::try_from(time).unwrap_or(i32::MAX),
            hyper: self.hyper,
        };
        let [p, g, m, v] = [param, grad, m, v].map(|t| t.reshape([n]).into_dispatch());
        let out: Tensor<2> =
            Tensor::from_dispatch(<Dispatch as CpuLamb>::cpu_lamb_step(p, g, m, v, update));
        let row = |r: usize| out.clone().slice([r..r + 1, 0..n]).reshape(dims);
        let state = LambState {
            time,
            moment_1: row(1),
            moment_2: row(2),
        };
        (row(0), Some(state))
    }

    fn to_device<const D: usize>(state: LambState<D>, device: &Device) -> LambState<D> {
        burn::optim::Lamb::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random;

    #[test]
    fn three_steps_equal_burns_lamb() {
        let device = Device::flex();
        for (hyper, shape) in [
            (
                Hyper {
                    beta_1: 0.9,
                    beta_2: 0.999,
                    epsilon: 1e-6,
                    weight_decay: 0.02,
                    trust_ratio: true,
                },
                [5, 7, 3, 3],
            ),
            (
                Hyper {
                    beta_1: 0.8,
                    beta_2: 0.99,
                    epsilon: 1e-8,
                    weight_decay: 0.0,
                    trust_ratio: false,
                },
                [(CHUNK + 9) / 9, 1, 3, 3],
            ),
        ] {
            let ours = FusedLamb::new(hyper);
            let make = |seed: u64| random(shape, seed, &device);
            let (mut p_ours, mut p_burn) = (make(1), make(1));
            let (mut s_ours, mut s_burn) = (None, None);
            for (k, lr) in [1e-2, 3e-3, 5e-2].into_iter().enumerate() {
                let g = make(10 + k as u64);
                (p_ours, s_ours) = ours.step(lr, p_ours, g.clone(), s_ours);
                (p_burn, s_burn) = ours.burn.step(lr, p_burn, g, s_burn);
            }
            let close = |a: Tensor<4>, b: Tensor<4>, what: &str| {
                let a = a.into_data().try_to_vec::<f32>().expect("f32");
                let b = b.into_data().try_to_vec::<f32>().expect("f32");
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                        "{what}[{i}]: {x} vs burn's {y}"
                    );
                }
            };
            close(p_ours, p_burn, "parameter");
            let (s_ours, s_burn) = (s_ours.expect("state"), s_burn.expect("state"));
            assert_eq!(s_ours.time, s_burn.time);
            close(s_ours.moment_1, s_burn.moment_1, "first moment");
            close(s_ours.moment_2, s_burn.moment_2, "second moment");
        }
    }
}
