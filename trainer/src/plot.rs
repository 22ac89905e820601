//! `trainer plot`: a run's `metrics.jsonl` as one PNG with four panels: training loss (each
//! step, and its moving average), learning rate, evaluation top-1/top-5, and throughput.
//!
//! Drawn with plotters into an RGB buffer, text in the embedded DejaVu Sans (no system fonts
//! needed), encoded with `png` and written through a temporary file and a rename, so an
//! interrupted plot never leaves a truncated image where a good one was.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::metrics::Metric;

/// Errors of `trainer plot`.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The metrics file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
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
    /// Nothing to draw.
    #[error("{0} has no training steps yet")]
    Empty(PathBuf),
    /// plotters failed.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// The PNG could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A run's metrics file: `RUN/metrics.jsonl` for a run directory, else `run` itself.
pub fn metrics_file(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join("metrics.jsonl")
    } else {
        run.to_path_buf()
    }
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

/// Reads a metrics file; later lines for a step replace earlier ones, output is by step.
pub fn read_metrics(path: &Path) -> Result<Vec<Metric>, PlotError> {
    let file = std::fs::File::open(path).map_err(|source| PlotError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut metrics = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| PlotError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let metric: Metric = serde_json::from_str(&line).map_err(|source| PlotError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        metrics.push(metric);
    }
    Ok(metrics)
}

pub(crate) const FONT: &str = "sans-serif";

pub(crate) fn register_font() -> Result<(), PlotError> {
    // Once per process; a failure is remembered, not retried as a success.
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Draw(
            "the embedded DejaVu Sans font did not load".into(),
        ))
    }
}

pub(crate) fn draw_error<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Moving average over a window of `w` points (shorter at the start).
pub(crate) fn moving_average(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    out
}

/// `[lo, hi]` of the values, widened a little and never empty.
pub(crate) fn range(values: impl Iterator<Item = f64>, floor_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.1).max(1e-9);
        lo -= pad;
        hi += pad;
    }
    let pad = (hi - lo) * 0.05;
    (if floor_zero && lo >= 0.0 {
        lo
    } else {
        lo - pad
    })..hi + pad
}

pub(crate) type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

pub(crate) fn plain(v: &f64) -> String {
    format!("{v:.1}")
}

fn scientific(v: &f64) -> String {
    format!("{v:.1e}")
}

/// One panel's axes over `step` on x, with its caption and grid drawn.
pub(crate) fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: impl AsRef<str>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    y_labels: fn(&f64) -> String,
) -> Result<Chart<'a, 'b>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&y_labels)
        .label_style((FONT, 12))
        .draw()
        .map_err(draw_error)?;
    Ok(chart)
}

/// The box naming a panel's series.
pub(crate) fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(draw_error)
}

/// Draws `metrics` into an RGB buffer of `width × height`.
pub fn render(
    metrics: &[Metric],
    title: &str,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let mut steps: Vec<(u64, f64, f64, f64)> = Vec::new();
    let mut evals: Vec<(u64, f64, f64)> = Vec::new();
    for m in metrics {
        match *m {
            Metric::Step {
                step,
                loss,
                lr,
                samples_per_s,
                ..
            } => steps.push((step, loss, lr, samples_per_s)),
            Metric::Eval {
                step, top1, top5, ..
            } => evals.push((step, top1, top5)),
        }
    }
    steps.sort_by_key(|s| s.0);
    steps.dedup_by_key(|s| s.0);
    evals.sort_by_key(|e| e.0);
    let last_step = steps.last().map_or(1, |s| s.0).max(1) as f64;
    let x_range = 0.0..last_step;
    let window = (steps.len() / 50).max(1);

    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(title, (FONT, 22)).map_err(draw_error)?;
        let panels = root.split_evenly((2, 2));

        let loss: Vec<(f64, f64)> = steps.iter().map(|s| (s.0 as f64, s.1)).collect();
        let mut chart = panel(
            &panels[0],
            "training loss",
            x_range.clone(),
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
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;

        let lr: Vec<(f64, f64)> = steps.iter().map(|s| (s.0 as f64, s.2)).collect();
        let mut chart = panel(
            &panels[1],
            "learning rate",
            x_range.clone(),
            range(lr.iter().map(|p| p.1), true),
            scientific,
        )?;
        chart
            .draw_series(LineSeries::new(lr, RED.stroke_width(2)))
            .map_err(draw_error)?;

        let mut chart = panel(
            &panels[2],
            "evaluation accuracy, %",
            x_range.clone(),
            0.0..100.0,
            plain,
        )?;
        if evals.is_empty() {
            panels[2]
                .draw_text(
                    "no evaluation yet",
                    &(FONT, 14).into_text_style(&panels[2]),
                    (80, 60),
                )
                .map_err(draw_error)?;
        } else {
            for (name, color, pick) in [
                ("top-1", GREEN.filled(), 1usize),
                ("top-5", MAGENTA.filled(), 2usize),
            ] {
                let points: Vec<(f64, f64)> = evals
                    .iter()
                    .map(|e| (e.0 as f64, if pick == 1 { e.1 } else { e.2 }))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(draw_error)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color)))
                    .map_err(draw_error)?;
            }
            legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }

        let speed: Vec<(f64, f64)> = steps.iter().map(|s| (s.0 as f64, s.3)).collect();
        let speed = moving_average(&speed, window);
        let mut chart = panel(
            &panels[3],
            format!("samples/s (mean of {window} steps)"),
            x_range,
            range(speed.iter().map(|p| p.1), true),
            plain,
        )?;
        chart
            .draw_series(LineSeries::new(speed, BLACK.stroke_width(2)))
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

/// Writes an RGB buffer as a PNG, through a temporary file renamed into place.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), PlotError> {
    let fail = |message: String| PlotError::Write {
        path: path.to_path_buf(),
        message,
    };
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| fail(e.to_string()))?;
    let mut file = BufWriter::new(file);
    let mut encoder = png::Encoder::new(&mut file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| fail(e.to_string()))?;
    writer.finish().map_err(|e| fail(e.to_string()))?;
    file.flush().map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}

/// Reads `metrics`, draws it and writes `out`.
pub fn plot(
    metrics_path: &Path,
    out: &Path,
    title: &str,
    width: u32,
    height: u32,
) -> Result<PlotSummary, PlotError> {
    let metrics = read_metrics(metrics_path)?;
    let steps = metrics
        .iter()
        .filter(|m| matches!(m, Metric::Step { .. }))
        .count();
    if steps == 0 {
        return Err(PlotError::Empty(metrics_path.to_path_buf()));
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
            out.push(Metric::Step {
                step,
                epoch: (step / 50) as u32,
                loss: 0.7 * (-(step as f64) / 80.0).exp() + 0.05 * ((step as f64) * 0.7).sin(),
                lr: 1e-3 * (step as f64 / steps as f64),
                global_batch: 64,
                samples_per_s: 60.0 + (step % 7) as f64,
                data_wait_s: 0.0,
                upload_s: 0.0,
            });
            if step % 50 == 0 {
                out.push(Metric::Eval {
                    step,
                    epoch: (step / 50) as u32,
                    top1: step as f64 / 3.0,
                    top5: step as f64 / 2.5,
                    samples: 100,
                });
            }
        }
        out
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
        let metrics = dir.path().join("metrics.jsonl");
        write_jsonl(&metrics, &synthetic_run(200));
        let out = dir.path().join("curves.png");
        let summary = plot(&metrics, &out, "test run", 900, 600).expect("plot");
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
        assert!(!dir.path().join("curves.png.tmp").exists());
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
        let metrics = dir.path().join("metrics.jsonl");
        let mut run = synthetic_run(3);
        run.truncate(2);
        write_jsonl(&metrics, &run);
        let mut text = std::fs::read_to_string(&metrics).expect("read");
        text.push_str("{\"kind\": \"step\", \"loss\": \n");
        std::fs::write(&metrics, text).expect("write");
        let err = plot(&metrics, &dir.path().join("x.png"), "t", 300, 200).expect_err("bad line");
        let msg = err.to_string();
        assert!(msg.contains("metrics.jsonl:3"), "{msg}");
        assert!(!dir.path().join("x.png").exists());
    }

    #[test]
    fn an_empty_run_is_an_error_not_a_blank_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, "").expect("write");
        let err = plot(&metrics, &dir.path().join("x.png"), "t", 300, 200).expect_err("empty");
        assert!(err.to_string().contains("no training steps"), "{err}");
    }

    #[test]
    fn moving_average_is_exact_on_a_ramp() {
        let points: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, i as f64)).collect();
        let avg = moving_average(&points, 3);
        let ys: Vec<f64> = avg.iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![0.0, 0.5, 1.0, 2.0, 3.0, 4.0]);
    }
}
