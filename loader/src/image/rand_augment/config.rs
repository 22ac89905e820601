/*!
timm's RandAugment config string (`--aa rand-m7-mstd0.5-inc1`) and level functions.

Grammar, as timm's `rand_augment_transform` parses it: `rand` then `-`-separated sections, each
a key followed by its value: `m` magnitude (integer, default 10), `n` ops per image (default 2),
`mstd` magnitude noise (Gaussian std; above 100 means uniform in [0, m]), `mmax` magnitude upper
bound (default 10), `inc` the "increasing" op list, `p` per-op probability (default 0.5).
timm's quirk is kept: `inc` tests the truthiness of the value *string*, so `inc0` also selects
the increasing list. Unlike timm, a section without a value is an error, not ignored.
*/

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Most ops drawn per image (`n`); timm uses 2, and the driver keeps its choices on the stack.
pub const MAX_LAYERS: u32 = 16;

/// timm's `_LEVEL_DENOM`: magnitudes are on a 0..10 scale.
pub const LEVEL_DENOM: f64 = 10.0;

/// A parsed RandAugment configuration; its text form (serde, [`fmt::Display`]) is timm's
/// grammar, so recipes and requests carry `rand-m7-mstd0.5-inc1` as timm users write it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RandAugmentConfig {
    /// `m`: magnitude on the 0..10 scale.
    pub magnitude: f64,
    /// `n`: ops drawn per image (with replacement).
    pub num_layers: u32,
    /// `mstd`: std of the Gaussian around `magnitude`; infinity means uniform in [0, m].
    pub magnitude_std: f64,
    /// `mmax`: upper clamp of the drawn magnitude (default 10).
    pub magnitude_max: f64,
    /// `inc`: use the "increasing" op list (A1/A2/A3 all do).
    pub increasing: bool,
    /// `p`: probability that each drawn op is applied.
    pub prob: f64,
}

impl Default for RandAugmentConfig {
    fn default() -> Self {
        RandAugmentConfig {
            magnitude: LEVEL_DENOM,
            num_layers: 2,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            increasing: false,
            prob: 0.5,
        }
    }
}

/// A config string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RandAugment config `{text}`: {problem} (expected e.g. rand-m9-mstd0.5-inc1)")]
pub struct ParseError {
    text: String,
    problem: String,
}

impl FromStr for RandAugmentConfig {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let fail = |problem: String| ParseError {
            text: text.to_owned(),
            problem,
        };
        let mut sections = text.split('-');
        if sections.next() != Some("rand") {
            return Err(fail("it must start with `rand`".into()));
        }
        let mut c = RandAugmentConfig::default();
        for section in sections {
            // timm splits at the first digit: key = letters before it, value = the rest.
            let split = section.find(|ch: char| ch.is_ascii_digit());
            let Some((key, value)) = split.map(|i| section.split_at(i)) else {
                return Err(fail(format!("section `{section}` has no value")));
            };
            let number = |v: &str| {
                v.parse::<f64>()
                    .map_err(|_| fail(format!("`{value}` in `{section}` is not a number")))
            };
            let integer = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| fail(format!("`{value}` in `{section}` is not a whole number")))
            };
            match key {
                "m" => c.magnitude = f64::from(integer(value)?),
                "n" => {
                    c.num_layers = integer(value)?;
                    if c.num_layers > MAX_LAYERS {
                        return Err(fail(format!("at most {MAX_LAYERS} ops per image")));
                    }
                }
                "mstd" => {
                    let std = number(value)?;
                    c.magnitude_std = if std > 100.0 { f64::INFINITY } else { std };
                }
                "mmax" => c.magnitude_max = f64::from(integer(value)?),
                // bool() of a non-empty string is true in Python, whatever the digits.
                "inc" => c.increasing = true,
                "p" => c.prob = number(value)?,
                other => return Err(fail(format!("unknown key `{other}`"))),
            }
        }
        Ok(c)
    }
}

impl fmt::Display for RandAugmentConfig {
    /// timm's grammar, default sections left out: what [`FromStr`] reads back to this value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = RandAugmentConfig::default();
        write!(f, "rand-m{}", self.magnitude)?;
        if self.num_layers != d.num_layers {
            write!(f, "-n{}", self.num_layers)?;
        }
        if self.magnitude_std == f64::INFINITY {
            // timm reads any mstd above 100 as "uniform in [0, m]".
            f.write_str("-mstd101")?;
        } else if self.magnitude_std != d.magnitude_std {
            write!(f, "-mstd{}", self.magnitude_std)?;
        }
        if self.magnitude_max != d.magnitude_max {
            write!(f, "-mmax{}", self.magnitude_max)?;
        }
        if self.increasing {
            f.write_str("-inc1")?;
        }
        if self.prob != d.prob {
            write!(f, "-p{}", self.prob)?;
        }
        Ok(())
    }
}

impl TryFrom<String> for RandAugmentConfig {
    type Error = ParseError;

    fn try_from(text: String) -> Result<Self, ParseError> {
        text.parse()
    }
}

impl From<RandAugmentConfig> for String {
    fn from(c: RandAugmentConfig) -> String {
        c.to_string()
    }
}

impl RandAugmentConfig {
    /// Draws the magnitude of one op call: `gauss(m, mstd)` (or uniform in [0, m]), clamped to
    /// [0, mmax]. A fresh draw per call, as timm's `AugmentOp`.
    pub fn draw_magnitude(&self, rng: &mut impl Rng) -> f64 {
        let m = if self.magnitude_std == f64::INFINITY {
            rng.random_range(0.0..=self.magnitude)
        } else if self.magnitude_std > 0.0 {
            let normal: f64 = rng.sample(rand_distr::StandardNormal);
            self.magnitude + self.magnitude_std * normal
        } else {
            self.magnitude
        };
        m.clamp(0.0, self.magnitude_max)
    }
}

/// The 15 ops of timm's RandAugment, in list order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `ImageOps.autocontrast`.
    AutoContrast,
    /// `ImageOps.equalize`.
    Equalize,
    /// `ImageOps.invert`.
    Invert,
    /// Rotation by ±M/10·30 degrees.
    Rotate,
    /// Keep `bits` high bits (increasing list: 4 − int(M/10·4); original: int(M/10·4)).
    Posterize,
    /// Invert levels at or above a threshold (increasing: 256 − int(M/10·256)).
    Solarize,
    /// Add int(M/10·110) to levels below 128.
    SolarizeAdd,
    /// Saturation blend.
    Color,
    /// Contrast blend.
    Contrast,
    /// Brightness blend.
    Brightness,
    /// Sharpness blend.
    Sharpness,
    /// Horizontal shear ±M/10·0.3.
    ShearX,
    /// Vertical shear ±M/10·0.3.
    ShearY,
    /// Horizontal translation by ±M/10·0.45 of the width.
    TranslateXRel,
    /// Vertical translation by ±M/10·0.45 of the height.
    TranslateYRel,
}

/// Both of timm's lists hold these 15 ops in this order; `inc` changes only the level functions
/// of Posterize, Solarize and the four enhance ops.
pub const OPS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

impl Op {
    /// The op's name on the command line (`auto-contrast`, `shear-x`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::AutoContrast => "auto-contrast",
            Op::Equalize => "equalize",
            Op::Invert => "invert",
            Op::Rotate => "rotate",
            Op::Posterize => "posterize",
            Op::Solarize => "solarize",
            Op::SolarizeAdd => "solarize-add",
            Op::Color => "color",
            Op::Contrast => "contrast",
            Op::Brightness => "brightness",
            Op::Sharpness => "sharpness",
            Op::ShearX => "shear-x",
            Op::ShearY => "shear-y",
            Op::TranslateXRel => "translate-x-rel",
            Op::TranslateYRel => "translate-y-rel",
        }
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(s: &str) -> Result<Op, String> {
        OPS.iter()
            .copied()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = OPS.iter().map(|op| op.name()).collect();
                format!("unknown op `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// The argument an op is called with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpArg {
    /// The op takes none.
    None,
    /// A whole number (bits, threshold, addend).
    Int(u32),
    /// A real number (degrees, factor, shear, translation fraction).
    Float(f64),
}

/// Whether timm's level function of `op` draws a random sign (`_randomly_negate`).
pub fn negates(op: Op) -> bool {
    matches!(
        op,
        Op::Rotate
            | Op::ShearX
            | Op::ShearY
            | Op::TranslateXRel
            | Op::TranslateYRel
            | Op::Color
            | Op::Contrast
            | Op::Brightness
            | Op::Sharpness
    )
}

/// timm's level function of `op` at magnitude `m`, drawing the sign from `rng` where timm does
/// (`-v if random() > 0.5`).
pub fn level_arg(op: Op, m: f64, increasing: bool, rng: &mut impl Rng) -> OpArg {
    let negative = negates(op) && rng.random::<f64>() > 0.5;
    level_value(op, m, increasing, negative)
}

/// timm's level function of `op` at magnitude `m` with the sign given (ignored by ops that
/// have none). The non-increasing enhance level (`M/10·1.8 + 0.1`) has no sign either.
pub fn level_value(op: Op, m: f64, increasing: bool, negative: bool) -> OpArg {
    let level = m / LEVEL_DENOM;
    let sign = |v: f64| if negative { -v } else { v };
    match op {
        Op::AutoContrast | Op::Equalize | Op::Invert => OpArg::None,
        Op::Rotate => OpArg::Float(sign(level * 30.0)),
        Op::Posterize => {
            let bits = (level * 4.0) as u32;
            OpArg::Int(if increasing { 4 - bits.min(4) } else { bits })
        }
        Op::Solarize => {
            let t = ((level * 256.0) as u32).min(256);
            OpArg::Int(if increasing { 256 - t } else { t })
        }
        Op::SolarizeAdd => OpArg::Int(((level * 110.0) as u32).min(128)),
        Op::Color | Op::Contrast | Op::Brightness | Op::Sharpness => OpArg::Float(if increasing {
            (1.0 + sign(level * 0.9)).max(0.1)
        } else {
            level * 1.8 + 0.1
        }),
        Op::ShearX | Op::ShearY => OpArg::Float(sign(level * 0.3)),
        Op::TranslateXRel | Op::TranslateYRel => OpArg::Float(sign(level * 0.45)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::{Purpose, stream};

    #[test]
    fn the_text_form_reads_back_to_the_same_config() {
        for text in [
            "rand-m7-mstd0.5-inc1",
            "rand-m6-mstd0.5-inc1",
            "rand-m9",
            "rand-m9-n3-mstd101-mmax12-inc1-p0.7",
            "rand-m0-n0-p0",
        ] {
            let c: RandAugmentConfig = text.parse().unwrap();
            assert_eq!(c.to_string(), text);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<RandAugmentConfig>(&json).unwrap(), c);
        }
        assert!(serde_json::from_str::<RandAugmentConfig>("\"rand-q3\"").is_err());
    }

    #[test]
    fn parses_the_recipes_and_timms_keys() {
        let a1: RandAugmentConfig = "rand-m7-mstd0.5-inc1".parse().unwrap();
        assert_eq!(
            a1,
            RandAugmentConfig {
                magnitude: 7.0,
                magnitude_std: 0.5,
                increasing: true,
                ..Default::default()
            }
        );
        let c: RandAugmentConfig = "rand-m9-n3-mstd101-mmax12-p0.7-inc0".parse().unwrap();
        assert_eq!(
            (c.magnitude, c.num_layers, c.magnitude_max, c.prob),
            (9.0, 3, 12.0, 0.7)
        );
        assert!(c.magnitude_std.is_infinite());
        assert!(c.increasing, "timm's bool('0') quirk");
        for bad in [
            "randaug-m9",
            "rand-m9.5",
            "rand-q3",
            "rand-m",
            "rand-mstdx",
            "rand-n17",
        ] {
            assert!(bad.parse::<RandAugmentConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn level_functions_at_the_recipe_magnitudes() {
        let mut rng = stream(0, Purpose::Augment, 0, 0, 0);
        let abs = |a: OpArg| match a {
            OpArg::Float(v) => v.abs(),
            other => panic!("{other:?}"),
        };
        // docs/recipe.md §2.3 table, M = 7 (A1/A2) and M = 6 (A3).
        assert!((abs(level_arg(Op::Rotate, 7.0, true, &mut rng)) - 21.0).abs() < 1e-9);
        assert_eq!(level_arg(Op::Posterize, 7.0, true, &mut rng), OpArg::Int(2));
        assert_eq!(level_arg(Op::Posterize, 7.5, true, &mut rng), OpArg::Int(1));
        assert_eq!(
            level_arg(Op::Posterize, 10.0, true, &mut rng),
            OpArg::Int(0)
        );
        assert_eq!(level_arg(Op::Solarize, 7.0, true, &mut rng), OpArg::Int(77));
        assert_eq!(
            level_arg(Op::Solarize, 6.0, true, &mut rng),
            OpArg::Int(103)
        );
        assert_eq!(
            level_arg(Op::SolarizeAdd, 7.0, true, &mut rng),
            OpArg::Int(77)
        );
        assert_eq!(
            level_arg(Op::SolarizeAdd, 6.0, true, &mut rng),
            OpArg::Int(66)
        );
        assert!((abs(level_arg(Op::ShearX, 6.0, true, &mut rng)) - 0.18).abs() < 1e-9);
        assert!((abs(level_arg(Op::TranslateYRel, 7.0, true, &mut rng)) - 0.315).abs() < 1e-9);
        let f = abs(level_arg(Op::Color, 7.0, true, &mut rng));
        assert!((f - 1.63).abs() < 1e-9 || (f - 0.37).abs() < 1e-9, "{f}");
        assert_eq!(level_arg(Op::Invert, 7.0, true, &mut rng), OpArg::None);
    }

    #[test]
    fn signs_and_magnitudes_are_distributed_as_timm_draws_them() {
        let c: RandAugmentConfig = "rand-m7-mstd0.5-inc1".parse().unwrap();
        let (mut sum, mut sum2, mut negative) = (0.0, 0.0, 0);
        let n = 20_000;
        for pos in 0..n {
            let mut rng = stream(9, Purpose::Augment, 0, pos, 0);
            let m = c.draw_magnitude(&mut rng);
            assert!((0.0..=10.0).contains(&m));
            sum += m;
            sum2 += m * m;
            if let OpArg::Float(v) = level_arg(Op::Rotate, 7.0, true, &mut rng) {
                negative += u32::from(v < 0.0);
            }
        }
        let mean = sum / f64::from(n);
        let std = (sum2 / f64::from(n) - mean * mean).sqrt();
        assert!((mean - 7.0).abs() < 0.02, "mean {mean}");
        assert!((std - 0.5).abs() < 0.02, "std {std}");
        assert!((9_600..10_400).contains(&negative), "{negative}");
    }
}
