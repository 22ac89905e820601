//! `trainer train`: a recipe's whole run. Batches come from the loader daemon's ring (`--loader
//! SOCKET`) or from a loader started inside this process on the shards (`--shards DIR`, the
//! same rings and protocol; see [`crate::data::source`]); the recipe's ranks take each step
//! (`crate::ranks::World`) at the schedule's LR; evaluation ([`crate::eval`]) on the val split
//! every `eval_interval` epochs; atomic checkpoints ([`checkpoint`]) at the end of every epoch
//! and every `checkpoint_interval` steps; one JSON line per step and per eval in
//! `metrics.jsonl` ([`metrics`]); the resolved recipe in `recipe.toml`. [`RunDir`] owns every
//! file of a run; [`weights`] is the one way weights reach a device.
//!
//! Everything that can be checked before the model is built is: the recipe's values (when it
//! was read, by the recipe's gate), the output directory, and the loader's splits against
//! `num_classes`.
//!
//! Resuming is exact: the data stream restarts at the checkpoint's (epoch, step), and each
//! rank's Mixup/CutMix and drop-path draws are keyed by (seed + rank, step) alone, so the steps
//! after a resume repeat an uninterrupted run's.

pub mod checkpoint;
mod dir;
pub mod metrics;
pub mod preview;
pub mod prometheus;
pub mod summary;
pub mod tensorboard;
mod timing;
pub mod weights;

pub use checkpoint::{Checkpoint, CheckpointError, RunState};
pub use dir::{CachedSet, RunDir, RunDirError, write_file};
pub use weights::{OnDevice, Weights, WeightsError};

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use loader::request::job::Position;
use loader::wire::client::{Batch, Client, ClientOptions};

use crate::data::source::{Batches, DataError, DataSource, check_splits};
use crate::data::upload::{Pixels, Uploader};
use crate::device::{DeviceKind, Precision};
use crate::eval::{EvalError, Target, evaluate};
use crate::model::{ResNet, seeded};
use crate::optim::lamb::{LambOptions, TimmLamb};
use crate::ranks::processes::{ProcessError, ProcessPlacement, Processes, agree};
use crate::ranks::replicas::{Collective, Placement, PlacementError, Replicas};
use crate::ranks::virtual_ranks::VirtualRanks;
use crate::ranks::{Devices, World};
use crate::recipe::{DataJobs, TrainConfig};
use crate::step::{HostBatch, StepError, TrainStep};
use checkpoint::Contents;
use metrics::{Metric, MetricsError, MetricsLog};
use tensorboard::{EventFile, TensorBoardError, recipe_markdown};
use timing::Issued;

/// Settings of a run besides the recipe.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The recipe (read through the recipe's gate).
    pub config: TrainConfig,
    /// Batches.
    pub data: DataSource,
    /// The run directory: recipe, metrics, checkpoints.
    pub out: RunDir,
    /// Continue from `out`'s latest checkpoint (start fresh if there is none).
    pub resume: bool,
    /// Devices: one, or several CUDA devices that share the recipe's ranks
    /// ([`crate::ranks::replicas`]); the first evaluates and saves.
    pub devices: Vec<DeviceKind>,
    /// Float precision: `--dtype` when given; `None`: the recipe's `amp` decides
    /// ([`Precision::resolve`]).
    pub precision: Option<Precision>,
    /// Stop after this many steps in all (the schedule still spans the recipe's epochs).
    pub max_steps: Option<u64>,
    /// Start a new run from these weights (timm's `--initial-checkpoint` role) instead of a
    /// fresh initialization; unused when resuming. A classifier of another class count is
    /// re-initialized (fine-tuning on another label set), all else loads strictly.
    pub init_from: Option<Weights>,
    /// With `init_from`: keep the model's freshly initialized classifier even when the class
    /// counts match (a new head for a new label set, as the paper's transfer runs use).
    pub new_head: bool,
    /// Report the SHA-256 of every rank's batch ([`Event::Batch`]), as `loader fetch
    /// --digests` prints them, to check what each rank trained on.
    pub digests: bool,
    /// Serve the run's Prometheus metrics here ([`prometheus`]; process 0).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The run's processes ([`crate::ranks::processes`]): this one holds its share of the
    /// ranks; process 0 writes the run directory.
    pub processes: Rc<dyn Processes>,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The output directory holds a run and `--resume` was not given, or belongs to another
    /// recipe or dataset.
    #[error("{0}")]
    Out(String),
    /// The loader's stream does not fit the run.
    #[error("{0}")]
    Stream(String),
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
    Model(#[from] crate::model::resnet::ConfigError),
    /// A step.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// `init_from` weights that do not load.
    #[error("--init-from: {0}")]
    InitFrom(#[from] WeightsError),
    /// Writing metrics.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The Prometheus endpoint (`--metrics-listen`) could not start.
    #[error(transparent)]
    Prometheus(#[from] loader::server::prometheus::PrometheusError),
    /// Starting the TensorBoard event file (a failure later is a warning).
    #[error("TensorBoard event file: {0}")]
    TensorBoard(#[from] TensorBoardError),
    /// The run directory.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The ranks do not fit the devices.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The ranks do not fit the processes, the processes disagree, or one left.
    #[error(transparent)]
    Processes(#[from] ProcessError),
    /// The loss or the weights went NaN or infinite: the run stopped there.
    #[error(
        "step {step}: {what}; training stopped. {last_good} What usually helps: a lower --lr \
         or a longer --warmup-epochs, --clip-grad 1, or --dtype f32 where amp was on"
    )]
    Diverged {
        /// The step (1-based, as `metrics.jsonl` counts).
        step: u64,
        /// What was found.
        what: String,
        /// Where to go on from.
        last_good: String,
    },
}

impl From<crate::ranks::WorldError> for TrainError {
    fn from(e: crate::ranks::WorldError) -> TrainError {
        match e {
            crate::ranks::WorldError::Step(e) => TrainError::Step(e),
            crate::ranks::WorldError::Processes(e) => TrainError::Processes(e),
        }
    }
}

impl TrainError {
    /// Whether the user's input is at fault (the output directory, the dataset, the weights
    /// to start from), as opposed to a failure while running: what exits with status 2.
    pub fn is_bad_input(&self) -> bool {
        match self {
            TrainError::Out(_) | TrainError::Placement(_) | TrainError::Prometheus(_) => true,
            TrainError::Data(e) => e.is_bad_input(),
            TrainError::Eval(e) => e.is_bad_input(),
            TrainError::Checkpoint(e) => e.is_bad_input(),
            TrainError::InitFrom(e) => e.is_bad_input(),
            TrainError::Device(e) => e.is_bad_input(),
            TrainError::Processes(e) => e.is_bad_input(),
            TrainError::Stream(_)
            | TrainError::Model(_)
            | TrainError::Step(_)
            | TrainError::Metrics(_)
            | TrainError::TensorBoard(_)
            | TrainError::RunDir(_)
            | TrainError::Diverged { .. } => false,
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
    Checkpoint(Checkpoint),
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

/// Runs (or resumes) a recipe; returns the last evaluation.
///
/// # Errors
/// [`TrainError`]: everything that can be checked before the model is built is checked first
/// (the output directory, the loader and its splits); a failure later leaves the last
/// checkpoint for `--resume`.
pub fn train(
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Metric>, TrainError> {
    let mut run = Run::set_up(options, on_event)?;
    run.train(on_event)
}

/// A run set up: the loader's streams open, the model and its ranks on their devices.
struct Run<'a> {
    options: &'a TrainOptions,
    jobs: DataJobs,
    recipe_text: String,
    world: World,
    clients: Vec<Client>,
    /// The training split's identity, stored in each checkpoint.
    dataset: String,
    steps_per_epoch: u64,
    total_steps: u64,
    steps_done: u64,
    /// Process 0's; the other processes write nothing to the run directory.
    metrics: Option<MetricsLog>,
    /// Process 0's TensorBoard events; dropped, with a warning, when a write fails.
    tensorboard: Option<EventFile>,
    /// Process 0's Prometheus metrics, with `--metrics-listen`.
    prometheus: Option<prometheus::RunMetrics>,
    last_eval: Option<Metric>,
    /// Keeps an in-process loader alive for the run; declared last, so it stops after the
    /// clients of its streams are dropped.
    batches: Batches,
}

/// Where a run starts: the model with its weights, its optimizer and its position.
struct Start {
    model: ResNet,
    optimizer: TimmLamb,
    state: RunState,
}

impl<'a> Run<'a> {
    /// Everything before the first step, the cheap checks first.
    fn set_up(
        options: &'a TrainOptions,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Run<'a>, TrainError> {
        let config = &options.config;
        let processes = &*options.processes;
        let placement = ProcessPlacement::new(config.rsb.world_size.max(1), processes)?;
        let jobs = config.jobs().map_err(|e| TrainError::Out(e.to_string()))?;
        let recipe_text = config.to_toml();
        agree(processes, "the recipe", recipe_text.as_bytes())?;
        let existing = options.out.latest();
        if existing.is_some() && !options.resume {
            return Err(TrainError::Out(format!(
                "{} already holds a run's checkpoints; pass --resume to continue it, or choose \
                 another --out",
                options.out.root().display()
            )));
        }
        // The loader: in this process on the shards, or the daemon. Its splits must fit the
        // recipe before a model is built.
        let batches = options.data.open()?;
        check_splits(batches.socket(), &jobs.splits(), config.num_classes)?;
        let writes = processes.index() == 0;
        // Before anything is written: a port that is taken stops the run at once.
        let prometheus = match options.metrics_listen.filter(|_| writes) {
            Some(addr) => {
                let metrics = prometheus::RunMetrics::new();
                let bound = metrics.serve(addr)?;
                on_event(Event::Note(format!(
                    "Prometheus metrics on http://{bound}/metrics"
                )));
                Some(metrics)
            }
            None => None,
        };
        if writes {
            options.out.create()?;
            for warning in options.out.tidy()? {
                on_event(Event::Note(warning));
            }
            options.out.write_recipe(&recipe_text)?;
        }
        if processes.count() > 1 {
            on_event(Event::Note(format!(
                "{}; ranks {:?} in this process",
                processes.describe(),
                placement.ranks()
            )));
        }

        let (devices, kinds, precision) = open_devices(options, on_event)?;
        let start = start(
            options,
            existing.as_ref(),
            &recipe_text,
            (kinds[0], &devices[0]),
            on_event,
        )?;
        let params = start.model.trainable_params();
        let mut model = start.model;
        model.compute = precision.compute();
        let step = TrainStep {
            model: Some(model),
            optimizer: start.optimizer,
            mixup: config.mixup_config(),
            loss: config.loss(),
            seed: config.seed,
            upload: Arc::new(Uploader::new(kinds[0])),
        };
        let devices = world(step, existing.as_ref(), config, &devices, placement)?;
        let world = World {
            devices,
            processes: Rc::clone(&options.processes),
            placement,
        };
        let job_id = job_id(processes)?;
        let clients = connect(
            batches.socket(),
            &jobs,
            &job_id,
            placement,
            &start.state,
            config,
        )?;
        let dataset = check_dataset(&clients, &start.state, options, &jobs)?;
        let steps_per_epoch = steps_per_epoch(&clients)?;
        // Every process must step as many times from the same place, or one would wait in a
        // sum the others never join.
        let start_at = format!(
            "{} steps done, {steps_per_epoch} per epoch",
            start.state.steps_done
        );
        agree(processes, "where the run starts", start_at.as_bytes())?;
        let all_steps = steps_per_epoch * u64::from(config.total_epochs());
        let total_steps = options.max_steps.map_or(all_steps, |m| m.min(all_steps));
        if let Some(checkpoint) = &existing {
            check_state(&start.state, checkpoint, steps_per_epoch, all_steps)?;
        }
        // After the state is trusted: opening the log drops its lines past `steps_done`.
        let (metrics, tensorboard) = if writes {
            let steps_done = start.state.steps_done;
            let mut events = options.out.event_file(steps_done)?;
            events.text(steps_done, "recipe", &recipe_markdown(&recipe_text))?;
            (Some(options.out.metrics_log(steps_done)?), Some(events))
        } else {
            (None, None)
        };
        on_event(Event::Started {
            start_step: start.state.steps_done,
            total_steps,
            steps_per_epoch,
            params,
        });
        Ok(Run {
            options,
            jobs,
            recipe_text,
            world,
            clients,
            dataset,
            steps_per_epoch,
            total_steps,
            steps_done: start.state.steps_done,
            metrics,
            tensorboard,
            prometheus,
            last_eval: None,
            batches,
        })
    }

    /// The loop: a step per batch of every rank, each step's loss read back after the next
    /// step is issued (depth 2), evaluations and checkpoints where the recipe puts them.
    fn train(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<Option<Metric>, TrainError> {
        let mut pending: Option<Issued> = None;
        while self.steps_done < self.total_steps {
            let began = Instant::now();
            if let Some(p) = pending.as_mut() {
                p.end_at(began);
            }
            let Some(held) = self.next_batches()? else {
                break;
            };
            let data_wait_s = began.elapsed().as_secs_f64();
            let at = held[0].position;
            if self.options.digests {
                report_digests(&held, self.world.placement.ranks().start, on_event);
            }
            if self.steps_done == 0 {
                self.record_preview(&held[0], on_event);
            }
            let issued = self.step(held, at, began, data_wait_s, on_event)?;
            // Depth 2: the previous step's loss is read back now, with this step queued behind
            // it, so the device never waits for the host to fetch, upload and issue the next
            // batch.
            if let Some(previous) = pending.replace(issued) {
                self.write_step(previous, on_event)?;
            }
            let next = at.next(self.steps_per_epoch);
            let epoch_done = next.epoch != at.epoch;
            let last = self.steps_done == self.total_steps;
            let interval = self.options.config.rsb.checkpoint_interval;
            let checkpoint =
                epoch_done || last || (interval > 0 && self.steps_done.is_multiple_of(interval));
            // Before an evaluation or a checkpoint, every step's metric is written: a
            // checkpoint never stands ahead of the metrics a resume keeps.
            if checkpoint && let Some(p) = pending.take() {
                self.write_step(p, on_event)?;
            }
            if epoch_done {
                // timm's `--dist-bn reduce` before its end-of-epoch evaluation.
                self.world.reduce_bn()?;
            }
            if (epoch_done && self.evaluates_after(next.epoch)) || last {
                self.evaluate(next.epoch, on_event)?;
            }
            if epoch_done || last {
                self.write_summary(on_event);
            }
            if checkpoint {
                self.checkpoint(next, on_event)?;
            }
        }
        // A stream that ended early leaves its last step unread.
        if let Some(p) = pending.take() {
            self.write_step(p, on_event)?;
        }
        Ok(self.last_eval.take())
    }

    /// One batch from every rank's stream, all at one position; `None` when a stream ended.
    fn next_batches(&mut self) -> Result<Option<Vec<Batch>>, TrainError> {
        let mut held = Vec::with_capacity(self.clients.len());
        for client in &mut self.clients {
            match client.next_batch().map_err(DataError::from)? {
                Some(batch) => held.push(batch),
                None => return Ok(None),
            }
        }
        let at = held[0].position;
        if let Some(b) = held.iter().find(|b| b.position != at) {
            return Err(TrainError::Stream(format!(
                "rank batches out of step: rank 0 at {at:?}, another at {:?}",
                b.position
            )));
        }
        Ok(Some(held))
    }

    /// Issues one step on every rank's batch at `at`; the step is not read back.
    fn step(
        &mut self,
        held: Vec<Batch>,
        at: Position,
        began: Instant,
        data_wait_s: f64,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Issued, TrainError> {
        let config = &self.options.config;
        let lr = config
            .schedule()
            .lr(u64::from(at.epoch), at.step, self.steps_per_epoch);
        let issued_before = self.world.primary().upload.issuing_s();
        // Each slot is shared with its upload, which releases it once the copy is done.
        let held: Vec<Arc<Batch>> = held.into_iter().map(Arc::new).collect();
        let hosts: Vec<HostBatch<'_>> = held
            .iter()
            .map(|batch| HostBatch {
                pixels: Pixels::Slot(Arc::clone(batch)),
                shape: [batch.count, config.img_size, config.img_size],
                labels: batch.labels(),
                step: self.steps_done,
            })
            .collect();
        // Each rank's Mixup/CutMix and drop-path draws are keyed by (seed + rank, step).
        let losses = self.world.step(&hosts, lr)?;
        drop(hosts);
        drop(held);
        let upload = &self.world.primary().upload;
        if let Some(note) = upload.take_note() {
            on_event(Event::Note(note));
        }
        self.steps_done += 1;
        Ok(Issued {
            losses,
            step: self.steps_done,
            epoch: at.epoch,
            lr,
            data_wait_s,
            upload_s: upload.issuing_s() - issued_before,
            began,
            ended: None,
        })
    }

    /// Reads a step back and writes its line.
    fn write_step(
        &mut self,
        issued: Issued,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), TrainError> {
        let m = issued.read(self.options.config.global_batch(), &*self.world.processes)?;
        if let Metric::Step { step, loss, .. } = m
            && !loss.is_finite()
        {
            // Not written: every line of metrics.jsonl stays one the trainer reads back.
            return Err(self.diverged(step, format!("the loss is {loss}")));
        }
        self.record(m, on_event)
    }

    /// Writes a metric line (process 0): to `metrics.jsonl`, whose failure stops the run, and
    /// to TensorBoard, whose failure is a warning (the events are a view of the metrics).
    fn record(&mut self, m: Metric, on_event: &mut dyn FnMut(Event)) -> Result<(), TrainError> {
        let Some(metrics) = &mut self.metrics else {
            return Ok(());
        };
        metrics.append(&m)?;
        if let Some(p) = &self.prometheus {
            p.record(&m);
        }
        let written = self.tensorboard.as_mut().map(|t| t.metric(&m));
        self.tensorboard_written(written, on_event);
        on_event(Event::Metric(m));
        Ok(())
    }

    /// Drops the event file after a failed write, saying so once.
    fn tensorboard_written(
        &mut self,
        written: Option<Result<(), TensorBoardError>>,
        on_event: &mut dyn FnMut(Event),
    ) {
        if let Some(Err(e)) = written {
            self.tensorboard = None;
            on_event(Event::Note(format!(
                "warning: TensorBoard events stop here ({e}); training goes on, and \
                 metrics.jsonl keeps every step"
            )));
        }
    }

    /// The first batch's images as a grid in TensorBoard (a fresh run's first step).
    fn record_preview(&mut self, batch: &Batch, on_event: &mut dyn FnMut(Event)) {
        let Some(events) = &mut self.tensorboard else {
            return;
        };
        let grid = preview::grid(batch.images(), self.options.config.img_size);
        let written = preview::encode_png(&grid.pixels, grid.width, grid.height)
            .map_err(|message| TensorBoardError {
                path: events.path().to_path_buf(),
                message,
            })
            .and_then(|png| events.image(0, "train_samples", png, (grid.width, grid.height)));
        self.tensorboard_written(Some(written), on_event);
    }

    /// Whether the recipe evaluates at the end of epoch `epochs_done` (every `eval_interval`
    /// epochs, and after the last).
    fn evaluates_after(&self, epochs_done: u32) -> bool {
        let config = &self.options.config;
        u64::from(epochs_done) % config.rsb.eval_interval.max(1) == 0
            || epochs_done == config.total_epochs()
    }

    /// Evaluates the primary model on the val split and writes the line (process 0; the
    /// others go on to the next step and wait for it there).
    fn evaluate(&mut self, epoch: u32, on_event: &mut dyn FnMut(Event)) -> Result<(), TrainError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        let step = self.world.primary();
        let target = Target {
            model: step.model().ok_or(StepError::Poisoned)?,
            device: self.world.device(),
            upload: &step.upload,
        };
        let a = evaluate(
            &target,
            self.batches.socket(),
            &self.jobs.eval,
            &mut |_, _| {},
        )?;
        if a.non_finite > 0 {
            on_event(Event::Note(format!(
                "evaluation after step {}: {} of {} images had NaN or infinite logits, counted \
                 wrong",
                self.steps_done, a.non_finite, a.samples
            )));
        }
        let m = Metric::Eval {
            step: self.steps_done,
            epoch,
            top1: a.top1,
            top5: a.top5,
            samples: a.samples,
            loss: Some(a.loss),
        };
        self.last_eval = Some(m.clone());
        self.record(m, on_event)
    }

    /// Rewrites timm's `summary.csv` from `metrics.jsonl`. A failure (a full disk) is a
    /// warning: the summary is a view of the metrics, never worth the run.
    fn write_summary(&self, on_event: &mut dyn FnMut(Event)) {
        if self.metrics.is_none() {
            return;
        }
        let out = &self.options.out;
        let written = metrics::read_metrics(&out.metrics())
            .map_err(|e| e.to_string())
            .and_then(|m| summary::write(&out.summary(), &m));
        if let Err(e) = written {
            on_event(Event::Note(format!(
                "warning: summary.csv not written: {e}"
            )));
        }
    }

    /// The error that stops a run at `step`, naming the checkpoint to go on from.
    fn diverged(&self, step: u64, what: String) -> TrainError {
        let last_good = match self.options.out.latest() {
            Some(c) => format!(
                "The last checkpoint, {} (step {}), holds finite weights: --resume goes on \
                 from it (metrics.jsonl holds no NaN line).",
                c.dir().display(),
                c.state()
                    .map_or_else(|_| "?".to_string(), |s| s.steps_done.to_string())
            ),
            None => "No checkpoint was written before it.".to_string(),
        };
        TrainError::Diverged {
            step,
            what,
            last_good,
        }
    }

    /// Writes a checkpoint whose next batch is `next`.
    fn checkpoint(
        &mut self,
        next: Position,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), TrainError> {
        let state = RunState {
            steps_done: self.steps_done,
            next,
            config: self.recipe_text.clone(),
            dataset: Some(self.dataset.clone()),
        };
        // One rank's statistics are the model's own: the file is only for several. Every
        // process gathers them (a collective) and checks its weights (the same on all).
        let stats = if self.world.placement.world > 1 {
            Some(self.world.all_stats()?)
        } else {
            None
        };
        let step = self.world.primary();
        let model = step.model().ok_or(StepError::Poisoned)?;
        // A finite loss does not vouch for the update that followed it: the weights are
        // checked before they become the checkpoint a resume would trust.
        let non_finite = model.non_finite_values();
        if non_finite > 0 {
            let what = format!("{non_finite} weights are NaN or infinite after it");
            return Err(self.diverged(self.steps_done, what));
        }
        if self.metrics.is_none() {
            return Ok(());
        }
        let saved = self.options.out.save_checkpoint(&Contents {
            model,
            optimizer: &step.optimizer,
            ranks: stats.as_ref(),
            state: &state,
        })?;
        on_event(Event::Checkpoint(saved));
        Ok(())
    }
}

/// The run's devices (with gradient recording; `start` seeds the first as it draws the
/// model), their kinds, and the float types they use: the recipe's ranks placed on
/// `options.devices`.
fn open_devices(
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<(Vec<Device>, Vec<DeviceKind>, Precision), TrainError> {
    let config = &options.config;
    let placement = Placement::new(config.rsb.world_size.max(1), &options.devices)?;
    #[cfg(feature = "cuda")]
    if placement.devices.len() > 1 {
        crate::ranks::replicas::check_nccl()?;
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
    Ok((devices, placement.devices, precision))
}

/// A checkpoint's `state.json` checked against itself and the run: its step count must be
/// where its next batch is (at the run's steps per epoch) and within the recipe's steps. A
/// state that says otherwise was edited or damaged; trusted, `steps_done = u64::MAX` once
/// "resumed" a run without training a step, and a count behind its position would have cut
/// `metrics.jsonl`.
fn check_state(
    state: &RunState,
    checkpoint: &Checkpoint,
    steps_per_epoch: u64,
    all_steps: u64,
) -> Result<(), TrainError> {
    let at = u64::from(state.next.epoch)
        .checked_mul(steps_per_epoch)
        .and_then(|s| s.checked_add(state.next.step));
    if at == Some(state.steps_done) && state.steps_done <= all_steps {
        return Ok(());
    }
    Err(TrainError::Out(format!(
        "{}: steps_done {} does not fit next = epoch {}, step {} at {steps_per_epoch} steps per \
         epoch ({all_steps} in the recipe); the file was edited or damaged: resume from another \
         ckpt-* of the run (point `latest` at it) or start a new --out",
        checkpoint.dir().join("state.json").display(),
        state.steps_done,
        state.next.epoch,
        state.next.step,
    )))
}

/// The model, optimizer and position a run starts from: the checkpoint's when resuming, else
/// fresh (with `--init-from`'s weights).
fn start(
    options: &TrainOptions,
    existing: Option<&Checkpoint>,
    recipe_text: &str,
    (kind, device): (DeviceKind, &Device),
    on_event: &mut dyn FnMut(Event),
) -> Result<Start, TrainError> {
    let config = &options.config;
    let model = seeded::init(&config.model()?, kind, device, config.seed)?;
    // The optimizer's groups are keyed by parameter id: build it after the checkpoint's ids
    // are in place.
    let lamb = |model: &ResNet| TimmLamb::new(&LambOptions::timm(config.weight_decay), model);
    if let Some(checkpoint) = existing {
        let state = checkpoint.state()?;
        if state.config != recipe_text {
            return Err(TrainError::Out(format!(
                "{} was written with another recipe; resume with the same config file (or \
                 start a new --out)",
                checkpoint.dir().display()
            )));
        }
        let model = checkpoint.load_model(model)?;
        let optimizer = checkpoint.load_optimizer(lamb(&model))?;
        return Ok(Start {
            model,
            optimizer,
            state,
        });
    }
    let model = match &options.init_from {
        Some(weights) => init_from(model, weights, options, device, on_event)?,
        None => model,
    };
    Ok(Start {
        optimizer: lamb(&model),
        model,
        state: RunState {
            steps_done: 0,
            next: Position::default(),
            config: recipe_text.to_owned(),
            dataset: None,
        },
    })
}

/// `model` with the backbone of `weights` (`--init-from`), its classifier renewed where the
/// class counts differ or `--new-head` asks; said once.
fn init_from(
    model: ResNet,
    weights: &Weights,
    options: &TrainOptions,
    device: &Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<ResNet, TrainError> {
    let fresh_head = options.new_head.then(|| model.fc.clone());
    let imported = weights.load_backbone(model, device)?;
    if let Some(note) = imported.note {
        on_event(Event::Note(format!(
            "--init-from {}: {note}",
            weights.path().display()
        )));
    }
    let (mut model, renewed) = (imported.model, imported.renewed);
    let why = match (renewed.is_empty(), fresh_head) {
        (false, _) => Some(format!(
            "its classifier has another class count than num_classes = {}",
            options.config.num_classes
        )),
        (true, Some(fc)) => {
            model.fc = fc;
            Some("--new-head".to_string())
        }
        (true, None) => None,
    };
    if let Some(why) = why {
        on_event(Event::Note(format!(
            "--init-from {}: {why}; fc.weight and fc.bias keep their fresh initialization, \
             every other tensor is the file's",
            weights.path().display(),
        )));
    }
    Ok(model)
}

/// This process's ranks (`placement`) over `devices`, each starting from the checkpoint's
/// state where there is one.
fn world(
    step: TrainStep,
    existing: Option<&Checkpoint>,
    config: &TrainConfig,
    devices: &[Device],
    placement: ProcessPlacement,
) -> Result<Devices, TrainError> {
    let world_size = placement.world;
    let ranks = {
        let model = step.model().ok_or(StepError::Poisoned)?;
        match existing {
            Some(c) if world_size > 1 => VirtualRanks {
                stats: c
                    .load_ranks(model, world_size, &devices[0])?
                    .keep(placement.ranks()),
            },
            _ => VirtualRanks::new(model, placement.per_process()),
        }
    };
    if devices.len() == 1 {
        return Ok(Devices::One {
            step: Box::new(step),
            ranks,
            device: devices[0].clone(),
        });
    }
    // Every replica's LAMB starts where the checkpoint's (or a fresh one) does.
    let optimizer = |model: &ResNet| -> Result<TimmLamb, TrainError> {
        let fresh = TimmLamb::new(&LambOptions::timm(config.weight_decay), model);
        Ok(match existing {
            Some(c) => c.load_optimizer(fresh)?,
            None => fresh,
        })
    };
    Ok(Devices::Many(Replicas::new(
        step,
        ranks.stats,
        (placement.ranks().start, world_size),
        devices,
        Collective::Nccl,
        &optimizer,
    )?))
}

/// The loader job's id, the same in every process of the run (process 0's), so that the
/// processes of a node attach their ranks to one job of their node's daemon.
fn job_id(processes: &dyn Processes) -> Result<String, TrainError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mine = if processes.count() > 1 {
        format!("train-{}-{nanos:08x}", std::process::id())
    } else {
        format!("train-{}", std::process::id())
    };
    let all = processes.all_gather(mine.as_bytes())?;
    Ok(String::from_utf8_lossy(&all[0]).into_owned())
}

/// One loader stream per rank of this process: rank r of a `world_size`-rank job, all under
/// one job id, so the daemon serves the ranks that reach it (all of them, or a node's) as one
/// group and decodes each image once for all its copies.
fn connect(
    socket: &std::path::Path,
    jobs: &DataJobs,
    job_id: &str,
    placement: ProcessPlacement,
    state: &RunState,
    config: &TrainConfig,
) -> Result<Vec<Client>, TrainError> {
    placement
        .ranks()
        .map(|rank| {
            Client::connect(ClientOptions {
                socket: socket.to_path_buf(),
                job_id: job_id.to_string(),
                job: jobs.train_rank(placement.world, rank),
                start: state.next,
                epochs: Some(config.total_epochs()),
                slots: None,
                reconnect_timeout: std::time::Duration::from_secs(300),
            })
            .map_err(|e| TrainError::Data(DataError::from(e)))
        })
        .collect()
}

/// The training split's identity; a resume on another pack than the checkpoint's is refused
/// (its positions name batches of the split it was trained on).
fn check_dataset(
    clients: &[Client],
    state: &RunState,
    options: &TrainOptions,
    jobs: &DataJobs,
) -> Result<String, TrainError> {
    let dataset = clients
        .first()
        .and_then(Client::split)
        .map(|s| s.fingerprint.clone())
        .unwrap_or_default();
    if let Some(was) = state.dataset.as_ref().filter(|was| **was != dataset) {
        return Err(TrainError::Out(format!(
            "{} was trained on another pack of split {:?} (index XXH3 {was}, the loader now \
             serves {dataset}); resume with the dataset the run started with",
            options.out.root().display(),
            jobs.train.split
        )));
    }
    Ok(dataset)
}

/// Batches per epoch, the same for every rank: timm's samplers give every rank as many, and a
/// rank with fewer would leave the others waiting for it forever under DDP.
fn steps_per_epoch(clients: &[Client]) -> Result<u64, TrainError> {
    let spe = clients.first().map_or(0, Client::steps_per_epoch);
    if let Some(c) = clients.iter().find(|c| c.steps_per_epoch() != spe) {
        return Err(TrainError::Stream(format!(
            "the loader gives rank 0 {spe} batches per epoch and another rank {}; every rank \
             must get as many",
            c.steps_per_epoch()
        )));
    }
    Ok(spe)
}

/// Each rank's batch digest, as `loader fetch --digests` prints it; `held[i]` is rank
/// `first + i`'s.
fn report_digests(held: &[Batch], first: usize, on_event: &mut dyn FnMut(Event)) {
    for (i, batch) in held.iter().enumerate() {
        on_event(Event::Batch {
            rank: first + i,
            position: batch.position,
            sha256: loader::bench::batch_digest(batch.images(), batch.labels()),
        });
    }
}
