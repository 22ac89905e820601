//! `trainer plot`: a run's `metrics.jsonl` as one PNG with four panels: training loss (each
//! step, and its moving average), learning rate, evaluation top-1/top-5, and throughput.
//!
//! Drawn with plotters into an RGB buffer, text in the embedded DejaVu Sans (no system fonts
//! needed), written atomically (`draw::write_png`).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::draw::{
    Chart, DrawError, FONT, check_size, draw_error, legend, moving_average, panel, plain, range,
    register_font, scientific, write_png,
};
use crate::run::RunDir;
use crate::run::metrics::{Metric, MetricsError};

/// Errors of `trainer plot`.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The metrics file.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Nothing to draw.
    #[error("{0} has no training steps yet")]
    Empty(PathBuf),
    /// Drawing or writing.
    #[error(transparent)]
    Draw(#[from] DrawError),
}

/// What was drawn, for the command's report.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSummary {
    /// Training steps plotted.
    pub steps: usize,
    /// Evaluations plotted.
    pub evals: usize,
    /// Top-1 of the last evaluation, percent.
    pub last_top1: Option<f64>,
}

/// A run's points: (step, loss, lr, samples/s) per step and (step, top-1, top-5) per
/// evaluation, by step, a step written twice (by a resumed run) kept once.
struct Points {
    steps: Vec<(u64, f64, f64, f64)>,
    evals: Vec<(u64, f64, f64)>,
}

impl Points {
    fn of(metrics: &[Metric]) -> Points {
        let mut steps: Vec<(u64, f64, f64, f64)> = Vec::new();
        let mut evals: Vec<(u64, f64, f64)> = Vec::new();
        for m in metrics {
            match m {
                Metric::Step {
                    step,
                    loss,
                    lr,
                    samples_per_s,
                    ..
                } => steps.push((*step, *loss, *lr, *samples_per_s)),
                Metric::Eval {
                    step, top1, top5, ..
                } => evals.push((*step, *top1, *top5)),
            }
        }
        steps.sort_by_key(|s| s.0);
        steps.dedup_by_key(|s| s.0);
        evals.sort_by_key(|e| e.0);
        Points { steps, evals }
    }

    /// The x range: every step.
    fn x(&self) -> std::ops::Range<f64> {
        0.0..self.steps.last().map_or(1, |s| s.0).max(1) as f64
    }

    /// Steps per point of the moving averages: 50 points along the run.
    fn window(&self) -> usize {
        (self.steps.len() / 50).max(1)
    }

    fn series(&self, pick: fn(&(u64, f64, f64, f64)) -> f64) -> Vec<(f64, f64)> {
        self.steps.iter().map(|s| (s.0 as f64, pick(s))).collect()
    }
}

/// Draws `metrics` into an RGB buffer of `width × height`, four panels.
///
/// # Errors
/// [`PlotError::Draw`], also for a side outside [`super::draw::SIDES`].
pub fn render(
    metrics: &[Metric],
    title: &str,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PlotError> {
    check_size(width, height)?;
    register_font()?;
    let points = Points::of(metrics);
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(title, (FONT, 22)).map_err(draw_error)?;
        let panels = root.split_evenly((2, 2));
        loss_panel(&panels[0], &points)?;
        lr_panel(&panels[1], &points)?;
        accuracy_panel(&panels[2], &points)?;
        speed_panel(&panels[3], &points)?;
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;

/// Each step's loss, and its moving average.
fn loss_panel(area: &Area<'_>, points: &Points) -> Result<(), DrawError> {
    let loss = points.series(|s| s.1);
    let window = points.window();
    let mut chart = panel(
        area,
        "training loss",
        points.x(),
        range(loss.iter().map(|p| p.1), false),
        plain,
    )?;
    chart
        .draw_series(LineSeries::new(loss.clone(), BLUE.mix(0.25)))
        .map_err(draw_error)?
        .label("each step")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.mix(0.25)));
    chart
        .draw_series(LineSeries::new(
            moving_average(&loss, window),
            BLUE.stroke_width(2),
        ))
        .map_err(draw_error)?
        .label(format!("mean of {window}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// The learning rate of each step.
fn lr_panel(area: &Area<'_>, points: &Points) -> Result<(), DrawError> {
    let lr = points.series(|s| s.2);
    let mut chart = panel(
        area,
        "learning rate",
        points.x(),
        range(lr.iter().map(|p| p.1), true),
        scientific,
    )?;
    chart
        .draw_series(LineSeries::new(lr, RED.stroke_width(2)))
        .map_err(draw_error)?;
    Ok(())
}

/// Top-1 and top-5 of each evaluation.
fn accuracy_panel(area: &Area<'_>, points: &Points) -> Result<(), DrawError> {
    let mut chart: Chart<'_, '_> = panel(
        area,
        "evaluation accuracy, %",
        points.x(),
        0.0..100.0,
        plain,
    )?;
    if points.evals.is_empty() {
        area.draw_text(
            "no evaluation yet",
            &(FONT, 14).into_text_style(area),
            (80, 60),
        )
        .map_err(draw_error)?;
        return Ok(());
    }
    for (name, color, pick) in [
        ("top-1", GREEN.filled(), 1usize),
        ("top-5", MAGENTA.filled(), 2usize),
    ] {
        let series: Vec<(f64, f64)> = points
            .evals
            .iter()
            .map(|e| (e.0 as f64, if pick == 1 { e.1 } else { e.2 }))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(series.into_iter().map(|p| Circle::new(p, 3, color)))
            .map_err(draw_error)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Samples per second, as a moving average.
fn speed_panel(area: &Area<'_>, points: &Points) -> Result<(), DrawError> {
    let window = points.window();
    let speed = moving_average(&points.series(|s| s.3), window);
    let mut chart = panel(
        area,
        format!("samples/s (mean of {window} steps)"),
        points.x(),
        range(speed.iter().map(|p| p.1), true),
        plain,
    )?;
    chart
        .draw_series(LineSeries::new(speed, BLACK.stroke_width(2)))
        .map_err(draw_error)?;
    Ok(())
}

/// Reads the run's metrics, draws them and writes `out`.
///
/// # Errors
/// [`PlotError`]: the metrics cannot be read, hold no step, or the PNG cannot be written.
pub fn plot(
    run: &RunDir,
    out: &Path,
    title: &str,
    width: u32,
    height: u32,
) -> Result<PlotSummary, PlotError> {
    let metrics = run.read_metrics()?;
    let steps = metrics
        .iter()
        .filter(|m| matches!(m, Metric::Step { .. }))
        .count();
    if steps == 0 {
        return Err(PlotError::Empty(run.metrics()));
    }
    let evals: Vec<f64> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Eval { top1, .. } => Some(*top1),
            Metric::Step { .. } => None,
        })
        .collect();
    let rgb = render(&metrics, title, width, height)?;
    write_png(out, &rgb, width, height)?;
    Ok(PlotSummary {
        steps,
        evals: evals.len(),
        last_top1: evals.last().copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic_run(steps: u64) -> Vec<Metric> {
        let mut out = Vec::new();
        for step in 1..=steps {
            let (x, epoch) = (step as f64, (step / 50) as u32);
            let loss = 0.7 * (-x / 80.0).exp() + 0.05 * (x * 0.7).sin();
            let lr = 1e-3 * (x / steps as f64);
            out.push(Metric::test_step(
                step,
                epoch,
                loss,
                lr,
                60.0 + (step % 7) as f64,
            ));
            if step % 50 == 0 {
                out.push(Metric::test_eval(step, epoch, x / 3.0, x / 2.5, 100));
            }
        }
        out
    }

    /// `plot` of the run of `metrics` into a small `x.png` beside it.
    fn small_plot(metrics: &Path) -> Result<PlotSummary, PlotError> {
        let out = metrics.with_file_name("x.png");
        plot(&RunDir::named(metrics), &out, "t", 300, 200)
    }

    fn write_jsonl(path: &Path, metrics: &[Metric]) {
        let mut text = String::new();
        for m in metrics {
            text.push_str(&serde_json::to_string(m).expect("json"));
            text.push('\n');
        }
        std::fs::write(path, text).expect("write");
    }

    /// Counts pixels close to `rgb`.
    fn count_color(buffer: &[u8], rgb: [u8; 3]) -> usize {
        buffer
            .chunks_exact(3)
            .filter(|p| (0..3).all(|c| p[c].abs_diff(rgb[c]) < 8))
            .count()
    }

    #[test]
    fn a_run_becomes_a_png_with_every_curve_drawn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = RunDir::new(dir.path()).metrics();
        write_jsonl(&metrics, &synthetic_run(200));
        let out = RunDir::new(dir.path()).curves();
        let summary = plot(&RunDir::named(&metrics), &out, "test run", 900, 600).expect("plot");
        assert_eq!(
            summary,
            PlotSummary {
                steps: 200,
                evals: 4,
                last_top1: Some(200.0 / 3.0)
            }
        );
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&out).expect("png"),
        ));
        let mut reader = decoder.read_info().expect("png header");
        let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut pixels).expect("png data");
        assert_eq!((info.width, info.height), (900, 600));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        // Each series leaves its own color: loss (blue), LR (red), top-1 (green), speed (black).
        for (name, rgb, at_least) in [
            ("loss", [0, 0, 255], 200),
            ("lr", [255, 0, 0], 200),
            ("top-1", [0, 255, 0], 50),
            ("text and speed", [0, 0, 0], 500),
        ] {
            let n = count_color(&pixels, rgb);
            assert!(n >= at_least, "{name}: only {n} pixels");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 2, "a temporary file was left: {left:?}");
    }

    #[test]
    fn a_run_without_evaluations_still_plots() {
        let metrics: Vec<Metric> = synthetic_run(40)
            .into_iter()
            .filter(|m| matches!(m, Metric::Step { .. }))
            .collect();
        let rgb = render(&metrics, "no eval", 600, 400).expect("render");
        assert_eq!(count_color(&rgb, [0, 255, 0]), 0, "no top-1 curve");
        assert!(count_color(&rgb, [0, 0, 255]) > 50);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_file_and_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = RunDir::new(dir.path()).metrics();
        let mut run = synthetic_run(3);
        run.truncate(2);
        write_jsonl(&metrics, &run);
        let mut text = std::fs::read_to_string(&metrics).expect("read");
        text.push_str("{\"kind\": \"step\", \"loss\": \n");
        std::fs::write(&metrics, text).expect("write");
        let err = small_plot(&metrics).expect_err("bad line");
        let msg = err.to_string();
        assert!(msg.contains("metrics.jsonl:3"), "{msg}");
        assert!(!dir.path().join("x.png").exists());
    }

    #[test]
    fn an_empty_run_is_an_error_not_a_blank_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = RunDir::new(dir.path()).metrics();
        std::fs::write(&metrics, "").expect("write");
        let err = small_plot(&metrics).expect_err("empty");
        assert!(err.to_string().contains("no training steps"), "{err}");
    }
}
