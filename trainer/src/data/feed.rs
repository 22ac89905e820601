//! Batches from the loader core, in process: a producer thread runs the loader's
//! [`BatchStream`] (the recipe's sampler, repeated augmentation for A1/A2, `threads` workers)
//! and hands uint8 NHWC batches over a bounded channel, two ahead of the trainer. Buffers come back
//! through a second channel, so the steady state allocates nothing.
//!
//! `trainer bench --shards` uses it to time the step against the loader core alone; `trainer
//! train` reads through the loader's rings instead (the daemon, or one started in process).

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use loader::batches::stream::{BatchStream, Target};
use loader::request::job::{JobError, JobPlan, JobSpec, Position};
use loader::request::transform::TransformSpec;
use shard_tool::Dataset;

/// A batch as the loader wrote it.
pub(crate) struct FedBatch {
    /// `[n, size, size, 3]` uint8 pixels.
    pub pixels: Vec<u8>,
    /// One class per image.
    pub labels: Vec<u32>,
    /// Global step.
    pub step: u64,
}

/// Errors of the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The shards could not be opened or read.
    #[error("{path}: {message}")]
    Shards {
        /// The dataset directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Fewer samples in an epoch than one batch.
    #[error("{path}: an epoch of {samples} samples is shorter than one batch of {batch}")]
    TooSmall {
        /// The dataset directory.
        path: PathBuf,
        /// Samples per epoch.
        samples: usize,
        /// Batch size.
        batch: usize,
    },
}

/// The running producer.
pub(crate) struct Feed {
    batches: Receiver<Result<FedBatch, FeedError>>,
    recycle: Sender<FedBatch>,
    producer: Option<JoinHandle<()>>,
    /// Square side of the images.
    pub img_size: usize,
}

impl Feed {
    /// Starts producing `steps` batches of `batch` images of split `train` from `shards`.
    pub fn spawn(
        shards: &Path,
        transform: TransformSpec,
        batch: usize,
        threads: usize,
        seed: u64,
        steps: u64,
    ) -> Result<Feed, FeedError> {
        let shards_err = |message: String| FeedError::Shards {
            path: shards.to_path_buf(),
            message,
        };
        // SAFETY: a packed dataset is read-only; nothing rewrites its files while we train.
        let dataset = unsafe { Dataset::open(shards) }.map_err(|e| shards_err(e.to_string()))?;
        let len = dataset
            .split("train")
            .map_err(|e| shards_err(e.to_string()))?
            .len();
        let job = JobSpec::single(
            "train",
            transform,
            seed,
            u32::try_from(batch).map_err(|_| shards_err(format!("batch {batch} too large")))?,
        );
        let plan = job.plan(len).map_err(|e| match e {
            JobError::NoBatch { samples, .. } => FeedError::TooSmall {
                path: shards.to_path_buf(),
                samples: samples as usize,
                batch,
            },
            e => shards_err(e.to_string()),
        })?;
        let (tx, batches) = bounded(2);
        let (recycle, returned) = bounded::<FedBatch>(4);
        let producer = Producer {
            dataset,
            plan,
            threads,
            steps,
            batch,
            image_bytes: transform.image_bytes(),
            path: shards.to_path_buf(),
        };
        let producer = std::thread::spawn(move || producer.run(&tx, &returned));
        Ok(Feed {
            batches,
            recycle,
            producer: Some(producer),
            img_size: transform.img_size() as usize,
        })
    }

    /// The next batch, waiting for it if the loader is behind; `None` after the last.
    pub fn next(&self) -> Option<Result<FedBatch, FeedError>> {
        self.batches.recv().ok()
    }

    /// Hands a batch's buffers back for reuse.
    pub(crate) fn recycle(&self, batch: FedBatch) {
        // A full recycle queue only means a fresh allocation later.
        let _ = self.recycle.try_send(batch);
    }
}

/// What the producer thread fills batches from.
struct Producer {
    dataset: Dataset,
    plan: JobPlan,
    threads: usize,
    steps: u64,
    batch: usize,
    image_bytes: usize,
    path: std::path::PathBuf,
}

impl Producer {
    /// Fills `steps` batches into buffers taken back from `returned` (or new ones) and sends
    /// them on `tx`, until the last, a split that does not decode, or a closed channel.
    fn run(self, tx: &Sender<Result<FedBatch, FeedError>>, returned: &Receiver<FedBatch>) {
        let Ok(split) = self.dataset.split("train") else {
            return;
        };
        // The loader's one batch loop; this thread only moves buffers.
        let mut stream = BatchStream::single(self.plan, self.threads);
        let mut at = Position::default();
        for step in 0..self.steps {
            let mut out = returned.try_recv().unwrap_or_else(|_| FedBatch {
                pixels: vec![0; self.batch * self.image_bytes],
                labels: vec![0; self.batch],
                step,
            });
            out.step = step;
            let target = Target {
                rank: 0,
                at,
                images: &mut out.pixels,
                labels: &mut out.labels,
                ids: None,
            };
            let filled = stream.fill(split, vec![target]);
            if filled.failed() {
                let _ = tx.send(Err(FeedError::Shards {
                    path: self.path.clone(),
                    message: "no record of split train decodes; run `shard-tool verify`".into(),
                }));
                return;
            }
            let replaced: Vec<(u32, u32)> = filled.replaced().collect();
            if !replaced.is_empty() {
                eprintln!(
                    "warning: {}: records replaced after decode errors: {replaced:?}",
                    self.path.display()
                );
            }
            if tx.send(Ok(out)).is_err() {
                return;
            }
            at = stream.next(at);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Closing our ends stops the producer at its next send.
        let (_, dead) = bounded(0);
        self.batches = dead;
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a1() -> TransformSpec {
        TransformSpec::preset("a1").expect("a preset")
    }

    #[test]
    fn feeds_deterministic_a1_batches_from_packed_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let shards = dir.path().join("shards");
        // 270 images: timm's RepeatAugSampler keeps floor(N / 256) * 256 of them per epoch.
        let spec = shard_tool::synth::TreeSpec {
            classes: 3,
            train_per_class: 90,
            val_per_class: 0,
            size: 48,
            ..shard_tool::synth::TreeSpec::default()
        };
        shard_tool::synth::write_tree(&src, &spec).expect("synth");
        let options = shard_tool::PackOptions::new(&shards);
        shard_tool::pack(&src, &options, &mut |_| {}).expect("pack");
        let run = || {
            let feed = Feed::spawn(&shards, a1(), 4, 2, 7, 3).expect("feed");
            assert_eq!(feed.img_size, 224);
            let mut got = Vec::new();
            while let Some(b) = feed.next() {
                let b = b.expect("batch");
                assert_eq!(b.pixels.len(), 4 * 224 * 224 * 3);
                assert!(b.labels.iter().all(|&l| l < 3));
                got.push((
                    b.step,
                    b.labels.clone(),
                    b.pixels.iter().map(|&p| u64::from(p)).sum::<u64>(),
                ));
                feed.recycle(b);
            }
            got
        };
        let a = run();
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(a, run(), "same seed, same batches");
    }

    #[test]
    fn missing_shards_name_the_directory() {
        let err = Feed::spawn(Path::new("/nonexistent/shards"), a1(), 4, 1, 0, 1)
            .err()
            .expect("error");
        assert!(err.to_string().contains("/nonexistent/shards"), "{err}");
    }
}
