//! `trainer study`: the paper's stability and interaction measurements (its RQ2 and RQ3) as
//! one command. `--vary KEY=V1,V2,...` names recipe keys and their values; every combination
//! is an ordinary run directory under the study's `--out` (`seed=1`, `epochs=2+seed=1`, ...),
//! trained with [`crate::run::train`] or resumed, and reused as it is once finished. Every
//! combination passes the recipe's gate before the first run starts. Each
//! run is scored on the recipe's val split (its last evaluation) and on any extra eval sets
//! (`--set`, with ImageNet-ReaL), then the runs are grouped by every varied key except `seed`
//! — seeds are the replicates — into a table (mean ± sample std, min, max per eval set and
//! metric) and a PNG with one point per run.

mod models;
mod plan;
mod plot;
mod table;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::device::{DeviceKind, Precision};
use crate::eval::real::{RealError, RealLabels, VAL_IMAGES};
use crate::eval::{EvalError, EvalSet, evaluate_set};
use crate::recipe::{Overrides, RecipeError, TrainConfig};
use crate::report::draw::{DrawError, write_png};
use crate::run::metrics::{Metric, MetricsError};
use crate::run::{
    CachedSet, CheckpointError, OnDevice, RunDir, RunDirError, TrainError, TrainOptions, Weights,
    WeightsError, train, write_file,
};

pub use models::{ModelRow, format_models, models};
pub use plan::{Combination, Vary, plan};
pub use plot::render;
pub use table::{REPLICATE_KEY, Row, RunResult, Score, Stats, format_table, set_scores, table};

/// Errors of a study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A `--vary` that cannot be used.
    #[error("--vary {0}")]
    Vary(String),
    /// The recipe, or one of its combinations, refused by the recipe's gate (the same message
    /// `trainer config` and `trainer train` give).
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A run directory that belongs to another recipe.
    #[error(
        "{dir} holds a run of another recipe than this study's combination {name}; move it \
         away or choose another --out"
    )]
    OtherRecipe {
        /// The run directory.
        dir: PathBuf,
        /// The combination.
        name: String,
    },
    /// A finished run without the evaluation of its last step.
    #[error("{0}: the run is finished but its metrics.jsonl has no evaluation of its last step")]
    NoFinalEval(PathBuf),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Reading a run's metrics.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Drawing or writing the plot.
    #[error(transparent)]
    Draw(#[from] DrawError),
    /// A run failed; its directory keeps what it did.
    #[error("run {name}: {source} (finished runs are kept: fix this and run the study again)")]
    Run {
        /// The combination.
        name: String,
        /// What failed.
        source: Box<TrainError>,
    },
    /// Evaluating a run on an extra set.
    #[error("run {name}, --set {set}: {source}")]
    Eval {
        /// The combination.
        name: String,
        /// The set.
        set: String,
        /// What failed.
        source: Box<EvalError>,
    },
    /// A run's last checkpoint on the device, for the extra sets.
    #[error("run {name}: {source}")]
    Weights {
        /// The combination.
        name: String,
        /// What failed.
        source: Box<WeightsError>,
    },
    /// The ReaL labels.
    #[error(transparent)]
    Real(#[from] RealError),
    /// A study file, or a run directory's.
    #[error(transparent)]
    File(#[from] RunDirError),
}

impl StudyError {
    /// Whether the user's input is at fault (a `--vary`, the recipe, a run directory of
    /// another recipe, a set or labels file, a run's own input), as opposed to a failure while
    /// running: what exits with status 2.
    pub fn is_bad_input(&self) -> bool {
        match self {
            StudyError::Vary(_)
            | StudyError::Recipe(_)
            | StudyError::OtherRecipe { .. }
            | StudyError::Real(_) => true,
            StudyError::Run { source, .. } => source.is_bad_input(),
            StudyError::Eval { source, .. } => source.is_bad_input(),
            StudyError::Weights { source, .. } => source.is_bad_input(),
            StudyError::Checkpoint(e) => e.is_bad_input(),
            StudyError::NoFinalEval(_)
            | StudyError::Metrics(_)
            | StudyError::Draw(_)
            | StudyError::File(_) => false,
        }
    }
}

/// Where a combination's run directory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// No checkpoint: the run starts.
    New,
    /// Checkpointed before its end: the run resumes.
    Partial {
        /// Steps done.
        steps_done: u64,
    },
    /// Every step done: reused as it is.
    Finished {
        /// Steps done.
        steps_done: u64,
    },
}

/// Where the run in `dir` stands, given the recipe it must have been started with and the
/// study's step cap.
///
/// # Errors
/// [`StudyError::OtherRecipe`] when the directory holds a run of another recipe.
pub(crate) fn run_status(
    dir: &RunDir,
    name: &str,
    config: &TrainConfig,
    max_steps: Option<u64>,
) -> Result<RunStatus, StudyError> {
    let Some(latest) = dir.latest() else {
        return Ok(RunStatus::New);
    };
    let state = latest.state()?;
    if state.config != config.to_toml() {
        return Err(StudyError::OtherRecipe {
            dir: dir.root().to_path_buf(),
            name: name.to_owned(),
        });
    }
    let done = u64::from(state.next.epoch) >= u64::from(config.total_epochs())
        || max_steps.is_some_and(|m| state.steps_done >= m);
    Ok(if done {
        RunStatus::Finished {
            steps_done: state.steps_done,
        }
    } else {
        RunStatus::Partial {
            steps_done: state.steps_done,
        }
    })
}

/// The scores of the run's last evaluation, which must be of step `steps_done`, under the
/// name of its val split.
///
/// # Errors
/// [`StudyError::NoFinalEval`] if the last step was not evaluated.
pub(crate) fn val_scores(
    dir: &RunDir,
    val_split: &str,
    steps_done: u64,
) -> Result<Vec<Score>, StudyError> {
    let metrics = dir.read_metrics()?;
    let last = metrics.iter().rev().find_map(|m| match *m {
        Metric::Eval {
            step, top1, top5, ..
        } if step == steps_done => Some((top1, top5)),
        _ => None,
    });
    let (top1, top5) = last.ok_or_else(|| StudyError::NoFinalEval(dir.root().to_path_buf()))?;
    Ok(vec![
        Score {
            set: val_split.to_owned(),
            metric: "top1".into(),
            value: top1,
        },
        Score {
            set: val_split.to_owned(),
            metric: "top5".into(),
            value: top5,
        },
    ])
}

/// What a study runs and where.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// The recipe file.
    pub recipe: PathBuf,
    /// timm's flags, applied to every run before the varied values.
    pub overrides: Overrides,
    /// The varied keys.
    pub varies: Vec<Vary>,
    /// The study's directory: a run directory per combination, the table and the plot.
    pub out: PathBuf,
    /// Batches.
    pub data: DataSource,
    /// Devices of each run ([`crate::run::TrainOptions::devices`]); the first evaluates the
    /// extra sets.
    pub devices: Vec<DeviceKind>,
    /// Float precision (`None`: each run's recipe decides, as in [`TrainOptions::precision`]).
    pub precision: Option<Precision>,
    /// Steps per run at most.
    pub max_steps: Option<u64>,
    /// Extra eval sets, each scored on every run's last checkpoint.
    pub sets: Vec<EvalSet>,
    /// ImageNet-ReaL's real.json, for the extra sets.
    pub real_labels: Option<PathBuf>,
    /// Loader worker threads for the extra sets (0: one per core).
    pub workers: u32,
    /// The plot's size in pixels.
    pub plot_size: (u32, u32),
}

/// What a study reports as it goes.
#[derive(Debug)]
pub enum StudyEvent<'a> {
    /// A combination's run is about to start, resume or be reused.
    Run {
        /// 1-based.
        index: usize,
        /// Combinations in all.
        of: usize,
        /// Its name.
        name: &'a str,
        /// Its run directory.
        dir: &'a RunDir,
        /// Its model (`--model`).
        model: &'a str,
        /// Where it stood.
        status: RunStatus,
    },
    /// An event of the run being trained.
    Train(crate::run::Event),
    /// A run was scored on an extra set (`cached`: from an earlier study run).
    Scored {
        /// The run.
        name: &'a str,
        /// The set.
        set: &'a str,
        /// Kept in the run directory by an earlier study run.
        cached: bool,
    },
}

/// The study's file names in its directory.
pub const TABLE_FILE: &str = "study.txt";
/// See [`TABLE_FILE`].
pub(crate) const JSON_FILE: &str = "study.json";
/// See [`TABLE_FILE`].
pub const PLOT_FILE: &str = "study.png";

/// What `study.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReport {
    /// The recipe file.
    pub recipe: String,
    /// The `--vary` arguments, as given.
    pub vary: Vec<String>,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// The table.
    pub rows: Vec<Row>,
    /// With `model` varied: the paper's comparison of architectures, best first.
    #[serde(default)]
    pub models: Vec<ModelRow>,
}

impl StudyReport {
    /// The table as `study.txt` holds it and `trainer study` prints it: the groups' statistics,
    /// then, with `model` varied, the comparison of architectures.
    pub fn text(&self) -> String {
        let mut text = format_table(&self.rows);
        if !self.models.is_empty() {
            text.push('\n');
            text.push_str(&format_models(&self.models));
        }
        text
    }
}

/// Runs (or resumes, or reuses) every combination, scores each run, and writes the table
/// (`study.txt`, `study.json`) and the plot (`study.png`) into the study's directory.
///
/// # Errors
/// [`StudyError`]: a bad `--vary`, a combination the recipe's gate refuses, or a bad set
/// before any run starts; a failing run by name (the runs before it are kept and reused next
/// time).
pub fn run_study(
    o: &StudyOptions,
    on_event: &mut dyn FnMut(StudyEvent<'_>),
) -> Result<StudyReport, StudyError> {
    let text = crate::recipe::read_recipe(&o.recipe)?;
    let origin = o.recipe.display().to_string();
    let combos = plan(&text, &origin, &o.overrides, &o.varies)?;
    let real = o
        .real_labels
        .as_deref()
        .map(|p| RealLabels::load(p, VAL_IMAGES, combos[0].config.num_classes))
        .transpose()?;
    RunDir::new(&o.out).create()?;
    let mut results = Vec::with_capacity(combos.len());
    for (i, combo) in combos.iter().enumerate() {
        let dir = RunDir::new(o.out.join(&combo.name));
        let status = run_status(&dir, &combo.name, &combo.config, o.max_steps)?;
        on_event(StudyEvent::Run {
            index: i + 1,
            of: combos.len(),
            name: &combo.name,
            dir: &dir,
            model: &combo.config.model,
            status,
        });
        let steps_done = finish_run(o, combo, &dir, status, on_event)?;
        let mut scores = val_scores(&dir, &combo.config.rsb.val_split, steps_done)?;
        let run = ScoredRun {
            name: &combo.name,
            dir: &dir,
            config: &combo.config,
            steps_done,
        };
        scores.extend(score_sets(o, &run, real.as_ref(), on_event)?);
        results.push(RunResult {
            name: combo.name.clone(),
            varied: combo.shown.clone(),
            steps: steps_done,
            // The gate passed the combination, so its model is one we build.
            params: combo
                .config
                .model()
                .ok()
                .and_then(|m| m.trainable_params().ok()),
            scores,
        });
    }
    write_report(o, origin, results)
}

/// Trains or resumes a combination's run unless it is finished; its steps done.
fn finish_run(
    o: &StudyOptions,
    combo: &Combination,
    dir: &RunDir,
    status: RunStatus,
    on_event: &mut dyn FnMut(StudyEvent<'_>),
) -> Result<u64, StudyError> {
    let failed = |source: TrainError| StudyError::Run {
        name: combo.name.clone(),
        source: Box::new(source),
    };
    if !matches!(status, RunStatus::Finished { .. }) {
        let options = TrainOptions {
            config: combo.config.clone(),
            data: o.data.clone(),
            out: dir.clone(),
            resume: true,
            devices: o.devices.clone(),
            precision: o.precision,
            max_steps: o.max_steps,
            init_from: None,
            new_head: false,
            digests: false,
            metrics_listen: None,
            processes: std::rc::Rc::new(crate::ranks::processes::Alone),
        };
        train(&options, &mut |e| on_event(StudyEvent::Train(e))).map_err(failed)?;
    }
    match run_status(dir, &combo.name, &combo.config, o.max_steps)? {
        RunStatus::Finished { steps_done } => Ok(steps_done),
        _ => Err(failed(TrainError::Stream(format!(
            "{} stopped before its last step (the loader's stream ended early?)",
            dir.root().display()
        )))),
    }
}

/// Groups the runs into the table and writes `study.txt`, `study.json` and `study.png`.
fn write_report(
    o: &StudyOptions,
    recipe: String,
    results: Vec<RunResult>,
) -> Result<StudyReport, StudyError> {
    let rows = table(&results);
    let models = models(&results);
    let report = StudyReport {
        recipe,
        vary: o
            .varies
            .iter()
            .map(|v| format!("{}={}", v.key, v.values.join(",")))
            .collect(),
        runs: results,
        rows,
        models,
    };
    write_file(&o.out.join(TABLE_FILE), report.text().as_bytes())?;
    // Plain numbers and strings always serialize.
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    write_file(&o.out.join(JSON_FILE), &json)?;
    let (w, h) = o.plot_size;
    let rgb = render(&report.runs, w, h)?;
    write_png(&o.out.join(PLOT_FILE), &rgb, w, h)?;
    Ok(report)
}

/// A set as a cache key: what it reads and how ReaL counts it.
fn set_spec(set: &EvalSet, real: Option<&Path>) -> String {
    format!(
        "{}={}:{} real={}",
        set.name,
        set.dir.display(),
        set.split.as_deref().unwrap_or(""),
        real.map_or(String::new(), |p| p.display().to_string())
    )
}

/// A finished run to score on the extra sets.
struct ScoredRun<'a> {
    name: &'a str,
    dir: &'a RunDir,
    config: &'a TrainConfig,
    steps_done: u64,
}

/// The run's scores on the extra sets: from its run directory where they were computed on the
/// same step, else evaluated on its last checkpoint (loaded once, on the first device).
fn score_sets(
    o: &StudyOptions,
    run: &ScoredRun<'_>,
    real: Option<&RealLabels>,
    on_event: &mut dyn FnMut(StudyEvent<'_>),
) -> Result<Vec<Score>, StudyError> {
    let mut cached = run.dir.set_scores();
    let mut loaded: Option<OnDevice> = None;
    let mut out = Vec::new();
    for set in &o.sets {
        let spec = set_spec(set, o.real_labels.as_deref());
        let kept = cached
            .iter()
            .find(|c| c.spec == spec && c.steps == run.steps_done);
        let score = match kept {
            Some(c) => c.score.clone(),
            None => {
                if loaded.is_none() {
                    loaded = Some(load_last(o, run)?);
                }
                let Some(on) = loaded.as_ref() else { continue };
                let jobs = run.config.jobs().map_err(|e| RecipeError::Invalid {
                    path: o.recipe.display().to_string(),
                    message: e.to_string(),
                })?;
                evaluate_set(
                    &on.target(),
                    set,
                    &jobs.eval,
                    &run.config.rsb.val_split,
                    run.config.num_classes,
                    o.workers,
                    real,
                )
                .map_err(|e| StudyError::Eval {
                    name: run.name.to_owned(),
                    set: set.name.clone(),
                    source: Box::new(e),
                })?
            }
        };
        on_event(StudyEvent::Scored {
            name: run.name,
            set: &set.name,
            cached: kept.is_some(),
        });
        out.extend(set_scores(&score));
        if kept.is_none() {
            cached.retain(|c| c.spec != spec);
            cached.push(CachedSet {
                spec,
                steps: run.steps_done,
                score,
            });
            run.dir.write_set_scores(&cached)?;
        }
    }
    Ok(out)
}

/// The run's last checkpoint on the study's first device, in the run's precision.
fn load_last(o: &StudyOptions, run: &ScoredRun<'_>) -> Result<OnDevice, StudyError> {
    let latest = run
        .dir
        .latest()
        .ok_or_else(|| StudyError::NoFinalEval(run.dir.root().to_path_buf()))?;
    let (precision, _) = Precision::resolve(o.precision, run.config.amp, o.devices[0]);
    let model = run.config.model().map_err(|e| StudyError::Weights {
        name: run.name.to_owned(),
        source: Box::new(e.into()),
    })?;
    OnDevice::load(
        &model,
        o.devices[0],
        precision,
        run.config.seed,
        Some(&Weights::Checkpoint(latest)),
    )
    .map_err(|e| StudyError::Weights {
        name: run.name.to_owned(),
        source: Box::new(e),
    })
}
