//! A study's PNG: one panel per eval set's top-1 (and ReaL top-1), one point per run.

use plotters::prelude::*;

use super::table::{REPLICATE_KEY, Row, RunResult, group_of, groups, table};
use crate::report::draw::{DrawError, FONT, check_size, draw_error, range, register_font};

/// Draws the study into an RGB buffer: one panel per eval set's top-1 (and ReaL top-1), the
/// groups along x, one point per run (spread a little so seeds do not hide each other), the
/// group's mean as a bar with ± one std.
///
/// # Errors
/// [`DrawError::Size`] for a side outside [`crate::report::draw::SIDES`], [`DrawError::Draw`].
pub fn render(results: &[RunResult], width: u32, height: u32) -> Result<Vec<u8>, DrawError> {
    check_size(width, height)?;
    register_font()?;
    let study = Study {
        results,
        groups: groups(results),
        rows: table(results),
    };
    let mut panels: Vec<(String, String)> = Vec::new();
    for r in results {
        for s in &r.scores {
            let key = (s.set.clone(), s.metric.clone());
            if (s.metric == "top1" || s.metric == "real_top1") && !panels.contains(&key) {
                panels.push(key);
            }
        }
    }
    let n = study.groups.len();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let title = format!(
            "{} runs, {n} setting{}",
            results.len(),
            if n == 1 { "" } else { "s" }
        );
        let root = root.titled(&title, (FONT, 22)).map_err(draw_error)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for ((set, metric), area) in panels.iter().zip(&areas) {
            study.panel(area, set, metric)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;

/// A run's point: (its group's x, value, group, the run's seed as its label).
type Point = (f64, f64, usize, String);

/// The runs, their groups and the table's rows.
struct Study<'a> {
    results: &'a [RunResult],
    groups: Vec<String>,
    rows: Vec<Row>,
}

impl Study<'_> {
    /// One eval set's metric: every run's point, each group's mean ± std.
    fn panel(&self, area: &Area<'_>, set: &str, metric: &str) -> Result<(), DrawError> {
        let points = self.points(set, metric);
        let spread = self.spread(&points);
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.set == set && r.metric == metric)
            .collect();
        let spans = rows.iter().flat_map(|r| {
            let std = r.stats.std.unwrap_or(0.0);
            [r.stats.mean - std, r.stats.mean + std]
        });
        let y = range(points.iter().map(|p| p.1).chain(spans), false);
        let names = &self.groups;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{set}: {metric}, %"), (FONT, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..names.len() as f64 - 0.5, y)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_labels(names.len().max(1))
            .x_label_formatter(&|v: &f64| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v: &f64| format!("{v:.2}"))
            .disable_x_mesh()
            .label_style((FONT, 12))
            .draw()
            .map_err(draw_error)?;
        let color = Palette99::pick(0);
        chart
            .draw_series(spread.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error)?;
        chart
            .draw_series(spread.iter().zip(&points).map(|(&p, point)| {
                // Beside the point, not on it.
                EmptyElement::at(p) + Text::new(point.3.clone(), (7, -5), (FONT, 11))
            }))
            .map_err(draw_error)?;
        for (g, name) in names.iter().enumerate() {
            let Some(row) = rows.iter().find(|r| r.group == *name) else {
                continue;
            };
            let (x, mean) = (g as f64, row.stats.mean);
            let mut bar = |from: f64, to: f64, along: bool, width: u32| {
                let line = if along {
                    vec![(x - 0.3, from), (x + 0.3, to)]
                } else {
                    vec![(x, from), (x, to)]
                };
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        line,
                        BLACK.stroke_width(width),
                    )))
                    .map(|_| ())
                    .map_err(draw_error)
            };
            bar(mean, mean, true, 2)?;
            if let Some(std) = row.stats.std {
                bar(mean - std, mean + std, false, 1)?;
            }
        }
        Ok(())
    }

    /// Every run's point on one set's metric.
    fn points(&self, set: &str, metric: &str) -> Vec<Point> {
        self.results
            .iter()
            .filter_map(|r| {
                let g = self.groups.iter().position(|g| *g == group_of(r))?;
                let s = r
                    .scores
                    .iter()
                    .find(|s| s.set == set && s.metric == metric)?;
                let seed = r
                    .varied
                    .iter()
                    .find(|(k, _)| k == REPLICATE_KEY)
                    .map_or_else(String::new, |(k, v)| format!("{k} {v}"));
                Some((g as f64, s.value, g, seed))
            })
            .collect()
    }

    /// The points spread over ±0.2 of their group's x, in the order the runs come.
    fn spread(&self, points: &[Point]) -> Vec<(f64, f64)> {
        let mut seen = vec![0usize; self.groups.len()];
        let counts: Vec<usize> = (0..self.groups.len())
            .map(|g| points.iter().filter(|p| p.2 == g).count())
            .collect();
        points
            .iter()
            .map(|&(x, y, g, _)| {
                let k = seen[g];
                seen[g] += 1;
                let offset = if counts[g] > 1 {
                    -0.2 + 0.4 * k as f64 / (counts[g] - 1) as f64
                } else {
                    0.0
                };
                (x + offset, y)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::study::table::result;

    #[test]
    fn the_plot_has_a_point_per_run() {
        let results = vec![
            result(&[("epochs", "1"), ("seed", "0")], 60.0),
            result(&[("epochs", "1"), ("seed", "1")], 62.0),
            result(&[("epochs", "2"), ("seed", "0")], 70.0),
        ];
        let (w, h) = (600, 400);
        let rgb = render(&results, w, h).unwrap();
        let c = Palette99::pick(0).to_rgba();
        let n = rgb
            .chunks_exact(3)
            .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
            .count();
        // Three filled circles of radius 4: about 3 × 50 pixels.
        assert!((100..400).contains(&n), "{n} pixels of the points' color");
    }
}
