//! `metrics.jsonl`, a run's record: one JSON line per step and per evaluation, appended as the
//! run goes and cut back to the checkpoint on resume, so the file always tells one
//! uninterrupted run. This module owns the format: writing (`MetricsLog`) and reading
//! (`read_metrics`); [`RunDir`](super::RunDir) owns where the file is.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of a metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a metrics record.
    #[error("{path}:{line}: not a metrics line ({source}); is this a trainer metrics.jsonl?")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's message.
        source: serde_json::Error,
    },
    /// A line whose numbers no run writes.
    #[error("{path}:{line}: {what}; this line was not written by a trainer run")]
    Value {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Which value, and its bounds.
        what: String,
    },
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
        /// Mean cross-entropy on the evaluated images (timm's `eval_loss`). Older files lack
        /// it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
    },
}

impl Metric {
    /// Whether its numbers are ones a run writes: a loss within f32's range (a run stops at
    /// the first that is not finite), finite non-negative rates and times, accuracies in
    /// 0..=100 with top-5 at least top-1, steps and epochs within what a recipe allows. Read back, a
    /// top-1 of 1e308 would otherwise top a `compare` table or a `study` ranking.
    ///
    /// # Errors
    /// The value and its bounds.
    pub fn check(&self) -> Result<(), String> {
        let non_negative = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} {v:?} is not a finite number ≥ 0"))
            }
        };
        // The loss is computed in f32 (or bf16): nothing beyond f32's range comes out of it.
        let loss_bound = |name: &str, v: f64| {
            if v.is_finite() && v.abs() <= f64::from(f32::MAX) {
                Ok(())
            } else {
                Err(format!("{name} {v:?} is beyond what an f32 loss can be"))
            }
        };
        let (step, epoch, first) = match *self {
            Metric::Step { step, epoch, .. } => (step, epoch, 1),
            Metric::Eval { step, epoch, .. } => (step, epoch, 0),
        };
        let steps = *crate::recipe::ranges::STEPS.end();
        if !(first..=steps).contains(&step) {
            return Err(format!("step {step} is outside {first}..={steps}"));
        }
        let epochs = *crate::recipe::ranges::EPOCHS.end();
        if u64::from(epoch) > epochs {
            return Err(format!(
                "epoch {epoch} is past the most a recipe has ({epochs})"
            ));
        }
        match *self {
            Metric::Step {
                loss,
                lr,
                samples_per_s,
                data_wait_s,
                upload_s,
                ..
            } => {
                loss_bound("loss", loss)?;
                non_negative("lr", lr)?;
                non_negative("samples_per_s", samples_per_s)?;
                non_negative("data_wait_s", data_wait_s)?;
                non_negative("upload_s", upload_s)
            }
            Metric::Eval {
                top1, top5, loss, ..
            } => {
                for (name, v) in [("top1", top1), ("top5", top5)] {
                    if !(0.0..=100.0).contains(&v) {
                        return Err(format!("{name} {v:?} is outside 0..=100"));
                    }
                }
                // The five best classes include the best one: over the same images, top-5
                // can never be below top-1.
                if top5 < top1 {
                    return Err(format!("top5 {top5:?} is below top1 {top1:?}"));
                }
                match loss {
                    Some(l) => non_negative("loss", l).and_then(|()| loss_bound("loss", l)),
                    None => Ok(()),
                }
            }
        }
    }

    /// Whether this line can follow `previous` in one run's file: step lines one after
    /// another in increasing steps, an evaluation at the steps already done, epochs that never
    /// go back.
    ///
    /// # Errors
    /// What does not follow.
    pub fn follows(&self, previous: &Metric) -> Result<(), String> {
        use Metric::{Eval, Step};
        let (step, epoch) = (self.step(), self.epoch());
        let (before, before_epoch) = (previous.step(), previous.epoch());
        // A step line's epoch is its batch's (from 0), an evaluation's the epochs done (at an
        // epoch's end, one more than its last batch's): the batch after an evaluation at E
        // epochs done is of epoch E, or E - 1 at the most lenient.
        let (step_ok, epoch_ok) = match (self, previous) {
            (Step { .. }, Step { .. }) => (step > before, epoch >= before_epoch),
            (Step { .. }, Eval { .. }) => (step > before, epoch + 1 >= before_epoch),
            (Eval { .. }, _) => (step >= before, epoch >= before_epoch),
        };
        if !step_ok {
            return Err(format!(
                "{} at step {step} comes after step {before}",
                self.kind()
            ));
        }
        if !epoch_ok {
            return Err(format!(
                "{} of epoch {epoch} comes after epoch {before_epoch}",
                self.kind()
            ));
        }
        Ok(())
    }

    /// Its epoch field: a step line's batch's epoch, an evaluation's epochs done.
    fn epoch(&self) -> u32 {
        match self {
            Metric::Step { epoch, .. } | Metric::Eval { epoch, .. } => *epoch,
        }
    }

    /// Its kind, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Metric::Step { .. } => "a step",
            Metric::Eval { .. } => "an evaluation",
        }
    }

    /// Steps done when the line was written.
    pub fn step(&self) -> u64 {
        match self {
            Metric::Step { step, .. } | Metric::Eval { step, .. } => *step,
        }
    }
}

#[cfg(test)]
impl Metric {
    /// A step line for tests: `global_batch` 64, no data wait or upload.
    pub(crate) fn test_step(
        step: u64,
        epoch: u32,
        loss: f64,
        lr: f64,
        samples_per_s: f64,
    ) -> Metric {
        Metric::Step {
            step,
            epoch,
            loss,
            lr,
            global_batch: 64,
            samples_per_s,
            data_wait_s: 0.0,
            upload_s: 0.0,
        }
    }

    /// An evaluation line for tests.
    pub(crate) fn test_eval(step: u64, epoch: u32, top1: f64, top5: f64, samples: u64) -> Metric {
        Metric::Eval {
            step,
            epoch,
            top1,
            top5,
            samples,
            loss: None,
        }
    }
}

/// A run's metrics file, open for appending.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping lines past `steps_done` (written by a run
    /// that died after its last checkpoint: they are about to be redone). The file is always
    /// written anew through a temporary renamed into place (a crash leaves either version
    /// whole), and the lines that follow go to that new file through the descriptor the
    /// rename kept: never to whatever a neighbour put at the name. The old file is read a
    /// line at a time.
    ///
    /// # Errors
    /// [`MetricsError::Io`] naming the file.
    pub fn open(path: &Path, steps_done: u64) -> Result<MetricsLog, MetricsError> {
        let err = |source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Absent on a first run; anything there must be a metrics file this run can read.
        let old = match std::fs::symlink_metadata(path) {
            Ok(_) => Some(open_text(path)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let mut read_error = None;
        let file = shard_tool::atomic::write_atomic_open(path, |w| {
            let Some(old) = old else { return Ok(()) };
            let mut lines = Lines::new(old);
            let mut last: Option<Metric> = None;
            while let Some(line) = lines.next_line().transpose() {
                let line = match line {
                    Ok(line) => line,
                    Err(e) => {
                        read_error = Some(e.to_string());
                        return Err(e);
                    }
                };
                // Only lines a run writes, in the order it writes them, up to the checkpoint.
                let Some(l) = line.text() else { continue };
                let Ok(m) = serde_json::from_str::<Metric>(l) else {
                    continue;
                };
                let fits = m.check().is_ok()
                    && m.step() <= steps_done
                    && last.as_ref().is_none_or(|p| m.follows(p).is_ok());
                if fits {
                    last = Some(m);
                    w.write_all(l.as_bytes())?;
                    w.write_all(b"\n")?;
                }
            }
            Ok(())
        })
        .map_err(|e| {
            err(std::io::Error::other(
                read_error.unwrap_or_else(|| e.chain()),
            ))
        })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one line.
    ///
    /// # Errors
    /// [`MetricsError::Io`] naming the file.
    pub(crate) fn append(&mut self, m: &Metric) -> Result<(), MetricsError> {
        // A metric of plain numbers always serializes.
        let line = serde_json::to_string(m).unwrap_or_default();
        writeln!(self.file, "{line}").map_err(|source| MetricsError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The longest line read as a metric: ours are about 200 bytes; a longer line is not one, and
/// is skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// A line of a metrics file, as [`Lines`] reads it.
pub(crate) enum Line {
    /// Its text, without the newline.
    Text(String),
    /// A line over [`MAX_LINE_BYTES`] or not UTF-8: not a metrics line.
    Unreadable(&'static str),
}

impl Line {
    /// Its text, if it is one.
    fn text(&self) -> Option<&str> {
        match self {
            Line::Text(t) => Some(t),
            Line::Unreadable(_) => None,
        }
    }
}

/// A metrics file's lines, one at a time: memory is bounded by [`MAX_LINE_BYTES`], whatever
/// the file holds.
pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> Lines<R> {
    /// Lines of `reader`.
    pub(crate) fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            buf: Vec::new(),
        }
    }

    /// The next line, `None` at the end.
    ///
    /// # Errors
    /// The read's I/O error.
    pub(crate) fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > MAX_LINE_BYTES {
            // Skip the rest of the line without keeping it.
            loop {
                let chunk = self.reader.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.reader.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        self.reader.consume(len);
                    }
                }
            }
            return Ok(Some(Line::Unreadable("longer than 64 KiB")));
        }
        Ok(Some(match std::str::from_utf8(&self.buf) {
            Ok(text) => Line::Text(text.to_owned()),
            Err(_) => Line::Unreadable("not UTF-8"),
        }))
    }
}

/// A metrics file open for reading a line at a time: a regular file (never a FIFO or device).
fn open_text(path: &Path) -> Result<std::io::BufReader<std::fs::File>, MetricsError> {
    shard_tool::user_file::open_regular(path)
        .map(std::io::BufReader::new)
        .map_err(|e| MetricsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.reason()),
        })
}

/// Reads a metrics file, every line in order, a line at a time.
///
/// # Errors
/// [`MetricsError`] naming the file, and the line that is not a metric.
pub(crate) fn read_metrics(path: &Path) -> Result<Vec<Metric>, MetricsError> {
    let mut lines = Lines::new(open_text(path)?);
    let mut metrics = Vec::new();
    let mut number = 0;
    while let Some(line) = lines.next_line().map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })? {
        number += 1;
        let line = match line {
            Line::Text(text) => text,
            Line::Unreadable(why) => {
                return Err(MetricsError::Value {
                    path: path.to_path_buf(),
                    line: number,
                    what: format!("the line is {why}"),
                });
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let metric: Metric = serde_json::from_str(&line).map_err(|source| MetricsError::Parse {
            path: path.to_path_buf(),
            line: number,
            source,
        })?;
        metric
            .check()
            .and_then(|()| metrics.last().map_or(Ok(()), |p| metric.follows(p)))
            .map_err(|what| MetricsError::Value {
                path: path.to_path_buf(),
                line: number,
                what,
            })?;
        metrics.push(metric);
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_numbers_no_run_writes_are_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let step = r#"{"kind":"step","step":1,"epoch":0,"loss":0.7,"lr":0.001,"samples_per_s":10.0,"data_wait_s":0.0}"#;
        let eval = r#"{"kind":"eval","step":1,"epoch":1,"top1":60.0,"top5":70.0,"samples":8}"#;
        // `base` with each (key, JSON value) of `changes` set.
        let changed = |base: &str, changes: &[(&str, &str)]| {
            let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
            for (key, value) in changes {
                v[key] = serde_json::from_str(value).unwrap();
            }
            v.to_string()
        };
        let cases = [
            (
                changed(eval, &[("top1", "1e308")]),
                "top1 1e308 is outside 0..=100",
            ),
            (
                changed(eval, &[("top5", "-1.0")]),
                "top5 -1.0 is outside 0..=100",
            ),
            (
                changed(step, &[("step", "2"), ("lr", "-1.0")]),
                "lr -1.0 is not a finite number",
            ),
            (
                changed(eval, &[("top5", "50.0")]),
                "top5 50.0 is below top1 60.0",
            ),
            (
                changed(step, &[("step", "18446744073709551615")]),
                "step 18446744073709551615 is outside 1..=1000000000",
            ),
            (
                changed(step, &[("step", "2"), ("loss", "1e308")]),
                "loss 1e308 is beyond what an f32 loss can be",
            ),
            (step.to_string(), "a step at step 1 comes after step 1"),
            (
                changed(eval, &[("step", "0")]),
                "an evaluation at step 0 comes after step 1",
            ),
            (
                changed(step, &[("step", "2"), ("epoch", "4000000000")]),
                "epoch 4000000000 is past the most a recipe has",
            ),
        ];
        for (line, want) in &cases {
            std::fs::write(&path, format!("{step}\n{line}\n")).unwrap();
            let err = read_metrics(&path).unwrap_err().to_string();
            assert!(err.contains(":2: ") && err.contains(want), "{err}");
        }
        std::fs::write(&path, format!("{step}\n")).unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 1);
        // A resume keeps none of them: the file it leaves reads whole (summary.csv is made
        // from it).
        let lines: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
        std::fs::write(&path, format!("{step}\n{lines}")).unwrap();
        drop(MetricsLog::open(&path, u64::MAX).unwrap());
        assert_eq!(read_metrics(&path).unwrap().len(), 1);
    }

    #[test]
    fn metrics_past_the_checkpoint_are_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-metrics-file.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
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
            log.append(&m).unwrap();
        }
        drop(log);
        drop(MetricsLog::open(&path, 3).unwrap());
        let read = read_metrics(&path).unwrap();
        assert_eq!(read.iter().map(Metric::step).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_line_too_long_to_be_a_metric_is_named_and_never_held_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let step = |n: u64| {
            format!(
                r#"{{"kind":"step","step":{n},"epoch":0,"loss":0.7,"lr":0.001,"samples_per_s":10.0,"data_wait_s":0.0}}"#
            )
        };
        let long = "x".repeat(4 * MAX_LINE_BYTES);
        std::fs::write(&path, format!("{}\n{long}\n{}\n", step(1), step(2))).unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains(":2: the line is longer than 64 KiB"), "{err}");
        // A resume drops it and keeps the lines around it.
        drop(MetricsLog::open(&path, 5).unwrap());
        let read = read_metrics(&path).unwrap();
        assert_eq!(read.iter().map(Metric::step).collect::<Vec<_>>(), [1, 2]);
        // The reader's buffer never held the long line.
        let mut lines = Lines::new(std::io::BufReader::new(long.as_bytes()));
        assert!(matches!(
            lines.next_line().unwrap(),
            Some(Line::Unreadable(_))
        ));
        assert!(
            lines.buf.capacity() <= 2 * MAX_LINE_BYTES + 64,
            "{}",
            lines.buf.capacity()
        );
        assert!(lines.next_line().unwrap().is_none());
    }

    #[test]
    fn a_resume_appends_to_the_file_it_wrote_not_to_a_link_planted_at_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let mut log = MetricsLog::open(&path, 0).unwrap();
        log.append(&Metric::test_step(1, 0, 1.0, 0.1, 1.0)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(read_metrics(&path).unwrap().len(), 1);
    }
}
