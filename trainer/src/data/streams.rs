//! A run's connection to the loader: one stream per rank of this process, all under one job id
//! (so the daemon serves the ranks that reach it as one group and decodes each image once for
//! all its copies), and the checks that the streams fit one another.

use std::path::Path;
use std::time::Duration;

use loader::JobSpec;
use loader::request::job::Position;
use loader::wire::client::{Batch, Client, ClientOptions};

use super::DataError;

/// How long a stream waits for a daemon that restarted before it gives up.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a run asks the loader for.
pub struct StreamRequest<'a> {
    /// The daemon's socket (the in-process loader's, with `--shards`).
    pub socket: &'a Path,
    /// The job id every process of the run shares.
    pub job_id: &'a str,
    /// The jobs of this process's ranks, one stream each.
    pub jobs: Vec<JobSpec>,
    /// Where the streams start (a checkpoint's next batch).
    pub start: Position,
    /// The recipe's epochs, after which the streams end.
    pub epochs: u32,
}

/// One stream per job of `request.jobs`.
///
/// # Errors
/// [`DataError::Client`] if the loader cannot be reached or refuses a rank's job.
pub fn connect(request: StreamRequest<'_>) -> Result<Vec<Client>, DataError> {
    request
        .jobs
        .into_iter()
        .map(|job| {
            Client::connect(ClientOptions {
                socket: request.socket.to_path_buf(),
                job_id: request.job_id.to_string(),
                job,
                start: request.start,
                epochs: Some(request.epochs),
                slots: None,
                reconnect_timeout: RECONNECT_TIMEOUT,
            })
            .map_err(DataError::from)
        })
        .collect()
}

/// Batches per epoch, the same for every rank: timm's samplers give every rank as many, and a
/// rank with fewer would leave the others waiting for it forever under DDP.
///
/// # Errors
/// [`DataError::Stream`] if two ranks' streams differ.
pub fn steps_per_epoch(counts: impl IntoIterator<Item = u64>) -> Result<u64, DataError> {
    let mut counts = counts.into_iter();
    let first = counts.next().unwrap_or(0);
    match counts.find(|&c| c != first) {
        Some(other) => Err(DataError::Stream(format!(
            "the loader gives rank 0 {first} batches per epoch and another rank {other}; every \
             rank must get as many"
        ))),
        None => Ok(first),
    }
}

/// One batch from every rank's stream, all at one position; `None` when a stream ended.
///
/// # Errors
/// [`DataError::Client`] if a stream fails; [`DataError::Stream`] if the ranks' batches are not
/// at one position.
pub fn next_batches(clients: &mut [Client]) -> Result<Option<Vec<Batch>>, DataError> {
    let mut held = Vec::with_capacity(clients.len());
    for client in clients {
        match client.next_batch()? {
            Some(batch) => held.push(batch),
            None => return Ok(None),
        }
    }
    in_step(held.iter().map(|b| b.position))?;
    Ok(Some(held))
}

/// Checks that every rank's batch is at the first one's position.
fn in_step(mut positions: impl Iterator<Item = Position>) -> Result<(), DataError> {
    let Some(at) = positions.next() else {
        return Ok(());
    };
    match positions.find(|p| *p != at) {
        Some(other) => Err(DataError::Stream(format!(
            "rank batches out of step: rank 0 at {at:?}, another at {other:?}"
        ))),
        None => Ok(()),
    }
}

/// The training split's identity (its index's XXH3), as the first stream reports it.
pub fn dataset_fingerprint(clients: &[Client]) -> String {
    clients
        .first()
        .and_then(Client::split)
        .map(|s| s.fingerprint.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_must_get_as_many_batches_per_epoch() {
        assert_eq!(steps_per_epoch([39, 39, 39]).unwrap(), 39);
        assert_eq!(steps_per_epoch([]).unwrap(), 0);
        let err = steps_per_epoch([39, 39, 38]).unwrap_err().to_string();
        assert_eq!(
            err,
            "the loader gives rank 0 39 batches per epoch and another rank 38; every rank must \
             get as many"
        );
    }

    #[test]
    fn the_ranks_batches_must_be_at_one_position() {
        let at = |epoch, step| Position { epoch, step };
        assert!(in_step([at(0, 3), at(0, 3)].into_iter()).is_ok());
        assert!(in_step(std::iter::empty()).is_ok());
        let err = in_step([at(0, 3), at(0, 3), at(1, 0)].into_iter()).unwrap_err();
        assert!(
            err.to_string().starts_with("rank batches out of step"),
            "{err}"
        );
        assert!(!err.is_bad_input());
    }
}
