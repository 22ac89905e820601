//! `trainer compare RUN...`: several runs side by side: their training loss (moving average)
//! and evaluation top-1 in one PNG, one color per run, and a table of their final metrics.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::curves::PlotError;
use super::draw::{
    DrawError, FONT, check_size, draw_error, legend, moving_average, panel, plain, range,
    register_font, write_png,
};
use crate::run::RunDir;
use crate::run::metrics::Metric;

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

/// The figures of one run.
pub(crate) fn summarize(name: &str, metrics: &[Metric]) -> RunSummary {
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
///
/// # Errors
/// [`DrawError::Size`] for a side outside [`super::draw::SIDES`], [`DrawError::Draw`].
pub fn render(
    runs: &[(String, Vec<Metric>)],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, DrawError> {
    check_size(width, height)?;
    register_font()?;
    let series: Vec<Series<'_>> = runs.iter().map(|(name, m)| Series::of(name, m)).collect();
    // A little room right of the last step, so its evaluation's points are drawn whole.
    let last = series
        .iter()
        .flat_map(|s| s.loss.last().map(|p| p.0))
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
        loss_panel(&panels[0], &series, last)?;
        top1_panel(&panels[1], &series, last)?;
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

/// One run's curves: its loss (moving mean over 50 points along the run) and its top-1.
struct Series<'a> {
    name: &'a str,
    loss: Vec<(f64, f64)>,
    top1: Vec<(f64, f64)>,
}

impl<'a> Series<'a> {
    fn of(name: &'a str, metrics: &[Metric]) -> Series<'a> {
        let mut loss = Vec::new();
        let mut top1 = Vec::new();
        for m in metrics {
            match *m {
                Metric::Step { step, loss: l, .. } => loss.push((step as f64, l)),
                Metric::Eval { step, top1: t, .. } => top1.push((step as f64, t)),
            }
        }
        let window = (loss.len() / 50).max(1);
        Series {
            name,
            loss: moving_average(&loss, window),
            top1,
        }
    }
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;

/// Every run's loss, one color each.
fn loss_panel(area: &Area<'_>, series: &[Series<'_>], last: f64) -> Result<(), DrawError> {
    let y = range(
        series.iter().flat_map(|s| s.loss.iter().map(|p| p.1)),
        false,
    );
    let mut chart = panel(area, "training loss (moving mean)", 0.0..last, y, plain)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.loss.clone(), color))
            .map_err(draw_error)?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Every run's evaluations, fitted to their values: runs a point apart are what a comparison
/// is for.
fn top1_panel(area: &Area<'_>, series: &[Series<'_>], last: f64) -> Result<(), DrawError> {
    let top1 = range(
        series.iter().flat_map(|s| s.top1.iter().map(|p| p.1)),
        false,
    );
    let top1 = top1.start.max(0.0)..top1.end.min(100.0);
    let mut chart = panel(area, "evaluation top-1, %", 0.0..last, top1, plain)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).filled();
        chart
            .draw_series(LineSeries::new(s.top1.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.top1.iter().map(|&p| Circle::new(p, 3, color)))
            .map_err(draw_error)?;
    }
    // Top-1 rises to the right: the upper left stays clear of the points.
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
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
        let run = RunDir::named(run);
        let metrics = run.read_metrics()?;
        if !metrics.iter().any(|m| matches!(m, Metric::Step { .. })) {
            return Err(PlotError::Empty(run.metrics()));
        }
        all.push((run.name(), metrics));
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
            let loss = (-(step as f64) * rate).exp();
            out.push(Metric::test_step(
                step,
                ((step - 1) / 50) as u32,
                loss,
                1e-3,
                100.0,
            ));
            if step % 50 == 0 {
                let top1 = top * step as f64 / steps as f64;
                out.push(Metric::test_eval(step, (step / 50) as u32, top1, 100.0, 10));
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
            std::fs::write(RunDir::new(&d).metrics(), text).expect("write");
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
        std::fs::write(RunDir::new(&empty).metrics(), "").expect("write");
        let e = compare(&[empty], &out, 900, 500).unwrap_err().to_string();
        assert!(e.contains("no training steps"), "{e}");
    }
}
