//! `trainer bench`: speed of the full training step on batches already in host memory.
//!
//! Measures what the GPU (or CPU) can do when data is never the bottleneck: each step uploads
//! a uint8 batch, mixes, normalizes, runs forward, BCE, backward and timm's LAMB. The first
//! steps (kernel compilation, autotuning) are timed apart from the steady state.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use loader::wire::client::{Client, ClientOptions};

use crate::data::feed::Feed;
use crate::data::upload::{Pixels, Uploader};
use crate::device::{DeviceKind, Precision};
use crate::model::NetworkConfig;
use crate::model::seeded;
use crate::optim::lamb::{LambOptions, TimmLamb};
use crate::ranks::replicas::{Collective, Replicas};
use crate::ranks::virtual_ranks::VirtualRanks;
use crate::ranks::{Devices, World};
use crate::step::mixup::MixupConfig;
use crate::step::{HostBatch, PhaseTimes, StepError, TrainStep};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where.
    pub device: DeviceKind,
    /// Float type of parameters and activations.
    pub precision: Precision,
    /// The model.
    pub model: NetworkConfig,
    /// Images per step and rank.
    pub batch: usize,
    /// Virtual ranks per step (see [`crate::ranks::virtual_ranks`]): `ranks × batch` images per step.
    pub ranks: usize,
    /// Run the ranks through the ranks' `Replicas` on the one device with this collective instead of
    /// plain virtual ranks (with `Nccl`: a one-GPU `DistributedContext`, to check that path).
    pub collective: Option<Collective>,
    /// Square image side.
    pub img_size: usize,
    /// Untimed steps first (compilation, autotune).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Seed of weights, pixels and mixing.
    pub seed: u64,
    /// Where batches come from.
    pub source: BatchSource,
}

/// Where a bench run's batches come from.
#[derive(Debug, Clone)]
pub enum BatchSource {
    /// Random uint8 batches made once and held in memory: pure training-step speed.
    Synthetic,
    /// The loader's rings and client, a loader started in process on packed shards: the
    /// trainer's own path, each slot shared with its upload without a host copy.
    Ring {
        /// Dataset directory made by `shard-tool pack`.
        path: std::path::PathBuf,
        /// Loader transform; sets the image size.
        transform: loader::TransformSpec,
        /// Loader worker threads.
        threads: usize,
    },
    /// The loader core in process, on packed shards: pipeline speed.
    Shards {
        /// Dataset directory made by `shard-tool pack`.
        path: std::path::PathBuf,
        /// Loader transform; sets the image size.
        transform: loader::TransformSpec,
        /// Loader worker threads.
        threads: usize,
    },
}

/// What was measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Device name.
    pub device: String,
    /// `f32` or `bf16`.
    pub precision: String,
    /// Images per step and rank.
    pub batch: usize,
    /// Virtual ranks per step.
    pub ranks: usize,
    /// Square image side.
    pub img_size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Seconds of the warm-up steps, the first of which compiles kernels.
    pub warmup_s: f64,
    /// Seconds of the timed steps.
    pub timed_s: f64,
    /// Steps per second, steady state.
    pub steps_per_s: f64,
    /// Images per second, steady state.
    pub samples_per_s: f64,
    /// `synthetic` or the shards and transform.
    pub source: String,
    /// Seconds of the timed steps spent waiting for the loader (0 for synthetic batches).
    pub data_wait_s: f64,
    /// Loss of the last step (a sanity check: finite).
    pub last_loss: f64,
    /// Bytes copied on the host per timed step on the way to the device, by us and by the
    /// backend's staging, the DMA itself not counted ([`crate::data::upload`]).
    pub host_bytes_per_step: f64,
    /// Bytes of pixels per step, for scale.
    pub pixel_bytes_per_step: usize,
    /// What the upload had to say (a ring that could not be page-locked).
    pub upload_note: Option<String>,
    /// Bytes the device's allocator holds at the end, where the backend reports it.
    pub device_bytes_reserved: Option<u64>,
    /// Milliseconds per step in each phase, from a few more steps with the device synchronized
    /// after each phase (one rank only; `None` with virtual ranks).
    pub phases_ms: Option<crate::step::PhaseTimes>,
    /// Steps the phases were measured over.
    pub phase_steps: usize,
}

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Device selection.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// Model configuration.
    #[error(transparent)]
    Config(#[from] crate::model::family::ConfigError),
    /// A step failed.
    #[error(transparent)]
    Step(#[from] crate::step::StepError),
    /// The loader feed failed.
    #[error(transparent)]
    Feed(#[from] crate::data::feed::FeedError),
    /// The device failed while executing.
    #[error("device execution failed: {0}")]
    Execution(String),
    /// Virtual ranks with loader batches (only synthetic ones are supported).
    #[error("--world-size above 1 runs on synthetic batches only (without --shards)")]
    RanksWithShards,
    /// NCCL cannot be loaded.
    #[error(transparent)]
    Nccl(#[from] crate::ranks::replicas::PlacementError),
    /// NCCL asked of a device without it.
    #[error(
        "--distributed needs a CUDA device (NCCL); {0} has no collectives (flex has none; \
         cube-cpu's CubeCL server refuses an all-reduce with NoDeviceTransport)"
    )]
    NoCollectives(DeviceKind),
}

impl From<crate::ranks::WorldError> for BenchError {
    fn from(e: crate::ranks::WorldError) -> BenchError {
        match e {
            crate::ranks::WorldError::Step(e) => BenchError::Step(e),
            // The bench's ranks are all in this process: no sum with others to fail.
            crate::ranks::WorldError::Processes(e) => BenchError::Execution(e.to_string()),
        }
    }
}

impl BenchError {
    /// Whether the user asked for what cannot be measured (flags that do not go together, a
    /// device this build or backend cannot give), rather than a failure while measuring.
    pub fn is_bad_input(&self) -> bool {
        match self {
            BenchError::Device(e) => e.is_bad_input(),
            BenchError::RanksWithShards | BenchError::NoCollectives(_) => true,
            BenchError::Config(_)
            | BenchError::Step(_)
            | BenchError::Feed(_)
            | BenchError::Execution(_)
            | BenchError::Nccl(_) => false,
        }
    }
}

fn sync(device: &Device) -> Result<(), BenchError> {
    device
        .sync()
        .map_err(|e| BenchError::Execution(format!("{e:?}")))
}

/// Runs the benchmark: warm-up steps, timed steps, then (one rank) a few more steps with each
/// phase timed apart.
///
/// # Errors
/// [`BenchError`]: the device, the model, the loader, or a step.
pub fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let ranks = options.ranks.max(1);
    if ranks > 1 && !matches!(options.source, BatchSource::Synthetic) {
        return Err(BenchError::RanksWithShards);
    }
    // The steps timed, then (one rank) up to 5 more with the phases timed apart.
    let phase_steps = if ranks == 1 { options.steps.min(5) } else { 0 };
    let total = (options.warmup + options.steps + phase_steps) as u64;
    let mut bench = Bench::new(options, ranks, total)?;
    let start = Instant::now();
    bench.steps(0, options.warmup, false)?;
    let warmup_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let copied_before = bench.upload.host_bytes_copied().0;
    let (last_loss, data_wait_s) = bench.steps(options.warmup, options.steps, false)?;
    let timed_s = start.elapsed().as_secs_f64();
    let copied = bench.upload.host_bytes_copied().0 - copied_before;
    // The phases, apart: synchronizing after each costs the overlap the timed steps had.
    if phase_steps > 0 {
        bench.steps(options.warmup + options.steps, phase_steps, true)?;
    }
    let steps_per_s = options.steps as f64 / timed_s;
    let [_, side, _] = bench.shape;
    Ok(BenchReport {
        device: options.device.to_string(),
        precision: options.precision.name().to_owned(),
        batch: options.batch,
        ranks,
        img_size: side,
        steps: options.steps,
        warmup_s,
        timed_s,
        steps_per_s,
        samples_per_s: steps_per_s * (options.batch * ranks) as f64,
        source: options.source.describe(),
        data_wait_s,
        last_loss,
        host_bytes_per_step: copied as f64 / options.steps.max(1) as f64,
        pixel_bytes_per_step: options.batch * side * side * 3 * ranks,
        upload_note: bench.upload.take_note(),
        device_bytes_reserved: bench.device.memory_pool_usage().map(|u| u.bytes_reserved),
        phases_ms: (phase_steps > 0).then(|| bench.phases.scaled(1e3 / phase_steps as f64)),
        phase_steps,
    })
}

impl BatchSource {
    /// As the report names it.
    fn describe(&self) -> String {
        match self {
            BatchSource::Synthetic => "synthetic".into(),
            BatchSource::Ring {
                path,
                transform,
                threads,
            } => format!(
                "{} through the loader's ring ({transform}, {threads} loader threads)",
                path.display()
            ),
            BatchSource::Shards {
                path,
                transform,
                threads,
            } => format!("{} ({transform}, {threads} loader threads)", path.display()),
        }
    }
}

/// A bench's batches, opened.
enum Batches {
    /// A few distinct random batches, so that nothing is cached between steps.
    Synthetic(Vec<(Vec<u8>, Vec<u32>)>),
    /// The loader core in this process.
    Feed(Feed),
    /// The loader's ring, from a loader in this process (kept alive by `_loader`); boxed, the
    /// client being much larger than the other variants.
    Ring {
        client: Box<Client>,
        _loader: crate::data::source::Batches,
    },
}

/// A model, its step and its ranks on a device, and the batches they take.
struct Bench {
    device: Device,
    ranks: usize,
    /// `[batch, side, side]`.
    shape: [usize; 3],
    /// The ranks as virtual ranks, or through [`Replicas`] with `--distributed`.
    world: World,
    upload: Arc<Uploader>,
    batches: Batches,
    phases: PhaseTimes,
}

impl Bench {
    fn new(options: &BenchOptions, ranks: usize, total: u64) -> Result<Bench, BenchError> {
        let device = options.device.device(options.precision)?.autodiff();
        let mut model = seeded::init(&options.model, options.device, &device, options.seed)?;
        model.set_compute(options.precision.compute());
        let upload = Arc::new(Uploader::new(options.device));
        let step = TrainStep {
            // A1's optimizer (timm's Lamb with weight decay 0.01), mixing and loss.
            optimizer: TimmLamb::new(&LambOptions::timm(0.01), &model),
            model: Some(model),
            mixup: MixupConfig::a1(options.model.num_classes()),
            loss: crate::step::loss::LossKind::Bce {
                target_thresh: Some(0.2),
            },
            seed: options.seed,
            upload: Arc::clone(&upload),
        };
        let world = world(options, ranks, step, &device)?;
        let (batches, side) = open_batches(options, ranks, total)?;
        Ok(Bench {
            device,
            ranks,
            shape: [options.batch, side, side],
            world,
            upload,
            batches,
            phases: PhaseTimes::default(),
        })
    }

    /// Runs steps `from .. from + count`; the last loss and the seconds spent waiting for
    /// the loader. With `profile`, adds each phase's time to `self.phases`.
    fn steps(
        &mut self,
        from: usize,
        count: usize,
        profile: bool,
    ) -> Result<(f64, f64), BenchError> {
        let (mut loss, mut wait) = (None, 0.0f64);
        for i in from..from + count {
            let (l, w) = self.one(i, profile)?;
            loss = Some(l);
            wait += w;
        }
        sync(&self.device)?;
        let loss = loss.map_or(f64::NAN, |l| f64::from(l.into_scalar::<f32>()));
        Ok((loss, wait))
    }

    /// Step `i`: its loss and the seconds it waited for its batch.
    fn one(
        &mut self,
        i: usize,
        profile: bool,
    ) -> Result<(burn::tensor::Tensor<1>, f64), BenchError> {
        let phases = profile.then_some(&mut self.phases);
        let stopped = || BenchError::Execution("the loader stopped before the last step".into());
        match &mut self.batches {
            Batches::Ring { client, .. } => {
                let t = Instant::now();
                let slot = client
                    .next_batch()
                    .map_err(|e| BenchError::Execution(e.to_string()))?
                    .ok_or_else(stopped)?;
                let wait = t.elapsed().as_secs_f64();
                let slot = Arc::new(slot);
                let batch = HostBatch {
                    pixels: Pixels::Slot(Arc::clone(&slot)),
                    shape: self.shape,
                    labels: slot.labels(),
                    step: i as u64,
                };
                Ok((self.world.step_timed(&batch, 1e-3, phases)?, wait))
            }
            Batches::Feed(feed) => {
                let t = Instant::now();
                let fed = feed.next().ok_or_else(stopped)??;
                let wait = t.elapsed().as_secs_f64();
                let batch = HostBatch {
                    pixels: Pixels::Host(&fed.pixels),
                    shape: self.shape,
                    labels: &fed.labels,
                    step: fed.step,
                };
                let loss = self.world.step_timed(&batch, 1e-3, phases)?;
                feed.recycle(fed);
                Ok((loss, wait))
            }
            Batches::Synthetic(batches) => {
                let hosts: Vec<HostBatch<'_>> = (0..self.ranks)
                    .map(|r| {
                        let (pixels, labels) = &batches[(i * self.ranks + r) % batches.len()];
                        HostBatch {
                            pixels: Pixels::Host(pixels),
                            shape: self.shape,
                            labels,
                            step: i as u64,
                        }
                    })
                    .collect();
                let loss = if self.ranks == 1 {
                    self.world.step_timed(&hosts[0], 1e-3, phases)?
                } else {
                    let losses = self.world.step(&hosts, 1e-3)?;
                    losses.into_iter().next().ok_or(StepError::Poisoned)?
                };
                Ok((loss, 0.0))
            }
        }
    }
}

/// `step` and its ranks on `device`: virtual ranks, or with `--distributed` (a collective)
/// and several ranks, [`Replicas`] on the one device.
fn world(
    options: &BenchOptions,
    ranks: usize,
    step: TrainStep,
    device: &Device,
) -> Result<World, BenchError> {
    let stats = VirtualRanks::new(step.model().ok_or(StepError::Poisoned)?, ranks).stats;
    let collective = match options.collective {
        Some(Collective::Nccl) if !options.device.has_collectives() => {
            return Err(BenchError::NoCollectives(options.device));
        }
        Some(collective) if ranks > 1 => collective,
        _ => {
            let devices = Devices::One {
                step: Box::new(step),
                ranks: VirtualRanks { stats },
                device: device.clone(),
            };
            return Ok(World::alone(devices, ranks));
        }
    };
    #[cfg(feature = "cuda")]
    if collective == Collective::Nccl {
        crate::ranks::replicas::check_nccl()?;
    }
    let lamb = |m: &crate::model::Network| -> Result<TimmLamb, BenchError> {
        Ok(TimmLamb::new(&LambOptions::timm(0.01), m))
    };
    let replicas = Replicas::new(
        step,
        stats,
        (0, ranks),
        std::slice::from_ref(device),
        collective,
        &lamb,
    )?;
    Ok(World::alone(Devices::Many(replicas), ranks))
}

/// The bench's batches, opened, and their side.
fn open_batches(
    options: &BenchOptions,
    ranks: usize,
    total: u64,
) -> Result<(Batches, usize), BenchError> {
    match &options.source {
        BatchSource::Shards {
            path,
            transform,
            threads,
        } => {
            let feed = Feed::spawn(
                path,
                *transform,
                options.batch,
                *threads,
                options.seed,
                total,
            )?;
            let side = feed.img_size;
            Ok((Batches::Feed(feed), side))
        }
        // The ring: a loader in this process serving the shards, read as the trainer reads.
        BatchSource::Ring {
            path,
            transform,
            threads,
        } => {
            let execution = |e: String| BenchError::Execution(e);
            let batch_size = u32::try_from(options.batch)
                .map_err(|_| execution(format!("batch {}", options.batch)))?;
            let loader = crate::data::source::DataSource::Shards {
                dir: path.clone(),
                workers: u32::try_from(*threads).unwrap_or(u32::MAX),
            }
            .open()
            .map_err(|e| execution(e.to_string()))?;
            let client = Client::connect(ClientOptions {
                socket: loader.socket().to_path_buf(),
                job_id: format!("bench-{}", std::process::id()),
                job: loader::JobSpec::single("train", *transform, options.seed, batch_size),
                start: loader::request::job::Position::default(),
                epochs: None,
                slots: None,
                reconnect_timeout: std::time::Duration::from_secs(30),
            })
            .map_err(|e| execution(e.to_string()))?;
            let side = transform.img_size() as usize;
            Ok((
                Batches::Ring {
                    client: Box::new(client),
                    _loader: loader,
                },
                side,
            ))
        }
        BatchSource::Synthetic => {
            let side = options.img_size;
            let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
            let batches = (0..4.max(ranks))
                .map(|_| {
                    let mut pixels = vec![0u8; options.batch * side * side * 3];
                    rng.fill(pixels.as_mut_slice());
                    let labels = (0..options.batch)
                        .map(|_| rng.random_range(0..options.model.num_classes() as u32))
                        .collect();
                    (pixels, labels)
                })
                .collect();
            Ok((Batches::Synthetic(batches), side))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_cpu_run_reports_finite_numbers() {
        let options = BenchOptions {
            device: DeviceKind::Flex,
            precision: Precision::F32,
            model: crate::model::ResNetConfig {
                depth: 18,
                num_classes: 10,
                width: 0.125,
                small_stem: true,
                drop_path_rate: 0.05,
                zero_init_last: true,
                variant: Default::default(),
            }
            .into(),
            batch: 4,
            ranks: 1,
            collective: None,
            img_size: 16,
            warmup: 1,
            steps: 2,
            seed: 1,
            source: BatchSource::Synthetic,
        };
        let report = run(&options).expect("bench");
        assert!(report.last_loss.is_finite(), "{report:?}");
        assert!(report.samples_per_s > 0.0);
        assert_eq!(report.samples_per_s, report.steps_per_s * 4.0);
        let phases = report.phases_ms.expect("one rank times its phases");
        assert!(phases.forward > 0.0 && phases.backward > 0.0, "{phases:?}");
        assert_eq!(report.phase_steps, 2);
        // Synthetic batches are the caller's: one host copy of their pixels per step.
        assert_eq!(report.pixel_bytes_per_step, 4 * 16 * 16 * 3);
        assert_eq!(report.host_bytes_per_step, 3072.0);
        let two = run(&BenchOptions {
            ranks: 2,
            ..options.clone()
        })
        .expect("bench");
        assert_eq!(two.samples_per_s, two.steps_per_s * 8.0);
        assert!(two.phases_ms.is_none());
        // The same ranks through the replicas' code (sums met on the host: the CPU has no
        // NCCL). That they train the same is `ranks::tests`' check, on one initial model: two
        // runs here draw their weights from the backend's generator, which the tests running
        // beside this one share.
        let replicated = run(&BenchOptions {
            ranks: 2,
            collective: Some(Collective::Host),
            ..options.clone()
        })
        .expect("bench");
        assert!(replicated.last_loss.is_finite(), "{replicated:?}");
        assert_eq!(replicated.samples_per_s, replicated.steps_per_s * 8.0);
        let nccl = run(&BenchOptions {
            ranks: 2,
            collective: Some(Collective::Nccl),
            ..options
        });
        assert!(matches!(
            nccl,
            Err(BenchError::NoCollectives(DeviceKind::Flex))
        ));
    }
}
