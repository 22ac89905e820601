/*!
What a transform is, as data: the typed request a client sends and the daemon validates.

A [`TransformSpec`] holds every setting of timm's train or eval transform under timm's flag
names (`img_size`, `scale`, `ratio`, `hflip`, `aa`, `train_interpolation`, `aug_repeats`;
`img_size`, `crop_pct`, `interpolation`). It is built once, where a request enters (a recipe
file, a command line, a frame on the socket), checked there by [`TransformSpec::validate`]
against the ranges the loader can run, and travels as JSON. The paper's presets (A1, A2, A3
and the eval protocol) are defined here and nowhere else.

The transform knows nothing of samplers or random streams: [`crate::batches::pipeline`] draws and runs.
*/

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::image::crop::RrcConfig;
use crate::image::eval_transform::EvalTransform;
use crate::image::interpolation::{Interpolation, InterpolationChoice};
use crate::image::rand_augment::{LEVEL_DENOM, RandAugmentConfig};

/// Output sides the loader accepts (`img_size`, both transforms).
pub const IMG_SIZE: RangeInclusive<u32> = 8..=2048;
/// Eval crop fractions accepted (`crop_pct`). Below one half the resize before the crop would
/// be more than twice the output side: no published protocol does that, and a typo such as
/// `1e-3` would size a resize buffer of hundreds of gigabytes.
pub const CROP_PCT: RangeInclusive<f64> = 0.5..=1.0;
/// RandomResizedCrop aspect ratios accepted (`ratio`, both ends); timm's default is 3/4..4/3.
pub const RATIO: RangeInclusive<f64> = 0.1..=10.0;
/// Repeated-augmentation copies per image accepted (`aug_repeats`); the recipes use 3.
pub const AUG_REPEATS: RangeInclusive<u32> = 0..=16;

/// The names [`TransformSpec::preset`] knows.
pub const PRESETS: [&str; 4] = ["a1", "a2", "a3", "eval"];

/// A transform setting outside what the loader runs; names the key, the value and the range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value} {problem}")]
pub struct SettingError {
    /// The key, by timm's flag name (`crop_pct`, `img_size`, ...).
    pub key: &'static str,
    /// The value given, as written.
    pub value: String,
    /// What is wrong, with the allowed range.
    pub problem: String,
}

impl SettingError {
    /// A setting error for `key`.
    pub fn new(key: &'static str, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        SettingError {
            key,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// Checks that `value` of `key` lies in `range`; NaN lies in none. Values and bounds are
    /// written in Rust's debug form, so `1e300` stays short and `inf`, `NaN` read as such.
    ///
    /// # Errors
    /// `key = value is outside start..=end`.
    pub fn within<T: PartialOrd + fmt::Debug>(
        key: &'static str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Result<(), SettingError> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(SettingError {
            key,
            value: format!("{value:?}"),
            problem: format!("is outside {:?}..={:?}", range.start(), range.end()),
        })
    }
}

/// timm's `--aa` text: `none` (or empty) for no RandAugment, else its grammar.
///
/// # Errors
/// The text does not parse, named under the key `aa`.
pub fn parse_aa(text: &str) -> Result<Option<RandAugmentConfig>, SettingError> {
    match text {
        "" | "none" => Ok(None),
        text => text.parse().map(Some).map_err(|e| {
            SettingError::new("aa", format!("{text:?}"), format!("does not parse: {e}"))
        }),
    }
}

/// timm's train transform: RandomResizedCrop → flip → RandAugment, and the sampler's repeats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTransform {
    /// `--img-size`: side of the square output.
    pub img_size: u32,
    /// `--scale`: RandomResizedCrop's area fraction range.
    pub scale: [f64; 2],
    /// `--ratio`: RandomResizedCrop's aspect ratio range (w/h).
    pub ratio: [f64; 2],
    /// `--hflip`: probability of the horizontal flip.
    pub hflip: f64,
    /// `--aa`: RandAugment (`None`: off).
    pub aa: Option<RandAugmentConfig>,
    /// `--train-interpolation`.
    pub train_interpolation: InterpolationChoice,
    /// `--aug-repeats`: copies of each image per epoch (0: torch's plain distributed sampler).
    pub aug_repeats: u32,
}

impl TrainTransform {
    /// RandomResizedCrop's ranges.
    pub fn rrc(&self) -> RrcConfig {
        RrcConfig {
            scale: (self.scale[0], self.scale[1]),
            ratio: (self.ratio[0], self.ratio[1]),
        }
    }
}

/// Which transform, with every setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TransformSpec {
    /// Training augmentation: shuffled, repeated, last partial batch dropped.
    Train(TrainTransform),
    /// Evaluation resize and center crop: record order, every record once.
    Eval(EvalTransform),
}

impl TransformSpec {
    /// The paper's presets: `a1`/`a2` (224, rand-m7-mstd0.5-inc1, 3 repeats), `a3` (160,
    /// rand-m6-mstd0.5-inc1, no repeats), all with timm's default crop ranges, random
    /// interpolation and flip 0.5; `eval` (224, crop 0.95, bicubic). docs/recipe.md table 1.
    pub fn preset(name: &str) -> Option<TransformSpec> {
        let train = |img_size, aa: RandAugmentConfig, aug_repeats| {
            TransformSpec::Train(TrainTransform {
                img_size,
                scale: [0.08, 1.0],
                ratio: [3.0 / 4.0, 4.0 / 3.0],
                hflip: 0.5,
                aa: Some(aa),
                train_interpolation: InterpolationChoice::Random,
                aug_repeats,
            })
        };
        let rand_m = |magnitude| RandAugmentConfig {
            magnitude,
            magnitude_std: 0.5,
            increasing: true,
            ..RandAugmentConfig::default()
        };
        match name {
            "a1" | "a2" => Some(train(224, rand_m(7.0), 3)),
            "a3" => Some(train(160, rand_m(6.0), 0)),
            "eval" => Some(TransformSpec::Eval(EvalTransform {
                img_size: 224,
                crop_pct: 0.95,
                interpolation: Interpolation::Bicubic,
            })),
            _ => None,
        }
    }

    /// `train` or `eval`.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformSpec::Train(_) => "train",
            TransformSpec::Eval(_) => "eval",
        }
    }

    /// Side of the square output image.
    pub fn img_size(&self) -> u32 {
        match self {
            TransformSpec::Train(t) => t.img_size,
            TransformSpec::Eval(e) => e.img_size,
        }
    }

    /// Bytes of one output image (uint8 HWC RGB).
    pub fn image_bytes(&self) -> usize {
        let s = self.img_size() as usize;
        s * s * 3
    }

    /// Repeated-augmentation copies per image (0 for eval).
    pub fn aug_repeats(&self) -> u32 {
        match self {
            TransformSpec::Train(t) => t.aug_repeats,
            TransformSpec::Eval(_) => 0,
        }
    }

    /// Whether this is training: shuffled epochs and the last partial batch dropped (timm's
    /// train loader), rather than every record once in order.
    pub fn is_train(&self) -> bool {
        matches!(self, TransformSpec::Train(_))
    }

    /// Checks every setting against what the loader runs.
    ///
    /// # Errors
    /// The first setting out of range, by timm's flag name.
    pub fn validate(&self) -> Result<(), SettingError> {
        SettingError::within("img_size", self.img_size(), IMG_SIZE)?;
        match self {
            TransformSpec::Train(t) => {
                let [lo, hi] = t.scale;
                if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                    return Err(SettingError::new(
                        "scale",
                        format!("[{lo}, {hi}]"),
                        "must satisfy 0 < min <= max <= 1 (fractions of the image area)",
                    ));
                }
                let [lo, hi] = t.ratio;
                if !(RATIO.contains(&lo) && RATIO.contains(&hi) && lo <= hi) {
                    return Err(SettingError::new(
                        "ratio",
                        format!("[{lo}, {hi}]"),
                        format!(
                            "must satisfy {} <= min <= max <= {} (aspect ratios w/h)",
                            RATIO.start(),
                            RATIO.end()
                        ),
                    ));
                }
                SettingError::within("hflip", t.hflip, 0.0..=1.0)?;
                if let Some(aa) = &t.aa {
                    if !(0.0..=1.0).contains(&aa.prob) {
                        return Err(SettingError::new(
                            "aa",
                            aa,
                            "has p outside 0..=1 (the per-op probability)",
                        ));
                    }
                    if aa.magnitude_max > LEVEL_DENOM {
                        return Err(SettingError::new(
                            "aa",
                            aa,
                            format!(
                                "has mmax above {LEVEL_DENOM} (timm's level functions, e.g. \
                                 Posterize's bit count, leave their range beyond it)"
                            ),
                        ));
                    }
                }
                SettingError::within("aug_repeats", t.aug_repeats, AUG_REPEATS)?;
            }
            TransformSpec::Eval(e) => SettingError::within("crop_pct", e.crop_pct, CROP_PCT)?,
        }
        Ok(())
    }
}

impl fmt::Display for TransformSpec {
    /// One line for logs: `train 224px rand-m7-mstd0.5-inc1 random x3`, `eval 224px crop 0.95
    /// bicubic`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformSpec::Train(t) => {
                write!(f, "train {}px ", t.img_size)?;
                match &t.aa {
                    Some(aa) => write!(f, "{aa}")?,
                    None => f.write_str("no-aa")?,
                }
                write!(f, " {}", t.train_interpolation)?;
                if t.aug_repeats > 0 {
                    write!(f, " x{}", t.aug_repeats)?;
                }
                Ok(())
            }
            TransformSpec::Eval(e) => write!(
                f,
                "eval {}px crop {} {}",
                e.img_size, e.crop_pct, e.interpolation
            ),
        }
    }
}

/// A preset name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transform {0:?} (one of a1, a2, a3, eval)")]
pub struct UnknownPreset(pub String);

impl FromStr for TransformSpec {
    type Err = UnknownPreset;

    /// A preset by name (`--transform a1`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TransformSpec::preset(name).ok_or_else(|| UnknownPreset(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_the_recipes() {
        let Some(TransformSpec::Train(a1)) = TransformSpec::preset("a1") else {
            panic!("a1 is a train transform")
        };
        assert_eq!(a1.img_size, 224);
        assert_eq!(a1.aa, Some("rand-m7-mstd0.5-inc1".parse().unwrap()));
        assert_eq!(a1.aug_repeats, 3);
        let Some(TransformSpec::Train(a3)) = TransformSpec::preset("a3") else {
            panic!("a3 is a train transform")
        };
        assert_eq!(a3.aa, Some("rand-m6-mstd0.5-inc1".parse().unwrap()));
        assert_eq!((a3.img_size, a3.aug_repeats), (160, 0));
        assert_eq!(TransformSpec::preset("a2"), TransformSpec::preset("a1"));
        let eval = TransformSpec::preset("eval").unwrap();
        assert_eq!(eval.image_bytes(), 224 * 224 * 3);
        assert!(!eval.is_train());
        assert!("b7".parse::<TransformSpec>().is_err());
        for name in PRESETS {
            TransformSpec::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn a_spec_round_trips_through_json_and_unknown_fields_are_refused() {
        for name in PRESETS {
            let spec = TransformSpec::preset(name).unwrap();
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<TransformSpec>(&json).unwrap(), spec);
        }
        let json = serde_json::to_string(&TransformSpec::preset("a3").unwrap()).unwrap();
        assert!(json.contains("\"aa\":\"rand-m6-mstd0.5-inc1\""), "{json}");
        let extra = json.replace("\"hflip\"", "\"hfilp\":0.5,\"hflip\"");
        assert!(serde_json::from_str::<TransformSpec>(&extra).is_err());
    }

    #[test]
    fn every_bad_setting_names_its_key_and_range() {
        let train = |f: &dyn Fn(&mut TrainTransform)| {
            let Some(TransformSpec::Train(mut t)) = TransformSpec::preset("a1") else {
                panic!()
            };
            f(&mut t);
            TransformSpec::Train(t).validate().unwrap_err()
        };
        let cases: Vec<(SettingError, &str)> = vec![
            (
                train(&|t| t.img_size = 4),
                "img_size = 4 is outside 8..=2048",
            ),
            (train(&|t| t.img_size = 100_000), "img_size = 100000"),
            (train(&|t| t.scale = [0.0, 1.0]), "scale = [0, 1]"),
            (train(&|t| t.scale = [0.5, 0.2]), "0 < min <= max <= 1"),
            (train(&|t| t.ratio = [1e-3, 1e-3]), "ratio = [0.001, 0.001]"),
            (train(&|t| t.ratio = [1e3, 1e3]), "0.1 <= min <= max <= 10"),
            (train(&|t| t.ratio = [f64::NAN, 1.0]), "ratio = [NaN, 1]"),
            (
                train(&|t| t.hflip = 1.5),
                "hflip = 1.5 is outside 0.0..=1.0",
            ),
            (
                train(&|t| t.aa = Some("rand-m9-p2".parse().unwrap())),
                "aa = rand-m9-p2 has p outside",
            ),
            (
                train(&|t| t.aa = Some("rand-m9-mmax20".parse().unwrap())),
                "has mmax above 10",
            ),
            (
                train(&|t| t.aug_repeats = 100),
                "aug_repeats = 100 is outside 0..=16",
            ),
        ];
        for (e, want) in cases {
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
        let eval = |crop_pct| {
            TransformSpec::Eval(EvalTransform {
                img_size: 224,
                crop_pct,
                interpolation: Interpolation::Bicubic,
            })
            .validate()
        };
        let e = eval(1e-3).unwrap_err();
        assert_eq!(e.to_string(), "crop_pct = 0.001 is outside 0.5..=1.0");
        assert!(eval(f64::INFINITY).is_err() && eval(1.01).is_err());
        assert!(eval(0.875).is_ok());
    }
}
