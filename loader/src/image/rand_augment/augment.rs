/*!
The per-image RandAugment driver, with timm's semantics (`RandAugment.__call__` and
`AugmentOp.__call__`): draw `n` ops uniformly **with replacement**; for each, skip it unless
`random() <= p`; draw a fresh magnitude; turn it into the op's argument (random sign
included); draw the interpolation of a geometric op when the train interpolation is `random`;
apply. Every draw comes from the caller's stream, so the result depends only on
(seed, epoch, position, repeat).
*/

use rand::Rng;

use crate::image::decode::RgbImage;
use crate::image::interpolation::{Interpolation, InterpolationChoice};
use crate::image::rand_augment::config::{
    MAX_LAYERS, OPS, Op, OpArg, RandAugmentConfig, level_arg,
};
use crate::image::rand_augment::{geometry, ops};

/// One op that was applied, for `loader preview` and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Which op.
    pub op: Op,
    /// Its argument.
    pub arg: OpArg,
    /// Its filter (geometric ops only).
    pub interpolation: Option<Interpolation>,
}

/// A RandAugment transform with its reusable scratch image.
#[derive(Debug, Clone)]
pub struct RandAugment {
    config: RandAugmentConfig,
    interpolation: InterpolationChoice,
    scratch: RgbImage,
}

impl RandAugment {
    /// RandAugment with `config`; geometric ops use `interpolation` (timm passes the train
    /// interpolation, or draws bilinear/bicubic per call when it is `random`).
    pub fn new(config: RandAugmentConfig, interpolation: InterpolationChoice) -> RandAugment {
        RandAugment {
            config,
            interpolation,
            scratch: RgbImage::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RandAugmentConfig {
        &self.config
    }

    /// Augments `img` in place; the ops applied are appended to `applied` (cleared first).
    pub fn apply(&mut self, img: &mut RgbImage, rng: &mut impl Rng, applied: &mut Vec<Applied>) {
        applied.clear();
        let mut chosen = [Op::Invert; MAX_LAYERS as usize];
        // The parser refuses more; a config built in code is capped the same way.
        let n = (self.config.num_layers as usize).min(chosen.len());
        for slot in chosen.iter_mut().take(n) {
            *slot = OPS[rng.random_range(0..OPS.len())];
        }
        for &op in &chosen[..n] {
            if self.config.prob < 1.0 && rng.random::<f64>() > self.config.prob {
                continue;
            }
            let m = self.config.draw_magnitude(rng);
            let arg = level_arg(op, m, self.config.increasing, rng);
            let interpolation = is_geometric(op).then(|| self.interpolation.sample(rng));
            self.apply_op(
                img,
                op,
                arg,
                interpolation.unwrap_or(Interpolation::Bilinear),
            );
            applied.push(Applied {
                op,
                arg,
                interpolation,
            });
        }
    }

    /// Applies `op` with an explicit argument (what `loader augment` does).
    pub fn apply_op(&mut self, img: &mut RgbImage, op: Op, arg: OpArg, filter: Interpolation) {
        let s = &mut self.scratch;
        let (int, float) = match arg {
            OpArg::Int(v) => (v, 0.0),
            OpArg::Float(v) => (0, v),
            OpArg::None => (0, 0.0),
        };
        match op {
            Op::AutoContrast => ops::auto_contrast(img),
            Op::Equalize => ops::equalize(img),
            Op::Invert => ops::invert(img),
            Op::Rotate => geometry::rotate(img, float, filter, geometry::FILL, s),
            Op::Posterize => ops::posterize(img, int),
            Op::Solarize => ops::solarize(img, int),
            Op::SolarizeAdd => ops::solarize_add(img, int, 128),
            Op::Color => ops::color(img, float, &mut s.pixels),
            Op::Contrast => ops::contrast(img, float),
            Op::Brightness => ops::brightness(img, float),
            Op::Sharpness => ops::sharpness(img, float, &mut s.pixels),
            Op::ShearX => geometry::shear_x(img, float, filter, s),
            Op::ShearY => geometry::shear_y(img, float, filter, s),
            Op::TranslateXRel => geometry::translate_x_rel(img, float, filter, s),
            Op::TranslateYRel => geometry::translate_y_rel(img, float, filter, s),
        }
    }
}

/// Whether `op` goes through the affine transform (and so takes an interpolation).
pub fn is_geometric(op: Op) -> bool {
    matches!(
        op,
        Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateXRel | Op::TranslateYRel
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::sampling::rng::{Purpose, stream};

    fn image() -> RgbImage {
        RgbImage {
            width: 16,
            height: 12,
            pixels: (0..16 * 12 * 3).map(|i| (i * 37 % 251) as u8).collect(),
        }
    }

    #[test]
    fn ops_are_drawn_uniformly_with_replacement_and_applied_half_the_time() {
        let config: RandAugmentConfig = "rand-m7-mstd0.5-inc1".parse().unwrap();
        let mut ra = RandAugment::new(config, InterpolationChoice::Random);
        let mut counts: HashMap<Op, u32> = HashMap::new();
        let (mut applied_total, mut same_twice, mut bicubic, mut geometric) = (0, 0, 0, 0);
        let mut applied = Vec::new();
        let n = 15_000;
        for pos in 0..n {
            let mut rng = stream(5, Purpose::Augment, 0, pos, 0);
            let mut img = image();
            ra.apply(&mut img, &mut rng, &mut applied);
            applied_total += applied.len();
            if applied.len() == 2 && applied[0].op == applied[1].op {
                same_twice += 1;
            }
            for a in &applied {
                *counts.entry(a.op).or_default() += 1;
                if let Some(i) = a.interpolation {
                    geometric += 1;
                    bicubic += u32::from(i == Interpolation::Bicubic);
                }
            }
        }
        // 2 draws x p = 0.5: one applied op per image on average.
        let mean = applied_total as f64 / f64::from(n);
        assert!((0.97..1.03).contains(&mean), "{mean}");
        // 15 ops: each ~1/15 of the applied ones (1,000 of 15,000), within 15 %.
        assert_eq!(counts.len(), 15);
        for (op, c) in &counts {
            assert!((850..1150).contains(c), "{op:?}: {c}");
        }
        // With replacement: both applied and equal in ~1/4 * 1/15 of images (250).
        assert!((170..330).contains(&same_twice), "{same_twice}");
        let share = f64::from(bicubic) / f64::from(geometric);
        assert!((0.45..0.55).contains(&share), "{share}");
    }

    #[test]
    fn the_same_stream_gives_the_same_image() {
        let config: RandAugmentConfig = "rand-m9-n3-mstd0.5-inc1".parse().unwrap();
        let mut ra = RandAugment::new(config, InterpolationChoice::Random);
        let mut applied = Vec::new();
        for pos in 0..50 {
            let run = |ra: &mut RandAugment, applied: &mut Vec<Applied>| {
                let mut img = image();
                ra.apply(
                    &mut img,
                    &mut stream(1, Purpose::Augment, 2, pos, 1),
                    applied,
                );
                img
            };
            let a = run(&mut ra, &mut applied);
            let first = applied.clone();
            let b = run(&mut ra, &mut applied);
            assert_eq!(a, b);
            assert_eq!(first, applied);
        }
    }
}
