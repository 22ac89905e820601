//! `trainer study`: the paper's stability and interaction measurements (its RQ2 and RQ3) as
//! one command. `--vary KEY=V1,V2,...` names recipe keys and their values; every combination
//! is an ordinary run directory under the study's `--out` (`seed=1`, `epochs=2+seed=1`, ...),
//! trained with [`crate::train::train`] or resumed, and reused as it is once finished. Each
//! run is scored on the recipe's val split (its last evaluation) and on any extra eval sets
//! (`--set`, with ImageNet-ReaL), then the runs are grouped by every varied key except `seed`
//! — seeds are the replicates — into a table (mean ± sample std, min, max per eval set and
//! metric) and a PNG with one point per run.

mod plan;
mod plot;
mod table;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::{DataJobs, DataSource};
use crate::device::{DeviceKind, Precision};
use crate::eval::{EvalSet, SetScore, evaluate_set};
use crate::metrics::Metric;
use crate::overrides::RecipeOverrides;
use crate::plot::{PlotError, read_metrics};
use crate::real::RealLabels;
use crate::train::{TrainError, TrainOptions, train};

pub use plan::{Combination, Vary, plan};
pub use plot::render;
pub use table::{REPLICATE_KEY, Row, RunResult, Score, Stats, format_table, set_scores, table};

/// Errors of a study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A `--vary` that cannot be used.
    #[error("--vary {0}")]
    Vary(String),
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
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// Reading metrics or drawing.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// The recipe file.
    #[error(transparent)]
    Recipe(#[from] crate::config::ConfigError),
    /// A run failed; its directory keeps what it did.
    #[error("run {name}: {source} (finished runs are kept: fix this and run the study again)")]
    Run {
        /// The combination.
        name: String,
        /// What failed.
        source: Box<crate::train::TrainError>,
    },
    /// Evaluating a run on an extra set.
    #[error("run {name}, --set {set}: {source}")]
    Eval {
        /// The combination.
        name: String,
        /// The set.
        set: String,
        /// What failed.
        source: Box<crate::eval::EvalError>,
    },
    /// The ReaL labels.
    #[error(transparent)]
    Real(#[from] crate::real::RealError),
    /// The device for the extra sets' evaluation.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A study file.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
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

/// Where the run in `dir` stands, given the recipe text it must have been started with (the
/// serialized [`TrainConfig`], as [`crate::train::train`] stores it) and the study's step cap.
///
/// # Errors
/// [`StudyError::OtherRecipe`] when the directory holds a run of another recipe.
pub fn run_status(
    dir: &Path,
    name: &str,
    config: &TrainConfig,
    max_steps: Option<u64>,
) -> Result<RunStatus, StudyError> {
    let Some(latest) = checkpoint::latest(dir) else {
        return Ok(RunStatus::New);
    };
    let state = checkpoint::read_state(&latest)?;
    let recipe = toml::to_string(config).map_err(|e| StudyError::File {
        path: dir.to_path_buf(),
        message: format!("serializing the recipe: {e}"),
    })?;
    if state.config != recipe {
        return Err(StudyError::OtherRecipe {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        });
    }
    let epochs = config.epochs + config.cooldown_epochs;
    let done =
        u64::from(state.next.epoch) >= epochs || max_steps.is_some_and(|m| state.steps_done >= m);
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
pub fn val_scores(dir: &Path, val_split: &str, steps_done: u64) -> Result<Vec<Score>, StudyError> {
    let metrics = read_metrics(&dir.join("metrics.jsonl"))?;
    let last = metrics.iter().rev().find_map(|m| match *m {
        Metric::Eval {
            step, top1, top5, ..
        } if step == steps_done => Some((top1, top5)),
        _ => None,
    });
    let (top1, top5) = last.ok_or_else(|| StudyError::NoFinalEval(dir.to_path_buf()))?;
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

/// The file in a run directory where a study keeps its scores on extra eval sets, so a
/// re-run of the study does not evaluate a finished run again.
pub const SETS_FILE: &str = "eval-sets.json";

/// An extra eval set's score of a run, and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedSet {
    /// The set as given (`NAME=DIR[:SPLIT]`), with the ReaL file if any.
    pub spec: String,
    /// The run's steps when it was evaluated.
    pub steps: u64,
    /// The score.
    pub score: SetScore,
}

/// The cached scores of `dir`.
pub fn read_cached(dir: &Path) -> Vec<CachedSet> {
    // A missing or unreadable cache is recomputed, never trusted half-way.
    std::fs::read(dir.join(SETS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes `cached` to `dir` (through a temporary file, renamed).
///
/// # Errors
/// [`StudyError::File`] naming the file.
pub fn write_cached(dir: &Path, cached: &[CachedSet]) -> Result<(), StudyError> {
    write_atomic(
        &dir.join(SETS_FILE),
        &serde_json::to_vec_pretty(cached).unwrap_or_default(),
    )
}

/// Writes `bytes` to `path` through a temporary file, synced and renamed into place.
///
/// # Errors
/// [`StudyError::File`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StudyError> {
    shard_tool::writer::write_atomic(path, |w| std::io::Write::write_all(w, bytes)).map_err(|e| {
        StudyError::File {
            path: path.to_path_buf(),
            message: e.chain(),
        }
    })
}

/// What a study runs and where.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// The recipe file.
    pub recipe: PathBuf,
    /// timm's flags, applied to every run before the varied values.
    pub overrides: RecipeOverrides,
    /// The varied keys.
    pub varies: Vec<Vary>,
    /// The study's directory: a run directory per combination, the table and the plot.
    pub out: PathBuf,
    /// Batches.
    pub data: DataSource,
    /// Devices of each run ([`crate::train::TrainOptions::devices`]).
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
        /// Its model (`--model`).
        model: &'a str,
        /// Where it stood.
        status: RunStatus,
    },
    /// An event of the run being trained.
    Train(crate::train::Event),
    /// A run was scored on an extra set (`cached`: from an earlier study run).
    Scored {
        /// The run.
        name: &'a str,
        /// The set.
        set: &'a str,
        /// Taken from the run's [`SETS_FILE`].
        cached: bool,
    },
}

/// The study's file names in its directory.
pub const TABLE_FILE: &str = "study.txt";
/// See [`TABLE_FILE`].
pub const JSON_FILE: &str = "study.json";
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
}

/// Runs (or resumes, or reuses) every combination, scores each run, and writes the table
/// (`study.txt`, `study.json`) and the plot (`study.png`) into the study's directory.
///
/// # Errors
/// [`StudyError`]: a bad `--vary` or set before any run starts; a failing run by name (the
/// runs before it are kept and reused next time).
pub fn run_study(
    o: &StudyOptions,
    on_event: &mut dyn FnMut(StudyEvent<'_>),
) -> Result<StudyReport, StudyError> {
    let text = std::fs::read_to_string(&o.recipe).map_err(|e| StudyError::File {
        path: o.recipe.clone(),
        message: e.to_string(),
    })?;
    let origin = o.recipe.display().to_string();
    let combos = plan(&text, &origin, &o.overrides, &o.varies)?;
    let base = TrainConfig::parse_with(&text, &origin, &o.overrides)?.config;
    let real = o
        .real_labels
        .as_deref()
        .map(|p| RealLabels::load(p, crate::real::VAL_IMAGES, base.num_classes))
        .transpose()?;
    std::fs::create_dir_all(&o.out).map_err(|e| StudyError::File {
        path: o.out.clone(),
        message: e.to_string(),
    })?;
    let mut results = Vec::with_capacity(combos.len());
    for (i, combo) in combos.iter().enumerate() {
        let config =
            TrainConfig::parse_varied(&text, &origin, &o.overrides, &combo.entries)?.config;
        let dir = o.out.join(&combo.name);
        let status = run_status(&dir, &combo.name, &config, o.max_steps)?;
        on_event(StudyEvent::Run {
            index: i + 1,
            of: combos.len(),
            name: &combo.name,
            model: &config.model,
            status,
        });
        if !matches!(status, RunStatus::Finished { .. }) {
            let options = TrainOptions {
                config: config.clone(),
                data: o.data.clone(),
                out: dir.clone(),
                resume: true,
                devices: o.devices.clone(),
                precision: o.precision,
                max_steps: o.max_steps,
                init_from: None,
                new_head: false,
                digests: false,
            };
            train(&options, &mut |e| on_event(StudyEvent::Train(e))).map_err(|e| {
                StudyError::Run {
                    name: combo.name.clone(),
                    source: Box::new(e),
                }
            })?;
        }
        let RunStatus::Finished { steps_done } =
            run_status(&dir, &combo.name, &config, o.max_steps)?
        else {
            return Err(StudyError::Run {
                name: combo.name.clone(),
                source: Box::new(TrainError::Out(format!(
                    "{} stopped before its last step (the loader's stream ended early?)",
                    dir.display()
                ))),
            });
        };
        let mut scores = val_scores(&dir, &config.rsb.val_split, steps_done)?;
        scores.extend(score_sets(
            o,
            &combo.name,
            &dir,
            &config,
            steps_done,
            real.as_ref(),
            on_event,
        )?);
        results.push(RunResult {
            name: combo.name.clone(),
            varied: combo.shown.clone(),
            steps: steps_done,
            scores,
        });
    }
    let rows = table(&results);
    let report = StudyReport {
        recipe: origin,
        vary: o
            .varies
            .iter()
            .map(|v| format!("{}={}", v.key, v.values.join(",")))
            .collect(),
        runs: results,
        rows,
    };
    write_atomic(
        &o.out.join(TABLE_FILE),
        format_table(&report.rows).as_bytes(),
    )?;
    write_atomic(
        &o.out.join(JSON_FILE),
        &serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )?;
    let (w, h) = o.plot_size;
    let rgb = render(&report.runs, w, h)?;
    crate::plot::write_png(&o.out.join(PLOT_FILE), &rgb, w, h)?;
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

/// The run's scores on the extra sets: from its cache where they were computed on the same
/// step, else evaluated on its last checkpoint (the model built once, on the first device).
fn score_sets(
    o: &StudyOptions,
    name: &str,
    dir: &Path,
    config: &TrainConfig,
    steps_done: u64,
    real: Option<&RealLabels>,
    on_event: &mut dyn FnMut(StudyEvent<'_>),
) -> Result<Vec<Score>, StudyError> {
    if o.sets.is_empty() {
        return Ok(Vec::new());
    }
    let mut cached = read_cached(dir);
    let mut model = None;
    let mut out = Vec::new();
    for set in &o.sets {
        let spec = set_spec(set, o.real_labels.as_deref());
        if let Some(c) = cached
            .iter()
            .find(|c| c.spec == spec && c.steps == steps_done)
        {
            on_event(StudyEvent::Scored {
                name,
                set: &set.name,
                cached: true,
            });
            out.extend(set_scores(&c.score));
            continue;
        }
        let (precision, _) = Precision::resolve(o.precision, config.amp, o.devices[0]);
        let device = o.devices[0].device(precision)?.autodiff();
        if model.is_none() {
            let latest =
                checkpoint::latest(dir).ok_or_else(|| StudyError::NoFinalEval(dir.into()))?;
            let fresh = crate::train::model_config(config)
                .map_err(|e| StudyError::Run {
                    name: name.to_owned(),
                    source: Box::new(e),
                })?
                .init(&device)
                .map_err(|e| StudyError::Run {
                    name: name.to_owned(),
                    source: Box::new(e.into()),
                })?;
            let mut loaded = checkpoint::load_model(&latest, fresh)?;
            loaded.compute = precision.compute();
            model = Some(loaded);
        }
        let Some(m) = model.as_ref() else { continue };
        let jobs = DataJobs::try_from(config).map_err(|e| StudyError::Run {
            name: name.to_owned(),
            source: Box::new(TrainError::Recipe(e.to_string())),
        })?;
        let upload = crate::upload::Uploader::new(o.devices[0]);
        let target = crate::eval::Target {
            model: m,
            device: &device,
            upload: &upload,
        };
        let score = evaluate_set(
            &target,
            set,
            &jobs.eval,
            &config.rsb.val_split,
            config.num_classes,
            o.workers,
            real,
        )
        .map_err(|e| StudyError::Eval {
            name: name.to_owned(),
            set: set.name.clone(),
            source: Box::new(e),
        })?;
        on_event(StudyEvent::Scored {
            name,
            set: &set.name,
            cached: false,
        });
        out.extend(set_scores(&score));
        cached.retain(|c| c.spec != spec);
        cached.push(CachedSet {
            spec,
            steps: steps_done,
            score,
        });
        write_cached(dir, &cached)?;
    }
    Ok(out)
}
