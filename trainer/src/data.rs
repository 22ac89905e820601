//! Where a run's batches come from and what it asks for: the loader (a daemon, or one started
//! in this process), the two loader jobs a recipe means ([`DataJobs`], built and checked when
//! the recipe is read), and the check of a split's labels against the recipe, made before any
//! model is built.

use std::path::{Path, PathBuf};

use loader::client::{self, ClientError};
use loader::eval_transform::EvalTransform;
use loader::protocol::SplitInfo;
use loader::server::{LocalServer, ServeConfig};
use loader::transform::{SettingError, TrainTransform};
use loader::{JobSpec, TransformSpec};

use crate::config::TrainConfig;

/// Errors about the data of a run.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The loader could not be started or reached, or refused.
    #[error("loader: {0}")]
    Loader(String),
    /// A split does not fit the recipe.
    #[error("{0}")]
    Split(String),
}

impl From<ClientError> for DataError {
    fn from(e: ClientError) -> DataError {
        DataError::Loader(e.to_string())
    }
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
                })
                .map_err(|e| DataError::Loader(e.to_string()))?;
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
        let u32_of = |key: &'static str, v: usize, range: &str| {
            u32::try_from(v).map_err(|_| SettingError::new(key, v, format!("is outside {range}")))
        };
        let sizes = format!(
            "{}..={}",
            loader::transform::IMG_SIZE.start(),
            loader::transform::IMG_SIZE.end()
        );
        let aa = match c.aa.as_str() {
            "" | "none" => None,
            text => Some(
                text.parse()
                    .map_err(|e: loader::rand_augment::config::ParseError| {
                        SettingError::new("aa", format!("{text:?}"), format!("does not parse: {e}"))
                    })?,
            ),
        };
        let train_interpolation = c.train_interpolation.parse().map_err(
            |e: loader::interpolation::UnknownInterpolation| {
                SettingError::new(
                    "train_interpolation",
                    format!("{:?}", c.train_interpolation),
                    format!("is not allowed: {e}"),
                )
            },
        )?;
        let interpolation =
            c.interpolation
                .parse()
                .map_err(|e: loader::interpolation::UnknownInterpolation| {
                    SettingError::new(
                        "interpolation",
                        format!("{:?}", c.interpolation),
                        format!("is not allowed: {e}"),
                    )
                })?;
        let batch_size = u32_of("batch_size", c.batch_size, "1..=8192")?;
        let train = JobSpec::single(
            &c.rsb.train_split,
            TransformSpec::Train(TrainTransform {
                img_size: u32_of("img_size", c.img_size, &sizes)?,
                scale: c.scale,
                ratio: c.ratio,
                hflip: c.hflip,
                aa,
                train_interpolation,
                aug_repeats: u32_of("aug_repeats", c.aug_repeats, "0..=16")?,
            }),
            c.seed,
            batch_size,
        );
        train.validate().map_err(|e| job_key(e, "img_size"))?;
        let eval = JobSpec::single(
            &c.rsb.val_split,
            TransformSpec::Eval(EvalTransform {
                img_size: u32_of("rsb.test_img_size", c.rsb.test_img_size, &sizes)?,
                crop_pct: c.crop_pct,
                interpolation,
            }),
            c.seed,
            batch_size,
        );
        eval.validate()
            .map_err(|e| job_key(e, "rsb.test_img_size"))?;
        Ok(DataJobs { train, eval })
    }
}

/// A job's error under the recipe's key: the eval transform's `img_size` is the recipe's
/// `rsb.test_img_size`.
fn job_key(e: loader::job::JobError, img_size_key: &'static str) -> SettingError {
    match e {
        loader::job::JobError::Setting(mut s) => {
            if s.key == "img_size" {
                s.key = img_size_key;
            }
            s
        }
        other => SettingError::new("batch_size", "?", other.to_string()),
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
