//! `trainer train`: a recipe's whole run. Batches come from the loader daemon's ring (`--loader
//! SOCKET`) or from a loader started inside this process on the shards (`--shards DIR`, the
//! same rings and protocol; see [`crate::data`]); each step is [`TrainStep`] at the schedule's
//! LR; evaluation ([`crate::eval`]) on the val split every `eval_interval` epochs; atomic
//! checkpoints ([`checkpoint`]) at the end of every epoch and every `checkpoint_interval`
//! steps; one JSON line per step and per eval in `OUT/metrics.jsonl` ([`crate::metrics`]); the
//! resolved recipe in `OUT/recipe.toml`.
//!
//! Everything that can be checked before the model is built is: the recipe's values (when it
//! was read), the output directory, and the loader's splits against `num_classes`.
//!
//! Resuming is exact: the data stream restarts at the checkpoint's (epoch, step), and each
//! rank's Mixup/CutMix and drop-path draws are keyed by (seed + rank, step) alone, so the steps
//! after a resume repeat an uninterrupted run's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use loader::client::{Client, ClientOptions};
use loader::job::Position;

use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;
use crate::data::{DataError, DataJobs, DataSource, check_splits};
use crate::device::{DeviceKind, Precision};
use crate::eval::{EvalError, Target, evaluate};
use crate::lamb::{LambOptions, TimmLamb};
use crate::metrics::{Metric, MetricsError, open_metrics, write_metric};
use crate::ranks::VirtualRanks;
use crate::replicas::{Collective, Placement, Replicas};
use crate::resnet::{ResNet, ResNetConfig};
use crate::step::{HostBatch, StepError, TrainStep};
use crate::upload::{Pixels, Uploader};

/// The resolved recipe of a run, beside its checkpoints (timm writes `args.yaml`).
pub const RECIPE_FILE: &str = "recipe.toml";

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
    /// Devices: one, or several CUDA devices that share the recipe's ranks
    /// ([`crate::replicas`]); the first evaluates and saves.
    pub devices: Vec<DeviceKind>,
    /// Float precision: `--dtype` when given; `None`: the recipe's `amp` decides
    /// ([`Precision::resolve`]).
    pub precision: Option<Precision>,
    /// Stop after this many steps in all (the schedule still spans the recipe's epochs).
    pub max_steps: Option<u64>,
    /// Start a new run from these timm-named safetensors weights (timm's `--initial-checkpoint`
    /// role) instead of a fresh initialization; unused when resuming. A classifier of another
    /// class count is re-initialized (fine-tuning on another label set), all else loads strictly.
    pub init_from: Option<PathBuf>,
    /// With `init_from`: keep the model's freshly initialized classifier even when the class
    /// counts match (a new head for a new label set, as the paper's transfer runs use).
    pub new_head: bool,
    /// Report the SHA-256 of every rank's batch ([`Event::Batch`]), as `loader fetch
    /// --digests` prints them, to check what each rank trained on.
    pub digests: bool,
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
    /// The loader or its splits.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An evaluation.
    #[error(transparent)]
    Eval(#[from] EvalError),
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
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The ranks do not fit the devices.
    #[error(transparent)]
    Placement(#[from] crate::replicas::PlacementError),
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
    /// Something the user should know about the run, said once.
    Note(String),
    /// A rank's batch, with [`TrainOptions::digests`].
    Batch {
        /// The rank.
        rank: usize,
        /// Its position.
        position: Position,
        /// SHA-256 of its images and labels ([`loader::bench::batch_digest`]).
        sha256: String,
    },
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

/// Runs (or resumes) a recipe; returns the last evaluation.
pub fn train(
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Metric>, TrainError> {
    let config = &options.config;
    check_recipe(config)?;
    let jobs = DataJobs::try_from(config).map_err(|e| TrainError::Recipe(e.to_string()))?;
    let recipe_text =
        toml::to_string(config).map_err(|e| TrainError::Recipe(format!("serializing: {e}")))?;
    let existing = checkpoint::latest(&options.out);
    if existing.is_some() && !options.resume {
        return Err(TrainError::Out(format!(
            "{} already holds a run's checkpoints; pass --resume to continue it, or choose \
             another --out",
            options.out.display()
        )));
    }

    // The loader: in this process on the shards, or the daemon. Its splits must fit the
    // recipe before a model is built.
    let batches = options.data.open()?;
    let socket = batches.socket().to_path_buf();
    check_splits(&socket, &jobs, config.num_classes)?;
    std::fs::create_dir_all(&options.out)
        .map_err(|e| TrainError::Out(format!("{}: {e}", options.out.display())))?;
    write_recipe(&options.out, &recipe_text)?;

    let world = config.rsb.world_size.max(1);
    let placement = Placement::new(world, &options.devices)?;
    #[cfg(feature = "cuda")]
    if placement.devices.len() > 1 {
        crate::replicas::check_nccl()?;
    }
    let (precision, note) = Precision::resolve(options.precision, config.amp, placement.devices[0]);
    if let Some(note) = note {
        on_event(Event::Note(note));
    }
    let devices = placement
        .devices
        .iter()
        .map(|d| Ok(d.device(precision)?.autodiff()))
        .collect::<Result<Vec<_>, TrainError>>()?;
    let device = devices[0].clone();
    device.seed(config.seed);
    let model_cfg = model_config(config)?;
    let model = model_cfg.init(&device)?;
    let params = model.trainable_params();
    // The optimizer's groups are keyed by parameter id: build it after the checkpoint's ids
    // are in place.
    let lamb = |model: &ResNet| TimmLamb::new(&LambOptions::timm(config.weight_decay), model);
    let (mut model, optimizer, state) = match &existing {
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
                Some(path) => {
                    let fresh_head = options.new_head.then(|| model.fc.clone());
                    let (mut model, renewed) = init_from(model, path, &device)?;
                    let why = match (renewed.is_empty(), fresh_head) {
                        (false, _) => Some(format!(
                            "its classifier has another class count than num_classes = {}",
                            config.num_classes
                        )),
                        (true, Some(fc)) => {
                            model.fc = fc;
                            Some("--new-head".to_string())
                        }
                        (true, None) => None,
                    };
                    if let Some(why) = why {
                        on_event(Event::Note(format!(
                            "--init-from {}: {why}; fc.weight and fc.bias keep their fresh \
                             initialization, every other tensor is the file's",
                            path.display(),
                        )));
                    }
                    model
                }
                None => model,
            };
            let optimizer = lamb(&model);
            let state = RunState {
                steps_done: 0,
                next: Position::default(),
                config: recipe_text.clone(),
                dataset: None,
            };
            (model, optimizer, state)
        }
    };
    model.compute = precision.compute();
    let metrics_path = options.out.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, state.steps_done)?;

    let step = TrainStep {
        model: Some(model),
        optimizer,
        mixup: config.mixup_config(),
        loss: config.loss(),
        seed: config.seed,
        upload: Arc::new(Uploader::new(placement.devices[0])),
    };
    let ranks = {
        let model = step.model().ok_or(StepError::Poisoned)?;
        match &existing {
            Some(dir) if world > 1 => VirtualRanks {
                stats: checkpoint::load_ranks(dir, model, world, &device)?,
            },
            _ => VirtualRanks::new(model, world),
        }
    };
    let mut engine = if devices.len() == 1 {
        Engine::One {
            step: Box::new(step),
            ranks,
        }
    } else {
        // Every replica's LAMB starts where the checkpoint's (or a fresh one) does.
        let optimizer = |model: &ResNet| -> Result<TimmLamb, TrainError> {
            Ok(match &existing {
                Some(dir) => checkpoint::load_optimizer(dir, lamb(model))?,
                None => lamb(model),
            })
        };
        Engine::Many(Replicas::new(
            step,
            ranks.stats,
            &devices,
            Collective::Nccl,
            &optimizer,
        )?)
    };
    let schedule = config.schedule();
    let epochs = u32::try_from(config.epochs + config.cooldown_epochs)
        .map_err(|_| TrainError::Recipe("epochs too large".into()))?;
    // One loader stream per rank: rank r of a `world_size`-rank job, all under one job id, so
    // the daemon serves them as one group and decodes each image once for all its copies.
    let job_id = format!("train-{}", std::process::id());
    let mut clients = (0..world)
        .map(|rank| {
            Client::connect(ClientOptions {
                socket: socket.clone(),
                job_id: job_id.clone(),
                job: jobs.train_rank(world, rank),
                start: state.next,
                epochs: Some(epochs),
                slots: None,
                reconnect_timeout: std::time::Duration::from_secs(300),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(DataError::from)?;
    // The positions of the checkpoint name batches of the split it was trained on.
    let dataset = clients
        .first()
        .and_then(Client::split)
        .map(|s| s.fingerprint.clone())
        .unwrap_or_default();
    if let Some(was) = state.dataset.as_ref().filter(|was| **was != dataset) {
        return Err(TrainError::Out(format!(
            "{} was trained on another pack of split {:?} (index XXH3 {was}, the loader now \
             serves {dataset}); resume with the dataset the run started with",
            options.out.display(),
            jobs.train.split
        )));
    }
    // timm's samplers give every rank the same number of batches; a rank with fewer would
    // leave the others waiting for it forever under DDP.
    let spe = clients.first().map_or(0, Client::steps_per_epoch);
    if let Some(c) = clients.iter().find(|c| c.steps_per_epoch() != spe) {
        return Err(TrainError::Recipe(format!(
            "the loader gives rank 0 {spe} batches per epoch and another rank {}; every rank \
             must get as many",
            c.steps_per_epoch()
        )));
    }
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
    let mut pending: Option<Issued> = None;
    let mut issued_before = engine.step().upload.issuing_s();
    while steps_done < total_steps {
        let t_wait = Instant::now();
        let mut held = Vec::with_capacity(world);
        for client in &mut clients {
            match client.next_batch().map_err(DataError::from)? {
                Some(batch) => held.push(batch),
                None => break,
            }
        }
        if held.len() < world {
            break;
        }
        let data_wait_s = t_wait.elapsed().as_secs_f64();
        let at = held[0].position;
        if let Some(b) = held.iter().find(|b| b.position != at) {
            return Err(TrainError::Recipe(format!(
                "rank batches out of step: rank 0 at {at:?}, another at {:?}",
                b.position
            )));
        }
        if options.digests {
            for (rank, batch) in held.iter().enumerate() {
                on_event(Event::Batch {
                    rank,
                    position: batch.position,
                    sha256: loader::bench::batch_digest(batch.images(), batch.labels()),
                });
            }
        }
        let lr = schedule.lr(u64::from(at.epoch), at.step, spe);
        // Each slot is shared with its upload, which releases it once the copy is done.
        let held: Vec<Arc<loader::client::Batch>> = held.into_iter().map(Arc::new).collect();
        let hosts: Vec<HostBatch<'_>> = held
            .iter()
            .map(|batch| HostBatch {
                pixels: Pixels::Slot(Arc::clone(batch)),
                shape: [batch.count, side, side],
                labels: batch.labels(),
                step: steps_done,
            })
            .collect();
        // Each rank's Mixup/CutMix and drop-path draws are keyed by (seed + rank, step).
        let losses = match &mut engine {
            Engine::One { step, ranks } => ranks.step(step, &hosts, lr, &device)?,
            Engine::Many(replicas) => replicas.step(&hosts, lr)?,
        };
        drop(hosts);
        drop(held);
        if let Some(note) = engine.step().upload.take_note() {
            on_event(Event::Note(note));
        }
        let issuing = engine.step().upload.issuing_s();
        steps_done += 1;
        // Depth 2: the previous step's loss is read back now, with this step queued behind it,
        // so the device never waits for the host to fetch, upload and issue the next batch.
        let issued = Issued {
            losses,
            step: steps_done,
            epoch: at.epoch,
            lr,
            data_wait_s,
            upload_s: issuing - issued_before,
        };
        issued_before = issuing;
        if let Some(previous) = pending.replace(issued) {
            let m = previous.read(config.global_batch(), &mut t_prev);
            write_metric(&mut metrics, &metrics_path, &m)?;
            on_event(Event::Metric(m));
        }

        let next = at.next(spe);
        let epoch_done = next.epoch != at.epoch;
        let last = steps_done == total_steps;
        let interval = config.rsb.checkpoint_interval;
        let checkpoint = epoch_done || last || (interval > 0 && steps_done % interval == 0);
        // Before an evaluation or a checkpoint, every step's metric is written: a checkpoint
        // never stands ahead of the metrics a resume keeps.
        if checkpoint && let Some(p) = pending.take() {
            let m = p.read(config.global_batch(), &mut t_prev);
            write_metric(&mut metrics, &metrics_path, &m)?;
            on_event(Event::Metric(m));
        }
        if epoch_done {
            // timm's `--dist-bn reduce` before its end-of-epoch evaluation.
            engine.reduce_bn()?;
        }
        let model = engine.step().model().ok_or(StepError::Poisoned)?;
        if (epoch_done
            && (u64::from(next.epoch) % config.rsb.eval_interval.max(1) == 0
                || next.epoch == epochs))
            || last
        {
            let target = Target {
                model,
                device: &device,
                upload: &engine.step().upload,
            };
            let m = evaluate(
                &target,
                &socket,
                &jobs.eval,
                steps_done,
                next.epoch,
                &mut |_, _| {},
            )?;
            write_metric(&mut metrics, &metrics_path, &m)?;
            on_event(Event::Metric(m.clone()));
            last_eval = Some(m);
        }
        if checkpoint {
            let state = RunState {
                steps_done,
                next,
                config: recipe_text.clone(),
                dataset: Some(dataset.clone()),
            };
            // One rank's statistics are the model's own: the file is only for several.
            let stats = if world > 1 {
                Some(engine.all_stats()?)
            } else {
                None
            };
            let optimizer = &engine.step().optimizer;
            let dir = checkpoint::save(&options.out, model, optimizer, stats.as_ref(), &state)?;
            on_event(Event::Checkpoint(dir));
        }
    }
    // A stream that ended early leaves its last step unread.
    if let Some(p) = pending.take() {
        let m = p.read(config.global_batch(), &mut t_prev);
        write_metric(&mut metrics, &metrics_path, &m)?;
        on_event(Event::Metric(m));
    }
    Ok(last_eval)
}

/// A step issued to the device whose loss is not read back yet.
struct Issued {
    losses: Vec<burn::tensor::Tensor<1>>,
    step: u64,
    epoch: u32,
    lr: f64,
    data_wait_s: f64,
    upload_s: f64,
}

impl Issued {
    /// Reads the loss back (waiting for the step to finish) and makes its metric; `t_prev` is
    /// when the step before was read back.
    fn read(self, global_batch: usize, t_prev: &mut Instant) -> Metric {
        let ranks = self.losses.len().max(1);
        let loss = self
            .losses
            .into_iter()
            .map(|l| f64::from(l.into_scalar::<f32>()))
            .sum::<f64>()
            / ranks as f64;
        let now = Instant::now();
        let m = Metric::Step {
            step: self.step,
            epoch: self.epoch,
            loss,
            lr: self.lr,
            global_batch,
            samples_per_s: global_batch as f64 / (now - *t_prev).as_secs_f64(),
            data_wait_s: self.data_wait_s,
            upload_s: self.upload_s,
        };
        *t_prev = now;
        m
    }
}

/// `model` with the weights of `path`: timm-named safetensors, or a checkpoint directory of
/// another run (its own recipe builds the model its weights fit); a classifier of another class
/// count stays freshly initialized. Returns the tensors so kept.
fn init_from(
    model: ResNet,
    path: &Path,
    device: &burn::tensor::Device,
) -> Result<(ResNet, Vec<String>), TrainError> {
    if !path.is_dir() {
        return Ok(crate::weights::import_backbone(model, path)?);
    }
    let state = checkpoint::read_state(path)?;
    let origin = path.join("state.json");
    let recipe = TrainConfig::parse(&state.config, &origin.display().to_string())
        .map_err(|e| TrainError::Recipe(format!("--init-from {}: {e}", path.display())))?
        .config;
    let theirs = checkpoint::load_model(path, model_config(&recipe)?.init(device)?)?;
    Ok(crate::weights::backbone_from(model, &theirs, path)?)
}

/// The ranks of a run and where they train.
enum Engine {
    /// One device: the ranks as virtual ranks.
    One {
        step: Box<TrainStep>,
        ranks: VirtualRanks,
    },
    /// Several devices, each with its share of the ranks.
    Many(Replicas),
}

impl Engine {
    /// The step whose model is evaluated and saved (the first device's).
    fn step(&self) -> &TrainStep {
        match self {
            Engine::One { step, .. } => step,
            Engine::Many(r) => r.primary(),
        }
    }

    /// timm's `--dist-bn reduce` over every rank.
    fn reduce_bn(&mut self) -> Result<(), StepError> {
        match self {
            Engine::One { step, ranks } => {
                ranks.stats.reduce(step.model().ok_or(StepError::Poisoned)?);
                Ok(())
            }
            Engine::Many(r) => r.reduce_bn(),
        }
    }

    /// Every rank's BN statistics, for a checkpoint.
    fn all_stats(&self) -> Result<crate::ranks::RankStats, StepError> {
        match self {
            Engine::One { ranks, .. } => Ok(ranks.stats.clone()),
            Engine::Many(r) => r.all_stats(),
        }
    }
}

/// Writes the resolved recipe to `OUT/recipe.toml` (atomically: a temporary file, synced,
/// renamed).
fn write_recipe(out: &Path, text: &str) -> Result<(), TrainError> {
    let path = out.join(RECIPE_FILE);
    let header = "# The resolved recipe of this run: the --config file with the command line's \
                  overrides applied.\n";
    shard_tool::writer::write_atomic(&path, |w| {
        std::io::Write::write_all(w, format!("{header}{text}").as_bytes())
    })
    .map_err(|e| TrainError::Out(e.chain()))
}
