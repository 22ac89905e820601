/*!
Filling a batch in-process: samples → records → augmented uint8 images, on several threads.

Consecutive samples of the same record (the copies of repeated augmentation on one rank) form
a group that one worker decodes once. Groups are handed to threads dynamically, but every
sample's output place and random stream are fixed by its position in the batch, so the bytes
of a batch do not depend on the thread count (DESIGN.md invariant 1).

A record that does not decode (only possible if a shard changed after `verify`) is counted and
replaced by the next record of the split that decodes, deterministically (invariant 3).
*/

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use shard_tool::Split;

use crate::pipeline::{StageTimes, Transform, Worker};
use crate::sampler::Sample;

/// The output images and label slots of one group of samples.
type GroupOutputs<'a> = (Vec<&'a mut [u8]>, Vec<&'a mut u32>);

/// What filling one batch found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FillReport {
    /// Records that failed to decode and were replaced, as (split index, replacement index).
    pub replaced: Vec<(u32, u32)>,
}

/// Makes batches with a fixed set of per-thread workers.
pub struct BatchMaker {
    transform: Transform,
    workers: Vec<Worker>,
}

impl BatchMaker {
    /// `threads` workers for `transform`, augmentation streams keyed by `seed`.
    pub fn new(transform: Transform, seed: u64, threads: usize) -> BatchMaker {
        BatchMaker {
            transform,
            workers: (0..threads.max(1))
                .map(|_| Worker::new(transform, seed))
                .collect(),
        }
    }

    /// The transform.
    pub fn transform(&self) -> &Transform {
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
        let n = self.transform.image_bytes();
        let mut outs: Vec<&mut [u8]> = images.chunks_exact_mut(n).take(samples.len()).collect();
        let mut label_slots: Vec<&mut u32> = labels.iter_mut().take(samples.len()).collect();
        assert_eq!(outs.len(), samples.len(), "images buffer too short");
        assert_eq!(label_slots.len(), samples.len(), "labels buffer too short");
        // Groups of consecutive samples of one record.
        let mut groups = Vec::new();
        let mut start = 0;
        while start < samples.len() {
            let mut end = start + 1;
            while end < samples.len() && samples[end].index == samples[start].index {
                end += 1;
            }
            groups.push(start..end);
            start = end;
        }
        // Each group's outputs, taken by whichever thread claims the group.
        let mut slots: Vec<Mutex<Option<GroupOutputs<'_>>>> = Vec::new();
        for range in groups.iter().rev() {
            let o: Vec<&mut [u8]> = outs.drain(range.clone()).collect();
            let l: Vec<&mut u32> = label_slots.drain(range.clone()).collect();
            slots.push(Mutex::new(Some((o, l))));
        }
        slots.reverse();
        let next = AtomicUsize::new(0);
        let replaced = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for worker in &mut self.workers {
                let (groups, slots, next, replaced) = (&groups, &slots, &next, &replaced);
                scope.spawn(move || {
                    loop {
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        let Some(range) = groups.get(g) else { return };
                        let taken = slots[g].lock().ok().and_then(|mut s| s.take());
                        let Some((mut outs, labels)) = taken else {
                            continue;
                        };
                        let group = &samples[range.clone()];
                        let used = produce_with_fallback(worker, split, epoch, group, &mut outs);
                        for l in labels {
                            *l = split.label(u64::from(used)).unwrap_or(shard_tool::NO_LABEL);
                        }
                        if used != group[0].index
                            && let Ok(mut r) = replaced.lock()
                        {
                            r.push((group[0].index, used));
                        }
                    }
                });
            }
        });
        let mut replaced = replaced.into_inner().unwrap_or_default();
        replaced.sort_unstable();
        FillReport { replaced }
    }
}

/// Produces `group` from its record, or from the next record that decodes; returns the record
/// index used. Gives up (leaving the outputs as they were) after trying every record.
fn produce_with_fallback(
    worker: &mut Worker,
    split: &Split,
    epoch: u32,
    group: &[Sample],
    outs: &mut [&mut [u8]],
) -> u32 {
    let len = split.len().max(1);
    let first = u64::from(group[0].index);
    for k in 0..len {
        let index = (first + k) % len;
        let Ok(record) = split.get(index) else {
            continue;
        };
        if worker.produce(record.data, epoch, group, outs).is_ok() {
            return index as u32;
        }
    }
    group[0].index
}

#[cfg(test)]
mod tests {
    use shard_tool::synth::{self, TreeSpec};
    use shard_tool::{Dataset, PackOptions, pack};

    use super::*;
    use crate::sampler::{Sampler, SamplerConfig};

    fn dataset() -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        let spec = TreeSpec {
            classes: 4,
            train_per_class: 70,
            val_per_class: 0,
            size: 48,
            odd_files: false,
        };
        synth::write_tree(&dir.path().join("src"), &spec).unwrap();
        let mut o = PackOptions::new(dir.path().join("out"));
        o.threads = 2;
        pack(&dir.path().join("src"), &o, &mut |_| {}).unwrap();
        // SAFETY: the dataset is not modified while open.
        let ds = unsafe { Dataset::open(&dir.path().join("out")) }.unwrap();
        (dir, ds)
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
        let t = Transform::named("a1").unwrap();
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
    fn starting_at_step_n_gives_the_batches_of_an_uninterrupted_run() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let sampler = repeat_sampler(split, 7);
        let samples = sampler.epoch(1);
        let t = Transform::named("a1").unwrap();
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
