/*!
The rsb loader: everything between a packed dataset and a batch of uint8 images, and the daemon
that serves those batches to trainers through shared memory.

The request:
- [`transform`]: [`TransformSpec`], every setting of timm's train or eval transform under
  timm's flag names, its checks, and the A1/A2/A3/eval presets (the one place they live).
- [`job`]: [`JobSpec`] (split, transform, seed, ranks, batch size), checked where it enters and
  again by the daemon, and its plan: which samples make batch (epoch, step).

The data core:
- [`rng`]: counter-based random streams keyed by (seed, purpose, epoch, position, repeat).
- [`sampler`]: timm's repeated-augmentation sampler and torch's distributed sampler.
- [`crop`]: RandomResizedCrop parameters exactly as timm draws them.
- [`interpolation`]: the resize filters by timm's names.
- [`decode`]: JPEG → RGB into reused buffers.
- [`cpu`]: [`cpu::CpuExt`], the one type that decides which kernels (AVX2 or portable) the
  resize, the geometry samplers and the blends run; `--cpu-ext none` caps it.
- [`resample`]: Pillow's antialiased bilinear/bicubic resize, bit for bit (AVX2 kernels where the
  CPU has them, tested against the portable reference).
- [`eval_transform`]: timm's eval resize + center crop.
- [`flip`]: the horizontal flip.
- [`rand_augment`]: timm's RandAugment: config grammar, level functions, all 15 ops (exact
  against Pillow) and the per-image driver.
- [`pipeline`]: the per-thread [`pipeline::Worker`] that draws each sample's stream and runs a
  transform, decoding a record once for all of its repeats.
- [`bench`](mod@bench): `loader bench`, the loader's rate against the decode-only rate of the same
  records, measured in the same run.
- [`batch`]: fills batches on several threads, bit-identical whatever the thread count.
- [`stream`]: the one loop from a job to its batches (positions, sample orders, fills, ids,
  reports), used by the daemon's producer, `loader bench` and the trainer's in-process feed.

The daemon and its clients:
- [`ring`]: the shared-memory ring of batch slots.
- [`protocol`]: the socket's messages.
- [`frame`]: the one frame codec (length prefix, JSON, an explicit "incomplete") every reader
  of the socket shares.
- [`server`]: `loader serve` (one producer per job group, peer checks, systemd).
- [`client`]: attach to a daemon and read batches in place, with exact resume.

# Example
```
use loader::crop::CropBox;
use loader::rng::{Purpose, stream};
use loader::{JobSpec, TransformSpec};

let a1 = TransformSpec::preset("a1").expect("a preset");
let job = JobSpec::single("train", a1, 42, 256);
let plan = job.plan(1000)?;
assert_eq!(plan.steps_per_epoch(), 3); // floor(1000 / 256) batches, copies back to back
let epoch = plan.sampler().epoch(0);
let s = plan.batch(&epoch, 0)[0];
let TransformSpec::Train(t) = a1 else { unreachable!() };
let mut rng = stream(42, Purpose::Augment, 0, s.position, s.repeat);
let crop = CropBox::sample(&mut rng, 500, 375, &t.rrc());
assert!(crop.left + crop.width <= 500);
# Ok::<(), Box<dyn std::error::Error>>(())
```
*/
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod bench;
pub mod client;
pub mod cpu;
pub mod crop;
pub mod decode;
pub mod eval_transform;
pub mod flip;
pub mod frame;
#[cfg(test)]
mod fuzz_tests;
pub mod interpolation;
pub mod job;
pub mod pipeline;
pub mod prometheus;
pub mod protocol;
pub mod rand_augment;
pub mod region;
pub mod resample;
pub mod ring;
pub mod rng;
pub mod sampler;
pub mod server;
pub mod stream;
#[cfg(test)]
mod testutil;
pub mod transform;

pub use job::{JobSpec, Position};
pub use transform::TransformSpec;
