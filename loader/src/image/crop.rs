/*!
RandomResizedCrop's parameters, drawn exactly as timm's
`RandomResizedCropAndInterpolation.get_params` (docs/recipe.md §2.2).

Sampling is separate from applying (as in timm): [`CropBox::sample`] is a pure function of the
random stream and the image size. Python's semantics are kept where they decide pixels:
`round` is round-half-to-even, `randint` includes both ends, the ratio is log-uniform, and after
ten failed attempts the crop falls back to the central crop of the clamped aspect ratio.
*/

use rand::Rng;

/// RandomResizedCrop's ranges (timm's `--scale` and `--ratio`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RrcConfig {
    /// Fraction of the image area, `(min, max)`; timm's default `(0.08, 1.0)`.
    pub scale: (f64, f64),
    /// Aspect ratio w/h, `(min, max)`; timm's default `(3/4, 4/3)`.
    pub ratio: (f64, f64),
}

impl Default for RrcConfig {
    fn default() -> Self {
        RrcConfig {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// A crop rectangle in source pixels (torchvision's `i, j, h, w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row (`i`).
    pub top: u32,
    /// First column (`j`).
    pub left: u32,
    /// Rows (`h`).
    pub height: u32,
    /// Columns (`w`).
    pub width: u32,
}

impl CropBox {
    /// Draws a RandomResizedCrop box for a `width` x `height` image.
    ///
    /// One deviation, for images a few pixels wide that timm would crash on: an attempt that
    /// rounds to a zero-sized box counts as failed.
    pub fn sample(rng: &mut impl Rng, width: u32, height: u32, config: &RrcConfig) -> CropBox {
        let (fw, fh) = (f64::from(width), f64::from(height));
        let area = fw * fh;
        let log_ratio = (config.ratio.0.ln(), config.ratio.1.ln());
        for _ in 0..10 {
            let target_area = uniform(rng, config.scale) * area;
            let aspect = uniform(rng, log_ratio).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w >= 1.0 && h >= 1.0 && w <= fw && h <= fh {
                let (w, h) = (w as u32, h as u32);
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        Self::fallback(width, height, config)
    }

    /// The central crop timm falls back to after ten failed attempts.
    pub fn fallback(width: u32, height: u32, config: &RrcConfig) -> CropBox {
        let (min_ratio, max_ratio) = (
            config.ratio.0.min(config.ratio.1),
            config.ratio.0.max(config.ratio.1),
        );
        let in_ratio = f64::from(width) / f64::from(height);
        let (w, h) = if in_ratio < min_ratio {
            let h = (f64::from(width) / min_ratio).round_ties_even() as u32;
            // At least one row: an extreme ratio would otherwise round to an empty box.
            (width, h.min(height).max(1))
        } else if in_ratio > max_ratio {
            let w = (f64::from(height) * max_ratio).round_ties_even() as u32;
            (w.min(width).max(1), height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

/// Python's `random.uniform(a, b)`: `a + (b - a) * random()`.
fn uniform(rng: &mut impl Rng, (a, b): (f64, f64)) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::{Purpose, stream};

    fn draws(width: u32, height: u32, n: u32) -> Vec<CropBox> {
        (0..n)
            .map(|pos| {
                let mut rng = stream(1, Purpose::Augment, 0, pos, 0);
                CropBox::sample(&mut rng, width, height, &RrcConfig::default())
            })
            .collect()
    }

    #[test]
    fn boxes_fit_and_follow_the_scale_and_ratio_ranges() {
        let (w, h) = (500u32, 375u32);
        let boxes = draws(w, h, 20_000);
        let mut mean_scale = 0.0;
        let mut log_ratios = Vec::new();
        for b in &boxes {
            assert!(b.width >= 1 && b.height >= 1);
            assert!(b.left + b.width <= w && b.top + b.height <= h, "{b:?}");
            let scale = f64::from(b.width * b.height) / f64::from(w * h);
            assert!((0.07..=1.0).contains(&scale), "{b:?}");
            mean_scale += scale / boxes.len() as f64;
            log_ratios.push((f64::from(b.width) / f64::from(b.height)).ln());
        }
        // Reference: timm's get_params run 200,000 times in Python on a 500x375 image gives a
        // mean area fraction of 0.4331 and 41.7 % portrait boxes (attempts that do not fit are
        // redrawn, which removes large and portrait boxes). Bounds are about 5 sigma for
        // 20,000 draws.
        assert!(
            (0.423..0.443).contains(&mean_scale),
            "mean scale {mean_scale}"
        );
        let below = log_ratios.iter().filter(|r| **r < 0.0).count() as f64;
        let frac = below / log_ratios.len() as f64;
        assert!(
            (0.400..0.434).contains(&frac),
            "share of portrait boxes {frac}"
        );
    }

    #[test]
    fn positions_are_uniform_over_the_free_range() {
        // Where a box can move, its offset divided by the free range is uniform on [0, 1].
        let rel: Vec<f64> = draws(1000, 800, 20_000)
            .iter()
            .filter(|b| b.width < 1000)
            .map(|b| f64::from(b.left) / f64::from(1000 - b.width))
            .collect();
        let mean = rel.iter().sum::<f64>() / rel.len() as f64;
        assert!((0.48..0.52).contains(&mean), "mean {mean}");
        for q in 0..4 {
            let lo = f64::from(q) / 4.0;
            let share = rel.iter().filter(|r| (lo..lo + 0.25).contains(*r)).count() as f64
                / rel.len() as f64;
            assert!((0.22..0.28).contains(&share), "quarter {q}: {share}");
        }
    }

    #[test]
    fn fallback_is_timms_central_crop() {
        let c = RrcConfig::default();
        // Very wide: h = H, w = round(H * 4/3).
        assert_eq!(
            CropBox::fallback(1000, 30, &c),
            CropBox {
                top: 0,
                left: 480,
                height: 30,
                width: 40
            }
        );
        // Very tall: w = W, h = round(W / (3/4)).
        assert_eq!(
            CropBox::fallback(30, 1000, &c),
            CropBox {
                top: 480,
                left: 0,
                height: 40,
                width: 30
            }
        );
        // In range: the whole image.
        assert_eq!(
            CropBox::fallback(100, 90, &c),
            CropBox {
                top: 0,
                left: 0,
                height: 90,
                width: 100
            }
        );
        // An extreme strip fails every attempt and falls back.
        let b = draws(2000, 3, 50);
        assert!(b.iter().all(|b| *b == CropBox::fallback(2000, 3, &c)));
    }

    #[test]
    fn python_rounding_is_half_to_even() {
        assert_eq!(2.5f64.round_ties_even(), 2.0);
        assert_eq!(3.5f64.round_ties_even(), 4.0);
        // 1x1 image: every attempt rounds to 0 or 1; the box is the whole pixel.
        for b in draws(1, 1, 100) {
            assert_eq!(
                b,
                CropBox {
                    top: 0,
                    left: 0,
                    height: 1,
                    width: 1
                }
            );
        }
    }
    #[test]
    fn an_extreme_ratio_falls_back_to_at_least_one_pixel() {
        // A 1-pixel-high strip with ratios far outside timm's: round(1 * 0.1) = 0 would be an
        // empty box, which the resize cannot take.
        let c = RrcConfig {
            scale: (0.08, 1.0),
            ratio: (0.05, 0.1),
        };
        let b = CropBox::fallback(300, 1, &c);
        assert_eq!((b.width, b.height), (1, 1));
        let c = RrcConfig {
            scale: (0.08, 1.0),
            ratio: (20.0, 30.0),
        };
        let b = CropBox::fallback(1, 300, &c);
        assert_eq!((b.width, b.height), (1, 1));
    }
}
