//! Mixup and CutMix in timm's batch mode (`timm/data/mixup.py`, docs/recipe.md §2.4), applied on the
//! device to uint8-valued pixels before normalization, as timm's prefetcher path does.
//!
//! One λ (and one box) per local batch; sample `i`'s partner is sample `B-1-i`; with CutMix, λ is
//! corrected to the box's real area. The draws come from a ChaCha stream keyed by (seed, step)
//! (docs/design.md invariant 1), so a resumed run mixes exactly as an uninterrupted one.

use burn::tensor::{Device, Int, Tensor, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

/// timm's `Mixup(...)` arguments (train.py flag names in comments).
#[derive(Debug, Clone, PartialEq)]
pub struct MixupConfig {
    /// `--mixup`: α of the Beta distribution for Mixup (0 disables it).
    pub mixup_alpha: f64,
    /// `--cutmix`: α for CutMix (0 disables it).
    pub cutmix_alpha: f64,
    /// `--mixup-prob`: probability that a batch is mixed at all.
    pub prob: f64,
    /// `--mixup-switch-prob`: probability of CutMix rather than Mixup when both are enabled.
    pub switch_prob: f64,
    /// `--smoothing`: label smoothing of the one-hot targets.
    pub label_smoothing: f64,
    /// Number of classes.
    pub num_classes: usize,
}

impl MixupConfig {
    /// A1: Mixup 0.2, CutMix 1.0, switch 0.5, prob 1.0, smoothing 0.1.
    pub fn a1(num_classes: usize) -> Self {
        MixupConfig {
            mixup_alpha: 0.2,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            num_classes,
        }
    }
}

/// What one batch gets: λ and, for CutMix, the pasted box `[yl, yh) × [xl, xh)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    /// Weight of the sample itself (1 = no mix).
    pub lam: f64,
    /// CutMix box (rows `yl..yh`, columns `xl..xh`), `None` for Mixup.
    pub cutmix_box: Option<[usize; 4]>,
}

/// Errors in a [`MixupConfig`].
#[derive(Debug, thiserror::Error)]
pub enum MixupError {
    /// An α that the Beta distribution refuses.
    #[error("mixup/cutmix alpha must be positive and finite, got {0}")]
    Alpha(f64),
}

impl MixupConfig {
    /// Draws the parameters of batch `step` for an `h × w` image, in timm's order of draws.
    pub fn draw(&self, seed: u64, step: u64, h: usize, w: usize) -> Result<MixParams, MixupError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d69_7875_7000_0000);
        rng.set_stream(step);
        let beta = |rng: &mut ChaCha8Rng, a: f64| -> Result<f64, MixupError> {
            Ok(Beta::<f64>::new(a, a)
                .map_err(|_| MixupError::Alpha(a))?
                .sample(rng))
        };
        let mixup = self.mixup_alpha > 0.0;
        let cutmix = self.cutmix_alpha > 0.0;
        if !(mixup || cutmix) || rng.random::<f64>() >= self.prob {
            return Ok(MixParams {
                lam: 1.0,
                cutmix_box: None,
            });
        }
        let use_cutmix = match (mixup, cutmix) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        if !use_cutmix {
            let lam = beta(&mut rng, self.mixup_alpha)?;
            return Ok(MixParams {
                lam,
                cutmix_box: None,
            });
        }
        let lam = beta(&mut rng, self.cutmix_alpha)?;
        // rand_bbox with margin 0; cy is drawn before cx.
        let ratio = (1.0f64 - lam).sqrt();
        let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
        let cy = rng.random_range(0..h as i64);
        let cx = rng.random_range(0..w as i64);
        let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
        let (yl, yh) = (clip(cy - cut_h / 2, h), clip(cy + cut_h / 2, h));
        let (xl, xh) = (clip(cx - cut_w / 2, w), clip(cx + cut_w / 2, w));
        Ok(MixParams::cutmix([yl, yh, xl, xh], h, w))
    }
}

impl MixParams {
    /// CutMix of the box `[yl, yh, xl, xh]` in an `h × w` image, λ corrected to the box's
    /// real area after clipping (timm's `correct_lam`).
    pub fn cutmix(cutmix_box: [usize; 4], h: usize, w: usize) -> Self {
        let [yl, yh, xl, xh] = cutmix_box;
        let area = (yh.saturating_sub(yl) * xh.saturating_sub(xl)) as f64;
        MixParams {
            lam: 1.0 - area / (h * w) as f64,
            cutmix_box: Some(cutmix_box),
        }
    }

    /// Mixes `[N, C, H, W]` pixels holding uint8 values (as floats): CutMix pastes the partner's
    /// box, Mixup blends and rounds half to even, as timm's uint8 collate does.
    pub fn mix_pixels(&self, x: Tensor<4>) -> Tensor<4> {
        if self.lam >= 1.0 {
            return x;
        }
        let partner = x.clone().flip([0]);
        match self.cutmix_box {
            Some([yl, yh, xl, xh]) => {
                if yl == yh || xl == xh {
                    return x;
                }
                let patch = partner.slice(s![.., .., yl..yh, xl..xh]);
                x.slice_assign(s![.., .., yl..yh, xl..xh], patch)
            }
            None => {
                // numpy's float32 arithmetic with Python-float weights: each weight is rounded
                // to f32 after `1 - λ` is taken in f64, which decides ties at .5.
                let (lam, rest) = (self.lam as f32, (1.0 - self.lam) as f32);
                (x.mul_scalar(lam) + partner.mul_scalar(rest)).round()
            }
        }
    }

    /// timm's `mixup_target`: `λ·onehot(t) + (1-λ)·onehot(flip(t))` with smoothing.
    pub fn targets(&self, labels: Tensor<1, Int>, config: &MixupConfig) -> Tensor<2> {
        let off = config.label_smoothing / config.num_classes as f64;
        let on = 1.0 - config.label_smoothing + off;
        let one_hot = |t: Tensor<1, Int>| {
            t.one_hot::<2>(config.num_classes)
                .float()
                .mul_scalar(on - off)
                .add_scalar(off)
        };
        let y1 = one_hot(labels.clone());
        if self.lam >= 1.0 {
            return y1;
        }
        let y2 = one_hot(labels.flip([0]));
        y1.mul_scalar(self.lam) + y2.mul_scalar(1.0 - self.lam)
    }
}

/// Labels on `device` from host `u32`s.
pub(crate) fn labels_tensor(labels: &[u32], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(values, [labels.len()]),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn config() -> MixupConfig {
        MixupConfig::a1(4)
    }

    #[test]
    fn draws_are_a_function_of_seed_and_step() {
        let c = config();
        let a = c.draw(7, 3, 32, 32).expect("draw");
        assert_eq!(a, c.draw(7, 3, 32, 32).expect("draw"));
        assert_ne!(a, c.draw(7, 4, 32, 32).expect("draw"));
    }

    #[test]
    fn cutmix_lambda_is_the_box_area_and_switch_is_near_half() {
        let c = config();
        let (mut cutmix, n) = (0, 2000);
        for step in 0..n {
            let p = c.draw(1, step, 20, 30).expect("draw");
            if let Some([yl, yh, xl, xh]) = p.cutmix_box {
                cutmix += 1;
                assert!(yl <= yh && yh <= 20 && xl <= xh && xh <= 30);
                let want = 1.0 - ((yh - yl) * (xh - xl)) as f64 / 600.0;
                assert!((p.lam - want).abs() < 1e-12);
            } else {
                assert!((0.0..=1.0).contains(&p.lam));
            }
        }
        // Binomial(2000, 0.5): 5 sigma is about ±112.
        assert!(
            (888..=1112).contains(&cutmix),
            "{cutmix} cutmix batches of {n}"
        );
    }

    #[test]
    fn mixup_lambda_mean_matches_beta() {
        let c = MixupConfig {
            cutmix_alpha: 0.0,
            ..config()
        };
        let n = 4000;
        let lams: Vec<f64> = (0..n)
            .map(|s| c.draw(2, s, 8, 8).expect("draw").lam)
            .collect();
        let mean = lams.iter().sum::<f64>() / n as f64;
        // Beta(0.2, 0.2): mean 0.5, variance 1/(4·1.4) ≈ 0.179; 5 sigma of the mean ≈ 0.033.
        assert!((mean - 0.5).abs() < 0.033, "{mean}");
        let extreme = lams.iter().filter(|&&l| !(0.1..=0.9).contains(&l)).count();
        assert!(extreme > n as usize / 2, "Beta(0.2,0.2) is U-shaped");
    }

    #[test]
    fn cutmix_pastes_the_reversed_partners_box() {
        let device = Device::flex();
        let values: Vec<f32> = (0..2 * 4 * 4).map(|i| (i / 16) as f32 * 100.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [2, 1, 4, 4]), &device);
        let p = MixParams {
            lam: 0.75,
            cutmix_box: Some([1, 3, 0, 2]),
        };
        let out: Vec<f32> = p
            .mix_pixels(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        for (i, v) in out.iter().enumerate() {
            let (n, y, xx) = (i / 16, (i / 4) % 4, i % 4);
            let in_box = (1..3).contains(&y) && xx < 2;
            let src = if in_box { 1 - n } else { n };
            assert_eq!(*v, src as f32 * 100.0, "sample {n} ({y},{xx})");
        }
    }

    #[test]
    fn mixup_rounds_half_to_even_like_numpy_rint() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0], [2, 1, 1, 1]), &device);
        let p = MixParams {
            lam: 0.5,
            cutmix_box: None,
        };
        // 1·0.5 + 2·0.5 = 1.5 -> 2 ; same for the partner.
        let out: Vec<f32> = p
            .mix_pixels(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(out, vec![2.0, 2.0]);
        let x = Tensor::<4>::from_data(TensorData::new(vec![2.0f32, 3.0], [2, 1, 1, 1]), &device);
        let out: Vec<f32> = p
            .mix_pixels(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(out, vec![2.0, 2.0], "2.5 rounds to 2");
    }

    #[test]
    fn targets_follow_timm_mixup_target() {
        let device = Device::flex();
        let c = config();
        let p = MixParams {
            lam: 0.7,
            cutmix_box: None,
        };
        let t: Vec<f32> = p
            .targets(labels_tensor(&[0, 2], &device), &c)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let (off, on) = (0.1 / 4.0, 1.0 - 0.1 + 0.1 / 4.0);
        let want = |own: usize, other: usize, k: usize| {
            let a = if k == own { on } else { off };
            let b = if k == other { on } else { off };
            0.7 * a + 0.3 * b
        };
        for k in 0..4 {
            assert!((f64::from(t[k]) - want(0, 2, k)).abs() < 1e-6);
            assert!((f64::from(t[4 + k]) - want(2, 0, k)).abs() < 1e-6);
        }
    }
}
