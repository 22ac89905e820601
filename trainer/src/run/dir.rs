//! A run directory (`trainer train --out RUN`) and every file in it, in one place, as cargo's
//! `Layout` owns the paths inside `target/`:
//!
//! | file | what | written by |
//! |---|---|---|
//! | `recipe.toml` | the resolved recipe (timm writes `args.yaml`) | [`RunDir::write_recipe`] |
//! | `metrics.jsonl` | one line per step and per evaluation | [`RunDir::metrics_log`] |
//! | `ckpt-<step>/` | a checkpoint ([`Checkpoint`]) | [`RunDir::save_checkpoint`] |
//! | `latest` | symlink to the newest complete checkpoint | [`RunDir::save_checkpoint`] |
//! | `eval-sets.json` | a study's scores on extra eval sets | [`RunDir::write_set_scores`] |
//! | `curves.png` | `trainer plot`'s default output | [`RunDir::curves`] |
//! | `summary.csv` | timm's per-epoch summary | [`RunDir::summary`] |
//! | `events.out.tfevents.*.rsb` | TensorBoard's event files, one per start | [`RunDir::event_file`] |
//!
//! Every file is written atomically (a temporary file, synced, renamed into place; the
//! `latest` link by a rename over the old one; a checkpoint as a private directory renamed
//! into place), so a run killed at any instant leaves each file whole, old or new. Every
//! temporary is created exclusively under a random name ([`shard_tool::atomic`]): a run folder
//! others can write into is no way to make the trainer write through a planted link. Pruning
//! removes only checkpoints by their exact name and marker; anything else is left alone. The two that grow as the run goes, `metrics.jsonl` and the event files,
//! are appended to, and cut back atomically to the checkpoint's steps when a run resumes (a
//! torn last line or record is dropped then). Nothing else in the trainer spells these names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointError, Contents, io, placing};
use super::metrics::{Metric, MetricsError, MetricsLog, read_metrics};
use super::tensorboard::{EventFile, TensorBoardError};
use crate::eval::SetScore;

const RECIPE_FILE: &str = "recipe.toml";
const METRICS_FILE: &str = "metrics.jsonl";
const LATEST: &str = "latest";
const SETS_FILE: &str = "eval-sets.json";
const CURVES_FILE: &str = "curves.png";
const SUMMARY_FILE: &str = "summary.csv";
/// Checkpoints kept (the newest and the one before, in case the newest is being read).
const KEEP: usize = 2;

/// Errors of a run directory's files other than checkpoints and metrics.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RunDirError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// The entries of a run directory named like checkpoints: (steps, name) of those rsb wrote,
/// oldest first, and the names of the others.
type Checkpoints = (Vec<(u64, String)>, Vec<String>);

/// A run's scores on an extra eval set, and what they were computed from
/// (`eval-sets.json`), so a study run again does not evaluate a finished run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedSet {
    /// The set as given (`NAME=DIR[:SPLIT]`), with the ReaL file if any.
    pub spec: String,
    /// The run's steps when it was evaluated.
    pub steps: u64,
    /// The score.
    pub score: SetScore,
}

/// A run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory `root` (it need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The run a user names: its directory, or its `metrics.jsonl` file (`trainer plot` and
    /// `compare` take either).
    pub fn named(path: &Path) -> RunDir {
        if path.is_file() && path.file_name().is_some_and(|n| n == METRICS_FILE) {
            RunDir::new(path.parent().unwrap_or(Path::new(".")))
        } else {
            RunDir::new(path)
        }
    }

    /// Its directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The directory's name (for titles and tables): its last component, resolved.
    pub fn name(&self) -> String {
        let full = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        full.file_name()
            .map_or_else(|| "run".to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// Creates the directory (and its parents).
    ///
    /// # Errors
    /// [`RunDirError`] naming it.
    pub fn create(&self) -> Result<(), RunDirError> {
        std::fs::create_dir_all(&self.root).map_err(|e| RunDirError {
            path: self.root.clone(),
            message: e.to_string(),
        })
    }

    /// Writes the resolved recipe to `recipe.toml`.
    ///
    /// # Errors
    /// [`RunDirError`] naming the file.
    pub(crate) fn write_recipe(&self, text: &str) -> Result<(), RunDirError> {
        let header = "# The resolved recipe of this run: the --config file with the command \
                      line's overrides applied.\n";
        self.write(RECIPE_FILE, format!("{header}{text}").as_bytes())
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    /// Every line of `metrics.jsonl`, each within the run: where the run's `recipe.toml`
    /// reads, no epoch past its epochs.
    ///
    /// # Errors
    /// [`MetricsError`] naming the file (and the line that is not a metric).
    pub fn read_metrics(&self) -> Result<Vec<Metric>, MetricsError> {
        let path = self.metrics();
        let metrics = read_metrics(&path)?;
        let Some(epochs) = self.recipe_epochs() else {
            return Ok(metrics);
        };
        if let Some((i, m)) = metrics.iter().enumerate().find(|(_, m)| {
            let (epoch, done) = match m {
                Metric::Step { epoch, .. } => (*epoch, 1),
                Metric::Eval { epoch, .. } => (*epoch, 0),
            };
            u64::from(epoch) + done > epochs
        }) {
            return Err(MetricsError::Value {
                path,
                // Blank lines are skipped: the metric's index is its line where there are none.
                line: i + 1,
                what: format!("{m:?} is past the run's {epochs} epochs ({RECIPE_FILE})"),
            });
        }
        Ok(metrics)
    }

    /// The epochs of the recipe this run wrote, if its `recipe.toml` reads.
    fn recipe_epochs(&self) -> Option<u64> {
        let path = self.root.join(RECIPE_FILE);
        let text = crate::recipe::read_recipe(&path).ok()?;
        let origin = path.display().to_string();
        crate::recipe::TrainConfig::parse(&text, &origin, &crate::recipe::Overrides::none())
            .ok()
            .map(|l| l.config.epochs)
    }

    /// `metrics.jsonl` open for appending, cut back to `steps_done` steps.
    ///
    /// # Errors
    /// [`MetricsError`] naming the file.
    pub(crate) fn metrics_log(&self, steps_done: u64) -> Result<MetricsLog, MetricsError> {
        MetricsLog::open(&self.metrics(), steps_done)
    }

    /// A new TensorBoard event file for a start after `steps_done` steps, the files of earlier
    /// starts cut back to them ([`EventFile::create`]).
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file.
    pub(crate) fn event_file(&self, steps_done: u64) -> Result<EventFile, TensorBoardError> {
        EventFile::create(&self.root, steps_done)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Option<Checkpoint> {
        let target = std::fs::read_link(self.root.join(LATEST)).ok()?;
        Some(Checkpoint::at(self.root.join(target)))
    }

    /// Writes a checkpoint after `contents.state.steps_done` steps, points `latest` at it,
    /// and removes all but the newest [`KEEP`] checkpoints.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the file.
    pub(crate) fn save_checkpoint(
        &self,
        contents: &Contents<'_>,
    ) -> Result<Checkpoint, CheckpointError> {
        let name = Checkpoint::name(contents.state.steps_done);
        let checkpoint = Checkpoint::write(&self.root.join(&name), contents)?;
        self.point_latest_at(&name)?;
        self.prune(&name)?;
        Ok(checkpoint)
    }

    /// Switches `latest` to `name` atomically: a new symlink under a random name
    /// ([`shard_tool::atomic::make_beside`]), renamed over the old one.
    fn point_latest_at(&self, name: &str) -> Result<(), CheckpointError> {
        let latest = self.root.join(LATEST);
        let link =
            shard_tool::atomic::make_beside(&latest, |p| std::os::unix::fs::symlink(name, p))
                .map_err(placing(&latest))?;
        shard_tool::atomic::commit(link, &latest).map_err(placing(&latest))?;
        Ok(())
    }

    /// The checkpoints rsb wrote in this run directory ([`Checkpoint::steps_of`] and
    /// [`Checkpoint::is_ours`]), oldest first, and every other entry whose name starts like a
    /// checkpoint's (a user's `ckpt-best/`, a link), which rsb leaves alone.
    fn checkpoints(&self) -> Result<Checkpoints, CheckpointError> {
        let mut ours = Vec::new();
        let mut others = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("ckpt-") {
                continue;
            }
            match Checkpoint::steps_of(&name) {
                Some(steps) if Checkpoint::is_ours(&entry.path()) => ours.push((steps, name)),
                _ => others.push(name),
            }
        }
        ours.sort();
        others.sort();
        Ok((ours, others))
    }

    /// Removes all but the newest [`KEEP`] checkpoints rsb wrote here (never `current`, nor
    /// the one `latest` points at). Nothing else is touched: a directory is pruned only when
    /// its name is exactly one [`Checkpoint::name`] writes and it holds a checkpoint's marker.
    fn prune(&self, current: &str) -> Result<(), CheckpointError> {
        let latest = std::fs::read_link(self.root.join(LATEST)).ok();
        let (ours, _) = self.checkpoints()?;
        let excess = ours.len().saturating_sub(KEEP);
        for (_, n) in ours.into_iter().take(excess) {
            if n == current || latest.as_deref() == Some(Path::new(&n)) {
                continue;
            }
            let p = self.root.join(n);
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Readies the directory for a run (called once, before it writes): removes what a run of
    /// this user killed mid-write left (the staging directories of checkpoints and the
    /// temporaries of the files the run writes, by their exact temporary names), and returns
    /// one warning for each entry that looks like a checkpoint but is not one rsb wrote, so
    /// the user knows pruning will leave it alone.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the entry that cannot be read or removed.
    pub(crate) fn tidy(&self) -> Result<Vec<String>, CheckpointError> {
        // Only the temporaries of what a training process writes: a `trainer plot` writing
        // curves.png beside a run may be under way.
        let trainers = |made_for: &str| {
            Checkpoint::steps_of(made_for).is_some()
                || [RECIPE_FILE, METRICS_FILE, LATEST, SUMMARY_FILE].contains(&made_for)
                || super::tensorboard::is_event_file_name(made_for)
        };
        shard_tool::atomic::remove_stale_temporaries(&self.root, trainers)
            .map_err(placing(&self.root))?;
        let (_, others) = self.checkpoints()?;
        Ok(others
            .into_iter()
            .map(|n| {
                format!(
                    "{}: not a checkpoint this trainer wrote (its name or its state.json marker \
                     differs); left alone, never pruned",
                    self.root.join(n).display()
                )
            })
            .collect())
    }

    /// The scores kept in `eval-sets.json` (none when it is missing or unreadable: a score
    /// that cannot be read is computed again, never trusted half-way).
    pub fn set_scores(&self) -> Vec<CachedSet> {
        shard_tool::user_file::read_capped(
            &self.root.join(SETS_FILE),
            16 * shard_tool::user_file::MIB,
            "a scores file",
        )
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
    }

    /// Writes `eval-sets.json`.
    ///
    /// # Errors
    /// [`RunDirError`] naming the file.
    pub(crate) fn write_set_scores(&self, cached: &[CachedSet]) -> Result<(), RunDirError> {
        // Plain numbers and strings always serialize.
        let json = serde_json::to_vec_pretty(cached).unwrap_or_default();
        self.write(SETS_FILE, &json)
    }

    /// timm's `summary.csv`: one row per epoch (`run::summary`).
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY_FILE)
    }

    /// Where `trainer plot` draws the run's curves by default.
    pub fn curves(&self) -> PathBuf {
        self.root.join(CURVES_FILE)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), RunDirError> {
        write_file(&self.root.join(name), bytes)
    }
}

/// Writes `bytes` to `path` atomically (shard-tool's `write_atomic`: a temporary file, synced,
/// renamed into place, the directory synced): the one way the trainer writes a whole file.
///
/// # Errors
/// [`RunDirError`] naming the file.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    shard_tool::atomic::write_atomic(path, |w| std::io::Write::write_all(w, bytes)).map_err(|e| {
        RunDirError {
            path: path.to_path_buf(),
            message: e.chain(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_named_by_its_directory_or_its_metrics_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("r1"));
        run.create().unwrap();
        std::fs::write(run.metrics(), "").unwrap();
        assert_eq!(RunDir::named(&run.metrics()), run);
        assert_eq!(RunDir::named(run.root()), run);
        assert_eq!(run.name(), "r1");
        assert!(run.latest().is_none());
        run.write_recipe("lr = 1.0\n").unwrap();
        let text = std::fs::read_to_string(run.root().join(RECIPE_FILE)).unwrap();
        assert!(text.ends_with("lr = 1.0\n"), "{text}");
        assert!(run.set_scores().is_empty());
    }
}
