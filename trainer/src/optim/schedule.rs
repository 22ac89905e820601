//! timm's `CosineLRScheduler` as train.py builds it for the recipes (docs/recipe.md §2.10): linear
//! warmup from `warmup_lr`, then cosine from `lr` to `min_lr` over `epochs`, with the cosine
//! term on the *unshifted* epoch (`warmup_prefix=False`), then `min_lr` during cooldown.
//!
//! Stepped per epoch, as RSB-era timm did (the LR is constant within an epoch); per update as
//! an option (timm HEAD's `--sched-on-updates`), where the epoch becomes fractional.

use std::f64::consts::PI;

/// Schedule settings, with train.py's flag names.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineSchedule {
    /// `--lr`: the peak learning rate.
    pub lr: f64,
    /// `--min-lr`.
    pub min_lr: f64,
    /// `--warmup-lr`: learning rate of epoch 0.
    pub warmup_lr: f64,
    /// `--warmup-epochs`.
    pub warmup_epochs: f64,
    /// `--epochs`: the cosine period `t_initial` (cooldown epochs come after it).
    pub epochs: f64,
    /// `--sched-on-updates`: change the LR every step instead of every epoch.
    pub on_updates: bool,
}

impl CosineSchedule {
    /// The LR for `step` of `steps_per_epoch` in `epoch` (both from 0).
    pub fn lr(&self, epoch: u64, step: u64, steps_per_epoch: u64) -> f64 {
        let t = if self.on_updates && steps_per_epoch > 0 {
            epoch as f64 + step as f64 / steps_per_epoch as f64
        } else {
            epoch as f64
        };
        self.lr_at(t)
    }

    /// The LR at (possibly fractional) epoch `t`.
    pub(crate) fn lr_at(&self, t: f64) -> f64 {
        if t < self.warmup_epochs {
            return self.warmup_lr + t * (self.lr - self.warmup_lr) / self.warmup_epochs;
        }
        if t >= self.epochs {
            return self.min_lr;
        }
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (PI * t / self.epochs).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a1() -> CosineSchedule {
        CosineSchedule {
            lr: 5e-3,
            min_lr: 1e-6,
            warmup_lr: 1e-4,
            warmup_epochs: 5.0,
            epochs: 600.0,
            on_updates: false,
        }
    }

    #[test]
    fn a1_values_of_timms_scheduler() {
        // docs/recipe.md §2.10, computed with timm's CosineLRScheduler and printed to the digits
        // below: each must agree to half a unit of its last printed digit.
        let s = a1();
        let want = [
            (0, "1.0e-4"),
            (1, "1.08e-3"),
            (2, "2.06e-3"),
            (3, "3.04e-3"),
            (4, "4.02e-3"),
            (5, "4.99914e-3"),
            (300, "2.5005e-3"),
            (599, "1.034e-6"),
            (600, "1e-6"),
            (605, "1e-6"),
        ];
        for (e, text) in want {
            let lr: f64 = text.parse().expect("number");
            let (mantissa, exponent) = text.split_once('e').expect("scientific");
            let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
            let exponent: i32 = exponent.parse().expect("exponent");
            let half_unit = 0.5 * 10f64.powi(exponent - decimals);
            let got = s.lr(e, 17, 100);
            assert!((got - lr).abs() <= half_unit, "epoch {e}: {got} vs {text}");
        }
    }

    #[test]
    fn per_epoch_is_constant_within_an_epoch_and_per_update_is_not() {
        let s = a1();
        assert_eq!(s.lr(7, 0, 625), s.lr(7, 624, 625));
        let u = CosineSchedule {
            on_updates: true,
            ..a1()
        };
        assert_eq!(u.lr(7, 0, 625), s.lr(7, 0, 625));
        assert!(u.lr(7, 624, 625) < u.lr(7, 0, 625));
        // Halfway through warmup epoch 2 the LR is halfway between epochs 2 and 3.
        let mid = u.lr(2, 50, 100);
        assert!((mid - (2.06e-3 + 3.04e-3) / 2.0).abs() < 1e-9, "{mid}");
    }
}
