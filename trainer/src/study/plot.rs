//! A study's PNG: one panel per eval set's top-1 (and ReaL top-1), one point per run.

use plotters::prelude::*;

use super::table::{REPLICATE_KEY, RunResult, group_of, groups, table};
use crate::plot::{FONT, PlotError, draw_error, range, register_font};

/// Draws the study into an RGB buffer: one panel per eval set's top-1 (and ReaL top-1), the
/// groups along x, one point per run (spread a little so seeds do not hide each other), the
/// group's mean as a bar with ± one std.
///
/// # Errors
/// [`PlotError::Draw`].
pub fn render(results: &[RunResult], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let groups = groups(results);
    let mut panels: Vec<(String, String)> = Vec::new();
    for r in results {
        for s in &r.scores {
            let key = (s.set.clone(), s.metric.clone());
            if (s.metric == "top1" || s.metric == "real_top1") && !panels.contains(&key) {
                panels.push(key);
            }
        }
    }
    let rows = table(results);
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root
            .titled(
                &format!(
                    "{} runs, {} setting{}",
                    results.len(),
                    groups.len(),
                    if groups.len() == 1 { "" } else { "s" }
                ),
                (FONT, 22),
            )
            .map_err(draw_error)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for ((set, metric), area) in panels.iter().zip(&areas) {
            // (group's x, value, group, the run's seed as its label).
            let points: Vec<(f64, f64, usize, String)> = results
                .iter()
                .filter_map(|r| {
                    let g = groups.iter().position(|g| *g == group_of(r))?;
                    let s = r
                        .scores
                        .iter()
                        .find(|s| s.set == *set && s.metric == *metric)?;
                    let seed = r
                        .varied
                        .iter()
                        .find(|(k, _)| k == REPLICATE_KEY)
                        .map_or_else(String::new, |(k, v)| format!("{k} {v}"));
                    Some((g as f64, s.value, g, seed))
                })
                .collect();
            // Spread each group's points over ±0.2 in the order the runs come.
            let mut seen = vec![0usize; groups.len()];
            let counts: Vec<usize> = (0..groups.len())
                .map(|g| points.iter().filter(|p| p.2 == g).count())
                .collect();
            let spread: Vec<(f64, f64)> = points
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
                .collect();
            // The points and each group's mean ± std.
            let spans = rows
                .iter()
                .filter(|r| r.set == *set && r.metric == *metric)
                .flat_map(|r| {
                    let std = r.stats.std.unwrap_or(0.0);
                    [r.stats.mean - std, r.stats.mean + std]
                });
            let y = range(points.iter().map(|p| p.1).chain(spans), false);
            let names = groups.clone();
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{set}: {metric}, %"), (FONT, 16))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.5..groups.len() as f64 - 0.5, y)
                .map_err(draw_error)?;
            chart
                .configure_mesh()
                .x_labels(groups.len().max(1))
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
            for (g, name) in groups.iter().enumerate() {
                let Some(row) = rows
                    .iter()
                    .find(|r| r.group == *name && r.set == *set && r.metric == *metric)
                else {
                    continue;
                };
                let x = g as f64;
                let mean = row.stats.mean;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x - 0.3, mean), (x + 0.3, mean)],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(draw_error)?;
                if let Some(std) = row.stats.std {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(x, mean - std), (x, mean + std)],
                            BLACK.stroke_width(1),
                        )))
                        .map_err(draw_error)?;
                }
            }
        }
        root.present().map_err(draw_error)?;
    }
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::table::result;

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
