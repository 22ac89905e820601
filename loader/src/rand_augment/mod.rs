/*!
RandAugment as timm implements it (`timm/data/auto_augment.py`, RECIPE.md §2.3).

- [`config`]: the `rand-m7-mstd0.5-inc1` grammar, the magnitude draw and the level functions.
- [`ops`]: the pixel ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd,
  Color, Contrast, Brightness, Sharpness) with Pillow's arithmetic.

Not built yet: the geometric ops (Rotate, ShearX/Y, TranslateX/YRel through Pillow's affine
transform with fill (124, 116, 104)) and the per-image driver that draws the ops.
*/

pub mod config;
pub mod ops;

pub use config::{LEVEL_DENOM, OPS, Op, OpArg, RandAugmentConfig, level_arg};
