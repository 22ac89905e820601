//! The recipe's ranks on several devices of one process: one model replica per device, each
//! running its share of the ranks as virtual ranks (`VirtualRanks::grads`), the devices'
//! gradient sums added together, then the same LAMB step on every replica (as DDP: every rank
//! holds the same parameters and applies the same averaged gradient).
//!
//! Device `d` of `D` runs ranks `d·k .. (d+1)·k` with `k = world_size / D`, so its loader
//! streams, Mixup/CutMix seeds (`seed + rank`), drop-path seeds and BN statistics are those of
//! the same ranks on one device: a run on `D` devices trains on what one device with
//! `world_size` virtual ranks trains on, and its checkpoints are the same files (the
//! parameters, LAMB's state and every rank's BN statistics), so `--resume` may change the
//! device count. What differs is the order in which floats are added (as between any two DDP
//! runs on different GPU counts), not what is added.
//!
//! How the devices' sums meet ([`Collective`]):
//! - `Nccl`: burn's `DistributedContext` (NCCL through cubecl, CUDA only). Every parameter is
//!   marked distributed, and each backward pass all-reduces (sums) its gradients across the
//!   devices while it runs, as burn-train's DDP worker does. With `k > 1` that is `k`
//!   all-reduces per step instead of one; on NVLink this is small next to the step.
//! - `Host`: the sums are moved to the first device, added there and sent back. Slower, but
//!   needs no collectives: it is what runs on the CPU backend (which has none) and what the
//!   tests check the orchestration with.
//!
//! Across processes and nodes ([`crate::ranks::processes`]), the process's total is then
//! summed with the other processes' (through host memory) and copied to every device.

use std::ops::Range;
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use crate::device::DeviceKind;
use crate::model::Network;
use crate::optim::lamb::TimmLamb;
use crate::ranks::WorldError;
use crate::ranks::processes::{Processes, all_reduce_grads, divisor_below};
use crate::ranks::virtual_ranks::{RankStats, VirtualRanks};
use crate::step::{HostBatch, StepError, TrainStep};

/// Errors placing ranks on devices.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// No device given.
    #[error("--devices: no device given")]
    Empty,
    /// The device count does not divide the rank count.
    #[error(
        "--devices: {devices} devices cannot share {world} ranks evenly (rsb.world_size); use \
         a device count that divides it (e.g. {suggest}), or --world-size"
    )]
    Uneven {
        /// Devices given.
        devices: usize,
        /// Ranks of the run.
        world: usize,
        /// A device count that would do.
        suggest: usize,
    },
    /// A device named twice.
    #[error("--devices: {0} is named twice")]
    Duplicate(DeviceKind),
    /// Several devices on a backend without collectives.
    #[error(
        "--devices: several devices need NCCL, which only the CUDA backend has; on the CPU \
         (flex or cube-cpu) run the ranks as virtual ranks on one device (--device)"
    )]
    NoCollectives,
    /// NCCL is not where cudarc looks for it.
    #[error("{0}")]
    Nccl(String),
}

/// Which ranks run on which device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The devices, in rank order: device `d` runs ranks `d·k .. (d+1)·k`.
    pub devices: Vec<DeviceKind>,
    /// Ranks per device, `k = world_size / devices`, run one after another per step.
    pub per_device: usize,
}

impl Placement {
    /// `world` ranks on `devices`. Several devices must be CUDA devices (NCCL), each named
    /// once, and their count must divide `world`.
    ///
    /// # Errors
    /// [`PlacementError`] naming what to change.
    pub fn new(world: usize, devices: &[DeviceKind]) -> Result<Placement, PlacementError> {
        let n = devices.len();
        if n == 0 {
            return Err(PlacementError::Empty);
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(PlacementError::Duplicate(*d));
            }
        }
        let world = world.max(1);
        if !world.is_multiple_of(n) {
            return Err(PlacementError::Uneven {
                devices: n,
                world,
                suggest: divisor_below(world, n),
            });
        }
        if n > 1 && devices.iter().any(|d| !d.has_collectives()) {
            return Err(PlacementError::NoCollectives);
        }
        Ok(Placement {
            devices: devices.to_vec(),
            per_device: world / n,
        })
    }

    /// The ranks device `d` runs.
    pub fn ranks(&self, d: usize) -> Range<usize> {
        d * self.per_device..(d + 1) * self.per_device
    }

    /// Ranks in all.
    pub fn world_size(&self) -> usize {
        self.per_device * self.devices.len()
    }

    /// One line for `trainer config` and the run's start.
    pub fn describe(&self, batch_size: usize) -> String {
        let names: Vec<String> = self.devices.iter().map(ToString::to_string).collect();
        let accumulation = if self.per_device > 1 {
            ", one after another per step with their gradients accumulated (virtual ranks; BN \
             statistics per rank, reduced at each epoch end)"
                .to_string()
        } else {
            String::new()
        };
        format!(
            "ranks: {} on {} device(s) [{}], {} per device{accumulation}; each rank's BN \
             normalizes over its own {batch_size} images",
            self.world_size(),
            self.devices.len(),
            names.join(", "),
            self.per_device,
        )
    }
}

/// Whether the NCCL library loads under one of the names cudarc 0.19 tries
/// (`cudarc::get_lib_name_candidates("nccl")`): a missing NCCL is otherwise a panic inside the
/// first backward pass.
///
/// # Errors
/// [`PlacementError::Nccl`] saying what was found and the link that fixes it.
#[cfg(feature = "cuda")]
pub(crate) fn check_nccl() -> Result<(), PlacementError> {
    use crate::device::library_loadable;
    // cudarc's candidates on 64-bit Linux for CUDA 12 and 13; NCCL's own soname, .so.2, is
    // not among them.
    const TRIED: [&str; 8] = [
        "libnccl.so",
        "libnccl64.so",
        "libnccl.so.13",
        "libnccl.so.12",
        "libnccl.so.11",
        "libnccl.so.10",
        "libnccl.so.9",
        "libnccl.so.1",
    ];
    if TRIED.iter().any(|name| library_loadable(name)) {
        return Ok(());
    }
    let fix = if library_loadable("libnccl.so.2") {
        "NCCL is installed as libnccl.so.2, a name cudarc does not look for: link it as \
         libnccl.so in a directory on LD_LIBRARY_PATH (ln -s \"$(ldconfig -p | awk \
         '/libnccl.so.2 /{print $NF; exit}')\" DIR/libnccl.so)"
    } else {
        "NCCL is not installed or not on LD_LIBRARY_PATH (pip install nvidia-nccl-cu12, or the \
         distribution's libnccl2), then make it loadable as libnccl.so"
    };
    Err(PlacementError::Nccl(format!(
        "several GPUs need NCCL, which cannot be loaded (tried {}): {fix}",
        TRIED.join(", ")
    )))
}

/// How the devices' gradient sums are added together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collective {
    /// NCCL all-reduce inside each backward pass (burn's `DistributedContext`; CUDA).
    Nccl,
    /// Through the first device (no collectives needed).
    Host,
}

/// One device's model, optimizer and ranks.
struct Replica {
    device: Device,
    step: TrainStep,
    ranks: VirtualRanks,
    first: usize,
}

/// The replicas of a run on several devices; replica 0's model is the one evaluated and saved.
pub(crate) struct Replicas {
    parts: Vec<Replica>,
    /// Ranks of the run, of every process.
    world: usize,
    /// This process's first rank.
    offset: usize,
    collective: Collective,
    /// Keeps NCCL's communicators up while the replicas train.
    _context: Option<burn::tensor::distributed::DistributedContext>,
}

/// Marks every parameter as distributed: its gradient is all-reduced in the backward pass.
struct Distribute;

impl ModuleMapper for Distribute {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_distributed(id), mapper)
    }
}

/// A copy of `grads` on `device`, for `model`'s parameters.
fn copy_grads(grads: &GradientsParams, model: &Network, device: &Device) -> GradientsParams {
    struct Copy<'a> {
        from: &'a GradientsParams,
        to: GradientsParams,
        device: &'a Device,
    }
    impl ModuleVisitor for Copy<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.from.get::<D>(p.id) {
                self.to.register(p.id, g.to_device(self.device));
            }
        }
    }
    let mut c = Copy {
        from: grads,
        to: GradientsParams::new(),
        device,
    };
    model.visit(&mut c);
    c.to
}

impl Replicas {
    /// Replicas of `step`'s model on `devices` (autodiff devices; `devices[0]` is `step`'s),
    /// starting from `stats`, the BN statistics of this process's ranks, `offset ..` of the
    /// run's `world` ranks. `optimizer(model)` builds a replica's LAMB (fresh, or loaded from
    /// the checkpoint the model came from).
    ///
    /// # Errors
    /// [`StepError`] when `step` has lost its model, or `optimizer`'s error.
    pub fn new<E: From<StepError>>(
        step: TrainStep,
        stats: RankStats,
        (offset, world): (usize, usize),
        devices: &[Device],
        collective: Collective,
        optimizer: &dyn Fn(&Network) -> Result<TimmLamb, E>,
    ) -> Result<Replicas, E> {
        let per = stats.world_size() / devices.len().max(1);
        let model = step.model().ok_or(StepError::Poisoned)?.clone();
        let context = (collective == Collective::Nccl).then(|| {
            burn::tensor::distributed::DistributedContext::init(
                devices.to_vec(),
                burn::tensor::distributed::DistributedConfig {
                    all_reduce_op: burn::tensor::distributed::ReduceOperation::Sum,
                },
            )
        });
        let mut all = stats.ranks.into_iter();
        let mut parts: Vec<Replica> = Vec::with_capacity(devices.len());
        let mut first_step = Some(step);
        for (d, device) in devices.iter().enumerate() {
            let mut step = match first_step.take() {
                Some(s) => s,
                None => {
                    let first = &parts.first().ok_or(StepError::Poisoned)?.step;
                    // Its own parameters' tensors and BN state on its device, the same ids.
                    let replica = model.valid().train().fork(device);
                    TrainStep {
                        optimizer: optimizer(&replica)?,
                        model: Some(replica),
                        mixup: first.mixup.clone(),
                        loss: first.loss,
                        seed: first.seed,
                        upload: Arc::clone(&first.upload),
                    }
                }
            };
            if collective == Collective::Nccl {
                step.model = step.model.take().map(|m| m.map(&mut Distribute));
            }
            let ranks: Vec<_> = all
                .by_ref()
                .take(per)
                .map(|r| {
                    r.into_iter()
                        .map(|(m, v)| (m.to_device(device), v.to_device(device)))
                        .collect()
                })
                .collect();
            let ranks = VirtualRanks {
                stats: RankStats { ranks },
            };
            let m = step.model().ok_or(StepError::Poisoned)?;
            ranks.stats.swap_in(m, 0);
            parts.push(Replica {
                device: device.clone(),
                step,
                ranks,
                first: offset + d * per,
            });
        }
        Ok(Replicas {
            parts,
            world,
            offset,
            collective,
            _context: context,
        })
    }

    /// This process's ranks.
    pub fn world_size(&self) -> usize {
        self.parts.iter().map(|p| p.ranks.world_size()).sum()
    }

    /// One optimizer step over this process's ranks' batches (`batches[i]` is rank `offset +
    /// i`'s), summed with the other `processes`' ranks. Returns each rank's loss, in rank
    /// order.
    ///
    /// # Errors
    /// [`StepError`] of any rank, or a batch count other than the rank count.
    pub fn step(
        &mut self,
        batches: &[HostBatch<'_>],
        lr: f64,
        processes: &dyn Processes,
    ) -> Result<Vec<Tensor<1>>, WorldError> {
        let mine = self.world_size();
        if batches.len() != mine {
            return Err(StepError::Ranks {
                batches: batches.len(),
                ranks: mine,
            }
            .into());
        }
        let offset = self.offset;
        let world = self.world;
        // Every device at once: NCCL's all-reduces inside backward need all of them.
        let results: Vec<Result<(Vec<Tensor<1>>, GradientsParams), StepError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .parts
                    .iter_mut()
                    .map(|p| {
                        let at = p.first - offset;
                        let mine = &batches[at..at + p.ranks.world_size()];
                        scope.spawn(move || p.ranks.grads(&p.step, mine, p.first, world, &p.device))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(StepError::Poisoned)))
                    .collect()
            });
        let mut losses = Vec::with_capacity(world);
        let mut sums = Vec::with_capacity(results.len());
        for r in results {
            let (l, g) = r?;
            losses.extend(l);
            sums.push(g);
        }
        let grads = match self.collective {
            // Each device's sum is already the sum over all devices.
            Collective::Nccl => sums,
            Collective::Host => self.add_on_host(sums)?,
        };
        // The process's total, summed with the other processes' and copied to every device.
        let grads = if processes.count() > 1 {
            let model = self.parts[0].step.model().ok_or(StepError::Poisoned)?;
            let total = grads.into_iter().next().ok_or(StepError::Poisoned)?;
            let total = all_reduce_grads(processes, total, model)?;
            self.parts
                .iter()
                .map(|p| {
                    let m = p.step.model().ok_or(StepError::Poisoned)?;
                    Ok(copy_grads(&total, m, &p.device))
                })
                .collect::<Result<Vec<_>, StepError>>()?
        } else {
            grads
        };
        // Replicas that share a device (the tests' two on one CPU) update one after the other:
        // on cube-cpu, two threads updating from the same summed gradients on one device
        // diverged by 1 % in two steps (docs/gpu.md, the stand-in's known issues). Replicas on their
        // own devices (GPUs) update at once.
        let shared = self
            .parts
            .iter()
            .enumerate()
            .any(|(i, p)| self.parts[..i].iter().any(|q| q.device == p.device));
        if shared {
            for (p, g) in self.parts.iter_mut().zip(grads) {
                p.step.apply(lr, g)?;
            }
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .parts
                    .iter_mut()
                    .zip(grads)
                    .map(|(p, g)| scope.spawn(move || p.step.apply(lr, g)))
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().unwrap_or(Err(StepError::Poisoned)))
            })?;
        }
        Ok(losses)
    }

    /// The devices' sums added on the first device, and a copy of the total for each device.
    fn add_on_host(&self, sums: Vec<GradientsParams>) -> Result<Vec<GradientsParams>, StepError> {
        let first = &self.parts[0];
        let model = first.step.model().ok_or(StepError::Poisoned)?;
        let mut total = GradientsAccumulator::<Network>::new();
        for g in sums {
            total.accumulate(model, g.to_device(&first.device, model));
        }
        let total = total.grads();
        self.parts
            .iter()
            .map(|p| {
                let m = p.step.model().ok_or(StepError::Poisoned)?;
                Ok(copy_grads(&total, m, &p.device))
            })
            .collect()
    }

    /// timm's `--dist-bn reduce` over every rank of every device and process (`world` ranks
    /// in all): the mean of all ranks' running statistics becomes every rank's and every
    /// replica's.
    ///
    /// # Errors
    /// [`StepError::Poisoned`] if a replica lost its model; the sum's error.
    pub(crate) fn reduce_bn(
        &mut self,
        processes: &dyn Processes,
        world: usize,
    ) -> Result<(), WorldError> {
        let mut all = self.all_stats()?;
        let first = &self.parts[0];
        let model = first.step.model().ok_or(StepError::Poisoned)?;
        if processes.count() > 1 {
            all.reduce_across(model, processes, world)?;
        } else {
            all.reduce(model);
        }
        let mean = all.ranks.swap_remove(0);
        for p in &mut self.parts {
            let k = p.ranks.world_size();
            let mine: Vec<(Tensor<1>, Tensor<1>)> = mean
                .iter()
                .map(|(m, v)| {
                    (
                        m.clone().to_device(&p.device),
                        v.clone().to_device(&p.device),
                    )
                })
                .collect();
            p.ranks.stats = RankStats {
                ranks: vec![mine; k],
            };
            let m = p.step.model().ok_or(StepError::Poisoned)?;
            p.ranks.stats.swap_in(m, 0);
        }
        Ok(())
    }

    /// This process's ranks' BN statistics, on the first device, in rank order (what a
    /// checkpoint holds, whatever the device count, with the other processes' ranks).
    ///
    /// # Errors
    /// [`StepError::Poisoned`] if a replica lost its model.
    pub(crate) fn all_stats(&self) -> Result<RankStats, StepError> {
        let device = &self.parts[0].device;
        let ranks = self
            .parts
            .iter()
            .flat_map(|p| p.ranks.stats.ranks.iter())
            .map(|r| {
                r.iter()
                    .map(|(m, v)| (m.clone().to_device(device), v.clone().to_device(device)))
                    .collect()
            })
            .collect();
        Ok(RankStats { ranks })
    }

    /// The first replica's step: its model is evaluated and saved, its optimizer saved.
    pub(crate) fn primary(&self) -> &TrainStep {
        &self.parts[0].step
    }

    /// The first replica's device.
    pub(crate) fn primary_device(&self) -> &Device {
        &self.parts[0].device
    }
}
