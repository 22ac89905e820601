//! Where a run's batches come from: the loader (a daemon, or one started in this process), and
//! the check of its splits' labels against the recipe, made before any model is built.

use std::path::{Path, PathBuf};

use loader::server::{LocalServer, ServeConfig, ServeError};
use loader::wire::client::{self, ClientError};
use loader::wire::protocol::SplitInfo;

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
    /// The ranks' streams do not fit one another.
    #[error("{0}")]
    Stream(String),
}

impl DataError {
    /// Whether the user's input is at fault (shards that are not a dataset, a split that does
    /// not fit the recipe, a request the loader refused) rather than the loader at run time.
    pub fn is_bad_input(&self) -> bool {
        match self {
            DataError::Serve(e) => e.is_bad_input(),
            DataError::Split(_) | DataError::Client(ClientError::Refused { .. }) => true,
            DataError::Client(_) | DataError::Stream(_) => false,
        }
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
                let defaults = ServeConfig::default();
                let server = LocalServer::start(ServeConfig {
                    shards: Some(dir.clone()),
                    workers: *workers,
                    // Its only user is this process: no per-user share of the connections.
                    max_clients_per_uid: defaults.max_clients,
                    ..defaults
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

/// Checks that `info` (what the loader says the split holds) can feed a model of
/// `num_classes` classes: every record labelled, the dataset's class count equal to the
/// recipe's, every label below it. `key` names the recipe key that chose the split.
///
/// # Errors
/// [`DataError::Split`], saying what to change.
pub(crate) fn check_split(
    info: &SplitInfo,
    num_classes: usize,
    key: &str,
) -> Result<(), DataError> {
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

/// What the loader at `socket` says of each of `splits` (a split's name and the recipe key
/// that chose it), each checked with `check_split`.
///
/// # Errors
/// A split that is missing, unlabelled or does not match `num_classes`.
pub fn check_splits(
    socket: &Path,
    splits: &[(&str, &str)],
    num_classes: usize,
) -> Result<(), DataError> {
    for (split, key) in splits {
        let info = client::describe(socket, split)?;
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
