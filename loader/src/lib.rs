/*!
The rsb loader: everything between a packed dataset and a batch of uint8 images.

Built so far (the loader-core issue is not finished):
- [`rng`]: counter-based random streams keyed by (seed, purpose, epoch, position, repeat).
- [`sampler`]: timm's repeated-augmentation sampler and torch's distributed sampler.
- [`crop`]: RandomResizedCrop parameters exactly as timm draws them, and the interpolation.
- [`decode`]: JPEG → RGB into reused buffers.
- [`resample`]: Pillow's antialiased bilinear/bicubic resize, bit for bit (AVX2 kernels where the
  CPU has them, tested against the portable reference).
- [`eval_transform`]: timm's eval resize + center crop, and the horizontal flip.
- [`rand_augment`]: timm's RandAugment: config grammar, level functions, all 15 ops (exact
  against Pillow) and the per-image driver.
- [`pipeline`]: the one factory of transforms (train: RRC → flip → RandAugment; eval) and the
  per-thread [`pipeline::Worker`] that decodes a record once for all of its repeats.
- [`batch`]: fills a batch on several threads, bit-identical whatever the thread count.

The `loader augment` command applies one of these to one image (`--op decode | resized-crop |
eval | flip`); `tests/golden/compare_imagenet.py` compares it with Pillow on real images.

Not built yet: SIMD versions of the resize and the ops, the
pipeline that decodes each image once for all of its repeats, `loader bench`/`preview`, and the
daemon (shared-memory ring, protocol, service).

# Example
```
use loader::crop::{CropBox, RrcConfig};
use loader::rng::{Purpose, stream};
use loader::sampler::{Sampler, SamplerConfig};

let sampler = Sampler::new(SamplerConfig {
    dataset_len: 1000, world_size: 1, rank: 0, aug_repeats: 3, shuffle: true, seed: 42,
})?;
let epoch = sampler.epoch(0);
assert_eq!(epoch.len(), 768); // floor(1000 / 256) * 256, copies of an image back to back
let s = epoch[0];
let mut rng = stream(42, Purpose::Augment, 0, s.position, s.repeat);
let crop = CropBox::sample(&mut rng, 500, 375, &RrcConfig::default());
assert!(crop.left + crop.width <= 500);
# Ok::<(), Box<dyn std::error::Error>>(())
```
*/
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod client;
pub mod crop;
pub mod decode;
pub mod eval_transform;
pub mod job;
pub mod pipeline;
pub mod protocol;
pub mod rand_augment;
pub mod resample;
pub mod ring;
pub mod rng;
pub mod sampler;
pub mod server;
#[cfg(test)]
mod testutil;
