//! The recipe's ranks on fewer devices: `world_size` ranks run one after the other on one
//! device ("virtual ranks"), with timm's DDP semantics (docs/recipe.md §2).
//!
//! Per step, rank r takes its own loader batch (rank r of the job, so the copies that
//! repeated augmentation makes land on different ranks), draws its own Mixup/CutMix with
//! `seed + r` and its own drop-path masks, and normalises with its own batch statistics while
//! updating its own BN running statistics (`RankStats`). The ranks' gradients are averaged
//! (each loss divided by `world_size` before its backward pass, the gradients summed) and LAMB
//! takes one step with the mean, as DDP's all-reduce gives every rank. At each epoch end the
//! running statistics are averaged over the ranks (timm's `--dist-bn reduce`, its default)
//! before evaluation. One rank is exactly the plain step.
//!
//! Several devices in one process ([`crate::ranks::replicas`]) each run their share of the ranks with
//! `VirtualRanks::grads` and sum the devices' sums.

use std::path::Path;

use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::Network;
use crate::ranks::processes::{ProcessError, Processes, bytes_f32, f32_bytes};
use crate::step::{HostBatch, StepError, TrainStep};

/// Errors of the per-rank statistics file.
#[derive(Debug, thiserror::Error)]
pub enum RanksError {
    /// Reading or writing the file failed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file does not fit this model or rank count.
    #[error(
        "{path} holds BN statistics for {found} (this run has {expected}); resume with the \
         recipe and world size the run started with"
    )]
    Mismatch {
        /// The file.
        path: String,
        /// What the file holds.
        found: String,
        /// What the run needs.
        expected: String,
    },
}

/// The BN running statistics of every rank: `[rank][layer] = (running_mean, running_var)`.
#[derive(Clone)]
pub(crate) struct RankStats {
    pub(crate) ranks: Vec<Vec<(Tensor<1>, Tensor<1>)>>,
}

/// The model's running statistics as they stand (settled).
fn model_stats(model: &Network) -> Vec<(Tensor<1>, Tensor<1>)> {
    model
        .batch_norms()
        .iter()
        .map(|bn| (bn.running_mean.value_sync(), bn.running_var.value_sync()))
        .collect()
}

impl RankStats {
    /// `world_size` copies of the model's statistics (every rank starts from the same).
    pub fn new(model: &Network, world_size: usize) -> RankStats {
        let stats = model_stats(model);
        RankStats {
            ranks: vec![stats; world_size.max(1)],
        }
    }

    /// Ranks held.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// Puts rank `rank`'s statistics into the model (its next training forward updates them).
    pub(crate) fn swap_in(&self, model: &Network, rank: usize) {
        if let Some(stats) = self.ranks.get(rank) {
            for (bn, (mean, var)) in model.batch_norms().iter().zip(stats) {
                bn.running_mean.update(mean.clone());
                bn.running_var.update(var.clone());
                // Settle now, so that the forward reads this rank's values.
                let _ = (bn.running_mean.value_sync(), bn.running_var.value_sync());
            }
        }
    }

    /// Takes the model's statistics back as rank `rank`'s (after its forward).
    pub(crate) fn swap_out(&mut self, model: &Network, rank: usize) {
        if let Some(slot) = self.ranks.get_mut(rank) {
            *slot = model_stats(model);
        }
    }

    /// timm's `--dist-bn reduce`: every rank's statistics become the mean over ranks, and so
    /// do the model's (what evaluation and the next epoch use).
    pub fn reduce(&mut self, model: &Network) {
        let n = self.ranks.len();
        if n <= 1 {
            return;
        }
        let layers = self.ranks[0].len();
        let mean: Vec<(Tensor<1>, Tensor<1>)> = (0..layers)
            .map(|l| {
                let sum = |pick: fn(&(Tensor<1>, Tensor<1>)) -> Tensor<1>| {
                    self.ranks
                        .iter()
                        .map(|r| pick(&r[l]))
                        .reduce(|a, b| a + b)
                        .map(|t| t.div_scalar(n as f64))
                };
                match (sum(|s| s.0.clone()), sum(|s| s.1.clone())) {
                    (Some(m), Some(v)) => (m, v),
                    _ => self.ranks[0][l].clone(),
                }
            })
            .collect();
        for r in &mut self.ranks {
            r.clone_from(&mean);
        }
        self.swap_in(model, 0);
    }

    /// timm's `--dist-bn reduce` over the ranks of every process: this process's ranks'
    /// statistics are summed, the sums added over the processes, divided by `world` (the ranks
    /// of every process), and the mean becomes every rank's here and the model's.
    ///
    /// # Errors
    /// [`ProcessError`] of the sum.
    pub(crate) fn reduce_across(
        &mut self,
        model: &Network,
        processes: &dyn Processes,
        world: usize,
    ) -> Result<(), ProcessError> {
        let Some(first) = self.ranks.first() else {
            return Ok(());
        };
        let device = first.first().map(|(m, _)| m.device());
        let sizes: Vec<usize> = first.iter().map(|(m, _)| m.dims()[0]).collect();
        // Per layer: the sum of the means, then of the variances, over this process's ranks.
        let mut flat = Vec::new();
        for l in 0..sizes.len() {
            for var in [false, true] {
                let mut sum = vec![0f32; sizes[l]];
                for rank in &self.ranks {
                    let (m, v) = &rank[l];
                    let values = if var { v } else { m }.to_data().convert::<f32>();
                    for (a, v) in sum.iter_mut().zip(values.iter::<f32>()) {
                        *a += v;
                    }
                }
                flat.extend(sum);
            }
        }
        let flat = processes.all_reduce_sum(flat)?;
        let Some(device) = device else {
            return Ok(());
        };
        let n = world.max(1) as f32;
        let mut at = 0;
        let mean: Vec<(Tensor<1>, Tensor<1>)> = sizes
            .iter()
            .map(|&size| {
                let mut take = || {
                    let values: Vec<f32> = flat[at..at + size].iter().map(|v| v / n).collect();
                    at += size;
                    Tensor::<1>::from_data(TensorData::new(values, [size]), &device)
                };
                (take(), take())
            })
            .collect();
        for r in &mut self.ranks {
            r.clone_from(&mean);
        }
        self.swap_in(model, 0);
        Ok(())
    }

    /// Every rank of every process, in rank order (process 0's ranks first), on `device`:
    /// what a checkpoint holds, whatever the process count.
    ///
    /// # Errors
    /// [`ProcessError`] of the gather.
    pub(crate) fn gather(
        &self,
        processes: &dyn Processes,
        device: &Device,
    ) -> Result<RankStats, ProcessError> {
        if processes.count() <= 1 {
            return Ok(self.clone());
        }
        let sizes: Vec<usize> = self
            .ranks
            .first()
            .map(|r| r.iter().map(|(m, _)| m.dims()[0]).collect())
            .unwrap_or_default();
        let mut mine = Vec::new();
        for rank in &self.ranks {
            for (m, v) in rank {
                for t in [m, v] {
                    mine.extend(t.to_data().convert::<f32>().iter::<f32>());
                }
            }
        }
        let per_rank: usize = 2 * sizes.iter().sum::<usize>();
        let mut ranks = Vec::new();
        for bytes in processes.all_gather(&f32_bytes(&mine))? {
            let values = bytes_f32(&bytes);
            for rank in values.chunks_exact(per_rank.max(1)) {
                let mut at = 0;
                let mut layer = |size: usize| {
                    let t = Tensor::<1>::from_data(
                        TensorData::new(rank[at..at + size].to_vec(), [size]),
                        device,
                    );
                    at += size;
                    t
                };
                ranks.push(sizes.iter().map(|&n| (layer(n), layer(n))).collect());
            }
        }
        Ok(RankStats { ranks })
    }

    /// Only ranks `range` of these (a process's share of a checkpoint's ranks).
    pub(crate) fn keep(mut self, range: std::ops::Range<usize>) -> RankStats {
        self.ranks.truncate(range.end);
        self.ranks.drain(..range.start.min(self.ranks.len()));
        self
    }

    /// Writes every rank's statistics to `path` (safetensors: `rank{r}.bn{l}.mean`/`.var`).
    pub(crate) fn save(&self, path: &Path) -> Result<(), RanksError> {
        let err = |message: String| RanksError::File {
            path: path.display().to_string(),
            message,
        };
        let mut tensors: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (r, stats) in self.ranks.iter().enumerate() {
            for (l, (mean, var)) in stats.iter().enumerate() {
                for (what, t) in [("mean", mean), ("var", var)] {
                    let values = t
                        .to_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| err(format!("{e:?}")))?;
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tensors.push((format!("rank{r}.bn{l}.{what}"), bytes, values.len()));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(name, bytes, n)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*n], bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| err(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|e| err(e.to_string()))
    }

    /// Reads the statistics [`RankStats::save`] wrote, for `world_size` ranks of `model`.
    pub fn load(
        path: &Path,
        model: &Network,
        world_size: usize,
        device: &Device,
    ) -> Result<RankStats, RanksError> {
        let name = path.display().to_string();
        let err = |message: String| RanksError::File {
            path: name.clone(),
            message,
        };
        // BN statistics of every rank: kilobytes to a few megabytes.
        let bytes = crate::model::safetensors_file::read_checked(
            path,
            shard_tool::user_file::GIB,
            "a ranks file",
        )
        .map_err(err)?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let shapes: Vec<usize> = model
            .batch_norms()
            .iter()
            .map(|bn| bn.running_mean.value().dims()[0])
            .collect();
        let expected = 2 * shapes.len() * world_size;
        if file.len() != expected {
            return Err(RanksError::Mismatch {
                path: name.clone(),
                found: format!("{} tensors", file.len()),
                expected: format!(
                    "{expected} ({world_size} ranks × {} BN layers × 2)",
                    shapes.len()
                ),
            });
        }
        let read = |key: String, n: usize| -> Result<Tensor<1>, RanksError> {
            let view = file.tensor(&key).map_err(|e| err(format!("{key}: {e}")))?;
            if view.shape() != [n] || view.dtype() != safetensors::Dtype::F32 {
                return Err(RanksError::Mismatch {
                    path: name.clone(),
                    found: format!("{key} of shape {:?}", view.shape()),
                    expected: format!("{n} f32 values"),
                });
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(Tensor::from_data(TensorData::new(values, [n]), device))
        };
        let ranks = (0..world_size)
            .map(|r| {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(l, &n)| {
                        Ok((
                            read(format!("rank{r}.bn{l}.mean"), n)?,
                            read(format!("rank{r}.bn{l}.var"), n)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, RanksError>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RankStats { ranks })
    }
}

/// The ranks of a run on one device.
pub(crate) struct VirtualRanks {
    /// Their BN running statistics.
    pub stats: RankStats,
}

impl VirtualRanks {
    /// `world_size` ranks starting from `model`'s statistics.
    pub fn new(model: &Network, world_size: usize) -> VirtualRanks {
        VirtualRanks {
            stats: RankStats::new(model, world_size),
        }
    }

    /// Ranks run per step.
    pub fn world_size(&self) -> usize {
        self.stats.world_size()
    }

    /// One optimizer step over every rank's batch (`batches[r]` is rank r's): each rank's
    /// gradients with its own BN statistics and mixing draws, their mean, one LAMB step.
    /// Returns each rank's loss.
    ///
    /// # Errors
    /// [`StepError`] of any rank; the model is then left as the failed rank found it.
    pub fn step(
        &mut self,
        step: &mut TrainStep,
        batches: &[HostBatch<'_>],
        lr: f64,
        device: &Device,
    ) -> Result<Vec<Tensor<1>>, StepError> {
        let world = self.world_size();
        if batches.len() != world {
            return Err(StepError::Ranks {
                batches: batches.len(),
                ranks: world,
            });
        }
        if world == 1 {
            // The plain step, untouched: one rank is bit for bit a run without ranks.
            let batch = &batches[0];
            return Ok(vec![step.run(batch, lr, device)?]);
        }
        let (losses, grads) = self.grads(step, batches, 0, world, device)?;
        step.apply(lr, grads)?;
        Ok(losses)
    }

    /// The gradients of this device's ranks, summed, each rank's loss divided by `world` (the
    /// ranks of every device): ranks `first .. first + batches.len()` of the run, `batches[i]`
    /// being rank `first + i`'s. Summed over every device, they are the mean over all ranks.
    /// Returns each rank's loss and the sum.
    ///
    /// # Errors
    /// [`StepError`] of any rank.
    pub fn grads(
        &mut self,
        step: &TrainStep,
        batches: &[HostBatch<'_>],
        first: usize,
        world: usize,
        device: &Device,
    ) -> Result<(Vec<Tensor<1>>, burn::optim::GradientsParams), StepError> {
        let mut sum = GradientsAccumulator::<Network>::new();
        let mut losses = Vec::with_capacity(batches.len());
        for (i, batch) in batches.iter().enumerate() {
            let rank = first + i;
            let model = step.model().ok_or(StepError::Poisoned)?;
            self.stats.swap_in(model, i);
            let (loss, grads) = step.grads(batch, step.seed + rank as u64, world, device)?;
            let model = step.model().ok_or(StepError::Poisoned)?;
            self.stats.swap_out(model, i);
            sum.accumulate(model, grads);
            losses.push(loss);
        }
        Ok((losses, sum.grads()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
    use burn::optim::GradientsParams;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::data::upload::{Pixels, Uploader};
    use crate::device::{DeviceKind, under_test};
    use crate::model::family::Family;
    use crate::model::resnet::ResNetConfig;
    use crate::optim::lamb::{LambOptions, TimmLamb};
    use crate::ranks::processes::Alone;
    use crate::recipe::TrainConfig;
    use std::sync::Arc;

    const WORLD: usize = 4;
    const BATCH: usize = 8;
    const SIDE: usize = 16;
    const STEPS: u64 = 5;

    /// The smoke recipe: Mixup/CutMix, BCE, LAMB, as the ranks will train it.
    fn recipe() -> TrainConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
        TrainConfig::load(&path, &crate::recipe::Overrides::none())
            .expect("smoke recipe")
            .config
    }

    /// The batches of every step and rank: `[step][rank] = (pixels, labels)`.
    fn batches(classes: u32) -> Vec<Vec<(Vec<u8>, Vec<u32>)>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        (0..STEPS)
            .map(|_| {
                (0..WORLD)
                    .map(|_| {
                        let pixels = (0..BATCH * SIDE * SIDE * 3).map(|_| rng.random()).collect();
                        let labels = (0..BATCH).map(|_| rng.random_range(0..classes)).collect();
                        (pixels, labels)
                    })
                    .collect()
            })
            .collect()
    }

    fn host<'a>(b: &'a (Vec<u8>, Vec<u32>), step: u64) -> HostBatch<'a> {
        HostBatch {
            pixels: Pixels::Host(&b.0),
            shape: [BATCH, SIDE, SIDE],
            labels: &b.1,
            step,
        }
    }

    /// A copy of `model` with the same parameter ids and its own BN statistics.
    fn deep_copy(model: &Network) -> Network {
        model.valid().train()
    }

    /// Every trainable parameter of `model`, by id.
    fn trainable(model: &Network) -> HashMap<ParamId, TensorData> {
        struct Collect(HashMap<ParamId, TensorData>, Vec<ParamId>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if self.1.contains(&p.id) {
                    self.0.insert(p.id, p.val().to_data());
                }
            }
        }
        let mut ids = Vec::new();
        model.for_each_trainable(|p| ids.push(p.id));
        let mut c = Collect(HashMap::new(), ids);
        model.visit(&mut c);
        c.0
    }

    /// `model` with the trainable parameters of `from` (its BN statistics untouched).
    fn take_params(
        model: Network,
        from: &HashMap<ParamId, TensorData>,
        device: &Device,
    ) -> Network {
        struct Set<'a>(&'a HashMap<ParamId, TensorData>, Device);
        impl ModuleMapper for Set<'_> {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                match self.0.get(&p.id) {
                    Some(data) => Param::initialized(
                        p.id,
                        Tensor::from_data(data.clone(), &self.1).require_grad(),
                    ),
                    None => p,
                }
            }
        }
        model.map(&mut Set(from, device.clone()))
    }

    /// The mean of the ranks' gradients, by hand: for every trainable parameter, the sum of
    /// the ranks' gradients divided by the rank count.
    fn mean_by_hand(model: &Network, per_rank: &[GradientsParams]) -> GradientsParams {
        let mut mean = GradientsParams::new();
        let mut params = Vec::new();
        model.for_each_trainable(|p| params.push((p.id, p.rank)));
        fn sum<const D: usize>(id: ParamId, g: &[GradientsParams]) -> Option<Tensor<D>> {
            g.iter()
                .map(|g| g.get::<D>(id))
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .reduce(|a, b| a + b)
        }
        let n = per_rank.len() as f64;
        for (id, rank) in params {
            match rank {
                1 => sum::<1>(id, per_rank).map(|t| mean.register(id, t.div_scalar(n))),
                2 => sum::<2>(id, per_rank).map(|t| mean.register(id, t.div_scalar(n))),
                4 => sum::<4>(id, per_rank).map(|t| mean.register(id, t.div_scalar(n))),
                _ => None,
            };
        }
        mean
    }

    /// Largest |a - b| / max(|b|, tiny) over every trainable value.
    fn worst_relative(a: &Network, b: &Network) -> f64 {
        let (a, b) = (trainable(a), trainable(b));
        let mut worst = 0.0f64;
        for (id, da) in &a {
            let va = da.clone().try_to_vec::<f32>().expect("f32");
            let vb = b[id].clone().try_to_vec::<f32>().expect("f32");
            let num: f64 = va
                .iter()
                .zip(&vb)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum();
            let den: f64 = vb.iter().map(|y| f64::from(*y).powi(2)).sum();
            worst = worst.max((num / den.max(1e-30)).sqrt());
        }
        worst
    }

    /// Steps of rank batches: `[step][rank] = (pixels, labels)`.
    type Batches = Vec<Vec<(Vec<u8>, Vec<u32>)>>;

    /// The smoke recipe's model at a quarter of its width (to keep the tests short) with
    /// `drop_path_rate`, on the CPU, with the recipe and every step's batches.
    fn small_run(drop_path_rate: f64) -> (Device, TrainConfig, Network, Batches) {
        let device = under_test()
            .device(crate::device::Precision::F32)
            .expect("RSB_TEST_DEVICE")
            .autodiff();
        device.seed(3);
        let config = recipe();
        let base = config.model().expect("model");
        let model_cfg = ResNetConfig {
            drop_path_rate,
            width: config.rsb.width / 4.0,
            ..base.resnet().expect("a ResNet recipe").clone()
        };
        let initial = model_cfg.init(&device).map(Network::from).expect("model");
        let data = batches(config.num_classes as u32);
        (device, config, initial, data)
    }

    /// Runs the virtual ranks and a reference of `WORLD` separate models for `STEPS` steps;
    /// returns the largest relative difference of the parameters, and of rank 2's BN running
    /// mean of the last layer.
    fn virtual_against_separate(steps: usize, break_averaging: bool) -> (f64, f64) {
        let (device, config, initial, data) = small_run(0.0);
        let lamb = |m: &Network| TimmLamb::new(&LambOptions::timm(config.weight_decay), m);
        let lr = 2e-3;

        // Under test.
        let (step, ranks) = one_device((&device, &config, &initial, &data), steps);

        // Reference: one model per rank, each with its own BN statistics, the same parameters.
        let mut copies: Vec<Network> = (0..WORLD).map(|_| deep_copy(&initial)).collect();
        let mut optimizer = lamb(&copies[0]);
        for (s, per_rank) in data.iter().enumerate().take(steps) {
            let grads: Vec<GradientsParams> = copies
                .iter()
                .zip(per_rank)
                .enumerate()
                .map(|(r, (model, b))| {
                    let one = TrainStep {
                        optimizer: lamb(model),
                        model: Some(model.clone()),
                        mixup: config.mixup_config(),
                        loss: config.loss(),
                        seed: config.seed,
                        upload: Arc::new(Uploader::new(under_test())),
                    };
                    one.grads(&host(b, s as u64), config.seed + r as u64, 1, &device)
                        .expect("grads")
                        .1
                })
                .collect();
            let mut mean = mean_by_hand(&copies[0], &grads);
            if break_averaging {
                // Rank 0's gradient alone, as if the all-reduce were missing.
                mean = mean_by_hand(&copies[0], &grads[..1]);
            }
            let first = copies.remove(0);
            let stepped = optimizer.step(lr, first, mean);
            let params = trainable(&stepped);
            let rest: Vec<Network> = copies
                .drain(..)
                .map(|m| take_params(m, &params, &device))
                .collect();
            copies = std::iter::once(stepped).chain(rest).collect();
        }
        let model = step.model().expect("model");
        let params = worst_relative(model, &copies[0]);
        // Rank 2's own running mean of the last BN, against copy 2's.
        ranks.stats.swap_in(model, 2);
        let last = |m: &Network| {
            let bns = m.batch_norms();
            bns[bns.len() - 1]
                .running_mean
                .value_sync()
                .to_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        (params, relative(&last(model), &last(&copies[2])))
    }

    /// Relative L2 difference of two flat vectors.
    fn relative(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    #[test]
    fn two_devices_of_two_ranks_train_what_one_device_of_four_virtual_ranks_trains() {
        use crate::ranks::replicas::{Collective, Replicas};
        let (device, config, initial, data) = small_run(0.0);
        let lamb = |m: &Network| TimmLamb::new(&LambOptions::timm(config.weight_decay), m);
        let make = |m: Network| TrainStep {
            optimizer: lamb(&m),
            model: Some(m),
            mixup: config.mixup_config(),
            loss: config.loss(),
            seed: config.seed,
            upload: Arc::new(Uploader::new(under_test())),
        };
        let lr = 2e-3;

        let mut one = make(deep_copy(&initial));
        let mut ranks = VirtualRanks::new(one.model().expect("model"), WORLD);
        // The CPU twice: two replicas, two ranks each, their sums met through the host.
        let first = make(deep_copy(&initial));
        let stats = RankStats::new(first.model().expect("model"), WORLD);
        let mut two = Replicas::new::<StepError>(
            first,
            stats,
            (0, WORLD),
            &[device.clone(), device.clone()],
            Collective::Host,
            &|m| Ok(lamb(m)),
        )
        .expect("replicas");
        for (s, per_rank) in data.iter().enumerate() {
            let hosts: Vec<HostBatch<'_>> = per_rank.iter().map(|b| host(b, s as u64)).collect();
            let a = ranks
                .step(&mut one, &hosts, lr, &device)
                .expect("one device");
            let b = two.step(&hosts, lr, &Alone).expect("two devices");
            let loss = |l: Vec<Tensor<1>>| -> Vec<f32> {
                l.into_iter().map(|t| t.into_scalar::<f32>()).collect()
            };
            let diff = relative(&loss(b), &loss(a));
            assert!(diff < 1e-5, "step {s}: losses differ by {diff:e}");
        }
        let params = worst_relative(
            one.model().expect("model"),
            two.primary().model().expect("model"),
        );
        assert!(params < 1e-5, "parameters differ by {params:e}");
        // Rank 3 trained on the second replica: its statistics are those of rank 3 on one
        // device, and so are every rank's after the reduction.
        let flat = |t: &Tensor<1>| t.to_data().try_to_vec::<f32>().expect("f32");
        let all = two.all_stats().expect("stats");
        for r in [0, 3] {
            let diff = relative(&flat(&all.ranks[r][5].1), &flat(&ranks.stats.ranks[r][5].1));
            assert!(diff < 1e-5, "rank {r}'s BN variance differs by {diff:e}");
        }
        ranks.stats.reduce(one.model().expect("model"));
        two.reduce_bn(&Alone, WORLD).expect("reduce");
        let all = two.all_stats().expect("stats");
        let diff = relative(&flat(&all.ranks[2][5].0), &flat(&ranks.stats.ranks[2][5].0));
        assert!(diff < 1e-5, "reduced BN mean differs by {diff:e}");
    }

    /// A process that takes part in every gather but leaves its gradients out of the sum.
    #[derive(Debug)]
    struct Deaf(crate::ranks::processes::ThreadGroup);

    impl Processes for Deaf {
        fn index(&self) -> usize {
            self.0.index()
        }
        fn count(&self) -> usize {
            self.0.count()
        }
        fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, ProcessError> {
            self.0.all_gather(mine)
        }
        fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>, ProcessError> {
            // Joins the round (so nobody waits), keeps its own values.
            self.0.all_reduce_sum(values.clone())?;
            Ok(values)
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
        fn describe(&self) -> String {
            "deaf".into()
        }
    }

    /// `processes` processes (threads) of `WORLD / processes` virtual ranks each, `steps`
    /// steps, then the BN reduction: the parameters and every rank's BN statistics, as
    /// process 0 gathers them. `deaf`: process 1 leaves the others' gradients out, and its
    /// model is the one returned.
    fn across_processes(
        (device, config, initial, data): (&Device, &TrainConfig, &Network, &Batches),
        steps: usize,
        processes: usize,
        deaf: bool,
    ) -> (Network, RankStats) {
        use crate::ranks::processes::{ProcessPlacement, ThreadGroup};
        use crate::ranks::{Devices, World};
        let lr = 2e-3;
        let per = WORLD / processes;
        let members = ThreadGroup::new(processes);
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let model = deep_copy(initial);
                let (device, config, data) = (device.clone(), config.clone(), data.clone());
                std::thread::spawn(move || {
                    let index = member.index();
                    let processes: std::rc::Rc<dyn Processes> = if deaf && index == 1 {
                        std::rc::Rc::new(Deaf(member))
                    } else {
                        std::rc::Rc::new(member)
                    };
                    let placement = ProcessPlacement::new(WORLD, &*processes).expect("placement");
                    let step = fresh_step(&config, model);
                    let mut world = World {
                        devices: Devices::One {
                            ranks: VirtualRanks::new(step.model().expect("model"), per),
                            step: Box::new(step),
                            device: device.clone(),
                        },
                        processes,
                        placement,
                    };
                    for (s, per_rank) in data.iter().enumerate().take(steps) {
                        let hosts: Vec<HostBatch<'_>> = per_rank[placement.ranks()]
                            .iter()
                            .map(|b| host(b, s as u64))
                            .collect();
                        world.step(&hosts, lr).expect("step");
                    }
                    let before = world.all_stats().expect("gather");
                    world.reduce_bn().expect("reduce");
                    let model = world.primary().model().expect("model").clone();
                    (model, before)
                })
            })
            .collect();
        let mut results: Vec<(Network, RankStats)> = handles
            .into_iter()
            .map(|h| h.join().expect("process"))
            .collect();
        results.swap_remove(usize::from(deaf))
    }

    /// `model` with a fresh LAMB and the recipe's mixing and loss.
    fn fresh_step(config: &TrainConfig, model: Network) -> TrainStep {
        TrainStep {
            optimizer: TimmLamb::new(&LambOptions::timm(config.weight_decay), &model),
            model: Some(model),
            mixup: config.mixup_config(),
            loss: config.loss(),
            seed: config.seed,
            upload: Arc::new(Uploader::new(under_test())),
        }
    }

    /// `WORLD` virtual ranks on one device from `initial`, after `steps` steps at LR 2e-3.
    fn one_device(
        (device, config, initial, data): (&Device, &TrainConfig, &Network, &Batches),
        steps: usize,
    ) -> (TrainStep, VirtualRanks) {
        let mut step = fresh_step(config, deep_copy(initial));
        let mut ranks = VirtualRanks::new(step.model().expect("model"), WORLD);
        for (s, per_rank) in data.iter().enumerate().take(steps) {
            let hosts: Vec<HostBatch<'_>> = per_rank.iter().map(|b| host(b, s as u64)).collect();
            ranks.step(&mut step, &hosts, 2e-3, device).expect("step");
        }
        (step, ranks)
    }

    #[test]
    fn two_and_four_processes_train_what_one_process_of_four_virtual_ranks_trains() {
        let (device, config, initial, data) = small_run(0.0);
        let run = (&device, &config, &initial, &data);
        let (one, mut ranks) = one_device(run, STEPS as usize);
        let flat = |t: &Tensor<1>| t.to_data().try_to_vec::<f32>().expect("f32");
        let before = ranks.stats.clone();
        ranks.stats.reduce(one.model().expect("model"));
        for processes in [2, 4] {
            let (model, stats) = across_processes(run, STEPS as usize, processes, false);
            let params = worst_relative(&model, one.model().expect("model"));
            eprintln!("{processes} processes: parameters {params:e} relative");
            assert!(
                params < 1e-5,
                "{processes} processes: parameters differ by {params:e}"
            );
            // Every rank's own statistics before the reduction, and the reduced ones after.
            for r in 0..WORLD {
                let diff = relative(&flat(&stats.ranks[r][5].1), &flat(&before.ranks[r][5].1));
                assert!(diff < 1e-5, "rank {r}'s BN variance differs by {diff:e}");
            }
            let bn = |m: &Network| flat(&m.batch_norms()[5].running_mean.value_sync());
            let diff = relative(&bn(&model), &bn(one.model().expect("model")));
            assert!(diff < 1e-5, "reduced BN mean differs by {diff:e}");
        }
        // The comparison can fail: a process whose sum leaves the other's gradients out.
        let (model, _) = across_processes(run, 1, 2, true);
        let (first, _) = one_device(run, 1);
        let broken = worst_relative(&model, first.model().expect("model"));
        eprintln!("one step with process 1's gradients left out: {broken:e} relative");
        assert!(broken > 1e-3, "a missing sum went unnoticed ({broken:e})");
    }

    #[test]
    fn a_step_with_fewer_batches_than_ranks_is_an_error() {
        let device = Device::flex().autodiff();
        let config = recipe();
        let model = tiny(&device);
        let mut step = TrainStep {
            optimizer: TimmLamb::new(&LambOptions::timm(config.weight_decay), &model),
            model: Some(model),
            mixup: config.mixup_config(),
            loss: config.loss(),
            seed: 0,
            upload: Arc::new(Uploader::new(DeviceKind::Flex)),
        };
        let mut ranks = VirtualRanks::new(step.model().expect("model"), 2);
        let data = batches(3);
        let one = [host(&data[0][0], 0)];
        let e = ranks.step(&mut step, &one, 1e-3, &device);
        assert!(
            matches!(
                e,
                Err(StepError::Ranks {
                    batches: 1,
                    ranks: 2
                })
            ),
            "{:?}",
            e.err()
        );
    }

    #[test]
    fn four_virtual_ranks_equal_four_models_whose_gradients_are_averaged_by_hand() {
        let (params, bn) = virtual_against_separate(STEPS as usize, false);
        eprintln!("after {STEPS} steps: parameters {params:e}, rank 2's BN {bn:e} relative");
        assert!(params < 1e-5, "parameters differ by {params:e} relative");
        assert!(
            bn < 1e-5,
            "rank 2's BN statistics differ by {bn:e} relative"
        );
        // The comparison can fail: without the averaging the parameters part at once.
        let (broken, _) = virtual_against_separate(1, true);
        eprintln!("one step without the averaging: parameters {broken:e} relative");
        assert!(
            broken > 1e-3,
            "a missing all-reduce went unnoticed ({broken:e})"
        );
    }

    fn tiny(device: &Device) -> Network {
        ResNetConfig {
            depth: 18,
            num_classes: 3,
            width: 0.0625,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: true,
            variant: Default::default(),
        }
        .init(device)
        .map(Network::from)
        .expect("valid config")
    }

    fn values(t: &Tensor<1>) -> Vec<f32> {
        t.to_data().try_to_vec::<f32>().expect("f32")
    }

    #[test]
    fn statistics_swap_per_rank_reduce_to_their_mean_and_survive_a_file() {
        let device = Device::flex();
        let model = tiny(&device);
        let mut stats = RankStats::new(&model, 2);
        let bn = model.batch_norms()[0];
        let n = bn.running_mean.value().dims()[0];
        // Rank 1's statistics change as a forward would change them.
        bn.running_mean
            .update(Tensor::ones([n], &device).mul_scalar(4.0));
        stats.swap_out(&model, 1);
        stats.swap_in(&model, 0);
        assert_eq!(values(&bn.running_mean.value_sync()), vec![0.0; n]);
        stats.swap_in(&model, 1);
        assert_eq!(values(&bn.running_mean.value_sync()), vec![4.0; n]);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ranks.safetensors");
        stats.save(&path).expect("save");
        let back = RankStats::load(&path, &model, 2, &device).expect("load");
        assert_eq!(values(&back.ranks[1][0].0), vec![4.0; n]);
        assert!(matches!(
            RankStats::load(&path, &model, 3, &device),
            Err(RanksError::Mismatch { .. })
        ));

        stats.reduce(&model);
        assert_eq!(values(&bn.running_mean.value_sync()), vec![2.0; n]);
        assert_eq!(values(&stats.ranks[0][0].0), values(&stats.ranks[1][0].0));
    }
}
