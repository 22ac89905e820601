//! `OUT/metrics.jsonl`: one JSON line per step and per evaluation, appended as the run goes and
//! cut back to the checkpoint on resume, so the file always tells one uninterrupted run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Writing the metrics file failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct MetricsError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    /// After each optimizer step.
    Step {
        /// Steps done (this one included).
        step: u64,
        /// Epoch of the batch.
        epoch: u32,
        /// BCE (or CE) loss of the batch: the mean over the ranks' batches.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Images of the step over all ranks (`batch_size × world_size`; older files lack it).
        #[serde(default)]
        global_batch: usize,
        /// Samples per second of this step over all ranks (data wait included).
        samples_per_s: f64,
        /// Seconds this step waited for its batch.
        data_wait_s: f64,
        /// Seconds the host spent issuing this step's upload (copies on the host included;
        /// the device's copy itself overlaps compute). Older files lack it.
        #[serde(default)]
        upload_s: f64,
    },
    /// After each evaluation.
    Eval {
        /// Steps done.
        step: u64,
        /// Epochs done.
        epoch: u32,
        /// Top-1 accuracy, percent.
        top1: f64,
        /// Top-5 accuracy, percent.
        top5: f64,
        /// Images evaluated.
        samples: u64,
    },
}

impl Metric {
    /// Steps done when the line was written.
    pub fn step(&self) -> u64 {
        match self {
            Metric::Step { step, .. } | Metric::Eval { step, .. } => *step,
        }
    }
}

/// Opens `metrics.jsonl` for appending, first dropping lines past `steps_done` (written by a
/// run that died after its last checkpoint: they are about to be redone).
pub fn open_metrics(path: &Path, steps_done: u64) -> Result<std::fs::File, MetricsError> {
    let err = |source| MetricsError {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<Metric>(l).is_ok_and(|m| m.step() <= steps_done))
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)
}

/// Appends one line.
pub fn write_metric(file: &mut std::fs::File, path: &Path, m: &Metric) -> Result<(), MetricsError> {
    let line = serde_json::to_string(m).unwrap_or_default();
    writeln!(file, "{line}").map_err(|source| MetricsError {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_past_the_checkpoint_are_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut f = open_metrics(&path, 0).unwrap();
        for step in 1..=5 {
            let m = Metric::Step {
                step,
                epoch: 0,
                loss: 1.0,
                lr: 0.1,
                global_batch: 4,
                samples_per_s: 1.0,
                data_wait_s: 0.0,
                upload_s: 0.0,
            };
            write_metric(&mut f, &path, &m).unwrap();
        }
        drop(f);
        drop(open_metrics(&path, 3).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
