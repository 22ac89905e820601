//! The image stages, each exact against Pillow or timm: JPEG decode into reused buffers
//! ([`decode`]: zune-jpeg, or [`jpeg`], libjpeg-turbo's arithmetic for Pillow's bytes), only
//! the restart intervals a crop reads ([`region`]), RandomResizedCrop's parameters as timm
//! draws them ([`crop`]), the filters by timm's names ([`interpolation`]),
//! Pillow's antialiased resize bit for bit ([`resample`]), timm's eval resize and center crop
//! ([`eval_transform`]), the horizontal flip ([`flip`]) and RandAugment ([`rand_augment`]).
//! [`cpu::CpuExt`] decides which kernels (AVX2 or portable) they run; `--cpu-ext none` caps it.

pub mod cpu;
pub mod crop;
pub mod decode;
pub mod eval_transform;
pub mod flip;
pub mod interpolation;
pub mod jpeg;
pub mod rand_augment;
pub mod region;
pub mod resample;
