//! Batch norm's training forward and backward on NCHW f32 slices, for the CPU backend: one
//! pass per channel for the statistics (summed in f64) and one per image plane for the output,
//! threads over channels and planes. burn's default (which burn-flex keeps) computes them out
//! of tensor operations that swap the batch and channel dimensions, copying the whole
//! activation several times a layer.

use rayon::prelude::*;

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

/// `Σ f(i)` over `0..len` in eight f64 lanes (which the compiler vectorizes), added in a fixed
/// order. f64, because a diverging run's activations reach 1e19 and more: their squares
/// overflow f32 long before the variance itself would, and an infinite variance normalizes
/// to a finite output that hides the divergence from the loss.
fn lanes(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let whole = len / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (lane, a) in acc.iter_mut().enumerate() {
            *a += f(i + lane);
        }
    }
    let tail: f64 = (whole..len).map(&f).sum();
    acc.iter().sum::<f64>() + tail
}

/// Per channel, the batch mean and the biased variance (what normalizes, and what burn's
/// `batch_norm_train` returns), summed in f64 in a fixed order.
pub fn statistics(s: Shape, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let count = s.per_channel().max(1) as f64;
    (0..s.c)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = s
                .planes(x, c)
                .map(|p| lanes(p.len(), |i| f64::from(p[i])))
                .sum();
            let mean = sum / count;
            let squares: f64 = s
                .planes(x, c)
                .map(|p| lanes(p.len(), |i| (f64::from(p[i]) - mean).powi(2)))
                .sum();
            (mean as f32, (squares / count) as f32)
        })
        .unzip()
}

/// `1 / sqrt(var + ε)` per channel.
fn inverse_std(var: &[f32], epsilon: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
        .collect()
}

/// `(x − mean) / sqrt(var + ε) · γ + β`.
pub fn normalize(
    s: Shape,
    x: &[f32],
    (mean, var): (&[f32], &[f32]),
    (gamma, beta): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    let inv = inverse_std(var, epsilon);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(s.hw.max(1))
        .zip(x.par_chunks(s.hw.max(1)))
        .enumerate()
        .for_each(|(plane, (y, x))| {
            let c = plane % s.c;
            let scale = gamma[c] * inv[c];
            let shift = beta[c] - mean[c] * scale;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale + shift;
            }
        });
    y
}

/// Per channel, `Σ dy · x̂` (γ's gradient) and `Σ dy` (β's), where
/// `x̂ = (x − mean) / sqrt(var + ε)`.
pub fn parameter_grads(
    s: Shape,
    x: &[f32],
    dy: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>) {
    let inv = inverse_std(var, epsilon);
    (0..s.c)
        .into_par_iter()
        .map(|c| {
            let m = f64::from(mean[c]);
            let (mut dg, mut db) = (0f64, 0f64);
            for (xp, dp) in s.planes(x, c).zip(s.planes(dy, c)) {
                db += lanes(dp.len(), |i| f64::from(dp[i]));
                dg += lanes(dp.len(), |i| f64::from(dp[i]) * (f64::from(xp[i]) - m));
            }
            ((dg * f64::from(inv[c])) as f32, db as f32)
        })
        .unzip()
}

/// The input's gradient: `γ / sqrt(var + ε) · (dy − mean(dy) − x̂ · mean(dy · x̂))`, the means
/// over each channel's N × H × W values, from [`parameter_grads`]'s sums.
pub fn input_grad(
    s: Shape,
    (x, dy): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    gamma: &[f32],
    (dgamma, dbeta): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    let inv = inverse_std(var, epsilon);
    let count = s.per_channel().max(1) as f32;
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(s.hw.max(1))
        .zip(x.par_chunks(s.hw.max(1)).zip(dy.par_chunks(s.hw.max(1))))
        .enumerate()
        .for_each(|(plane, (dx, (x, dy)))| {
            let c = plane % s.c;
            let (mean_dy, mean_dy_xhat) = (dbeta[c] / count, dgamma[c] / count);
            let scale = gamma[c] * inv[c];
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                let xhat = (x - mean[c]) * inv[c];
                *dx = scale * (dy - mean_dy - xhat * mean_dy_xhat);
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..3.0)).collect()
    }

    /// The loss `Σ r · bn(x)` in f64, by the definition.
    fn loss(s: Shape, x: &[f32], gamma: &[f32], beta: &[f32], r: &[f32], eps: f64) -> f64 {
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
                total += y * f64::from(r[at]);
            }
        }
        total
    }

    #[test]
    fn the_output_and_gradients_are_the_definitions() {
        let s = Shape { n: 3, c: 4, hw: 5 };
        let x = random(s.n * s.c * s.hw, 1);
        let gamma = random(s.c, 2);
        let beta = random(s.c, 3);
        let r = random(x.len(), 4);
        let eps = 1e-5;
        let (mean, var) = statistics(s, &x);
        let y = normalize(s, &x, (&mean, &var), (&gamma, &beta), eps);
        let ours: f64 = y
            .iter()
            .zip(&r)
            .map(|(y, r)| f64::from(*y) * f64::from(*r))
            .sum();
        let want = loss(s, &x, &gamma, &beta, &r, eps);
        assert!(
            (ours - want).abs() < 1e-4 * want.abs().max(1.0),
            "{ours} vs {want}"
        );
        // Gradients against central differences of the f64 definition.
        let (dgamma, dbeta) = parameter_grads(s, &x, &r, (&mean, &var), eps);
        let dx = input_grad(s, (&x, &r), (&mean, &var), &gamma, (&dgamma, &dbeta), eps);
        let h = 1e-3;
        let numeric = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * f64::from(h));
        for k in [0, 7, x.len() - 1] {
            let d = numeric(&|e| {
                let mut x = x.clone();
                x[k] += e;
                loss(s, &x, &gamma, &beta, &r, eps)
            });
            assert!(
                (f64::from(dx[k]) - d).abs() < 2e-3 * d.abs().max(1.0),
                "dx[{k}]: {} vs {d}",
                dx[k]
            );
        }
        for c in 0..s.c {
            let dg = numeric(&|e| {
                let mut g = gamma.clone();
                g[c] += e;
                loss(s, &x, &g, &beta, &r, eps)
            });
            let db = numeric(&|e| {
                let mut b = beta.clone();
                b[c] += e;
                loss(s, &x, &gamma, &b, &r, eps)
            });
            assert!(
                (f64::from(dgamma[c]) - dg).abs() < 2e-3 * dg.abs().max(1.0),
                "dγ[{c}]"
            );
            assert!(
                (f64::from(dbeta[c]) - db).abs() < 2e-3 * db.abs().max(1.0),
                "dβ[{c}]"
            );
        }
    }
}
