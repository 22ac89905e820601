/*!
The rsb loader: everything between a packed dataset and a batch of uint8 images, and the daemon
that serves those batches to trainers through shared memory. One folder per role, in the order
a batch is made:

- [`request`]: what a trainer asks for: [`TransformSpec`] (timm's train or eval transform under
  timm's flag names, and the A1/A2/A3/eval presets) and [`JobSpec`] (split, transform, seed,
  ranks, batch size) with its plan.
- [`sampling`]: the draws: counter-based random streams keyed by (seed, purpose, epoch,
  position, repeat), timm's repeated-augmentation sampler and torch's distributed sampler.
- [`image`]: the image stages: JPEG decode (whole, or only the restart intervals a crop reads),
  RandomResizedCrop as timm draws it, Pillow's resize bit for bit, the eval resize and center
  crop, the flip, RandAugment, and the one [`image::cpu::CpuExt`] that picks their SIMD kernels
  (`--cpu-ext`).
- [`batches`]: a sample's transform on one thread ([`batches::pipeline`]), batches filled on
  several threads bit-identically, and the one loop from a job to its batches
  ([`batches::stream`]) that the daemon, `loader bench` and the trainer's in-process feed share.
- [`wire`]: between the daemon and a trainer: the shared-memory ring of batch slots, the
  socket's messages and their framing, and the client that attaches and reads batches in place
  with exact resume.
- [`server`]: `loader serve`: one producer per job group, fair shares, peer checks, systemd,
  Prometheus.
- [`bench`](mod@bench): `loader bench`, the loader's rate against the decode-only rate of the same
  records, measured in the same run.

# Example
```
use loader::image::crop::CropBox;
use loader::sampling::rng::{Purpose, stream};
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

pub mod batches;
pub mod bench;
#[cfg(test)]
mod fuzz_tests;
pub mod image;
pub mod request;
pub mod sampling;
pub mod server;
#[cfg(test)]
mod testutil;
pub mod wire;

pub use request::job::{JobSpec, Position};
pub use request::transform::TransformSpec;
