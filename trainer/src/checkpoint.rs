//! Checkpoints that a crash cannot half-write: everything needed to continue a run exactly
//! (model with its parameter ids and BN statistics, LAMB's moments, the data position, the
//! recipe) goes into a fresh `ckpt-<step>/` directory, each file synced, and only then does the
//! `latest` symlink switch to it by an atomic rename. A run killed at any instant leaves
//! `latest` pointing at a complete checkpoint (or at none yet).

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Module;
use loader::job::Position;
use serde::{Deserialize, Serialize};

use crate::lamb::TimmLamb;
use crate::ranks::{RankStats, RanksError};
use crate::resnet::ResNet;

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
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

/// Name of the symlink to the newest complete checkpoint.
const LATEST: &str = "latest";
/// Checkpoints kept (the newest and the one before, in case the newest is being read).
const KEEP: usize = 2;

/// Every rank's BN running statistics, in a checkpoint of a run with several ranks.
pub const RANKS_FILE: &str = "ranks.safetensors";

/// Writes a checkpoint under `out` and points `out/latest` at it; `ranks`, the ranks' own BN
/// statistics of a run with several (mid-epoch they differ from the model's).
pub fn save(
    out: &Path,
    model: &ResNet,
    optimizer: &TimmLamb,
    ranks: Option<&RankStats>,
    state: &RunState,
) -> Result<PathBuf, CheckpointError> {
    let name = format!("ckpt-{:010}", state.steps_done);
    let dir = out.join(&name);
    // A directory of this name can only be from a run killed while writing it.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let model_path = dir.join("model.bpk");
    model.settle_running_stats();
    model
        .clone()
        .save_file(&model_path)
        .map_err(|e| CheckpointError::Record {
            path: model_path.clone(),
            message: format!("{e:?}"),
        })?;
    let opt_path = dir.join("optimizer.bpk");
    optimizer
        .save(&opt_path)
        .map_err(|e| CheckpointError::Record {
            path: opt_path.clone(),
            message: format!("{e:?}"),
        })?;
    let state_path = dir.join("state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::State {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    let mut files = vec![model_path, opt_path, state_path];
    if let Some(ranks) = ranks {
        let path = dir.join(RANKS_FILE);
        ranks.save(&path)?;
        files.push(path);
    }
    for f in &files {
        File::open(f).and_then(|f| f.sync_all()).map_err(io(f))?;
    }
    sync_dir(&dir)?;
    // Switch `latest` atomically: a new symlink, renamed over the old one.
    let tmp = out.join(format!("{LATEST}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io(&tmp))?;
    let latest = out.join(LATEST);
    std::fs::rename(&tmp, &latest).map_err(io(&latest))?;
    sync_dir(out)?;
    prune(out, &name)?;
    Ok(dir)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Removes all but the newest [`KEEP`] checkpoints (never `current`).
fn prune(out: &Path, current: &str) -> Result<(), CheckpointError> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(io(out))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(KEEP);
    for n in names.into_iter().take(excess).filter(|n| n != current) {
        let p = out.join(n);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

/// The newest complete checkpoint under `out`, if any.
pub fn latest(out: &Path) -> Option<PathBuf> {
    let link = out.join(LATEST);
    let target = std::fs::read_link(&link).ok()?;
    Some(out.join(target))
}

/// Reads a checkpoint's state.
pub fn read_state(dir: &Path) -> Result<RunState, CheckpointError> {
    let path = dir.join("state.json");
    let text = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&text).map_err(|e| CheckpointError::State {
        path,
        message: e.to_string(),
    })
}

/// Loads a checkpoint's model, restoring its parameter ids (which key the optimizer state).
pub fn load_model(dir: &Path, model: ResNet) -> Result<ResNet, CheckpointError> {
    let path = dir.join("model.bpk");
    model
        .try_load_file(&path)
        .map_err(|e| CheckpointError::Record {
            path: path.clone(),
            message: format!("{e:?}"),
        })
}

/// Loads the ranks' BN statistics of checkpoint `dir`, for `world_size` ranks of `model`.
pub fn load_ranks(
    dir: &Path,
    model: &ResNet,
    world_size: usize,
    device: &burn::tensor::Device,
) -> Result<RankStats, CheckpointError> {
    Ok(RankStats::load(
        &dir.join(RANKS_FILE),
        model,
        world_size,
        device,
    )?)
}

/// Loads a checkpoint's optimizer state into `optimizer`, which must have been built for the
/// model that [`load_model`] returned: its parameter groups are matched by id.
pub fn load_optimizer(dir: &Path, optimizer: TimmLamb) -> Result<TimmLamb, CheckpointError> {
    let path = dir.join("optimizer.bpk");
    optimizer.load(&path).map_err(|e| CheckpointError::Record {
        path: path.clone(),
        message: format!("{e:?}"),
    })
}
