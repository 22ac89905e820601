//! The networks' activations: none, ReLU (ResNets, RegNets), SiLU (EfficientNet) and GELU
//! (ViT), each as its value and as the gradient through it, element by element, written so
//! that the kernels' loops vectorize. Batch norm fuses the one that follows it
//! ([`crate::batch_norm`]); [`crate::pointwise`] applies one on its own.
//!
//! Why SiLU here: burn computes `silu(x)` as `x * sigmoid(x)`, with a scalar `expf` per value
//! and a pass over the activation for each of the sigmoid, the product and their backward
//! operations: 30 % of EfficientNet-B0's CPU step (perf, `trainer bench --model
//! efficientnet_b0`). Fused into batch norm it costs no pass of its own, and its exponential
//! ([`exp`]) is plain f32 arithmetic that the compiler vectorizes at the width [`crate::simd`]
//! dispatches to. A SIMD crate's `exp` (`wide`'s) picks its vector width when the crate is
//! compiled (baseline x86-64 for this one), not at run time as every kernel here does. GELU's
//! normal CDF likewise ([`normal_cdf`]): burn-flex calls libm's scalar `erff` per value (5 % of
//! a ViT-S step, with its backward's `expf` 4 % more).

use burn::tensor::Tensor;

/// The activation applied to batch norm's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// None: batch norm's output as it is.
    #[default]
    Identity,
    /// `max(y, 0)`, NaN kept (as burn-flex's `relu`).
    Relu,
    /// `y · sigmoid(y) = y / (1 + exp(−y))`, PyTorch's `SiLU` (timm's `act_layer='swish'`).
    Silu,
    /// `y · Φ(y) = y/2 · (1 + erf(y/√2))`, PyTorch's `GELU` with `approximate='none'` (timm's
    /// ViT MLP).
    Gelu,
}

/// `activation` of `y` by burn's own operations (where our kernels do not run: CUDA, the CubeCL
/// stand-in, half precision).
pub fn burns<const D: usize>(y: Tensor<D>, activation: Activation) -> Tensor<D> {
    use burn::tensor::activation::{gelu, relu, silu};
    match activation {
        Activation::Identity => y,
        Activation::Relu => relu(y),
        Activation::Silu => silu(y),
        Activation::Gelu => gelu(y),
    }
}

/// `f::<A>(args)` for the [`Pointwise`] type `A` of an [`Activation`]: a kernel compiled once
/// per activation.
macro_rules! per_activation {
    ($activation:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        use $crate::activation::{Activation, Gelu, Identity, Relu, Silu};
        match $activation {
            Activation::Identity => $f::<Identity>($($arg),*),
            Activation::Relu => $f::<Relu>($($arg),*),
            Activation::Silu => $f::<Silu>($($arg),*),
            Activation::Gelu => $f::<Gelu>($($arg),*),
        }
    }};
}
pub(crate) use per_activation;

/// One activation as a type, so that each kernel's loop is compiled once per activation with
/// no branch on which it is.
pub(crate) trait Pointwise {
    /// The activation of `y`.
    fn forward(y: f32) -> f32;
    /// The gradient reaching `y` when `dy` reaches the activation's output.
    fn backward(y: f32, dy: f32) -> f32;
}

/// [`Activation::Identity`] as a type.
pub(crate) struct Identity;
/// [`Activation::Relu`] as a type.
pub(crate) struct Relu;
/// [`Activation::Silu`] as a type.
pub(crate) struct Silu;
/// [`Activation::Gelu`] as a type.
pub(crate) struct Gelu;

impl Pointwise for Identity {
    #[inline(always)]
    fn forward(y: f32) -> f32 {
        y
    }

    #[inline(always)]
    fn backward(_: f32, dy: f32) -> f32 {
        dy
    }
}

/// Whether a ReLU passes `y` and its gradient: above 0, or NaN (flex's relu keeps NaN, so a
/// diverging run's NaN reaches the loss).
#[inline(always)]
fn passes(y: f32) -> bool {
    y > 0.0 || y.is_nan()
}

impl Pointwise for Relu {
    #[inline(always)]
    fn forward(y: f32) -> f32 {
        if passes(y) { y } else { 0.0 }
    }

    // A select, not `dy · 0`: a masked infinite gradient stays 0, as burn's `relu_backward`.
    #[inline(always)]
    fn backward(y: f32, dy: f32) -> f32 {
        if passes(y) { dy } else { 0.0 }
    }
}

impl Pointwise for Silu {
    /// PyTorch's formula (`x / (1 + exp(-x))`), not burn's `x · sigmoid(x)`.
    #[inline(always)]
    fn forward(y: f32) -> f32 {
        y / (1.0 + exp(-y))
    }

    /// `dy · s · (1 + y · (1 − s))`, `s = sigmoid(y)`: PyTorch's `silu_backward`.
    #[inline(always)]
    fn backward(y: f32, dy: f32) -> f32 {
        let s = 1.0 / (1.0 + exp(-y));
        dy * (s * (1.0 + y * (1.0 - s)))
    }
}

impl Pointwise for Gelu {
    #[inline(always)]
    fn forward(y: f32) -> f32 {
        y * normal_cdf(y)
    }

    /// `dy · (Φ(y) + y · φ(y))`: PyTorch's `gelu_backward` (`approximate='none'`).
    #[inline(always)]
    fn backward(y: f32, dy: f32) -> f32 {
        // 1 / √(2π).
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let cdf = normal_cdf(y);
        let pdf = INV_SQRT_2PI * exp(-0.5 * y * y);
        dy * (cdf + y * pdf)
    }
}

/// Φ(y), the standard normal distribution's CDF, `(1 + erf(y/√2)) / 2`, in f32; NaN stays NaN.
///
/// As `erfc(|y|/√2) / 2` (or one less it), by the Chebyshev fit of Numerical Recipes' `erfcc`
/// (`t·exp(-z² + P(t))`, `t = 1/(1 + z/2)`, fractional error below 1.2e-7): accurate where
/// y is far below 0 too, where `1 + erf` would cancel. GELU's absolute error is then below
/// 2e-7 on every input (f32's own rounding of `1 - erfc/2`). Adds, multiplies, one division
/// and [`exp`], so a loop over it vectorizes; no `mul_add`, so every vector width gives the
/// same bits.
#[inline(always)]
pub fn normal_cdf(y: f32) -> f32 {
    let z = y.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = p * t + -0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t + -1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t + -0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t + -1.265_512_2;
    let half_erfc = 0.5 * t * exp(-z * z + p);
    if y >= 0.0 { 1.0 - half_erfc } else { half_erfc }
}

/// `e^x` in f32 to within 2 ulp where the result is a normal number; NaN stays NaN, and `x`
/// beyond ±87.3 is taken as ±87.3 (a sigmoid is 0 or 1 there in f32 either way).
///
/// Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its degree-7 polynomial,
/// and `2^n` put into the exponent bits. Only adds, multiplies and bit moves, so a loop over it
/// vectorizes; no `mul_add`, so every vector width gives the same bits (`--cpu-ext`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // `clamp` keeps NaN (`min`/`max` would turn it into a bound).
    const HI: f32 = 87.3;
    let x = x.clamp(-HI, HI);
    // n = round(x / ln 2) by the 1.5·2^23 trick: adding it rounds to an integer, in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 in two parts, the first exact in f32, so that `x - n·ln 2` loses no digits.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    // |n| ≤ 126, so n + 127 is a normal number's biased exponent.
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    e_r * f32::from_bits(n.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two positive finite f32.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = (0, 0.0);
        let mut x = -87.3f32;
        while x <= 87.3 {
            let want = f64::from(x).exp() as f32;
            let d = ulps(exp(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
            x += 0.001_7;
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_keeps_nan_and_saturates_beyond_its_range() {
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), exp(87.3));
        assert!(exp(f32::INFINITY) > 1e37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) > 0.0);
    }

    /// SiLU and its derivative in f64, by the definition.
    fn silu64(y: f64) -> (f64, f64) {
        let s = 1.0 / (1.0 + (-y).exp());
        (y * s, s * (1.0 + y * (1.0 - s)))
    }

    #[test]
    fn silu_and_its_gradient_are_the_definitions() {
        let mut y = -30.0f32;
        while y <= 30.0 {
            let (value, slope) = silu64(f64::from(y));
            let scale = value.abs().max(1e-30);
            let ours = f64::from(Silu::forward(y));
            assert!(
                (ours - value).abs() <= 4e-7 * scale,
                "silu({y}): {ours} vs {value}"
            );
            let ours = f64::from(Silu::backward(y, 1.0));
            assert!(
                (ours - slope).abs() <= 1e-6,
                "silu'({y}): {ours} vs {slope}"
            );
            y += 0.013;
        }
        assert_eq!(Silu::forward(0.0), 0.0);
        assert_eq!(Silu::backward(0.0, 2.0), 1.0);
        let far_left = Silu::forward(-100.0);
        assert!(
            far_left <= 0.0 && far_left > -1e-30,
            "silu(-100) = {far_left}"
        );
        assert_eq!(Silu::forward(100.0), 100.0);
        assert!(Silu::forward(f32::NAN).is_nan());
        assert!(Silu::backward(f32::NAN, 1.0).is_nan());
    }

    #[test]
    fn the_normal_cdf_is_within_2e7_of_libms_double() {
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        let mut y = -12.0f32;
        while y <= 12.0 {
            let want = 0.5 * libm::erfc(-f64::from(y) / std::f64::consts::SQRT_2);
            let abs = (f64::from(normal_cdf(y)) - want).abs();
            assert!(abs <= 2e-7, "Φ({y}) off by {abs:e}");
            if y < 0.0 && abs / want > worst {
                (worst, at) = (abs / want, y);
            }
            y += 0.000_53;
        }
        // Relative, where y is far below 0 and Φ tiny (f32's rounding of z² there).
        assert!(worst < 2e-5, "{worst:e} relative at y = {at}");
        assert_eq!(normal_cdf(0.0), 0.5);
        assert_eq!(normal_cdf(20.0), 1.0);
        assert!((0.0..1e-37).contains(&normal_cdf(-20.0)));
        assert!(normal_cdf(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_and_its_gradient_are_the_definitions() {
        let mut y = -8.0f32;
        while y <= 8.0 {
            let y64 = f64::from(y);
            let cdf = 0.5 * libm::erfc(-y64 / std::f64::consts::SQRT_2);
            let pdf = (-0.5 * y64 * y64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let (value, slope) = (y64 * cdf, cdf + y64 * pdf);
            let ours = f64::from(Gelu::forward(y));
            assert!(
                (ours - value).abs() <= 1e-6 * value.abs() + 2e-7,
                "gelu({y}): {ours} vs {value}"
            );
            let ours = f64::from(Gelu::backward(y, 1.0));
            assert!(
                (ours - slope).abs() <= 1e-6,
                "gelu'({y}): {ours} vs {slope}"
            );
            y += 0.0071;
        }
        assert!(Gelu::forward(f32::NAN).is_nan());
        assert!(Gelu::backward(f32::NAN, 1.0).is_nan());
    }

    #[test]
    fn relu_keeps_nan_and_masks_even_an_infinite_gradient() {
        assert_eq!(Relu::forward(-1.0), 0.0);
        assert_eq!(Relu::forward(2.0), 2.0);
        assert!(Relu::forward(f32::NAN).is_nan());
        assert_eq!(Relu::backward(-1.0, f32::INFINITY), 0.0);
        assert_eq!(Relu::backward(f32::NAN, 3.0), 3.0);
        assert_eq!(Identity::backward(-1.0, 3.0), 3.0);
    }
}
