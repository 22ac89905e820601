/*!
The batch stream: the one loop that turns a job into batches, whoever reads them.

positions → sampler → plan → fill → report: a [`BatchStream`] holds the plans of one job's
ranks (one for a single trainer, several where the daemon fills a job group together), keeps
each rank's sample order for the epoch at hand, fills any set of (rank, position) batches into
the caller's buffers with one [`BatchMaker`] call per epoch, writes each batch's record ids, and
reports the records replaced after decode errors with the stage times of the fill.

Where the bytes go is the caller's business: the daemon's producer passes ring slots, `loader
bench` and the trainer's in-process feed pass their own buffers. None of them draws a sample or
walks an epoch itself, so a change to what makes batch (epoch, step) is made here once.
*/

use shard_tool::Split;

use crate::batches::batch::{BatchMaker, BatchOut, Gate};
use crate::batches::pipeline::StageTimes;
use crate::request::job::{JobPlan, Position};
use crate::request::transform::TransformSpec;
use crate::sampling::sampler::Sample;

/// Why a set of plans cannot share a stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// No plan at all.
    #[error("a batch stream needs at least one rank's plan")]
    NoPlans,
    /// The plans are not the ranks of one job (their transforms, seeds, splits, batch sizes
    /// or epoch lengths differ), so filling them together would not give each rank the
    /// batches it would get alone.
    #[error(
        "rank {rank}'s job differs from rank {first}'s in {what}; only the ranks of one job share a stream"
    )]
    Mismatch {
        /// The first plan's rank.
        first: u32,
        /// The rank that differs.
        rank: u32,
        /// The field that differs.
        what: &'static str,
    },
}

/// One batch to fill: which rank's batch at which position, and where its bytes go.
pub struct Target<'a> {
    /// Index of the rank's plan in the stream (not its rank number).
    pub rank: usize,
    /// The batch.
    pub at: Position,
    /// Room for a full batch of images, NHWC uint8.
    pub images: &'a mut [u8],
    /// Room for a full batch of labels.
    pub labels: &'a mut [u32],
    /// Room for the batch's record ids, when the reader wants them (the daemon's slots).
    pub ids: Option<&'a mut [u32]>,
}

/// What filling one [`Target`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    /// Samples in the batch (the last eval batch of an epoch may be short; 0 past the end).
    pub count: usize,
    /// Records that did not decode, with the records that replaced them, as (wanted, used).
    pub replaced: Vec<(u32, u32)>,
    /// Records for which no record of the split decodes: the batch was not made.
    pub unfilled: Vec<u32>,
    /// The fill was stopped before this batch was complete.
    pub stopped: bool,
}

/// What one [`BatchStream::fill`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filled {
    /// One entry per target, in the targets' order.
    pub batches: Vec<Written>,
    /// Stage times of this fill alone.
    pub times: StageTimes,
}

impl Filled {
    /// Every replacement of the fill, for a warning.
    pub fn replaced(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.batches.iter().flat_map(|b| b.replaced.iter().copied())
    }

    /// Whether a batch could not be made (no record of the split decodes).
    pub fn failed(&self) -> bool {
        self.batches.iter().any(|b| !b.unfilled.is_empty())
    }

    /// Whether the fill was stopped before every batch was complete.
    pub fn stopped(&self) -> bool {
        self.batches.iter().any(|b| b.stopped)
    }
}

/// One rank's plan and the sample order of the epoch it last filled.
struct Rank {
    plan: JobPlan,
    epoch: Option<u32>,
    samples: Vec<Sample>,
}

impl Rank {
    /// The samples of batch `at`, drawing the epoch's order if it is not the cached one.
    fn batch(&mut self, at: Position) -> &[Sample] {
        if self.epoch != Some(at.epoch) {
            self.samples = self.plan.sampler().epoch(at.epoch);
            self.epoch = Some(at.epoch);
        }
        self.plan.batch(&self.samples, at.step)
    }
}

/// The ranks of one job and the workers that fill their batches.
pub struct BatchStream {
    ranks: Vec<Rank>,
    maker: BatchMaker,
}

impl BatchStream {
    /// A stream over `plans` (the ranks of one job, in any order) with `threads` workers.
    ///
    /// # Errors
    /// [`StreamError`] if `plans` is empty or its plans are not ranks of one job.
    pub fn new(plans: Vec<JobPlan>, threads: usize) -> Result<BatchStream, StreamError> {
        let first = plans.first().ok_or(StreamError::NoPlans)?;
        let (a, spe) = (first.spec(), first.steps_per_epoch());
        for p in &plans[1..] {
            let b = p.spec();
            let what = if b.transform != a.transform {
                "transform"
            } else if b.seed != a.seed {
                "seed"
            } else if b.split != a.split {
                "split"
            } else if b.batch_size != a.batch_size {
                "batch size"
            } else if b.world_size != a.world_size || p.steps_per_epoch() != spe {
                "world size"
            } else {
                continue;
            };
            return Err(StreamError::Mismatch {
                first: a.rank,
                rank: b.rank,
                what,
            });
        }
        let maker = BatchMaker::new(a.transform, a.seed, threads);
        Ok(BatchStream {
            ranks: plans
                .into_iter()
                .map(|plan| Rank {
                    plan,
                    epoch: None,
                    samples: Vec::new(),
                })
                .collect(),
            maker,
        })
    }

    /// A stream of one rank.
    pub fn single(plan: JobPlan, threads: usize) -> BatchStream {
        let maker = BatchMaker::new(plan.transform(), plan.spec().seed, threads);
        BatchStream {
            ranks: vec![Rank {
                plan,
                epoch: None,
                samples: Vec::new(),
            }],
            maker,
        }
    }

    /// The plan of the stream's `rank`-th rank.
    pub fn plan(&self, rank: usize) -> Option<&JobPlan> {
        self.ranks.get(rank).map(|r| &r.plan)
    }

    /// The transform every rank uses.
    pub fn transform(&self) -> TransformSpec {
        *self.maker.transform()
    }

    /// Whether records' checksums are checked before decoding (see
    /// [`BatchMaker::set_check_crc`]).
    pub fn set_check_crc(&mut self, on: bool) {
        self.maker.set_check_crc(on);
    }

    /// Whether records decode to Pillow's bytes (see [`BatchMaker::set_pillow_exact`]).
    pub fn set_pillow_exact(&mut self, on: bool) {
        self.maker.set_pillow_exact(on);
    }

    /// Stage times of every fill so far.
    pub fn times(&self) -> StageTimes {
        self.maker.times()
    }

    /// The position after `at` (the ranks of a job step through epochs together).
    pub fn next(&self, at: Position) -> Position {
        self.ranks[0].plan.next(at)
    }

    /// Up to `max` positions from `at` on, within `at`'s epoch: the steps worth filling in
    /// one call (see [`crate::batches::batch::STEPS_PER_FILL`]).
    pub fn run(&self, at: Position, max: usize) -> Vec<Position> {
        let mut run = vec![at];
        while run.len() < max {
            let next = self.next(run[run.len() - 1]);
            if next.epoch != at.epoch {
                break;
            }
            run.push(next);
        }
        run
    }

    /// The samples of the `rank`-th rank's batch at `at` (empty for an unknown rank or past
    /// the epoch's end).
    pub fn samples(&mut self, rank: usize, at: Position) -> &[Sample] {
        match self.ranks.get_mut(rank) {
            Some(r) => r.batch(at),
            None => &[],
        }
    }

    /// Fills `targets`: every copy of a record among those of one epoch comes from one decode,
    /// and each batch's bytes are those it would get alone (docs/design.md invariant 1). Targets of
    /// several epochs are filled one epoch after the other.
    ///
    /// # Panics
    /// If a target's buffers are shorter than its batch.
    pub fn fill(&mut self, split: &Split, targets: Vec<Target<'_>>) -> Filled {
        self.fill_or_stop(split, targets, &|| false)
    }

    /// [`BatchStream::fill`], each image made when `gate` lets it, given up as soon as it says
    /// stop (the daemon's client has gone); see [`BatchMaker::fill_many_or_stop`].
    pub fn fill_or_stop(
        &mut self,
        split: &Split,
        targets: Vec<Target<'_>>,
        gate: &dyn Gate,
    ) -> Filled {
        let before = self.maker.times();
        let mut batches = vec![Written::default(); targets.len()];
        let mut epochs: Vec<u32> = targets.iter().map(|t| t.at.epoch).collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut pending: Vec<(usize, Target<'_>)> = targets.into_iter().enumerate().collect();
        for epoch in epochs {
            let (now, later): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(_, t)| t.at.epoch == epoch);
            pending = later;
            // Draw the epoch's orders first, then borrow them while the workers fill.
            for (_, t) in &now {
                if let Some(r) = self.ranks.get_mut(t.rank) {
                    r.batch(t.at);
                }
            }
            let ranks = &self.ranks;
            let samples_of = |t: &Target<'_>| -> &[Sample] {
                ranks
                    .get(t.rank)
                    .map_or(&[][..], |r| r.plan.batch(&r.samples, t.at.step))
            };
            let mut ids = Vec::with_capacity(now.len());
            let mut outs = Vec::with_capacity(now.len());
            for (i, t) in now {
                let samples = samples_of(&t);
                ids.push((i, samples, t.ids));
                outs.push(BatchOut {
                    samples,
                    images: t.images,
                    labels: t.labels,
                });
            }
            let reports = self.maker.fill_many_or_stop(split, epoch, outs, gate);
            for ((i, samples, out), report) in ids.into_iter().zip(reports) {
                if let Some(out) = out {
                    for (id, s) in out.iter_mut().zip(samples) {
                        *id = report
                            .replaced
                            .iter()
                            .find(|(wanted, _)| *wanted == s.index)
                            .map_or(s.index, |&(_, used)| used);
                    }
                }
                batches[i] = Written {
                    count: samples.len(),
                    replaced: report.replaced,
                    unfilled: report.unfilled,
                    stopped: report.stopped,
                };
            }
        }
        Filled {
            batches,
            times: self.maker.times() - before,
        }
    }
}

#[cfg(test)]
mod tests {
    use shard_tool::Dataset;

    use super::*;
    use crate::request::job::JobSpec;

    fn dataset() -> (tempfile::TempDir, Dataset) {
        crate::testutil::opened(3, 90, 40)
    }

    fn a1_at(size: u32) -> TransformSpec {
        let Some(TransformSpec::Train(t)) = TransformSpec::preset("a1") else {
            panic!("a1 is a train transform")
        };
        TransformSpec::Train(crate::request::transform::TrainTransform {
            img_size: size,
            ..t
        })
    }

    fn plan(world: u32, rank: u32, len: u64) -> JobPlan {
        JobSpec {
            world_size: world,
            rank,
            ..JobSpec::single("train", a1_at(32), 9, 8)
        }
        .plan(len)
        .unwrap()
    }

    /// A batch's images, labels and ids.
    type Bytes = (Vec<u8>, Vec<u32>, Vec<u32>);

    /// Bytes, labels and ids of each target, filled by `stream`.
    fn fill(
        stream: &mut BatchStream,
        split: &Split,
        at: &[(usize, Position)],
    ) -> (Vec<Bytes>, Filled) {
        let n = stream.transform().image_bytes();
        let mut bufs: Vec<Bytes> = at
            .iter()
            .map(|_| (vec![0; 8 * n], vec![0; 8], vec![0; 8]))
            .collect();
        let targets = bufs
            .iter_mut()
            .zip(at)
            .map(|((images, labels, ids), &(rank, at))| Target {
                rank,
                at,
                images,
                labels,
                ids: Some(ids),
            })
            .collect();
        let filled = stream.fill(split, targets);
        (bufs, filled)
    }

    #[test]
    fn a_run_stays_in_its_epoch_and_positions_roll_over() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let stream = BatchStream::single(plan(1, 0, split.len()), 1);
        // 270 records, 3 repeats: timm keeps 256 per epoch, 32 batches of 8.
        let last = Position { epoch: 0, step: 30 };
        assert_eq!(stream.run(last, 4), [last, Position { epoch: 0, step: 31 }]);
        assert_eq!(
            stream.next(Position { epoch: 0, step: 31 }),
            Position { epoch: 1, step: 0 }
        );
        assert_eq!(stream.run(Position::default(), 4).len(), 4);
    }

    #[test]
    fn batches_filled_together_across_ranks_and_epochs_equal_those_filled_alone() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let plans: Vec<JobPlan> = (0..3).map(|r| plan(3, r, split.len())).collect();
        let wanted = [
            (0, Position { epoch: 0, step: 9 }),
            (1, Position { epoch: 1, step: 0 }),
            (2, Position { epoch: 0, step: 9 }),
            (0, Position { epoch: 1, step: 0 }),
        ];
        let mut together = BatchStream::new(plans.clone(), 2).unwrap();
        let (got, filled) = fill(&mut together, split, &wanted);
        assert_eq!(filled.batches.len(), 4);
        assert!(filled.batches.iter().all(|b| b.count == 8));
        assert_eq!(filled.times.samples, 32);
        for (k, &(rank, at)) in wanted.iter().enumerate() {
            let mut alone = BatchStream::single(plans[rank].clone(), 1);
            let (one, _) = fill(&mut alone, split, &[(0, at)]);
            assert!(one[0] == got[k], "target {k} differs from its batch alone");
            let ids: Vec<u32> = alone.samples(0, at).iter().map(|s| s.index).collect();
            assert_eq!(got[k].2, ids, "target {k}: ids are the batch's records");
            for (label, id) in got[k].1.iter().zip(&ids) {
                assert_eq!(*label, split.label(u64::from(*id)).unwrap());
            }
        }
    }

    #[test]
    fn a_split_where_nothing_decodes_reports_the_batch_unfilled() {
        let dir = tempfile::tempdir().unwrap();
        let shards = crate::testutil::packed(dir.path(), 3, 90, 40);
        crate::testutil::break_every_record(&shards);
        // SAFETY: the dataset is not modified while open.
        let ds = unsafe { Dataset::open(&shards) }.unwrap();
        let split = ds.split("train").unwrap();
        let mut stream = BatchStream::single(plan(1, 0, split.len()), 2);
        let (got, filled) = fill(&mut stream, split, &[(0, Position::default())]);
        assert!(filled.failed());
        // A1 repeats each image 3 times: 8 samples of 3 records.
        assert_eq!(filled.batches[0].unfilled.len(), 3);
        // No label claims an image that was not written.
        assert!(got[0].1.iter().all(|&l| l == shard_tool::NO_LABEL));
    }

    #[test]
    fn plans_of_different_jobs_are_refused() {
        let (_dir, ds) = dataset();
        let split = ds.split("train").unwrap();
        let other_seed = JobSpec {
            seed: 10,
            world_size: 3,
            rank: 1,
            ..JobSpec::single("train", a1_at(32), 9, 8)
        }
        .plan(split.len())
        .unwrap();
        assert_eq!(
            BatchStream::new(vec![plan(3, 0, split.len()), other_seed], 1).err(),
            Some(StreamError::Mismatch {
                first: 0,
                rank: 1,
                what: "seed"
            })
        );
        assert_eq!(
            BatchStream::new(Vec::new(), 1).err(),
            Some(StreamError::NoPlans)
        );
    }
}
