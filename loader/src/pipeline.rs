/*!
Where a [`TransformSpec`] runs. A [`Transformer`] is the transform made runnable (timm's
`transforms_factory.py`: the stages and their order), knowing nothing of samplers; a [`Worker`]
decodes a record and hands the transformer each sample's keyed random stream.

Train: RandomResizedCrop → horizontal flip → RandAugment (timm's primary and secondary stages;
with `--aa` set there is no colour jitter, and `--reprob 0` means no random erasing).
Eval: resize + center crop. Normalisation happens on the device, so the output is uint8 HWC.

A [`Worker`] belongs to one thread and owns every buffer it needs. [`Worker::produce`] decodes
a record **once** and writes one augmented copy per requested sample: the repeats of
repeated augmentation share that decode, which is the loader's main saving over timm (three
decodes per image there).
*/

use std::time::{Duration, Instant};

use rand::Rng;

use crate::crop::CropBox;
use crate::decode::{DecodeError, Decoder, RgbImage};
use crate::rand_augment::{Applied, RandAugment};
use crate::resample::Resampler;
use crate::rng::{Purpose, stream};
use crate::sampler::Sample;
use crate::transform::TransformSpec;

/// Time spent per stage, summed over the samples a worker produced.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// JPEG decode (once per record).
    pub decode: Duration,
    /// Crop parameters and resize (or the eval resize and crop).
    pub resize: Duration,
    /// Horizontal flip: its draw only, as the resize writes the mirrored image itself.
    pub flip: Duration,
    /// RandAugment.
    pub rand_augment: Duration,
    /// Copy into the output slot.
    pub write: Duration,
    /// Records decoded.
    pub decoded: u64,
    /// Samples produced.
    pub samples: u64,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: StageTimes) {
        self.decode += o.decode;
        self.resize += o.resize;
        self.flip += o.flip;
        self.rand_augment += o.rand_augment;
        self.write += o.write;
        self.decoded += o.decoded;
        self.samples += o.samples;
    }
}

impl std::ops::Sub for StageTimes {
    type Output = StageTimes;

    /// The times between two snapshots (`later - earlier`).
    fn sub(self, o: StageTimes) -> StageTimes {
        StageTimes {
            decode: self.decode.saturating_sub(o.decode),
            resize: self.resize.saturating_sub(o.resize),
            flip: self.flip.saturating_sub(o.flip),
            rand_augment: self.rand_augment.saturating_sub(o.rand_augment),
            write: self.write.saturating_sub(o.write),
            decoded: self.decoded.saturating_sub(o.decoded),
            samples: self.samples.saturating_sub(o.samples),
        }
    }
}

/// A [`TransformSpec`] made runnable on one thread: the resampler, RandAugment and the buffers
/// it reuses. It knows no sampler and no seed: it is given a decoded image and the random
/// stream to draw from, and draws in timm's order (crop, interpolation, flip, RandAugment).
pub struct Transformer {
    transform: TransformSpec,
    resampler: Resampler,
    rand_augment: Option<RandAugment>,
    work: RgbImage,
    applied: Vec<Applied>,
}

impl Transformer {
    /// The runnable form of `transform`.
    pub fn new(transform: TransformSpec) -> Transformer {
        let rand_augment = match transform {
            TransformSpec::Train(t) => t.aa.map(|c| RandAugment::new(c, t.train_interpolation)),
            TransformSpec::Eval(_) => None,
        };
        Transformer {
            transform,
            resampler: Resampler::new(),
            rand_augment,
            work: RgbImage::default(),
            applied: Vec::new(),
        }
    }

    /// Writes `img` transformed into `out` (`transform.image_bytes()` long), drawing from
    /// `rng` (untouched by the eval transform), and adds the stage times to `times`.
    pub fn apply(
        &mut self,
        img: &RgbImage,
        rng: &mut impl Rng,
        out: &mut [u8],
        times: &mut StageTimes,
    ) {
        let size = self.transform.img_size();
        let side = size as usize;
        let t0 = Instant::now();
        match self.transform {
            TransformSpec::Eval(e) => {
                e.apply(img, &mut self.resampler, &mut self.work, out);
                times.resize += t0.elapsed();
            }
            TransformSpec::Train(t) => {
                let crop = CropBox::sample(rng, img.width, img.height, &t.rrc());
                let filter = t.train_interpolation.sample(rng);
                // The flip is drawn after the crop, as timm draws it, and applied by the
                // resize itself (its horizontal pass writes the columns back to front).
                let t1 = Instant::now();
                let flip = rng.random::<f64>() < t.hflip;
                let flip_time = t1.elapsed();
                times.flip += flip_time;
                self.work.width = size;
                self.work.height = size;
                self.work.pixels.resize(side * side * 3, 0);
                self.resampler.resize_and_flip(
                    &img.pixels,
                    img.width as usize,
                    crop,
                    (side, side),
                    filter,
                    flip,
                    &mut self.work.pixels,
                );
                let t2 = Instant::now();
                times.resize += t2 - t0 - flip_time;
                if let Some(ra) = &mut self.rand_augment {
                    ra.apply(&mut self.work, rng, &mut self.applied);
                }
                let t3 = Instant::now();
                times.rand_augment += t3 - t2;
                out[..side * side * 3].copy_from_slice(&self.work.pixels);
                times.write += t3.elapsed();
            }
        }
        times.samples += 1;
    }

    /// The RandAugment ops applied to the last image (for `loader preview`).
    pub fn last_ops(&self) -> &[Applied] {
        &self.applied
    }
}

/// Everything one thread needs to turn records into output images: the decoder, and each
/// sample's random stream, keyed by (seed, epoch, position, repeat) (DESIGN.md invariant 1).
pub struct Worker {
    seed: u64,
    decoder: Decoder,
    decoded: RgbImage,
    transformer: Transformer,
    /// Stage times so far.
    pub times: StageTimes,
}

impl Worker {
    /// A worker for `transform` with augmentation streams keyed by `seed`.
    pub fn new(transform: TransformSpec, seed: u64) -> Worker {
        Worker {
            seed,
            decoder: Decoder::default(),
            decoded: RgbImage::default(),
            transformer: Transformer::new(transform),
            times: StageTimes::default(),
        }
    }

    /// Decodes `jpeg` once and writes one augmented image per sample of `samples` into the
    /// matching slice of `outs` (each `transform.image_bytes()` long).
    ///
    /// # Errors
    /// [`DecodeError`] if the record does not decode; nothing is written then.
    pub fn produce(
        &mut self,
        jpeg: &[u8],
        epoch: u32,
        samples: &[Sample],
        outs: &mut [&mut [u8]],
    ) -> Result<(), DecodeError> {
        let t0 = Instant::now();
        self.decoder.decode_into(jpeg, &mut self.decoded)?;
        if let TransformSpec::Eval(e) = self.transformer.transform {
            let (width, height) = (self.decoded.width, self.decoded.height);
            let (resized_width, resized_height) = e.resized_size(width, height);
            if u64::from(resized_width) * u64::from(resized_height) > self.decoder.max_pixels() {
                return Err(DecodeError::TooElongated {
                    width,
                    height,
                    resized_width,
                    resized_height,
                });
            }
        }
        self.times.decode += t0.elapsed();
        self.times.decoded += 1;
        for (sample, out) in samples.iter().zip(outs.iter_mut()) {
            let mut rng = stream(
                self.seed,
                Purpose::Augment,
                epoch,
                sample.position,
                sample.repeat,
            );
            self.transformer
                .apply(&self.decoded, &mut rng, out, &mut self.times);
        }
        Ok(())
    }

    /// The RandAugment ops applied to the last sample produced (for `loader preview`).
    pub fn last_ops(&self) -> &[Applied] {
        self.transformer.last_ops()
    }
}

#[cfg(test)]
mod tests {
    use shard_tool::synth;

    use super::*;

    #[test]
    fn an_image_the_eval_resize_would_blow_up_is_refused_not_resized() {
        let t = TransformSpec::preset("eval").unwrap();
        let mut w = Worker::new(t, 0);
        let mut out = vec![0u8; t.image_bytes()];
        let sample = [Sample {
            index: 0,
            position: 0,
            repeat: 0,
        }];
        // 16,000 × 2: the short side to 235 would make 1.88 million × 235 pixels (442 M).
        let strip = synth::class_image(1, 0, 16_000, 2);
        let e = w.produce(&strip, 0, &sample, &mut [&mut out]).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::TooElongated {
                    width: 16_000,
                    height: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("above the decoder's pixel limit"),
            "{e}"
        );
        // A wide image that stays within the limit is evaluated.
        let wide = synth::class_image(1, 0, 4_000, 100);
        w.produce(&wide, 0, &sample, &mut [&mut out]).unwrap();
    }

    #[test]
    fn repeats_differ_and_the_same_key_gives_the_same_image() {
        let jpeg = synth::class_image(2, 0, 120, 90);
        let t = TransformSpec::preset("a1").unwrap();
        let mut w = Worker::new(t, 42);
        let n = t.image_bytes();
        let mut buf = vec![0u8; 3 * n];
        let samples: Vec<Sample> = (0..3)
            .map(|repeat| Sample {
                index: 0,
                position: 7,
                repeat,
            })
            .collect();
        {
            let mut outs: Vec<&mut [u8]> = buf.chunks_exact_mut(n).collect();
            w.produce(&jpeg, 0, &samples, &mut outs).unwrap();
        }
        assert_eq!(w.times.decoded, 1, "three repeats, one decode");
        assert_eq!(w.times.samples, 3);
        assert_ne!(buf[..n], buf[n..2 * n]);
        assert_ne!(buf[n..2 * n], buf[2 * n..]);
        let mut again = vec![0u8; n];
        Worker::new(t, 42)
            .produce(&jpeg, 0, &samples[1..2], &mut [&mut again[..]])
            .unwrap();
        assert_eq!(again[..], buf[n..2 * n]);
        let mut other_epoch = vec![0u8; n];
        Worker::new(t, 42)
            .produce(&jpeg, 1, &samples[1..2], &mut [&mut other_epoch[..]])
            .unwrap();
        assert_ne!(other_epoch[..], buf[n..2 * n]);
    }
}
