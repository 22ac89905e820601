//! Setting a run up: everything before its first step, the cheap checks first (the recipe, the
//! output directory, the loader's splits), then the devices, the model and its optimizer from a
//! checkpoint or fresh, the ranks, and the loader's streams from where the run stands.

use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::Device;
use loader::request::job::Position;
use loader::wire::client::Client;

use super::metrics::MetricsLog;
use super::tensorboard::{EventFile, recipe_markdown};
use super::{
    Checkpoint, Event, Run, RunState, Start, TrainError, TrainOptions, Weights, prometheus,
};
use crate::data::source::check_splits;
use crate::data::streams::{self, StreamRequest};
use crate::data::upload::Uploader;
use crate::device::{DeviceKind, Precision};
use crate::model::{Network, seeded};
use crate::optim::lamb::{LambOptions, TimmLamb};
use crate::ranks::processes::{ProcessPlacement, Processes, agree};
use crate::ranks::replicas::{Collective, Placement, Replicas};
use crate::ranks::virtual_ranks::VirtualRanks;
use crate::ranks::{Devices, World};
use crate::recipe::{DataJobs, TrainConfig};
use crate::step::{StepError, TrainStep};

impl<'a> Run<'a> {
    /// Everything before the first step, the cheap checks first.
    pub(super) fn set_up(
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
        let prometheus = open_outputs(options, &recipe_text, writes, on_event)?;
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
        model.set_compute(precision.compute());
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
        let clients = streams::connect(StreamRequest {
            socket: batches.socket(),
            job_id: &job_id,
            jobs: placement
                .ranks()
                .map(|rank| jobs.train_rank(placement.world, rank))
                .collect(),
            start: start.state.next,
            epochs: config.total_epochs(),
        })?;
        let dataset = check_dataset(&clients, &start.state, options, &jobs)?;
        let steps_per_epoch =
            streams::steps_per_epoch(clients.iter().map(Client::steps_per_epoch))?;
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
            let (metrics, events) = open_logs(options, start.state.steps_done, &recipe_text)?;
            (Some(metrics), Some(events))
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
}

/// What process 0 writes before the model is built: the Prometheus endpoint (first, so that a
/// port that is taken stops the run before anything is written), the run directory, tidied,
/// and the resolved recipe. Other processes write nothing.
fn open_outputs(
    options: &TrainOptions,
    recipe_text: &str,
    writes: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<prometheus::RunMetrics>, TrainError> {
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
        options.out.write_recipe(recipe_text)?;
    }
    Ok(prometheus)
}

/// `metrics.jsonl` and the TensorBoard event file, opened at `steps_done` (their lines past it
/// dropped), the recipe written into the events.
fn open_logs(
    options: &TrainOptions,
    steps_done: u64,
    recipe_text: &str,
) -> Result<(MetricsLog, EventFile), TrainError> {
    let mut events = options.out.event_file(steps_done)?;
    events.text(steps_done, "recipe", &recipe_markdown(recipe_text))?;
    Ok((options.out.metrics_log(steps_done)?, events))
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
    let lamb = |model: &Network| TimmLamb::new(&LambOptions::timm(config.weight_decay), model);
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
    model: Network,
    weights: &Weights,
    options: &TrainOptions,
    device: &Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<Network, TrainError> {
    let fresh_head = options.new_head.then(|| model.head().clone());
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
            model.set_head(fc);
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
    let optimizer = |model: &Network| -> Result<TimmLamb, TrainError> {
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

/// The training split's identity; a resume on another pack than the checkpoint's is refused
/// (its positions name batches of the split it was trained on).
fn check_dataset(
    clients: &[Client],
    state: &RunState,
    options: &TrainOptions,
    jobs: &DataJobs,
) -> Result<String, TrainError> {
    let dataset = streams::dataset_fingerprint(clients);
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
