//! `trainer train`: a recipe's whole run. Batches come from the loader daemon's ring (`--loader
//! SOCKET`) or from a loader started inside this process on the shards (`--shards DIR`, the
//! same rings and protocol); each step is [`TrainStep`] at the schedule's LR; evaluation on
//! the val split every `eval_interval` epochs; atomic checkpoints ([`checkpoint`]) at the end of
//! every epoch and every `checkpoint_interval` steps; one JSON line per step and per eval in
//! `OUT/metrics.jsonl`.
//!
//! Resuming is exact: the data stream restarts at the checkpoint's (epoch, step), Mixup/CutMix
//! draws are keyed by the step, and the backend's generator (drop-path masks) is reseeded from
//! (seed, step) before every step, so the steps after a resume repeat an uninterrupted run's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use loader::client::{Client, ClientOptions};
use loader::job::{JobSpec, Position, TransformOverrides};
use loader::server::{LocalServer, ServeConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;
use crate::device::{DeviceKind, Precision};
use crate::lamb::{LambOptions, TimmLamb};
use crate::normalize::{normalize, upload_pixels};
use crate::resnet::{ResNet, ResNetConfig};
use crate::step::{HostBatch, TrainStep};

/// Where batches come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A loader started in this process on these shards, with this many worker threads.
    Shards {
        /// Dataset directory made by `shard-tool pack`.
        dir: PathBuf,
        /// Worker threads (0: one per core).
        workers: u32,
    },
    /// A running `loader serve` daemon.
    Loader {
        /// Its socket.
        socket: PathBuf,
    },
}

impl DataSource {
    /// Starts the in-process loader where this source is one; returns where to connect.
    pub fn open(&self) -> Result<Batches, TrainError> {
        match self {
            DataSource::Shards { dir, workers } => {
                let server = LocalServer::start(ServeConfig {
                    shards: Some(dir.clone()),
                    workers: *workers,
                    ..ServeConfig::default()
                })
                .map_err(|e| TrainError::Loader(e.to_string()))?;
                Ok(Batches {
                    socket: server.socket().to_path_buf(),
                    _local: Some(server),
                })
            }
            DataSource::Loader { socket } => Ok(Batches {
                socket: socket.clone(),
                _local: None,
            }),
        }
    }
}

/// An opened [`DataSource`]: the socket to connect to, and the in-process loader behind it
/// (stopped when this is dropped).
pub struct Batches {
    socket: PathBuf,
    _local: Option<LocalServer>,
}

impl Batches {
    /// The loader's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Settings of a run besides the recipe.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The recipe.
    pub config: TrainConfig,
    /// Batches.
    pub data: DataSource,
    /// Output directory: checkpoints, metrics.jsonl.
    pub out: PathBuf,
    /// Continue from `out`'s latest checkpoint (start fresh if there is none).
    pub resume: bool,
    /// Device.
    pub device: DeviceKind,
    /// Float precision.
    pub precision: Precision,
    /// Stop after this many steps in all (the schedule still spans the recipe's epochs).
    pub max_steps: Option<u64>,
    /// Start a new run from these timm-named safetensors weights (timm's `--initial-checkpoint`
    /// role) instead of a fresh initialization; unused when resuming.
    pub init_from: Option<PathBuf>,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe asks for something this trainer cannot do.
    #[error("recipe: {0}")]
    Recipe(String),
    /// The output directory holds a run and `--resume` was not given, or another problem
    /// with it.
    #[error("{0}")]
    Out(String),
    /// The loader.
    #[error("loader: {0}")]
    Loader(String),
    /// The device.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// The model.
    #[error(transparent)]
    Model(#[from] crate::resnet::ConfigError),
    /// A step.
    #[error(transparent)]
    Step(#[from] crate::step::StepError),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// `init_from` weights that do not load.
    #[error("--init-from: {0}")]
    InitFrom(#[from] crate::weights::WeightsError),
    /// Writing metrics.
    #[error("{path}: {source}")]
    Metrics {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    /// After each optimizer step.
    Step {
        /// Steps done (this one included).
        step: u64,
        /// Epoch of the batch.
        epoch: u32,
        /// BCE (or CE) loss of the batch.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Samples per second of this step (data wait included).
        samples_per_s: f64,
        /// Seconds this step waited for its batch.
        data_wait_s: f64,
    },
    /// After each evaluation.
    Eval {
        /// Steps done.
        step: u64,
        /// Epochs done.
        epoch: u32,
        /// Top-1 accuracy, percent.
        top1: f64,
        /// Top-5 accuracy, percent.
        top5: f64,
        /// Images evaluated.
        samples: u64,
    },
}

impl Metric {
    fn step(&self) -> u64 {
        match self {
            Metric::Step { step, .. } | Metric::Eval { step, .. } => *step,
        }
    }
}

/// What the run reports as it goes (for a progress bar).
#[derive(Debug, Clone)]
pub enum Event {
    /// The run is set up.
    Started {
        /// First step (steps done before: non-zero after a resume).
        start_step: u64,
        /// Last step of the run.
        total_steps: u64,
        /// Batches per epoch.
        steps_per_epoch: u64,
        /// Trainable parameters.
        params: usize,
    },
    /// A metric line was written.
    Metric(Metric),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}

/// The model a recipe names.
pub fn model_config(config: &TrainConfig) -> Result<ResNetConfig, TrainError> {
    let depth = crate::resnet::timm_depth(&config.model)?;
    Ok(ResNetConfig {
        depth,
        num_classes: config.num_classes,
        width: config.rsb.width,
        small_stem: config.rsb.small_stem,
        drop_path_rate: config.drop_path,
        zero_init_last: true,
    })
}

/// The loader job of the recipe's training transform, every setting explicit.
pub fn train_job(config: &TrainConfig) -> Result<JobSpec, TrainError> {
    let u32_of = |key: &str, v: usize| {
        u32::try_from(v).map_err(|_| TrainError::Recipe(format!("{key} = {v} is too large")))
    };
    Ok(JobSpec {
        split: config.rsb.train_split.clone(),
        // The base name matters not: every setting is overridden from the recipe.
        transform: "a3".into(),
        seed: config.seed,
        world_size: 1,
        rank: 0,
        batch_size: u32_of("batch_size", config.batch_size)?,
        overrides: TransformOverrides {
            img_size: Some(u32_of("img_size", config.img_size)?),
            scale: Some(config.scale),
            ratio: Some(config.ratio),
            hflip: Some(config.hflip),
            aa: Some(config.aa.clone()),
            interpolation: Some(config.train_interpolation.clone()),
            crop_pct: None,
            aug_repeats: Some(u32_of("aug_repeats", config.aug_repeats)?),
        },
    })
}

/// The loader job of the recipe's evaluation (`test_img_size`, `crop_pct`, `interpolation`).
pub fn eval_job(config: &TrainConfig) -> Result<JobSpec, TrainError> {
    Ok(JobSpec {
        split: config.rsb.val_split.clone(),
        transform: "eval".into(),
        seed: config.seed,
        world_size: 1,
        rank: 0,
        batch_size: u32::try_from(config.batch_size)
            .map_err(|_| TrainError::Recipe("batch_size is too large".into()))?,
        overrides: TransformOverrides {
            img_size: Some(
                u32::try_from(config.rsb.test_img_size)
                    .map_err(|_| TrainError::Recipe("test_img_size is too large".into()))?,
            ),
            crop_pct: Some(config.crop_pct),
            interpolation: Some(config.interpolation.clone()),
            ..Default::default()
        },
    })
}

fn check_recipe(config: &TrainConfig) -> Result<(), TrainError> {
    if config.clip_grad.is_some() {
        return Err(TrainError::Recipe(
            "clip_grad is not supported (timm's Lamb clips at 1.0 inside; the recipes set no \
             clip_grad)"
                .into(),
        ));
    }
    for (key, on) in [
        ("model_ema", config.model_ema),
        ("reprob > 0", config.reprob > 0.0),
        ("drop > 0", config.drop > 0.0),
    ] {
        if on {
            return Err(TrainError::Recipe(format!("{key} is not implemented yet")));
        }
    }
    Ok(())
}

/// The generator seed of step `step` (drop-path masks): a fixed mix of the run's seed and the
/// step, so a resumed run draws what the uninterrupted one drew.
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs (or resumes) a recipe; returns the last evaluation.
pub fn train(
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Metric>, TrainError> {
    let config = &options.config;
    check_recipe(config)?;
    let recipe_text =
        toml::to_string(config).map_err(|e| TrainError::Recipe(format!("serializing: {e}")))?;
    std::fs::create_dir_all(&options.out)
        .map_err(|e| TrainError::Out(format!("{}: {e}", options.out.display())))?;
    let existing = checkpoint::latest(&options.out);
    if existing.is_some() && !options.resume {
        return Err(TrainError::Out(format!(
            "{} already holds a run's checkpoints; pass --resume to continue it, or choose \
             another --out",
            options.out.display()
        )));
    }

    // The loader: in this process on the shards, or the daemon.
    let batches = options.data.open()?;
    let socket = batches.socket().to_path_buf();

    let device = options.device.device(options.precision)?.autodiff();
    device.seed(config.seed);
    let model_cfg = model_config(config)?;
    let model = model_cfg.init(&device)?;
    let params = model.trainable_params();
    // The optimizer's groups are keyed by parameter id: build it after the checkpoint's ids
    // are in place.
    let lamb = |model: &ResNet| TimmLamb::new(&LambOptions::timm(config.weight_decay), model);
    let (model, optimizer, state) = match &existing {
        Some(dir) => {
            let state = checkpoint::read_state(dir)?;
            if state.config != recipe_text {
                return Err(TrainError::Out(format!(
                    "{} was written with another recipe; resume with the same config file \
                     (or start a new --out)",
                    dir.display()
                )));
            }
            let model = checkpoint::load_model(dir, model)?;
            let optimizer = checkpoint::load_optimizer(dir, lamb(&model))?;
            (model, optimizer, state)
        }
        None => {
            let model = match &options.init_from {
                Some(path) => crate::weights::import(model, path)?,
                None => model,
            };
            let optimizer = lamb(&model);
            let state = RunState {
                steps_done: 0,
                next: Position::default(),
                config: recipe_text.clone(),
            };
            (model, optimizer, state)
        }
    };
    let metrics_path = options.out.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, state.steps_done)?;

    let mut step = TrainStep {
        model: Some(model),
        optimizer,
        mixup: config.mixup_config(),
        loss: config.loss(),
        seed: config.seed,
    };
    let schedule = config.schedule();
    let epochs = u32::try_from(config.epochs + config.cooldown_epochs)
        .map_err(|_| TrainError::Recipe("epochs too large".into()))?;
    let mut client = Client::connect(ClientOptions {
        socket: socket.clone(),
        job_id: format!("train-{}", std::process::id()),
        job: train_job(config)?,
        start: state.next,
        epochs: Some(epochs),
        slots: None,
        reconnect_timeout: std::time::Duration::from_secs(300),
    })
    .map_err(|e| TrainError::Loader(e.to_string()))?;
    let spe = client.steps_per_epoch();
    let all_steps = spe * u64::from(epochs);
    let total_steps = options.max_steps.map_or(all_steps, |m| m.min(all_steps));
    on_event(Event::Started {
        start_step: state.steps_done,
        total_steps,
        steps_per_epoch: spe,
        params,
    });

    let side = config.img_size;
    let mut steps_done = state.steps_done;
    let mut last_eval = None;
    let mut t_prev = Instant::now();
    while steps_done < total_steps {
        let t_wait = Instant::now();
        let Some(batch) = client
            .next_batch()
            .map_err(|e| TrainError::Loader(e.to_string()))?
        else {
            break;
        };
        let data_wait_s = t_wait.elapsed().as_secs_f64();
        let at = batch.position;
        let lr = schedule.lr(u64::from(at.epoch), at.step, spe);
        device.seed(step_seed(config.seed, steps_done));
        let host = HostBatch {
            pixels: batch.images(),
            shape: [batch.count, side, side],
            labels: batch.labels(),
            step: steps_done,
        };
        let loss = step.run(&host, lr, &device)?;
        drop(batch);
        let loss = f64::from(loss.into_scalar::<f32>());
        steps_done += 1;
        let now = Instant::now();
        let m = Metric::Step {
            step: steps_done,
            epoch: at.epoch,
            loss,
            lr,
            samples_per_s: config.batch_size as f64 / (now - t_prev).as_secs_f64(),
            data_wait_s,
        };
        t_prev = now;
        write_metric(&mut metrics, &metrics_path, &m)?;
        on_event(Event::Metric(m));

        let next = at.next(spe);
        let epoch_done = next.epoch != at.epoch;
        let last = steps_done == total_steps;
        let interval = config.rsb.checkpoint_interval;
        let model = step.model().ok_or(crate::step::StepError::Poisoned)?;
        if (epoch_done
            && (u64::from(next.epoch) % config.rsb.eval_interval.max(1) == 0
                || next.epoch == epochs))
            || last
        {
            let m = evaluate(model, &device, &socket, config, steps_done, next.epoch)?;
            write_metric(&mut metrics, &metrics_path, &m)?;
            on_event(Event::Metric(m.clone()));
            last_eval = Some(m);
        }
        if epoch_done || last || (interval > 0 && steps_done % interval == 0) {
            let state = RunState {
                steps_done,
                next,
                config: recipe_text.clone(),
            };
            let dir = checkpoint::save(&options.out, model, &step.optimizer, &state)?;
            on_event(Event::Checkpoint(dir));
        }
    }
    Ok(last_eval)
}

/// Top-1 and top-5 of `model` (eval mode) on the recipe's val split.
pub fn evaluate(
    model: &ResNet,
    device: &Device,
    socket: &Path,
    config: &TrainConfig,
    step: u64,
    epoch: u32,
) -> Result<Metric, TrainError> {
    let valid = model.valid();
    let inner = device.clone().inner();
    let mut client = Client::connect(ClientOptions {
        socket: socket.to_path_buf(),
        job_id: format!("eval-{}", std::process::id()),
        job: eval_job(config)?,
        start: Position::default(),
        epochs: Some(1),
        slots: None,
        reconnect_timeout: std::time::Duration::from_secs(300),
    })
    .map_err(|e| TrainError::Loader(e.to_string()))?;
    let side = config.rsb.test_img_size;
    let (mut top1, mut top5, mut n) = (0u64, 0u64, 0u64);
    while let Some(batch) = client
        .next_batch()
        .map_err(|e| TrainError::Loader(e.to_string()))?
    {
        let pixels = upload_pixels(batch.images().to_vec(), [batch.count, side, side], &inner)
            .map_err(crate::step::StepError::from)?;
        let logits = valid.forward(normalize(pixels));
        let [rows, classes] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| TrainError::Loader(format!("reading logits: {e:?}")))?;
        for (row, &label) in values.chunks_exact(classes).zip(batch.labels()).take(rows) {
            let own = row
                .get(label as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            // Rank of the true class: how many classes score higher (ties count against).
            let above = row.iter().filter(|&&v| v > own).count();
            top1 += u64::from(above < 1);
            top5 += u64::from(above < 5);
        }
        n += batch.count as u64;
    }
    let pct = |k: u64| 100.0 * k as f64 / n.max(1) as f64;
    Ok(Metric::Eval {
        step,
        epoch,
        top1: pct(top1),
        top5: pct(top5),
        samples: n,
    })
}

/// Opens `metrics.jsonl` for appending, first dropping lines past `steps_done` (written by a
/// run that died after its last checkpoint: they are about to be redone).
fn open_metrics(path: &Path, steps_done: u64) -> Result<std::fs::File, TrainError> {
    let err = |source| TrainError::Metrics {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<Metric>(l).is_ok_and(|m| m.step() <= steps_done))
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)
}

fn write_metric(file: &mut std::fs::File, path: &Path, m: &Metric) -> Result<(), TrainError> {
    let line = serde_json::to_string(m).unwrap_or_default();
    writeln!(file, "{line}").map_err(|source| TrainError::Metrics {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_seeds_differ_by_step_and_seed() {
        assert_ne!(step_seed(0, 1), step_seed(0, 2));
        assert_ne!(step_seed(1, 1), step_seed(2, 1));
        assert_eq!(step_seed(7, 9), step_seed(7, 9));
    }

    #[test]
    fn metrics_past_the_checkpoint_are_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut f = open_metrics(&path, 0).unwrap();
        for step in 1..=5 {
            let m = Metric::Step {
                step,
                epoch: 0,
                loss: 1.0,
                lr: 0.1,
                samples_per_s: 1.0,
                data_wait_s: 0.0,
            };
            write_metric(&mut f, &path, &m).unwrap();
        }
        drop(f);
        drop(open_metrics(&path, 3).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
