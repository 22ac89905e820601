//! What the report's PNGs share: the embedded font, a panel's axes and legend, value ranges
//! and moving averages, and the PNG writer (through shard-tool's atomic write, so an
//! interrupted plot never leaves a truncated image where a good one was).

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::run::write_file;

/// The sides, in pixels, a report's PNG may have: below 200 nothing in it is legible, and an
/// RGB buffer of 8192² is 200 MB (100000² was a 30 GB allocation, and an abort).
pub const SIDES: std::ops::RangeInclusive<u32> = 200..=8192;

/// Errors drawing or writing a PNG.
#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    /// A side outside [`SIDES`].
    #[error("a {width}×{height} image: each side must be within 200..=8192 pixels")]
    Size {
        /// Asked width.
        width: u32,
        /// Asked height.
        height: u32,
    },
    /// plotters failed.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// The PNG could not be encoded or written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
}

/// The embedded DejaVu Sans, by the name plotters knows it.
pub(crate) const FONT: &str = "sans-serif";

/// Registers [`FONT`] with plotters, once per process.
pub(crate) fn register_font() -> Result<(), DrawError> {
    // Once per process; a failure is remembered, not retried as a success.
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(DrawError::Draw(
            "the embedded DejaVu Sans font did not load".into(),
        ))
    }
}

/// Refuses an image of a side outside [`SIDES`], before its buffer is allocated.
///
/// # Errors
/// [`DrawError::Size`].
pub(crate) fn check_size(width: u32, height: u32) -> Result<(), DrawError> {
    if SIDES.contains(&width) && SIDES.contains(&height) {
        Ok(())
    } else {
        Err(DrawError::Size { width, height })
    }
}

/// plotters' error as ours.
pub(crate) fn draw_error<E: std::fmt::Debug>(e: E) -> DrawError {
    DrawError::Draw(format!("{e:?}"))
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

/// A panel's chart: f64 on both axes.
pub(crate) type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A tick label with one decimal.
pub(crate) fn plain(v: &f64) -> String {
    format!("{v:.1}")
}

/// A tick label in scientific notation.
pub(crate) fn scientific(v: &f64) -> String {
    format!("{v:.1e}")
}

/// One panel's axes over `step` on x, with its caption and grid drawn.
pub(crate) fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: impl AsRef<str>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    y_labels: fn(&f64) -> String,
) -> Result<Chart<'a, 'b>, DrawError> {
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
) -> Result<(), DrawError> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(draw_error)
}

/// Writes an RGB buffer as a PNG, atomically.
///
/// # Errors
/// [`DrawError::Write`] naming the file.
pub(crate) fn write_png(
    path: &std::path::Path,
    rgb: &[u8],
    width: u32,
    height: u32,
) -> Result<(), DrawError> {
    let fail = |message: String| DrawError::Write {
        path: path.to_path_buf(),
        message,
    };
    let bytes = crate::run::preview::encode_png(rgb, width, height).map_err(fail)?;
    write_file(path, &bytes).map_err(|e| fail(e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sides_outside_200_to_8192_are_refused() {
        assert!(check_size(1200, 800).is_ok());
        assert!(check_size(200, 8192).is_ok());
        for (w, h) in [(100_000, 100_000), (199, 800), (1200, 0), (8193, 200)] {
            let e = check_size(w, h).unwrap_err().to_string();
            assert!(e.contains(&format!("{w}×{h}")), "{e}");
        }
    }

    #[test]
    fn moving_average_is_exact_on_a_ramp() {
        let points: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, i as f64)).collect();
        let avg = moving_average(&points, 3);
        let ys: Vec<f64> = avg.iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![0.0, 0.5, 1.0, 2.0, 3.0, 4.0]);
    }
}
