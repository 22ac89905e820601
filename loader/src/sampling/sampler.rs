/*!
Which records each rank sees in an epoch, with timm's semantics (docs/recipe.md §2.7).

- `aug_repeats > 0`: timm's `RepeatAugSampler`. The epoch's permutation is repeated element-wise
  (`[a, a, a, b, b, b, ...]`), padded to a multiple of the world size with its own beginning,
  strided by rank (so the copies of an image land on different ranks), and cut to
  `num_selected = floor((N // 256 * 256) / world_size)` samples per rank: an epoch is about N
  samples in all, not 3N.
- `aug_repeats == 0`: torch's `DistributedSampler` (`ceil(N / world_size)` per rank, padded
  with the permutation's beginning), which A3 uses.

Every rank gets the same number of samples. The permutation comes from the counter-based
stream `(seed, Permutation, epoch)`, so every rank computes the same one without talking to the
others (timm seeds torch with the epoch for the same reason); it is not torch's `randperm`
sequence, only its distribution.

Each [`Sample`] carries the key of its augmentation stream: `position` and `repeat` are taken
from the sample's place in the padded, interleaved list *before* striding, so they do not
depend on the rank that serves it, and every copy (padding included) gets draws of its own.
That is what lets one loader decode an image once and produce all of its copies.
*/

use rand::seq::SliceRandom;

use crate::sampling::rng::{Purpose, stream};

/// timm's `selected_round`: the per-epoch sample count is rounded down to a multiple of this.
pub const SELECTED_ROUND: u64 = 256;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Records in the split.
    pub dataset_len: u32,
    /// Ranks in the job.
    pub world_size: u32,
    /// This rank.
    pub rank: u32,
    /// timm's `--aug-repeats` (3 for A1/A2, 0 for A3).
    pub aug_repeats: u32,
    /// Shuffle each epoch (train) or keep record order (eval).
    pub shuffle: bool,
    /// timm's `--seed`.
    pub seed: u64,
}

/// Invalid sampler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// `world_size` is 0 or `rank` is not below it.
    #[error("rank {rank} is not within a world of {world_size}")]
    Rank {
        /// Rank given.
        rank: u32,
        /// World size given.
        world_size: u32,
    },
    /// The split is empty.
    #[error("the split has no records to sample")]
    Empty,
    /// With repeated augmentation, the split is smaller than `selected_round` (256).
    #[error(
        "repeated augmentation needs at least {SELECTED_ROUND} records per epoch, the split has {0}"
    )]
    TooSmall(u32),
}

/// One sample of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sample {
    /// Record index in the split.
    pub index: u32,
    /// Key of its augmentation stream: place of the image in the (padded) epoch order.
    pub position: u32,
    /// Key of its augmentation stream: which copy of the image this is.
    pub repeat: u32,
}

/// A validated sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    config: SamplerConfig,
}

impl Sampler {
    /// Checks `config`.
    ///
    /// # Errors
    /// [`SamplerError`] for an impossible rank, an empty split, or a split too small for
    /// repeated augmentation.
    pub fn new(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(SamplerError::Rank {
                rank: config.rank,
                world_size: config.world_size,
            });
        }
        if config.dataset_len == 0 {
            return Err(SamplerError::Empty);
        }
        if config.aug_repeats > 0 && u64::from(config.dataset_len) < SELECTED_ROUND {
            return Err(SamplerError::TooSmall(config.dataset_len));
        }
        Ok(Sampler { config })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    fn repeats(&self) -> u64 {
        u64::from(self.config.aug_repeats.max(1))
    }

    /// Length of the padded, interleaved list all ranks stride through.
    fn total(&self) -> u64 {
        let n = u64::from(self.config.dataset_len) * self.repeats();
        let r = u64::from(self.config.world_size);
        n.div_ceil(r) * r
    }

    /// Samples every rank gets per epoch.
    pub fn samples_per_rank(&self) -> u64 {
        let n = u64::from(self.config.dataset_len);
        let r = u64::from(self.config.world_size);
        if self.config.aug_repeats > 0 {
            (n / SELECTED_ROUND * SELECTED_ROUND) / r
        } else {
            n.div_ceil(r)
        }
    }

    /// Full batches per epoch with `batch_size` samples per rank (the train loader drops the
    /// last, partial batch, as timm's does).
    pub fn batches_per_epoch(&self, batch_size: u64) -> u64 {
        self.samples_per_rank() / batch_size.max(1)
    }

    /// The epoch's permutation of record indices (identity without shuffling).
    pub fn permutation(&self, epoch: u32) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.config.dataset_len).collect();
        if self.config.shuffle {
            let mut rng = stream(self.config.seed, Purpose::Permutation, epoch, 0, 0);
            order.shuffle(&mut rng);
        }
        order
    }

    /// This rank's samples of `epoch`, in order.
    pub fn epoch(&self, epoch: u32) -> Vec<Sample> {
        let order = self.permutation(epoch);
        let (repeats, n) = (self.repeats(), order.len() as u64 * self.repeats());
        let r = u64::from(self.config.world_size);
        (0..self.samples_per_rank())
            .map(|i| {
                // Place in the padded list; padding repeats the list's beginning.
                let k = u64::from(self.config.rank) + i * r;
                debug_assert!(k < self.total());
                let source = k % n;
                Sample {
                    index: order[(source / repeats) as usize],
                    position: (k / repeats) as u32,
                    repeat: (k % repeats) as u32,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn sampler(n: u32, world: u32, rank: u32, repeats: u32) -> Sampler {
        Sampler::new(SamplerConfig {
            dataset_len: n,
            world_size: world,
            rank,
            aug_repeats: repeats,
            shuffle: true,
            seed: 42,
        })
        .unwrap()
    }

    #[test]
    fn imagenet_counts_match_timm() {
        // docs/recipe.md §2.8: 625 steps per epoch at a global batch of 2048 on 4 or 8 ranks.
        let n = 1_281_167;
        for world in [4u32, 8] {
            let ra = sampler(n, world, 0, 3);
            assert_eq!(ra.samples_per_rank(), 1_281_024 / u64::from(world));
            assert_eq!(ra.batches_per_epoch(2048 / u64::from(world)), 625);
            let plain = sampler(n, world, 0, 0);
            assert_eq!(
                plain.samples_per_rank(),
                u64::from(n).div_ceil(u64::from(world))
            );
            assert_eq!(plain.batches_per_epoch(2048 / u64::from(world)), 625);
        }
    }

    #[test]
    fn every_rank_gets_the_same_count_and_copies_land_on_different_ranks() {
        let (n, world) = (1000, 4);
        let epochs: Vec<Vec<Sample>> = (0..world)
            .map(|r| sampler(n, world, r, 3).epoch(5))
            .collect();
        let expected = (1000 / 256 * 256) / 4;
        assert!(epochs.iter().all(|e| e.len() == expected));
        // Copies of one image: at most one per rank among the selected samples.
        let mut ranks_of: HashMap<u32, Vec<u32>> = HashMap::new();
        for (rank, e) in epochs.iter().enumerate() {
            for s in e {
                ranks_of.entry(s.index).or_default().push(rank as u32);
            }
        }
        for (image, ranks) in &ranks_of {
            let distinct: HashSet<_> = ranks.iter().collect();
            assert_eq!(
                distinct.len(),
                ranks.len(),
                "image {image} twice on one rank"
            );
            assert!(ranks.len() <= 3);
        }
        // Augmentation keys are unique across the whole job.
        let keys: HashSet<(u32, u32)> = epochs
            .iter()
            .flatten()
            .map(|s| (s.position, s.repeat))
            .collect();
        assert_eq!(keys.len(), expected * world as usize);
    }

    #[test]
    fn one_rank_gets_the_copies_back_to_back() {
        let e = sampler(300, 1, 0, 3).epoch(0);
        assert_eq!(e.len(), 256);
        for chunk in e.chunks_exact(3) {
            assert!(chunk.iter().all(|s| s.index == chunk[0].index));
            let repeats: Vec<u32> = chunk.iter().map(|s| s.repeat).collect();
            assert_eq!(repeats, [0, 1, 2]);
        }
    }

    #[test]
    fn plain_sampler_covers_every_record_once_plus_padding() {
        let (n, world) = (10, 4);
        let mut seen = Vec::new();
        for r in 0..world {
            let e = sampler(n, world, r, 0).epoch(1);
            assert_eq!(e.len(), 3);
            seen.extend(e.iter().map(|s| s.index));
        }
        let distinct: HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 10);
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn epochs_differ_and_repeat_exactly() {
        let s = sampler(512, 2, 1, 3);
        assert_eq!(s.epoch(3), s.epoch(3));
        assert_ne!(s.epoch(3), s.epoch(4));
        let eval = Sampler::new(SamplerConfig {
            shuffle: false,
            ..*s.config()
        })
        .unwrap();
        assert_eq!(eval.permutation(9), (0..512).collect::<Vec<u32>>());
    }

    #[test]
    fn first_record_of_an_epoch_is_uniform() {
        // 4,000 epochs over 8 records: each record first 500 times, within 20 %.
        let s = sampler(8, 1, 0, 0);
        let mut counts = [0u32; 8];
        for epoch in 0..4000 {
            counts[s.permutation(epoch)[0] as usize] += 1;
        }
        for c in counts {
            assert!((400..=600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn invalid_settings_are_refused() {
        let ok = *sampler(300, 2, 0, 3).config();
        let bad_rank = SamplerConfig { rank: 2, ..ok };
        assert!(matches!(
            Sampler::new(bad_rank),
            Err(SamplerError::Rank { .. })
        ));
        let small = SamplerConfig {
            dataset_len: 100,
            ..ok
        };
        assert_eq!(Sampler::new(small), Err(SamplerError::TooSmall(100)));
        let empty = SamplerConfig {
            dataset_len: 0,
            aug_repeats: 0,
            ..ok
        };
        assert_eq!(Sampler::new(empty), Err(SamplerError::Empty));
    }
}
