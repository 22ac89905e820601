//! Batch norm's training forward and backward on NCHW f32 slices, for the CPU backend: one
//! pass per channel for the statistics (summed in f64) and one per image plane for the output,
//! threads over channels and planes. burn's default (which burn-flex keeps) computes them out
//! of tensor operations that swap the batch and channel dimensions, copying the whole
//! activation several times a layer.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::activation::{Activation, Pointwise, per_activation};
use crate::simd;
use crate::slices::filled;

/// An `[N, C, H, W]` activation's sizes: images, channels, positions per plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// H × W.
    pub hw: usize,
}

impl Shape {
    /// Values of one channel over the batch (N × H × W).
    fn per_channel(&self) -> usize {
        self.n * self.hw
    }

    /// Channel `c`'s values: one plane of `hw` per image.
    fn planes<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        (0..self.n).map(move |n| {
            let at = (n * self.c + c) * self.hw;
            &x[at..at + self.hw]
        })
    }
}

/// `(Σ f(a[i], b[i]), Σ g(a[i], b[i]))` over two slices of one length (one pass for both), each
/// sum in eight f64 lanes added in a fixed order. f64, because a diverging run's activations
/// reach 1e19 and more: their squares overflow f32 long before the variance itself would, and
/// an infinite variance normalizes to a finite output that hides the divergence from the loss.
#[inline(always)]
fn lanes2(
    a: &[f32],
    b: &[f32],
    f: impl Fn(f64, f64) -> f64,
    g: impl Fn(f64, f64) -> f64,
) -> (f64, f64) {
    // The terms of a block are computed first, element by element, then added lane by lane:
    // written as one loop over eight lanes of two inputs the compiler kept it scalar.
    const BLOCK: usize = 64;
    debug_assert_eq!(a.len(), b.len());
    let (mut acc_f, mut acc_g) = ([0f64; 8], [0f64; 8]);
    let (mut terms_f, mut terms_g) = ([0f64; BLOCK], [0f64; BLOCK]);
    let whole = a.len() / 8 * 8;
    for start in (0..whole).step_by(BLOCK) {
        let end = (start + BLOCK).min(whole);
        let (block_a, block_b) = (&a[start..end], &b[start..end]);
        let n = block_a.len();
        let terms = terms_f[..n].iter_mut().zip(&mut terms_g[..n]);
        for ((tf, tg), (&x, &y)) in terms.zip(block_a.iter().zip(block_b)) {
            let (x, y) = (f64::from(x), f64::from(y));
            *tf = f(x, y);
            *tg = g(x, y);
        }
        add_lanes(&mut acc_f, &terms_f[..n]);
        add_lanes(&mut acc_g, &terms_g[..n]);
    }
    let pairs = || {
        a[whole..]
            .iter()
            .zip(&b[whole..])
            .map(|(&x, &y)| (f64::from(x), f64::from(y)))
    };
    let tail_f: f64 = pairs().map(|(x, y)| f(x, y)).sum();
    let tail_g: f64 = pairs().map(|(x, y)| g(x, y)).sum();
    (
        acc_f.iter().sum::<f64>() + tail_f,
        acc_g.iter().sum::<f64>() + tail_g,
    )
}

/// `acc[l] += t[8k + l]` for every whole chunk of eight terms, in order.
#[inline(always)]
fn add_lanes(acc: &mut [f64; 8], terms: &[f64]) {
    for chunk in terms.as_chunks::<8>().0 {
        for lane in 0..8 {
            acc[lane] += chunk[lane];
        }
    }
}

/// Per channel, the batch mean and the biased variance (what normalizes, and what burn's
/// `batch_norm_train` returns), summed in f64 in a fixed order.
///
/// One pass over the activation: the sums of `x - k` and of its square, `k` the channel's
/// first value, give the mean and the variance (`E[(x-k)²] - E[x-k]²`). Shifted by a value of
/// the data, the two terms are of the variance's order and f64 keeps all of f32's digits of
/// their difference; a pass for the mean and another for the squares read every activation
/// twice, the one pass per layer that memory bandwidth made ResNet-50's batch norm cost.
pub fn statistics(s: Shape, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let count = s.per_channel().max(1) as f64;
    (0..s.c)
        .into_par_iter()
        .map(|c| {
            let k = s
                .planes(x, c)
                .find_map(|p| p.first())
                .map_or(0.0, |&v| f64::from(v));
            let (sum, squares) = simd::run(
                #[inline(always)]
                || {
                    // A loop, not map/fold: the fold stayed a call, compiled for baseline
                    // x86-64 outside the dispatch (objdump).
                    let (mut sum, mut squares) = (0.0, 0.0);
                    for p in s.planes(x, c) {
                        let (a, b) = lanes2(p, p, |v, _| v - k, |v, _| (v - k).powi(2));
                        sum += a;
                        squares += b;
                    }
                    (sum, squares)
                },
            );
            let shifted_mean = sum / count;
            let var = squares / count - shifted_mean * shifted_mean;
            // Rounding can take a constant channel's variance below 0 (`max` would also turn a
            // diverged run's NaN into 0).
            let var = if var < 0.0 { 0.0 } else { var };
            ((k + shifted_mean) as f32, var as f32)
        })
        .unzip()
}

/// `1 / sqrt(var + ε)` per channel.
fn inverse_std(var: &[f32], epsilon: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
        .collect()
}

/// Channel `c`'s output as `y = x · scale + shift`: the f32 operations [`normalize`] does,
/// which the backward pass repeats to find the fused activation's input again.
fn scale_shift(c: usize, (gamma, beta): (&[f32], &[f32]), mean: &[f32], inv: &[f32]) -> (f32, f32) {
    let scale = gamma[c] * inv[c];
    (scale, beta[c] - mean[c] * scale)
}

/// `(x − mean) / sqrt(var + ε) · γ + β`, then the activation that follows batch norm (a
/// ResNet's ReLU, an EfficientNet's SiLU), fused: one pass over the activation less, forward
/// and backward.
pub fn normalize(
    s: Shape,
    x: &[f32],
    stats: (&[f32], &[f32]),
    params: (&[f32], &[f32]),
    epsilon: f64,
    activation: Activation,
) -> Vec<f32> {
    per_activation!(activation, normalize_as(s, x, stats, params, epsilon))
}

fn normalize_as<A: Pointwise>(
    s: Shape,
    x: &[f32],
    (mean, var): (&[f32], &[f32]),
    (gamma, beta): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    let inv = inverse_std(var, epsilon);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(s.hw.max(1))
            .zip(x.par_chunks(s.hw.max(1)))
            .enumerate()
            .for_each(|(plane, (y, x))| {
                let (scale, shift) = scale_shift(plane % s.c, (gamma, beta), mean, &inv);
                simd::run(
                    #[inline(always)]
                    || {
                        for (y, &x) in y.iter_mut().zip(x) {
                            y.write(A::forward(x * scale + shift));
                        }
                    },
                );
            });
    };
    // SAFETY: the planes cover the output, and each is written whole.
    unsafe { filled(x.len(), fill) }
}

/// Per channel, `Σ dz · x̂` (γ's gradient) and `Σ dz` (β's), where
/// `x̂ = (x − mean) / sqrt(var + ε)` and `dz` is the output's gradient `dy` taken back
/// through the fused activation ([`normalize`]), whose input γ and β give again.
pub fn parameter_grads(
    s: Shape,
    x: &[f32],
    dy: &[f32],
    stats: (&[f32], &[f32]),
    params: (&[f32], &[f32]),
    epsilon: f64,
    activation: Activation,
) -> (Vec<f32>, Vec<f32>) {
    per_activation!(
        activation,
        parameter_grads_as(s, x, dy, stats, params, epsilon)
    )
}

fn parameter_grads_as<A: Pointwise>(
    s: Shape,
    x: &[f32],
    dy_all: &[f32],
    (mean, var): (&[f32], &[f32]),
    params: (&[f32], &[f32]),
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>) {
    let inv = inverse_std(var, epsilon);
    (0..s.c)
        .into_par_iter()
        .map(|c| {
            let m = f64::from(mean[c]);
            let (scale, shift) = scale_shift(c, params, mean, &inv);
            // d and x arrive as f64 from f32, so `as f32` gives them again, exactly.
            let dz = |d: f64, x: f64| f64::from(A::backward(x as f32 * scale + shift, d as f32));
            let (mut dg, mut db) = (0f64, 0f64);
            simd::run(
                #[inline(always)]
                || {
                    for (xp, dp) in s.planes(x, c).zip(s.planes(dy_all, c)) {
                        let (g, b) = lanes2(dp, xp, |d, x| dz(d, x) * (x - m), dz);
                        dg += g;
                        db += b;
                    }
                },
            );
            ((dg * f64::from(inv[c])) as f32, db as f32)
        })
        .unzip()
}

/// The input's gradient: `γ / sqrt(var + ε) · (dz − mean(dz) − x̂ · mean(dz · x̂))`, the means
/// over each channel's N × H × W values, from [`parameter_grads`]'s sums, `dz` taken back
/// through the fused activation as there.
pub fn input_grad(
    s: Shape,
    x_dy: (&[f32], &[f32]),
    stats: (&[f32], &[f32]),
    params: (&[f32], &[f32]),
    param_grads: (&[f32], &[f32]),
    epsilon: f64,
    activation: Activation,
) -> Vec<f32> {
    per_activation!(
        activation,
        input_grad_as(s, x_dy, stats, params, param_grads, epsilon)
    )
}

fn input_grad_as<A: Pointwise>(
    s: Shape,
    (x, dy): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    params: (&[f32], &[f32]),
    (dgamma, dbeta): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    let inv = inverse_std(var, epsilon);
    let count = s.per_channel().max(1) as f32;
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(s.hw.max(1))
            .zip(x.par_chunks(s.hw.max(1)).zip(dy.par_chunks(s.hw.max(1))))
            .enumerate()
            .for_each(|(plane, (dx, (x, dy)))| {
                let c = plane % s.c;
                let (mean_dy, mean_dy_xhat) = (dbeta[c] / count, dgamma[c] / count);
                let (scale, shift) = scale_shift(c, params, mean, &inv);
                let (mean, inv) = (mean[c], inv[c]);
                simd::run(
                    #[inline(always)]
                    || {
                        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                            let dz = A::backward(x * scale + shift, dy);
                            let xhat = (x - mean) * inv;
                            dx.write(scale * (dz - mean_dy - xhat * mean_dy_xhat));
                        }
                    },
                );
            });
    };
    // SAFETY: the planes cover the gradient, and each is written whole.
    unsafe { filled(x.len(), fill) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..3.0)).collect()
    }

    /// The loss `Σ r · act(bn(x))` in f64, by the definition (`act`: none or SiLU).
    fn loss(
        s: Shape,
        x: &[f32],
        (gamma, beta): (&[f32], &[f32]),
        r: &[f32],
        act: Activation,
    ) -> f64 {
        let eps = 1e-5;
        let mut total = 0.0;
        for c in 0..s.c {
            let values: Vec<(usize, f64)> = (0..s.n)
                .flat_map(|n| (0..s.hw).map(move |i| (n * s.c + c) * s.hw + i))
                .map(|at| (at, f64::from(x[at])))
                .collect();
            let count = values.len() as f64;
            let mean = values.iter().map(|v| v.1).sum::<f64>() / count;
            let var = values.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / count;
            for (at, v) in values {
                let y = (v - mean) / (var + eps).sqrt() * f64::from(gamma[c]) + f64::from(beta[c]);
                let y = match act {
                    Activation::Silu => y / (1.0 + (-y).exp()),
                    _ => y,
                };
                total += y * f64::from(r[at]);
            }
        }
        total
    }

    #[test]
    fn the_output_and_gradients_are_the_definitions() {
        for act in [Activation::Identity, Activation::Silu] {
            check_against_the_definition(act);
        }
    }

    fn check_against_the_definition(act: Activation) {
        let s = Shape { n: 3, c: 4, hw: 5 };
        let x = random(s.n * s.c * s.hw, 1);
        let gamma = random(s.c, 2);
        let beta = random(s.c, 3);
        let r = random(x.len(), 4);
        let eps = 1e-5;
        let (mean, var) = statistics(s, &x);
        let y = normalize(s, &x, (&mean, &var), (&gamma, &beta), eps, act);
        let ours: f64 = y
            .iter()
            .zip(&r)
            .map(|(y, r)| f64::from(*y) * f64::from(*r))
            .sum();
        let want = loss(s, &x, (&gamma, &beta), &r, act);
        assert!(
            (ours - want).abs() < 1e-4 * want.abs().max(1.0),
            "{act:?}: {ours} vs {want}"
        );
        // Gradients against central differences of the f64 definition.
        let params = (&gamma[..], &beta[..]);
        let (dgamma, dbeta) = parameter_grads(s, &x, &r, (&mean, &var), params, eps, act);
        let dx = input_grad(
            s,
            (&x, &r),
            (&mean, &var),
            params,
            (&dgamma, &dbeta),
            eps,
            act,
        );
        let h = 1e-3;
        let numeric = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * f64::from(h));
        for k in [0, 7, x.len() - 1] {
            let d = numeric(&|e| {
                let mut x = x.clone();
                x[k] += e;
                loss(s, &x, (&gamma, &beta), &r, act)
            });
            assert!(
                (f64::from(dx[k]) - d).abs() < 2e-3 * d.abs().max(1.0),
                "{act:?}: dx[{k}]: {} vs {d}",
                dx[k]
            );
        }
        for c in 0..s.c {
            let dg = numeric(&|e| {
                let mut g = gamma.clone();
                g[c] += e;
                loss(s, &x, (&g, &beta), &r, act)
            });
            let db = numeric(&|e| {
                let mut b = beta.clone();
                b[c] += e;
                loss(s, &x, (&gamma, &b), &r, act)
            });
            assert!(
                (f64::from(dgamma[c]) - dg).abs() < 2e-3 * dg.abs().max(1.0),
                "{act:?}: dγ[{c}]"
            );
            assert!(
                (f64::from(dbeta[c]) - db).abs() < 2e-3 * db.abs().max(1.0),
                "{act:?}: dβ[{c}]"
            );
        }
    }

    #[test]
    fn the_one_pass_variance_keeps_its_digits_far_from_zero_and_stays_nan_when_diverged() {
        // Channel 0: 1000 + noise of 0.01 (the mean 1e5 standard deviations away); channel 1:
        // constant; both against the two-pass definition in f64.
        let s = Shape { n: 2, c: 2, hw: 37 };
        let noise = random(s.n * s.hw, 9);
        let mut x = vec![0f32; s.n * s.c * s.hw];
        for n in 0..s.n {
            for i in 0..s.hw {
                x[(n * s.c) * s.hw + i] = 1000.0 + 0.01 * noise[n * s.hw + i];
                x[(n * s.c + 1) * s.hw + i] = -3.25;
            }
        }
        let (mean, var) = statistics(s, &x);
        for c in 0..s.c {
            let values: Vec<f64> = s.planes(&x, c).flatten().map(|&v| f64::from(v)).collect();
            let m = values.iter().sum::<f64>() / values.len() as f64;
            let v = values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / values.len() as f64;
            assert!(
                (f64::from(mean[c]) - m).abs() <= 1e-7 * m.abs(),
                "mean[{c}]"
            );
            assert!(
                (f64::from(var[c]) - v).abs() <= 1e-5 * v,
                "var[{c}]: {} vs {v}",
                var[c]
            );
        }
        x[5] = f32::INFINITY;
        let (_, var) = statistics(s, &x);
        assert!(
            var[0].is_nan(),
            "an infinite activation's variance: {}",
            var[0]
        );
    }
}
