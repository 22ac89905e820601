//! Where a run's batches come from and what it asks for: the loader (a daemon, or one started
//! in this process), the two loader jobs a recipe means ([`DataJobs`], built and checked when
//! the recipe is read), and the check of a split's labels against the recipe, made before any
//! model is built.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use loader::client::{self, ClientError};
use loader::eval_transform::EvalTransform;
use loader::interpolation::UnknownInterpolation;
use loader::job::{BATCH_SIZE, WORLD_SIZE};
use loader::protocol::SplitInfo;
use loader::server::{LocalServer, ServeConfig, ServeError};
use loader::transform::{AUG_REPEATS, IMG_SIZE, SettingError, TrainTransform, parse_aa};
use loader::{JobSpec, TransformSpec};

use crate::config::TrainConfig;

/// Errors about the data of a run.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The loader in this process could not be started.
    #[error("starting the loader in this process")]
    Serve(#[from] ServeError),
    /// The loader could not be reached, or refused (the message names its socket).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A split does not fit the recipe.
    #[error("{0}")]
    Split(String),
}

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
    pub fn open(&self) -> Result<Batches, DataError> {
        match self {
            DataSource::Shards { dir, workers } => {
                let server = LocalServer::start(ServeConfig {
                    shards: Some(dir.clone()),
                    workers: *workers,
                    ..ServeConfig::default()
                })?;
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

/// The loader jobs of a recipe: its training transform on `rsb.train_split` and its evaluation
/// on `rsb.val_split`, every setting explicit (no preset behind them).
#[derive(Debug, Clone, PartialEq)]
pub struct DataJobs {
    /// Training batches.
    pub train: JobSpec,
    /// Evaluation batches.
    pub eval: JobSpec,
}

impl TryFrom<&TrainConfig> for DataJobs {
    type Error = SettingError;

    /// Both jobs, checked as the daemon will check them; errors name the recipe's key.
    fn try_from(c: &TrainConfig) -> Result<DataJobs, SettingError> {
        let batch_size = to_u32("batch_size", c.batch_size, BATCH_SIZE)?;
        let unknown = |key, text: &str, e: UnknownInterpolation| {
            SettingError::new(key, format!("{text:?}"), format!("is not allowed: {e}"))
        };
        let train = JobSpec::single(
            &c.rsb.train_split,
            TransformSpec::Train(TrainTransform {
                img_size: to_u32("img_size", c.img_size, IMG_SIZE)?,
                scale: c.scale,
                ratio: c.ratio,
                hflip: c.hflip,
                aa: parse_aa(&c.aa)?,
                train_interpolation: c
                    .train_interpolation
                    .parse()
                    .map_err(|e| unknown("train_interpolation", &c.train_interpolation, e))?,
                aug_repeats: to_u32("aug_repeats", c.aug_repeats, AUG_REPEATS)?,
            }),
            c.seed,
            batch_size,
        );
        train.validate()?;
        // Every rank's job must pass the daemon's check too.
        let world = to_u32("rsb.world_size", c.rsb.world_size, WORLD_SIZE)?;
        JobSpec {
            world_size: world,
            rank: world - 1,
            ..train.clone()
        }
        .validate()
        .map_err(|mut e| {
            if e.key == "world_size" {
                e.key = "rsb.world_size";
            }
            e
        })?;
        let eval = JobSpec::single(
            &c.rsb.val_split,
            TransformSpec::Eval(EvalTransform {
                img_size: to_u32("rsb.test_img_size", c.rsb.test_img_size, IMG_SIZE)?,
                crop_pct: c.crop_pct,
                interpolation: c
                    .interpolation
                    .parse()
                    .map_err(|e| unknown("interpolation", &c.interpolation, e))?,
            }),
            c.seed,
            batch_size,
        );
        // The eval transform's `img_size` is the recipe's `rsb.test_img_size`.
        eval.validate().map_err(|mut e| {
            if e.key == "img_size" {
                e.key = "rsb.test_img_size";
            }
            e
        })?;
        Ok(DataJobs { train, eval })
    }
}

impl DataJobs {
    /// The training job of rank `rank` of `world_size` (what timm's rank gets: its slice of
    /// the repeated-augmentation sampler, `batch_size` images per step).
    pub fn train_rank(&self, world_size: usize, rank: usize) -> JobSpec {
        JobSpec {
            // Checked against the loader's bounds when the recipe was read.
            world_size: u32::try_from(world_size).unwrap_or(u32::MAX),
            rank: u32::try_from(rank).unwrap_or(u32::MAX),
            ..self.train.clone()
        }
    }
}

/// A recipe count as the loader's `u32`, within `range` (a value too large for `u32` is out of
/// it too, and reported as given).
fn to_u32(
    key: &'static str,
    value: usize,
    range: RangeInclusive<u32>,
) -> Result<u32, SettingError> {
    match u32::try_from(value) {
        Ok(v) => SettingError::within(key, v, range).map(|()| v),
        Err(_) => Err(SettingError::new(
            key,
            value,
            format!("is outside {:?}..={:?}", range.start(), range.end()),
        )),
    }
}

/// Checks that `info` (what the loader says the split holds) can feed a model of
/// `num_classes` classes: every record labelled, the dataset's class count equal to the
/// recipe's, every label below it. `key` names the recipe key that chose the split.
///
/// # Errors
/// [`DataError::Split`], saying what to change.
pub fn check_split(info: &SplitInfo, num_classes: usize, key: &str) -> Result<(), DataError> {
    let name = &info.name;
    if info.unlabelled > 0 {
        return Err(DataError::Split(format!(
            "split {name:?} ({key}) has {} of its {} records without a label (packed from a \
             flat folder with no label file); train and evaluate on a labelled split",
            info.unlabelled, info.records
        )));
    }
    if info.classes as usize != num_classes {
        return Err(DataError::Split(format!(
            "the dataset has {} classes (its manifest) and the recipe says num_classes = \
             {num_classes}; set num_classes = {} in the recipe or pass --num-classes {}",
            info.classes, info.classes, info.classes
        )));
    }
    if let Some([_, hi]) = info.labels
        && hi as usize >= num_classes
    {
        return Err(DataError::Split(format!(
            "split {name:?} ({key}) has labels up to {hi}, not below num_classes = \
             {num_classes}: the dataset's index does not match its manifest; run `shard-tool \
             verify` on it"
        )));
    }
    Ok(())
}

/// What the loader at `socket` says of the recipe's training and evaluation splits, each
/// checked with [`check_split`].
///
/// # Errors
/// A split that is missing, unlabelled or does not match `num_classes`.
pub fn check_splits(socket: &Path, jobs: &DataJobs, num_classes: usize) -> Result<(), DataError> {
    for (job, key) in [
        (&jobs.train, "rsb.train_split"),
        (&jobs.eval, "rsb.val_split"),
    ] {
        let info = client::describe(socket, &job.split)?;
        check_split(&info, num_classes, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(classes: u32, labels: Option<[u32; 2]>, unlabelled: u64) -> SplitInfo {
        SplitInfo {
            name: "train".into(),
            records: 100,
            classes,
            labels,
            unlabelled,
            fingerprint: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn a_split_that_does_not_fit_the_recipe_is_refused_with_the_fix() {
        assert!(check_split(&info(10, Some([0, 9]), 0), 10, "rsb.train_split").is_ok());
        let e = check_split(&info(1000, Some([0, 999]), 0), 10, "k").unwrap_err();
        assert!(e.to_string().contains("--num-classes 1000"), "{e}");
        let e = check_split(&info(0, None, 100), 10, "rsb.train_split").unwrap_err();
        assert!(e.to_string().contains("without a label"), "{e}");
        let e = check_split(&info(10, Some([0, 12]), 0), 10, "k").unwrap_err();
        assert!(e.to_string().contains("labels up to 12"), "{e}");
    }
}
