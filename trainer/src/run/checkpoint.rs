//! Checkpoints that a crash cannot half-write: everything needed to continue a run exactly
//! (model with its parameter ids and BN statistics, LAMB's moments, the data position, the
//! recipe) goes into a fresh `ckpt-<step>/` directory, each file synced, and only then does the
//! run directory's `latest` symlink switch to it by an atomic rename
//! ([`RunDir::publish`](super::RunDir)). A run killed at any instant leaves `latest` pointing
//! at a complete checkpoint (or at none yet).
//!
//! This module owns a checkpoint directory's files: their names, formats, writing and reading.

use std::fs::File;
use std::path::{Path, PathBuf};

use shard_tool::atomic::StagedDir;

use loader::request::job::Position;
use serde::{Deserialize, Serialize};

use crate::model::Network;
use crate::optim::lamb::TimmLamb;
use crate::ranks::virtual_ranks::{RankStats, RanksError};
use crate::recipe::{Overrides, RecipeError, TrainConfig};

/// Errors writing or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// burn could not write or read a record.
    #[error("{path}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The ranks' BN statistics.
    #[error(transparent)]
    Ranks(#[from] RanksError),
    /// `state.json` is not what this build writes.
    #[error("{path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The recipe stored in `state.json` no longer passes the recipe's gate.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
}

impl CheckpointError {
    /// Whether the checkpoint a user named is at fault: it does not load into the model, or
    /// its recipe no longer passes the recipe's gate.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            CheckpointError::Record { .. }
                | CheckpointError::State { .. }
                | CheckpointError::Recipe(_)
                | CheckpointError::Ranks(_)
        )
    }
}

/// A failure of `shard_tool::atomic` about `dir` (a checkpoint staged or published, `latest`
/// switched, temporaries cleaned), as a checkpoint error naming the path it was about.
pub(super) fn placing(dir: &Path) -> impl FnOnce(shard_tool::Error) -> CheckpointError + '_ {
    move |e| match e {
        shard_tool::Error::WithPath { path, source } => CheckpointError::Io {
            path,
            source: std::io::Error::other(source.chain()),
        },
        e => CheckpointError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.chain()),
        },
    }
}

/// An I/O error on `path`, as a checkpoint error naming it.
pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a checkpoint file burn will read by its path: a regular file (a FIFO would block the
/// load, a device would never end it) of at most 16 GiB (ResNet-50's weights and LAMB state
/// in f32 are 300 MB).
fn checked(path: &Path) -> Result<(), CheckpointError> {
    shard_tool::user_file::check_regular(path, 16 * shard_tool::user_file::GIB, "a checkpoint file")
        .map_err(|e| CheckpointError::Record {
            path: path.to_path_buf(),
            message: e.reason(),
        })
}

/// Where a run stands, stored beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Optimizer steps done.
    pub steps_done: u64,
    /// The next batch to train on.
    pub next: Position,
    /// The recipe the run was started with, as TOML; a resume with another recipe is refused.
    pub config: String,
    /// The training split's identity (its index XXH3, from the loader); a resume on another
    /// pack is refused. Absent in checkpoints of earlier builds.
    #[serde(default)]
    pub dataset: Option<String>,
}

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
/// Every rank's BN running statistics, in a checkpoint of a run with several ranks.
const RANKS_FILE: &str = "ranks.safetensors";

/// A checkpoint directory (`RUN/ckpt-0000000042`, or `RUN/latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    dir: PathBuf,
}

/// What a checkpoint holds, to be written.
pub(crate) struct Contents<'a> {
    /// The model (its BN statistics are settled before it is written).
    pub model: &'a Network,
    /// LAMB's state.
    pub optimizer: &'a TimmLamb,
    /// The ranks' own BN statistics, in a run of several (mid-epoch they differ from the
    /// model's).
    pub ranks: Option<&'a RankStats>,
    /// Where the run stands.
    pub state: &'a RunState,
}

impl Checkpoint {
    /// The checkpoint in directory `dir` (not read yet).
    pub fn at(dir: impl Into<PathBuf>) -> Checkpoint {
        Checkpoint { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory name of the checkpoint after `steps_done` steps.
    pub(super) fn name(steps_done: u64) -> String {
        format!("ckpt-{steps_done:010}")
    }

    /// The steps of the checkpoint named `name`, if it is exactly a name
    /// [`Checkpoint::name`] writes (`ckpt-0000000042`, not `ckpt-42` or `ckpt-0000000042-best`).
    pub(super) fn steps_of(name: &str) -> Option<u64> {
        let digits = name.strip_prefix("ckpt-")?;
        let steps: u64 = digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())??;
        (Checkpoint::name(steps) == name).then_some(steps)
    }

    /// Whether `dir` is a checkpoint rsb wrote: a directory (not a link to one) holding the
    /// marker every checkpoint has, its `state.json`. Only such a directory is ever replaced or
    /// pruned.
    pub(super) fn is_ours(dir: &Path) -> bool {
        let is = |p: &Path, dir: bool| {
            std::fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
        };
        is(dir, true) && is(&dir.join(STATE_FILE), false)
    }

    /// Writes `contents` as checkpoint directory `dir`, every file synced. The files are
    /// written into a private staging directory ([`StagedDir`]) that becomes `dir` whole, so
    /// no one can plant a link where burn will write, and a run killed while writing leaves
    /// no `dir`. An older checkpoint of ours at `dir` (from a run killed before its `latest`
    /// moved) is replaced; anything else there is refused.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the file.
    pub(super) fn write(
        dir: &Path,
        contents: &Contents<'_>,
    ) -> Result<Checkpoint, CheckpointError> {
        let staged = StagedDir::new(dir).map_err(placing(dir))?;
        let at = staged.path();
        let model_path = at.join(MODEL_FILE);
        contents.model.settle_running_stats();
        contents
            .model
            .save_checkpoint(&model_path)
            .map_err(|e| CheckpointError::Record {
                path: model_path.clone(),
                message: format!("{e:?}"),
            })?;
        let opt_path = at.join(OPTIMIZER_FILE);
        contents
            .optimizer
            .save(&opt_path)
            .map_err(|e| CheckpointError::Record {
                path: opt_path.clone(),
                message: format!("{e:?}"),
            })?;
        let mut files = vec![model_path, opt_path];
        if let Some(ranks) = contents.ranks {
            let path = at.join(RANKS_FILE);
            ranks.save(&path)?;
            files.push(path);
        }
        // The marker, last. No temporary of its own: the staging directory is private, and
        // it becomes the checkpoint whole or not at all.
        let state_path = at.join(STATE_FILE);
        let json =
            serde_json::to_vec_pretty(contents.state).map_err(|e| CheckpointError::State {
                path: state_path.clone(),
                message: e.to_string(),
            })?;
        std::fs::write(&state_path, json).map_err(io(&state_path))?;
        files.push(state_path);
        for f in &files {
            File::open(f).and_then(|f| f.sync_all()).map_err(io(f))?;
        }
        staged.publish(Checkpoint::is_ours).map_err(placing(dir))?;
        Ok(Checkpoint::at(dir))
    }

    /// Where the run stood.
    ///
    /// # Errors
    /// [`CheckpointError`] naming `state.json`.
    pub fn state(&self) -> Result<RunState, CheckpointError> {
        let path = self.dir.join(STATE_FILE);
        // A state.json is a few hundred bytes; 1 MiB bounds a file that is something else.
        let text =
            shard_tool::user_file::read_capped(&path, shard_tool::user_file::MIB, "a run state")
                .map_err(|e| CheckpointError::State {
                    path: path.clone(),
                    message: e.reason(),
                })?;
        serde_json::from_slice(&text).map_err(|e| CheckpointError::State {
            path,
            message: e.to_string(),
        })
    }

    /// The recipe the run was started with, read through the recipe's gate.
    ///
    /// # Errors
    /// [`CheckpointError`] naming `state.json`.
    pub fn recipe(&self) -> Result<TrainConfig, CheckpointError> {
        let state = self.state()?;
        let origin = self.dir.join(STATE_FILE).display().to_string();
        Ok(TrainConfig::parse(&state.config, &origin, &Overrides::none())?.config)
    }

    /// Loads the model's weights into `model`, restoring its parameter ids (which key the
    /// optimizer state).
    ///
    /// # Errors
    /// [`CheckpointError::Record`] naming the file.
    pub fn load_model(&self, model: Network) -> Result<Network, CheckpointError> {
        let path = self.dir.join(MODEL_FILE);
        checked(&path)?;
        model
            .load_checkpoint(&path)
            .map_err(|e| CheckpointError::Record {
                path: path.clone(),
                message: format!("{e:?}"),
            })
    }

    /// Loads the optimizer state into `optimizer`, which must have been built for the model
    /// that [`Checkpoint::load_model`] returned: its parameter groups are matched by id.
    ///
    /// # Errors
    /// [`CheckpointError::Record`] naming the file.
    pub(crate) fn load_optimizer(&self, optimizer: TimmLamb) -> Result<TimmLamb, CheckpointError> {
        let path = self.dir.join(OPTIMIZER_FILE);
        checked(&path)?;
        optimizer.load(&path).map_err(|e| CheckpointError::Record {
            path: path.clone(),
            message: format!("{e:?}"),
        })
    }

    /// Whether the checkpoint holds every rank's own BN statistics (a run of several ranks).
    pub fn has_ranks(&self) -> bool {
        self.dir.join(RANKS_FILE).is_file()
    }

    /// Loads the ranks' BN statistics, for `world_size` ranks of `model`.
    ///
    /// # Errors
    /// [`CheckpointError::Ranks`] when the file does not fit the model or the rank count.
    pub(crate) fn load_ranks(
        &self,
        model: &Network,
        world_size: usize,
        device: &burn::tensor::Device,
    ) -> Result<RankStats, CheckpointError> {
        Ok(RankStats::load(
            &self.dir.join(RANKS_FILE),
            model,
            world_size,
            device,
        )?)
    }
}
