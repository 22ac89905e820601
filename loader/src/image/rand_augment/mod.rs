/*!
RandAugment as timm implements it (`timm/data/auto_augment.py`, docs/recipe.md §2.3).

- [`config`]: the `rand-m7-mstd0.5-inc1` grammar, the magnitude draw and the level functions.
- [`ops`]: the pixel ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd,
  Color, Contrast, Brightness, Sharpness) with Pillow's arithmetic.
- [`geometry`]: Rotate, ShearX/Y, TranslateX/YRel through Pillow's affine transform, fill
  (124, 116, 104).
- [`RandAugment`]: the per-image driver (op choice with replacement, probability, magnitude,
  sign, interpolation) over the counter-based stream.
*/

mod augment;
pub mod config;
pub mod geometry;
pub mod ops;

pub use augment::{Applied, RandAugment, is_geometric};
pub use config::{LEVEL_DENOM, OPS, Op, OpArg, RandAugmentConfig, level_arg, level_value, negates};
