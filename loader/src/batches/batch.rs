/*!
Filling a batch in-process: samples → records → augmented uint8 images, on several threads.

The samples of one record (the copies of repeated augmentation, on one rank or, filled
together, on the ranks of one job) form a group that one worker decodes once. Groups are handed
to threads dynamically, but every sample's output place and random stream are fixed by the
sample, so the bytes of a batch depend neither on the thread count nor on which batches were
filled together (docs/design.md invariant 1).

A record whose bytes fail their CRC-32C, or that does not decode (only possible if a shard
changed after `verify`), is counted and replaced by the next record of the split that decodes, deterministically (invariant 3). If no
record of the split decodes, the batch is reported unfilled: never stale pixels under real
labels.
*/

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use shard_tool::Split;

use crate::batches::pipeline::{StageTimes, Worker};
use crate::request::transform::TransformSpec;
use crate::sampling::sampler::Sample;

/// Most steps of one epoch worth filling in one [`BatchMaker::fill_many`] call when their
/// slots are free. Together, the workers cross a batch end without waiting for its last image
/// (one thread preempted near a batch's end otherwise idles the others), and the copies of an
/// image that straddle two batches come from one decode; more steps would only delay the
/// first of them.
pub const STEPS_PER_FILL: usize = 4;

/// What filling one batch found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FillReport {
    /// Records that failed to decode and were replaced, as (split index, replacement index).
    pub replaced: Vec<(u32, u32)>,
    /// Records for which no record of the split decodes: their images were not written
    /// (the batch is not usable, and the caller must say so).
    pub unfilled: Vec<u32>,
    /// The fill was stopped before the batch was complete (see [`BatchMaker::fill_many_or_stop`]).
    pub stopped: bool,
}

/// What a fill's workers ask before each image: whether to go on and, where several fills share
/// the cores, when. The daemon's gate waits for the client's fair share of the decode turns
/// (`server::share`) and says stop when the client has gone; a plain closure `|| stop` is a
/// gate that never waits.
pub trait Gate: Sync {
    /// Blocks until the worker may make its next image: `true`, and the worker holds a turn
    /// until it calls [`Gate::leave`] or [`Gate::pass`]; `false`, and the fill stops (no turn
    /// is held).
    fn enter(&self) -> bool;
    /// The worker has made the image it entered for.
    fn leave(&self) {}
    /// The worker has made its image and wants to make another: it keeps its turn unless
    /// someone with a smaller share waits for one, and then waits as [`Gate::enter`] does
    /// (a worker that let go of its turn and asked again would lose it, every image, to
    /// whoever waited at that instant). Returns as `enter`.
    fn pass(&self) -> bool {
        self.leave();
        self.enter()
    }
}

impl<F: Fn() -> bool + Sync> Gate for F {
    fn enter(&self) -> bool {
        !self()
    }
}

/// A worker's turn of a [`Gate`], left when dropped (a panicking worker gives it back too).
struct Turn<'g> {
    gate: &'g dyn Gate,
    held: bool,
}

impl Turn<'_> {
    /// Takes a turn, or passes on the one held; `false`: stop, and none is held.
    fn next(&mut self) -> bool {
        self.held = if self.held {
            self.gate.pass()
        } else {
            self.gate.enter()
        };
        self.held
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.held {
            self.gate.leave();
        }
    }
}

/// Makes batches with a fixed set of per-thread workers.
pub struct BatchMaker {
    transform: TransformSpec,
    workers: Vec<Worker>,
    check_crc: bool,
}

impl BatchMaker {
    /// `threads` workers for `transform`, augmentation streams keyed by `seed`.
    pub fn new(transform: TransformSpec, seed: u64, threads: usize) -> BatchMaker {
        BatchMaker {
            transform,
            workers: (0..threads.max(1))
                .map(|_| Worker::new(transform, seed))
                .collect(),
            check_crc: true,
        }
    }

    /// Whether each record's CRC-32C is checked before it is decoded (the default): a changed
    /// byte of a JPEG often still decodes, into other pixels, so without the check it would
    /// train silently. Off only to measure what the check costs (`loader bench --no-crc`).
    pub fn set_check_crc(&mut self, on: bool) {
        self.check_crc = on;
    }

    /// Whether the workers decode to Pillow's bytes (see
    /// [`crate::image::decode::Decoder::with_pillow_exact`]); off by default.
    pub fn set_pillow_exact(&mut self, on: bool) {
        for w in &mut self.workers {
            w.set_pillow_exact(on);
        }
    }

    /// The transform.
    pub fn transform(&self) -> &TransformSpec {
        &self.transform
    }

    /// Stage times summed over all workers so far.
    pub fn times(&self) -> StageTimes {
        let mut t = StageTimes::default();
        for w in &self.workers {
            t += w.times;
        }
        t
    }

    /// Writes the images of `samples` (epoch `epoch`) into `images` (`samples.len()` images of
    /// `transform.image_bytes()`, NHWC) and their labels into `labels`.
    ///
    /// # Panics
    /// If `images` or `labels` are shorter than the batch needs, or the split is empty.
    pub fn fill(
        &mut self,
        split: &Split,
        epoch: u32,
        samples: &[Sample],
        images: &mut [u8],
        labels: &mut [u32],
    ) -> FillReport {
        let batch = BatchOut {
            samples,
            images,
            labels,
        };
        self.fill_many(split, epoch, vec![batch])
            .pop()
            .unwrap_or_default()
    }

    /// Writes several batches of epoch `epoch` at once: the ranks of one job at one step.
    /// Every copy of a record among all of them comes from one decode, so timm's repeated
    /// augmentation, which sends the copies of an image to neighbouring ranks, decodes each
    /// image once for the whole job. Returns one report per batch.
    ///
    /// # Panics
    /// As [`BatchMaker::fill`], for any of the batches.
    pub fn fill_many(
        &mut self,
        split: &Split,
        epoch: u32,
        batches: Vec<BatchOut<'_>>,
    ) -> Vec<FillReport> {
        self.fill_many_or_stop(split, epoch, batches, &|| false)
    }

    /// [`BatchMaker::fill_many`], each image made when `gate` lets it and given up as soon as
    /// it says stop: every worker asks before each image, so a daemon whose client has gone
    /// stops within one image's time instead of finishing batches nobody will read, and the
    /// fills of several clients share the cores image by image. The reports of a stopped fill
    /// say so.
    // One function of ~120 lines on purpose: the grouping hands each worker disjoint `&mut`
    // borrows of the callers' buffers, and those borrows, the scoped threads and the reports
    // they fill must live in one scope; split apart, each piece would take half a dozen of
    // them as arguments. It is the loader's hot loop, covered by the digest tests.
    pub fn fill_many_or_stop(
        &mut self,
        split: &Split,
        epoch: u32,
        batches: Vec<BatchOut<'_>>,
        gate: &dyn Gate,
    ) -> Vec<FillReport> {
        let n = self.transform.image_bytes();
        let count = batches.len();
        // Every sample with its record's group, groups numbered in order of first appearance.
        let total = batches.iter().map(|b| b.samples.len()).sum();
        let mut entries: Vec<Entry<'_>> = Vec::with_capacity(total);
        let mut group_of: HashMap<u32, usize> = HashMap::with_capacity(total);
        for (b, batch) in batches.into_iter().enumerate() {
            let outs = batch.images.chunks_exact_mut(n).take(batch.samples.len());
            assert_eq!(outs.len(), batch.samples.len(), "images buffer too short");
            assert!(
                batch.labels.len() >= batch.samples.len(),
                "labels buffer too short"
            );
            for ((sample, out), label) in batch.samples.iter().zip(outs).zip(batch.labels) {
                let groups = group_of.len();
                let group = *group_of.entry(sample.index).or_insert(groups);
                entries.push(Entry {
                    group,
                    batch: b,
                    sample: *sample,
                    out,
                    label,
                });
            }
        }
        // Make each group contiguous (a stable sort keeps the order within it), then hand
        // each one's outputs out as one unit: a few allocations per call, none per image.
        entries.sort_by_key(|e| e.group);
        let samples: Vec<Sample> = entries.iter().map(|e| e.sample).collect();
        let batch_of: Vec<usize> = entries.iter().map(|e| e.batch).collect();
        let mut starts: Vec<usize> = Vec::with_capacity(group_of.len() + 1);
        for (i, e) in entries.iter().enumerate() {
            if i == 0 || entries[i - 1].group != e.group {
                starts.push(i);
            }
        }
        starts.push(entries.len());
        let (mut outs, mut labels): (Vec<&mut [u8]>, Vec<&mut u32>) =
            entries.into_iter().map(|e| (e.out, e.label)).unzip();
        let mut slots: Vec<Mutex<Option<GroupOutputs<'_, '_>>>> = Vec::with_capacity(starts.len());
        let (mut outs_left, mut labels_left) = (&mut outs[..], &mut labels[..]);
        for w in starts.windows(2) {
            let len = w[1] - w[0];
            let (o, o_rest) = std::mem::take(&mut outs_left).split_at_mut(len);
            let (l, l_rest) = std::mem::take(&mut labels_left).split_at_mut(len);
            (outs_left, labels_left) = (o_rest, l_rest);
            slots.push(Mutex::new(Some((w[0]..w[1], o, l))));
        }
        let next = AtomicUsize::new(0);
        let replaced = Mutex::new(vec![Vec::new(); count]);
        let unfilled = Mutex::new(vec![Vec::new(); count]);
        let check_crc = self.check_crc;
        let stopped = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for worker in &mut self.workers {
                let (slots, next, replaced, unfilled) = (&slots, &next, &replaced, &unfilled);
                let stopped = &stopped;
                let (samples, batch_of) = (&samples, &batch_of);
                scope.spawn(move || {
                    let mut turn = Turn { gate, held: false };
                    loop {
                        if stopped.load(Ordering::Relaxed) || !turn.next() {
                            stopped.store(true, Ordering::Relaxed);
                            return;
                        }
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = slots.get(g) else { return };
                        let Some((range, outs, labels)) =
                            slot.lock().ok().and_then(|mut s| s.take())
                        else {
                            continue;
                        };
                        let group = &samples[range.clone()];
                        let wanted = group[0].index;
                        let Some(used) =
                            produce_with_fallback(worker, split, epoch, group, outs, check_crc)
                        else {
                            for l in labels.iter_mut() {
                                **l = shard_tool::NO_LABEL;
                            }
                            if let Ok(mut u) = unfilled.lock() {
                                for &b in &batch_of[range] {
                                    u[b].push(wanted);
                                }
                            }
                            continue;
                        };
                        let label = split.label(u64::from(used)).unwrap_or(shard_tool::NO_LABEL);
                        for l in labels.iter_mut() {
                            **l = label;
                        }
                        if used != wanted
                            && let Ok(mut r) = replaced.lock()
                        {
                            for &b in &batch_of[range] {
                                r[b].push((wanted, used));
                            }
                        }
                    }
                });
            }
        });
        replaced
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .zip(unfilled.into_inner().unwrap_or_default())
            .map(|(r, u)| FillReport {
                replaced: sorted_unique(r),
                unfilled: sorted_unique(u),
                stopped: stopped.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// `v` sorted, each value once.
fn sorted_unique<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v.dedup();
    v
}

/// One batch's part of [`BatchMaker::fill_many`].
pub struct BatchOut<'a> {
    /// Its samples.
    pub samples: &'a [Sample],
    /// Room for `samples.len()` images of the transform's size, NHWC.
    pub images: &'a mut [u8],
    /// Room for `samples.len()` labels.
    pub labels: &'a mut [u32],
}

/// One sample of a [`BatchMaker::fill_many`] call, with its record's group and its outputs.
struct Entry<'a> {
    group: usize,
    batch: usize,
    sample: Sample,
    out: &'a mut [u8],
    label: &'a mut u32,
}

/// A group's place among the sorted samples, and its image and label outputs.
type GroupOutputs<'s, 'a> = (
    std::ops::Range<usize>,
    &'s mut [&'a mut [u8]],
    &'s mut [&'a mut u32],
);

/// Produces `group` from its record, or from the next record that decodes (and, with
/// `check_crc`, matches its checksum); returns the record index used, or `None` (the outputs
/// left as they were) when no record of the split does.
fn produce_with_fallback(
    worker: &mut Worker,
    split: &Split,
    epoch: u32,
    group: &[Sample],
    outs: &mut [&mut [u8]],
    check_crc: bool,
) -> Option<u32> {
    let len = split.len().max(1);
    let first = u64::from(group[0].index);
    for k in 0..len {
        let index = (first + k) % len;
        let Ok(record) = split.get(index) else {
            continue;
        };
        if check_crc && !record.checksum_ok() {
            continue;
        }
        if worker.produce(record.data, epoch, group, outs).is_ok() {
            return Some(index as u32);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use shard_tool::Dataset;

    use super::*;
    use crate::sampling::sampler::{Sampler, SamplerConfig};

    fn dataset() -> (tempfile::TempDir, Dataset) {
        crate::testutil::opened(4, 70, 48)
    }

    /// One rank, 3 repeats, shuffled.
    fn repeat_sampler(split: &Split, seed: u64) -> Sampler {
        Sampler::new(SamplerConfig {
            dataset_len: split.len() as u32,
            world_size: 1,
            rank: 0,
            aug_repeats: 3,
            shuffle: true,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn batches_are_identical_on_one_and_three_threads_and_repeats_decode_once() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let sampler = repeat_sampler(split, 42);
        let samples = sampler.epoch(2);
        let t = TransformSpec::preset("a1").unwrap();
        let batch = &samples[..24];
        let run = |threads| {
            let mut m = BatchMaker::new(t, 42, threads);
            let mut images = vec![0u8; 24 * t.image_bytes()];
            let mut labels = vec![0u32; 24];
            let report = m.fill(split, 2, batch, &mut images, &mut labels);
            (images, labels, report, m.times())
        };
        let (a, la, ra, times) = run(1);
        let (b, lb, rb, _) = run(3);
        assert!(a == b, "batches differ between 1 and 3 threads");
        assert_eq!(la, lb);
        assert!(ra.replaced.is_empty() && rb.replaced.is_empty());
        assert_eq!(times.samples, 24);
        assert_eq!(
            times.decoded, 8,
            "24 samples = 8 images x 3 repeats, 8 decodes"
        );
        for (s, l) in batch.iter().zip(&la) {
            assert_eq!(*l, split.label(u64::from(s.index)).unwrap());
        }
    }

    #[test]
    fn the_ranks_of_a_job_filled_together_decode_each_image_once_and_get_the_same_bytes() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let t = TransformSpec::preset("a1").unwrap();
        let (world, b, n) = (3u32, 12usize, t.image_bytes());
        let ranks: Vec<Vec<Sample>> = (0..world)
            .map(|rank| {
                Sampler::new(SamplerConfig {
                    dataset_len: split.len() as u32,
                    world_size: world,
                    rank,
                    aug_repeats: 3,
                    shuffle: true,
                    seed: 5,
                })
                .unwrap()
                .epoch(3)[b..2 * b]
                    .to_vec()
            })
            .collect();
        // timm's sampler strides the 3 copies of an image over ranks 0, 1, 2: none repeats
        // within a rank's batch, every one across the ranks.
        let unique: std::collections::HashSet<u32> =
            ranks.iter().flatten().map(|s| s.index).collect();
        assert_eq!(unique.len(), b);

        let mut alone = BatchMaker::new(t, 5, 2);
        let separate: Vec<(Vec<u8>, Vec<u32>)> = ranks
            .iter()
            .map(|samples| {
                let mut images = vec![0u8; b * n];
                let mut labels = vec![0u32; b];
                alone.fill(split, 3, samples, &mut images, &mut labels);
                (images, labels)
            })
            .collect();
        assert_eq!(alone.times().decoded, 3 * b as u64, "one decode per sample");

        let mut together = BatchMaker::new(t, 5, 2);
        let mut images = vec![vec![0u8; b * n]; world as usize];
        let mut labels = vec![vec![0u32; b]; world as usize];
        let outs = ranks
            .iter()
            .zip(images.iter_mut().zip(labels.iter_mut()))
            .map(|(samples, (images, labels))| BatchOut {
                samples,
                images,
                labels,
            })
            .collect();
        let reports = together.fill_many(split, 3, outs);
        assert_eq!(reports.len(), world as usize);
        assert_eq!(together.times().decoded, b as u64, "one decode per image");
        for (rank, (want_images, want_labels)) in separate.iter().enumerate() {
            assert!(images[rank] == *want_images, "rank {rank}: pixels differ");
            assert_eq!(labels[rank], *want_labels, "rank {rank}");
        }
    }

    #[test]
    fn a_record_whose_bytes_changed_is_replaced_not_decoded_into_other_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let shards = crate::testutil::packed(dir.path(), 4, 70, 48);
        let (index, at) = {
            // SAFETY: dropped before the file changes.
            let ds = unsafe { Dataset::open(&shards) }.unwrap();
            let split = ds.split("train").unwrap();
            let e = *split.entry(5).unwrap();
            assert_eq!(e.shard.get(), 0);
            // A byte of the entropy-coded data, well inside the JPEG.
            (
                5u32,
                (e.offset.get() + u64::from(e.len.get()) - 40) as usize,
            )
        };
        let path = shards.join("train-00000.rsb");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        // SAFETY: not modified from here on.
        let ds = unsafe { Dataset::open(&shards) }.unwrap();
        let split = ds.split("train").unwrap();
        let t = TransformSpec::preset("eval").unwrap();
        let sample = Sample {
            index,
            position: 0,
            repeat: 0,
        };
        let mut images = vec![0u8; t.image_bytes()];
        let mut labels = vec![0u32; 1];
        let report = BatchMaker::new(t, 1, 1).fill(split, 0, &[sample], &mut images, &mut labels);
        assert_eq!(report.replaced, [(5, 6)], "the damaged record is replaced");
        assert_eq!(labels[0], split.label(6).unwrap());
    }

    #[test]
    fn a_fill_told_to_stop_gives_up_within_an_image() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let samples = repeat_sampler(split, 3).epoch(0);
        let t = TransformSpec::preset("a1").unwrap();
        let mut m = BatchMaker::new(t, 3, 2);
        let mut images = vec![0u8; 24 * t.image_bytes()];
        let mut labels = vec![0u32; 24];
        let asked = AtomicUsize::new(0);
        // The client "leaves" after 3 questions.
        let stop = || asked.fetch_add(1, Ordering::Relaxed) >= 3;
        let out = BatchOut {
            samples: &samples[..24],
            images: &mut images,
            labels: &mut labels,
        };
        let reports = m.fill_many_or_stop(split, 0, vec![out], &stop);
        assert!(reports[0].stopped);
        // 24 samples are 8 images; at most the 3 asked about (and one per worker racing) ran.
        assert!(m.times().decoded <= 4, "{} decodes", m.times().decoded);
    }

    #[test]
    fn starting_at_step_n_gives_the_batches_of_an_uninterrupted_run() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let sampler = repeat_sampler(split, 7);
        let samples = sampler.epoch(1);
        let t = TransformSpec::preset("a1").unwrap();
        let (b, n) = (12, t.image_bytes());
        let batch = |m: &mut BatchMaker, step: usize| {
            let mut images = vec![0u8; b * n];
            let mut labels = vec![0u32; b];
            m.fill(
                split,
                1,
                &samples[step * b..(step + 1) * b],
                &mut images,
                &mut labels,
            );
            (images, labels)
        };
        let mut uninterrupted = BatchMaker::new(t, 7, 2);
        let from_zero: Vec<_> = (0..6).map(|step| batch(&mut uninterrupted, step)).collect();
        // A fresh loader (after a restart) asked for step 4 onwards.
        let mut restarted = BatchMaker::new(t, 7, 1);
        for (step, expected) in from_zero.iter().enumerate().skip(4) {
            assert!(
                batch(&mut restarted, step) == *expected,
                "step {step} differs"
            );
        }
    }
}
