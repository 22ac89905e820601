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
use rand_chacha::ChaCha8Rng;

use crate::image::crop::CropBox;
use crate::image::decode::{DecodeError, Decoder, RgbImage};
use crate::image::rand_augment::{Applied, RandAugment};
use crate::image::region::RegionDecoder;
use crate::image::resample::Resampler;
use crate::request::transform::{TrainTransform, TransformSpec};
use crate::sampling::rng::{Purpose, stream};
use crate::sampling::sampler::Sample;

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
    /// Records decoded by region (crop-aware decoding; the rest were decoded whole).
    pub decoded_by_region: u64,
    /// Pixels decoded.
    pub pixels_decoded: u64,
    /// Pixels the decoded records have in all (`pixels_decoded` over this is the fraction
    /// crop-aware decoding kept).
    pub pixels_in_records: u64,
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
        self.decoded_by_region += o.decoded_by_region;
        self.pixels_decoded += o.pixels_decoded;
        self.pixels_in_records += o.pixels_in_records;
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
            decoded_by_region: self.decoded_by_region.saturating_sub(o.decoded_by_region),
            pixels_decoded: self.pixels_decoded.saturating_sub(o.pixels_decoded),
            pixels_in_records: self.pixels_in_records.saturating_sub(o.pixels_in_records),
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
        let t0 = Instant::now();
        match self.transform {
            TransformSpec::Eval(e) => {
                e.apply(img, &mut self.resampler, &mut self.work, out);
                times.resize += t0.elapsed();
                times.samples += 1;
            }
            TransformSpec::Train(t) => {
                let crop = CropBox::sample(rng, img.width, img.height, &t.rrc());
                times.resize += t0.elapsed();
                self.train(&t, img, (0, 0), crop, rng, out, times);
            }
        }
    }

    /// The train transform once its crop is drawn: `img` is the part of the image whose
    /// top-left pixel lies at `origin` (the whole image, or what a region decode gave), and
    /// holds `crop`, given in the image's coordinates. `rng` continues after the crop's draw.
    #[allow(clippy::too_many_arguments)]
    fn train(
        &mut self,
        t: &TrainTransform,
        img: &RgbImage,
        origin: (u32, u32),
        crop: CropBox,
        rng: &mut impl Rng,
        out: &mut [u8],
        times: &mut StageTimes,
    ) {
        let size = t.img_size;
        let side = size as usize;
        let t0 = Instant::now();
        let filter = t.train_interpolation.sample(rng);
        // The flip is drawn after the crop, as timm draws it, and applied by the resize itself
        // (its horizontal pass writes the columns back to front).
        let t1 = Instant::now();
        let flip = rng.random::<f64>() < t.hflip;
        let flip_time = t1.elapsed();
        times.flip += flip_time;
        self.work.width = size;
        self.work.height = size;
        self.work.pixels.resize(side * side * 3, 0);
        let local = CropBox {
            top: crop.top - origin.1,
            left: crop.left - origin.0,
            ..crop
        };
        self.resampler.resize_and_flip(
            &img.pixels,
            img.width as usize,
            local,
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
        times.samples += 1;
    }

    /// The RandAugment ops applied to the last image (for `loader preview`).
    pub fn last_ops(&self) -> &[Applied] {
        &self.applied
    }
}

/// Everything one thread needs to turn records into output images: the decoder, and each
/// sample's random stream, keyed by (seed, epoch, position, repeat) (docs/design.md invariant 1).
pub struct Worker {
    seed: u64,
    decoder: Decoder,
    region: RegionDecoder,
    decoded: RgbImage,
    transformer: Transformer,
    /// Each sample's random stream and crop, drawn before the decode (reused).
    draws: Vec<(ChaCha8Rng, CropBox)>,
    /// Stage times so far.
    pub times: StageTimes,
}

impl Worker {
    /// A worker for `transform` with augmentation streams keyed by `seed`.
    pub fn new(transform: TransformSpec, seed: u64) -> Worker {
        Worker {
            seed,
            decoder: Decoder::default(),
            region: RegionDecoder::default(),
            decoded: RgbImage::default(),
            transformer: Transformer::new(transform),
            draws: Vec::new(),
            times: StageTimes::default(),
        }
    }

    /// Whether its decoder gives Pillow's bytes ([`Decoder::with_pillow_exact`]).
    pub fn set_pillow_exact(&mut self, on: bool) {
        self.decoder = self.decoder.with_pillow_exact(on);
    }

    /// Decodes `jpeg` once and writes one augmented image per sample of `samples` into the
    /// matching slice of `outs` (each `transform.image_bytes()` long).
    ///
    /// A train transform draws every sample's crop first (it needs only the image's size), then
    /// decodes only the region their union covers when the record has restart markers.
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
        if let TransformSpec::Train(t) = self.transformer.transform {
            let t0 = Instant::now();
            if let Some((width, height)) = self.region.open(jpeg)? {
                if u64::from(width) * u64::from(height) > self.decoder.max_pixels() {
                    return Err(DecodeError::TooLarge { width, height });
                }
                return self.produce_cropped(&t, jpeg, (width, height), epoch, samples, outs, t0);
            }
            self.times.decode += t0.elapsed();
        }
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
        let pixels = u64::from(self.decoded.width) * u64::from(self.decoded.height);
        self.times.pixels_decoded += pixels;
        self.times.pixels_in_records += pixels;
        for (sample, out) in samples.iter().zip(outs.iter_mut()) {
            let mut rng = self.stream(epoch, sample);
            self.transformer
                .apply(&self.decoded, &mut rng, out, &mut self.times);
        }
        Ok(())
    }

    /// [`Worker::produce`] for a record that can be decoded by regions.
    #[allow(clippy::too_many_arguments)]
    fn produce_cropped(
        &mut self,
        t: &TrainTransform,
        jpeg: &[u8],
        (width, height): (u32, u32),
        epoch: u32,
        samples: &[Sample],
        outs: &mut [&mut [u8]],
        t0: Instant,
    ) -> Result<(), DecodeError> {
        self.draws.clear();
        // The union of the crops: [left, right) × [top, bottom).
        let (mut left, mut top, mut right, mut bottom) = (u32::MAX, u32::MAX, 0, 0);
        for sample in samples.iter().take(outs.len()) {
            let mut rng = self.stream(epoch, sample);
            let crop = CropBox::sample(&mut rng, width, height, &t.rrc());
            left = left.min(crop.left);
            top = top.min(crop.top);
            right = right.max(crop.left + crop.width);
            bottom = bottom.max(crop.top + crop.height);
            self.draws.push((rng, crop));
        }
        if self.draws.is_empty() {
            return Ok(());
        }
        let placed = self.region.decode(
            &self.decoder,
            jpeg,
            left..right,
            top..bottom,
            &mut self.decoded,
        )?;
        self.times.decode += t0.elapsed();
        self.times.decoded += 1;
        self.times.decoded_by_region += u64::from(!placed.whole);
        self.times.pixels_decoded += u64::from(self.decoded.width) * u64::from(self.decoded.height);
        self.times.pixels_in_records += u64::from(width) * u64::from(height);
        let origin = (placed.x, placed.y);
        for ((rng, crop), out) in self.draws.iter_mut().zip(outs.iter_mut()) {
            self.transformer
                .train(t, &self.decoded, origin, *crop, rng, out, &mut self.times);
        }
        Ok(())
    }

    /// The random stream of `sample` in `epoch`.
    fn stream(&self, epoch: u32, sample: &Sample) -> ChaCha8Rng {
        stream(
            self.seed,
            Purpose::Augment,
            epoch,
            sample.position,
            sample.repeat,
        )
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

    /// The samples a record gives, for `transform`, packed as `jpeg`.
    fn outputs(transform: &str, jpeg: &[u8], repeats: u32) -> Result<Vec<u8>, DecodeError> {
        let t: TransformSpec = transform.parse().unwrap();
        let n = t.image_bytes();
        let mut buf = vec![0u8; repeats as usize * n];
        let samples: Vec<Sample> = (0..repeats)
            .map(|repeat| Sample {
                index: 0,
                position: 11,
                repeat,
            })
            .collect();
        let mut outs: Vec<&mut [u8]> = buf.chunks_exact_mut(n).collect();
        let mut w = Worker::new(t, 5);
        w.produce(jpeg, 3, &samples, &mut outs)?;
        if t.is_train() {
            assert_eq!(
                w.times.decoded_by_region > 0,
                jpeg != synth_plain().as_slice()
            );
        }
        Ok(buf)
    }

    fn synth_plain() -> Vec<u8> {
        synth::class_image(3, 1, 257, 190)
    }

    #[test]
    fn a_restart_marked_record_gives_the_samples_its_source_gives() {
        let plain = synth_plain();
        let marked = shard_tool::restart::add_restart_markers(&plain, 1).unwrap();
        for (preset, repeats) in [("a3", 1), ("a1", 3), ("eval", 1)] {
            assert_eq!(
                outputs(preset, &marked, repeats),
                outputs(preset, &plain, repeats),
                "{preset}"
            );
        }
    }

    #[test]
    fn damaged_restart_markers_are_a_corrupt_record() {
        let marked = shard_tool::restart::add_restart_markers(&synth_plain(), 1).unwrap();
        let mut iv = shard_tool::restart::Intervals::default();
        iv.parse(&marked).unwrap();
        let rst = (0..marked.len() - 1)
            .find(|&i| marked[i] == 0xFF && (0xD0..=0xD7).contains(&marked[i + 1]))
            .unwrap();
        let mut misnumbered = marked.clone();
        misnumbered[rst + 1] = 0xD5;
        let mut missing = marked.clone();
        missing[rst..rst + 2].copy_from_slice(&[0x55, 0x55]);
        let past_the_end = &marked[..marked.len() - 40];
        for (what, jpeg) in [
            ("misnumbered", misnumbered.as_slice()),
            ("missing", &missing),
            ("past the end", past_the_end),
        ] {
            assert_eq!(outputs("a3", jpeg, 1), Err(DecodeError::Corrupt), "{what}");
        }
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
