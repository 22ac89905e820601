/*!
Resampling filters, by timm's names: `--train-interpolation` (`random`, `bilinear`,
`bicubic`) and `--interpolation` (eval). Their text forms are what recipes, command lines and
the wire protocol carry.
*/

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Resampling filter of a resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Pillow's BILINEAR (triangle filter, antialiased).
    Bilinear,
    /// Pillow's BICUBIC (Keys cubic, a = -0.5, antialiased).
    Bicubic,
}

/// timm's `train_interpolation`: a fixed filter or `random` (bilinear or bicubic, 50/50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InterpolationChoice {
    /// Always this filter.
    Fixed(Interpolation),
    /// `random.choice([BILINEAR, BICUBIC])`, drawn after the crop box.
    Random,
}

/// A filter name that is not one of timm's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interpolation {name:?} is not one of {allowed}")]
pub struct UnknownInterpolation {
    name: String,
    allowed: &'static str,
}

impl InterpolationChoice {
    /// Draws the filter for one sample.
    pub fn sample(self, rng: &mut impl Rng) -> Interpolation {
        match self {
            InterpolationChoice::Fixed(i) => i,
            InterpolationChoice::Random if rng.random_bool(0.5) => Interpolation::Bicubic,
            InterpolationChoice::Random => Interpolation::Bilinear,
        }
    }
}

impl fmt::Display for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        })
    }
}

impl FromStr for Interpolation {
    type Err = UnknownInterpolation;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            _ => Err(UnknownInterpolation {
                name: name.to_owned(),
                allowed: "bilinear, bicubic",
            }),
        }
    }
}

impl fmt::Display for InterpolationChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpolationChoice::Fixed(i) => i.fmt(f),
            InterpolationChoice::Random => f.write_str("random"),
        }
    }
}

impl FromStr for InterpolationChoice {
    type Err = UnknownInterpolation;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "random" => Ok(InterpolationChoice::Random),
            other => {
                other
                    .parse()
                    .map(InterpolationChoice::Fixed)
                    .map_err(|_| UnknownInterpolation {
                        name: name.to_owned(),
                        allowed: "random, bilinear, bicubic",
                    })
            }
        }
    }
}

impl TryFrom<String> for InterpolationChoice {
    type Error = UnknownInterpolation;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<InterpolationChoice> for String {
    fn from(c: InterpolationChoice) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::{Purpose, stream};

    #[test]
    fn random_interpolation_is_a_fair_coin() {
        let mut bicubic = 0;
        for pos in 0..10_000 {
            let mut rng = stream(3, Purpose::Augment, 0, pos, 0);
            if InterpolationChoice::Random.sample(&mut rng) == Interpolation::Bicubic {
                bicubic += 1;
            }
        }
        assert!((4_700..5_300).contains(&bicubic), "{bicubic}");
        let mut rng = stream(3, Purpose::Augment, 0, 0, 0);
        let fixed = InterpolationChoice::Fixed(Interpolation::Bilinear);
        assert_eq!(fixed.sample(&mut rng), Interpolation::Bilinear);
    }

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for name in ["random", "bilinear", "bicubic"] {
            let c: InterpolationChoice = name.parse().unwrap();
            assert_eq!(c.to_string(), name);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(
                serde_json::from_str::<InterpolationChoice>(&json).unwrap(),
                c
            );
        }
        let e = "nearest".parse::<InterpolationChoice>().unwrap_err();
        assert!(e.to_string().contains("random, bilinear, bicubic"), "{e}");
        assert!("random".parse::<Interpolation>().is_err());
        assert!(serde_json::from_str::<InterpolationChoice>("\"lanczos\"").is_err());
    }
}
