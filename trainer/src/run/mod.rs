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
mod set_up;
pub mod summary;
pub mod tensorboard;
mod timing;
mod training_loop;
pub mod weights;

pub use checkpoint::{Checkpoint, CheckpointError, RunState};
pub use dir::{CachedSet, RunDir, RunDirError, write_file};
pub use weights::{OnDevice, Weights, WeightsError};

use std::rc::Rc;

use loader::request::job::Position;
use loader::wire::client::Client;

use crate::data::source::{Batches, DataError, DataSource};
use crate::device::{DeviceKind, Precision};
use crate::eval::EvalError;
use crate::model::Network;
use crate::optim::lamb::TimmLamb;
use crate::ranks::World;
use crate::ranks::processes::{ProcessError, Processes};
use crate::ranks::replicas::PlacementError;
use crate::recipe::{DataJobs, TrainConfig};
use crate::step::StepError;
use metrics::{Metric, MetricsError, MetricsLog};
use tensorboard::{EventFile, TensorBoardError};

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
    Model(#[from] crate::model::family::ConfigError),
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
    model: Network,
    optimizer: TimmLamb,
    state: RunState,
}
