//! `trainer compare RUN...`: several runs side by side: their training loss (moving average)
//! and evaluation top-1 in one PNG, one color per run, and a table of their final metrics.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::metrics::Metric;
use crate::plot::{
    FONT, PlotError, draw_error, legend, metrics_file, moving_average, panel, plain, range,
    read_metrics, register_font, write_png,
};

/// One run's final figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// The run's name (its directory's).
    pub name: String,
    /// Training steps done.
    pub steps: u64,
    /// Epochs begun.
    pub epochs: u32,
    /// Mean loss of the last 50 steps (or fewer).
    pub final_loss: f64,
    /// The last evaluation's top-1 and top-5, in percent.
    pub top1: Option<f64>,
    /// See `top1`.
    pub top5: Option<f64>,
    /// The best top-1 of any evaluation.
    pub best_top1: Option<f64>,
}

/// The run's name in the table and legend: its directory's.
fn run_name(run: &Path) -> String {
    let dir = if run.is_dir() {
        run
    } else {
        run.parent().unwrap_or(run)
    };
    dir.file_name().map_or_else(
        || run.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The figures of one run.
pub fn summarize(name: &str, metrics: &[Metric]) -> RunSummary {
    let steps: Vec<(u64, u32, f64)> = metrics
        .iter()
        .filter_map(|m| match *m {
            Metric::Step {
                step, epoch, loss, ..
            } => Some((step, epoch, loss)),
            Metric::Eval { .. } => None,
        })
        .collect();
    let evals: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| match *m {
            Metric::Eval { top1, top5, .. } => Some((top1, top5)),
            Metric::Step { .. } => None,
        })
        .collect();
    let tail = &steps[steps.len().saturating_sub(50)..];
    RunSummary {
        name: name.to_owned(),
        steps: steps.last().map_or(0, |s| s.0),
        epochs: steps.last().map_or(0, |s| s.1 + 1),
        final_loss: tail.iter().map(|s| s.2).sum::<f64>() / tail.len().max(1) as f64,
        top1: evals.last().map(|e| e.0),
        top5: evals.last().map(|e| e.1),
        best_top1: evals.iter().map(|e| e.0).reduce(f64::max),
    }
}

/// Draws the runs into an RGB buffer of `width × height`: loss on the left, top-1 on the right.
pub fn render(
    runs: &[(String, Vec<Metric>)],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let losses: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, metrics)| {
            let points: Vec<(f64, f64)> = metrics
                .iter()
                .filter_map(|m| match *m {
                    Metric::Step { step, loss, .. } => Some((step as f64, loss)),
                    Metric::Eval { .. } => None,
                })
                .collect();
            moving_average(&points, (points.len() / 50).max(1))
        })
        .collect();
    let evals: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, metrics)| {
            metrics
                .iter()
                .filter_map(|m| match *m {
                    Metric::Eval { step, top1, .. } => Some((step as f64, top1)),
                    Metric::Step { .. } => None,
                })
                .collect()
        })
        .collect();
    // A little room right of the last step, so its evaluation's points are drawn whole.
    let last = losses
        .iter()
        .flat_map(|l| l.last().map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.03;
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root
            .titled(&format!("{} runs", runs.len()), (FONT, 22))
            .map_err(draw_error)?;
        let panels = root.split_evenly((1, 2));
        let y = range(losses.iter().flatten().map(|p| p.1), false);
        let mut chart = panel(
            &panels[0],
            "training loss (moving mean)",
            0.0..last,
            y,
            plain,
        )?;
        for (i, ((name, _), points)) in runs.iter().zip(&losses).enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), color))
                .map_err(draw_error)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        // Fitted to the runs' values: runs a point apart are what a comparison is for.
        let top1 = range(evals.iter().flatten().map(|p| p.1), false);
        let top1 = top1.start.max(0.0)..top1.end.min(100.0);
        let mut chart = panel(&panels[1], "evaluation top-1, %", 0.0..last, top1, plain)?;
        for (i, ((name, _), points)) in runs.iter().zip(&evals).enumerate() {
            let color = Palette99::pick(i).filled();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(draw_error)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color)))
                .map_err(draw_error)?;
        }
        // Top-1 rises to the right: the upper left stays clear of the points.
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

/// Reads every run, draws them into `out` and returns their figures, in the order given.
///
/// # Errors
/// [`PlotError`] naming the run whose metrics cannot be read or have no step.
pub fn compare(
    runs: &[PathBuf],
    out: &Path,
    width: u32,
    height: u32,
) -> Result<Vec<RunSummary>, PlotError> {
    let mut all = Vec::with_capacity(runs.len());
    for run in runs {
        let file = metrics_file(run);
        let metrics = read_metrics(&file)?;
        if !metrics.iter().any(|m| matches!(m, Metric::Step { .. })) {
            return Err(PlotError::Empty(file));
        }
        all.push((run_name(run), metrics));
    }
    let rgb = render(&all, width, height)?;
    write_png(out, &rgb, width, height)?;
    Ok(all.iter().map(|(name, m)| summarize(name, m)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose loss falls at `rate` and whose top-1 rises to `top`, evaluated each 50 steps.
    fn run(steps: u64, rate: f64, top: f64) -> Vec<Metric> {
        let mut out = Vec::new();
        for step in 1..=steps {
            out.push(Metric::Step {
                step,
                epoch: ((step - 1) / 50) as u32,
                loss: (-(step as f64) * rate).exp(),
                lr: 1e-3,
                global_batch: 64,
                samples_per_s: 100.0,
                data_wait_s: 0.0,
                upload_s: 0.0,
            });
            if step % 50 == 0 {
                out.push(Metric::Eval {
                    step,
                    epoch: (step / 50) as u32,
                    top1: top * step as f64 / steps as f64,
                    top5: 100.0,
                    samples: 10,
                });
            }
        }
        out
    }

    #[test]
    fn two_runs_share_one_png_and_a_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut runs = Vec::new();
        for (name, rate, top) in [("slow", 0.001, 40.0), ("fast", 0.02, 80.0)] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).expect("dir");
            let text: String = run(150, rate, top)
                .iter()
                .map(|m| serde_json::to_string(m).expect("json") + "\n")
                .collect();
            std::fs::write(d.join("metrics.jsonl"), text).expect("write");
            runs.push(d);
        }
        let out = dir.path().join("compare.png");
        let table = compare(&runs, &out, 900, 500).expect("compare");
        assert_eq!(table[0].name, "slow");
        assert_eq!(table[1].name, "fast");
        assert_eq!((table[1].steps, table[1].epochs), (150, 3));
        assert_eq!(table[1].top1, Some(80.0));
        assert_eq!(table[0].best_top1, Some(40.0));
        assert!(table[1].final_loss < table[0].final_loss);
        // Each run's color is in the image.
        let rgb = render(
            &[
                ("a".into(), run(150, 0.001, 40.0)),
                ("b".into(), run(150, 0.02, 80.0)),
            ],
            900,
            500,
        )
        .expect("render");
        for i in 0..2 {
            let c = Palette99::pick(i).to_rgba();
            let n = rgb
                .chunks_exact(3)
                .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
                .count();
            assert!(n > 100, "run {i}'s color: {n} pixels");
        }
        assert!(out.exists());
        // A run without steps is named.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("dir");
        std::fs::write(empty.join("metrics.jsonl"), "").expect("write");
        let e = compare(&[empty], &out, 900, 500).unwrap_err().to_string();
        assert!(e.contains("no training steps"), "{e}");
    }
}
