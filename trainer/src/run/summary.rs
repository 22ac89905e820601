//! timm's `summary.csv`: one row per epoch, the columns and order timm's `train.py` writes
//! (`utils.update_summary`), so that scripts that read a timm run's summary read ours.
//!
//! The rows are made from `metrics.jsonl` each time an epoch ends, not appended: a resumed
//! run (whose metrics past its checkpoint were dropped) rewrites them, and no epoch is written
//! twice.

use std::path::Path;

use super::metrics::Metric;

/// timm's header: `epoch`, `train_` + its train metrics (`loss`), `eval_` + its eval metrics
/// (`loss`, `top1`, `top5`), `lr`.
pub const HEADER: [&str; 6] = [
    "epoch",
    "train_loss",
    "eval_loss",
    "eval_top1",
    "eval_top5",
    "lr",
];

/// One epoch's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The epoch trained (from 0, as timm counts).
    pub epoch: u32,
    /// Mean loss of the epoch's steps (timm's `losses_m.avg`; every step weighs the same, as
    /// every batch holds the global batch).
    pub train_loss: f64,
    /// The evaluation after the epoch, where there was one: loss, top-1, top-5.
    pub eval: Option<(Option<f64>, f64, f64)>,
    /// Learning rate of the epoch's last step (timm reads the optimizer's at the epoch's end).
    pub lr: f64,
}

/// The rows of `metrics`, in epoch order. An evaluation belongs to the epoch of the step it
/// followed (after a whole epoch, or after the last step of a run that ended mid-epoch).
pub fn rows(metrics: &[Metric]) -> Vec<Row> {
    let mut rows: Vec<(Row, u32)> = Vec::new();
    for m in metrics {
        match *m {
            Metric::Step {
                epoch, loss, lr, ..
            } => match rows.last_mut() {
                Some((row, n)) if row.epoch == epoch => {
                    row.train_loss += loss;
                    row.lr = lr;
                    *n += 1;
                }
                _ => rows.push((
                    Row {
                        epoch,
                        train_loss: loss,
                        eval: None,
                        lr,
                    },
                    1,
                )),
            },
            Metric::Eval {
                top1, top5, loss, ..
            } => {
                if let Some((row, _)) = rows.last_mut() {
                    row.eval = Some((loss, top1, top5));
                }
            }
        }
    }
    rows.into_iter()
        .map(|(row, n)| Row {
            train_loss: row.train_loss / f64::from(n.max(1)),
            ..row
        })
        .collect()
}

/// `metrics` as timm's `summary.csv`.
///
/// # Errors
/// The CSV writer's error (none for numbers in memory, in practice).
pub fn to_csv(metrics: &[Metric]) -> Result<Vec<u8>, csv::Error> {
    // Python's csv module ends lines with CRLF: so does timm's file, and ours.
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(HEADER)?;
    // Rust's debug form of a float is Python's repr but for the exponent's zero padding
    // (`10.0`, `0.375`; `1e-6` where timm writes `1e-06`): both read back as the same number.
    let number = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:?}"));
    for row in rows(metrics) {
        let (loss, top1, top5) = match row.eval {
            Some((loss, top1, top5)) => (loss, Some(top1), Some(top5)),
            None => (None, None, None),
        };
        w.write_record([
            row.epoch.to_string(),
            number(Some(row.train_loss)),
            number(loss),
            number(top1),
            number(top5),
            number(Some(row.lr)),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Rewrites `path` from `metrics`, atomically.
///
/// # Errors
/// What went wrong, naming the file.
pub fn write(path: &Path, metrics: &[Metric]) -> Result<(), String> {
    let bytes = to_csv(metrics).map_err(|e| format!("{}: {e}", path.display()))?;
    super::write_file(path, &bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_timms_and_each_epoch_is_one_row() {
        let step = |step, epoch, loss, lr| Metric::test_step(step, epoch, loss, lr, 10.0);
        let metrics = [
            step(1, 0, 0.75, 0.125),
            step(2, 0, 0.25, 0.25),
            Metric::Eval {
                step: 2,
                epoch: 1,
                top1: 10.0,
                top5: 50.0,
                samples: 8,
                loss: Some(2.5),
            },
            step(3, 1, 0.5, 0.375),
            step(4, 1, 0.25, 0.5),
        ];
        let text = String::from_utf8(to_csv(&metrics).unwrap()).unwrap();
        // What timm's train.py writes as its first line, CRLF as Python's csv ends it.
        assert!(
            text.starts_with("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\r\n"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines, ["0,0.5,2.5,10.0,50.0,0.25", "1,0.375,,,,0.5"]);
    }

    #[test]
    fn an_evaluation_after_a_run_ended_mid_epoch_is_that_epochs() {
        let metrics = [
            Metric::test_step(1, 0, 1.0, 0.1, 10.0),
            Metric::test_eval(1, 0, 20.0, 60.0, 8),
        ];
        let r = rows(&metrics);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].eval, Some((None, 20.0, 60.0)));
    }
}
