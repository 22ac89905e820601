//! timm's stochastic depth (`drop_path`), shared by every family: in training, a sample's
//! residual branch is zeroed with probability `p` and the kept ones are scaled by `1 / (1 - p)`.
//! Its draws can be keyed (`mix_key`) so that they depend on the key alone, not on the
//! backend's generator, which every thread and device of the process shares: a rank's masks are
//! then the same on one device or several, and after a resume.

use burn::tensor::{Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};

/// `x` (samples first) with each sample's branch dropped with probability `p` in training.
/// With `key`, the samples' draws come from a generator seeded by it on the host; without,
/// from the backend's.
pub fn drop_path<const D: usize>(x: Tensor<D>, p: f64, key: Option<u64>) -> Tensor<D> {
    if p <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - p;
    let n = x.dims()[0];
    let shape: [usize; D] = std::array::from_fn(|i| if i == 0 { n } else { 1 });
    let mask = match key {
        Some(key) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
            let values: Vec<f32> = (0..n)
                .map(|_| if rng.random_bool(keep) { 1.0 } else { 0.0 })
                .collect();
            Tensor::<D>::from_data(TensorData::new(values, shape), &x.device())
        }
        None => Tensor::<D>::random(shape, Distribution::Bernoulli(keep), &x.device()),
    };
    x * mask.div_scalar(keep)
}

/// A fixed mix of two numbers (splitmix64's finalizer): keys of independent draws.
pub(crate) fn mix_key(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Block `i` of `n`'s drop probability under timm's linear rule: `rate * i / (n - 1)`.
pub fn linear_rate(rate: f64, i: usize, n: usize) -> f64 {
    if n > 1 {
        rate * i as f64 / (n - 1) as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn a_keyed_mask_drops_whole_samples_and_scales_the_kept() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::ones([64, 5, 3], &device);
        let y = drop_path(x, 0.5, Some(mix_key(3, 4)));
        let v: Vec<f32> = y.into_data().iter::<f32>().collect();
        for sample in v.chunks(15) {
            assert!(sample.iter().all(|&s| s == sample[0]), "{sample:?}");
            assert!(sample[0] == 0.0 || sample[0] == 2.0);
        }
        let kept = v.chunks(15).filter(|s| s[0] > 0.0).count();
        assert!((16..=48).contains(&kept), "{kept} of 64 kept");
        // Not training: the identity.
        let eval = drop_path(Tensor::<3>::ones([4, 2, 2], &Device::flex()), 0.5, None);
        assert_eq!(eval.sum().into_scalar::<f32>(), 16.0);
    }

    #[test]
    fn the_linear_rule_is_timms() {
        assert_eq!(linear_rate(0.1, 0, 16), 0.0);
        assert!((linear_rate(0.1, 15, 16) - 0.1).abs() < 1e-15);
        assert_eq!(linear_rate(0.1, 0, 1), 0.0);
    }
}
