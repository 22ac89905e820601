//! The activation that follows batch norm, fused into it ([`crate::batch_norm`]): none, ReLU
//! (ResNets, RegNets) or SiLU (EfficientNet), each as its value and as the gradient through
//! it, element by element, written so that the kernels' loops vectorize.
//!
//! Why SiLU here: burn computes `silu(x)` as `x * sigmoid(x)`, with a scalar `expf` per value
//! and a pass over the activation for each of the sigmoid, the product and their backward
//! operations: 30 % of EfficientNet-B0's CPU step (perf, `trainer bench --model
//! efficientnet_b0`). Fused into batch norm it costs no pass of its own, and its exponential
//! ([`exp`]) is plain f32 arithmetic that the compiler vectorizes at the width [`crate::simd`]
//! dispatches to. A SIMD crate's `exp` (`wide`'s) picks its vector width when the crate is
//! compiled (baseline x86-64 for this one), not at run time as every kernel here does.

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
}

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
    fn relu_keeps_nan_and_masks_even_an_infinite_gradient() {
        assert_eq!(Relu::forward(-1.0), 0.0);
        assert_eq!(Relu::forward(2.0), 2.0);
        assert!(Relu::forward(f32::NAN).is_nan());
        assert_eq!(Relu::backward(-1.0, f32::INFINITY), 0.0);
        assert_eq!(Relu::backward(f32::NAN, 3.0), 3.0);
        assert_eq!(Identity::backward(-1.0, 3.0), 3.0);
    }
}
